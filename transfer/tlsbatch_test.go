package transfer

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// writeSizes records the size of every Write to its conn.
type writeSizes struct {
	net.Conn
	mu    sync.Mutex
	sizes []int
}

func (c *writeSizes) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.sizes = append(c.sizes, len(p))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *writeSizes) take() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sizes
	c.sizes = nil
	return s
}

// TestTLSClientBatchesRecords: the sender's TLS connection writes a chunk
// frame's records many to a system call (at most TLSWriteBatch bytes
// each) rather than one 16 KiB record per call, writes a small frame at
// once, and the daemon reads exactly the bytes written.
func TestTLSClientBatchesRecords(t *testing.T) {
	key := newTestKey(t, nil, false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		d, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer d.Close()
		b, _ := io.ReadAll(tls.Server(d, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{key.tls}}))
		got <- b
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ws := &writeSizes{Conn: nc}
	c, err := tlsClient(t.Context(), ws, ln.Addr().String(), &TLSOptions{Fingerprint: Fingerprint(key.cert)}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ws.take() // the handshake's
	frame := make([]byte, DefaultChunkSize+FrameHeaderSize+ChunkHeaderSize)
	if _, err := rand.Read(frame); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
	sizes := ws.take()
	if most := len(frame)/TLSWriteBatch + 2; len(sizes) > most {
		t.Errorf("a frame of %d bytes took %d socket writes (%v), want at most %d", len(frame), len(sizes), sizes, most)
	}
	for _, n := range sizes {
		if n > TLSWriteBatch {
			t.Errorf("a socket write of %d bytes, above TLSWriteBatch", n)
		}
	}
	small := []byte("ack")
	if _, err := c.Write(small); err != nil {
		t.Fatal(err)
	}
	if sizes := ws.take(); len(sizes) != 1 {
		t.Errorf("a small frame took %d socket writes, want 1 at once", len(sizes))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, append(frame, small...)) {
		t.Errorf("the daemon read %d bytes, not the %d written", len(b), len(frame)+len(small))
	}
}
