package integration

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// frameOffer is the offer's frame type (docs/PROTOCOL.md).
const frameOffer = 2

// Hostile input against the real binaries (issue 5, suite 4): the cases
// that need real processes, a real file system and real sockets. The
// frame-level cases are in daemon/hostile_test.go and daemon/peer_test.go;
// hostile_test.go here has the first names and bad peers.

// TestHostileNamesMore sends under destination names that hostile_test.go
// does not try. Each is refused with exit 3 — by the daemon, or by ferry
// itself for a name longer than the protocol carries — the daemon stays
// up, and nothing appears outside the root.
func TestHostileNamesMore(t *testing.T) {
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	for _, dir := range []string{root, outside} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d := startDaemon(t, root)
	src := filepath.Join(t.TempDir(), "f.bin")
	writeRandom(t, src, 1000, 2)
	long := strings.Repeat(strings.Repeat("n", 200)+"/", 21) // 4221 bytes
	tests := []struct {
		name   string
		dest   string
		daemon bool   // refused by the daemon, which logs it
		reason string // in ferry's error line
	}{
		{"the reserved directory", ".ferry", true, "reserved"},
		{"inside the partials", ".ferry/partials", true, "reserved"},
		{"backslash", `..\..\etc`, true, "backslash"},
		{"DEL", "a\x7f", true, "U+007F"},
		{"C1 control", "a\u0085", true, "U+0085"},
		{"replacement character", "\ufffd", true, "U+FFFD"},
		{"empty component", "a//b", true, "empty or '.' component"},
		{"dot component", "a/./b", true, "empty or '.' component"},
		{"longer than the protocol carries", long, false, "limit is 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := d.mark()
			r := runFerry(t, sendArgs(d.addr, "--dest", tt.dest, src)...)
			wantCode(t, r, exitRefused)
			if !strings.Contains(r.stderr, tt.reason) {
				t.Errorf("ferry's error does not say %q:\n%s", tt.reason, r.stderr)
			}
			if !printable(r.stderr) {
				t.Errorf("sender's stderr shows the name unescaped: %q", r.stderr)
			}
			if tt.daemon {
				d.waitLine(from, "msg=refused", "code=3")
			}
			if !d.alive() {
				t.Fatal("ferryd exited")
			}
		})
	}
	checkOnly(t, base, "outside", "root")
	checkOnly(t, outside)
	checkOnly(t, root, ".ferry")
	r := runFerry(t, sendArgs(d.addr, "--dest", ".ferry-not-reserved", src)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, ".ferry-not-reserved", "f.bin"))
}

