package integration

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

// Trees of many files over one session (issue 9).

// writeTree writes n files of size bytes under dir/tree (100 to a
// directory) and, if big > 0, one file of big bytes, and returns the
// tree's path and its files' paths relative to dir.
func writeTree(t *testing.T, dir string, n int, size, big int64) (string, []string) {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	var names []string
	for i := range n {
		rel := filepath.Join("tree", fmt.Sprintf("d%02d", i/100), fmt.Sprintf("f%04d", i))
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		writeRandom(t, filepath.Join(dir, rel), size, uint64(1000+i))
		names = append(names, rel)
	}
	if big > 0 {
		rel := filepath.Join("tree", "big.bin")
		writeRandom(t, filepath.Join(dir, rel), big, 999)
		names = append(names, rel)
	}
	return tree, names
}

// ferryHashes runs one ferry hash over paths and returns hash by path.
func ferryHashes(t *testing.T, paths []string) map[string]string {
	t.Helper()
	r := runFerry(t, append([]string{"hash"}, paths...)...)
	wantCode(t, r, exitOK)
	hs := make(map[string]string)
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		h, p, ok := strings.Cut(l, "  ")
		if !ok || len(h) != 64 {
			t.Fatalf("ferry hash printed %q", l)
		}
		hs[p] = h
	}
	return hs
}

// checkTree checks that every file of names under src is committed under
// root with the same bytes, and that each record's BLAKE3 is the file's.
func checkTree(t *testing.T, src, root string, names []string, recs []record) {
	t.Helper()
	byRemote := make(map[string]record)
	for _, rec := range recs {
		byRemote[rec.Remote] = rec
	}
	var paths []string
	for _, n := range names {
		paths = append(paths, filepath.Join(src, n))
	}
	hashes := ferryHashes(t, paths)
	for _, n := range names {
		rec, ok := byRemote[filepath.ToSlash(n)]
		if !ok || (rec.Status != "committed" && rec.Status != "unchanged") {
			t.Fatalf("%s: record %+v, want committed (or unchanged: committed before)", n, rec)
		}
		want, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, n))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: committed %d bytes, want %d (%v)", n, len(got), len(want), err)
		}
		if h := hashes[filepath.Join(src, n)]; rec.BLAKE3 != h && (rec.BLAKE3 != "" || !rec.AlreadyCommitted) {
			t.Fatalf("%s: record blake3 %s, ferry hash %s", n, rec.BLAKE3, h)
		}
	}
}

