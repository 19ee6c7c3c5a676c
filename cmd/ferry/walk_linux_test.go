package main

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWalkUnopenableDirectoryGoesOn: a directory that cannot be opened is
// reported, and the walk goes on with its siblings. The tests run as root
// here, for whom no permission bit makes a directory unreadable, so the
// open fails with EMFILE instead: the process may open one directory
// more than the walk needs for the top level.
func TestWalkUnopenableDirectoryGoesOn(t *testing.T) {
	dir := t.TempDir()
	mkfiles(t, dir, "tree/a/deep/x.txt", "tree/a/y.txt", "tree/b.txt", "tree/c/z.txt")
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// The two lowest free descriptors are the ones the walk gets for
	// tree and tree/a; tree/a/deep then finds none.
	f1, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	second := f2.Fd()
	f1.Close()
	f2.Close()
	low := lim
	low.Cur = uint64(second) + 1
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	r, err := walkAll(t, "", filepath.Join(dir, "tree"))
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	// tree/c opens: tree/a's descriptor was closed after its walk.
	if got, want := r.remotes(), []string{"tree/a/y.txt", "tree/b.txt", "tree/c/z.txt"}; !slices.Equal(got, want) {
		t.Errorf("visited %q, want %q", got, want)
	}
	want := []string{filepath.Join(dir, "tree/a/deep") + ": opening directory: too many open files"}
	if !slices.Equal(r.warns, want) {
		t.Errorf("warnings\n %q\nwant\n %q", r.warns, want)
	}
}

// TestWalkBindMountLoop: a bind mount can put a directory inside itself;
// the walk reports it and goes on instead of descending until it runs
// out of descriptors. Needs the right to mount (root in most containers).
func TestWalkBindMountLoop(t *testing.T) {
	dir := t.TempDir()
	mkfiles(t, dir, "tree/a.txt", "tree/sub/b.txt", "tree/sub/loop/")
	sub, loop := filepath.Join(dir, "tree/sub"), filepath.Join(dir, "tree/sub/loop")
	if err := unix.Mount(sub, loop, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount here: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(loop, unix.MNT_DETACH); err != nil {
			t.Error(err)
		}
	})
	r, err := walkAll(t, "", filepath.Join(dir, "tree"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.remotes(), []string{"tree/a.txt", "tree/sub/b.txt"}; !slices.Equal(got, want) {
		t.Errorf("visited %q, want %q", got, want)
	}
	if want := []string{loop + ": " + errLoop.Error()}; !slices.Equal(r.warns, want) {
		t.Errorf("warnings %q, want %q", r.warns, want)
	}
}
