package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// tlsPair returns both ends of a TLS 1.3 session over loopback TCP, with
// the handshake done, as ferry and ferryd set them up (a self-signed
// ECDSA P-256 key, Go's default cipher suite preference).
func tlsPair(tb testing.TB) (client, server *tls.Conn) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		s := tls.Server(c, &tls.Config{MinVersion: tls.VersionTLS13,
			Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
		_ = s.Handshake()
		accepted <- s
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	client = tls.Client(c, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	if err := client.Handshake(); err != nil {
		tb.Fatal(err)
	}
	server = <-accepted
	tb.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// BenchmarkTLSStream is the TLS cost of a ferry session on both sides
// together: 1 MiB writes (a chunk) through TLS 1.3 over loopback TCP, read
// and discarded on the other end. It logs the negotiated cipher suite.
func BenchmarkTLSStream(b *testing.B) {
	client, server := tlsPair(b)
	b.Logf("cipher suite: %s", tls.CipherSuiteName(client.ConnectionState().CipherSuite))
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, server)
		done <- err
	}()
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := client.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	_ = client.CloseWrite()
	<-done
}

// BenchmarkAESGCMRecord is one side's cryptographic work per byte: sealing
// (sender) or opening (daemon) a full 16 KiB TLS record with
// AES-128-GCM, the suite TLS 1.3 negotiates on hardware with AES
// instructions.
func BenchmarkAESGCMRecord(b *testing.B) {
	block, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		b.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		b.Fatal(err)
	}
	nonce := make([]byte, aead.NonceSize())
	rec := make([]byte, 16<<10)
	out := make([]byte, 0, len(rec)+aead.Overhead())
	b.SetBytes(int64(len(rec)))
	for b.Loop() {
		out = aead.Seal(out[:0], nonce, rec, nil)
	}
}
