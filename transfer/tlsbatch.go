package transfer

import (
	"crypto/tls"
	"net"
	"sync"
)

// TLSWriteBatch is how many bytes of TLS records, at most, the sender
// gathers into one write system call while it writes a large frame
// (batchedTLS): 256 KiB, sixteen records of 16 KiB where crypto/tls alone
// makes one call per record.
const TLSWriteBatch = 256 << 10

// batchConn is the socket under the sender's tls.Conn. While a large
// Write of the tls.Conn runs (batchedTLS.Write), the records it seals are
// gathered and written TLSWriteBatch bytes at a time, and the rest when
// that Write ends; any other write (the handshake, an alert) goes out at
// once. The buffer is allocated at the first large Write.
type batchConn struct {
	net.Conn
	mu  sync.Mutex // guards on and buf: an alert may be written from a Read
	on  bool
	buf []byte
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on {
		return c.Conn.Write(p)
	}
	if len(c.buf)+len(p) > cap(c.buf) {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > cap(c.buf) {
			return c.Conn.Write(p)
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// flushLocked writes the gathered records. Called with mu held.
func (c *batchConn) flushLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// batchedTLS is the sender's TLS connection: a Write of more than one
// record's worth gathers its records in the batchConn beneath.
type batchedTLS struct {
	*tls.Conn
	bc *batchConn
}

func (c *batchedTLS) Write(p []byte) (int, error) {
	if len(p) <= 16<<10 {
		return c.Conn.Write(p)
	}
	c.bc.mu.Lock()
	c.bc.on = true
	if c.bc.buf == nil {
		c.bc.buf = make([]byte, 0, TLSWriteBatch)
	}
	c.bc.mu.Unlock()
	n, err := c.Conn.Write(p)
	c.bc.mu.Lock()
	c.bc.on = false
	ferr := c.bc.flushLocked()
	c.bc.mu.Unlock()
	if err == nil && ferr != nil {
		// crypto/tls took the records; the socket did not.
		return 0, ferr
	}
	return n, err
}
