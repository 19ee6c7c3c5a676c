package daemon_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// delayedPipe joins a sender to the daemon through a link that delays
// each direction by d, preserving order.
func (s *testServer) delayedPipe(t *testing.T, d time.Duration) net.Conn {
	t.Helper()
	a, b := net.Pipe()
	c := s.dial(t)
	relay := func(dst, src net.Conn) {
		type piece struct {
			at time.Time
			b  []byte
		}
		q := make(chan piece, 4096)
		go func() {
			defer close(q)
			for {
				buf := make([]byte, 32<<10)
				n, err := src.Read(buf)
				if n > 0 {
					q <- piece{time.Now().Add(d), buf[:n]}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() {
			defer dst.Close()
			for p := range q {
				time.Sleep(time.Until(p.at))
				if _, err := dst.Write(p.b); err != nil {
					return
				}
			}
		}()
	}
	relay(c, b)
	relay(b, c)
	t.Cleanup(func() { a.Close(); b.Close() })
	return a
}

// jobs returns n jobs of size bytes each, named dir/fNNN.
func jobs(n, size int, dir string) ([]*transfer.Job, [][]byte) {
	var js []*transfer.Job
	var data [][]byte
	for i := range n {
		d := randomData(size, byte(i))
		data = append(data, d)
		js = append(js, &transfer.Job{Name: fmt.Sprintf("%s/f%03d", dir, i), Src: source(d)})
	}
	return js, data
}

func feed(js []*transfer.Job) func() (*transfer.Job, bool) {
	i := 0
	return func() (*transfer.Job, bool) {
		if i == len(js) {
			return nil, false
		}
		i++
		return js[i-1], true
	}
}

// TestWindowRoundTrips sends 200 small files through a link with a 20 ms
// delay each way: a round trip per file would take 200 round trips; the
// window needs a small constant. The bound is generous: it is not a speed
// test.
func TestWindowRoundTrips(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	const oneWay = 20 * time.Millisecond
	conn := srv.delayedPipe(t, oneWay)
	start := time.Now()
	c := handshake(t, conn)
	js, data := jobs(200, 4096, "rtt")
	settled := 0
	unsettled, _, err := c.SendAll(context.Background(), feed(js), func(j *transfer.Job, err error) {
		settled++
		if err != nil {
			t.Errorf("%s: %v", j.Name, err)
		}
	}, transfer.WindowOptions{})
	elapsed := time.Since(start)
	if err != nil || len(unsettled) != 0 || settled != len(js) {
		t.Fatalf("SendAll: %v, %d unsettled, %d settled", err, len(unsettled), settled)
	}
	for i, j := range js {
		srv.checkCommitted(t, j.Name, data[i], j.Last)
	}
	rtt := 2 * oneWay
	t.Logf("200 files in %v = %.1f round trips of %v", elapsed, float64(elapsed)/float64(rtt), rtt)
	if elapsed > 40*rtt {
		t.Fatalf("200 files took %v, more than 40 round trips of %v", elapsed, rtt)
	}
}

// TestWindowRefusalsInFlight: speculative files refused at offer time (the
// name exists, a bad name) do not disturb the files around them in the
// window, which commit.
func TestWindowRefusalsInFlight(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	if err := os.WriteFile(filepath.Join(srv.root, "taken"), []byte("other content"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := srv.connect(t)
	js, data := jobs(20, 1000, "ok")
	bad := []*transfer.Job{
		{Name: "taken", Src: source(randomData(100, 1))},
		{Name: "../escape", Src: source(randomData(100, 2))},
	}
	all := append([]*transfer.Job{js[0], bad[0]}, js[1:10]...)
	all = append(all, bad[1])
	all = append(all, js[10:]...)
	errs := make(map[string]error)
	_, _, err := c.SendAll(context.Background(), feed(all), func(j *transfer.Job, err error) { errs[j.Name] = err },
		transfer.WindowOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(errs["taken"], transfer.ErrExists) || !errors.Is(errs["../escape"], transfer.ErrBadName) {
		t.Fatalf("refusals: taken %v, ../escape %v", errs["taken"], errs["../escape"])
	}
	for i, j := range js {
		if errs[j.Name] != nil {
			t.Fatalf("%s: %v", j.Name, errs[j.Name])
		}
		srv.checkCommitted(t, j.Name, data[i], j.Last)
	}
	srv.checkNoPartials(t)
}

// windowCut fails every write once budget bytes were written, and closes.
type windowCut struct {
	net.Conn
	mu     sync.Mutex
	budget int

	// The frames read from the daemon, parsed to count its Committed
	// answers: the cut waits for the first, so that whether a file
	// settled before it does not depend on how fast each side runs.
	in        []byte
	committed chan struct{} // closed at the first Committed
	once      sync.Once
}

func (c *windowCut) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(p) > c.budget {
		select {
		case <-c.committed:
		case <-time.After(10 * time.Second): // cut anyway; the test then fails
		}
		c.Conn.Close()
		return 0, errors.New("link cut")
	}
	c.budget -= len(p)
	return c.Conn.Write(p)
}

func (c *windowCut) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in = append(c.in, p[:n]...) // one reader goroutine
	for len(c.in) >= transfer.FrameHeaderSize {
		size := transfer.FrameHeaderSize + int(binary.BigEndian.Uint32(c.in[1:transfer.FrameHeaderSize]))
		if len(c.in) < size {
			break
		}
		if transfer.FrameType(c.in[0]) == transfer.FrameCommitted {
			c.once.Do(func() { close(c.committed) })
		}
		c.in = c.in[size:]
	}
	return n, err
}

// releaseLocker is a MemLocker that tells when the daemon has given back
// every lock it took.
type releaseLocker struct {
	daemon.MemLocker
	held     atomic.Int64
	released chan struct{} // a value after a release that left none held
}

func newReleaseLocker() *releaseLocker { return &releaseLocker{released: make(chan struct{}, 1)} }

func (l *releaseLocker) Lock(ctx context.Context, key string) (daemon.Lock, error) {
	lk, err := l.MemLocker.Lock(ctx, key)
	if err != nil {
		return nil, err
	}
	l.held.Add(1)
	return &releaseLock{Lock: lk, l: l}, nil
}

type releaseLock struct {
	daemon.Lock
	l    *releaseLocker
	once sync.Once
}

func (r *releaseLock) Unlock() error {
	err := r.Lock.Unlock()
	r.once.Do(func() {
		if r.l.held.Add(-1) == 0 {
			select {
			case r.l.released <- struct{}{}:
			default:
			}
		}
	})
	return err
}

// waitFree waits up to within until no lock is held, and reports whether
// none is.
func (l *releaseLocker) waitFree(within time.Duration) bool {
	deadline := time.After(within)
	for l.held.Load() > 0 {
		select {
		case <-l.released:
		case <-deadline:
			return false
		}
	}
	return true
}

// TestWindowCutAndResume cuts the link in the middle of a window (a big
// file streaming after many small ones); the Sender reconnects and offers
// again only the files that did not settle, the big one resuming from its
// durable offset. The second session is dialled once the daemon has
// noticed the cut and released the first session's transfers: before
// that it would answer busy, for as long as a loaded machine takes to
// flush the big file, which the Sender's few quick retries here may not
// outlast.
func TestWindowCutAndResume(t *testing.T) {
	locker := newReleaseLocker()
	srv := newServer(t, daemon.Config{SyncBytes: 2 * testChunk, Locker: locker})
	dir := t.TempDir()
	var files []transfer.File
	var want [][]byte
	for i := range 40 {
		d := randomData(3000, byte(i))
		if i == 39 {
			d = randomData(64*testChunk, 200)
		}
		p := filepath.Join(dir, fmt.Sprintf("f%02d", i))
		if err := os.WriteFile(p, d, 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, transfer.File{Name: fmt.Sprintf("cut/f%02d", i), Path: p})
		want = append(want, d)
	}
	dials := 0
	s := &transfer.Sender{Addr: "pipe", ChunkSize: testChunk, Retries: 3, Backoff: 10 * time.Millisecond,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dials++
			if dials == 1 {
				return &windowCut{Conn: srv.dial(t), budget: 40*3000 + 32*testChunk, committed: make(chan struct{})}, nil
			}
			if !locker.waitFree(10 * time.Second) {
				t.Errorf("the daemon still holds %d transfers 10 s after the cut", locker.held.Load())
			}
			return srv.dial(t), nil
		}}
	defer s.Close()
	reps := make(map[string]transfer.Report)
	i := 0
	err := s.SendAll(context.Background(), func() (transfer.File, bool) {
		if i == len(files) {
			return transfer.File{}, false
		}
		i++
		return files[i-1], true
	}, func(f transfer.File, r transfer.Report, err error) {
		if err != nil {
			t.Errorf("%s: %v", f.Name, err)
		}
		reps[f.Name] = r
	})
	if err != nil {
		t.Fatal(err)
	}
	if dials < 2 {
		t.Fatalf("%d sessions, want at least 2", dials)
	}
	once := 0
	for i, f := range files {
		got, err := os.ReadFile(filepath.Join(srv.root, f.Name))
		if err != nil || string(got) != string(want[i]) {
			t.Fatalf("%s: %d bytes, %v", f.Name, len(got), err)
		}
		if reps[f.Name].Attempts == 1 {
			once++
		}
	}
	big := reps["cut/f39"]
	if big.Attempts < 2 || big.ResumedFrom == 0 || big.TotalSentBytes >= 2*big.Size {
		t.Fatalf("big file: %+v; want a second attempt resumed past 0", big)
	}
	if once == 0 {
		t.Fatalf("every file was sent again after the cut")
	}
	t.Logf("%d of %d files committed in the first session; big file resumed at %d of %d", once, len(files), big.ResumedFrom, big.Size)
}

// TestV1PeerGetsReadableRefusal: a protocol 1 sender is told why, in the
// Refuse layout every version shares.
func TestV1PeerGetsReadableRefusal(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	p := srv.raw(t)
	p.write(msgFrame(&transfer.Hello{Major: 1, ChunkSize: testChunk, Agent: "ferry/v1"}))
	p.expectRefusal(transfer.CodeVersion, "peer speaks v1.0, this side v2")
}

// slowAnswers delays after each Committed frame it writes, as a daemon
// whose writes to a slow link take time does.
type slowAnswers struct{ net.Conn }

func (c slowAnswers) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if len(p) > 0 && transfer.FrameType(p[0]) == transfer.FrameCommitted {
		time.Sleep(300 * time.Microsecond)
	}
	return n, err
}

// TestWindowFull sends more files than the window holds, so that the
// sender starts a new file on each Committed. The daemon used to free a
// window slot only after it had sent Committed for a whole group: a
// sender quick to reuse the first slot of a group looked like one with
// more than MaxWindowFiles transfers in flight, and was refused.
func TestWindowFull(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	c, d := net.Pipe()
	t.Cleanup(func() { c.Close() })
	srv.ServeConn(slowAnswers{d})
	cl := handshake(t, c)
	js, _ := jobs(2*transfer.MaxWindowFiles, 100, "full")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	settled := 0
	unsettled, _, err := cl.SendAll(ctx, feed(js), func(j *transfer.Job, err error) {
		settled++
		if err != nil {
			t.Errorf("%s: %v", j.Name, err)
		}
	}, transfer.WindowOptions{})
	if err != nil || len(unsettled) != 0 || settled != len(js) {
		t.Fatalf("SendAll: %v, %d unsettled, %d of %d settled", err, len(unsettled), settled, len(js))
	}
}
