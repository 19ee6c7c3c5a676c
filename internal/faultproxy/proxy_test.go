package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"
)

// testTimeout bounds every wait in these tests; nothing should come near it.
const testTimeout = 10 * time.Second

// sink is an upstream that reads each connection to EOF and reports what
// arrived, one result per connection in accept order.
type sink struct {
	ln   net.Listener
	got  chan []byte
	echo bool // write everything read back to the client
}

func newSink(t *testing.T, echo bool) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{ln: ln, got: make(chan []byte, 16), echo: echo}
	t.Cleanup(func() { ln.Close() })
	go s.serve()
	return s
}

func (s *sink) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			w := io.Discard
			if s.echo {
				w = c
			}
			var buf bytes.Buffer
			io.Copy(io.MultiWriter(&buf, w), c)
			s.got <- buf.Bytes()
		}()
	}
}

// next returns what the next connection delivered before its EOF.
func (s *sink) next(t *testing.T) []byte {
	t.Helper()
	select {
	case b := <-s.got:
		return b
	case <-time.After(testTimeout):
		t.Fatal("upstream saw no connection end")
		return nil
	}
}

func newProxy(t *testing.T, upstream string) *Proxy {
	t.Helper()
	p, err := New(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	return c.(*net.TCPConn)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(b)
	return b
}

// send writes data and half-closes, ignoring errors from a cut connection.
func send(c *net.TCPConn, data []byte) {
	c.Write(data)
	c.CloseWrite()
}

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestForwardBothWaysAndCount(t *testing.T) {
	s := newSink(t, true)
	p := newProxy(t, s.ln.Addr().String())
	data := randomBytes(300 << 10)
	c := dial(t, p)
	go send(c, data)
	back, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if !bytes.Equal(back, data) {
		t.Fatalf("echo differs: got %d bytes, want %d", len(back), len(data))
	}
	if got := s.next(t); !bytes.Equal(got, data) {
		t.Fatalf("upstream got %d bytes, want %d", len(got), len(data))
	}
	if err := p.WaitBytes(ctx(t), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	n := int64(len(data))
	if got := p.Total(ClientToServer); got != n {
		t.Errorf("Total(client→server) = %d, want %d", got, n)
	}
	if got := p.Total(ServerToClient); got != n {
		t.Errorf("Total(server→client) = %d, want %d", got, n)
	}
	conns := p.Conns()
	if len(conns) != 1 || conns[0].Bytes != [2]int64{n, n} || conns[0].Cut {
		t.Errorf("Conns() = %+v, want one uncut connection with %d bytes each way", conns, n)
	}
}

func TestCutNextConn(t *testing.T) {
	data := randomBytes(200 << 10)
	tests := []struct {
		name string
		n    int64
	}{
		{"at accept", 0},
		{"after one byte", 1},
		{"mid header", 3},
		{"past the first read", 100_000},
		{"one short of the end", int64(len(data)) - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSink(t, false)
			p := newProxy(t, s.ln.Addr().String())
			p.CutNextConn(tt.n)
			c := dial(t, p)
			go send(c, data)
			if _, err := io.ReadAll(c); err != nil && !isReset(err) {
				t.Fatalf("client read: %v", err)
			}
			if tt.n > 0 {
				if got := s.next(t); !bytes.Equal(got, data[:tt.n]) {
					t.Fatalf("upstream got %d bytes, want exactly the first %d", len(got), tt.n)
				}
			}
			if st := p.Conns()[0]; !st.Cut || st.Bytes[ClientToServer] != tt.n {
				t.Errorf("stats = cut %v, %d bytes; want cut after %d", st.Cut, st.Bytes[ClientToServer], tt.n)
			}
			// The fault is for one connection only.
			c2 := dial(t, p)
			go send(c2, data)
			io.ReadAll(c2)
			if got := s.next(t); !bytes.Equal(got, data) {
				t.Fatalf("second connection: upstream got %d bytes, want all %d", len(got), len(data))
			}
		})
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne)
}

// TestCutAfterCountsAcrossConnections arms a cut while a first connection
// has already sent bytes, and checks that it lands on the byte counted
// from the moment it was armed, in the connection that carries it.
func TestCutAfterCountsAcrossConnections(t *testing.T) {
	s := newSink(t, false)
	p := newProxy(t, s.ln.Addr().String())
	first := randomBytes(5000)
	c1 := dial(t, p)
	send(c1, first)
	if got := s.next(t); !bytes.Equal(got, first) {
		t.Fatalf("first connection: got %d bytes", len(got))
	}
	p.CutAfter(7777)
	second := randomBytes(50_000)
	c2 := dial(t, p)
	go send(c2, second)
	io.ReadAll(c2)
	if got := s.next(t); !bytes.Equal(got, second[:7777]) {
		t.Fatalf("second connection: upstream got %d bytes, want the first 7777", len(got))
	}
	if st := p.Conns(); st[0].Cut || !st[1].Cut {
		t.Errorf("cut flags = %v, %v; want only the second connection cut", st[0].Cut, st[1].Cut)
	}
}

func TestFlipByte(t *testing.T) {
	data := randomBytes(100 << 10)
	tests := []struct {
		name string
		k    int64
	}{
		{"first byte", 0},
		{"in the first read", 5},
		{"past a read boundary", bufSize + 17},
		{"last byte", int64(len(data)) - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSink(t, false)
			p := newProxy(t, s.ln.Addr().String())
			p.FlipByte(tt.k)
			send(dial(t, p), data)
			got := s.next(t)
			want := bytes.Clone(data)
			want[tt.k] ^= 0xFF
			if !bytes.Equal(got, want) {
				t.Fatalf("upstream did not get the data with exactly byte %d inverted", tt.k)
			}
			if p.Flips() != 1 {
				t.Errorf("Flips() = %d, want 1", p.Flips())
			}
			// One-shot: the next connection passes untouched.
			send(dial(t, p), data)
			if got := s.next(t); !bytes.Equal(got, data) {
				t.Fatal("second connection was modified")
			}
		})
	}
}

