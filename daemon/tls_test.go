package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// TestGeneratedCertificate: the key is made once, 0600, and kept: a
// second start, a lost certificate and ReadGeneratedCertificate all give
// the same fingerprint; a key readable by others is refused.
func TestGeneratedCertificate(t *testing.T) {
	dir := t.TempDir()
	fsys, err := OpenOSFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	if _, err := ReadGeneratedCertificate(fsys); !os.IsNotExist(err) {
		t.Fatalf("ReadGeneratedCertificate before any: %v, want not exist", err)
	}
	c1, err := GeneratedCertificate(fsys)
	if err != nil {
		t.Fatal(err)
	}
	fp := c1.Fingerprint()
	if !strings.HasPrefix(fp, "SHA256:") || len(fp) != len("SHA256:")+43 {
		t.Fatalf("fingerprint %q", fp)
	}
	for _, f := range []string{tlsKeyFile, tlsCertFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", f, fi, err)
		}
	}
	c2, err := GeneratedCertificate(fsys)
	if err != nil || c2.Fingerprint() != fp {
		t.Fatalf("second start: %v, %v; want %s", c2, err, fp)
	}
	if err := os.Remove(filepath.Join(dir, tlsCertFile)); err != nil {
		t.Fatal(err)
	}
	c3, err := GeneratedCertificate(fsys)
	if err != nil || c3.Fingerprint() != fp {
		t.Fatalf("after losing cert.pem: %v; want the same key's %s", err, fp)
	}
	c4, err := ReadGeneratedCertificate(fsys)
	if err != nil || c4.Fingerprint() != fp {
		t.Fatalf("ReadGeneratedCertificate: %v", err)
	}
	if err := os.Chmod(filepath.Join(dir, tlsKeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := GeneratedCertificate(fsys); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key: %v, want a refusal saying chmod 600", err)
	}
}

// acceptedTLS passes every connection its listener accepts to conns.
type acceptedTLS struct {
	net.Listener
	conns chan *tls.Conn
}

func (l acceptedTLS) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*tls.Conn); ok {
		l.conns <- tc
	}
	return c, err
}

// TestTLSReadBufferAfterHello: a connection of NewTLSListener holds no
// read buffer while it waits for its Hello, reads its socket through a
// buffer of TLSReadBuffer bytes once the Hello is accepted, and a file of
// several chunks then arrives verified through it.
func TestTLSReadBufferAfterHello(t *testing.T) {
	srv, cert := tlsTestServer(t, Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := acceptedTLS{NewTLSListener(ln, cert.ServerTLS()), make(chan *tls.Conn, 1)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(rec) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-served
	}()

	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tc := tls.Client(nc, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}) //nolint:gosec // the test's own daemon
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	raw, ok := (<-rec.conns).NetConn().(*readBufConn)
	if !ok {
		t.Fatal("NewTLSListener's connection does not read through a readBufConn")
	}
	if raw.r.Load() != nil {
		t.Fatal("a connection waiting for its Hello holds a read buffer")
	}
	ctx := t.Context()
	c, err := transfer.Handshake(ctx, tc, transfer.ClientOptions{Agent: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := raw.r.Load()
	if r == nil || r.Size() != TLSReadBuffer {
		t.Fatalf("after the Hello: read buffer %v, want %d bytes", r, TLSReadBuffer)
	}
	data := make([]byte, 3*transfer.DefaultChunkSize+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	res, err := c.Send(ctx, transfer.Source{R: bytes.NewReader(data), Size: int64(len(data)), Mode: 0o644, ModTime: time.Now()}, "f", transfer.SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Hash != transfer.HashBytes(data) {
		t.Errorf("committed %x, want the data's hash", res.Hash)
	}
}

// TestRefusalAfterShutdownBoundsHandshake: a TLS connection handed to a
// server that is shutting down is refused, and the TLS handshake that
// refusal needs is bounded by HandshakeTimeout: a peer that never sends
// its ClientHello is closed, not held (nor its goroutine) for good.
func TestRefusalAfterShutdownBoundsHandshake(t *testing.T) {
	srv, cert := tlsTestServer(t, Config{HandshakeTimeout: 200 * time.Millisecond})
	if err := srv.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	conn, err := NewTLSListener(ln, cert.ServerTLS()).Accept()
	if err != nil {
		t.Fatal(err)
	}
	srv.ServeConn(conn) // accepted as Shutdown closed the listener
	if err := peer.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(peer)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("a silent peer refused during shutdown was held open past HandshakeTimeout (read %q)", b)
	}
}

// tlsTestServer returns a Server with cfg on a DirStore in a temporary
// root (cfg's Store and Logger are set here) and a generated certificate
// of that root, both closed when the test ends.
func tlsTestServer(t *testing.T, cfg Config) (*Server, *Certificate) {
	t.Helper()
	fsys, err := OpenOSFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fsys.Close() }) // a directory handle
	store, err := NewDirStore(fsys)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := GeneratedCertificate(fsys)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Logger = store, slog.New(slog.DiscardHandler)
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv, cert
}
