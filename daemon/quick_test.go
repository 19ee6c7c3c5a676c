package daemon_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// countingReader counts the bytes read from a source.
type countingReader struct {
	r io.ReaderAt
	n *atomic.Int64
}

func (c countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// countingStore counts the committed files the daemon opens to read.
type countingStore struct {
	daemon.Store
	opened atomic.Int64
}

func (s *countingStore) OpenCommitted(name string) (daemon.CommittedFile, error) {
	s.opened.Add(1)
	return s.Store.OpenCommitted(name)
}

// TestRerunQuickCheck (issue 9): sending a committed tree again settles
// every file as unchanged by size and mtime alone. No chunk is sent, the
// sender reads no more of each file than its offer's identity prefix, the
// daemon opens no committed file, and the daemon's log has no INFO line
// per file (the files are logged at debug level).
func TestRerunQuickCheck(t *testing.T) {
	var log lockedBuffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var store *countingStore
	srv := newServerWrapped(t, t.TempDir(), daemon.Config{Logger: logger}, func(s daemon.Store) daemon.Store {
		store = &countingStore{Store: s}
		return store
	})
	// Small files (speculative, at most one chunk) and large ones.
	small, smallData := jobs(40, 1000, "small")
	large, largeData := jobs(4, 3*transfer.IdentityPrefix+17, "large")
	all := append(small, large...)
	data := append(smallData, largeData...)
	send := func(js []*transfer.Job) {
		t.Helper()
		c := srv.connect(t)
		defer c.Close()
		unsettled, _, err := c.SendAll(context.Background(), feed(js), func(j *transfer.Job, err error) {
			if err != nil {
				t.Errorf("%s: %v", j.Name, err)
			}
		}, transfer.WindowOptions{})
		if err != nil || len(unsettled) != 0 {
			t.Fatalf("SendAll: %v, %d unsettled", err, len(unsettled))
		}
	}
	send(all)
	firstLog := len(log.String())

	var read atomic.Int64
	again := make([]*transfer.Job, len(all))
	for i, j := range all {
		src := source(data[i])
		src.R = countingReader{r: src.R, n: &read}
		again[i] = &transfer.Job{Name: j.Name, Src: src}
	}
	send(again)
	var sent int64
	var prefixes int64
	for i, j := range again {
		if !j.Last.AlreadyCommitted || !j.Last.Unchanged {
			t.Errorf("%s: already committed %v, unchanged %v; want both", j.Name, j.Last.AlreadyCommitted, j.Last.Unchanged)
		}
		sent += j.Last.SentBytes
		prefixes += min(int64(len(data[i])), transfer.IdentityPrefix)
		srv.checkCommitted(t, j.Name, data[i], j.Last)
	}
	if sent != 0 {
		t.Errorf("re-run sent %d bytes of chunk data, want 0", sent)
	}
	if r := read.Load(); r > prefixes {
		t.Errorf("the sender read %d bytes of its files, want at most the identity prefixes (%d)", r, prefixes)
	}
	if n := store.opened.Load(); n != 0 {
		t.Errorf("the daemon opened %d committed files to answer, want 0", n)
	}
	rerun := log.String()[firstLog:]
	var info, debug int
	for _, line := range strings.Split(rerun, "\n") {
		switch {
		case strings.Contains(line, "level=INFO") && strings.Contains(line, "name="):
			info++
			t.Errorf("INFO line for a file on a re-run: %s", line)
		case strings.Contains(line, "level=DEBUG") && strings.Contains(line, "msg=unchanged"):
			debug++
		}
	}
	if debug != len(all) {
		t.Errorf("%d debug lines for unchanged files, want %d", debug, len(all))
	}
}

// TestQuickCheckNeedsMinor1: a sender of protocol 2.0 knows no
// CommittedUnchanged, so it still gets AcceptCommitted (and confirms by
// its trailer); a sender of 2.1 gets Committed{Already, Unchanged} at once,
// with no Accept, unless it asks for OfferChecksum.
func TestQuickCheckNeedsMinor1(t *testing.T) {
	root := t.TempDir()
	data := randomData(3*testChunk+5, 141)
	// Each session offers the name right after the last one's answer: a
	// lock slow to give back (as a lease is) must be released before it.
	srv := newServerAt(t, root, daemon.Config{Locker: &slowUnlocker{delay: 200 * time.Millisecond}})
	srv.sendRetryBusy(t, source(data), "f")

	p := srv.raw(t)
	p.hello() // minor 0
	p.write(msgFrame(offerFor("f", data)))
	if acc := expect[*transfer.Accept](p); acc.Flags&transfer.AcceptCommitted == 0 {
		t.Fatalf("2.0 sender: accept flags %b, want AcceptCommitted", acc.Flags)
	}
	p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
	if c := expect[*transfer.Committed](p); c.Flags != transfer.CommittedAlready || c.Hash != transfer.HashBytes(data) {
		t.Fatalf("2.0 sender: %+v, want CommittedAlready with the file's hash", c)
	}

	for i := 0; i < 2; i++ {
		checksum := i == 1
		p = srv.raw(t)
		p.write(msgFrame(&transfer.Hello{Major: transfer.ProtocolMajor, Minor: 1, ChunkSize: testChunk, Agent: "raw"}))
		expect[*transfer.Hello](p)
		o := offerFor("f", data)
		if checksum {
			o = checksumOffer(o)
		}
		p.write(msgFrame(o))
		m, err := p.read()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *transfer.Committed:
			if checksum || m.Flags != transfer.CommittedAlready|transfer.CommittedUnchanged || m.Size != int64(len(data)) {
				t.Fatalf("2.1 sender, checksum %v: %+v", checksum, m)
			}
		case *transfer.Accept:
			if !checksum || m.Flags&transfer.AcceptCommitted == 0 {
				t.Fatalf("2.1 sender, checksum %v: %+v", checksum, m)
			}
		default:
			t.Fatalf("2.1 sender, checksum %v: %T %+v", checksum, m, m)
		}
	}
}

