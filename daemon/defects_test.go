package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// Regression tests for the daemon defects of issue 8. The tests that need
// the real binaries are in integration/daemon_defects_test.go.

// spaceStore reports a fixed amount of free space, so that admission's
// arithmetic can be pinned.
type spaceStore struct {
	*daemon.DirStore
	free int64
}

func (s spaceStore) FreeSpace() int64 { return s.free }

// newSpaceServer starts a Server whose store reports free bytes free,
// logging to log (nil: nowhere).
func newSpaceServer(t *testing.T, free int64, cfg daemon.Config, log slog.Handler) *testServer {
	t.Helper()
	if log != nil {
		cfg.Logger = slog.New(log)
	}
	return newServerWrapped(t, t.TempDir(), cfg, func(s daemon.Store) daemon.Store {
		return spaceStore{s.(*daemon.DirStore), free}
	})
}

// msgHandler passes the message of every log record to a channel.
type msgHandler struct{ msgs chan string }

func (h msgHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h msgHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.msgs <- r.Message:
	default: // never block the daemon; tests wait for few lines
	}
	return nil
}
func (h msgHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h msgHandler) WithGroup(string) slog.Handler      { return h }

// waitLog waits for n records with message msg.
func waitLog(t *testing.T, msgs <-chan string, msg string, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for n > 0 {
		select {
		case m := <-msgs:
			if m == msg {
				n--
			}
		case <-timeout:
			t.Fatalf("%d more %q log lines did not come", n, msg)
		}
	}
}

// TestLockRootExcludesSecondDaemon: a root has one daemon. A second lock
// on it is refused with a line that names the root and the likely cause,
// and once the first is released the root can be locked again.
func TestLockRootExcludesSecondDaemon(t *testing.T) {
	root := t.TempDir()
	open := func() *daemon.OSFS {
		fsys, err := daemon.OpenOSFS(root)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fsys.Close() })
		return fsys
	}
	first, err := daemon.LockRoot(open())
	if err != nil {
		t.Fatalf("first lock: %v", err)
	}
	_, err = daemon.LockRoot(open())
	if !errors.Is(err, daemon.ErrRootLocked) {
		t.Fatalf("second lock: %v, want ErrRootLocked", err)
	}
	if msg := err.Error(); !strings.Contains(msg, root) || !strings.Contains(msg, "another ferryd is probably running") || strings.Contains(msg, "\n") {
		t.Errorf("refusal %q: want one line naming the root and the likely cause", msg)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := daemon.LockRoot(open())
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again.Close()
}

// TestReservationReleasedWhenAcceptFails: clients that offer nearly all
// the free space and hang up before the Accept is written left their
// reservation behind, and every later offer was refused "no space" until
// the daemon restarted.
func TestReservationReleasedWhenAcceptFails(t *testing.T) {
	const free = 1 << 20
	msgs := make(chan string, 1000)
	srv := newSpaceServer(t, free, daemon.Config{}, msgHandler{msgs})
	const clients = 9
	for i := range clients {
		c := srv.dial(t)
		r := bufio.NewReader(c)
		c.Write(msgFrame(&transfer.Hello{Major: transfer.ProtocolMajor, ChunkSize: testChunk, Agent: "reset"}))
		if _, err := transfer.ReadMessage(r); err != nil {
			t.Fatal(err)
		}
		c.Write(msgFrame(&transfer.Offer{ID: 1, Size: free - 1000, Mode: 0o600, Name: "big" + string(rune('0'+i))}))
		c.Close() // before the Accept: the daemon's write of it fails
	}
	waitLog(t, msgs, "session ended", clients)
	if n := srv.ReservedBytes(); n != 0 {
		t.Errorf("%d bytes still reserved after every session ended", n)
	}
	data := randomData(free/2, 121)
	c := srv.connect(t)
	res, err := c.Send(context.Background(), source(data), "after", transfer.SendOptions{})
	if err != nil {
		t.Fatalf("send after the resets: %v", err)
	}
	srv.checkCommitted(t, "after", data, res)
}

