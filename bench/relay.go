package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// relay forwards sessions from senders to a daemon and records when the
// first chunk leaves a sender. The session is TLS: the relay parses TLS
// record headers (5 bytes: type, version, length) and takes the record
// that carries the sender's application data past firstChunkAfter bytes
// (the hello and the offer take less; a chunk frame is larger) as the
// first chunk; everything after it is copied blind. It also records when
// it accepted the sender's connection, so that connect to first chunk
// (TCP, TLS handshake, hello, offer) is measured apart from process start. A relay with
// a delay (startDelayRelay) instead parses nothing and holds every byte
// for that long in each direction, in order, as a long link would.
type relay struct {
	ln     net.Listener
	target string
	delay  time.Duration // one way; 0 copies at once and watches for the first chunk
	wg     sync.WaitGroup

	mu        sync.Mutex
	first     time.Time // header of the first chunk frame seen; zero if none yet
	connected time.Time // when the first sender connection was accepted
	err       error     // first forwarding error
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

// startDelayRelay listens on a loopback port and forwards to target with
// delay added to each direction, so that a round trip takes 2*delay more.
// It works for any protocol (ferry's and rsync's): it records no first
// chunk.
func startDelayRelay(target string, delay time.Duration) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, target: target, delay: delay}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Handshake returns how long the first session took from the sender's
// connect to its first chunk; 0 if not seen.
func (r *relay) Handshake() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.first.IsZero() || r.connected.IsZero() {
		return 0
	}
	return r.first.Sub(r.connected)
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
	r.mu.Lock()
	if r.connected.IsZero() {
		r.connected = time.Now()
	}
	r.mu.Unlock()
	daemon, err := net.Dial("tcp", r.target)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	defer daemon.Close() //nolint:errcheck // the pipes report the copy errors
	if r.delay > 0 {
		back := make(chan error, 1)
		go func() { back <- delayPipe(sender, daemon, r.delay) }()
		err := delayPipe(daemon, sender, r.delay)
		return errors.Join(err, <-back)
	}
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

// firstChunkAfter is how many bytes of TLS application data from the
// sender precede its first chunk at most: its Finished, hello and offer.
const firstChunkAfter = 4096

// tlsRecordHeader is the size of a TLS record header; tlsAppData is the
// record type TLS 1.3 sends everything after the ServerHello in.
const (
	tlsRecordHeader = 5
	tlsAppData      = 23
)

// watch copies TLS records from sender to daemon up to and including the
// header of the record that carries the first chunk, and timestamps that
// header.
func (r *relay) watch(daemon io.Writer, sender io.Reader) error {
	var hdr [tlsRecordHeader]byte
	var appData int64
	for {
		if _, err := io.ReadFull(sender, hdr[:]); err != nil {
			if err == io.EOF {
				return nil // a session that ends before any chunk
			}
			return fmt.Errorf("relay: reading TLS record header: %w", err)
		}
		now := time.Now()
		if _, err := daemon.Write(hdr[:]); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		n := int64(binary.BigEndian.Uint16(hdr[3:]))
		if hdr[0] == tlsAppData {
			if appData += n; appData > firstChunkAfter {
				r.mu.Lock()
				if r.first.IsZero() {
					r.first = now
				}
				r.mu.Unlock()
				return nil
			}
		}
		if _, err := io.CopyN(daemon, sender, n); err != nil {
			return fmt.Errorf("relay: copying %d-byte record: %w", n, err)
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

// delayPipe copies src to dst like pipe, but writes each piece read from
// src delay after it was read, in the order read. Up to 1024 pieces of at
// most 64 KiB are in flight; beyond that src is read no faster than dst
// takes it, like a link whose buffer is full.
func delayPipe(dst, src net.Conn, delay time.Duration) error {
	type piece struct {
		b   []byte
		due time.Time
	}
	pieces := make(chan piece, 1024)
	var readErr error // written before pieces is closed, read after
	go func() {
		defer close(pieces)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				pieces <- piece{buf[:n], time.Now().Add(delay)}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					readErr = err
				}
				return
			}
		}
	}()
	var writeErr error
	for p := range pieces {
		if writeErr != nil {
			continue // drain, so that the reader ends at the sender's EOF
		}
		time.Sleep(time.Until(p.due))
		if _, err := dst.Write(p.b); err != nil {
			// A peer that closed while late bytes (a TLS session ticket,
			// the daemon's last answers) were still in the delay queue
			// has finished; its own exit status says whether it failed.
			if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
				writeErr = err
			}
			_ = src.Close() // nothing more can be delivered; end the reader too
		}
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite() // the copy error, if any, is the one to report
	}
	if err := errors.Join(readErr, writeErr); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}
