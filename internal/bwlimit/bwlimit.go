// Package bwlimit limits the bandwidth of a connection with a token bucket
// (golang.org/x/time/rate): ferry send --bwlimit throttles the writes of
// every connection of a run through one shared Limiter, ferryd --max-rate
// the reads of each session through a Limiter of its own.
//
// A throttled call waits for its tokens, but never past the connection's
// deadline or its Close: a write cut short that way fails with
// os.ErrDeadlineExceeded (a net.Error whose Timeout is true) or
// net.ErrClosed, as the connection would have; a read returns what it
// read, and the next read fails. Deadlines keep their meaning.
package bwlimit

import (
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// NewLimiter returns a token bucket of bytesPerSec bytes per second that
// holds at most burst bytes (one chunk is a good burst: a large write is
// split into pieces of at most burst bytes). It starts full. bytesPerSec
// and burst must be above 0.
func NewLimiter(bytesPerSec int64, burst int) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(bytesPerSec), burst)
}

// Writes returns c with every Write throttled by lim. lim may be shared
// by several connections, which then share its rate.
func Writes(c net.Conn, lim *rate.Limiter) net.Conn {
	return &conn{Conn: c, lim: lim, writes: true, wake: make(chan struct{})}
}

// Reads returns c with every Read throttled by lim: a Read returns what
// the connection had, at most the burst, once lim has tokens for it.
func Reads(c net.Conn, lim *rate.Limiter) net.Conn {
	return &conn{Conn: c, lim: lim, reads: true, wake: make(chan struct{})}
}

type conn struct {
	net.Conn
	lim           *rate.Limiter
	reads, writes bool

	mu           sync.Mutex
	readDeadline time.Time
	writeDeadln  time.Time
	closed       bool
	wake         chan struct{} // closed and replaced when a deadline changes or on Close
}

func (c *conn) Read(p []byte) (int, error) {
	if !c.reads {
		return c.Conn.Read(p)
	}
	if err := c.expired(false); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p[:min(len(p), c.lim.Burst())])
	if n > 0 {
		// The bytes are in: their tokens stay spent even if the wait is
		// cut short, so the next Read waits for them.
		c.wait(n, false)
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	if !c.writes {
		return c.Conn.Write(p)
	}
	written := 0
	for len(p) > 0 {
		piece := p[:min(len(p), c.lim.Burst())]
		if !c.wait(len(piece), true) {
			if err := c.expired(true); err != nil {
				return written, err
			}
			continue // the deadline moved on: wait again
		}
		n, err := c.Conn.Write(piece)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// wait takes n tokens (n ≤ burst), sleeping until they are there, the
// read or write deadline passes, or the conn is closed; it reports
// whether the tokens were there. An unused reservation of a write is
// given back.
func (c *conn) wait(n int, write bool) bool {
	r := c.lim.ReserveN(time.Now(), n)
	if !r.OK() {
		return true // n above the burst: cannot happen, as callers split
	}
	ready := time.Now().Add(r.Delay())
	for {
		c.mu.Lock()
		deadline, wake, closed := c.readDeadline, c.wake, c.closed
		if write {
			deadline = c.writeDeadln
		}
		c.mu.Unlock()
		end, tokens := ready, true
		if !deadline.IsZero() && deadline.Before(end) {
			end, tokens = deadline, false
		}
		d := time.Until(end)
		if closed || d <= 0 {
			if !tokens || closed {
				if write {
					r.Cancel()
				}
				return false
			}
			return true
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-wake:
		}
		t.Stop()
	}
}

// expired returns net.ErrClosed after Close, os.ErrDeadlineExceeded once
// the read (or write) deadline has passed, else nil. The connection
// itself would say the same, but its deadline timer may not have fired
// yet when a wait here ends.
func (c *conn) expired(write bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	deadline := c.readDeadline
	if write {
		deadline = c.writeDeadln
	}
	switch {
	case c.closed:
		return net.ErrClosed
	case !deadline.IsZero() && !time.Now().Before(deadline):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// poke wakes the waits, to look at the deadlines again.
func (c *conn) poke(fn func()) {
	c.mu.Lock()
	fn()
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
}

func (c *conn) SetDeadline(t time.Time) error {
	c.poke(func() { c.readDeadline, c.writeDeadln = t, t })
	return c.Conn.SetDeadline(t)
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.poke(func() { c.readDeadline = t })
	return c.Conn.SetReadDeadline(t)
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.poke(func() { c.writeDeadln = t })
	return c.Conn.SetWriteDeadline(t)
}

func (c *conn) Close() error {
	c.poke(func() { c.closed = true })
	return c.Conn.Close()
}