func TestStallHoldsUntilRelease(t *testing.T) {
	s := newSink(t, true)
	p := newProxy(t, s.ln.Addr().String())
	c := dial(t, p)
	// One round trip first so the upstream is connected before the stall.
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	p.Stall()
	c.Write([]byte("held"))
	// A short read deadline proves nothing came through while stalled.
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 8)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read during stall = %d, %v; want a timeout", n, err)
	}
	if got := p.Total(ClientToServer); got != 1 {
		t.Fatalf("forwarded %d bytes during the stall, want 1 (from before it)", got)
	}
	p.Release()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("after release read %q, %v; want \"held\"", buf, err)
	}
}

func TestThrottle(t *testing.T) {
	s := newSink(t, false)
	p := newProxy(t, s.ln.Addr().String())
	const rate, n = 400 << 10, 200 << 10 // half a second's worth
	p.Throttle(rate)
	start := time.Now()
	send(dial(t, p), randomBytes(n))
	if got := s.next(t); len(got) != n {
		t.Fatalf("upstream got %d bytes, want %d", len(got), n)
	}
	// The first slice goes at once, so allow one slice less than half a second.
	elapsed := time.Since(start)
	if least := time.Second/2 - time.Second/throttleSlices; elapsed < least {
		t.Errorf("%d bytes at %d B/s took %v, want at least %v", n, rate, elapsed, least)
	}
	if elapsed > 5*time.Second {
		t.Errorf("%d bytes at %d B/s took %v: throttled far below the rate", n, rate, elapsed)
	}
}

