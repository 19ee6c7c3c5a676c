package transfer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestSendKeepsToTheDurableWindow: a daemon that accepts with a durable
// window (protocol 2.3) never receives a chunk ending more than the
// window past the durable offset it acknowledged. The fake daemon acks
// only once the sender has filled the window and then stayed quiet, so a
// sender that ignores the window is caught sending into it; a nack while
// the sender waits for room cuts the wait, and the resend from the nack
// keeps to the window as well.
func TestSendKeepsToTheDurableWindow(t *testing.T) {
	const cs = MinChunkSize
	const window = 2 * cs
	data := randomData(7*cs+100, 21)
	whole := HashBytes(data)
	size := int64(len(data))
	c, d := net.Pipe()
	done := make(chan error, 1)
	go func() {
		defer d.Close()
		done <- windowDaemon(bufio.NewReader(d), d, size, window, whole)
	}()
	t.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, io.EOF) {
			t.Errorf("fake daemon: %v", err)
		}
	})
	cl, err := Handshake(context.Background(), c, ClientOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	res, err := cl.Send(context.Background(), memSource(data), "f", SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if res.Hash != whole || res.SentBytes != size+cs {
		t.Fatalf("result %+v, want the whole file plus the nacked chunk (%d bytes)", res, size+cs)
	}
}

// quiet is how long the fake daemon of TestSendKeepsToTheDurableWindow
// watches for a chunk the sender must not send. A sender that ignores
// the window is already blocked writing it, so the wait never decides a
// correct sender's outcome, only how soon a wrong one is caught.
const quiet = 200 * time.Millisecond

// windowDaemon serves one file of size bytes with a durable window: see
// TestSendKeepsToTheDurableWindow.
func windowDaemon(r *bufio.Reader, w net.Conn, size, window int64, whole Hash) error {
	if err := answerHello(&Hello{Major: ProtocolMajor, Minor: ProtocolMinor, ChunkSize: MinChunkSize})(r, w); err != nil {
		return err
	}
	m, err := ReadMessage(r)
	if err != nil {
		return err
	}
	o := m.(*Offer)
	if err := WriteMessage(w, &Accept{ID: o.ID, ChunkSize: MinChunkSize, Window: window}); err != nil {
		return err
	}
	var acked, next int64
	nacked := false
	buf := make([]byte, ChunkHeaderSize+MinChunkSize)
	for {
		if next == acked+window && next < size {
			// The window is full: nothing may come until the ack.
			_ = w.SetReadDeadline(time.Now().Add(quiet))
			_, err := r.Peek(1)
			_ = w.SetReadDeadline(time.Time{})
			if err == nil {
				return fmt.Errorf("the sender sent more than the window (%d bytes) past durable offset %d", window, acked)
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
			if acked == window && !nacked {
				// Nack the window's last chunk while the sender waits:
				// it resends from there, still inside the window.
				nacked, next = true, next-MinChunkSize
				if err := WriteMessage(w, &Nack{ID: o.ID, Offset: next}); err != nil {
					return err
				}
				continue
			}
			acked = next
			if err := WriteMessage(w, &Ack{ID: o.ID, DurableOffset: acked}); err != nil {
				return err
			}
		}
		h, err := ReadFrameHeader(r, MinChunkSize)
		if err != nil {
			return err
		}
		switch h.Type {
		case FrameData:
			p, err := ReadControl(r, h, nil)
			if err != nil {
				return err
			}
			m, err := DecodeMessage(h.Type, p)
			if err != nil {
				return err
			}
			if off := m.(*Data).Offset; off != next {
				return fmt.Errorf("data run from %d, want %d", off, next)
			}
		case FrameTrailer:
			if _, err := ReadControl(r, h, nil); err != nil {
				return err
			}
			if next != size {
				return fmt.Errorf("trailer after %d of %d bytes", next, size)
			}
			if err := WriteMessage(w, &Committed{ID: o.ID, Size: size, Hash: whole}); err != nil {
				return err
			}
			_, err := io.Copy(io.Discard, r)
			return err
		case FrameChunk:
			var c Chunk
			if err := ReadChunk(r, h, buf, &c); err != nil {
				return err
			}
			end := c.Offset + int64(len(c.Data))
			if c.Offset != next {
				return fmt.Errorf("chunk at %d, want %d", c.Offset, next)
			}
			if end > acked+window {
				return fmt.Errorf("chunk [%d,%d) ends more than the window (%d bytes) past durable offset %d", c.Offset, end, window, acked)
			}
			next = end
		default:
			return fmt.Errorf("unexpected %v", h.Type)
		}
	}
}
