package transfer

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// TestResumeInHoleOpensDataRunFirst: a sparse file resumed at a durable
// offset inside a hole opens its data run (Data) before its first zero
// chunk. The sender once wrote zero chunks straight to the connection
// while the Data frame waited in its buffer, so the daemon saw "zero
// chunk outside a data run" and refused every retry: a partial whose
// durable offset lay in a hole could never be resumed.
func TestResumeInHoleOpensDataRunFirst(t *testing.T) {
	const cs = MinChunkSize
	data := make([]byte, 6*cs)
	copy(data[:cs], randomData(cs, 3))
	copy(data[5*cs:], randomData(cs, 4))
	size := int64(len(data))
	src := memSource(data)
	src.Hole = func(off, n int64) bool { return off >= cs && off+n <= 5*cs }
	durable := int64(2 * cs) // in the hole [cs, 5cs)
	tail, err := ChunkHash(data[cs:2*cs], cs, size)
	if err != nil {
		t.Fatal(err)
	}

	c, d := net.Pipe()
	first := make(chan FrameType, 1)
	go func() {
		defer d.Close()
		r := bufio.NewReader(d)
		if err := answerHello(&Hello{Major: ProtocolMajor, Minor: ProtocolMinor, ChunkSize: cs})(r, d); err != nil {
			first <- 0
			return
		}
		m, err := ReadMessage(r)
		o, ok := m.(*Offer)
		if err != nil || !ok {
			first <- 0
			return
		}
		acc := &Accept{ID: o.ID, ChunkSize: cs, DurableOffset: durable,
			TailOffset: cs, TailLength: cs, TailHash: tail}
		if err := WriteMessage(d, acc); err != nil {
			first <- 0
			return
		}
		h, err := ReadFrameHeader(r, cs)
		if err != nil {
			first <- 0
			return
		}
		first <- h.Type
	}()
	sent := sendInBackground(t, c, cs, src)
	select {
	case ft := <-first:
		if ft != FrameData {
			t.Fatalf("first frame after the Accept: %v; want %v (the data run must open before its zero chunks; 0: the fake daemon failed)", ft, FrameData)
		}
	case err := <-sent:
		t.Fatalf("send ended before the daemon read a frame: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no frame after the Accept")
	}
	c.Close()
	<-sent
}

// TestFirstZeroChunkNotHeld: a data run's first chunk reaches the daemon
// at once even when it is a zero chunk, a few bytes that the sender's
// frame buffer would otherwise hold until about 1,300 more fill it (the
// first chunk of a 16 GiB sparse file took 199 ms). The source's second
// chunk can be had only once the daemon has the first.
func TestFirstZeroChunkNotHeld(t *testing.T) {
	const cs = MinChunkSize
	data := make([]byte, 8*cs)
	open := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(open) }) }
	defer release()
	src := memSource(data)
	src.Hole = func(off, n int64) bool { // every chunk is a hole; the second one waits
		if off >= cs {
			<-open
		}
		return true
	}

	c, d := net.Pipe()
	got := make(chan error, 1)
	go func() {
		defer d.Close()
		got <- func() error {
			r := bufio.NewReader(d)
			if err := answerHello(&Hello{Major: ProtocolMajor, Minor: ProtocolMinor, ChunkSize: cs})(r, d); err != nil {
				return err
			}
			m, err := ReadMessage(r)
			if err != nil {
				return fmt.Errorf("reading the offer: %w", err)
			}
			o, ok := m.(*Offer)
			if !ok {
				return fmt.Errorf("got a %T, want an offer", m)
			}
			if err := WriteMessage(d, &Accept{ID: o.ID, ChunkSize: cs}); err != nil {
				return err
			}
			for {
				m, err := ReadMessage(r)
				if err != nil {
					return fmt.Errorf("reading the data run: %w", err)
				}
				if _, ok := m.(*ZeroChunk); ok {
					release()
					return nil
				}
			}
		}()
	}()
	sent := sendInBackground(t, c, cs, src)
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("fake daemon: %v", err)
		}
	case err := <-sent:
		t.Fatalf("send ended before the daemon had a zero chunk: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the first zero chunk stayed in the sender's buffer while it waited for the second chunk")
	}
	c.Close()
	<-sent
}

// sendInBackground starts a session on c with chunk size cs and sends src
// as "sparse" on a goroutine; the channel gets Send's error. The session
// is closed when the test ends.
func sendInBackground(t *testing.T, c net.Conn, cs int, src Source) <-chan error {
	t.Helper()
	cl, err := Handshake(context.Background(), c, ClientOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() }) // the test has its verdict
	sent := make(chan error, 1)
	go func() {
		_, err := cl.Send(context.Background(), src, "sparse", SendOptions{})
		sent <- err
	}()
	return sent
}
