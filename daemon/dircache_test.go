package daemon_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// TestQuickCheckDirSwappedForSymlink (issue 9): the daemon keeps the
// directories of recent quick checks open. A directory swapped for a
// symlink out of the root between two quick checks of a file in it must
// not let the second one look outside the root (where a file of the
// offered size and mtime waits, so that a stat there would answer
// "unchanged"), nor let a new file in it be written there. The daemon may
// answer from the directory it had open, which is inside the root: it
// never answers "unchanged" for the outside file.
func TestQuickCheckDirSwappedForSymlink(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	send := func(js []*transfer.Job) map[string]error {
		t.Helper()
		c := srv.connect(t)
		defer c.Close()
		errs := make(map[string]error)
		if _, _, err := c.SendAll(context.Background(), feed(js), func(j *transfer.Job, err error) { errs[j.Name] = err },
			transfer.WindowOptions{}); err != nil {
			t.Fatalf("SendAll: %v", err)
		}
		return errs
	}
	inside := randomData(100, 1)
	if errs := send([]*transfer.Job{{Name: "d/f", Src: source(inside)}}); errs["d/f"] != nil {
		t.Fatalf("first send: %v", errs["d/f"])
	}
	// The quick check of the re-send opens d and keeps it.
	again := &transfer.Job{Name: "d/f", Src: source(inside)}
	if errs := send([]*transfer.Job{again}); errs["d/f"] != nil || !again.Last.Unchanged {
		t.Fatalf("re-send: %v, unchanged %v; want unchanged", errs["d/f"], again.Last.Unchanged)
	}

	// Outside the root: a file of another size, with the mtime a sender
	// of it would offer.
	outside := t.TempDir()
	outData := randomData(300, 2)
	if err := os.WriteFile(filepath.Join(outside, "f"), outData, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(outside, "f"), testMtime, testMtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(srv.root, "d"), filepath.Join(srv.root, "d.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(srv.root, "d")); err != nil {
		t.Fatal(err)
	}

	lookOut := &transfer.Job{Name: "d/f", Src: source(outData)}
	write := &transfer.Job{Name: "d/new", Src: source(randomData(50, 3))}
	errs := send([]*transfer.Job{lookOut, write})
	if lookOut.Last.Unchanged || lookOut.Last.AlreadyCommitted || errs["d/f"] == nil {
		t.Errorf("offer of the outside file's size and mtime through the swapped directory: err %v, unchanged %v, already committed %v; want a refusal",
			errs["d/f"], lookOut.Last.Unchanged, lookOut.Last.AlreadyCommitted)
	}
	if err := errs["d/new"]; err == nil || !errors.Is(err, transfer.ErrBadName) {
		t.Errorf("new file through the swapped directory: %v; want a refusal (bad name)", err)
	}
	entries, err := os.ReadDir(outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("outside the root: %d entries, want only f", len(entries))
	}
	if got, err := os.ReadFile(filepath.Join(outside, "f")); err != nil || string(got) != string(outData) {
		t.Errorf("the outside file changed: %v", err)
	}
}

// TestStartWriteback: with DirStore.StartWriteback, the hint given as each
// chunk is written changes nothing a sender sees: files of one chunk and
// of many commit with their content.
func TestStartWriteback(t *testing.T) {
	srv := newServerWrapped(t, t.TempDir(), daemon.Config{}, func(s daemon.Store) daemon.Store {
		s.(*daemon.DirStore).StartWriteback = true
		return s
	})
	small, smallData := jobs(20, 1000, "small")
	large, largeData := jobs(2, 5*testChunk+3, "large")
	all := append(small, large...)
	data := append(smallData, largeData...)
	c := srv.connect(t)
	defer c.Close()
	unsettled, _, err := c.SendAll(context.Background(), feed(all), func(j *transfer.Job, err error) {
		if err != nil {
			t.Errorf("%s: %v", j.Name, err)
		}
	}, transfer.WindowOptions{})
	if err != nil || len(unsettled) != 0 {
		t.Fatalf("SendAll: %v, %d unsettled", err, len(unsettled))
	}
	for i, j := range all {
		srv.checkCommitted(t, j.Name, data[i], j.Last)
	}
}

// TestLstatMissingDirThenMkdir: a directory found missing is remembered
// for a moment (so that a new tree's quick checks cost nothing), but the
// daemon's own Mkdir forgets it at once, and a file made in it is seen.
func TestLstatMissingDirThenMkdir(t *testing.T) {
	fsys, err := daemon.OpenOSFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	for range 2 {
		if _, err := fsys.Lstat("a/b/f"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Lstat under a missing directory: %v, want not exist", err)
		}
	}
	for _, d := range []string{"a", "a/b"} {
		if err := fsys.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f, err := fsys.OpenFile("a/b/f", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatalf("creating a file in a directory just made: %v", err)
	}
	_ = f.Close()
	if _, err := fsys.Lstat("a/b/f"); err != nil {
		t.Fatalf("Lstat of a file in a directory just made: %v", err)
	}
}