// TestHostileSymlinkSwapRace sends 500 files to --dest d while a goroutine
// swaps ROOT/d, again and again, between a real directory and a symlink
// to a directory outside the root (renameat2 RENAME_EXCHANGE: the swap is
// atomic, so ROOT/d is always one or the other), in the style of croc's
// receive-path tests. Each file may be refused or committed, but a
// committed file is inside the root, and nothing ever lands outside it.
func TestHostileSymlinkSwapRace(t *testing.T) {
	const files, senders = 500, 4
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	for _, dir := range []string{root, outside, filepath.Join(root, "d")} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir, swap := filepath.Join(root, "d"), filepath.Join(root, "d.swap")
	if err := os.Symlink(outside, swap); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, root)

	srcDir := t.TempDir()
	want := map[string][]byte{}
	var paths []string
	for i := range files {
		name := fmt.Sprintf("f%03d", i)
		p := filepath.Join(srcDir, name)
		writeRandom(t, p, int64(1+i*97%(64<<10)), uint64(1000+i))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		want[name] = b
		paths = append(paths, p)
	}

	var flips atomic.Int64
	stop := make(chan struct{})
	flipped := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				flipped <- nil
				return
			default:
			}
			if err := unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, swap, unix.RENAME_EXCHANGE); err != nil {
				flipped <- fmt.Errorf("renameat2 RENAME_EXCHANGE %s %s: %w", dir, swap, err)
				return
			}
			flips.Add(1)
			// The fault's timing: mostly back to back, sometimes held
			// for up to a few milliseconds, so that whole transfers,
			// and not only single steps of one, see either state.
			if rng.IntN(4) == 0 {
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
			}
		}
	}()
	// One ferry process per file: a refusal at commit leaves a ferry
	// process unable to send its next files (see
	// TestHostileCommitRefusalSpoilsNextFiles), which would leave most
	// files of a batch unsent.
	queue := make(chan string)
	go func() {
		for _, p := range paths {
			queue <- p
		}
		close(queue)
	}()
	results := make([]result, 0, files)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for p := range queue {
				r := startFerry(t, sendArgs(d.addr, "--dest", "d", "--retries", "3", "--backoff", "1ms", p)...).wait()
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-flipped; err != nil {
		t.Fatal(err) // a file system without RENAME_EXCHANGE cannot run this race
	}

	// Nothing outside the root, and the symlink still points out of it.
	checkOnly(t, base, "outside", "root")
	checkOnly(t, outside)
	checkOnly(t, root, ".ferry", "d", "d.swap")
	realDir := dir
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
		realDir = swap
	}
	outcomes := map[string]int{}
	committed := map[string]bool{}
	examples := map[string]string{}
	failed := map[string]string{} // file → its --json error
	for i, r := range results {
		if r.code != exitOK && r.code != exitRefused && r.code != exitFailed {
			t.Errorf("sender %d exited %d\n%s", i, r.code, r)
		}
		for _, rec := range parseRecords(t, r.stdout) {
			name := filepath.Base(rec.Path)
			switch rec.Status {
			case "committed":
				committed[name] = true
				outcomes["committed"]++
			default:
				kind := refusal(rec.Error)
				outcomes[kind]++
				examples[kind] = rec.Error
				failed[name] = rec.Error
			}
		}
	}
	ents, err := os.ReadDir(realDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(realDir, e.Name()))
		if err != nil || string(b) != string(want[e.Name()]) {
			t.Errorf("%s in the root holds %d bytes, want the %d sent (%v)", e.Name(), len(b), len(want[e.Name()]), err)
		}
		if msg, ok := failed[e.Name()]; ok {
			// Inside the root, so no harm done; but the sender was told
			// it failed.
			t.Logf("%s is in the root, yet its sender reported: %s", e.Name(), msg)
		}
		delete(committed, e.Name())
	}
	for name := range committed {
		t.Errorf("%s reported committed, but it is not in the root", name)
	}
	t.Logf("%d files sent to d during %d swaps of d: %v; %d files in the root", files, flips.Load(), outcomes, len(ents))
	for kind, msg := range examples {
		t.Logf("%s, for example: %s", kind, msg)
	}
	if flips.Load() == 0 {
		t.Error("d was never swapped")
	}

	// The daemon still serves.
	r := runFerry(t, sendArgs(d.addr, "--dest", "after", filepath.Join(srcDir, "f000"))...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), filepath.Join(srcDir, "f000"), filepath.Join(root, "after", "f000"))
}

// refusal sums up a --json error for the race's tally.
func refusal(msg string) string {
	for _, kind := range []struct{ sub, name string }{
		{"creating directory", "bad name at commit: d not a directory"},
		{"path escapes", "bad name: d leads out of the root"},
		{"bad file name", "bad name"},
		{"internal error", "internal error"},
		{"busy", "busy"},
		{"exists", "exists"},
	} {
		if strings.Contains(msg, kind.sub) {
			return kind.name
		}
	}
	return msg
}

// TestHostileSecondSessionBusy starts a second sender on a file that a
// first one is still sending. The second session must be refused as busy
// (a retryable refusal: exit 1 once its retries are spent) and must not
// touch the first one's transfer; once the first sender is gone, the same
// command resumes the partial it left.
func TestHostileSecondSessionBusy(t *testing.T) {
	ctx := testContext(t)
	root := t.TempDir()
	d := startDaemon(t, root, syncEveryChunk...)
	in := sendUntil(t, ctx, d, 70)
	in.proxy.Throttle(1 << 20) // slow enough that it still runs below

	from := d.mark()
	r := runFerry(t, sendArgs(d.addr, "--retries", "0", in.src)...)
	wantCode(t, r, exitFailed)
	rec := onlyRecord(t, r)
	if !strings.Contains(rec.Error, "being received by another session") || rec.SentBytes != 0 {
		t.Errorf("second sender: error %q after %d bytes, want a busy refusal before any data", rec.Error, rec.SentBytes)
	}
	d.waitLine(from, "msg=refused", "code=7")
	if _, err := os.Lstat(filepath.Join(root, "data.bin")); !os.IsNotExist(err) {
		t.Fatalf("data.bin exists while the first sender runs (%v)", err)
	}

	d.waitLine(from, `msg="session ended"`, `reason="closed by sender"`) // the second session
	from = d.mark()
	in.sender.kill()
	d.waitLine(from, `msg="session ended"`) // the first session; its partial is durable
	r = runFerry(t, sendArgs(d.addr, in.src)...)
	wantCode(t, r, exitOK)
	rec = onlyRecord(t, r)
	checkCommitted(t, rec, in.src, filepath.Join(root, "data.bin"))
	if rec.ResumedFrom == 0 || rec.Restarted {
		t.Errorf("resumed_from = %d, restarted = %v: the first sender's partial was not resumed", rec.ResumedFrom, rec.Restarted)
	}
	checkResend(t, rec)
}

