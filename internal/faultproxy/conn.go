package faultproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// bufSize is the largest slice read from one side before it is forwarded.
const bufSize = 32 << 10

// throttleSlices is how many slices a second of throttled traffic is cut
// into, so that a throttled stream flows evenly instead of in bursts.
const throttleSlices = 20

// conn is one proxied connection. Its counters are guarded by p.mu.
type conn struct {
	p         *Proxy
	id        int
	client    net.Conn
	server    net.Conn // nil until dialled
	bytes     [2]int64
	sent      int64  // client→server bytes claimed on this connection
	cutAt     int64  // per-connection cut position; -1: none
	head      []byte // the first client→server bytes, up to headLimit
	back      []byte // the first server→client bytes, up to headLimit
	headLimit int
	cut       bool
	closed    bool
	upTLS     bool // speak TLS to the upstream (NewTLS)

	once sync.Once
	done chan struct{} // closed by shut
}

// serve dials the upstream and forwards both directions until both end.
func (c *conn) serve() {
	defer c.finish()
	c.p.mu.Lock()
	cutNow := c.cutAt == 0
	c.cut = cutNow
	c.p.mu.Unlock()
	if cutNow {
		return
	}
	upstream, ok := c.waitDialHold()
	if !ok {
		return
	}
	server, err := c.dial(upstream)
	if err != nil {
		return // the client sees its connection closed, as if refused
	}
	c.p.mu.Lock()
	select {
	case <-c.done:
		c.p.mu.Unlock()
		_ = server.Close() // shut already; nothing was relayed
		return
	default:
		c.server = server
	}
	c.p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.pump(ClientToServer, c.client, server) }()
	go func() { defer wg.Done(); c.pump(ServerToClient, server, c.client) }()
	wg.Wait()
}

// waitDialHold blocks while dials are held (HoldDials) and returns the
// upstream to dial: the one current when it stops waiting, so that a
// connection accepted during a hold dials the upstream set before its
// release even if this goroutine runs late. ok is false when the
// connection was shut meanwhile.
func (c *conn) waitDialHold() (upstream string, ok bool) {
	for {
		c.p.mu.Lock()
		ch, upstream := c.p.dialHold, c.p.upstream
		c.p.mu.Unlock()
		if ch == nil {
			return upstream, true
		}
		select {
		case <-ch:
		case <-c.done:
			return "", false
		}
	}
}

// dial connects to upstream, giving up when the connection is shut.
func (c *conn) dial(upstream string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	go func() {
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", upstream)
	if err != nil || !c.upTLS {
		return nc, err
	}
	// The upstream's key is not checked: the proxy is a test's man in
	// the middle. The handshake runs on the first write.
	return tls.Client(nc, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}), nil //nolint:gosec // see above
}

func (c *conn) finish() {
	c.shut()
	c.p.mu.Lock()
	c.closed = true
	c.p.notify()
	c.p.mu.Unlock()
}

// shut closes both sides at once; safe to call more than once.
func (c *conn) shut() {
	c.once.Do(func() {
		close(c.done)
		c.p.mu.Lock()
		server := c.server
		c.p.mu.Unlock()
		// A proxy closing a link passes no data on: the errors change nothing.
		_ = c.client.Close()
		if server != nil {
			_ = server.Close()
		}
	})
}

// pump copies src to dst through the faults. An EOF from src is passed on
// as a half-close, so a peer that finishes writing can still read.
func (c *conn) pump(d Direction, src, dst net.Conn) {
	c.p.mu.Lock()
	delay := c.p.delay
	c.p.mu.Unlock()
	if delay > 0 {
		c.pumpDelayed(d, src, dst, delay)
		return
	}
	buf := make([]byte, bufSize)
	var next time.Time // throttle: when the next slice may go
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.forward(d, buf[:n], dst, &next) {
			c.shut()
			return
		}
		if errors.Is(err, io.EOF) {
			closeWrite(dst)
			return
		}
		if err != nil {
			c.shut()
			return
		}
	}
}

// delayQueue bounds the slices a delayed direction holds in transit.
const delayQueue = 1024