func TestWaitBytesAndConns(t *testing.T) {
	s := newSink(t, false)
	p := newProxy(t, s.ln.Addr().String())
	done := make(chan error, 1)
	go func() { done <- p.WaitBytes(ctx(t), 1000) }()
	c := dial(t, p)
	if err := p.WaitConns(ctx(t), 1); err != nil {
		t.Fatal(err)
	}
	c.Write(make([]byte, 999))
	select {
	case err := <-done:
		t.Fatalf("WaitBytes(1000) returned %v after 999 bytes", err)
	default:
	}
	c.Write(make([]byte, 1))
	if err := <-done; err != nil {
		t.Fatalf("WaitBytes: %v", err)
	}
	if got := p.Total(ClientToServer); got < 1000 {
		t.Fatalf("WaitBytes returned with only %d bytes forwarded", got)
	}

	short, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.WaitBytes(short, 1<<40); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitBytes with a cancelled context = %v, want context.Canceled", err)
	}
	go func() { done <- p.WaitBytes(ctx(t), 1<<40) }()
	p.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("WaitBytes across Close = %v, want ErrClosed", err)
	}
}

func TestSetUpstream(t *testing.T) {
	a, b := newSink(t, false), newSink(t, false)
	p := newProxy(t, a.ln.Addr().String())
	send(dial(t, p), []byte("to a"))
	if got := a.next(t); string(got) != "to a" {
		t.Fatalf("a got %q", got)
	}
	p.SetUpstream(b.ln.Addr().String())
	send(dial(t, p), []byte("to b"))
	if got := b.next(t); string(got) != "to b" {
		t.Fatalf("b got %q", got)
	}
}

func TestUpstreamDownClosesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := newProxy(t, dead)
	c := dial(t, p)
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Fatalf("read: %v", err)
	}
	if err := p.WaitConns(ctx(t), 1); err != nil {
		t.Fatal(err)
	}
}

func TestHalfClosePassesThrough(t *testing.T) {
	s := newSink(t, true)
	p := newProxy(t, s.ln.Addr().String())
	c := dial(t, p)
	c.Write([]byte("request"))
	c.CloseWrite() // the sink echoes, then sees EOF and closes
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "request" {
		t.Fatalf("after half-close read %q, %v; want the echo", got, err)
	}
}

// TestRecordHead: RecordHead keeps the first bytes of each direction,
// client→server in Head and server→client in Back.
func TestRecordHead(t *testing.T) {
	s := newSink(t, true)
	p := newProxy(t, s.ln.Addr().String())
	p.RecordHead(10)
	c := dial(t, p)
	send(c, []byte("0123456789abcdef"))
	s.next(t)
	if echo, err := io.ReadAll(c); err != nil || string(echo) != "0123456789abcdef" {
		t.Fatalf("read %q, %v; want the echo", echo, err)
	}
	if err := p.WaitBytes(ctx(t), 16); err != nil {
		t.Fatal(err)
	}
	st := p.Conns()[0]
	if string(st.Head) != "0123456789" {
		t.Fatalf("Head = %q, want the first 10 bytes", st.Head)
	}
	if string(st.Back) != "0123456789" {
		t.Fatalf("Back = %q, want the first 10 bytes of the echo", st.Back)
	}
}

func TestCloseEndsOpenConnections(t *testing.T) {
	s := newSink(t, false)
	p := newProxy(t, s.ln.Addr().String())
	c := dial(t, p)
	p.Stall() // a stalled pump must not keep Close waiting
	c.Write([]byte("stuck"))
	if err := p.WaitConns(ctx(t), 1); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Fatalf("client read after Close: %v", err)
	}
	if _, err := net.Dial("tcp", p.Addr()); err == nil {
		t.Error("proxy still accepts after Close")
	}
}

func TestCloseConns(t *testing.T) {
	s := newSink(t, false)
	p := newProxy(t, s.ln.Addr().String())
	c := dial(t, p)
	c.Write([]byte("abc"))
	if err := p.WaitBytes(ctx(t), 3); err != nil {
		t.Fatal(err)
	}
	p.CloseConns()
	if got := s.next(t); string(got) != "abc" {
		t.Fatalf("upstream got %q", got)
	}
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Fatalf("client read: %v", err)
	}
	send(dial(t, p), []byte("again"))
	if got := s.next(t); string(got) != "again" {
		t.Fatalf("after CloseConns a new connection got %q", got)
	}
}

