package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// In-process protocol tests: transfer.Client on one end of a net.Pipe,
// daemon.Server.ServeConn on the other, a DirStore on a temporary root.

const testChunk = transfer.MinChunkSize // 16 KiB: many chunks from small files

type testServer struct {
	*daemon.Server
	root string
}

// newServer starts a Server on a fresh root with cfg (Store and Logger
// filled in) and shuts it down at cleanup.
func newServer(t *testing.T, cfg daemon.Config) *testServer {
	t.Helper()
	return newServerAt(t, t.TempDir(), cfg)
}

func newServerAt(t *testing.T, root string, cfg daemon.Config) *testServer {
	t.Helper()
	return newServerWrapped(t, root, cfg, nil)
}

// newServerWrapped is newServerAt with the daemon's Store passed through
// wrap, if not nil.
func newServerWrapped(t *testing.T, root string, cfg daemon.Config, wrap func(daemon.Store) daemon.Store) *testServer {
	t.Helper()
	return newServerOn(t, root, cfg, nil, wrap)
}

// newServerOn is newServerWrapped with the root's FS passed through
// wrapFS too, if not nil, before the DirStore is made on it.
func newServerOn(t *testing.T, root string, cfg daemon.Config, wrapFS func(daemon.FS) daemon.FS, wrap func(daemon.Store) daemon.Store) *testServer {
	t.Helper()
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		t.Fatal(err)
	}
	var sfs daemon.FS = fsys
	if wrapFS != nil {
		sfs = wrapFS(fsys)
	}
	store, err := daemon.NewDirStore(sfs)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store = store
	if wrap != nil {
		cfg.Store = wrap(store)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv, err := daemon.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		fsys.Close()
	})
	return &testServer{Server: srv, root: root}
}

// dial opens a session: the daemon serves one end of a pipe, the test gets
// the other.
func (s *testServer) dial(t *testing.T) net.Conn {
	t.Helper()
	c, d := net.Pipe()
	s.ServeConn(d)
	t.Cleanup(func() { c.Close() })
	return c
}

func handshake(t *testing.T, conn io.ReadWriteCloser) *transfer.Client {
	t.Helper()
	return handshakeOpts(t, conn, transfer.ClientOptions{ChunkSize: testChunk, Agent: "ferry-test"})
}

func handshakeOpts(t *testing.T, conn io.ReadWriteCloser, opts transfer.ClientOptions) *transfer.Client {
	t.Helper()
	c, err := transfer.Handshake(context.Background(), conn, opts)
	if err != nil {
		t.Fatalf("Handshake: %v", err)
	}
	return c
}

// connect dials and shakes hands.
func (s *testServer) connect(t *testing.T) *transfer.Client {
	t.Helper()
	return handshake(t, s.dial(t))
}