// pumpDelayed is pump with every slice held back for delay after it was
// read, in order: a link with a one-way latency of delay. Reading goes
// on meanwhile, so the link carries data in flight as a long link does.
func (c *conn) pumpDelayed(d Direction, src, dst net.Conn, delay time.Duration) {
	type slice struct {
		due time.Time
		b   []byte
		err error
	}
	q := make(chan slice, delayQueue)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, bufSize)
			n, err := src.Read(buf)
			select {
			case q <- slice{time.Now().Add(delay), buf[:n], err}:
			case <-c.done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var next time.Time // throttle: when the next slice may go
	for s := range q {
		if wait := time.Until(s.due); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-c.done:
				t.Stop()
				return
			}
		}
		if len(s.b) > 0 && !c.forward(d, s.b, dst, &next) {
			c.shut()
			return
		}
		if errors.Is(s.err, io.EOF) {
			closeWrite(dst)
			return
		}
		if s.err != nil {
			c.shut()
			return
		}
	}
}

func closeWrite(c net.Conn) {
	// Best effort: the other direction's pump sees a failure on its own.
	if tc, ok := c.(interface{ CloseWrite() error }); ok { // *net.TCPConn, *tls.Conn
		_ = tc.CloseWrite()
		return
	}
	_ = c.Close()
}

// forward writes b to dst slice by slice as the faults allow. It returns
// false when the connection must end: a cut, a write error, or shut.
func (c *conn) forward(d Direction, b []byte, dst net.Conn, next *time.Time) bool {
	for len(b) > 0 {
		if !c.waitStall() {
			return false
		}
		n, cut, rate := c.claim(d, b)
		if n > 0 {
			if rate > 0 && !c.pace(next, n, rate) {
				return false
			}
			if _, err := dst.Write(b[:n]); err != nil {
				return false
			}
			c.record(d, b[:n])
		}
		if cut {
			c.p.mu.Lock()
			c.cut = true
			c.p.mu.Unlock()
			return false
		}
		b = b[n:]
	}
	return true
}

// waitStall blocks while the proxy is stalled; false means shut meanwhile.
func (c *conn) waitStall() bool {
	for {
		c.p.mu.Lock()
		ch := c.p.stall
		c.p.mu.Unlock()
		if ch == nil {
			return true
		}
		select {
		case <-ch:
		case <-c.done:
			return false
		}
	}
}

// claim decides how many leading bytes of b go next, applying the
// client→server faults: it returns that count, whether the connection is
// to be cut right after them, and the throttle rate to pace them at.
func (c *conn) claim(d Direction, b []byte) (n int, cut bool, rate int64) {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	m := int64(len(b))
	if d != ClientToServer {
		return len(b), false, 0
	}
	rate = p.rate
	if rate > 0 {
		m = min(m, max(rate/throttleSlices, 1))
	}
	if c.cutAt >= 0 {
		m = min(m, c.cutAt-c.sent)
	}
	if p.cutAt >= 0 {
		m = min(m, p.cutAt-p.claimed)
	}
	if c.cutAt >= 0 && c.sent+m == c.cutAt {
		cut, c.cutAt = true, -1
	}
	if p.cutAt >= 0 && p.claimed+m == p.cutAt {
		cut, p.cutAt = true, -1
	}
	if p.flipAt >= 0 && p.flipAt < p.claimed+m {
		b[p.flipAt-p.claimed] ^= 0xFF
		p.flipAt = -1
		p.flips++
	}
	p.claimed += m
	c.sent += m
	return int(m), cut, rate
}

// pace waits until n bytes may go at rate bytes per second. Idle time is
// not saved up, so a throttled stream never bursts.
func (c *conn) pace(next *time.Time, n int, rate int64) bool {
	now := time.Now()
	if next.Before(now) {
		*next = now
	}
	wait := next.Sub(now)
	*next = next.Add(time.Duration(int64(n) * int64(time.Second) / rate))
	if wait <= 0 {
		return true
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.done:
		return false
	}
}

// record counts b as forwarded in direction d and wakes waiters.
func (c *conn) record(d Direction, b []byte) {
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	c.bytes[d] += int64(len(b))
	p.total[d] += int64(len(b))
	rec := &c.head
	if d == ServerToClient {
		rec = &c.back
	}
	if len(*rec) < c.headLimit {
		*rec = append(*rec, b[:min(len(b), c.headLimit-len(*rec))]...)
	}
	p.notify()
}
