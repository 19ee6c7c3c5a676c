package integration

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Regression tests for the daemon defects of issue 8, on the real
// binaries. daemon/defects_test.go has the in-process ones.

// rawConn is a hand-driven ferry session: frames written and read as
// docs/PROTOCOL.md lays them out.
type rawConn struct {
	t *testing.T
	net.Conn
}

// dialRaw connects to addr, from the local IP from if not empty, and
// sends a hello.
func dialRaw(t *testing.T, addr, from string) *rawConn {
	t.Helper()
	var d net.Dialer
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, DynamicRecordSizingDisabled: true}) // see dialTLS
	if _, err := tc.Write(helloFrame(protocolMajor)); err != nil {
		t.Fatal(err)
	}
	return &rawConn{t, tc}
}

// frame reads one frame: its type and payload.
func (c *rawConn) frame() (byte, []byte) {
	c.t.Helper()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	h := make([]byte, frameHeaderSize)
	if _, err := io.ReadFull(c, h); err != nil {
		c.t.Fatalf("reading a frame header: %v", err)
	}
	p := make([]byte, binary.BigEndian.Uint32(h[1:]))
	if _, err := io.ReadFull(c, p); err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	return h[0], p
}

// expectHello reads the daemon's hello.
func (c *rawConn) expectHello() {
	c.t.Helper()
	if typ, p := c.frame(); typ != frameHello {
		c.t.Fatalf("got frame type %d (%q), want the daemon's hello", typ, p)
	}
}

// expectRefusal reads a refusal and checks its code and that its reason
// says want.
func (c *rawConn) expectRefusal(code uint16, want string) {
	c.t.Helper()
	typ, p := c.frame()
	if typ == frameRefuseTransfer && len(p) >= 4 {
		p = p[4:] // protocol 2 refuses one transfer: its ID, then code and reason
	} else if typ != frameRefuse || len(p) < 4 {
		c.t.Fatalf("got frame type %d (%q), want a refusal", typ, p)
	}
	got, reason := binary.BigEndian.Uint16(p), string(p[4:])
	if got != code || !strings.Contains(reason, want) || !printable(reason) {
		c.t.Fatalf("refused with code %d %q, want code %d saying %q", got, reason, code, want)
	}
}

// frameRefuseTransfer refuses one transfer (protocol 2).
const frameRefuseTransfer = 11

// offerFrame is an offer of size bytes under name, with no identity, as
// transfer 1.
func offerFrame(name string, size uint64) []byte {
	p := make([]byte, 68, 70+len(name))
	binary.BigEndian.PutUint32(p[0:], 1) // transfer ID
	binary.BigEndian.PutUint64(p[8:], size)
	binary.BigEndian.PutUint32(p[16:], 0o600)
	p = binary.BigEndian.AppendUint16(p, uint16(len(name)))
	p = append(p, name...)
	f := []byte{frameOffer}
	f = binary.BigEndian.AppendUint32(f, uint32(len(p)))
	return append(f, p...)
}

// TestSecondDaemonOnRootRefused: two ferryd on one root committed one
// sender's file with another's content. The second now exits 1 at start
// with one line naming the root, and the first goes on serving.
func TestSecondDaemonOnRootRefused(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)

	cmd := exec.Command(bin.ferryd, "--listen", "127.0.0.1:0", "--root", root)
	cmd.Env = childEnv(t)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	log, drained := newLineLog(stderr)
	if log.wait(0, "msg=listening") >= 0 {
		t.Fatalf("a second ferryd serves the same root:\n%s", strings.Join(log.snapshot(), "\n"))
	}
	<-drained
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("second ferryd: %v, want exit 1", err)
	}
	lines := log.snapshot()
	if len(lines) != 1 || !containsAll(lines[0], []string{root, "locked", "another ferryd is probably running on it"}) {
		t.Errorf("second ferryd said %q, want one line naming the root and the likely cause", lines)
	}

	src := filepath.Join(t.TempDir(), "f.bin")
	writeRandom(t, src, 100<<10, 181)
	r := runFerry(t, sendArgs(d.addr, src)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "f.bin"))
}

// TestResetBeforeAcceptReleasesSpace: clients that offered just under the
// free space and reset the connection before reading the Accept each left
// the space reserved; after them every ferry send was refused "no space
// left on daemon" (exit 3) until ferryd restarted.
func TestResetBeforeAcceptReleasesSpace(t *testing.T) {
	fs := mountTmpfs(t, "16m")
	root := filepath.Join(fs, "root")
	d := startDaemon(t, root)
	var st syscall.Statfs_t
	if err := syscall.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	from := d.mark()
	const resets = 9
	for i := range resets {
		c := dialRaw(t, d.addr, "")
		c.expectHello()
		if _, err := c.Write(offerFrame(fmt.Sprintf("big%d", i), uint64(free-256<<10))); err != nil {
			t.Fatal(err)
		}
		c.Conn.(*tls.Conn).NetConn().(*net.TCPConn).SetLinger(0) // close with a reset
		c.Close()
	}
	for i, n := from, 0; n < resets; n++ {
		if i = d.log.wait(i, `msg="session ended"`); i < 0 {
			t.Fatalf("%d of %d sessions ended", n, resets)
		}
		i++
	}
	src := filepath.Join(t.TempDir(), "after.bin")
	writeRandom(t, src, 1<<20, 191)
	r := runFerry(t, sendArgs(d.addr, src)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "after.bin"))
}

// TestDeepNameRefused: a 0-byte file under a 4 KiB name of 2,048
// components made ferryd create 2,047 directories. It is refused before
// anything is created, cheaply, and logged with the remote address.
func TestDeepNameRefused(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	from := d.mark()
	c := dialRaw(t, d.addr, "")
	c.expectHello()
	start := time.Now()
	if _, err := c.Write(offerFrame(strings.Repeat("a/", 2047)+"f", 0)); err != nil {
		t.Fatal(err)
	}
	c.expectRefusal(3, "2048 components, more than 64") // CodeBadName
	t.Logf("refused in %v", time.Since(start).Round(time.Microsecond))
	d.waitLine(from, "msg=refused", "code=3", "remote=127.0.0.1:")
	checkOnly(t, root, ".ferry")
}

// TestSessionsPerIPLimit: 64 connections from one client held every
// session slot. With --max-sessions-per-ip N the N+1th session from one
// address is refused as busy with a reason, while another address still
// gets in, and a slot freed lets the first address in again.
func TestSessionsPerIPLimit(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--max-sessions-per-ip", "2")
	from := d.mark()
	first := dialRaw(t, d.addr, "127.0.0.1")
	first.expectHello()
	dialRaw(t, d.addr, "127.0.0.1").expectHello()
	dialRaw(t, d.addr, "127.0.0.1").expectRefusal(7, "2 sessions from 127.0.0.1, its limit per address") // CodeBusy
	d.waitLine(from, "msg=refused", "code=7", "remote=127.0.0.1:")
	dialRaw(t, d.addr, "127.0.0.2").expectHello()

	from = d.mark()
	first.Close()
	d.waitLine(from, `msg="session ended"`, "remote=127.0.0.1:")
	src := filepath.Join(t.TempDir(), "f.bin")
	writeRandom(t, src, 10<<10, 201)
	r := runFerry(t, sendArgs(d.addr, "--retries", "0", src)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "f.bin"))
	if _, err := os.Stat(filepath.Join(root, ".ferry", "lock")); err != nil {
		t.Errorf("lock file: %v", err)
	}
}