func randomData(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

var testMtime = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

func source(data []byte) transfer.Source {
	return transfer.Source{R: bytes.NewReader(data), Size: int64(len(data)), Mode: 0o640, ModTime: testMtime, Inode: 99}
}

// checkCommitted checks that name under the root holds data with the mode
// and mtime of source(data), and that res reports it.
func (s *testServer) checkCommitted(t *testing.T, name string, data []byte, res transfer.Result) {
	t.Helper()
	s.checkCommittedFrom(t, name, source(data), data, res)
}

func (s *testServer) checkCommittedFrom(t *testing.T, name string, src transfer.Source, data []byte, res transfer.Result) {
	t.Helper()
	p := filepath.Join(s.root, filepath.FromSlash(name))
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("reading committed file: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("%s: committed %d bytes differ from the %d sent", name, len(got), len(data))
	}
	want := transfer.HashBytes(data)
	if res.Unchanged {
		want = transfer.Hash{} // quick check: nobody hashed it
	}
	if res.Hash != want {
		t.Fatalf("result hash %x, want %x", res.Hash, want)
	}
	if res.Size != int64(len(data)) {
		t.Fatalf("result size %d, want %d", res.Size, len(data))
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != src.Mode.Perm() || !fi.ModTime().Equal(src.ModTime) {
		t.Errorf("mode %v mtime %v, want %v and %v", fi.Mode(), fi.ModTime(), src.Mode.Perm(), src.ModTime)
	}
}

func (s *testServer) checkNoPartials(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.root, ".ferry", "partials"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("partial left behind: %s", e.Name())
	}
}

// sendRetryBusy sends on fresh sessions until the daemon stops answering
// busy: a session the test cut may still be releasing the name.
func (s *testServer) sendRetryBusy(t *testing.T, src transfer.Source, name string) transfer.Result {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := s.connect(t)
		res, err := c.Send(context.Background(), src, name, transfer.SendOptions{})
		c.Close()
		if err == nil {
			return res
		}
		if !errors.Is(err, transfer.ErrBusy) || time.Now().After(deadline) {
			t.Fatalf("Send: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSendFresh(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	tests := []struct {
		name   string
		remote string
		size   int
	}{
		{"empty file", "empty", 0},
		{"one byte", "one", 1},
		{"just under a chunk", "under", testChunk - 1},
		{"exactly one chunk", "exact", testChunk},
		{"just over a chunk", "over", testChunk + 1},
		{"many chunks and a remainder", "many", 37*testChunk + 123},
		{"larger than the identity prefix", "big/prefix", transfer.IdentityPrefix*3 + 5},
		{"nested directories are created", "a/b/c/d/file.bin", 1000},
		{"unicode name", "Fähre/日本語 ⛴.txt", 10},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := randomData(tt.size, byte(i))
			c := srv.connect(t)
			var last transfer.Progress
			res, err := c.Send(context.Background(), source(data), tt.remote, transfer.SendOptions{
				Progress: func(p transfer.Progress) { last = p },
			})
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			srv.checkCommitted(t, tt.remote, data, res)
			srv.checkNoPartials(t)
			if res.ResumedFrom != 0 || res.Restarted || res.SentBytes != int64(tt.size) {
				t.Errorf("result %+v", res)
			}
			if last.DurableOffset != int64(tt.size) || last.Sent != int64(tt.size) {
				t.Errorf("last progress %+v", last)
			}
		})
	}
}

func TestSessionCarriesManyTransfers(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	c := srv.connect(t)
	for i := range 6 {
		data := randomData(3*testChunk+i*1000, byte(i))
		name := "batch/file" + string(rune('a'+i))
		res, err := c.Send(context.Background(), source(data), name, transfer.SendOptions{})
		if err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
		srv.checkCommitted(t, name, data, res)
	}
}

// TestRefusalsKeepTheSessionUsable offers names the daemon refuses at
// offer time; each time, the next file goes through on the same session.
func TestRefusalsKeepTheSessionUsable(t *testing.T) {
	srv := newServer(t, daemon.Config{MaxSize: 1 << 20})
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(srv.root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srv.root, "taken"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srv.root, "plainfile"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A bad name whose refusal message is longer than a refusal may carry
	// and made of multi-byte runes: the message is cut, still a refusal.
	longBad := "x" + strings.Repeat("é", 1500) + "\x01"
	tests := []struct {
		name   string
		remote string
		size   int
		want   error
	}{
		{"exists", "taken", 10, transfer.ErrExists},
		{"parent", "../x", 10, transfer.ErrBadName},
		{"parent inside", "a/../../x", 10, transfer.ErrBadName},
		{"absolute", "/etc/ferry-test", 10, transfer.ErrBadName},
		{"reserved directory", ".ferry/partials/x", 10, transfer.ErrBadName},
		{"NUL", "a\x00b", 10, transfer.ErrBadName},
		{"escape sequence", "\x1b[2Jx", 10, transfer.ErrBadName},
		{"invalid UTF-8", "bad\xff", 10, transfer.ErrBadName},
		{"long non-ASCII bad name", longBad, 10, transfer.ErrBadName},
		{"symlink out of the root", "escape/x", 10, transfer.ErrBadName},
		{"file used as a directory", "plainfile/x", 10, transfer.ErrBadName},
		{"too large", "big", 1<<20 + 1, transfer.ErrTooLarge},
	}
	c := srv.connect(t)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := source(randomData(10, 1))
			src.Size = int64(tt.size) // the data is never read past the identity prefix
			if tt.size > 10 {
				src = source(randomData(tt.size, 1))
			}
			res, err := c.Send(context.Background(), src, tt.remote, transfer.SendOptions{})
			var re *transfer.RemoteError
			if !errors.As(err, &re) || !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want a refusal matching %v", err, tt.want)
			}
			if transfer.Retryable(err) {
				t.Errorf("refusal %v is retryable", err)
			}
			// A file of at most one chunk goes out with its offer
			// (protocol 2); nothing more is sent after the refusal.
			if res.SentBytes != 0 && (tt.size > testChunk || res.SentBytes != int64(tt.size)) {
				t.Errorf("sent %d bytes", res.SentBytes)
			}
			data := randomData(2*testChunk, byte(i))
			name := "ok" + string(rune('a'+i))
			res, err = c.Send(context.Background(), source(data), name, transfer.SendOptions{})
			if err != nil {
				t.Fatalf("next file on the same session: %v", err)
			}
			srv.checkCommitted(t, name, data, res)
		})
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside the root: %v", ents)
	}
	if b, _ := os.ReadFile(filepath.Join(srv.root, "taken")); string(b) != "old" {
		t.Errorf("existing file overwritten: %q", b)
	}
	srv.checkNoPartials(t)
}

