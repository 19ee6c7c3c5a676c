package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// relay forwards sessions from senders to a daemon and records when the
// first chunk frame leaves a sender: the hello and the offer before it are
// parsed frame by frame, everything after it is copied blind.
type relay struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	first time.Time // header of the first chunk frame seen; zero if none yet
	err   error     // first forwarding error
}

// startRelay listens on a loopback port and forwards to target.
func startRelay(target string) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, target: target}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Addr is where senders connect.
func (r *relay) Addr() string { return r.ln.Addr().String() }

// FirstChunk returns when the first chunk frame was seen.
func (r *relay) FirstChunk() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.first
}

// Close stops accepting and waits for open sessions to end, which they do
// when their sender exits.
func (r *relay) Close() error {
	_ = r.ln.Close() // stops Accept; a listener holds no data
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.fail(r.forward(c))
		}()
	}
}

func (r *relay) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil && err != nil {
		r.err = err
	}
}

// forward joins one sender connection to the daemon until both directions
// have ended.
func (r *relay) forward(sender net.Conn) error {
	defer sender.Close() //nolint:errcheck // the pipes report the copy errors
	daemon, err := net.Dial("tcp", r.target)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	defer daemon.Close() //nolint:errcheck // the pipes report the copy errors
	back := make(chan error, 1)
	go func() { back <- pipe(sender, daemon) }()
	err = r.watch(daemon, sender)
	if err == nil {
		err = pipe(daemon, sender)
	} else {
		_ = daemon.Close() // the session is broken; end the other direction too
	}
	if berr := <-back; err == nil {
		err = berr
	}
	return err
}

// watch copies frames from sender to daemon up to and including the
// header of the first chunk frame, and timestamps that header.
func (r *relay) watch(daemon io.Writer, sender io.Reader) error {
	var hdr [transfer.FrameHeaderSize]byte
	for {
		if _, err := io.ReadFull(sender, hdr[:]); err != nil {
			if err == io.EOF {
				return nil // a session that ends before any chunk
			}
			return fmt.Errorf("relay: reading frame header: %w", err)
		}
		now := time.Now()
		if _, err := daemon.Write(hdr[:]); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		if transfer.FrameType(hdr[0]) == transfer.FrameChunk {
			r.mu.Lock()
			if r.first.IsZero() {
				r.first = now
			}
			r.mu.Unlock()
			return nil
		}
		n := int64(binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.CopyN(daemon, sender, n); err != nil {
			return fmt.Errorf("relay: copying %d-byte frame: %w", n, err)
		}
	}
}

// pipe copies src to dst until EOF, then half-closes dst so the peer sees
// the end too. Between two TCP connections io.Copy splices in the kernel.
func pipe(dst, src net.Conn) error {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite() // the copy error, if any, is the one to report
	}
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}
