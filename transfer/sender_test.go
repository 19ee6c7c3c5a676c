package transfer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// goodDaemon plays a daemon that accepts every offer at 0, keeps the
// chunks it gets in memory and commits with the hash of what it got. An
// offer that comes before the trailer of the transfer before it replaces
// that transfer, as it does on ferryd.
func goodDaemon(r *bufio.Reader, w io.Writer) error {
	if _, err := ReadMessage(r); err != nil {
		return err
	}
	if err := WriteMessage(w, &Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize}); err != nil {
		return err
	}
	var cur *Offer
	var data []byte
	buf := make([]byte, ChunkHeaderSize+MinChunkSize)
	for {
		h, err := ReadFrameHeader(r, MinChunkSize)
		if err != nil {
			return err
		}
		if h.Type == FrameChunk {
			var c Chunk
			if err := ReadChunk(r, h, buf, &c); err != nil {
				return err
			}
			data = append(data, c.Data...)
			continue
		}
		p, err := ReadControl(r, h, nil)
		if err != nil {
			return err
		}
		m, err := DecodeMessage(h.Type, p)
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *Offer:
			cur, data = m, nil
			if m.Flags&OfferData == 0 { // protocol 2: a small file's data comes unasked
				if err := WriteMessage(w, &Accept{ID: m.ID, ChunkSize: MinChunkSize}); err != nil {
					return err
				}
			}
		case *Trailer:
			if err := WriteMessage(w, &Committed{ID: cur.ID, Size: cur.Size, Hash: HashBytes(data)}); err != nil {
				return err
			}
		}
	}
}

// receiveChunks reads chunk frames up to and including the trailer.
func receiveChunks(r *bufio.Reader) ([]byte, error) {
	var data []byte
	buf := make([]byte, ChunkHeaderSize+MinChunkSize)
	for {
		h, err := ReadFrameHeader(r, MinChunkSize)
		if err != nil {
			return nil, err
		}
		if h.Type == FrameTrailer {
			_, err := ReadControl(r, h, nil)
			return data, err
		}
		if h.Type == FrameData {
			if _, err := ReadControl(r, h, nil); err != nil {
				return nil, err
			}
			continue
		}
		var c Chunk
		if err := ReadChunk(r, h, buf, &c); err != nil {
			return nil, err
		}
		data = append(data, c.Data...)
	}
}

// pipeDialer returns a Sender.Dial that runs script as the daemon end of a
// fresh pipe for every connection, and counts the connections.
func pipeDialer(t *testing.T, script func(r *bufio.Reader, w io.Writer) error) (func(context.Context, string, string) (net.Conn, error), *atomic.Int32) {
	t.Helper()
	var dials atomic.Int32
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		dials.Add(1)
		c, d := net.Pipe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer d.Close()
			script(bufio.NewReader(d), d)
			io.Copy(io.Discard, d) // until the sender hangs up
		}()
		return c, nil
	}, &dials
}

// tempSource writes data to a file in a new temporary directory.
func tempSource(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// touch changes p's content at offset 0 and its mtime, keeping its size.
func touch(t *testing.T, p string, n int) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{byte(n)}, 0); err != nil {
		t.Error(err)
	}
	when := time.Unix(1700000000+int64(n), 0)
	if err := os.Chtimes(p, when, when); err != nil {
		t.Error(err)
	}
}

// TestBackoffStaysUnderItsCap is the regression test for a backoff that
// exceeded its documented 30s cap ("retrying in 43.7s"): jitter must stay
// within the cap, for every retry count and jitter value.
func TestBackoffStaysUnderItsCap(t *testing.T) {
	const base, capWait = 500 * time.Millisecond, 30 * time.Second
	for n := 1; n <= 60; n++ {
		nominal := min(base<<min(n-1, 20), capWait)
		for i := range 1000 {
			j := float64(i) / 1000
			got := Backoff(base, capWait, n, j)
			if got > capWait {
				t.Fatalf("Backoff(retry %d, jitter %.3f) = %v, above the %v cap", n, j, got, capWait)
			}
			if got < nominal/2 {
				t.Fatalf("Backoff(retry %d, jitter %.3f) = %v, below half of %v", n, j, got, nominal)
			}
		}
	}
	if got := Backoff(base, capWait, 1, 0.5); got != base {
		t.Errorf("first retry without jitter waits %v, want %v", got, base)
	}
	if got := Backoff(base, capWait, 3, 0.5); got != 4*base {
		t.Errorf("third retry without jitter waits %v, want %v", got, 4*base)
	}
}

