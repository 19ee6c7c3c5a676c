package transfer

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// ErrIdentity is matched (errors.Is) by an *IdentityError: the daemon's
// key is not the one the sender was told to expect. It is permanent: a
// retry would meet the same key, and every retry would hand the unknown
// peer another chance to be trusted.
var ErrIdentity = errors.New("the daemon's identity did not match")

// IdentityError says which fingerprint the sender expected of the daemon
// at Addr and which it got. Source says where the expected one came from:
// "pinned" (TLSOptions.Fingerprint), "known hosts" (TLSOptions.KnownHosts),
// or "unverified" when nothing vouched for the daemon (no pin, no
// known-hosts store, no certificate valid for the host name), with Want
// empty.
type IdentityError struct {
	Addr   string // the daemon's address, HOST:PORT
	Want   string // the expected fingerprint, SHA256:…; empty if none
	Got    string // the fingerprint the daemon presented
	Source string // "pinned", "known hosts" or "unverified"
}

func (e *IdentityError) Error() string {
	if e.Want == "" {
		return fmt.Sprintf("%v: %s presented %s, which no pin, known host or certificate authority vouches for", ErrIdentity, e.Addr, e.Got)
	}
	return fmt.Sprintf("%v: %s presented %s, the %s fingerprint is %s", ErrIdentity, e.Addr, e.Got, e.Source, e.Want)
}

// Is makes errors.Is(err, ErrIdentity) true.
func (e *IdentityError) Is(target error) bool { return target == ErrIdentity }

// Fingerprint returns the fingerprint of a certificate's public key in the
// form `ssh-keygen -l` prints one: "SHA256:" and the unpadded standard
// base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo (its DER
// bytes, cert.RawSubjectPublicKeyInfo). It names the key, not the
// certificate: a certificate renewed with the same key keeps it.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// ParseFingerprint checks that s is a fingerprint as Fingerprint returns
// one (SHA256: and 43 base64 characters; trailing '=' padding is
// accepted and removed) and returns it in that canonical form.
func ParseFingerprint(s string) (string, error) {
	b64, ok := strings.CutPrefix(s, "SHA256:")
	if !ok {
		return "", fmt.Errorf("fingerprint %q: want SHA256: followed by base64, as ferryd logs it", s)
	}
	b64 = strings.TrimRight(b64, "=")
	sum, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha256.Size {
		return "", fmt.Errorf("fingerprint %q: want SHA256: followed by 43 base64 characters, as ferryd logs it", s)
	}
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum), nil
}

// KnownHosts remembers the fingerprint each daemon presented the first
// time (trust on first use). Implementations must be safe for concurrent
// use, also by several processes.
type KnownHosts interface {
	// Lookup returns the fingerprints recorded for addr (HOST:PORT);
	// none when it is unknown. Any of them matches.
	Lookup(addr string) (fingerprints []string, err error)
	// Add records fingerprint for addr.
	Add(addr, fingerprint string) error
}

// TLSOptions say how a Sender checks the daemon it connects to over TCP.
// Before a name or a byte of a file is sent, the daemon's certificate must
// pass one of these checks, in order:
//
//  1. Fingerprint is set: the key's fingerprint must equal it (a pin
//     overrides everything else).
//  2. The certificate chain verifies against RootCAs (the system roots
//     when nil) for the host name of Addr: accepted as the web does.
//  3. KnownHosts is set: the fingerprint recorded for Addr must equal
//     the key's; when none is recorded, the key's is recorded and
//     OnFirstUse is called (trust on first use).
//
// A key KnownHosts records for Addr is accepted before step 2 is tried,
// which gives the same outcome without loading the system roots.
//
// Anything else fails the session with an *IdentityError, before the
// Hello.
type TLSOptions struct {
	// Fingerprint pins the daemon's key, as Fingerprint formats it.
	// Empty: no pin.
	Fingerprint string
	// KnownHosts records and checks keys by address; nil: none, and a
	// daemon whose certificate no root vouches for is refused unless
	// pinned.
	KnownHosts KnownHosts
	// OnFirstUse, if set, is called once when KnownHosts records a new
	// daemon, with its address and fingerprint.
	OnFirstUse func(addr, fingerprint string)
	// RootCAs are the authorities of step 2. Nil: the system's.
	RootCAs *x509.CertPool
}

// clientTLS returns the tls.Config that checks the daemon at addr as opts
// say. TLS 1.3 only; the chain of step 2 is checked here, not by
// crypto/tls, so that a self-signed certificate reaches steps 1 and 3.
func (opts *TLSOptions) clientTLS(addr string) (*tls.Config, error) {
	pin := ""
	if opts.Fingerprint != "" {
		var err error
		if pin, err = ParseFingerprint(opts.Fingerprint); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         host,
		InsecureSkipVerify: true, // VerifyConnection below does the checking
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return &IdentityError{Addr: addr, Source: "unverified", Got: "no certificate"}
			}
			leaf := cs.PeerCertificates[0]
			got := Fingerprint(leaf)
			if pin != "" {
				if got != pin {
					return &IdentityError{Addr: addr, Want: pin, Got: got, Source: "pinned"}
				}
				return nil
			}
			var known []string
			if opts.KnownHosts != nil {
				var err error
				if known, err = opts.KnownHosts.Lookup(addr); err != nil {
					return fmt.Errorf("%w: reading known hosts: %w", ErrInvalidConfig, err)
				}
				if slices.Contains(known, got) {
					return nil // before step 2: loading the system roots takes milliseconds
				}
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: opts.RootCAs, Intermediates: inter}); err == nil {
				return nil
			}
			if opts.KnownHosts == nil {
				return &IdentityError{Addr: addr, Got: got, Source: "unverified"}
			}
			if len(known) > 0 {
				return &IdentityError{Addr: addr, Want: known[len(known)-1], Got: got, Source: "known hosts"}
			}
			if err := opts.KnownHosts.Add(addr, got); errors.Is(err, ErrIdentity) {
				return err // another sender recorded another key meanwhile
			} else if err != nil {
				return fmt.Errorf("%w: recording %s in known hosts: %w", ErrInvalidConfig, addr, err)
			}
			if opts.OnFirstUse != nil {
				opts.OnFirstUse(addr, got)
			}
			return nil
		},
	}, nil
}

// tlsClient runs the TLS handshake over conn as opts say, within ctx and
// timeout. It returns the identity error, or the handshake's I/O error
// wrapped; on error conn is closed.
func tlsClient(ctx context.Context, conn net.Conn, addr string, opts *TLSOptions, timeout time.Duration) (net.Conn, error) {
	cfg, err := opts.clientTLS(addr)
	if err != nil {
		_ = conn.Close() // the configuration error is the one to report
		return nil, err
	}
	bc := &batchConn{Conn: conn}
	tc := tls.Client(bc, cfg)
	_ = conn.SetDeadline(time.Now().Add(timeout)) // a conn that cannot set one fails the handshake itself
	err = tc.HandshakeContext(ctx)
	_ = conn.SetDeadline(time.Time{})
	if err != nil {
		_ = conn.Close() // the handshake's error is the one to report
		var rh tls.RecordHeaderError
		if errors.As(err, &rh) {
			// Whatever answers is no TLS server: not a ferryd, or one
			// from before TLS.
			return nil, fmt.Errorf("%w: TLS handshake: %w", ErrNotFerry, err)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("TLS handshake: no answer from the daemon for %v: %w", timeout, err)
		}
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return &batchedTLS{Conn: tc, bc: bc}, nil
}