// TestTouchedFileConfirmedByHash: a committed file offered again with
// another mtime but the same size (touched on the sender) fails the quick
// check and is compared by BLAKE3 instead: the same content is confirmed
// without data, other content is refused as exists, and the committed file
// stays as it was.
func TestTouchedFileConfirmedByHash(t *testing.T) {
	data := randomData(4*testChunk+77, 151)
	srv := newServer(t, daemon.Config{})
	c := srv.connect(t)
	if _, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{}); err != nil {
		t.Fatal(err)
	}
	touched := source(data)
	touched.ModTime = touched.ModTime.Add(time.Second)
	res, err := c.Send(context.Background(), touched, "f", transfer.SendOptions{})
	if err != nil {
		t.Fatalf("touched file: %v, want it confirmed", err)
	}
	if !res.AlreadyCommitted || res.Unchanged || res.SentBytes != 0 || res.Hash != transfer.HashBytes(data) {
		t.Errorf("touched file: %+v; want already committed by hash, no data sent", res)
	}
	other := randomData(len(data), 152)
	otherSrc := source(other)
	otherSrc.ModTime = touched.ModTime
	if _, err := c.Send(context.Background(), otherSrc, "f", transfer.SendOptions{}); !errors.Is(err, transfer.ErrExists) {
		t.Fatalf("touched file with other content: %v, want ErrExists", err)
	}
	srv.checkCommitted(t, "f", data, transfer.Result{Size: int64(len(data)), Hash: transfer.HashBytes(data)})
}

// TestUpdateReplaces (issue 9): a committed file of other content is
// refused (ErrExists) unless the sender asks for an update; then the new
// content is received into a partial and renamed over the old file at its
// commit, with the new mode and mtime and no partial left. An update of a
// file that is unchanged (same size and mtime) sends nothing.
func TestUpdateReplaces(t *testing.T) {
	tests := []struct {
		name string
		size int
	}{
		{"larger", 5*testChunk + 11},
		{"smaller, one chunk", 100},
		{"empty", 0},
		{"same size, new mtime", 3*testChunk + 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, daemon.Config{})
			old := randomData(3*testChunk+7, 161)
			srv.sendRetryBusy(t, source(old), "d/f")
			now := randomData(tt.size, 162)
			src := source(now)
			src.ModTime = src.ModTime.Add(time.Hour)
			src.Mode = 0o600

			if _, err := srv.sendOpts(t, transfer.ClientOptions{ChunkSize: testChunk}, src, "d/f"); !errors.Is(err, transfer.ErrExists) {
				t.Fatalf("without update: %v, want ErrExists", err)
			}
			checkUnchanged(t, srv.root, "d/f", old, "after a refused send")

			update := transfer.ClientOptions{ChunkSize: testChunk, Update: true}
			res, err := srv.sendOpts(t, update, src, "d/f")
			if err != nil {
				t.Fatalf("with update: %v", err)
			}
			if res.AlreadyCommitted || res.SentBytes != int64(len(now)) {
				t.Errorf("update: %+v; want the new content sent", res)
			}
			srv.checkCommittedFrom(t, "d/f", src, now, res)
			srv.checkNoPartials(t)

			// Again: unchanged by the quick check, nothing sent.
			res, err = srv.sendOpts(t, update, src, "d/f")
			if err != nil || !res.Unchanged || res.SentBytes != 0 {
				t.Fatalf("update of an unchanged file: %+v, %v; want unchanged", res, err)
			}
		})
	}
}

