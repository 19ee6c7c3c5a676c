package integration

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// The TLS handshake of a new connection is bounded by
// --handshake-timeout, and a draining daemon does not wait for
// connections that have not finished it (issue 11).

// partialClientHello returns the start of a TLS ClientHello record that
// declares a 16 KiB body: a peer that sends it and then trickles the rest
// a byte at a time keeps every read of the daemon's busy for minutes, so
// only a deadline on the whole handshake ends it.
func partialClientHello() []byte {
	const body = 16 << 10
	b := []byte{0x16, 0x03, 0x01} // handshake record, TLS 1.0 on the record layer as clients send
	b = binary.BigEndian.AppendUint16(b, body)
	n := body - 4
	b = append(b, 0x01, byte(n>>16), byte(n>>8), byte(n)) // ClientHello, its length
	b = append(b, 0x03, 0x03)                             // legacy_version
	return append(b, make([]byte, 16)...)                 // part of the random
}

// trickle writes a zero byte to c every interval until a write fails.
func trickle(c net.Conn, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for range t.C {
		if _, err := c.Write([]byte{0}); err != nil {
			return
		}
	}
}

// waitClosed reads c until the daemon closes it; the test fails if it
// does not within waitTimeout or sends a ferry frame.
func waitClosed(t *testing.T, what string, c net.Conn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("%s: the daemon kept the connection open past its handshake timeout (read %d bytes)", what, len(b))
	case err != nil && !errors.Is(err, syscall.ECONNRESET):
		t.Fatalf("%s: reading until the daemon closes: %v", what, err)
	}
	if len(b) > 0 && b[0] != 0x15 { // a TLS alert record, or nothing
		t.Errorf("%s: the daemon sent %q, want a TLS alert or nothing", what, b)
	}
}

// TestTLSHandshakeTimeout: a peer that connects and sends nothing, and
// one that sends part of a ClientHello and then trickles it, are closed
// after --handshake-timeout; the daemon serves the next sender.
func TestTLSHandshakeTimeout(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--handshake-timeout", "1s", "--idle-timeout", "10m")
	idle, slowHello := stalledHandshakes(t, d.addr)
	waitClosed(t, "a peer that sends nothing", idle)
	waitClosed(t, "a peer that trickles its ClientHello", slowHello)
	src := t.TempDir() + "/after.bin"
	writeRandom(t, src, 1000, 16)
	wantCode(t, runFerry(t, sendArgs(d.addr, src)...), exitOK)
}

// TestDrainClosesHandshakes: a daemon asked to drain (SIGTERM) while
// peers hold connections in their TLS handshake (one silent, one
// trickling its ClientHello) exits 0 at once, without waiting for its
// long handshake or shutdown timeout, and closes those connections.
func TestDrainClosesHandshakes(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--handshake-timeout", "10m", "--idle-timeout", "10m", "--shutdown-timeout", "10m")
	idle, slowHello := stalledHandshakes(t, d.addr)
	// A sender that completes a session proves both connections were
	// accepted (the daemon accepts in order) before the signal.
	src := t.TempDir() + "/before.bin"
	writeRandom(t, src, 1000, 17)
	wantCode(t, runFerry(t, sendArgs(d.addr, src)...), exitOK)
	from := d.mark()
	if code := d.term(); code != 0 { // fails unless ferryd exits within waitTimeout, well before 10m
		t.Fatalf("ferryd exited %d after SIGTERM, want 0:\n%v", code, d.lines(from))
	}
	if d.lines(from, "stopped") == nil {
		t.Errorf("ferryd did not log a clean stop:\n%v", d.lines(from))
	}
	waitClosed(t, "a silent peer after the drain", idle)
	waitClosed(t, "a trickling peer after the drain", slowHello)
}

// stalledHandshakes connects two peers to addr that never finish their
// TLS handshake: idle sends nothing, slowHello sends part of a
// ClientHello and then trickles a byte every 100 ms, far slower than
// 16 KiB a second, so never a whole record. Both are closed when the test
// ends.
func stalledHandshakes(t *testing.T, addr string) (idle, slowHello net.Conn) {
	t.Helper()
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idle.Close() }) // the test has its verdict
	slowHello, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = slowHello.Close() })
	if _, err := slowHello.Write(partialClientHello()); err != nil {
		t.Fatal(err)
	}
	go trickle(slowHello, 100*time.Millisecond)
	return idle, slowHello
}
