package daemon

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path"
	"sync/atomic"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// The daemon's generated key and self-signed certificate, relative to the
// root: ROOT/.ferry/tls/key.pem (PKCS #8, mode 0600) and cert.pem.
var (
	tlsDir      = path.Join(transfer.ReservedDir, "tls")
	tlsKeyFile  = path.Join(tlsDir, "key.pem")
	tlsCertFile = path.Join(tlsDir, "cert.pem")
)

// Certificate is the certificate the daemon serves on its TCP listeners,
// with its key. Reload replaces it for the handshakes that follow; a
// Certificate is safe for concurrent use.
type Certificate struct {
	load func() (*tls.Certificate, error)
	cur  atomic.Pointer[tls.Certificate]
}

// CertificateFiles loads the operator's certificate chain and key from
// PEM files (as tls.LoadX509KeyPair); Reload reads them again.
func CertificateFiles(certFile, keyFile string) (*Certificate, error) {
	c := &Certificate{load: func() (*tls.Certificate, error) {
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("loading --tls-cert %s and --tls-key %s: %w", certFile, keyFile, err)
		}
		return &kp, nil
	}}
	return c, c.Reload()
}

// GeneratedCertificate returns the daemon's own certificate, kept under
// the root (ROOT/.ferry/tls): on the first call for a root it generates
// an ECDSA P-256 key and a self-signed certificate for it and writes them
// atomically (temporary file, fsync, rename, fsync of the directory). A
// key file readable by group or others is refused. A missing or foreign
// certificate beside an existing key is made again for that key, so the
// fingerprint survives. The caller holds the root's lock (LockRoot), so
// that two processes never generate two keys. Reload reads the files
// again.
//
// P-256 rather than Ed25519: every TLS 1.3 stack and every CA tool handles
// it (an operator can check the daemon with openssl s_client, put it
// behind a TLS proxy, or issue a certificate for the same key), and its
// signing costs well under a millisecond per handshake either way.
func GeneratedCertificate(fsys *OSFS) (*Certificate, error) {
	if err := ensureGenerated(fsys); err != nil {
		return nil, err
	}
	c := &Certificate{load: func() (*tls.Certificate, error) { return readGenerated(fsys) }}
	return c, c.Reload()
}

// ReadGeneratedCertificate returns the certificate GeneratedCertificate
// made for fsys's root, without generating one; an error matching
// fs.ErrNotExist when there is none yet.
func ReadGeneratedCertificate(fsys *OSFS) (*Certificate, error) {
	c := &Certificate{load: func() (*tls.Certificate, error) { return readGenerated(fsys) }}
	return c, c.Reload()
}

// Reload loads the certificate and key again and serves them from the next
// handshake on. On error the current certificate stays.
func (c *Certificate) Reload() error {
	kp, err := c.load()
	if err != nil {
		return err
	}
	if kp.Leaf == nil {
		if kp.Leaf, err = x509.ParseCertificate(kp.Certificate[0]); err != nil {
			return fmt.Errorf("parsing certificate: %w", err)
		}
	}
	c.cur.Store(kp)
	return nil
}

// Fingerprint returns the fingerprint of the served key
// (transfer.Fingerprint: SHA256: and the unpadded base64 of the SHA-256
// of the certificate's SubjectPublicKeyInfo DER).
func (c *Certificate) Fingerprint() string { return transfer.Fingerprint(c.cur.Load().Leaf) }

// ServerTLS returns the TLS configuration of a TCP listener: TLS 1.3 only,
// serving whatever certificate is current at each handshake.
func (c *Certificate) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.cur.Load(), nil
		},
	}
}

// readGenerated reads ROOT/.ferry/tls's key and certificate.
func readGenerated(fsys *OSFS) (*tls.Certificate, error) {
	keyPEM, err := readRootFile(fsys, tlsKeyFile)
	if err != nil {
		return nil, err
	}
	certPEM, err := readRootFile(fsys, tlsCertFile)
	if err != nil {
		return nil, err
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading %s and %s under %s: %w", tlsCertFile, tlsKeyFile, fsys.Name(), err)
	}
	return &kp, nil
}

