package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"
)

// deadliner is the part of net.Conn (and of net.Pipe's ends) that bounds
// a blocked read or write.
type deadliner interface {
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// deadlineConn bounds every wait for the peer. Each Write gets a write
// deadline of timeout. Each Read gets a read deadline of timeout plus the
// current slack, and a Write that succeeds pushes the read deadline
// forward too: a session fails when the peer has neither taken data nor
// sent any for that long, whether the sender is waiting for an answer
// (Hello, Accept, Committed) or streaming chunks. Read and Write may be
// called from different goroutines.
type deadlineConn struct {
	io.ReadWriteCloser
	d       deadliner
	timeout time.Duration
	slack   atomic.Int64 // extra read allowance in nanoseconds

	// holds counts the waits on this side in progress (hold), during
	// which a read that times out waits again; heldUntil (Unix
	// nanoseconds) is when the read deadline of the last one to end runs
	// out: a read that times out before then waits until then.
	holds     atomic.Int32
	heldUntil atomic.Int64
}

// withDeadlines wraps rwc so that no read or write waits longer than
// timeout. It returns rwc unchanged when timeout is 0 or rwc cannot set
// deadlines.
func withDeadlines(rwc io.ReadWriteCloser, timeout time.Duration) io.ReadWriteCloser {
	d, ok := rwc.(deadliner)
	if timeout <= 0 || !ok {
		return rwc
	}
	return &deadlineConn{ReadWriteCloser: rwc, d: d, timeout: timeout}
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	wait := c.timeout + time.Duration(c.slack.Load())
	deadline := time.Now().Add(wait)
	for {
		_ = c.d.SetReadDeadline(deadline) // a conn that cannot set one fails the Read itself
		n, err := c.ReadWriteCloser.Read(p)
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			if next, held := c.held(wait); held {
				deadline = next
				continue
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("no answer from the daemon for %v: %w", wait, err)
		}
		return n, err
	}
}

// hold keeps reads from timing out until the returned release is called,
// and for the read timeout after it: for a wait on this side (the walk's
// next file, a source's first bytes) during which the daemon may have
// nothing to say. Unlike holdReads it starts no goroutine, so that it
// costs nothing per file.
func (c *deadlineConn) hold() (release func()) {
	c.holds.Add(1)
	return func() {
		c.heldUntil.Store(time.Now().Add(c.timeout + time.Duration(c.slack.Load())).UnixNano())
		c.holds.Add(-1)
	}
}

// held reports whether a read that timed out waits again, and until when.
func (c *deadlineConn) held(wait time.Duration) (time.Time, bool) {
	now := time.Now()
	if c.holds.Load() > 0 {
		return now.Add(wait), true
	}
	if until := c.heldUntil.Load(); until > now.UnixNano() {
		return time.Unix(0, until), true
	}
	return time.Time{}, false
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	_ = c.d.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.ReadWriteCloser.Write(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return n, fmt.Errorf("the daemon took no data for %v: %w", c.timeout, err)
	}
	if err == nil {
		_ = c.d.SetReadDeadline(time.Now().Add(c.timeout + time.Duration(c.slack.Load())))
	}
	return n, err
}

// holdReads re-arms rwc's read deadline, every quarter of its timeout,
// until done is closed or ctx ends: for a wait on this side (the sender
// hashing its own prefix before the trailer) during which the daemon has
// nothing to say and must not be taken for gone.
func holdReads(ctx context.Context, rwc io.ReadWriteCloser, done <-chan struct{}) {
	c, ok := rwc.(*deadlineConn)
	if !ok {
		return
	}
	t := time.NewTicker(max(c.timeout/4, time.Millisecond))
	defer t.Stop()
	for {
		_ = c.d.SetReadDeadline(time.Now().Add(c.timeout + time.Duration(c.slack.Load()))) // see Read
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// setSlack sets how much longer than the timeout a read may wait, for
// answers the peer legitimately needs time to compute.
func setSlack(rwc io.ReadWriteCloser, d time.Duration) {
	if c, ok := rwc.(*deadlineConn); ok {
		c.slack.Store(int64(d))
	}
}

// closeOnCancel closes c when ctx ends. The returned stop undoes that and,
// if the close already began, waits until it is over, so that no goroutine
// of the caller outlives it.
func closeOnCancel(ctx context.Context, c io.Closer) (stop func()) {
	done := make(chan struct{})
	unregister := context.AfterFunc(ctx, func() {
		defer close(done)
		_ = c.Close() // unblocks I/O; ctx's error is reported
	})
	return func() {
		if !unregister() {
			<-done
		}
	}
}
