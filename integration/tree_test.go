package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