// ensureGenerated makes the key and certificate that are missing.
func ensureGenerated(fsys *OSFS) error {
	if err := mkdirs(fsys, tlsDir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", tlsDir, err)
	}
	fi, err := fsys.Lstat(tlsKeyFile)
	var key *ecdsa.PrivateKey
	switch {
	case errors.Is(err, os.ErrNotExist):
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return fmt.Errorf("generating a TLS key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return fmt.Errorf("encoding the TLS key: %w", err)
		}
		if err := writeRootFile(fsys, tlsKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("reading %s: %w", tlsKeyFile, err)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s under %s is readable by group or others (mode %v): chmod 600 it, or remove it to have a new key generated",
			tlsKeyFile, fsys.Name(), fi.Mode().Perm())
	default:
		b, err := readRootFile(fsys, tlsKeyFile)
		if err != nil {
			return err
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			return fmt.Errorf("%s under %s holds no PEM key", tlsKeyFile, fsys.Name())
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return fmt.Errorf("parsing %s: %w", tlsKeyFile, err)
		}
		var ok bool
		if key, ok = k.(*ecdsa.PrivateKey); !ok {
			return fmt.Errorf("%s under %s is not an ECDSA key; remove it to have one generated", tlsKeyFile, fsys.Name())
		}
	}
	if certPEM, err := readRootFile(fsys, tlsCertFile); err == nil {
		if blk, _ := pem.Decode(certPEM); blk != nil {
			if cert, err := x509.ParseCertificate(blk.Bytes); err == nil && key.PublicKey.Equal(cert.PublicKey) {
				return nil
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("generating a serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "ferryd"},
		NotBefore:    time.Now().Add(-time.Hour),
		// RFC 5280 4.1.2.5: no well-defined expiry. Senders check the
		// key's fingerprint, not the dates.
		NotAfter:    time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("creating a self-signed certificate: %w", err)
	}
	return writeRootFile(fsys, tlsCertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// readRootFile reads a small file under the root.
func readRootFile(fsys *OSFS, name string) ([]byte, error) {
	f, err := fsys.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // read-only
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(f, 1<<20)); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return buf.Bytes(), nil
}

// writeRootFile writes b to name under the root atomically, mode 0600:
// a temporary file, fsync, rename, fsync of the directory.
func writeRootFile(fsys *OSFS, name string, b []byte) error {
	tmp := name + ".tmp"
	f, err := fsys.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", tmp, err)
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close() // the write error is the one to report
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close() // the sync error is the one to report
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := fsys.Rename(tmp, name); err != nil {
		return fmt.Errorf("renaming %s: %w", tmp, err)
	}
	return fsys.SyncDir(path.Dir(name))
}

// TLSReadBuffer is the size in bytes of the buffer a session's TLS
// connection reads the socket through once its Hello is accepted: 256
// KiB, sixteen TLS records per read system call where crypto/tls alone
// makes about one per 16 KiB record. A connection waiting for its Hello
// holds no such buffer.
const TLSReadBuffer = 256 << 10

// NewTLSListener returns a listener that serves TLS over ln's
// connections with cfg, as tls.NewListener does, reading each
// connection's socket through a buffer of TLSReadBuffer bytes from the
// moment its session has accepted the Hello (see bufferReads).
func NewTLSListener(ln net.Listener, cfg *tls.Config) net.Listener {
	return &tlsListener{Listener: ln, cfg: cfg}
}

type tlsListener struct {
	net.Listener
	cfg *tls.Config
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return tls.Server(&readBufConn{Conn: c}, l.cfg), nil
}

// readBufConn is the socket under a session's tls.Conn. Reads go straight
// to the socket until startBuffering gives it a buffer. Only the goroutine
// that reads the tls.Conn (the session's) reads it.
type readBufConn struct {
	net.Conn
	r atomic.Pointer[bufio.Reader] // atomic only so that tests may look
}

func (c *readBufConn) Read(p []byte) (int, error) {
	if r := c.r.Load(); r != nil {
		return r.Read(p)
	}
	return c.Conn.Read(p)
}

// bufferReads makes conn, when NewTLSListener accepted it, read its
// socket through a buffer of TLSReadBuffer bytes from now on, and returns
// that buffer. Called by the session's goroutine once the Hello is
// accepted, so that a connection still waiting for its Hello costs no
// buffer. For any other conn it does nothing and returns nil.
func bufferReads(conn net.Conn) *bufio.Reader {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil
	}
	c, ok := tc.NetConn().(*readBufConn)
	if !ok {
		return nil
	}
	if c.r.Load() == nil {
		c.r.Store(bufio.NewReaderSize(c.Conn, TLSReadBuffer))
	}
	return c.r.Load()
}