// TestHostileThousandSlowConnections opens 1,000 connections that send
// nothing or one byte every second, and a few that send a hello and then
// trickle an offer, while one transfer is under way and another starts.
// Both commit at their first attempt, the daemon drops every slow
// connection within its timeouts, and it stays up.
func TestHostileThousandSlowConnections(t *testing.T) {
	slow(t)
	const (
		silent, trickling = 500, 500
		afterHello        = 40 // admitted sessions: fewer than --max-sessions
		handshake, idle   = 3 * time.Second, 5 * time.Second
	)
	raiseFileLimit(t, 2*(silent+trickling+afterHello)+256)
	root := t.TempDir()
	// --max-pending above the flood: for a moment every flood connection
	// waits for its hello, and this test is about timeouts, not that cap
	// (which would close the excess silently, as designed).
	// --max-sessions-per-ip off: every session here comes from 127.0.0.1.
	d := startDaemon(t, root, "--handshake-timeout", handshake.String(), "--idle-timeout", idle.String(), "--max-pending", "4096",
		"--max-sessions-per-ip", "0")
	ctx := testContext(t)

	// A transfer under way through a throttled proxy for the whole flood.
	first := filepath.Join(t.TempDir(), "first.bin")
	writeRandom(t, first, 40<<20, 80)
	p := newProxy(t, d.addr)
	p.Throttle(8 << 20)
	s1 := startFerry(t, sendArgs(p.Addr(), first)...)
	if err := p.WaitBytes(ctx, 2<<20); err != nil {
		t.Fatal(err)
	}

	hello := helloFrame(protocolMajor)
	type slow struct {
		conn net.Conn
		kind string
	}
	var conns []slow
	dial := func(kind string) net.Conn {
		c, err := dialTLS(d.addr)
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns)+1, err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, slow{c, kind})
		return c
	}
	start := time.Now()
	var trickle sync.WaitGroup
	// trickleBytes writes b, then zeros, one byte a second until the
	// daemon closes c.
	trickleBytes := func(c net.Conn, b []byte) {
		trickle.Go(func() {
			tick := time.NewTicker(time.Second) // the fault: how slowly the peer sends
			defer tick.Stop()
			for i := 0; ; i++ {
				var x byte
				if i < len(b) {
					x = b[i]
				}
				if _, err := c.Write([]byte{x}); err != nil {
					return
				}
				<-tick.C
			}
		})
	}
	for i := range silent + trickling {
		c := dial(map[bool]string{true: "silent", false: "trickling hello"}[i%2 == 0])
		if i%2 == 1 {
			trickleBytes(c, hello)
		}
	}
	offer := []byte{frameOffer, 0, 0, 0, 80}
	for range afterHello {
		c := dial("trickling offer after hello")
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		trickleBytes(c, offer)
	}
	t.Logf("%d slow connections open after %v", len(conns), time.Since(start).Round(time.Millisecond))

	// A transfer that starts amid the flood.
	second := filepath.Join(t.TempDir(), "second.bin")
	writeRandom(t, second, 8<<20, 81)
	r := runFerry(t, sendArgs(d.addr, "--retries", "0", second)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	checkCommitted(t, rec, second, filepath.Join(root, "second.bin"))
	t.Logf("transfer started amid the flood: %d attempt(s), %.2fs", rec.Attempts, rec.Seconds)

	// Every slow connection is closed by the daemon, within its timeout.
	var wg sync.WaitGroup
	late := make([]time.Duration, len(conns))
	for i, sc := range conns {
		wg.Go(func() {
			sc.conn.SetReadDeadline(start.Add(handshake + idle + 10*time.Second))
			_, err := io.Copy(io.Discard, sc.conn)
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				late[i] = -1
				return
			}
			late[i] = time.Since(start)
		})
	}
	wg.Wait()
	trickle.Wait()
	var worst time.Duration
	for i, l := range late {
		limit := handshake
		if conns[i].kind == "trickling offer after hello" {
			limit = idle
		}
		if l < 0 {
			t.Fatalf("connection %d (%s) still open after %v", i+1, conns[i].kind, handshake+idle+10*time.Second)
		}
		if l > limit+5*time.Second {
			t.Errorf("connection %d (%s) closed after %v, want about %v", i+1, conns[i].kind, l, limit)
		}
		worst = max(worst, l)
	}
	t.Logf("all %d slow connections closed by the daemon, the last after %v", len(conns), worst.Round(time.Millisecond))

	p.Throttle(0)
	r = s1.wait()
	wantCode(t, r, exitOK)
	rec = onlyRecord(t, r)
	checkCommitted(t, rec, first, filepath.Join(root, "first.bin"))
	if rec.Attempts != 1 {
		t.Errorf("the transfer under way needed %d attempts, want 1", rec.Attempts)
	}
	if !d.alive() {
		t.Fatal("ferryd exited")
	}
	// One timeout refusal per slow connection, logged before it was
	// closed (the log pipe may still hold the last lines).
	for i, n := -1, 0; n < len(conns); n++ {
		if i = d.log.wait(i+1, "msg=refused", "code=12"); i < 0 {
			t.Fatalf("ferryd logged %d timeout refusals, want one per slow connection (%d)", n, len(conns))
		}
	}
}

