package integration

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// TestHostileNamesRefused sends under destination names that would land
// outside the root or carry bytes no file name should. Each is refused
// (exit 3), the daemon stays up, names are shown escaped, and nothing
// appears outside the root.
func TestHostileNamesRefused(t *testing.T) {
	base := t.TempDir()
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	for _, dir := range []string{root, outside} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../outside", filepath.Join(root, "rel-link")); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, root)
	// A unique base name, so that its absence from /etc means something.
	name := fmt.Sprintf("ferry-hostile-%d.bin", time.Now().UnixNano())
	src := filepath.Join(t.TempDir(), name)
	writeRandom(t, src, 1000, 1)
	tests := []struct {
		name string
		dest string
	}{
		{"parent", "../"},
		{"parent without a slash", ".."},
		{"absolute", "/etc"},
		{"the filesystem root", "/"},
		{"climbing out through a subdirectory", "a/../../x"},
		{"dot-dot in the middle", "a/../b"},
		{"control character", "a\x01b"},
		{"terminal escape", "a\x1b[31mred"},
		{"newline", "a\nb"},
		{"invalid UTF-8", "\xff\xfe"},
		{"overlong encoding of a slash", "a\xc0\xafb"},
		{"component of 256 bytes", strings.Repeat("a", 256)},
		{"symlink out of the root", "link"},
		{"relative symlink out of the root", "rel-link"},
		{"below a symlink out of the root", "link/sub"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := d.mark()
			r := runFerry(t, sendArgs(d.addr, "--dest", tt.dest, src)...)
			wantCode(t, r, exitRefused)
			d.waitLine(from, "msg=refused")
			if !printable(r.stderr) {
				t.Errorf("sender's stderr shows the name unescaped: %q", r.stderr)
			}
			for _, line := range d.lines(from) {
				if !printable(line) {
					t.Errorf("daemon log line shows the name unescaped: %q", line)
				}
			}
			if !d.alive() {
				t.Fatal("ferryd exited")
			}
		})
	}
	checkOnly(t, base, "outside", "root")
	checkOnly(t, outside)
	checkOnly(t, root, ".ferry", "link", "rel-link")
	for _, p := range []string{"/etc/" + name, "/" + name} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s exists (%v)", p, err)
		}
	}
	// The daemon still serves a good name.
	r := runFerry(t, sendArgs(d.addr, "--dest", "ok", src)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "ok", name))
}

// printable reports whether s is valid UTF-8 without control characters
// other than newline: what a terminal shows as it is.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r != '\n' && unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// checkOnly fails unless dir holds exactly the entries named.
func checkOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, "\x00") != strings.Join(names, "\x00") {
		t.Errorf("%s holds %q, want %q", dir, got, names)
	}
}

// Wire values for hand-made frames (docs/PROTOCOL.md).
const (
	frameHello  = 1
	frameRefuse = 4
)

// helloFrame is a sender's hello of protocol version major.
// protocolMajor is the protocol version ferry and ferryd speak.
const protocolMajor = 2

func helloFrame(major uint16) []byte {
	p := []byte("FRRY")
	p = binary.BigEndian.AppendUint16(p, major)
	p = binary.BigEndian.AppendUint16(p, 0)     // minor
	p = binary.BigEndian.AppendUint32(p, 1<<20) // chunk size
	p = binary.BigEndian.AppendUint16(p, 4)     // agent length
	p = append(p, "test"...)                    // agent
	f := []byte{frameHello}
	f = binary.BigEndian.AppendUint32(f, uint32(len(p)))
	return append(f, p...)
}

// TestBadPeersDaemonStaysUp opens connections that send garbage, stop
// mid-frame or say nothing, while a real transfer runs. The transfer
// completes, the daemon closes every bad connection within its timeouts,
// refuses an unknown protocol version with a reason, and stays up.
func TestBadPeersDaemonStaysUp(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--handshake-timeout", "2s", "--idle-timeout", "3s")
	hello := helloFrame(protocolMajor)
	garbage := make([]byte, 4096)
	randReader(5).Read(garbage)
	tests := []struct {
		name        string
		send        []byte
		wantRefusal bool // the daemon must answer with a refusal frame
	}{
		{name: "idle connection"},
		{name: "HTTP request", send: []byte("GET / HTTP/1.1\r\nHost: ferry\r\n\r\n")},
		{name: "TLS client hello", send: []byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03}},
		{name: "random bytes", send: garbage},
		{name: "frame header only", send: hello[:frameHeaderSize]},
		{name: "truncated hello", send: hello[:len(hello)-3]},
		{name: "frame length over any limit", send: []byte{frameHello, 0xff, 0xff, 0xff, 0xf0}},
		{name: "unknown frame type", send: []byte{0x7f, 0, 0, 0, 0}},
		{name: "future major version", send: helloFrame(99), wantRefusal: true},
		{name: "version 1 sender", send: helloFrame(1), wantRefusal: true},
		{name: "idle after a good hello", send: hello},
		{name: "garbage after a good hello", send: append(append([]byte(nil), hello...), garbage...)},
		{name: "huge chunk before any offer", send: append(append([]byte(nil), hello...), frameChunk, 0x7f, 0xff, 0xff, 0xff)},
	}
	conns := make([]net.Conn, len(tests))
	for i, tt := range tests {
		c, err := dialTLS(d.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(tt.send); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		conns[i] = c
	}
	// Read every connection until the daemon closes it, concurrently, so
	// the timeouts run in parallel.
	replies := make([][]byte, len(tests))
	errs := make([]error, len(tests))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			replies[i], errs[i] = io.ReadAll(c)
		})
	}

	src := filepath.Join(t.TempDir(), "real.bin")
	writeRandom(t, src, 8<<20, 3)
	r := runFerry(t, sendArgs(d.addr, src)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "real.bin"))

	wg.Wait()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if ne := net.Error(nil); errors.As(errs[i], &ne) && ne.Timeout() {
				t.Fatalf("daemon kept the connection open for 30s (read %d bytes)", len(replies[i]))
			}
			if tt.wantRefusal {
				checkRefusal(t, replies[i])
			}
		})
	}
	if !d.alive() {
		t.Fatal("ferryd exited")
	}
}

// checkRefusal wants reply to start with a refusal frame: code, then a
// readable reason.
func checkRefusal(t *testing.T, reply []byte) {
	t.Helper()
	if len(reply) < frameHeaderSize+4 || reply[0] != frameRefuse {
		t.Fatalf("reply %q is not a refusal frame", reply)
	}
	n := int(binary.BigEndian.Uint32(reply[1:]))
	if len(reply) < frameHeaderSize+n {
		t.Fatalf("refusal frame of %d bytes truncated to %d", n, len(reply)-frameHeaderSize)
	}
	payload := reply[frameHeaderSize : frameHeaderSize+n]
	reason := string(payload[4:]) // after code (2) and reason length (2)
	if reason == "" || !printable(reason) {
		t.Errorf("refusal reason %q, want a readable one", reason)
	}
}