func TestResumeAfterCut(t *testing.T) {
	size := 40*testChunk + 777
	data := randomData(size, 7)
	tests := []struct {
		name     string
		cutAfter int64 // bytes the sender writes before the link drops
	}{
		{"during the hello", 3},
		{"during the offer", 30},
		{"in the first chunk", 200},
		{"after a few chunks", 5*testChunk + 1000},
		{"mid-file", int64(size / 2)},
		// hello (19 bytes without an agent), offer (72 with a one-byte
		// name), 41 chunk frames, then 20 of the trailer's 37 bytes.
		{"in the trailer", 19 + 72 + 41*(transfer.FrameHeaderSize+transfer.ChunkHeaderSize) + int64(size) + 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, daemon.Config{})
			conn := &cutConn{Conn: srv.dial(t), after: tt.cutAfter}
			c, err := transfer.Handshake(context.Background(), conn, transfer.ClientOptions{ChunkSize: testChunk})
			if err == nil {
				_, err = c.Send(context.Background(), source(data), "f", transfer.SendOptions{})
			}
			if err == nil {
				t.Fatal("first attempt survived the cut")
			}
			if !transfer.Retryable(err) {
				t.Fatalf("cut gives a permanent error: %v", err)
			}
			res := srv.sendRetryBusy(t, source(data), "f")
			srv.checkCommitted(t, "f", data, res)
			srv.checkNoPartials(t)
			if res.ResumedFrom%testChunk != 0 && res.ResumedFrom != int64(size) {
				t.Errorf("resumed from %d, not a chunk boundary", res.ResumedFrom)
			}
			if res.ResumedFrom > tt.cutAfter {
				t.Errorf("resumed from %d, beyond the %d bytes sent", res.ResumedFrom, tt.cutAfter)
			}
			if tt.cutAfter > 5*testChunk && res.ResumedFrom < 4*testChunk {
				t.Errorf("resumed from %d, want the verified chunks kept", res.ResumedFrom)
			}
			if res.SentBytes != int64(size)-res.ResumedFrom {
				t.Errorf("sent %d bytes resuming at %d, want only the rest", res.SentBytes, res.ResumedFrom)
			}
		})
	}
}

