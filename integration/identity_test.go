package integration

import (
	"bytes"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

// exitIdentity is ferry's exit code for a daemon whose key did not match.
const exitIdentity = 5

// TestWrongFingerprintExit5: a pinned fingerprint the daemon's key does
// not have ends the run at once with exit 5 and one line naming both
// fingerprints, and the daemon never learns the file's name.
func TestWrongFingerprintExit5(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	src := filepath.Join(t.TempDir(), "pinned-secret-name.bin")
	writeRandom(t, src, 100<<10, 11)
	wrong := newTestCert(t, false, nil).fingerprint()
	r, _ := startFerry(t, "send", "--to", d.addr, "--fingerprint", wrong, "--retries", "5", "--backoff", "2s", src).waitWithin(10 * time.Second)
	wantCode(t, r, exitIdentity)
	line := strings.TrimSpace(r.stderr)
	if strings.Count(line, "\n") != 0 || !strings.Contains(line, wrong) || !strings.Contains(line, d.fingerprint) ||
		!strings.Contains(line, "--fingerprint "+d.fingerprint) || !strings.Contains(line, "identity did not match") {
		t.Errorf("want one line naming both fingerprints and how to accept the new one, got:\n%s", r.stderr)
	}
	if lines := d.lines(0, "pinned-secret-name"); len(lines) > 0 {
		t.Errorf("the daemon saw the file's name:\n%s", strings.Join(lines, "\n"))
	}
	if _, err := os.Stat(filepath.Join(root, "pinned-secret-name.bin")); err == nil {
		t.Error("the file was committed")
	}
	checkNoPartials(t, root)
	// The right pin sends.
	wantCode(t, runFerry(t, "send", "--to", d.addr, "--fingerprint", d.fingerprint, src), exitOK)
}

// TestTrustOnFirstUse: without a pin the first send records the daemon's
// key with one notice line, later sends are silent, and a daemon with
// another key on the same address then gets exit 5 and a line saying how
// to accept it.
func TestTrustOnFirstUse(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	known := filepath.Join(t.TempDir(), "cfg", "known_hosts")
	src := filepath.Join(t.TempDir(), "tofu.bin")
	writeRandom(t, src, 10<<10, 12)
	r := runFerry(t, "send", "--to", d.addr, "--known-hosts", known, src)
	wantCode(t, r, exitOK)
	if n := strings.Count(r.stderr, "first connection to "+d.addr); n != 1 || !strings.Contains(r.stderr, d.fingerprint) {
		t.Errorf("want one first-use notice naming the key, got:\n%s", r.stderr)
	}
	b, err := os.ReadFile(known)
	if err != nil || string(b) != d.addr+" "+d.fingerprint+"\n" {
		t.Fatalf("known hosts %q, %v; want the daemon's line", b, err)
	}
	r = runFerry(t, "send", "--to", d.addr, "--known-hosts", known, "--dest", "again", src)
	wantCode(t, r, exitOK)
	if strings.Contains(r.stderr, "first connection") {
		t.Errorf("a second notice:\n%s", r.stderr)
	}
	// Default file: $XDG_CONFIG_HOME/ferry/known_hosts.
	cfg := t.TempDir()
	r = startFerryEnv(t, []string{"XDG_CONFIG_HOME=" + cfg}, "send", "--to", d.addr, "--dest", "xdg", src).wait()
	wantCode(t, r, exitOK)
	if b, err := os.ReadFile(filepath.Join(cfg, "ferry", "known_hosts")); err != nil || !bytes.Contains(b, []byte(d.fingerprint)) {
		t.Errorf("$XDG_CONFIG_HOME/ferry/known_hosts: %q, %v", b, err)
	}

	addr := d.addr
	if code := d.term(); code != 0 {
		t.Fatalf("ferryd exited %d", code)
	}
	root2 := t.TempDir() // another root: another key
	d2 := startDaemonOn(t, root2, addr)
	if d2.fingerprint == d.fingerprint {
		t.Fatal("a new root kept the key")
	}
	r, _ = startFerry(t, "send", "--to", addr, "--known-hosts", known, "--retries", "5", "--backoff", "2s", src).waitWithin(10 * time.Second)
	wantCode(t, r, exitIdentity)
	line := strings.TrimSpace(r.stderr)
	if strings.Count(line, "\n") != 0 || !strings.Contains(line, d.fingerprint) || !strings.Contains(line, d2.fingerprint) ||
		!strings.Contains(line, "remove the line for "+addr+" from "+known) {
		t.Errorf("want one line naming both keys and the known-hosts line to remove, got:\n%s", r.stderr)
	}
	if lines := d2.lines(0, "tofu.bin"); len(lines) > 0 {
		t.Errorf("the new daemon saw the file's name:\n%s", strings.Join(lines, "\n"))
	}
	checkNoPartials(t, root2)
}

// writePEM writes one PEM block to path, mode 0600.
func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeCertFiles writes c's certificate and key where --tls-cert and
// --tls-key point.
func writeCertFiles(t *testing.T, c *testCert, certFile, keyFile string) {
	t.Helper()
	der, err := x509MarshalKey(c)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyFile+".tmp", "PRIVATE KEY", der)
	writePEM(t, certFile+".tmp", "CERTIFICATE", c.der)
	for _, f := range []string{keyFile, certFile} {
		if err := os.Rename(f+".tmp", f); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOperatorCertificateReload: --tls-cert/--tls-key serve the
// operator's certificate, which a sender accepts without pin or notice
// when it verifies against the system roots (SSL_CERT_FILE here), and
// SIGHUP serves a new one from the next session on.
func TestOperatorCertificateReload(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCert(t, true, nil)
	first, second := newTestCert(t, false, ca), newTestCert(t, false, ca)
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePEM(t, caFile, "CERTIFICATE", ca.der)
	writeCertFiles(t, first, certFile, keyFile)
	root := t.TempDir()
	d := startDaemon(t, root, "--tls-cert", certFile, "--tls-key", keyFile)
	if d.fingerprint != first.fingerprint() {
		t.Fatalf("listening line shows %s, want the operator's %s", d.fingerprint, first.fingerprint())
	}
	if _, err := os.Stat(filepath.Join(root, ".ferry", "tls")); err == nil {
		t.Error("a key was generated although the operator gave one")
	}
	src := filepath.Join(t.TempDir(), "op.bin")
	writeRandom(t, src, 10<<10, 13)
	known := filepath.Join(t.TempDir(), "known_hosts")
	r := startFerryEnv(t, []string{"SSL_CERT_FILE=" + caFile}, "send", "--to", d.addr, "--known-hosts", known, src).wait()
	wantCode(t, r, exitOK)
	if strings.Contains(r.stderr, "first connection") {
		t.Errorf("a certificate valid for the host got a first-use notice:\n%s", r.stderr)
	}
	if _, err := os.Stat(known); err == nil {
		t.Error("a certificate valid for the host was recorded in known hosts")
	}

	writeCertFiles(t, second, certFile, keyFile)
	from := d.mark()
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLine(from, "TLS certificate reloaded", "fingerprint="+second.fingerprint())
	if !d.alive() {
		t.Fatal("SIGHUP ended ferryd")
	}
	r, _ = startFerry(t, "send", "--to", d.addr, "--fingerprint", first.fingerprint(), "--dest", "a", src).waitWithin(10 * time.Second)
	wantCode(t, r, exitIdentity)
	wantCode(t, runFerry(t, "send", "--to", d.addr, "--fingerprint", second.fingerprint(), "--dest", "b", src), exitOK)

	// A broken file on SIGHUP keeps the current certificate.
	if err := os.WriteFile(certFile, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	from = d.mark()
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLine(from, "reloading TLS certificate", "fingerprint="+second.fingerprint())
	wantCode(t, runFerry(t, "send", "--to", d.addr, "--fingerprint", second.fingerprint(), "--dest", "c", src), exitOK)
}

// TestCaptureHidesNameAndContent: every byte between sender and daemon,
// captured in both directions, holds neither the file's name, nor its
// content, nor the token's secret: through a send that commits the file
// and one the daemon refuses (the name is taken by other content) with a
// message that names the file.
func TestCaptureHidesNameAndContent(t *testing.T) {
	root := t.TempDir()
	tokenFile := addToken(t, root, "capture")
	secret, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	secret = bytes.TrimSpace(secret)
	d := startDaemon(t, root)
	p, err := faultproxy.New(d.addr) // a plain relay: it sees what the network sees
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.RecordHead(4 << 20)
	const name = "capture-secret-name.bin"
	src := filepath.Join(t.TempDir(), name)
	writeRandom(t, src, 256<<10, 14)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	known := filepath.Join(t.TempDir(), "known_hosts")
	wantCode(t, runFerry(t, "send", "--to", p.Addr(), "--known-hosts", known, "--token-file", tokenFile, src), exitOK)
	sameFile(t, src, filepath.Join(root, name))

	// Other content under the same name, without --update: the refusal
	// the daemon sends back names the file.
	other := filepath.Join(t.TempDir(), name)
	writeRandom(t, other, 200<<10, 18)
	otherData, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	r := runFerry(t, "send", "--to", p.Addr(), "--known-hosts", known, "--token-file", tokenFile, other)
	wantCode(t, r, exitRefused)
	oneLine(t, "refusal", r.stderr, "capture-secret-name", "already on the daemon")

	conns := p.Conns()
	if len(conns) != 2 {
		t.Fatalf("%d connections through the proxy, want 2", len(conns))
	}
	for i, c := range conns {
		for _, dir := range []faultproxy.Direction{faultproxy.ClientToServer, faultproxy.ServerToClient} {
			wire := c.Head
			if dir == faultproxy.ServerToClient {
				wire = c.Back
			}
			if int64(len(wire)) != c.Bytes[dir] || len(wire) == 0 {
				t.Fatalf("connection %d %v: captured %d of %d bytes", i+1, dir, len(wire), c.Bytes[dir])
			}
			if bytes.Contains(wire, []byte("capture-secret-name")) {
				t.Errorf("connection %d %v: the file's name crossed the network in the clear", i+1, dir)
			}
			if bytes.Contains(wire, secret) || bytes.Contains(wire, secret[len(secret)-16:]) {
				t.Errorf("connection %d %v: the token's secret crossed the network in the clear", i+1, dir)
			}
			for _, content := range [][]byte{data, otherData} {
				for off := 0; off+32 <= len(content); off += 1024 {
					if bytes.Contains(wire, content[off:off+32]) {
						t.Fatalf("connection %d %v: a file's content at offset %d crossed the network in the clear", i+1, dir, off)
					}
				}
			}
		}
	}
	if conns[0].Bytes[faultproxy.ClientToServer] < int64(len(data)) {
		t.Errorf("the first send carried %d bytes, fewer than the file's %d", conns[0].Bytes[faultproxy.ClientToServer], len(data))
	}

	// The canary: the same refused send through a proxy that sees the
	// plaintext puts the secret on the way in and the name on the way
	// back, so the checks above can fail.
	mitm, err := faultproxy.NewTLS(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mitm.Close() })
	mitm.RecordHead(4 << 20)
	wantCode(t, runFerry(t, "send", "--to", mitm.Addr(), "--fingerprint", mitm.Fingerprint(), "--token-file", tokenFile, other), exitRefused)
	plain := mitm.Conns()
	if len(plain) != 1 || !bytes.Contains(plain[0].Head, secret) || !bytes.Contains(plain[0].Back, []byte("capture-secret-name")) {
		t.Errorf("the plaintext of a refused send holds no secret sent or no name sent back; the capture checks prove nothing")
	}
}

// TestFingerprintCommand: `ferryd fingerprint` prints, before the first
// start (generating the key) and while ferryd runs, the fingerprint of
// the listening line.
func TestFingerprintCommand(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	before := runFerryd(t, "fingerprint", "--root", root)
	if before.code != 0 || loggedFingerprint.FindString("fingerprint="+strings.TrimSpace(before.stdout)) == "" {
		t.Fatalf("ferryd fingerprint before the first start: %s", before)
	}
	fi, err := os.Stat(filepath.Join(root, ".ferry", "tls", "key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("generated key: %v, %v; want mode 0600", fi, err)
	}
	d := startDaemon(t, root)
	if got := strings.TrimSpace(before.stdout); got != d.fingerprint {
		t.Errorf("ferryd fingerprint printed %s before the start, the listening line shows %s", got, d.fingerprint)
	}
	during := runFerryd(t, "fingerprint", "--root", root)
	if during.code != 0 || strings.TrimSpace(during.stdout) != d.fingerprint {
		t.Errorf("ferryd fingerprint while ferryd runs: %s; want %s", during, d.fingerprint)
	}
}

// TestPlaintextTCPRefused: TCP is TLS only. A sender from before TLS (a
// plaintext hello) gets no ferry answer, a peer that never starts TLS is
// dropped after --handshake-timeout, and the daemon serves the next
// sender.
func TestPlaintextTCPRefused(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--handshake-timeout", "1s")
	plain, err := net.Dial("tcp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Write(helloFrame(protocolMajor)); err != nil {
		t.Fatal(err)
	}
	idle, err := net.Dial("tcp", d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	for _, c := range []net.Conn{plain, idle} {
		c.SetReadDeadline(time.Now().Add(waitTimeout))
		b, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("reading until the daemon closes: %v", err)
		}
		if len(b) >= 1 && b[0] == frameHello {
			t.Errorf("the daemon answered a plaintext peer with a hello: %q", b)
		}
		if len(b) > 0 && b[0] != 0x15 { // a TLS alert record, or nothing
			t.Errorf("the daemon sent %q to a plaintext peer, want a TLS alert or nothing", b)
		}
	}
	src := filepath.Join(t.TempDir(), "after.bin")
	writeRandom(t, src, 1000, 15)
	wantCode(t, runFerry(t, sendArgs(d.addr, src)...), exitOK)
}
