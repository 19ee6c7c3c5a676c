package transfer

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseFingerprint(t *testing.T) {
	const fp = "SHA256:sCA28qmfq89jRt0rytFzqzVN3z88p0Haq/Rwxq5SyqI"
	tests := []struct {
		in, want string
		ok       bool
	}{
		{fp, fp, true},
		{fp + "=", fp, true},
		{"sha256:" + fp[7:], "", false},
		{fp[7:], "", false},
		{"SHA256:abc", "", false},
		{"SHA256:" + fp[7:] + "AAAA", "", false},
		{"MD5:00", "", false},
	}
	for _, tt := range tests {
		got, err := ParseFingerprint(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseFingerprint(%q) = %q, %v; want %q, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// testKey is a certificate and its key, for a fake daemon's TLS.
type testKey struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	tls  tls.Certificate
}

// newTestKey makes an ECDSA certificate for host "localhost", signed by
// parent, or self-signed (parent nil); ca makes it a CA.
func newTestKey(t *testing.T, parent *testKey, ca bool) *testKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IsCA: ca, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testKey{cert: cert, key: key, tls: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}

// memHosts is a KnownHosts in memory.
type memHosts struct {
	mu sync.Mutex
	m  map[string][]string
}

func (h *memHosts) Lookup(addr string) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.m[addr]), nil
}

func (h *memHosts) Add(addr, fp string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m[addr] = append(h.m[addr], fp)
	return nil
}

// tlsPipeDialer is pipeDialer over loopback TCP with the daemon's end inside TLS, serving
// key; heard counts the messages the daemon read.
func tlsPipeDialer(t *testing.T, key *testKey) (dial func(context.Context, string, string) (net.Conn, error), dials, heard *atomic.Int32) {
	t.Helper()
	dials, heard = new(atomic.Int32), new(atomic.Int32)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		dials.Add(1)
		// Loopback TCP, not net.Pipe: TLS writes a flight while its peer
		// writes an alert, which an unbuffered pipe cannot carry.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		d, err := ln.Accept()
		if err != nil {
			c.Close()
			return nil, err
		}
		wg.Go(func() {
			defer d.Close()
			s := tls.Server(d, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{key.tls}})
			r := bufio.NewReader(s)
			counting := func(r *bufio.Reader, w io.Writer) error {
				if _, err := r.Peek(1); err != nil {
					return err
				}
				heard.Add(1)
				return goodDaemon(r, w)
			}
			_ = counting(r, s)
			_, _ = io.Copy(io.Discard, s)
		})
		return c, nil
	}, dials, heard
}

// TestSenderChecksIdentity: the daemon's key is checked before the Hello,
// as TLSOptions says, and a mismatch is permanent.
func TestSenderChecksIdentity(t *testing.T) {
	ca := newTestKey(t, nil, true)
	issued := newTestKey(t, ca, false)
	self := newTestKey(t, nil, false)
	other := newTestKey(t, nil, false)
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	const addr = "localhost:7219"
	tests := []struct {
		name      string
		served    *testKey
		opts      TLSOptions
		known     []string // in the known hosts before
		wantErr   error
		wantKnown []string // in the known hosts after
		firstUse  int
	}{
		{name: "pinned, matches", served: self, opts: TLSOptions{Fingerprint: Fingerprint(self.cert)}},
		{name: "pinned, differs", served: self, opts: TLSOptions{Fingerprint: Fingerprint(other.cert)}, wantErr: ErrIdentity},
		{name: "pin beats a valid chain", served: issued, opts: TLSOptions{Fingerprint: Fingerprint(other.cert), RootCAs: roots}, wantErr: ErrIdentity},
		{name: "first use", served: self, opts: TLSOptions{}, wantKnown: []string{Fingerprint(self.cert)}, firstUse: 1},
		{name: "known, matches", served: self, known: []string{Fingerprint(other.cert), Fingerprint(self.cert)}, wantKnown: []string{Fingerprint(other.cert), Fingerprint(self.cert)}},
		{name: "known, differs", served: self, known: []string{Fingerprint(other.cert)}, wantErr: ErrIdentity, wantKnown: []string{Fingerprint(other.cert)}},
		{name: "valid chain, not recorded", served: issued, opts: TLSOptions{RootCAs: roots}},
		{name: "valid chain, another key known", served: issued, opts: TLSOptions{RootCAs: roots}, known: []string{Fingerprint(other.cert)}, wantKnown: []string{Fingerprint(other.cert)}},
		{name: "chain from unknown CA, first use", served: issued, wantKnown: []string{Fingerprint(issued.cert)}, firstUse: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hosts := &memHosts{m: map[string][]string{}}
			if tt.known != nil {
				hosts.m[addr] = tt.known
			}
			firstUse := 0
			opts := tt.opts
			opts.KnownHosts = hosts
			opts.OnFirstUse = func(a, fp string) {
				firstUse++
				if a != addr || fp != Fingerprint(tt.served.cert) {
					t.Errorf("OnFirstUse(%q, %q)", a, fp)
				}
			}
			dial, dials, heard := tlsPipeDialer(t, tt.served)
			s := &Sender{Addr: addr, Dial: dial, TLS: &opts, ChunkSize: MinChunkSize, Retries: 3, Backoff: time.Millisecond}
			defer s.Close()
			_, err := s.Send(t.Context(), File{Name: "secret-name", Path: tempSource(t, randomData(100, 1))})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Send: %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				var ie *IdentityError
				if !errors.As(err, &ie) || ie.Got != Fingerprint(tt.served.cert) {
					t.Errorf("error %v: want an *IdentityError naming the served key", err)
				}
				if n := dials.Load(); n != 1 {
					t.Errorf("%d dials: an identity mismatch must not be retried", n)
				}
				if n := heard.Load(); n != 0 {
					t.Errorf("the daemon read %d messages from a sender that did not trust it", n)
				}
			}
			if got := hosts.m[addr]; !slices.Equal(got, tt.wantKnown) {
				t.Errorf("known hosts after: %v, want %v", got, tt.wantKnown)
			}
			if firstUse != tt.firstUse {
				t.Errorf("OnFirstUse called %d times, want %d", firstUse, tt.firstUse)
			}
		})
	}
}

// TestSenderNoTrustAnchor: without a pin, a known-hosts store or a chain
// to a root, the daemon is not trusted.
func TestSenderNoTrustAnchor(t *testing.T) {
	dial, _, heard := tlsPipeDialer(t, newTestKey(t, nil, false))
	s := &Sender{Addr: "localhost:1", Dial: dial, TLS: &TLSOptions{}, ChunkSize: MinChunkSize}
	defer s.Close()
	_, err := s.Send(t.Context(), File{Name: "n", Path: tempSource(t, randomData(10, 1))})
	var ie *IdentityError
	if !errors.As(err, &ie) || ie.Source != "unverified" || heard.Load() != 0 {
		t.Fatalf("Send: %v (heard %d); want an unverified *IdentityError before any message", err, heard.Load())
	}
}
