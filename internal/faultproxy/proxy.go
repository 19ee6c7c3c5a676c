package faultproxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sync"
	"time"
)

// Direction names one half of a proxied connection.
type Direction int

// The two directions of a connection.
const (
	ClientToServer Direction = iota
	ServerToClient
)

func (d Direction) String() string {
	if d == ClientToServer {
		return "client→server"
	}
	return "server→client"
}

// ErrClosed is returned by the Wait methods once the proxy is closed.
var ErrClosed = errors.New("faultproxy: proxy closed")

// ErrConnClosed is returned by WaitConnBytes when the connection closed
// before it forwarded the bytes waited for.
var ErrConnClosed = errors.New("faultproxy: connection closed")

// dialTimeout bounds the dial of the upstream for one connection; a dead
// upstream must fail the client quickly, as a refused connection would.
const dialTimeout = 5 * time.Second

// ConnStats describes one proxied connection.
type ConnStats struct {
	ID     int      // 1-based, in the order connections were accepted
	Bytes  [2]int64 // bytes forwarded, indexed by Direction
	Head   []byte   // the first client→server bytes, up to RecordHead's limit
	Back   []byte   // the first server→client bytes, up to RecordHead's limit
	Cut    bool     // closed by a cut fault
	Closed bool     // both sides are closed
}

// Proxy forwards connections to an upstream address and injects faults.
// It is safe for concurrent use.
type Proxy struct {
	ln   net.Listener
	wg   sync.WaitGroup
	done chan struct{} // closed by Close

	mu        sync.Mutex
	upstream  string
	conns     []*conn
	total     [2]int64      // bytes forwarded, by Direction
	claimed   int64         // client→server bytes claimed for forwarding; fault positions count these
	cutAt     int64         // claimed position at which to cut; -1: none
	cutNext   int64         // per-connection cut for the next accepted connection; -1: none
	flipAt    int64         // claimed position of the byte to invert; -1: none
	flips     int           // bytes inverted so far
	stall     chan struct{} // non-nil while stalled; Release closes it
	rate      int64         // client→server bytes per second per connection; 0: unlimited
	delay     time.Duration // one-way latency of connections accepted from now on; 0: none
	dialHold  chan struct{} // non-nil while dials are held; ReleaseDials closes it
	headLimit int
	changed   chan struct{} // closed and replaced whenever a counter changes
	closed    bool

	serverTLS   *tls.Config // NewTLS: what clients are served; nil: plain TCP relay
	fingerprint string      // NewTLS: of the key served to clients
}

// New starts a proxy on 127.0.0.1 with a port chosen by the kernel,
// forwarding to upstream (HOST:PORT).
func New(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listening: %w", err)
	}
	p := &Proxy{
		ln: ln, done: make(chan struct{}), upstream: upstream,
		cutAt: -1, cutNext: -1, flipAt: -1, changed: make(chan struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// NewTLS starts a proxy that terminates TLS on both sides, so that its
// faults, counters and RecordHead act on the plaintext stream, exactly as
// New's do on a plaintext protocol: it serves clients TLS 1.3 with a key
// and self-signed certificate of its own (Fingerprint), and speaks TLS 1.3
// to the upstream without checking the upstream's key. It is the man in
// the middle a client must be told to trust.
func NewTLS(upstream string) (*Proxy, error) {
	cert, fp, err := selfSigned()
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p, err := New(upstream)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serverTLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}
	p.fingerprint = fp
	return p, nil
}

// Fingerprint returns, for a proxy made by NewTLS, the fingerprint of the
// key it serves, as ferryd logs one (SHA256: and the unpadded base64 of
// the SHA-256 of the certificate's SubjectPublicKeyInfo); "" for New's.
func (p *Proxy) Fingerprint() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fingerprint
}

// selfSigned makes an ECDSA P-256 key and a self-signed certificate.
func selfSigned() (tls.Certificate, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "faultproxy"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:]), nil
}

// Addr returns the address clients connect to, as HOST:PORT.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetUpstream changes the address dialled for connections from now on:
// those accepted later and those waiting to dial (see HoldDials). Open
// connections keep theirs.
func (p *Proxy) SetUpstream(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.upstream = addr
}

// CutAfter arms a one-shot cut: after n more client→server bytes (counted
// over all connections) have been forwarded, the connection carrying them
// is closed on both sides. n == 0 cuts at the next byte a client sends.
func (p *Proxy) CutAfter(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutAt = p.claimed + n
}

// CutNextConn arms a cut for the next connection accepted only: it
// forwards exactly n client→server bytes and is then closed on both sides
// (n == 0: closed as soon as it is accepted).
func (p *Proxy) CutNextConn(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutNext = n
}

// FlipByte arms a one-shot fault: the client→server byte k bytes from now
// (counted over all connections, 0-based) is inverted (XOR 0xFF) in transit.
func (p *Proxy) FlipByte(k int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flipAt = p.claimed + k
}

// Flips returns how many bytes FlipByte faults have inverted, so a test
// can tell that its fault fired.
func (p *Proxy) Flips() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flips
}

// Stall stops forwarding in both directions on every connection until
// Release. Bytes already read are held, not dropped.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall == nil {
		p.stall = make(chan struct{})
	}
}