// TestResumeCutDuringCatchUp resumes a partial with a durable prefix of
// many MiB and cuts the link at once. It once guarded the daemon's
// background re-read of the prefix; with merge stacks (issue 10) it also
// resumes a partial made in 1 MiB chunks in sessions of 16 KiB chunks
// (sendRetryBusy), which re-cuts the stack from the tail chunk
// (MergeStack.Rechunk) and keeps the prefix.
func TestResumeCutDuringCatchUp(t *testing.T) {
	srv := newServer(t, daemon.Config{MaxChunkSize: transfer.MaxChunkSize})
	data := randomData(40<<20, 3)
	cs := 1 << 20
	send := func(after int64) (transfer.Result, error) {
		conn := &cutConn{Conn: srv.dial(t), after: after}
		c, err := transfer.Handshake(context.Background(), conn, transfer.ClientOptions{ChunkSize: cs})
		if err != nil {
			return transfer.Result{}, err
		}
		return c.Send(context.Background(), source(data), "big", transfer.SendOptions{})
	}
	if _, err := send(36 << 20); err == nil {
		t.Fatal("first attempt survived the cut")
	}
	for i := range 3 {
		// Hello and offer go through; the first chunk does not.
		res, err := send(200)
		if err == nil {
			t.Fatal("attempt survived the cut")
		}
		if errors.Is(err, transfer.ErrBusy) {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if i > 0 && res.ResumedFrom < 30<<20 {
			t.Errorf("attempt %d resumed from %d", i, res.ResumedFrom)
		}
	}
	res := srv.sendRetryBusy(t, source(data), "big")
	srv.checkCommitted(t, "big", data, res)
	if res.ResumedFrom < 30<<20 {
		t.Errorf("resumed from %d, want the durable prefix kept", res.ResumedFrom)
	}
}

func TestCorruptChunksAreResent(t *testing.T) {
	size := 20*testChunk + 5
	data := randomData(size, 11)
	tests := []struct {
		name     string
		flips    map[int64]int // chunk offset → times its data is corrupted
		minExtra int64         // resent bytes at least
	}{
		{"first chunk once", map[int64]int{0: 1}, testChunk},
		{"middle chunk once", map[int64]int{7 * testChunk: 1}, testChunk},
		{"last chunk once", map[int64]int{20 * testChunk: 1}, 5},
		{"one chunk three times", map[int64]int{3 * testChunk: 3}, 3 * testChunk},
		{"several chunks", map[int64]int{testChunk: 1, 9 * testChunk: 2, 19 * testChunk: 1}, 4 * testChunk},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, daemon.Config{})
			var mu sync.Mutex
			conn := &flipConn{Conn: srv.dial(t), flip: func(off int64) bool {
				mu.Lock()
				defer mu.Unlock()
				if tt.flips[off] > 0 {
					tt.flips[off]--
					return true
				}
				return false
			}}
			c := handshake(t, conn)
			res, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{})
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			srv.checkCommitted(t, "f", data, res)
			if res.SentBytes < int64(size)+tt.minExtra {
				t.Errorf("sent %d bytes, want the corrupted chunks resent (≥ %d)", res.SentBytes, int64(size)+tt.minExtra)
			}
			for off, n := range tt.flips {
				if n != 0 {
					t.Errorf("chunk at %d: %d corruptions never happened", off, n)
				}
			}
		})
	}
}

func TestCorruptChunkBeyondMaxNacks(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	data := randomData(10*testChunk, 12)
	bad := int64(6 * testChunk)
	conn := &flipConn{Conn: srv.dial(t), flip: func(off int64) bool { return off == bad }}
	c := handshake(t, conn)
	_, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{MaxNacks: 2})
	var re *transfer.RemoteError
	if !errors.Is(err, transfer.ErrIntegrity) || errors.As(err, &re) {
		t.Fatalf("error %v, want the sender's own ErrIntegrity", err)
	}
	if !strings.Contains(err.Error(), "rejected 3 times") {
		t.Errorf("error %q does not count the rejections", err)
	}
	c.Close()
	if _, err := os.Stat(filepath.Join(srv.root, "f")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("file committed after integrity failure: %v", err)
	}
	// The verified chunks before the bad one stay durable; a clean link
	// resumes from them.
	res := srv.sendRetryBusy(t, source(data), "f")
	srv.checkCommitted(t, "f", data, res)
	if res.ResumedFrom != bad {
		t.Errorf("resumed from %d, want %d", res.ResumedFrom, bad)
	}
}

