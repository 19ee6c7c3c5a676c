package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mkfiles creates each slash-separated name under dir, with its name as
// content; a name ending in "/" is a directory.
func mkfiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(dir, filepath.FromSlash(n))
		if strings.HasSuffix(n, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// walkResult is what one walkPaths call visited and warned about.
type walkResult struct {
	entries []entry
	warns   []string // "path: error"
	errs    []error
}

func (r walkResult) locals() []string {
	var s []string
	for _, e := range r.entries {
		s = append(s, e.Local)
	}
	return s
}

func (r walkResult) remotes() []string {
	var s []string
	for _, e := range r.entries {
		s = append(s, e.Remote)
	}
	return s
}

func walkAll(t *testing.T, dest string, paths ...string) (walkResult, error) {
	t.Helper()
	var r walkResult
	err := walkPaths(t.Context(), paths, dest,
		func(e entry) error { r.entries = append(r.entries, e); return nil },
		func(p string, err error) {
			r.warns = append(r.warns, p+": "+err.Error())
			r.errs = append(r.errs, err)
		})
	return r, err
}

func TestWalkOrderTypesAndNames(t *testing.T) {
	base := t.TempDir()
	tree := filepath.Join(base, "tree")
	mkfiles(t, base, "secret.key")
	mkfiles(t, tree, "b.txt", "a/z.txt", "a/b/c.txt", "a.txt", "empty/", "C.txt", "a/b/d/")
	if err := os.Symlink(filepath.Join(base, "secret.key"), filepath.Join(tree, "a", "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base), filepath.Join(tree, "dirlink")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(tree, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(tree, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	r, err := walkAll(t, "X/Y", tree)
	if err != nil {
		t.Fatal(err)
	}
	wantLocal := []string{"C.txt", "a/b/c.txt", "a/z.txt", "a.txt", "b.txt"}
	var want, wantRemote []string
	for _, w := range wantLocal {
		want = append(want, filepath.Join(tree, w))
		wantRemote = append(wantRemote, "X/Y/tree/"+w)
	}
	if got := r.locals(); !slices.Equal(got, want) {
		t.Errorf("visited\n %q\nwant\n %q", got, want)
	}
	if got := r.remotes(); !slices.Equal(got, wantRemote) {
		t.Errorf("remote names\n %q\nwant\n %q", got, wantRemote)
	}
	wantWarns := []string{
		filepath.Join(tree, "a/link") + ": a symbolic link, " + errLinkSkipped.Error(),
		filepath.Join(tree, "dirlink") + ": a symbolic link, " + errLinkSkipped.Error(),
		filepath.Join(tree, "fifo") + ": a named pipe, " + errNotRegular.Error(),
		filepath.Join(tree, "sock") + ": a socket, " + errNotRegular.Error(),
	}
	if !slices.Equal(r.warns, wantWarns) {
		t.Errorf("warnings\n %q\nwant\n %q", r.warns, wantWarns)
	}
	for _, err := range r.errs {
		if !errors.Is(err, errNotRegular) {
			t.Errorf("warning %v does not wrap errNotRegular", err)
		}
	}
	for _, e := range r.entries {
		fi, err := os.Lstat(e.Local)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if e.Dev != uint64(st.Dev) || e.Ino != st.Ino || e.Size != fi.Size() || e.Mode != fi.Mode() || !e.ModTime.Equal(fi.ModTime()) {
			t.Errorf("%s: entry %+v does not match lstat %v %v %v %v", e.Local, e, st.Ino, fi.Size(), fi.Mode(), fi.ModTime())
		}
	}
}

// TestWalkPathNames is the regression test of issue 8, defect 14: in
// src/one/a, `ferry send --dest X/Y ..` committed X/a/b/f.txt. A PATH is
// named by the base name of its absolute, cleaned form.
func TestWalkPathNames(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	mkfiles(t, src, "one/a/b/f.txt", "one/a/g.txt", "one/top.txt")
	if err := os.Symlink(filepath.Join(src, "one", "a", "b"), filepath.Join(src, "one", "a", "blink")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(filepath.Join(src, "one", "a"))
	a := filepath.Join(src, "one", "a")
	tests := []struct {
		name, path string
		local      []string // relative to src/one/a, or absolute
		remote     []string
	}{
		{"dot", ".", []string{"b/f.txt", "g.txt"}, []string{"X/Y/a/b/f.txt", "X/Y/a/g.txt"}},
		{"dot-dot", "..", []string{"../a/b/f.txt", "../a/g.txt", "../top.txt"},
			[]string{"X/Y/one/a/b/f.txt", "X/Y/one/a/g.txt", "X/Y/one/top.txt"}},
		{"dir/..", "b/..", []string{"b/f.txt", "g.txt"}, []string{"X/Y/a/b/f.txt", "X/Y/a/g.txt"}},
		// A trailing slash sends the contents, as rsync does.
		{"trailing slash", "b/", []string{"b/f.txt"}, []string{"X/Y/f.txt"}},
		{"trailing slash-dot", "b/.", []string{"b/f.txt"}, []string{"X/Y/b/f.txt"}},
		{"dot-slash file", "./g.txt", []string{"./g.txt"}, []string{"X/Y/g.txt"}},
		{"file", "b/f.txt", []string{"b/f.txt"}, []string{"X/Y/f.txt"}},
		{"absolute directory", a + "/b", []string{a + "/b/f.txt"}, []string{"X/Y/b/f.txt"}},
		{"absolute with dot-dot", a + "/b/../..", []string{src + "/one/a/b/f.txt", src + "/one/a/g.txt", src + "/one/top.txt"},
			[]string{"X/Y/one/a/b/f.txt", "X/Y/one/a/g.txt", "X/Y/one/top.txt"}},
		// The PATH itself is followed, and named as typed.
		{"symlink as PATH", "blink", []string{"blink/f.txt"}, []string{"X/Y/blink/f.txt"}},
		// Resolved lexically, as cd does: blink/.. is the directory
		// holding blink, not the parent of its target.
		{"symlink/..", "blink/..", []string{"b/f.txt", "g.txt"}, []string{"X/Y/a/b/f.txt", "X/Y/a/g.txt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := walkAll(t, "X/Y", tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.remotes(); !slices.Equal(got, tt.remote) {
				t.Errorf("walkPaths(%q) remote names\n %q\nwant\n %q", tt.path, got, tt.remote)
			}
			if got := r.locals(); !slices.Equal(got, tt.local) {
				t.Errorf("walkPaths(%q) local paths\n %q\nwant\n %q", tt.path, got, tt.local)
			}
			// blink is skipped, as a symlink below a PATH.
			for _, w := range r.warns {
				if !strings.Contains(w, "blink: a symbolic link") {
					t.Errorf("unexpected warning: %s", w)
				}
			}
		})
	}
}

func TestWalkRootAndEmptyAreUsageErrors(t *testing.T) {
	dir := t.TempDir()
	mkfiles(t, dir, "f")
	for _, p := range []string{"/", "//", "/..", "/./", ""} {
		visited := false
		err := walkPaths(t.Context(), []string{filepath.Join(dir, "f"), p}, "X",
			func(entry) error { visited = true; return nil }, func(string, error) {})
		if !errors.Is(err, errUsage) {
			t.Errorf("walkPaths(%q) = %v, want a usage error", p, err)
		}
		if visited {
			t.Errorf("walkPaths(%q) visited a file before refusing the PATH", p)
		}
	}
}

func TestDestJoin(t *testing.T) {
	tests := []struct{ dest, base, want string }{
		{"", "f", "f"},
		{"backups", "f", "backups/f"},
		{"backups/", "f", "backups/f"},
		{"backups//", "f", "backups/f"},
		{"/", "f", "/f"},        // absolute: left for the daemon to refuse
		{"../x", "f", "../x/f"}, // not cleaned: the daemon judges names
		{"a/../../x", "f", "a/../../x/f"},
		{"X/Y", "..", "X/Y/.."}, // walkPaths never passes "..": it resolves PATHs first
	}
	for _, tt := range tests {
		if got := destJoin(tt.dest, tt.base); got != tt.want {
			t.Errorf("destJoin(%q, %q) = %q, want %q", tt.dest, tt.base, got, tt.want)
		}
	}
}

// TestWalkMissingPathGoesOn: a PATH that does not exist among several is
// reported, and the others are walked.
func TestWalkMissingPathGoesOn(t *testing.T) {
	dir := t.TempDir()
	mkfiles(t, dir, "a.txt", "d/b.txt")
	missing := filepath.Join(dir, "missing")
	r, err := walkAll(t, "", filepath.Join(dir, "a.txt"), missing, filepath.Join(dir, "d"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.remotes(), []string{"a.txt", "d/b.txt"}; !slices.Equal(got, want) {
		t.Errorf("visited %q, want %q", got, want)
	}
	if len(r.errs) != 1 || !errors.Is(r.errs[0], fs.ErrNotExist) || !strings.HasPrefix(r.warns[0], missing+": ") {
		t.Errorf("warnings %q, want one saying %s does not exist", r.warns, missing)
	}
}

// TestWalkPathOfOtherType: a PATH that is neither a regular file nor a
// directory is not sent, and, unlike such an entry below a PATH, its
// warning does not wrap errNotRegular: the user named it.
func TestWalkPathOfOtherType(t *testing.T) {
	dir := t.TempDir()
	mkfiles(t, dir, "f.txt")
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fifo, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	r, err := walkAll(t, "", fifo, filepath.Join(dir, "link"), filepath.Join(dir, "f.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.remotes(), []string{"f.txt"}; !slices.Equal(got, want) {
		t.Errorf("visited %q, want %q", got, want)
	}
	want := []string{
		fifo + ": a named pipe, not a regular file or directory; not sent",
		filepath.Join(dir, "link") + ": a named pipe, not a regular file or directory; not sent",
	}
	if !slices.Equal(r.warns, want) {
		t.Errorf("warnings\n %q\nwant\n %q", r.warns, want)
	}
	for _, err := range r.errs {
		if errors.Is(err, errNotRegular) {
			t.Errorf("warning %v wraps errNotRegular", err)
		}
	}
}

func TestWalkStopsOnVisitErrorAndCancel(t *testing.T) {
	dir := t.TempDir()
	mkfiles(t, dir, "t/a", "t/b", "t/c")
	stop := errors.New("stop")
	n := 0
	err := walkPaths(t.Context(), []string{filepath.Join(dir, "t")}, "", func(entry) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	}, func(string, error) {})
	if err != stop || n != 2 { //nolint:errorlint // returned as is, unwrapped
		t.Errorf("walkPaths = %v after %d visits, want %v after 2", err, n, stop)
	}

	ctx, cancel := context.WithCancelCause(t.Context())
	cause := errors.New("interrupted")
	n = 0
	err = walkPaths(ctx, []string{filepath.Join(dir, "t")}, "", func(entry) error {
		n++
		cancel(cause)
		return nil
	}, func(string, error) {})
	if err != cause || n != 1 { //nolint:errorlint // returned as is, unwrapped
		t.Errorf("walkPaths = %v after %d visits, want %v after 1", err, n, cause)
	}
}

// TestWalkMemoryFlat is the regression test of issue 8, defect 12: sender
// memory grew with the number of files (107 MB for 11,478). The heap in
// use, sampled inside visit after a GC, must stay under a bound that a
// list of all the files would exceed.
func TestWalkMemoryFlat(t *testing.T) {
	tests := []struct {
		name       string
		dirs, each int
	}{
		{"2,000 files", 20, 100},
		{"200,000 files", 100, 2000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.dirs*tt.each > 10000 && testing.Short() {
				t.Skip("slow: skipped under -short")
			}
			dir := memTempDir(t)
			// Long names, so that a list of entries would be large.
			pad := strings.Repeat("p", 100)
			for d := range tt.dirs {
				sub := filepath.Join(dir, "tree", fmt.Sprintf("dir-%s-%04d", pad, d))
				if err := os.MkdirAll(sub, 0o755); err != nil {
					t.Fatal(err)
				}
				for f := range tt.each {
					p := filepath.Join(sub, fmt.Sprintf("file-%s-%06d", pad, f))
					if err := unix.Mknod(p, unix.S_IFREG|0o644, 0); err != nil {
						t.Fatal(err)
					}
				}
			}
			const bound = 16 << 20
			var ms runtime.MemStats
			n, peak := 0, uint64(0)
			sample := func() {
				runtime.GC()
				runtime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapInuse)
			}
			err := walkPaths(t.Context(), []string{filepath.Join(dir, "tree")}, "dest", func(e entry) error {
				n++
				if n%(tt.each*tt.dirs/20) == 0 {
					sample()
				}
				return nil
			}, func(p string, err error) { t.Errorf("%s: %v", p, err) })
			if err != nil {
				t.Fatal(err)
			}
			if n != tt.dirs*tt.each {
				t.Fatalf("visited %d files, want %d", n, tt.dirs*tt.each)
			}
			t.Logf("%d files: peak heap in use %.1f MiB", n, float64(peak)/(1<<20))
			if peak > bound {
				t.Errorf("heap in use reached %.1f MiB walking %d files, want under %d MiB", float64(peak)/(1<<20), n, bound>>20)
			}
		})
	}
}

// memTempDir returns a temporary directory on tmpfs (/dev/shm) when there
// is one: creating many files there takes a second, where a disk shared
// with fsync-heavy tests can take minutes. Otherwise it is t.TempDir().
func memTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "ferry-walk-test-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	return dir
}

// TestWalkEntries: the second walk visits each directory after all it
// holds (so its mtime is set last), the PATH's own directory last and not
// at all for "dir/", and with links the symlinks that stay inside the
// PATH's tree; it warns about nothing. The first walk, with links, no
// longer warns about the links it keeps.
func TestWalkEntries(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "t")
	mkfiles(t, tree, "a/b/f.txt", "a/empty/", "c.txt")
	for link, target := range map[string]string{"a/in": "../c.txt", "a/b/up": "../../a", "out": "../x", "abs": "/etc", "a/top": ".."} {
		if err := os.Symlink(target, filepath.Join(tree, filepath.FromSlash(link))); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	visit := func(e entry) error {
		s := e.Remote
		if e.Kind == kindSymlink {
			s += " -> " + e.Target
		}
		got = append(got, s)
		return nil
	}
	if err := walkEntries(t.Context(), []string{tree}, "X", true, visit); err != nil {
		t.Fatal(err)
	}
	want := []string{"X/t/a/b/up -> ../../a", "X/t/a/b", "X/t/a/empty", "X/t/a/in -> ../c.txt", "X/t/a/top -> ..", "X/t/a", "X/t"}
	if !slices.Equal(got, want) {
		t.Errorf("entries\n %q\nwant\n %q", got, want)
	}
	got = nil
	if err := walkEntries(t.Context(), []string{tree + "/"}, "", false, visit); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a/b", "a/empty", "a"}; !slices.Equal(got, want) {
		t.Errorf("entries of %q without links\n %q\nwant\n %q", tree+"/", got, want)
	}
	var warns []string
	err := walkFiles(t.Context(), []string{tree}, "X", true, func(entry) error { return nil },
		func(p string, err error) { warns = append(warns, strings.TrimPrefix(p, tree+"/")) })
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"abs", "out"}; !slices.Equal(warns, want) {
		t.Errorf("warnings with --links for %q, want %q", warns, want)
	}
}