// TestSenderDeadlines is the regression test for a sender that waited
// forever on a daemon that stopped answering: at the handshake, at the
// offer, and after the trailer. Each must fail within a bound of Timeout.
func TestSenderDeadlines(t *testing.T) {
	data := randomData(2*MinChunkSize+10, 3)
	hello := func(r *bufio.Reader, w io.Writer) error {
		return answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w)
	}
	tests := []struct {
		name   string
		daemon func(r *bufio.Reader, w io.Writer) error
	}{
		{"no hello", func(r *bufio.Reader, w io.Writer) error {
			_, err := ReadMessage(r)
			return err
		}},
		{"no answer to the offer", func(r *bufio.Reader, w io.Writer) error {
			if err := hello(r, w); err != nil {
				return err
			}
			_, err := ReadMessage(r)
			return err
		}},
		{"no answer to the trailer", func(r *bufio.Reader, w io.Writer) error {
			if err := hello(r, w); err != nil {
				return err
			}
			if _, err := ReadMessage(r); err != nil {
				return err
			}
			if err := WriteMessage(w, &Accept{ID: 1, ChunkSize: MinChunkSize}); err != nil {
				return err
			}
			_, err := receiveChunks(r)
			return err
		}},
		{"takes no data", func(r *bufio.Reader, w io.Writer) error {
			if err := hello(r, w); err != nil {
				return err
			}
			if _, err := ReadMessage(r); err != nil {
				return err
			}
			if err := WriteMessage(w, &Accept{ID: 1, ChunkSize: MinChunkSize}); err != nil {
				return err
			}
			time.Sleep(3 * time.Second) // reads nothing, like a stopped process
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dial, _ := pipeDialer(t, tt.daemon)
			s := &Sender{Addr: "test", Dial: dial, ChunkSize: MinChunkSize, Timeout: 200 * time.Millisecond}
			defer s.Close()
			// Without deadlines Send would wait forever; the context only
			// keeps a regression from hanging the test run.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			_, err := s.Send(ctx, File{Name: "f", Path: tempSource(t, data)})
			if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("error %v, want a deadline error", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("gave up after %v with a 200ms timeout", d)
			}
			if !Retryable(err) {
				t.Errorf("a silent daemon is not retryable: %v", err)
			}
		})
	}
}

// TestSenderWaitsLongerForARehash checks that the wait for Committed after
// an already committed file's trailer allows for the daemon re-reading it
// (RehashRate), beyond the timeout.
func TestSenderWaitsLongerForARehash(t *testing.T) {
	data := randomData(40<<20, 5) // 40 MiB: 0.6s of rehash allowance
	tail := data[len(data)-MinChunkSize:]
	dial, _ := pipeDialer(t, func(r *bufio.Reader, w io.Writer) error {
		if err := answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w); err != nil {
			return err
		}
		if _, err := ReadMessage(r); err != nil {
			return err
		}
		acc := &Accept{ID: 1, Flags: AcceptCommitted, ChunkSize: MinChunkSize, DurableOffset: int64(len(data)), TailOffset: int64(len(data) - MinChunkSize),
			TailLength: MinChunkSize, TailHash: mustChunkHash(tail, int64(len(data)-MinChunkSize), int64(len(data)))}
		if err := WriteMessage(w, acc); err != nil {
			return err
		}
		if _, err := receiveChunks(r); err != nil {
			return err
		}
		time.Sleep(400 * time.Millisecond) // re-hashing, longer than the timeout
		return WriteMessage(w, &Committed{ID: 1, Size: int64(len(data)), Hash: HashBytes(data)})
	})
	s := &Sender{Addr: "test", Dial: dial, ChunkSize: MinChunkSize, Timeout: 200 * time.Millisecond}
	defer s.Close()
	rep, err := s.Send(context.Background(), File{Name: "f", Path: tempSource(t, data)})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.AlreadyCommitted || rep.SentBytes != 0 || rep.DurableOffset != 0 {
		t.Fatalf("report %+v, want already committed, nothing sent, no partial", rep)
	}
}

// TestSenderReopensEachAttempt is the regression test for a source that
// changed once and could then never be sent by the retries: every retry
// offered the size and mtime stat'ed before the first attempt and was
// refused as modified. Each attempt must open and stat the file anew.
func TestSenderReopensEachAttempt(t *testing.T) {
	data := randomData(3*MinChunkSize, 6)
	p := tempSource(t, data)
	dial, dials := pipeDialer(t, goodDaemon)
	var once sync.Once
	s := &Sender{Addr: "test", Dial: dial, ChunkSize: MinChunkSize, Retries: 2, Backoff: time.Millisecond}
	defer s.Close()
	rep, err := s.Send(context.Background(), File{Name: "f", Path: p, Progress: func(Progress) {
		once.Do(func() { touch(t, p, 1) }) // modified during the first attempt only
	}})
	if err != nil {
		t.Fatalf("send after one change: %v (report %+v)", err, rep)
	}
	want, _ := os.ReadFile(p)
	// Protocol 2: the changed file is offered again on the same session.
	if rep.Attempts != 2 || rep.Restarts != 1 || rep.Hash != HashBytes(want) || dials.Load() != 1 {
		t.Fatalf("report %+v after %d dials; want 2 attempts, 1 restart, the hash of the changed file, 1 session", rep, dials.Load())
	}
}