func TestSourceChanged(t *testing.T) {
	size := 2*transfer.IdentityPrefix + 10*testChunk
	orig := randomData(size, 21)
	tests := []struct {
		name   string
		change func(src *transfer.Source, data []byte)
		// restarted: the daemon discarded the partial (identity differs) or
		// the sender restarted it (tail chunk differs).
		restarted bool
	}{
		{"unchanged resumes", func(*transfer.Source, []byte) {}, false},
		{"same identity, tail chunk rewritten", func(_ *transfer.Source, d []byte) {
			// Inside the durable tail chunk, past the identity prefix.
			d[4*testChunk+transfer.IdentityPrefix+100] ^= 0xff
		}, true},
		{"mtime changed", func(s *transfer.Source, _ []byte) { s.ModTime = s.ModTime.Add(time.Second) }, true},
		{"inode changed", func(s *transfer.Source, _ []byte) { s.Inode++ }, true},
		{"prefix changed", func(_ *transfer.Source, d []byte) { d[0] ^= 1 }, true},
		{"size changed", func(s *transfer.Source, d []byte) {}, true}, // handled below
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, daemon.Config{})
			// The first attempt leaves a partial whose tail chunk ends at
			// the last full chunk before the cut.
			cut := int64(transfer.IdentityPrefix + 5*(testChunk+transfer.FrameHeaderSize+transfer.ChunkHeaderSize) + 500)
			conn := &cutConn{Conn: srv.dial(t), after: cut}
			if c, err := transfer.Handshake(context.Background(), conn, transfer.ClientOptions{ChunkSize: testChunk}); err == nil {
				if _, err := c.Send(context.Background(), source(orig), "f", transfer.SendOptions{}); err == nil {
					t.Fatal("first attempt survived the cut")
				}
			}
			data := append([]byte(nil), orig...)
			src := source(data)
			tt.change(&src, data)
			if tt.name == "size changed" {
				data = append(data, 1, 2, 3)
				src = source(data)
			}
			res := srv.sendRetryBusy(t, src, "f")
			srv.checkCommittedFrom(t, "f", src, data, res)
			srv.checkNoPartials(t)
			if res.Restarted != tt.restarted {
				t.Errorf("Restarted = %v, want %v", res.Restarted, tt.restarted)
			}
			if tt.restarted && (res.ResumedFrom != 0 || res.SentBytes != int64(len(data))) {
				t.Errorf("restarted transfer resumed from %d and sent %d of %d bytes", res.ResumedFrom, res.SentBytes, len(data))
			}
			if !tt.restarted && res.ResumedFrom == 0 {
				t.Errorf("unchanged source did not resume")
			}
		})
	}
}

func TestBusyName(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	data := randomData(8*testChunk, 31)
	// Session A stalls mid-transfer, holding the name.
	gate := newGateConn(srv.dial(t), 3*testChunk)
	a := handshake(t, gate)
	aDone := make(chan error, 1)
	go func() {
		_, err := a.Send(context.Background(), source(data), "shared", transfer.SendOptions{})
		aDone <- err
	}()
	<-gate.stalled

	b := srv.connect(t)
	_, err := b.Send(context.Background(), source(data), "shared", transfer.SendOptions{})
	if !errors.Is(err, transfer.ErrBusy) || !transfer.Retryable(err) {
		t.Fatalf("second session: %v, want a retryable ErrBusy refusal", err)
	}
	other := randomData(1000, 32)
	res, err := b.Send(context.Background(), source(other), "other", transfer.SendOptions{})
	if err != nil {
		t.Fatalf("next file after busy: %v", err)
	}
	srv.checkCommitted(t, "other", other, res)

	close(gate.open)
	if err := <-aDone; err == nil {
		t.Fatal("stalled session committed")
	}
	gate.Close()
	res = srv.sendRetryBusy(t, source(data), "shared")
	srv.checkCommitted(t, "shared", data, res)
	srv.checkNoPartials(t)
	if res.ResumedFrom == 0 {
		t.Error("did not resume the stalled session's partial")
	}
}