// TestHoldDials restarts the upstream while dials are held: a client that
// connects in the gap is accepted, waits, and then reaches the upstream
// set before the release, not the dead one of its accept.
func TestHoldDials(t *testing.T) {
	a := newSink(t, false)
	p := newProxy(t, a.ln.Addr().String())
	p.HoldDials()
	a.ln.Close() // the old upstream is gone
	c := dial(t, p)
	if err := p.WaitConns(ctx(t), 1); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("waited"))
	c.CloseWrite()
	b := newSink(t, false)
	p.SetUpstream(b.ln.Addr().String())
	p.ReleaseDials()
	if got := b.next(t); string(got) != "waited" {
		t.Fatalf("new upstream got %q, want the held connection's bytes", got)
	}
	p.ReleaseDials() // not held: nothing to do
	send(dial(t, p), []byte("after"))
	if got := b.next(t); string(got) != "after" {
		t.Fatalf("after the release a new connection got %q", got)
	}
}

// TestHoldDialsClose checks that Close ends a connection held before its
// dial.
func TestHoldDialsClose(t *testing.T) {
	s := newSink(t, false)
	p := newProxy(t, s.ln.Addr().String())
	p.HoldDials()
	c := dial(t, p)
	if err := p.WaitConns(ctx(t), 1); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Fatalf("client read after Close: %v", err)
	}
}

func TestWaitConnBytes(t *testing.T) {
	s := newSink(t, false)
	p := newProxy(t, s.ln.Addr().String())
	c1 := dial(t, p)
	c1.Write(make([]byte, 500))
	if err := p.WaitConnBytes(ctx(t), 1, 500); err != nil {
		t.Fatal(err)
	}
	// A connection not yet accepted is waited for; bytes of another
	// connection do not count.
	done := make(chan error, 1)
	go func() { done <- p.WaitConnBytes(ctx(t), 2, 100) }()
	c1.Write(make([]byte, 1000))
	if err := p.WaitConnBytes(ctx(t), 1, 1500); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("WaitConnBytes(2, 100) returned %v before connection 2 sent anything", err)
	default:
	}
	c2 := dial(t, p)
	c2.Write(make([]byte, 100))
	if err := <-done; err != nil {
		t.Fatalf("WaitConnBytes(2, 100): %v", err)
	}
	if got := p.Conns()[1].Bytes[ClientToServer]; got < 100 {
		t.Fatalf("returned with %d bytes on connection 2", got)
	}
	// A connection that ends short of n is reported, not waited on.
	send(c2, make([]byte, 10))
	s.next(t) // the upstream has closed connection 2; the proxy follows
	if err := p.WaitConnBytes(ctx(t), 2, 1<<20); !errors.Is(err, ErrConnClosed) {
		t.Fatalf("WaitConnBytes past the end of a closed connection = %v, want ErrConnClosed", err)
	}
}

// TestDelay: with SetDelay(d) a byte takes at least d each way, so an
// echo round trip takes at least 2d, and a stream still arrives whole and
// in order.
func TestDelay(t *testing.T) {
	s := newSink(t, true)
	p := newProxy(t, s.ln.Addr().String())
	const d = 30 * time.Millisecond
	p.SetDelay(d)
	c := dial(t, p)
	for i := range 3 {
		start := time.Now()
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != byte(i) {
			t.Fatalf("echo %d: %v %v", i, b, err)
		}
		if rtt := time.Since(start); rtt < 2*d {
			t.Fatalf("round trip %d took %v, below twice the delay %v", i, rtt, d)
		}
	}
	data := randomBytes(2 << 20)
	go send(c, data)
	back, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("delayed echo of %d bytes: got %d, %v", len(data), len(back), err)
	}
}
