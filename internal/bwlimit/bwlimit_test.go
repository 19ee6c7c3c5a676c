package bwlimit

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// pipe returns the two ends of a net.Pipe, closed when t ends.
func pipe(t *testing.T) (a, b net.Conn) {
	a, b = net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestWritesKeepTheRate: 256 KiB at 1 MiB/s with a 64 KiB burst take at
// least (256-64)/1024 s, through one or two connections sharing the
// limiter; a lower bound, not a speed test.
func TestWritesKeepTheRate(t *testing.T) {
	for _, conns := range []int{1, 2} {
		lim := NewLimiter(1<<20, 64<<10)
		start := time.Now()
		done := make(chan error, conns)
		for range conns {
			a, b := pipe(t)
			go io.Copy(io.Discard, b)
			go func() {
				_, err := Writes(a, lim).Write(make([]byte, 256<<10/conns))
				done <- err
			}()
		}
		for range conns {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		if el, want := time.Since(start), 187*time.Millisecond; el < want {
			t.Errorf("%d conns: 256 KiB at 1 MiB/s took %v, want at least %v", conns, el, want)
		}
	}
}

func TestReadsKeepTheRate(t *testing.T) {
	a, b := pipe(t)
	go b.Write(make([]byte, 256<<10))
	start := time.Now()
	r := Reads(a, NewLimiter(1<<20, 64<<10))
	if _, err := io.ReadFull(r, make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	if el, want := time.Since(start), 187*time.Millisecond; el < want {
		t.Errorf("256 KiB at 1 MiB/s read in %v, want at least %v", el, want)
	}
}

// TestWriteDeadlineCutsTheWait: a throttled write still fails at its
// deadline, not when the tokens come (10 s later here).
func TestWriteDeadlineCutsTheWait(t *testing.T) {
	a, b := pipe(t)
	go io.Copy(io.Discard, b)
	w := Writes(a, NewLimiter(1024, 1024))
	w.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	start := time.Now()
	_, err := w.Write(make([]byte, 10<<10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Write returned after %v, want at its 100ms deadline", el)
	}
}

// TestReadDeadlineWakesTheWait: the daemon wakes a session's reader with
// SetReadDeadline(now) to drop it or shut down; a Read waiting for tokens
// must return at once, and the next one fail.
func TestReadDeadlineWakesTheWait(t *testing.T) {
	for _, how := range []string{"deadline", "close"} {
		t.Run(how, func(t *testing.T) {
			a, b := pipe(t)
			go b.Write(make([]byte, 30<<10))
			r := Reads(a, NewLimiter(1024, 10<<10))
			if _, err := io.ReadFull(r, make([]byte, 10<<10)); err != nil { // the burst
				t.Fatal(err)
			}
			got := make(chan error, 1)
			go func() {
				_, err := io.ReadFull(r, make([]byte, 20<<10)) // 10 s of tokens, then 10 more
				got <- err
			}()
			time.Sleep(50 * time.Millisecond)
			if how == "deadline" {
				r.SetReadDeadline(time.Now())
			} else {
				r.Close()
			}
			select {
			case err := <-got:
				if err == nil {
					t.Error("read on after its deadline")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a throttled Read did not wake")
			}
		})
	}
}