func TestMaxSessions(t *testing.T) {
	srv := newServer(t, daemon.Config{MaxSessions: 1})
	a := srv.connect(t)
	_, err := transfer.Handshake(context.Background(), srv.dial(t), transfer.ClientOptions{ChunkSize: testChunk})
	if !errors.Is(err, transfer.ErrBusy) {
		t.Fatalf("second session: %v, want ErrBusy", err)
	}
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := transfer.Handshake(context.Background(), srv.dial(t), transfer.ClientOptions{ChunkSize: testChunk})
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed after the first session ended: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestChunkSizeNegotiation(t *testing.T) {
	tests := []struct {
		name      string
		daemonMax int
		proposed  int
		want      int
	}{
		{"daemon default caps at 4 MiB", 0, transfer.MaxChunkSize, 4 << 20},
		{"proposal below the cap is kept", 0, 64 << 10, 64 << 10},
		{"daemon cap lowers it", 32 << 10, 1 << 20, 32 << 10},
		{"daemon cap below the minimum is raised to it", 1, 1 << 20, transfer.MinChunkSize},
		// Chunk sizes are powers of two (issue 10): a daemon cap that is
		// not one is rounded down, which also keeps every full chunk a
		// multiple of daemon.DirectAlign for direct I/O.
		{"daemon cap rounded down to a power of two", 70000, 1 << 20, 64 << 10},
		{"daemon cap just below a power of two", 1<<20 - 1, 1 << 20, 512 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, daemon.Config{MaxChunkSize: tt.daemonMax})
			c, err := transfer.Handshake(context.Background(), srv.dial(t), transfer.ClientOptions{ChunkSize: tt.proposed})
			if err != nil {
				t.Fatal(err)
			}
			if c.ChunkSize() != tt.want {
				t.Fatalf("chunk size %d, want %d", c.ChunkSize(), tt.want)
			}
			data := randomData(3*tt.want+1, 41)
			res, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			srv.checkCommitted(t, "f", data, res)
		})
	}
}

func TestShutdownMakesPartialDurable(t *testing.T) {
	root := t.TempDir()
	srv := newServerAt(t, root, daemon.Config{})
	data := randomData(30*testChunk, 51)
	gate := newGateConn(srv.dial(t), 10*testChunk)
	c := handshake(t, gate)
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{})
		done <- err
	}()
	<-gate.stalled
	// Nothing is durable yet: the sync thresholds are far away.
	if states := stateFiles(t, root); len(states) != 0 {
		t.Fatalf("state records before Shutdown: %v", states)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	// Shutdown interrupts the session, which makes its verified chunks
	// durable. The sender, stalled, reads no more after the refusal, so
	// the test hangs up for it once the state record is written.
	deadline := time.Now().Add(5 * time.Second)
	for len(stateFiles(t, root)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no state record written after Shutdown")
		}
		time.Sleep(time.Millisecond)
	}
	close(gate.open)
	gate.Close()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; err == nil {
		t.Fatal("transfer committed across Shutdown")
	}

	// A connection after Shutdown is refused at once.
	r := bufio.NewReader(srv.dial(t))
	m, err := transfer.ReadMessage(r)
	if re, ok := m.(*transfer.RemoteError); err != nil || !ok || re.Code != transfer.CodeShuttingDown || !transfer.Retryable(re) {
		t.Fatalf("after Shutdown: %v, %v; want a retryable CodeShuttingDown refusal", m, err)
	}

	// A new daemon on the same root resumes from the durable partial.
	srv2 := newServerAt(t, root, daemon.Config{})
	res := srv2.sendRetryBusy(t, source(data), "f")
	srv2.checkCommitted(t, "f", data, res)
	srv2.checkNoPartials(t)
	if res.ResumedFrom < 8*testChunk {
		t.Errorf("resumed from %d, want the chunks received before Shutdown (≥ %d)", res.ResumedFrom, 8*testChunk)
	}
}