// TestTreeOneSession sends 2,000 small files and one large file in one
// run: all committed, one session on the daemon.
func TestTreeOneSession(t *testing.T) {
	slow(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	src := t.TempDir()
	tree, names := writeTree(t, src, 2000, 4096, 24<<20)
	start := time.Now()
	r := runFerry(t, sendArgs(d.addr, tree)...)
	t.Logf("2,000 files of 4 KiB and one of 24 MiB in %v", time.Since(start).Round(time.Millisecond))
	wantCode(t, r, exitOK)
	recs := parseRecords(t, r.stdout)
	if len(recs) != len(names) {
		t.Fatalf("%d records, want %d", len(recs), len(names))
	}
	checkTree(t, src, root, names, recs)
	ended := d.lines(0, `msg="session ended"`)
	if len(ended) != 1 || !strings.Contains(ended[0], fmt.Sprintf("transfers=%d", len(names))) {
		t.Fatalf("want one session of %d transfers, got %q", len(names), ended)
	}
	checkNoPartials(t, root)
}

// TestTreeKillDaemonThenRerun kills ferryd with SIGKILL in the middle of a
// tree; a run after its restart completes, and the files committed before
// the kill are confirmed by hash, their data not sent again (beyond the
// few small files in flight before the sender learns they are there).
func TestTreeKillDaemonThenRerun(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	root := t.TempDir()
	d1 := startDaemon(t, root)
	src := t.TempDir()
	tree, names := writeTree(t, src, 2000, 4096, 0)
	p := newProxy(t, d1.addr)
	p.Throttle(2 << 20) // about 500 files a second
	s := startFerry(t, sendArgs(p.Addr(), "--retries", "0", tree)...)
	if err := p.WaitBytes(ctx, 2<<20); err != nil {
		t.Fatal(err)
	}
	d1.kill()
	r := s.wait()
	if r.code == exitOK {
		t.Fatalf("ferry exited 0 although the daemon was killed mid-tree\n%s", r)
	}
	before := make(map[string]bool)
	for _, rec := range parseRecords(t, r.stdout) {
		if rec.Status == "committed" {
			before[rec.Remote] = true
		}
	}
	if len(before) == 0 || len(before) == len(names) {
		t.Fatalf("%d of %d files committed before the kill; want some", len(before), len(names))
	}

	d2 := startDaemon(t, root)
	r = runFerry(t, sendArgs(d2.addr, tree)...)
	wantCode(t, r, exitOK)
	recs := parseRecords(t, r.stdout)
	checkTree(t, src, root, names, recs)
	var confirmed, resent, resentBytes int
	for _, rec := range recs {
		if !before[rec.Remote] {
			continue
		}
		if !rec.fields["already_committed"] || !alreadyCommitted(t, r.stdout, rec.Remote) {
			t.Fatalf("%s was committed before the kill, but the re-run did not confirm it: %+v", rec.Remote, rec)
		}
		confirmed++
		if rec.SentBytes > 0 {
			resent++
			resentBytes += int(rec.SentBytes)
		}
	}
	t.Logf("%d files committed before the kill; the re-run confirmed %d, sending the data of %d of them again (%d bytes)",
		len(before), confirmed, resent, resentBytes)
	if resent > len(before)/4 {
		t.Fatalf("the re-run sent the data of %d of %d already committed files again", resent, len(before))
	}
	if ended := d2.lines(0, `msg="session ended"`); len(ended) != 1 {
		t.Fatalf("want one session, got %q", ended)
	}
	checkNoPartials(t, root)
}

// TestTreeCutThenRerun cuts the link in the middle of a tree: the sender
// (no retries) exits 1 with some files committed; a re-run commits the
// rest and sends, on the wire, only the data of files that were not
// committed (plus at most the few small files in flight at the cut).
func TestTreeCutThenRerun(t *testing.T) {
	slow(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	src := t.TempDir()
	tree, names := writeTree(t, src, 2000, 4096, 0)
	p := newProxy(t, d.addr)
	p.Throttle(2 << 20)
	p.CutAfter(3 << 20) // about 700 of the 2,000 files
	r := runFerry(t, sendArgs(p.Addr(), "--retries", "0", tree)...)
	wantCode(t, r, exitFailed)
	before := make(map[string]bool)
	for _, rec := range parseRecords(t, r.stdout) {
		if rec.Status == "committed" {
			before[rec.Remote] = true
		}
	}
	if len(before) == 0 || len(before) == len(names) {
		t.Fatalf("%d of %d files committed before the cut; want some", len(before), len(names))
	}

	r = runFerry(t, sendArgs(d.addr, tree)...)
	wantCode(t, r, exitOK)
	recs := parseRecords(t, r.stdout)
	checkTree(t, src, root, names, recs)
	var wire, resent int64
	for _, rec := range recs {
		wire += rec.SentBytes
		if before[rec.Remote] {
			resent += rec.SentBytes
		}
	}
	missing := int64(len(names)-len(before)) * 4096
	t.Logf("%d files committed before the cut; the re-run sent %d bytes for %d bytes of missing files (%d bytes of committed ones)",
		len(before), wire, missing, resent)
	if resent > 64*4096 || wire > missing+64*4096 {
		t.Fatalf("the re-run sent %d bytes (%d of them for files committed before the cut); want about the %d bytes of the missing files",
			wire, resent, missing)
	}
	checkNoPartials(t, root)
}

// alreadyCommitted reports the already_committed field of remote's record.
func alreadyCommitted(t *testing.T, stdout, remote string) bool {
	t.Helper()
	for _, l := range strings.Split(stdout, "\n") {
		var v struct {
			Remote           string `json:"remote"`
			AlreadyCommitted bool   `json:"already_committed"`
		}
		if json.Unmarshal([]byte(l), &v) == nil && v.Remote == remote {
			return v.AlreadyCommitted
		}
	}
	return false
}

// TestTreeOverLongLink sends 200 files of 4 KiB through a proxy that
// delays each direction by 25 ms: a round trip per file would take 200
// round trips; the window takes a few. The bound is generous.
func TestTreeOverLongLink(t *testing.T) {
	slow(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	src := t.TempDir()
	tree, names := writeTree(t, src, 200, 4096, 0)
	p := newProxy(t, d.addr)
	const oneWay = 25 * time.Millisecond
	p.SetDelay(oneWay)
	start := time.Now()
	r := runFerry(t, sendArgs(p.Addr(), tree)...)
	elapsed := time.Since(start)
	wantCode(t, r, exitOK)
	checkTree(t, src, root, names, parseRecords(t, r.stdout))
	rtt := 2 * oneWay
	t.Logf("200 files over a %v round trip in %v: %.1f round trips (process start included)", rtt, elapsed.Round(time.Millisecond), float64(elapsed)/float64(rtt))
	if elapsed > 40*rtt {
		t.Fatalf("200 files took %v, more than 40 round trips of %v", elapsed, rtt)
	}
}

// TestTreeRerunSendsNothing (issue 9) sends a tree, then the same tree
// again: the re-run finds every file unchanged by size and mtime (rsync's
// quick check), sends no data (the records' sent_bytes sum to 0, blake3
// empty: nobody hashed them), exits 0, and ferryd logs no INFO line per
// file, only the session's. A touched file (same content, new mtime) is
// confirmed by hash on the next run, still without data.
func TestTreeRerunSendsNothing(t *testing.T) {
	slow(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	src := t.TempDir()
	tree, names := writeTree(t, src, 500, 4096, 8<<20)
	wantCode(t, runFerry(t, sendArgs(d.addr, tree)...), exitOK)
	mark := len(d.log.snapshot())
	start := time.Now()
	r := runFerry(t, sendArgs(d.addr, tree)...)
	t.Logf("re-run of %d files in %v", len(names), time.Since(start).Round(time.Millisecond))
	wantCode(t, r, exitOK)
	recs := parseRecords(t, r.stdout)
	checkTree(t, src, root, names, recs)
	var sent int64
	for _, rec := range recs {
		sent += rec.SentBytes
		if !rec.AlreadyCommitted || rec.BLAKE3 != "" || !rec.fields["blake3"] {
			t.Errorf("%s: already_committed %v blake3 %q; want true and \"\"", rec.Remote, rec.AlreadyCommitted, rec.BLAKE3)
		}
	}
	if sent != 0 {
		t.Errorf("the re-run sent %d bytes of data, want 0", sent)
	}
	for _, l := range d.lines(mark, "level=INFO", "name=") {
		t.Errorf("INFO line for a file on a re-run: %s", l)
	}

	touched := filepath.Join(src, names[0])
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(touched, later, later); err != nil {
		t.Fatal(err)
	}
	r = runFerry(t, sendArgs(d.addr, "--dest", filepath.ToSlash(filepath.Dir(names[0])), touched)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	if !rec.AlreadyCommitted || rec.SentBytes != 0 || rec.BLAKE3 != ferryHash(t, touched) {
		t.Errorf("touched file: %+v; want confirmed by hash, no data sent", rec)
	}
}

// Tree semantics users expect from rsync -a (issue 9).

// treeSkip says which source entries compareTree expects to be absent on
// the daemon: called with the slash-separated path below the tree and its
// Lstat.
type treeSkip func(rel string, fi os.FileInfo) bool

// compareTree checks, file by file, that the tree at dst is the tree at
// src: every directory with its mode bits and mtime, every regular file
// with its bytes, mode bits and mtime, every symbolic link with its
// target; entries skip names must be absent, and dst holds nothing else
// (the daemon's .ferry directory aside).
func compareTree(t *testing.T, src, dst string, skip treeSkip) {
	t.Helper()
	want := map[string]bool{}
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		rel = filepath.ToSlash(rel)
		got := filepath.Join(dst, filepath.FromSlash(rel))
		if skip != nil && skip(rel, fi) {
			if _, err := os.Lstat(got); err == nil {
				t.Errorf("%s: on the daemon, want it skipped", rel)
			}
			if fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		want[rel] = true
		gi, err := os.Lstat(got)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if gi.Mode().Type() != fi.Mode().Type() {
			t.Errorf("%s: type %v on the daemon, want %v", rel, gi.Mode().Type(), fi.Mode().Type())
			return nil
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			wl, _ := os.Readlink(p)
			gl, _ := os.Readlink(got)
			if gl != wl {
				t.Errorf("%s: link to %q on the daemon, want %q", rel, gl, wl)
			}
			return nil
		case fi.Mode().IsRegular():
			a, _ := os.ReadFile(p)
			b, _ := os.ReadFile(got)
			if !bytes.Equal(a, b) {
				t.Errorf("%s: content differs (%d bytes, want %d)", rel, len(b), len(a))
			}
		}
		if rel != "." && gi.Mode().Perm() != fi.Mode().Perm() {
			t.Errorf("%s: mode %v on the daemon, want %v", rel, gi.Mode().Perm(), fi.Mode().Perm())
		}
		if rel != "." && !gi.ModTime().Equal(fi.ModTime()) {
			t.Errorf("%s: mtime %v on the daemon, want %v", rel, gi.ModTime(), fi.ModTime())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.Walk(dst, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dst, p)
		rel = filepath.ToSlash(rel)
		if rel == ".ferry" {
			return filepath.SkipDir
		}
		if !want[rel] {
			t.Errorf("%s: on the daemon, not in the source", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// writeSemanticsTree builds the cases of issue 9's tree semantics under
// dir/t: nested and empty directories with their own modes and mtimes,
// files with modes and mtimes, a hard link, symlinks inside and outside
// the tree, a FIFO and a name that is not valid UTF-8.
func writeSemanticsTree(t *testing.T, dir string) string {
	t.Helper()
	tree := filepath.Join(dir, "t")
	writeFiles(t, tree, "a.txt", "sub/b.txt", "sub/deep/c.txt")
	for _, d := range []string{"sub/empty", "empty", "x/y/z"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(tree, "bad\xffname"), []byte("x"), 0o644))
	must(os.Link(filepath.Join(tree, "a.txt"), filepath.Join(tree, "hard")))
	must(os.Symlink("a.txt", filepath.Join(tree, "lnin")))
	must(os.Symlink("../a.txt", filepath.Join(tree, "sub", "lnup")))
	must(os.Symlink("sub/deep", filepath.Join(tree, "lndir")))
	must(os.Symlink("../../etc", filepath.Join(tree, "lnout")))
	must(os.Symlink("/etc/passwd", filepath.Join(tree, "lnabs")))
	must(syscall.Mkfifo(filepath.Join(tree, "fifo"), 0o644))
	modes := map[string]os.FileMode{"a.txt": 0o640, "sub/b.txt": 0o600, "sub/deep/c.txt": 0o755,
		"sub/deep": 0o750, "sub/empty": 0o700, "sub": 0o711, "empty": 0o755, "x/y/z": 0o705, "x": 0o751}
	for n, m := range modes {
		must(os.Chmod(filepath.Join(tree, n), m))
	}
	// Deepest first: setting a file's mtime does not touch its
	// directory's, and the directories are set last.
	mtime := time.Date(2019, 3, 4, 5, 6, 7, 123456789, time.UTC)
	for i, n := range []string{"a.txt", "sub/b.txt", "sub/deep/c.txt", "sub/deep", "sub/empty", "sub", "empty", "x/y/z", "x/y", "x"} {
		m := mtime.Add(time.Duration(i) * time.Hour)
		must(os.Chtimes(filepath.Join(tree, n), m, m))
	}
	return tree
}

// TestTreeSemantics sends a tree of issue 9's cases with --links: the
// directories (empty ones too) arrive with their modes and mtimes, the
// files with theirs, the hard link as a separate file, the symlinks that
// stay inside the tree as symlinks; the links leading out, the FIFO and
// the name that is not UTF-8 are skipped or refused, each with one line
// on stderr and a --json record, and the not-UTF-8 name round-trips in
// path_b64. Without --links every symlink is skipped the same way.
func TestTreeSemantics(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	tree := writeSemanticsTree(t, t.TempDir())
	r := runFerry(t, sendArgs(d.addr, "--links", "--dest", "links", tree)...)
	wantCode(t, r, exitRefused) // the name that is not UTF-8; the most severe outcome
	skipped := map[string]bool{"lnout": true, "lnabs": true, "fifo": true, "bad\xffname": true}
	compareTree(t, tree, filepath.Join(root, "links", "t"), func(rel string, _ os.FileInfo) bool { return skipped[rel] })
	if fi, err := os.Lstat(filepath.Join(root, "links", "t", "hard")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("hard link: %v %v; want a separate regular file", fi, err)
	}

	byPath := map[string]record{}
	for _, rec := range parseRecords(t, r.stdout) {
		byPath[strings.TrimPrefix(rec.Path, tree+"/")] = rec
	}
	for name, want := range map[string]string{"lnout": "skipped", "lnabs": "skipped", "fifo": "skipped", "lnin": "committed", "sub/lnup": "committed", "lndir": "committed"} {
		if rec := byPath[name]; rec.Status != want {
			t.Errorf("%s: record %+v, want status %s", name, rec, want)
		}
	}
	for _, name := range []string{"lnout", "lnabs"} {
		if rec := byPath[name]; !strings.Contains(rec.Reason, "outside the sent tree") {
			t.Errorf("%s: reason %q does not say the link leads outside the tree", name, rec.Reason)
		}
		if n := strings.Count(r.stderr, filepath.Join(tree, name)+":"); n != 1 {
			t.Errorf("%s: %d lines on stderr, want 1:\n%s", name, n, r.stderr)
		}
	}
	// The name that is not UTF-8: refused by the daemon, with why, and
	// its raw bytes in path_b64.
	var bad map[string]any
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.Contains(l, `bad\\xffname`) {
			if err := json.Unmarshal([]byte(l), &bad); err != nil {
				t.Fatal(err)
			}
		}
	}
	if bad == nil {
		t.Fatalf("no record for the name that is not UTF-8:\n%s", r.stdout)
	}
	raw, err := base64.StdEncoding.DecodeString(fmt.Sprint(bad["path_b64"]))
	if err != nil || string(raw) != filepath.Join(tree, "bad\xffname") {
		t.Errorf("path_b64 %v decodes to %q (%v), want the raw path", bad["path_b64"], raw, err)
	}
	if bad["status"] != "refused" || !strings.Contains(fmt.Sprint(bad["reason"]), "not valid UTF-8") {
		t.Errorf("record %v: want refused, saying the name is not valid UTF-8", bad)
	}

	// Without --links: every symlink skipped, one line and one record each.
	r = runFerry(t, sendArgs(d.addr, "--dest", "nolinks", tree)...)
	wantCode(t, r, exitRefused)
	links := map[string]bool{"lnin": true, "sub/lnup": true, "lndir": true, "lnout": true, "lnabs": true}
	compareTree(t, tree, filepath.Join(root, "nolinks", "t"), func(rel string, _ os.FileInfo) bool { return skipped[rel] || links[rel] })
	recs := parseRecords(t, r.stdout)
	for name := range links {
		n := 0
		for _, rec := range recs {
			if rec.Path == filepath.Join(tree, filepath.FromSlash(name)) {
				n++
				if rec.Status != "skipped" || !strings.Contains(rec.Reason, "symbolic link") {
					t.Errorf("%s: record %+v, want skipped as a symbolic link", name, rec)
				}
			}
		}
		if n != 1 || strings.Count(r.stderr, filepath.Join(tree, filepath.FromSlash(name))+":") != 1 {
			t.Errorf("%s: %d records; want one record and one line:\n%s", name, n, r)
		}
	}
}

// TestTreeTrailingSlashSendsContents: "ferry send dir/" sends dir's
// contents under --dest, as rsync does; "ferry send dir" sends dir/.
func TestTreeTrailingSlashSendsContents(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	src := t.TempDir()
	writeFiles(t, src, "dir/a.txt", "dir/s/b.txt")
	wantCode(t, runFerry(t, sendArgs(d.addr, "--dest", "c", filepath.Join(src, "dir")+"/")...), exitOK)
	wantCode(t, runFerry(t, sendArgs(d.addr, "--dest", "n", filepath.Join(src, "dir"))...), exitOK)
	sameFile(t, filepath.Join(src, "dir/a.txt"), filepath.Join(root, "c", "a.txt"))
	sameFile(t, filepath.Join(src, "dir/s/b.txt"), filepath.Join(root, "c", "s", "b.txt"))
	sameFile(t, filepath.Join(src, "dir/a.txt"), filepath.Join(root, "n", "dir", "a.txt"))
	checkOnly(t, filepath.Join(root, "c"), "a.txt", "s")
}

// TestTreeNoWriteThroughSymlink: a symlink the daemon made (to a sibling
// directory, inside the root) never lets a later file be written through
// it: a file sent below the link's name is refused, and nothing lands in
// the directory it points to.
func TestTreeNoWriteThroughSymlink(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	src := t.TempDir()
	writeFiles(t, src, "t/d/sub/keep.txt", "f.txt")
	if err := os.Symlink("d", filepath.Join(src, "t", "lnd")); err != nil {
		t.Fatal(err)
	}
	wantCode(t, runFerry(t, sendArgs(d.addr, "--links", filepath.Join(src, "t"))...), exitOK)
	if l, err := os.Readlink(filepath.Join(root, "t", "lnd")); err != nil || l != "d" {
		t.Fatalf("link on the daemon: %q %v", l, err)
	}
	// t/lnd/sub resolves, through the link, to the directory t/d/sub.
	r := runFerry(t, sendArgs(d.addr, "--dest", "t/lnd/sub", filepath.Join(src, "f.txt"))...)
	wantCode(t, r, exitRefused)
	if rec := onlyRecord(t, r); !strings.Contains(rec.Reason, "symbolic link") {
		t.Errorf("reason %q does not say a symbolic link is in the way", rec.Reason)
	}
	checkOnly(t, filepath.Join(root, "t", "d", "sub"), "keep.txt")
}

// TestTreeUnreadableSkipped: an unreadable file and an unreadable
// directory are reported and skipped, the rest is sent, and the run exits
// 1. Root reads everything whatever the mode bits, so as root the test
// skips (the walk's own tests cover an unopenable directory with EMFILE,
// and sender_defects_test.go a file gone before it is opened).
func TestTreeUnreadableSkipped(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root: mode bits do not make a file unreadable")
	}
	root := t.TempDir()
	d := startDaemon(t, root)
	src := t.TempDir()
	writeFiles(t, src, "t/ok.txt", "t/no.txt", "t/nodir/x.txt")
	for _, n := range []string{"t/no.txt", "t/nodir"} {
		p := filepath.Join(src, filepath.FromSlash(n))
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(p, 0o755) })
	}
	r := runFerry(t, sendArgs(d.addr, filepath.Join(src, "t"))...)
	wantCode(t, r, exitFailed)
	sameFile(t, filepath.Join(src, "t/ok.txt"), filepath.Join(root, "t", "ok.txt"))
	for _, n := range []string{"no.txt", "nodir"} {
		if !strings.Contains(r.stderr, filepath.Join(src, "t", n)+":") {
			t.Errorf("stderr does not report %s:\n%s", n, r.stderr)
		}
	}
}

// writeSparse makes a 1 GiB file at path with a hole before, between and
// after three data extents (one not aligned to any chunk), and returns
// the bytes of data written.
func writeSparse(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	var data int64
	for i, ext := range []struct{ off, n int64 }{{0, 3 << 19}, {300<<20 + 123, 2 << 20}, {700 << 20, 1 << 20}} {
		b := make([]byte, ext.n)
		for j := range b {
			b[j] = byte(j*7 + i + 1)
		}
		if _, err := f.WriteAt(b, ext.off); err != nil {
			t.Fatal(err)
		}
		data += ext.n
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return data
}

// allocated returns the bytes of disk blocks path occupies (st_blocks*512).
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// TestTreeSparseFileKeepsHoles sends a 1 GiB file with holes through a
// proxy that cuts the link once, in the middle of the file: the re-run
// resumes past the holes already durable, the committed file has the
// source's BLAKE3, occupies about as many blocks as the source's data
// (not 1 GiB), and the bytes on the wire, both attempts, are far below
// the size: holes travel as ZeroChunk frames without data.
func TestTreeSparseFileKeepsHoles(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--sync-bytes", "16MiB")
	src := filepath.Join(t.TempDir(), "sparse.img")
	data := writeSparse(t, src)
	if a := allocated(t, src); a > 64<<20 {
		t.Skipf("the test's file system does not keep holes (%d bytes allocated)", a)
	}
	p := newProxy(t, d.addr)
	// Cut inside the second extent, at 300 MiB: the durable offset is
	// then past the first hole.
	p.CutAfter(3 << 20)
	r := runFerry(t, sendArgs(p.Addr(), "--retries", "3", src)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	dst := filepath.Join(root, "sparse.img")
	if h := ferryHash(t, dst); h != ferryHash(t, src) || rec.BLAKE3 != h {
		t.Fatalf("committed BLAKE3 %s, record %s, source %s", h, rec.BLAKE3, ferryHash(t, src))
	}
	fi, err := os.Stat(dst)
	if err != nil || fi.Size() != 1<<30 {
		t.Fatalf("committed file: %v %v; want 1 GiB", fi, err)
	}
	wire := p.Total(faultproxy.ClientToServer)
	t.Logf("1 GiB with %d bytes of data: %d bytes on the wire, %d allocated on the daemon, %d attempts, resumed from %d",
		data, wire, allocated(t, dst), rec.Attempts, rec.ResumedFrom)
	if rec.Attempts < 2 || rec.ResumedFrom == 0 {
		t.Errorf("record %+v: want a second attempt resumed past 0", rec)
	}
	if a := allocated(t, dst); a > 4*data+(16<<20) {
		t.Errorf("the committed file occupies %d bytes of blocks for %d bytes of data: its holes were filled", a, data)
	}
	if wire > 4*data+(16<<20) || rec.TotalSentBytes > 4*data {
		t.Errorf("%d bytes on the wire, %d data bytes sent, for %d bytes of data: holes were sent", wire, rec.TotalSentBytes, data)
	}
}
