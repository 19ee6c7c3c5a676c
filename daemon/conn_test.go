package daemon_test

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"

	"github.com/ferry-dev/ferry/transfer"
)

// Connection wrappers that inject faults on the sender's side of a session,
// like restic's failingReader: they sit between transfer.Client and the
// pipe to the daemon.

var errCut = errors.New("test: connection cut")

// cutConn passes the first after bytes written, then closes the
// connection: a link that drops mid-transfer.
type cutConn struct {
	net.Conn
	mu    sync.Mutex
	after int64
}

func (c *cutConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if int64(len(p)) <= c.after {
		n, err := c.Conn.Write(p)
		c.after -= int64(n)
		return n, err
	}
	n, _ := c.Conn.Write(p[:c.after])
	c.after = 0
	c.Conn.Close()
	return n, errCut
}

// gateConn passes whole writes until after bytes have gone through, then
// blocks every further write until open is closed, and fails it (or, with
// resume set, carries on): a sender stalled mid-transfer that the test
// releases when it chooses.
type gateConn struct {
	net.Conn
	after   int64
	resume  bool
	open    chan struct{}
	stalled chan struct{} // closed when the first write blocks
	once    sync.Once
}

func newGateConn(c net.Conn, after int64) *gateConn {
	return &gateConn{Conn: c, after: after, open: make(chan struct{}), stalled: make(chan struct{})}
}

func (c *gateConn) Write(p []byte) (int, error) {
	if c.after > 0 {
		n, err := c.Conn.Write(p)
		c.after -= int64(n)
		return n, err
	}
	c.once.Do(func() { close(c.stalled) })
	<-c.open
	if c.resume {
		return c.Conn.Write(p)
	}
	return 0, errCut
}

// flipConn parses the frames written through it and flips the lowest bit
// of the first data byte of every chunk for which flip returns true (flip
// is called once per chunk frame, with the chunk's offset). Chunk headers
// stay intact, so the daemon sees a chunk whose hash does not match.
type flipConn struct {
	net.Conn
	flip func(off int64) bool

	mu      sync.Mutex
	hdr     []byte // frame header, then chunk header, of the current frame
	left    int64  // payload bytes of the current frame still to come
	corrupt bool   // flip the next data byte
}

func (c *flipConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	q := append([]byte(nil), p...)
	for i := 0; i < len(q); {
		if c.left > 0 {
			if c.corrupt {
				q[i] ^= 1
				c.corrupt = false
			}
			n := min(c.left, int64(len(q)-i))
			c.left -= n
			i += int(n)
			if c.left == 0 {
				c.hdr = c.hdr[:0]
			}
			continue
		}
		c.hdr = append(c.hdr, q[i])
		i++
		switch {
		case len(c.hdr) == transfer.FrameHeaderSize && transfer.FrameType(c.hdr[0]) != transfer.FrameChunk:
			c.left = int64(binary.BigEndian.Uint32(c.hdr[1:]))
			if c.left == 0 {
				c.hdr = c.hdr[:0]
			}
		case len(c.hdr) == transfer.FrameHeaderSize+transfer.ChunkHeaderSize:
			c.left = int64(binary.BigEndian.Uint32(c.hdr[1:])) - transfer.ChunkHeaderSize
			off := int64(binary.BigEndian.Uint64(c.hdr[transfer.FrameHeaderSize:]))
			c.corrupt = c.left > 0 && c.flip(off)
			if c.left == 0 {
				c.hdr = c.hdr[:0]
			}
		}
	}
	c.mu.Unlock()
	n, err := c.Conn.Write(q)
	return n, err
}
