package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestTreeOutcomes sends a tree where every outcome occurs: a.txt and
// d.bin committed, b.txt unchanged (sent before), c.txt refused (the
// daemon holds another c.txt), a named pipe skipped. The exit code is the
// most severe (3, refused); --json has one record per file with its
// status and reason, then a summary record with the counts; the human
// output has a line for the refusal and the pipe, none per committed file
// unless -v, and a summary line.
func TestTreeOutcomes(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	src := t.TempDir()
	tree := filepath.Join(src, "tree")
	other := filepath.Join(src, "other")
	for _, dir := range []string{tree, other} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{"a.txt": "alpha\n", "b.txt": "bravo\n", "c.txt": "charlie\n"}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(tree, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeRandom(t, filepath.Join(tree, "d.bin"), 3<<20+7, 5)
	if err := syscall.Mkfifo(filepath.Join(tree, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "c.txt"), []byte("another charlie\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, runFerry(t, sendArgs(d.addr, "--dest", "tree", filepath.Join(tree, "b.txt"))...), exitOK)
	wantCode(t, runFerry(t, sendArgs(d.addr, "--dest", "tree", filepath.Join(other, "c.txt"))...), exitOK)

	r := runFerry(t, sendArgs(d.addr, tree)...)
	wantCode(t, r, exitRefused)
	want := map[string]string{"a.txt": "committed", "b.txt": "unchanged", "c.txt": "refused", "d.bin": "committed", "pipe": "skipped"}
	got := map[string]record{}
	for _, rec := range parseRecords(t, r.stdout) {
		name := filepath.Base(rec.Path)
		if _, dup := got[name]; dup {
			t.Errorf("two records for %s:\n%s", name, r.stdout)
		}
		got[name] = rec
	}
	if len(got) != len(want) {
		t.Errorf("got %d records, want %d (one per file)\n%s", len(got), len(want), r)
	}
	for name, status := range want {
		rec := got[name]
		if rec.Status != status {
			t.Errorf("%s: status %q, want %q", name, rec.Status, status)
		}
		switch status {
		case "committed":
			if rec.Reason != "" || rec.fields["reason"] || rec.BLAKE3 == "" {
				t.Errorf("%s: reason %q, blake3 %q; want no reason and a hash", name, rec.Reason, rec.BLAKE3)
			}
		case "unchanged": // found by size and mtime (the quick check): nobody hashed it
			if rec.Reason != "" || rec.fields["reason"] || !rec.fields["blake3"] {
				t.Errorf("%s: reason %q, blake3 present %v; want no reason and the key", name, rec.Reason, rec.fields["blake3"])
			}
		default:
			if rec.Reason == "" || rec.Error != rec.Reason {
				t.Errorf("%s: reason %q, error %q; want a reason, repeated as error", name, rec.Reason, rec.Error)
			}
		}
	}
	if !strings.Contains(got["c.txt"].Reason, "exists") || !strings.Contains(got["pipe"].Reason, "named pipe") {
		t.Errorf("reasons: c.txt %q, pipe %q; want it exists, a named pipe", got["c.txt"].Reason, got["pipe"].Reason)
	}
	sum := parseSummary(t, r.stdout)
	wantSum := summaryRecord{Summary: true, Committed: 2, Unchanged: 1, Skipped: 1, Refused: 1, Failed: 0, Files: 5,
		Bytes: 6 + 6 + 8 + 3<<20 + 7, Seconds: sum.Seconds, Rate: sum.Rate}
	wantSum.SentBytes = sum.SentBytes
	if sum != wantSum {
		t.Errorf("summary %+v\nwant    %+v", sum, wantSum)
	}
	if sum.SentBytes < 3<<20+7 || sum.Seconds <= 0 || sum.Rate <= 0 {
		t.Errorf("summary sent %d bytes in %gs at %g B/s; want at least d.bin's bytes, a time and a rate", sum.SentBytes, sum.Seconds, sum.Rate)
	}
	if strings.Contains(r.stderr, "files:") {
		t.Errorf("a summary line on stderr with --json:\n%s", r.stderr)
	}

	// Human output, again: everything but c.txt and the pipe is there now.
	r = runFerry(t, "send", "--to", d.addr, tree)
	wantCode(t, r, exitRefused)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 3 || !strings.Contains(r.stderr, "c.txt: refused") || !strings.Contains(r.stderr, "pipe: a named pipe") ||
		!strings.HasPrefix(lines[2], "ferry: 5 files: 0 committed, 3 unchanged, 1 skipped, 1 refused, 0 failed; ") {
		t.Errorf("want the refusal, the pipe and a summary line on stderr, got:\n%s", r.stderr)
	}
	r = runFerry(t, "send", "--to", d.addr, "-v", tree)
	wantCode(t, r, exitRefused)
	if n := strings.Count(r.stderr, ", unchanged ("); n != 3 {
		t.Errorf("-v printed %d lines of files already there, want 3 (a.txt, b.txt, d.bin):\n%s", n, r.stderr)
	}
}