func stateFiles(t *testing.T, root string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(root, ".ferry", "partials", "*.state"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestNewServerWithoutStore(t *testing.T) {
	if _, err := daemon.NewServer(daemon.Config{}); err == nil {
		t.Fatal("NewServer without a Store succeeded")
	}
}

// TestChangedPrefixCaughtByWholeFileHash changes the sender's file inside
// the durable prefix, past the identity prefix and before the tail chunk,
// keeping its size, mtime and inode: what neither the offer nor the tail
// check sees. The daemon restarts in between, so its whole-file hash comes
// from the merge stack in the state record; the sender re-hashes its own
// prefix and never trusts the daemon's, so the roots differ at the
// trailer: the daemon refuses the commit, resets the partial, and the
// next attempt starts from zero. (Damage to the daemon's own durable bytes
// before the tail chunk is not looked for: resume reads no prefix; see
// docs/PROTOCOL.md.)
func TestChangedPrefixCaughtByWholeFileHash(t *testing.T) {
	root := t.TempDir()
	srv := newServerAt(t, root, daemon.Config{})
	data := randomData(20*testChunk, 101)
	conn := &cutConn{Conn: srv.dial(t), after: 10 * testChunk}
	c := handshake(t, conn)
	if _, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{}); err == nil {
		t.Fatal("first attempt survived the cut")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil { // waits for the session to end
		t.Fatal(err)
	}
	changed := bytes.Clone(data)
	changed[transfer.IdentityPrefix+100] ^= 0xff

	srv2 := newServerAt(t, root, daemon.Config{})
	c = srv2.connect(t)
	res, err := c.Send(context.Background(), source(changed), "f", transfer.SendOptions{})
	var re *transfer.RemoteError
	if !errors.As(err, &re) || re.Code != transfer.CodeIntegrity || !transfer.Retryable(err) {
		t.Fatalf("resume of a changed prefix: %v, want a retryable CodeIntegrity refusal", err)
	}
	if res.ResumedFrom <= transfer.IdentityPrefix+testChunk {
		t.Fatalf("resumed from %d, not past the changed chunk's successor, so the test tests nothing", res.ResumedFrom)
	}
	if _, err := os.Stat(filepath.Join(root, "f")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("mixed file committed: %v", err)
	}
	res = srv2.sendRetryBusy(t, source(changed), "f")
	srv2.checkCommitted(t, "f", changed, res)
	if res.ResumedFrom != 0 {
		t.Errorf("resumed from %d after the reset, want 0", res.ResumedFrom)
	}
}

// partialKeyOf derives a partial's key as docs/PROTOCOL.md says (no
// credential).
func partialKeyOf(name string) string {
	h := transfer.HashBytes([]byte("ferry partial v1\x00\x00" + name))
	return hex.EncodeToString(h[:16])
}

// TestCommitInterruptedBeforeCleanup recreates the root as a crash leaves
// it between the two removals at the end of a commit: the state record is
// gone, KEY.data is still a hard link of the committed file. The sender,
// which never got Committed, offers the name again. Whatever it sends, the
// committed file must not change.
func TestCommitInterruptedBeforeCleanup(t *testing.T) {
	data := randomData(5*testChunk, 111)
	tests := []struct {
		name     string
		again    []byte
		cutAfter int64 // 0: no cut
	}{
		{"same file, cut midway", data, 3 * testChunk},
		{"same file, sent in full", data, 0},
		{"other content, sent in full", randomData(5*testChunk, 112), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			first := newServerAt(t, root, daemon.Config{})
			c := first.connect(t)
			if _, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{}); err != nil {
				t.Fatal(err)
			}
			c.Close()
			first.Shutdown(context.Background()) // waits for the session to let go of the name
			srv := newServerAt(t, root, daemon.Config{})
			committed := filepath.Join(srv.root, "f")
			link := filepath.Join(srv.root, ".ferry", "partials", partialKeyOf("f")+".data")
			if err := os.Link(committed, link); err != nil {
				t.Fatal(err)
			}

			conn := srv.dial(t)
			if tt.cutAfter > 0 {
				conn = &cutConn{Conn: conn, after: tt.cutAfter}
			}
			c = handshake(t, conn)
			_, err := c.Send(context.Background(), source(tt.again), "f", transfer.SendOptions{})
			if tt.cutAfter == 0 && err != nil && !errors.Is(err, transfer.ErrExists) {
				t.Errorf("offering the name again: %v, want success or ErrExists", err)
			}
			c.Close()
			srv.Shutdown(context.Background()) // let the session finish
			if b, err := os.ReadFile(committed); err != nil || !bytes.Equal(b, data) {
				t.Fatalf("committed file changed: %d bytes, %v", len(b), err)
			}
		})
	}
}
