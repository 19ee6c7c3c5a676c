package faultproxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"testing"
)

// TestNewTLSTerminates: a NewTLS proxy serves its own key to clients,
// speaks TLS to a TLS upstream, and counts, records and flips plaintext.
func TestNewTLSTerminates(t *testing.T) {
	upCert, _, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	up, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{upCert}})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := up.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	p, err := NewTLS(up.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.RecordHead(64)
	p.FlipByte(2)
	var seen string
	c, err := tls.Dial("tcp", p.Addr(), &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			sum := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
			seen = "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
			if seen != p.Fingerprint() {
				return errors.New("not the proxy's key")
			}
			return nil
		}})
	if err != nil {
		t.Fatalf("dialling the proxy, key %s, Fingerprint %s: %v", seen, p.Fingerprint(), err)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if b := <-got; !bytes.Equal(b, []byte("he\x93lo")) {
		t.Errorf("upstream got %q, want the plaintext with byte 2 inverted", b)
	}
	c.Close()
	if err := p.WaitConns(ctx(t), 1); err != nil {
		t.Fatal(err)
	}
	st := p.Conns()[0]
	if st.Bytes[ClientToServer] != 5 || string(st.Head) != "he\x93lo" {
		t.Errorf("counted %d bytes, recorded %q; want the 5 plaintext bytes as forwarded", st.Bytes[ClientToServer], st.Head)
	}
}