// leftoverCommit builds, under root, what a daemon that died between
// linking a committed file and removing its partial leaves: name holds
// data (with the mode and mtime of offerFor), and the partial's state
// record and data file, a hard link of it, are still there.
func leftoverCommit(t *testing.T, root, name string, data []byte) {
	t.Helper()
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	s, err := daemon.NewDirStore(fsys)
	if err != nil {
		t.Fatal(err)
	}
	o := offerFor(name, data)
	p, _, err := s.Open(partialKeyOf(name), o, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sync(daemon.StackOf(data, int64(len(data)), testChunk)); err != nil {
		t.Fatal(err)
	}
	p.Close()
	dataPath := filepath.Join(root, ".ferry", "partials", partialKeyOf(name)+".data")
	if err := os.Chmod(dataPath, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(dataPath, testMtime, testMtime); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(dataPath, dst); err != nil {
		t.Fatal(err)
	}
}

// checkUnchanged fails unless name under root still holds data.
func checkUnchanged(t *testing.T, root, name string, data []byte, when string) {
	t.Helper()
	if got, err := os.ReadFile(filepath.Join(root, name)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%s: the committed file changed: %d bytes, %v", when, len(got), err)
	}
}

// TestLeftoverCommitNeverRewritten: after a daemon died between linking
// the committed name and removing the partial, an offer of the same file
// was resumed at its end, a wrong trailer reset the partial to offset 0,
// and the next offer truncated the data file, which is the committed
// file, and committed new content over it. Now the offer finishes the
// cut-short commit first: the committed file is never written, and the
// same file is confirmed by hash.
func TestLeftoverCommitNeverRewritten(t *testing.T) {
	root := t.TempDir()
	data := randomData(5*testChunk+100, 131)
	leftoverCommit(t, root, "f", data)
	// A lock slow to give back (as a lease is) would make the offer that
	// follows the refusal busy, were the name released after the refusal.
	srv := newServerAt(t, root, daemon.Config{Locker: &slowUnlocker{delay: 200 * time.Millisecond}})

	p := srv.raw(t)
	p.hello()
	p.write(msgFrame(checksumOffer(offerFor("f", data))))
	expect[*transfer.Accept](p)
	p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.Hash{1}})) // wrong
	expect[*transfer.RemoteError](p)
	checkUnchanged(t, root, "f", data, "after a wrong trailer")

	other := randomData(len(data), 132)
	// The daemon released the name before its refusal: a new session
	// offering it at once is never told busy.
	p = srv.raw(t)
	p.hello()
	p.write(msgFrame(checksumOffer(offerFor("f", data))))
	acc := expect[*transfer.Accept](p)
	checkUnchanged(t, root, "f", data, "after the offer that follows")
	if acc.DurableOffset == 0 {
		for off := 0; off < len(other); off += testChunk {
			p.write(chunkFrame(int64(off), other[off:min(off+testChunk, len(other))], int64(len(other))))
		}
	}
	p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(other)}))
	if re := expect[*transfer.RemoteError](p); re.Code != transfer.CodeExists {
		t.Errorf("other content under the name: refused %d %q, want CodeExists", re.Code, re.Message)
	}
	checkUnchanged(t, root, "f", data, "after other content was sent")
	srv.checkNoPartials(t)

	// The sender of the file, which never heard Committed, gets it now.
	res := srv.sendRetryBusy(t, source(data), "f")
	if res.SentBytes != 0 {
		t.Errorf("confirming the committed file sent %d bytes, want 0", res.SentBytes)
	}
	srv.checkCommitted(t, "f", data, res)
}

// TestFinishCommitsAtStart: the scan at start finishes the same leftover
// without an offer, and discards a data file linked elsewhere.
func TestFinishCommitsAtStart(t *testing.T) {
	root := t.TempDir()
	data := randomData(3*testChunk, 141)
	leftoverCommit(t, root, "d/f", data)
	// A commit cut short after the state record was removed: the data
	// file alone, still a link of the committed file.
	other := randomData(1000, 142)
	if err := os.WriteFile(filepath.Join(root, "g"), other, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "g"), filepath.Join(root, ".ferry", "partials", partialKeyOf("g")+".data")); err != nil {
		t.Fatal(err)
	}
	s, _ := storeAt(t, root)
	finished, discarded, err := s.FinishCommits()
	if err != nil || len(finished) != 1 || finished[0] != "d/f" || discarded != 1 {
		t.Fatalf("FinishCommits: %q, %d discarded, %v; want [d/f], 1", finished, discarded, err)
	}
	checkUnchanged(t, root, "d/f", data, "after the scan")
	checkUnchanged(t, root, "g", other, "after the scan")
	if ents, _ := os.ReadDir(filepath.Join(root, ".ferry", "partials")); len(ents) != 0 {
		t.Errorf("partials left after the scan: %v", ents)
	}
}

