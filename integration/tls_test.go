package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net"
	"regexp"
	"testing"
	"time"
)

// dialTLS connects to a ferryd TCP listener and wraps the connection in
// TLS 1.3 without checking the daemon's key (these tests speak the
// protocol by hand; the sender's checks have tests of their own), after
// the TLS handshake.
func dialTLS(addr string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	// Full-size records: a test's Write of a few KiB leaves in one record
	// and one write(2), as it did over plain TCP, before the daemon can
	// refuse its first bytes and close.
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, DynamicRecordSizingDisabled: true})
	tc.SetDeadline(time.Now().Add(waitTimeout))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// testCert is a key and a certificate for it, issued by parent (self-signed
// when parent is nil).
type testCert struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	der  []byte
}

// newTestCert makes an ECDSA P-256 certificate for 127.0.0.1, a CA when ca
// is true, signed by parent (nil: by itself).
func newTestCert(t *testing.T, ca bool, parent *testCert) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "ferry test"},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:        ca, BasicConstraintsValid: true,
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{key: key, cert: cert, der: der}
}

// fingerprint is the key's fingerprint as ferryd logs it.
func (c *testCert) fingerprint() string {
	sum := sha256.Sum256(c.cert.RawSubjectPublicKeyInfo)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// listenTLS listens on loopback with TLS 1.3 and a self-signed
// certificate, as a fake ferryd would; it returns the key's fingerprint
// too.
func listenTLS(t *testing.T) (net.Listener, string) {
	t.Helper()
	c := newTestCert(t, false, nil)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{c.der}, PrivateKey: c.key}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return ln, c.fingerprint()
}

// loggedFingerprint finds fingerprint=SHA256:… in a log line, text or
// JSON.
var loggedFingerprint = regexp.MustCompile(`\bfingerprint"?[=:]"?(SHA256:[A-Za-z0-9+/]{43})`)

// x509MarshalKey encodes c's key as PKCS #8 DER.
func x509MarshalKey(c *testCert) ([]byte, error) { return x509.MarshalPKCS8PrivateKey(c.key) }
