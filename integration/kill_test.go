package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

// Interrupted transfers: a file of killSize bytes goes through a proxy
// throttled to killRate, so that it is mid-file for a second or two, and
// is interrupted once killAt bytes have passed.
const (
	killSize = 24 << 20
	killRate = 12 << 20
	killAt   = 10 << 20
)

// syncEveryChunk makes ferryd fsync after every chunk, so that its
// durable offset follows the data closely and a SIGKILL loses little.
var syncEveryChunk = []string{"--sync-bytes", fmt.Sprint(chunkSize)}

// interrupted is a send through a throttled proxy, stopped at killAt.
type interrupted struct {
	src    string
	proxy  *faultproxy.Proxy
	sender *ferryProc
}

// sendUntil starts sending a fresh killSize file to d through a throttled
// proxy and returns once killAt bytes have passed the proxy.
func sendUntil(t *testing.T, ctx context.Context, d *daemon, seed uint64, flags ...string) interrupted {
	t.Helper()
	in := interrupted{src: filepath.Join(t.TempDir(), "data.bin"), proxy: newProxy(t, d.addr)}
	writeRandom(t, in.src, killSize, seed)
	in.proxy.Throttle(killRate)
	in.sender = startFerry(t, sendArgs(in.proxy.Addr(), append(flags, in.src)...)...)
	if err := in.proxy.WaitBytes(ctx, killAt); err != nil {
		t.Fatalf("waiting for %d bytes through the proxy: %v", killAt, err)
	}
	return in
}

// checkResumedWithin checks that a resume started past zero and no later
// than the bytes that had reached the daemon: it never trusts data it did
// not receive.
func checkResumedWithin(t *testing.T, rec record, reached int64) {
	t.Helper()
	if rec.ResumedFrom <= 0 || rec.ResumedFrom > reached {
		t.Errorf("resumed_from = %d, want in (0, %d]: past zero, within what reached the daemon", rec.ResumedFrom, reached)
	}
}

// TestKillSenderResumes kills the sender with SIGKILL mid-file and runs
// it again: the new run resumes where the daemon's durable data ends.
func TestKillSenderResumes(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	root := t.TempDir()
	d := startDaemon(t, root, syncEveryChunk...)
	in := sendUntil(t, ctx, d, 30)
	in.sender.kill()
	d.waitLine(0, `msg="session ended"`) // the daemon has seen the cut and recorded its durable offset
	reached := in.proxy.Total(faultproxy.ClientToServer)

	r := runFerry(t, sendArgs(d.addr, in.src)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	checkCommitted(t, rec, in.src, filepath.Join(root, "data.bin"))
	checkResumedWithin(t, rec, reached)
	// Data that reached the daemon in whole chunks is kept: at most the
	// chunk in flight, one more behind its fsync, and the session's
	// preamble are lost.
	if lost := reached - rec.ResumedFrom; lost > 2*chunkSize+64<<10 {
		t.Errorf("resumed_from = %d, but %d bytes had reached the daemon", rec.ResumedFrom, reached)
	}
	checkResend(t, rec)
	if rec.Attempts != 1 || rec.Restarted {
		t.Errorf("attempts = %d, restarted = %v; want one attempt that resumes", rec.Attempts, rec.Restarted)
	}
	d.waitLine(0, "msg=committed", fmt.Sprintf("resumed_from=%d", rec.ResumedFrom))
}

// TestKillDaemonSenderRetries kills ferryd with SIGKILL mid-file and
// starts it again on the same root; the sender, retrying on its own,
// resumes from what the killed daemon had made durable.
func TestKillDaemonSenderRetries(t *testing.T) {
	slow(t)
	tests := []struct {
		name     string
		samePort bool // restart on the old address, else a new one the proxy is pointed at
	}{
		{name: "restart on a new port", samePort: false},
		{name: "restart on the same port", samePort: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			root := t.TempDir()
			d1 := startDaemon(t, root, syncEveryChunk...)
			in := sendUntil(t, ctx, d1, uint64(40+i), "--retries", "20")
			d1.kill()
			reached := in.proxy.Total(faultproxy.ClientToServer)
			listen := "127.0.0.1:0"
			if tt.samePort {
				listen = d1.addr
			}
			d2 := startDaemonOn(t, root, listen, syncEveryChunk...)
			in.proxy.SetUpstream(d2.addr)
			in.proxy.Throttle(0)

			r := in.sender.wait()
			wantCode(t, r, exitOK)
			rec := onlyRecord(t, r)
			checkCommitted(t, rec, in.src, filepath.Join(root, "data.bin"))
			if rec.Attempts < 2 {
				t.Errorf("attempts = %d, want a retry after the daemon died", rec.Attempts)
			}
			checkResumedWithin(t, rec, reached)
			checkResend(t, rec)
			if n := len(d1.lines(0, "msg=committed")); n != 0 {
				t.Errorf("the killed daemon logged %d commits", n)
			}
			d2.waitLine(0, "msg=committed", fmt.Sprintf("resumed_from=%d", rec.ResumedFrom))
		})
	}
}