// TestSenderGivesUpOnAFileThatKeepsChanging is the regression test for a
// file rewritten all the time being resent whole forever: each restart
// from 0 counted as progress and reset the retry budget. The restarts are
// bounded by MaxRestarts, then the file fails with ErrKeepsChanging.
func TestSenderGivesUpOnAFileThatKeepsChanging(t *testing.T) {
	data := randomData(3*MinChunkSize, 7)
	p := tempSource(t, data)
	dial, _ := pipeDialer(t, goodDaemon)
	attempt := 0
	s := &Sender{Addr: "test", Dial: dial, ChunkSize: MinChunkSize, Retries: 10, Backoff: time.Millisecond, MaxRestarts: 2}
	defer s.Close()
	began := false
	rep, err := s.Send(context.Background(), File{Name: "f", Path: p, Open: func() (*os.File, error) {
		attempt++
		began = false
		return os.Open(p)
	}, Progress: func(Progress) {
		if !began {
			began = true
			touch(t, p, attempt) // modified during every attempt
		}
	}})
	if !errors.Is(err, ErrKeepsChanging) || Retryable(err) {
		t.Fatalf("error %v, want permanent ErrKeepsChanging", err)
	}
	if rep.Attempts != 3 || rep.Restarts != 3 {
		t.Fatalf("report %+v; want 3 attempts and the third restart refused", rep)
	}
}

// TestSenderPermanentErrors is the regression test for permanent errors
// retried as network failures: a bad chunk size, a peer that speaks
// another protocol and an unreadable source must fail at once; a refused
// connection is retried and says so.
func TestSenderPermanentErrors(t *testing.T) {
	httpPeer, _ := pipeDialer(t, func(r *bufio.Reader, w io.Writer) error {
		if _, err := ReadMessage(r); err != nil {
			return err
		}
		_, err := io.WriteString(w, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
		return err
	})
	counting, dials := pipeDialer(t, goodDaemon)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := ln.Addr().String()
	ln.Close() // nothing listens there now
	src := tempSource(t, randomData(100, 1))
	unreadable := func() (*os.File, error) { return nil, &os.PathError{Op: "open", Path: "x", Err: syscall.EACCES} }
	tests := []struct {
		name     string
		s        *Sender
		open     func() (*os.File, error)
		want     error
		attempts int
	}{
		{"chunk size below the minimum", &Sender{Addr: "test", Dial: counting, ChunkSize: 10, Retries: 5}, nil, ErrInvalidConfig, 0},
		{"negative retries", &Sender{Addr: "test", Dial: counting, Retries: -1}, nil, ErrInvalidConfig, 0},
		{"peer speaks HTTP", &Sender{Addr: "test", Dial: httpPeer, ChunkSize: MinChunkSize, Retries: 5, Backoff: time.Millisecond}, nil, ErrNotFerry, 1},
		{"unreadable source", &Sender{Addr: "test", Dial: counting, Retries: 5}, unreadable, ErrSourceUnreadable, 0},
		{"connection refused", &Sender{Addr: closedAddr, Retries: 2, Backoff: time.Millisecond}, nil, syscall.ECONNREFUSED, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer tt.s.Close()
			rep, err := tt.s.Send(context.Background(), File{Name: "f", Path: src, Open: tt.open})
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if rep.Attempts != tt.attempts {
				t.Errorf("%d attempts, want %d: %v", rep.Attempts, tt.attempts, err)
			}
			if rep.DurableOffset != 0 {
				t.Errorf("report claims a partial: %+v", rep)
			}
		})
	}
	if n := dials.Load(); n != 0 {
		t.Errorf("%d dials for errors found before any connection", n)
	}
}

// TestSenderInterrupted checks that cancelling the context ends Send with
// context.Canceled, without a retry.
func TestSenderInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dial, _ := pipeDialer(t, func(r *bufio.Reader, w io.Writer) error {
		ReadMessage(r)
		cancel() // while the sender waits for the hello
		return nil
	})
	s := &Sender{Addr: "test", Dial: dial, Retries: 5, Backoff: time.Millisecond}
	defer s.Close()
	rep, err := s.Send(ctx, File{Name: "f", Path: tempSource(t, randomData(10, 1))})
	if !errors.Is(err, context.Canceled) || rep.Attempts != 1 {
		t.Fatalf("error %v after %d attempts, want context.Canceled after 1", err, rep.Attempts)
	}
}

