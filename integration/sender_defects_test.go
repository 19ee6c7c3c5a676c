package integration

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Regression tests for sender defects seen on the binaries (issue 8).

// waitWithin waits for ferry to exit, failing the test (after killing it)
// if it takes longer than bound.
func (p *ferryProc) waitWithin(bound time.Duration) (result, time.Duration) {
	p.t.Helper()
	start := time.Now()
	select {
	case <-p.done:
	case <-time.After(bound):
		p.kill()
		p.t.Fatalf("ferry %q still running after %v; stderr:\n%s", p.cmd.Args[1:], bound, p.stderr.String())
	}
	return p.wait(), time.Since(start)
}

// TestSenderTimeoutStoppedDaemon: with ferryd stopped (SIGSTOP; the kernel
// still accepts connections), ferry send --timeout 2s --retries 0 waited
// forever. Every wait for the peer has a deadline now.
func TestSenderTimeoutStoppedDaemon(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 100<<10, 1)
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Signal(syscall.SIGCONT) })
	r, took := startFerry(t, sendArgs(d.addr, "--timeout", "2s", "--retries", "0", src)...).waitWithin(20 * time.Second)
	wantCode(t, r, exitFailed)
	if took > 10*time.Second {
		t.Errorf("gave up after %v with --timeout 2s", took)
	}
	if !strings.Contains(r.stderr, "no answer from the daemon") {
		t.Errorf("stderr does not say the daemon did not answer:\n%s", r.stderr)
	}
}

// TestSenderRetrySeesChangedSource: the source was opened and stat'ed once
// before the retry loop, so after one append every retry offered the old
// size and was refused as modified until the retries ran out. Each
// attempt re-opens and re-stats the file now.
func TestSenderRetrySeesChangedSource(t *testing.T) {
	ctx := testContext(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	p := newProxy(t, d.addr)
	p.Throttle(16 << 20)
	// More than loopback socket buffers hold, so that the first attempt
	// is still reading the file when it changes.
	const size = 32 << 20
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, size, 2)
	f := startFerry(t, sendArgs(p.Addr(), "--retries", "3", src)...)
	if err := p.WaitBytes(ctx, 2<<20); err != nil {
		t.Fatal(err)
	}
	change(t, src, false, func(f *os.File) { // one append, during the first attempt
		if _, err := f.WriteAt([]byte("appended"), size); err != nil {
			t.Fatal(err)
		}
	})
	p.Throttle(0)
	r, _ := f.waitWithin(60 * time.Second)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	// Two attempts, and one more if the daemon still held the first
	// session's transfer and refused the second as busy.
	if rec.Attempts < 2 || rec.Attempts > 3 || rec.Size != size+8 {
		t.Errorf("attempts %d size %d; want 2 (or 3) attempts, the last sending the appended file", rec.Attempts, rec.Size)
	}
	checkCommitted(t, rec, src, filepath.Join(root, "data.bin"))
}

// TestSenderFileKeepsChanging: a file rewritten every 20ms was resent whole
// about once a second forever, because a restart from 0 counted as
// progress and reset the retry budget. It ends now, after a bounded number
// of restarts, in a clear per-file failure.
func TestSenderFileKeepsChanging(t *testing.T) {
	d := startDaemon(t, t.TempDir(), syncEveryChunk...)
	p := newProxy(t, d.addr)
	p.Throttle(16 << 20) // 0.5s per attempt: acks of durable data come in each
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 8<<20, 3)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // rewrites the file every 20ms, keeping its size
		defer wg.Done()
		f, err := os.OpenFile(src, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			f.WriteAt([]byte{byte(i)}, int64(i%8)<<20)
		}
	}()
	defer wg.Wait()
	defer close(stop)
	r, _ := startFerry(t, sendArgs(p.Addr(), "--retries", "10", "--backoff", "10ms", src)...).waitWithin(40 * time.Second)
	wantCode(t, r, exitFailed)
	rec := onlyRecord(t, r)
	if rec.Status != "failed" || !strings.Contains(rec.Error, "keeps changing") {
		t.Errorf("record status %q error %q; want failed, keeps changing", rec.Status, rec.Error)
	}
	// 4 attempts (3 restarts), and a few more when the daemon still holds
	// the interrupted transfer and refuses the next offer as busy.
	if rec.Attempts < 4 || rec.Attempts > 10 {
		t.Errorf("%d attempts; want 4 to 10", rec.Attempts)
	}
	if strings.Contains(r.stderr, "resume") {
		t.Errorf("resume advice for a file that keeps changing:\n%s", r.stderr)
	}
}