// Release resumes forwarding after Stall. It does nothing when not stalled.
func (p *Proxy) Release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall != nil {
		close(p.stall)
		p.stall = nil
	}
}

// HoldDials makes every connection that is accepted from now on, or has
// not dialled yet, wait before dialling the upstream until ReleaseDials;
// it then dials the upstream set at that moment. The client's connection
// is accepted and simply hears nothing meanwhile. A test that restarts the
// server behind the proxy holds dials across the restart, so that a
// client reconnecting in the gap waits for the new server instead of
// being refused and spending a retry.
func (p *Proxy) HoldDials() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dialHold == nil {
		p.dialHold = make(chan struct{})
	}
}

// ReleaseDials lets connections held by HoldDials dial the upstream. It
// does nothing when dials are not held.
func (p *Proxy) ReleaseDials() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dialHold != nil {
		close(p.dialHold)
		p.dialHold = nil
	}
}

// Throttle limits each connection's client→server stream to bytesPerSec;
// 0 removes the limit. The server→client direction (acknowledgements) is
// never throttled. A change applies from the next slice forwarded.
func (p *Proxy) Throttle(bytesPerSec int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate = max(bytesPerSec, 0)
}

// SetDelay makes connections accepted from now on hold back every byte
// for d in each direction, preserving order: a link with a round-trip
// time of 2d (plus the proxy's own). Data keeps flowing meanwhile (up to
// 1024 reads of 32 KiB in flight per direction), so bytes counted by the
// Wait methods are those forwarded, after the delay. d ≤ 0 turns it off.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = max(d, 0)
}

// RecordHead makes connections accepted from now on keep their first n
// client→server bytes in ConnStats.Head, and their first n server→client
// bytes in ConnStats.Back, for tests that locate protocol frames or look
// at what crossed the network. The default is 0.
func (p *Proxy) RecordHead(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.headLimit = n
}

// Total returns the bytes forwarded in direction d over all connections.
func (p *Proxy) Total(d Direction) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total[d]
}

// Conns returns a snapshot of every connection accepted so far, in order.
func (p *Proxy) Conns() []ConnStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ConnStats, len(p.conns))
	for i, c := range p.conns {
		out[i] = ConnStats{ID: c.id, Bytes: c.bytes, Head: append([]byte(nil), c.head...), Back: append([]byte(nil), c.back...), Cut: c.cut, Closed: c.closed}
	}
	return out
}

// WaitBytes blocks until at least n client→server bytes have been
// forwarded in total, ctx is done, or the proxy is closed.
func (p *Proxy) WaitBytes(ctx context.Context, n int64) error {
	return p.wait(ctx, func() bool { return p.total[ClientToServer] >= n })
}

// WaitConnBytes blocks until the connection with ConnStats.ID id has
// forwarded at least n client→server bytes, ctx is done, or the proxy is
// closed. The connection need not have been accepted yet. If it closes
// short of n bytes, WaitConnBytes returns an error matching ErrConnClosed.
func (p *Proxy) WaitConnBytes(ctx context.Context, id int, n int64) error {
	short := int64(-1)
	err := p.wait(ctx, func() bool {
		if id < 1 || id > len(p.conns) {
			return false
		}
		c := p.conns[id-1]
		if c.bytes[ClientToServer] >= n {
			return true
		}
		if c.closed {
			short = c.bytes[ClientToServer]
			return true
		}
		return false
	})
	if err == nil && short >= 0 {
		return fmt.Errorf("%w: connection %d ended after %d client→server bytes, short of %d", ErrConnClosed, id, short, n)
	}
	return err
}

// WaitConns blocks until at least n connections have been accepted, ctx is
// done, or the proxy is closed.
func (p *Proxy) WaitConns(ctx context.Context, n int) error {
	return p.wait(ctx, func() bool { return len(p.conns) >= n })
}

// wait blocks until cond, evaluated under p.mu, holds.
func (p *Proxy) wait(ctx context.Context, cond func() bool) error {
	for {
		p.mu.Lock()
		ok, ch := cond(), p.changed
		p.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-p.done:
			return ErrClosed
		}
	}
}

// notify wakes every waiter; the caller holds p.mu.
func (p *Proxy) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// CloseConns closes every open connection on both sides at once, as a
// link that goes down would. New connections are still accepted.
func (p *Proxy) CloseConns() {
	p.mu.Lock()
	conns := append([]*conn(nil), p.conns...)
	p.mu.Unlock()
	for _, c := range conns {
		c.shut()
	}
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	err := p.ln.Close()
	p.CloseConns()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			return // closed; Close reports the listener's error
		}
		c := p.register(nc)
		if c == nil {
			_ = nc.Close() // turned away: the proxy is closing
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			c.serve()
		}()
	}
}

// register records a new connection and hands it the next-connection cut.
func (p *Proxy) register(nc net.Conn) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if p.serverTLS != nil {
		nc = tls.Server(nc, p.serverTLS) // handshakes on the first read
	}
	c := &conn{p: p, id: len(p.conns) + 1, client: nc, upTLS: p.serverTLS != nil, cutAt: p.cutNext, headLimit: p.headLimit, done: make(chan struct{})}
	p.cutNext = -1
	p.conns = append(p.conns, c)
	p.notify()
	return c
}
