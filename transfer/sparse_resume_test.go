package transfer

import (
	"bufio"
	"context"
	"net"
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
	cl, err := Handshake(context.Background(), c, ClientOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sent := make(chan error, 1)
	go func() {
		_, err := cl.Send(context.Background(), src, "sparse", SendOptions{})
		sent <- err
	}()
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