// otherProtocol listens on loopback and answers every connection as an
// HTTP server would; it returns its address and a count of connections.
func otherProtocol(t *testing.T) (string, func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			mu.Unlock()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			bufio.NewReader(c).ReadByte()
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			c.Close()
		}
	}()
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// TestSenderPermanentErrorsExitAtOnce: --chunk-size 10 was retried for
// minutes and ended with "run the same command again to resume"; so did a
// port where nothing listens (with no hint to check ferryd) and a port
// speaking another protocol.
func TestSenderPermanentErrorsExitAtOnce(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 1000, 4)
	d := startDaemon(t, t.TempDir())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	other, conns := otherProtocol(t)
	tests := []struct {
		name  string
		args  []string
		code  int
		bound time.Duration
		says  string
	}{
		{"chunk size too small", sendArgs(d.addr, "--chunk-size", "10", "--backoff", "1s", src), exitUsage, 10 * time.Second, "--chunk-size"},
		{"nothing listens", sendArgs(closed, "--retries", "2", src), exitFailed, 20 * time.Second, "is ferryd running on " + closed},
		{"another protocol", sendArgs(other, "--retries", "5", "--backoff", "2s", src), exitFailed, 10 * time.Second, "does not speak the ferry protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := startFerry(t, tt.args...).waitWithin(tt.bound)
			wantCode(t, r, tt.code)
			if !strings.Contains(r.stderr, tt.says) {
				t.Errorf("stderr does not say %q:\n%s", tt.says, r.stderr)
			}
			if strings.Contains(r.stderr, "resume") {
				t.Errorf("resume advice without a partial:\n%s", r.stderr)
			}
		})
	}
	if n := conns(); n != 1 {
		t.Errorf("%d connections to a peer that is not ferryd, want 1", n)
	}
}

// TestSenderMessages: a file already on the daemon printed "sent … 3 B in
// 0.0s (0 B/s)"; Ctrl-C printed its advice twice and exited 1; an
// unreadable file said "run the same command again to resume" and stopped
// the run.
func TestSenderMessages(t *testing.T) {
	t.Run("already on the daemon", func(t *testing.T) {
		d := startDaemon(t, t.TempDir())
		src := filepath.Join(t.TempDir(), "small.txt")
		if err := os.WriteFile(src, []byte("abc"), 0o644); err != nil {
			t.Fatal(err)
		}
		wantCode(t, runFerry(t, "send", "--to", d.addr, src), exitOK)
		r := runFerry(t, "send", "--to", d.addr, src)
		wantCode(t, r, exitOK)
		if !strings.Contains(r.stderr, "already on the daemon") || !strings.Contains(r.stderr, "unchanged") {
			t.Errorf("no line saying the file was already there, unchanged:\n%s", r.stderr)
		}
		if strings.Contains(r.stderr, "B/s") || strings.Contains(r.stderr, "sent ") {
			t.Errorf("a rate or 'sent' for a file that was not sent:\n%s", r.stderr)
		}
	})
	t.Run("interrupted", func(t *testing.T) {
		ctx := testContext(t)
		in := sendUntil(t, ctx, startDaemon(t, t.TempDir(), syncEveryChunk...), 5)
		in.sender.cmd.Process.Signal(syscall.SIGINT)
		r, _ := in.sender.waitWithin(20 * time.Second)
		wantCode(t, r, 130)
		var lines []string
		for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
			if strings.Contains(l, "interrupted") || strings.Contains(l, "resume") {
				lines = append(lines, l)
			}
		}
		if len(lines) != 1 || strings.Count(r.stderr, "resume") != 1 {
			t.Errorf("want one line about the interruption and one resume advice:\n%s", r.stderr)
		}
	})
	t.Run("unreadable file", func(t *testing.T) {
		ctx := testContext(t)
		root := t.TempDir()
		d := startDaemon(t, root)
		p := newProxy(t, d.addr)
		p.Throttle(8 << 20)
		dir := filepath.Join(t.TempDir(), "tree")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeRandom(t, filepath.Join(dir, "a.bin"), 4<<20, 6)
		writeRandom(t, filepath.Join(dir, "b.bin"), 1000, 7)
		writeRandom(t, filepath.Join(dir, "c.bin"), 1000, 8)
		// One file after another (--window 1), so that b.bin is opened
		// only once a.bin is committed.
		f := startFerry(t, sendArgs(p.Addr(), "--window", "1", dir)...)
		if err := p.WaitBytes(ctx, 1<<20); err != nil {
			t.Fatal(err)
		}
		// Walked but gone by the time ferry opens it: root reads any
		// file, so this is how a test run as root gets an open error.
		if err := os.Remove(filepath.Join(dir, "b.bin")); err != nil {
			t.Fatal(err)
		}
		p.Throttle(0)
		r, _ := f.waitWithin(60 * time.Second)
		wantCode(t, r, exitFailed)
		if !strings.Contains(r.stderr, "b.bin: cannot be read") {
			t.Errorf("stderr does not say b.bin cannot be read:\n%s", r.stderr)
		}
		if strings.Contains(r.stderr, "resume") {
			t.Errorf("resume advice for a file that cannot be read:\n%s", r.stderr)
		}
		recs := parseRecords(t, r.stdout)
		if len(recs) != 3 || recs[0].Status != "committed" || recs[1].Status != "failed" || recs[2].Status != "committed" {
			t.Errorf("want a.bin and c.bin committed around the failed b.bin:\n%s", r)
		}
	})
}
