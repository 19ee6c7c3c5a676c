package daemon

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// countingReader counts the bytes a session reads from its connection,
// for the MinRate check.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// watchRate drops the session if, while one of its transfers holds a
// reservation for data still to come (awaiting), fewer than MinRate × MinRateWindow bytes
// arrive in a window of MinRateWindow. The idle timeout bounds one frame;
// this bounds the rate, so that a peer sending a tiny chunk now and then
// cannot hold the disk space promised to it and keep every other sender
// out (issue 8). Once every byte has arrived the sender may take its time
// over the trailer (it may be hashing a long prefix), bounded by the idle
// timeout alone. It returns a function that stops watching; after it
// returns, no drop happens.
func (ss *session) watchRate(awaiting func() bool) (stop func()) {
	cfg := &ss.srv.cfg
	if cfg.MinRate <= 0 {
		return func() {}
	}
	want := int64(float64(cfg.MinRate) * cfg.MinRateWindow.Seconds())
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	last := ss.in.n.Load()
	check := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		now := ss.in.n.Load()
		if got := now - last; got < want && awaiting() {
			ss.drop(fmt.Errorf("%w: %d bytes in %v, below the daemon's minimum of %d bytes/s; resume on a faster link",
				transfer.ErrTimeout, got, cfg.MinRateWindow, cfg.MinRate))
			return
		}
		last = now
		t.Reset(cfg.MinRateWindow)
	}
	mu.Lock()
	t = time.AfterFunc(cfg.MinRateWindow, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		t.Stop()
	}
}

// drop ends the session's transfer from outside its goroutine: the
// blocked read returns at once, and readFailed reports err to the peer.
// The receiver then makes its verified data durable, as on any exit, and
// the transfer's reservation is released.
func (ss *session) drop(err error) {
	ss.intMu.Lock()
	if ss.interrupted {
		ss.intMu.Unlock()
		return
	}
	ss.interrupted = true
	ss.dropped = err
	ss.intMu.Unlock()
	ss.log.Warn("session dropped", "reason", err.Error())
	_ = ss.conn.SetReadDeadline(time.Now()) // wakes the reader; a closed conn wakes it too
}

// dropReason returns the error drop was called with, or nil.
func (ss *session) dropReason() error {
	ss.intMu.Lock()
	defer ss.intMu.Unlock()
	return ss.dropped
}