func storeAt(t *testing.T, root string) (*daemon.DirStore, *daemon.OSFS) {
	t.Helper()
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	s, err := daemon.NewDirStore(fsys)
	if err != nil {
		t.Fatal(err)
	}
	return s, fsys
}

// TestDeepNamesBounded: a 4 KiB name of 2,048 components made the daemon
// create 2,047 directories. Names are bounded to MaxNameDepth components,
// and one transfer to MaxNewDirs new directories; both refusals leave the
// session usable and create nothing.
func TestDeepNamesBounded(t *testing.T) {
	srv := newHostileServer(t, daemon.Config{})
	tests := []struct {
		name string
		dest string
		msg  string
	}{
		{"2048 components", strings.Repeat("a/", 2047) + "f", "2048 components, more than 64"},
		{"one component above MaxNameDepth", strings.Repeat("b/", transfer.MaxNameDepth) + "f", "65 components, more than 64"},
		{"more new directories than MaxNewDirs", strings.Repeat("c/", daemon.MaxNewDirs+1) + "f", "more than 32 new directories"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := srv.raw(t)
			p.hello()
			p.write(msgFrame(&transfer.Offer{ID: 1, Size: 0, Mode: 0o600, Name: tt.dest}))
			srv.expectOpenRefusal(p, transfer.CodeBadName, tt.msg, "ok"+string(rune('0'+i)))
		})
	}
	ents, err := os.ReadDir(srv.root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() && e.Name() != ".ferry" {
			t.Errorf("directory %q created for a refused name", e.Name())
		}
	}
	// A name at both bounds is accepted.
	p := srv.raw(t)
	p.hello()
	name := strings.Repeat("d/", daemon.MaxNewDirs) + "f"
	p.sendWhole(name, randomData(10, 151))
}

// addrConn is a pipe end that reports a TCP remote address.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// dialFrom opens a session as if from ip over TCP.
func (s *testServer) dialFrom(t *testing.T, ip string) net.Conn {
	t.Helper()
	c, d := net.Pipe()
	s.ServeConn(addrConn{d, &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}})
	t.Cleanup(func() { c.Close() })
	return c
}