// sendOpts sends src as name in a new session with opts, retrying while
// the daemon says the name is busy (a previous session still holds it for
// a moment); it returns any other outcome.
func (s *testServer) sendOpts(t *testing.T, opts transfer.ClientOptions, src transfer.Source, name string) (transfer.Result, error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := handshakeOpts(t, s.dial(t), opts)
		res, err := c.Send(context.Background(), src, name, transfer.SendOptions{})
		c.Close()
		if !errors.Is(err, transfer.ErrBusy) || time.Now().After(deadline) {
			return res, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countingCommitted is a committed file that counts the bytes read from it; it
// embeds the *os.File, so that the daemon still sees an OS file (xattrs).
type countingCommitted struct {
	*os.File
	n *atomic.Int64
}

func (f countingCommitted) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	f.n.Add(int64(n))
	return n, err
}

// readCountingStore counts the bytes the daemon reads from committed files.
type readCountingStore struct {
	daemon.Store
	read atomic.Int64
}

func (s *readCountingStore) OpenCommitted(name string) (daemon.CommittedFile, error) {
	f, err := s.Store.OpenCommitted(name)
	if of, ok := f.(*os.File); ok && err == nil {
		return countingCommitted{File: of, n: &s.read}, nil
	}
	return f, err
}

// TestChecksumUsesStoredHash (issue 9): the daemon records each committed
// file's BLAKE3 with its size and mtime (an extended attribute), so that
// --checksum on an unchanged file is answered without reading its data;
// other content of the same size and mtime is still refused. A file whose
// record no longer matches (its mtime moved on the daemon) is re-hashed.
func TestChecksumUsesStoredHash(t *testing.T) {
	var store *readCountingStore
	root := t.TempDir()
	srv := newServerWrapped(t, root, daemon.Config{}, func(s daemon.Store) daemon.Store {
		store = &readCountingStore{Store: s}
		return store
	})
	data := randomData(6*testChunk+99, 171)
	srv.sendRetryBusy(t, source(data), "f")
	if n, err := unix.Getxattr(filepath.Join(root, "f"), "user.ferry.blake3", make([]byte, 64)); err != nil || n != 48 {
		t.Skipf("no user xattr on the committed file (%d bytes, %v): the file system does not keep them", n, err)
	}
	checksum := transfer.ClientOptions{ChunkSize: testChunk, Checksum: true}
	store.read.Store(0)
	res, err := srv.sendOpts(t, checksum, source(data), "f")
	if err != nil || !res.AlreadyCommitted || res.Unchanged || res.Hash != transfer.HashBytes(data) {
		t.Fatalf("--checksum of the same file: %+v, %v; want confirmed by hash", res, err)
	}
	// The tail chunk, for the Accept, is all the daemon may read.
	if n := store.read.Load(); n > testChunk {
		t.Errorf("the daemon read %d bytes of the committed file to answer --checksum, want at most the tail chunk (%d)", n, testChunk)
	}
	other := randomData(len(data), 172)
	if _, err := srv.sendOpts(t, checksum, source(other), "f"); !errors.Is(err, transfer.ErrExists) {
		t.Fatalf("--checksum of other content with the same size and mtime: %v, want ErrExists", err)
	}
	// The record is tied to the mtime: after a change on the daemon, the
	// file is hashed again (and, having the same content, confirmed).
	later := testMtime.Add(time.Minute)
	if err := os.Chtimes(filepath.Join(root, "f"), later, later); err != nil {
		t.Fatal(err)
	}
	src := source(data)
	src.ModTime = later
	store.read.Store(0)
	if _, err := srv.sendOpts(t, checksum, src, "f"); err != nil {
		t.Fatal(err)
	}
	if n := store.read.Load(); n < int64(len(data)) {
		t.Errorf("the daemon read %d bytes of a file whose record is stale, want all %d", n, len(data))
	}
}
