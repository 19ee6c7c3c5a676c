package daemon_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

var errTorn = errors.New("test: write torn by its deadline")

// tearConn is the daemon's end of a session whose first ack write puts
// half of the frame on the wire and fails, as a TCP write cut short by
// its deadline can. It counts the bytes the daemon writes after that.
type tearConn struct {
	net.Conn
	mu     sync.Mutex
	torn   bool
	after  int
	closed chan struct{}
	once   sync.Once
}

func (c *tearConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	torn := c.torn
	if !torn && len(p) > 0 && transfer.FrameType(p[0]) == transfer.FrameAck {
		c.torn = true
		c.mu.Unlock()
		n, _ := c.Conn.Write(p[:len(p)/2])
		return n, errTorn
	}
	c.mu.Unlock()
	n, err := c.Conn.Write(p)
	if torn {
		c.mu.Lock()
		c.after += n
		c.mu.Unlock()
	}
	return n, err
}

func (c *tearConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestAckWriteFailure: the daemon dropped the error of an ack write and
// went on writing acks and Committed after a torn frame, which the sender
// could only misread. A failed write now ends the session: nothing more
// is written on the connection.
func TestAckWriteFailure(t *testing.T) {
	s := newServer(t, daemon.Config{IdleTimeout: 2 * time.Second, SyncBytes: 4 * testChunk})
	c, d := net.Pipe()
	tc := &tearConn{Conn: d, closed: make(chan struct{})}
	s.ServeConn(tc)
	t.Cleanup(func() { c.Close() })
	client := handshake(t, c)
	data := randomData(64*testChunk, 7)
	if _, err := client.Send(context.Background(), source(data), "torn.bin", transfer.SendOptions{}); err == nil {
		t.Fatal("Send succeeded although an ack frame was torn")
	}
	c.Close()
	select {
	case <-tc.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end")
	}
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if !tc.torn {
		t.Fatal("no ack was written")
	}
	if tc.after > 0 {
		t.Errorf("the daemon wrote %d bytes after a torn ack frame", tc.after)
	}
}