// raiseFileLimit makes sure this process may hold n open files, raising
// its soft limit if needed. ferryd, a Go program too, raises its own to
// the hard limit at start.
func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Fatalf("this test needs %d open files; the hard limit is %d (raise it with ulimit -Hn)", n, lim.Max)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
}

// TestHostileCommitRefusalSpoilsNextFiles sends a tree of two files. While
// the first is under way, its parent directory on the daemon is taken by
// a regular file, so its commit is refused (bad name, after the data).
// That refusal is the first file's alone: the second file must still be
// sent and committed by the same run.
func TestHostileCommitRefusalSpoilsNextFiles(t *testing.T) {
	ctx := testContext(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	tree := filepath.Join(t.TempDir(), "tree")
	big, small := filepath.Join(tree, "a", "big.bin"), filepath.Join(tree, "b", "small.bin")
	for _, dir := range []string{filepath.Dir(big), filepath.Dir(small)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeRandom(t, big, 8<<20, 3)
	writeRandom(t, small, 1000, 4)
	p := newProxy(t, d.addr)
	p.Throttle(4 << 20)
	s := startFerry(t, sendArgs(p.Addr(), tree)...)
	if err := p.WaitBytes(ctx, 1<<20); err != nil {
		t.Fatal(err)
	}
	// small.bin, sent with its offer, may be committed already (and
	// tree/ made).
	if err := os.MkdirAll(filepath.Join(root, "tree"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "tree", "a"), []byte("in the way"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Throttle(0)
	r := s.wait()
	wantCode(t, r, exitRefused)
	var recs []record
	for _, rec := range parseRecords(t, r.stdout) {
		// The directory tree/a itself cannot get its mode and mtime
		// either (protocol 2.2): its own record, refused as exists.
		if rec.Path == filepath.Dir(big) {
			if rec.Status != "refused" || !rec.fields["type"] {
				t.Errorf("directory record %+v, want refused", rec)
			}
			continue
		}
		recs = append(recs, rec)
	}
	// Files settle in any order: the window sends small.bin while big.bin
	// waits for its answer.
	if len(recs) == 2 && recs[0].Path == small {
		recs[0], recs[1] = recs[1], recs[0]
	}
	if len(recs) != 2 || recs[0].Status != "refused" || !strings.Contains(recs[0].Reason, "bad file name") {
		t.Fatalf("want big.bin refused as a bad name, and small.bin committed\n%s", r)
	}
	checkCommitted(t, recs[1], small, filepath.Join(root, "tree", "b", "small.bin"))
}