// TestSenderKeepsTheSession checks that files share one session.
func TestSenderKeepsTheSession(t *testing.T) {
	dial, dials := pipeDialer(t, goodDaemon)
	s := &Sender{Addr: "test", Dial: dial, ChunkSize: MinChunkSize}
	defer s.Close()
	for i := range 3 {
		data := randomData(MinChunkSize*i+5, uint64(i))
		rep, err := s.Send(context.Background(), File{Name: fmt.Sprint("f", i), Path: tempSource(t, data)})
		if err != nil || rep.Hash != HashBytes(data) {
			t.Fatalf("file %d: %v, report %+v", i, err, rep)
		}
		checkNoTransferGoroutines(t)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d sessions for 3 files, want 1", n)
	}
}

// checkNoTransferGoroutines fails the test if a goroutine of a transfer
// (reader, chunk hashers, prefix hasher) still runs. A joined goroutine
// may take a moment to leave the stack dump after its last action, so the
// check allows 500ms; one blocked on the session stays there for good.
func checkNoTransferGoroutines(t *testing.T) {
	t.Helper()
	buf := make([]byte, 1<<20)
	var left []string
	for deadline := time.Now().Add(500 * time.Millisecond); ; {
		stacks := string(buf[:runtime.Stack(buf, true)])
		left = left[:0]
		for _, fn := range []string{"transfer.(*stream).readLoop", "transfer.hashRange", "transfer.newWholeHash"} {
			if strings.Contains(stacks, fn) {
				left = append(left, fn)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still running after Send returned: %v", left)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSendJoinsItsGoroutines is the regression test for Client.Send
// returning while its reader goroutine still blocked on the session:
// every goroutine Send starts has ended when it returns, on success and
// on every kind of failure, also after a resume (the catch-up hasher).
func TestSendJoinsItsGoroutines(t *testing.T) {
	data := randomData(4*MinChunkSize, 8)
	resumeAt := int64(2 * MinChunkSize)
	accept := func(resume bool) *Accept {
		if !resume {
			return &Accept{ID: 1, ChunkSize: MinChunkSize}
		}
		return &Accept{ID: 1, ChunkSize: MinChunkSize, DurableOffset: resumeAt, TailOffset: resumeAt - MinChunkSize, TailLength: MinChunkSize,
			TailHash: mustChunkHash(data[resumeAt-MinChunkSize:resumeAt], resumeAt-MinChunkSize, int64(len(data)))}
	}
	tests := []struct {
		name   string
		resume bool
		end    func(w io.Writer) error
	}{
		{"commits before the trailer", false, func(w io.Writer) error {
			return WriteMessage(w, &Committed{ID: 1, Size: int64(len(data)), Hash: HashBytes(data)})
		}},
		{"acks beyond the file", false, func(w io.Writer) error { return WriteMessage(w, &Ack{ID: 1, DurableOffset: 1 << 40}) }},
		{"acks beyond the file after a resume", true, func(w io.Writer) error { return WriteMessage(w, &Ack{ID: 1, DurableOffset: 1 << 40}) }},
		{"refuses", true, func(w io.Writer) error { return WriteMessage(w, &RemoteError{Code: CodeInternal}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := fakeDaemon(t, func(r *bufio.Reader, w io.Writer) error {
				if err := answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w); err != nil {
					return err
				}
				if _, err := ReadMessage(r); err != nil {
					return err
				}
				if err := WriteMessage(w, accept(tt.resume)); err != nil {
					return err
				}
				if _, err := ReadFrameHeader(r, MinChunkSize); err != nil { // the first chunk is on its way
					return err
				}
				if err := tt.end(w); err != nil {
					return err
				}
				_, err := io.Copy(io.Discard, r) // hold the session open
				return err
			})
			c, err := Handshake(context.Background(), conn, ClientOptions{ChunkSize: MinChunkSize})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			src := memSource(data)
			src.R = slowReader{src.R} // keeps the catch-up busy
			c.Send(context.Background(), src, "f", SendOptions{})
			checkNoTransferGoroutines(t)
		})
	}
}

// slowReader delays every read a little.
type slowReader struct{ r io.ReaderAt }

func (s slowReader) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(time.Millisecond)
	return s.r.ReadAt(p, off)
}

// mustChunkHash is ChunkHash for data known to be an aligned chunk.
func mustChunkHash(data []byte, offset, size int64) Hash {
	h, err := ChunkHash(data, offset, size)
	if err != nil {
		panic("bug: " + err.Error())
	}
	return h
}
