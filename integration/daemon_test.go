package integration

import (
	"bufio"
	"errors"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lineLog collects a child's stderr line by line. A goroutine drains the
// pipe whatever the test does, so the child never blocks on a full pipe
// (tusd's e2e tests warn that wiring child output to test output can
// deadlock), and waiters are woken on every line.
type lineLog struct {
	mu      sync.Mutex
	lines   []string
	eof     bool
	changed chan struct{}
}

func newLineLog(r io.Reader) (*lineLog, <-chan struct{}) {
	l := &lineLog{changed: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l.add(sc.Text(), false)
		}
		io.Copy(io.Discard, r) // an over-long line must not block the child
		l.add("", true)
	}()
	return l, done
}

func (l *lineLog) add(line string, eof bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if eof {
		l.eof = true
	} else {
		l.lines = append(l.lines, line)
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// snapshot returns the lines so far.
func (l *lineLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// find returns the index of the first line at or after from that contains
// every substring, or -1.
func find(lines []string, from int, subs ...string) int {
	for i := from; i < len(lines); i++ {
		if containsAll(lines[i], subs) {
			return i
		}
	}
	return -1
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// wait blocks until a line at index ≥ from contains every substring and
// returns its index; -1 when the stream ends first or after waitTimeout.
func (l *lineLog) wait(from int, subs ...string) int {
	timeout := time.After(waitTimeout)
	for {
		l.mu.Lock()
		i, eof, ch := find(l.lines, from, subs...), l.eof, l.changed
		l.mu.Unlock()
		if i >= 0 || eof {
			return i
		}
		select {
		case <-ch:
		case <-timeout:
			return -1
		}
	}
}

// daemon is a running ferryd.
type daemon struct {
	t      *testing.T
	addr   string // the address it logged as listening on
	cmd    *exec.Cmd
	log    *lineLog
	exited chan struct{} // closed once the process has been reaped
	err    error         // from Wait

	// fingerprint is the key it logged on its listening line (TCP); the
	// test's senders trust it (known hosts).
	fingerprint string
}

// listeningAddr finds the address in a listening line, text or JSON.
var listeningAddr = regexp.MustCompile(`\baddr=(\S+)|"addr":"([^"]+)"`)

// loggedAddr returns the address a listening line names, or "".
func loggedAddr(line string) string {
	m := listeningAddr.FindStringSubmatch(line)
	if m == nil {
		return ""
	}
	return m[1] + m[2]
}

// startDaemon starts ferryd on 127.0.0.1 with a kernel-chosen port and
// waits until it logs that it listens.
func startDaemon(t *testing.T, root string, flags ...string) *daemon {
	t.Helper()
	return startDaemonOn(t, root, "127.0.0.1:0", flags...)
}

// startDaemonOn starts ferryd listening on listen (e.g. the address of a
// daemon that was stopped, to restart on the same port).
func startDaemonOn(t *testing.T, root, listen string, flags ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, nil, append([]string{"--listen", listen, "--root", root}, flags...)...)
}

// startDaemonEnv starts ferryd with extra environment variables and the
// arguments given, and waits until it logs that it listens.
func startDaemonEnv(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(bin.ferryd, args...)
	cmd.Env = append(childEnv(t), env...)
	return startDaemonCmd(t, cmd)
}

// startDaemonCmd starts cmd, a ferryd, and waits until it logs that it
// listens.
func startDaemonCmd(t *testing.T, cmd *exec.Cmd) *daemon {
	t.Helper()
	args := cmd.Args[1:]
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting ferryd: %v", err)
	}
	d := &daemon{t: t, cmd: cmd, exited: make(chan struct{})}
	var drained <-chan struct{}
	d.log, drained = newLineLog(stderr)
	go func() {
		<-drained // Wait closes the pipe: read it to the end first
		d.err = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("ferryd %q log:\n%s", args, strings.Join(d.log.snapshot(), "\n"))
		}
	})
	i := d.log.wait(0, "listening", "addr")
	if i < 0 {
		t.Fatalf("ferryd did not log msg=listening:\n%s", strings.Join(d.log.snapshot(), "\n"))
	}
	if d.addr = loggedAddr(d.log.snapshot()[i]); d.addr == "" {
		t.Fatalf("no addr= in %q", d.log.snapshot()[i])
	}
	if m := loggedFingerprint.FindStringSubmatch(d.log.snapshot()[i]); m != nil {
		d.fingerprint = m[1]
		trust(t, d.addr, d.fingerprint)
	}
	return d
}

// mark returns the number of log lines so far, for waitLine.
func (d *daemon) mark() int { return len(d.log.snapshot()) }

// waitLine waits for a log line at index ≥ from containing every
// substring and returns it; the test fails if none comes.
func (d *daemon) waitLine(from int, subs ...string) string {
	d.t.Helper()
	i := d.log.wait(from, subs...)
	if i < 0 {
		d.t.Fatalf("ferryd logged no line with %q after line %d", subs, from)
	}
	return d.log.snapshot()[i]
}

// lines returns the log lines at index ≥ from that contain every substring.
func (d *daemon) lines(from int, subs ...string) []string {
	var out []string
	all := d.log.snapshot()
	for i := from; i < len(all); i++ {
		if containsAll(all[i], subs) {
			out = append(out, all[i])
		}
	}
	return out
}

// alive reports whether the process is still running.
func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits until the process is reaped.
func (d *daemon) kill() {
	if d.alive() {
		d.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-d.exited
}

// term sends SIGTERM and returns the exit code once ferryd exits; the
// test fails if it does not exit within waitTimeout.
func (d *daemon) term() int {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(waitTimeout):
		d.t.Fatal("ferryd did not exit after SIGTERM")
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	if d.err != nil {
		d.t.Fatalf("waiting for ferryd: %v", d.err)
	}
	return 0
}