// TestMaxSessionsPerIP: one address can hold no more than its share of
// the sessions; other addresses, and Unix sockets, still get in.
func TestMaxSessionsPerIP(t *testing.T) {
	srv := newServer(t, daemon.Config{MaxSessionsPerIP: 2})
	shake := func(conn net.Conn) (*transfer.Client, error) {
		return transfer.Handshake(context.Background(), conn, transfer.ClientOptions{ChunkSize: testChunk})
	}
	first, err := shake(srv.dialFrom(t, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shake(srv.dialFrom(t, "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	_, err = shake(srv.dialFrom(t, "127.0.0.1"))
	var re *transfer.RemoteError
	if !errors.As(err, &re) || re.Code != transfer.CodeBusy || !strings.Contains(re.Message, "2 sessions from 127.0.0.1, its limit per address") {
		t.Fatalf("third session from one address: %v, want CodeBusy naming the per-address limit", err)
	}
	for _, from := range []string{"127.0.0.2", ""} {
		conn := srv.dial(t) // a pipe: not TCP, not counted
		if from != "" {
			conn = srv.dialFrom(t, from)
		}
		c, err := shake(conn)
		if err != nil {
			t.Fatalf("session from %q: %v", from, err)
		}
		data := randomData(1000, 161)
		if _, err := c.Send(context.Background(), source(data), "from"+from, transfer.SendOptions{}); err != nil {
			t.Fatalf("send from %q: %v", from, err)
		}
	}
	first.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := shake(srv.dialFrom(t, "127.0.0.1"))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot of the address not freed after its session ended: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMinRateDropsTrickler: a session that offered all the free space and
// then sent almost nothing kept every other sender out with "no space".
// It is dropped once below MinRate over MinRateWindow: it gets a
// retryable refusal, its verified chunk stays durable for a resume, and
// its reservation goes to the next sender.
func TestMinRateDropsTrickler(t *testing.T) {
	const free = 1 << 20
	srv := newSpaceServer(t, free, daemon.Config{MinRate: 1024, MinRateWindow: time.Second}, nil)
	slow := randomData(free-100, 171)
	a := srv.raw(t)
	a.hello()
	a.write(msgFrame(offerFor("slow", slow)))
	if acc := expect[*transfer.Accept](a); acc.DurableOffset != 0 {
		t.Fatalf("accepted at %d", acc.DurableOffset)
	}
	a.write(msgFrame(&transfer.Data{ID: 1}), chunkFrame(0, slow[:testChunk], int64(len(slow))))
	refused := make(chan error, 1)
	go func() { // reads what the daemon says to the trickler, to the end
		for {
			a.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			m, err := transfer.ReadMessage(a.r)
			if err != nil {
				refused <- err
				return
			}
			if re, ok := m.(*transfer.RemoteError); ok {
				refused <- re
				return
			}
		}
	}()

	data := randomData(free/2, 172)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := srv.connect(t)
		res, err := c.Send(context.Background(), source(data), "next", transfer.SendOptions{})
		c.Close()
		if err == nil {
			srv.checkCommitted(t, "next", data, res)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the next sender was never admitted: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling for the drop
	}
	err := <-refused
	var re *transfer.RemoteError
	if !errors.As(err, &re) || re.Code != transfer.CodeTimeout || !strings.Contains(re.Message, "minimum of 1024 bytes/s") || !transfer.Retryable(re) {
		t.Fatalf("the trickler got %v, want a retryable CodeTimeout naming the minimum rate", err)
	}
	res := srv.sendRetryBusy(t, source(slow), "slow")
	if res.ResumedFrom != testChunk {
		t.Errorf("the dropped transfer resumed from %d, want its verified chunk (%d)", res.ResumedFrom, testChunk)
	}
	srv.checkCommitted(t, "slow", slow, res)
}

// checksumOffer sets OfferChecksum on o: the daemon then confirms an
// already committed file by hash (AcceptCommitted and the trailer)
// instead of by size and mtime alone.
func checksumOffer(o *transfer.Offer) *transfer.Offer {
	o.Flags |= transfer.OfferChecksum
	return o
}

// TestRefusedSessionReleasesFirst: a session refused for a protocol error
// while a transfer is open drops and releases that transfer before it
// writes the refusal, so a new session that offers the name at once
// resumes it instead of hearing busy (the lock here takes 200 ms to give
// back, as a lease does).
func TestRefusedSessionReleasesFirst(t *testing.T) {
	data := randomData(4*testChunk, 181)
	srv := newServer(t, daemon.Config{SyncBytes: 1, Locker: &slowUnlocker{delay: 200 * time.Millisecond}})
	p := srv.raw(t)
	p.hello()
	p.write(msgFrame(offerFor("f", data)))
	expect[*transfer.Accept](p)
	p.write(msgFrame(&transfer.Data{ID: 1}), chunkFrame(0, data[:testChunk], int64(len(data))))
	p.write(msgFrame(&transfer.Trailer{ID: 7})) // no such transfer: a protocol error
	for {
		m, err := p.read()
		if err != nil {
			t.Fatalf("waiting for the refusal: %v", err)
		}
		if re, ok := m.(*transfer.RemoteError); ok {
			if re.ID != 0 || re.Code != transfer.CodeProtocol {
				t.Fatalf("refusal %+v, want the session's, for a protocol error", re)
			}
			break
		}
	}
	p = srv.raw(t)
	p.hello()
	p.write(msgFrame(offerFor("f", data)))
	if acc := expect[*transfer.Accept](p); acc.DurableOffset != testChunk {
		t.Fatalf("accept %+v, want a resume at %d", acc, testChunk)
	}
}