// TestSIGTERMDrainsAndResumes stops ferryd with SIGTERM mid-file. It must
// exit 0 after making the received data durable — fsync is otherwise
// deferred past the test's end by the flags — and a daemon restarted on
// the same root and port lets the retrying sender resume from it.
func TestSIGTERMDrainsAndResumes(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	root := t.TempDir()
	noSync := []string{"--sync-bytes", fmt.Sprint(1 << 40), "--sync-interval", "1h"}
	d1 := startDaemon(t, root, noSync...)
	in := sendUntil(t, ctx, d1, 50, "--retries", "20")
	if code := d1.term(); code != 0 {
		t.Fatalf("ferryd exited %d after SIGTERM, want 0", code)
	}
	reached := in.proxy.Total(faultproxy.ClientToServer)
	d2 := startDaemonOn(t, root, d1.addr, noSync...)
	in.proxy.Throttle(0)

	r := in.sender.wait()
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	checkCommitted(t, rec, in.src, filepath.Join(root, "data.bin"))
	if rec.Attempts < 2 {
		t.Errorf("attempts = %d, want a retry after the daemon stopped", rec.Attempts)
	}
	checkResumedWithin(t, rec, reached)
	checkResend(t, rec)
	d2.waitLine(0, "msg=committed", fmt.Sprintf("resumed_from=%d", rec.ResumedFrom))
}

// TestSourceChangedBetweenRuns kills the sender mid-file, changes the
// source, and runs it again. The daemon's partial must not be trusted for
// new content: the transfer starts over and the result is the new file.
// A change the identity check cannot see (same size, mtime and inode, and
// outside both the identity prefix and the tail chunk) may instead end in
// an integrity failure, but never in a committed file that differs.
func TestSourceChangedBetweenRuns(t *testing.T) {
	slow(t)
	const identityPrefix = 64 << 10 // bytes of the source identity's hash (DESIGN.md)
	tests := []struct {
		name      string
		keepMtime bool
		change    func(t *testing.T, f *os.File, reached int64)
		invisible bool // the identity and tail checks cannot see it
	}{
		{name: "head and tail rewritten", change: func(t *testing.T, f *os.File, _ int64) {
			overwrite(t, f, 0, 100)
			overwrite(t, f, killSize-100, 100)
		}},
		{name: "grown", change: func(t *testing.T, f *os.File, _ int64) {
			overwrite(t, f, killSize, 1000)
		}},
		{name: "rewritten past the identity prefix, mtime kept", keepMtime: true, change: func(t *testing.T, f *os.File, reached int64) {
			overwrite(t, f, identityPrefix, reached-identityPrefix) // covers the durable tail chunk
		}},
		{name: "one byte inside the durable prefix, mtime kept", keepMtime: true, invisible: true, change: func(t *testing.T, f *os.File, _ int64) {
			overwrite(t, f, identityPrefix+1000, 1)
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			root := t.TempDir()
			d := startDaemon(t, root, syncEveryChunk...)
			in := sendUntil(t, ctx, d, uint64(60+i))
			in.sender.kill()
			d.waitLine(0, `msg="session ended"`)
			change(t, in.src, tt.keepMtime, func(f *os.File) { tt.change(t, f, in.proxy.Total(faultproxy.ClientToServer)) })

			r := runFerry(t, sendArgs(d.addr, in.src)...)
			dst := filepath.Join(root, "data.bin")
			if tt.invisible {
				t.Logf("outcome of a change the checks cannot see: %s", r)
			}
			if tt.invisible && r.code == exitIntegrity {
				if _, err := os.Stat(dst); !os.IsNotExist(err) {
					t.Fatalf("integrity failure, yet %s exists (%v)", dst, err)
				}
				return
			}
			wantCode(t, r, exitOK)
			rec := onlyRecord(t, r)
			checkCommitted(t, rec, in.src, dst)
			if tt.invisible {
				return
			}
			if !rec.Restarted || rec.ResumedFrom != 0 {
				t.Errorf("restarted = %v, resumed_from = %d; want the partial discarded and a start from 0", rec.Restarted, rec.ResumedFrom)
			}
			checkResend(t, rec)
		})
	}
}

// change opens path for writing in place (same inode), applies fn and,
// with keepMtime, puts the modification time back as it was.
func change(t *testing.T, path string, keepMtime bool, fn func(*os.File)) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fn(f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if keepMtime {
		if err := os.Chtimes(path, time.Time{}, fi.ModTime()); err != nil {
			t.Fatal(err)
		}
	}
}

// overwrite writes n fresh random bytes at off, each unlike the old one.
func overwrite(t *testing.T, f *os.File, off, n int64) {
	t.Helper()
	old := make([]byte, n)
	f2, err := os.Open(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	m, _ := f2.ReadAt(old, off)
	b := make([]byte, n)
	randReader(uint64(off) + 99).Read(b)
	for i := range m {
		if b[i] == old[i] {
			b[i] ^= 0x55
		}
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
