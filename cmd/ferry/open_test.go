package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// entriesOf walks paths and returns the entries by remote name.
func entriesOf(t *testing.T, paths ...string) map[string]entry {
	t.Helper()
	r, err := walkAll(t, "", paths...)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]entry{}
	for _, e := range r.entries {
		m[e.Remote] = e
	}
	return m
}

// readEntry opens e with openEntry and returns its content.
func readEntry(t *testing.T, e entry) (string, error) {
	t.Helper()
	f, err := openEntry(e)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if f.Name() != e.Local {
		t.Errorf("opened file's name %q, want %q", f.Name(), e.Local)
	}
	b, err := io.ReadAll(f)
	return string(b), err
}

func TestOpenEntryOpensWhatTheWalkSaw(t *testing.T) {
	dir := t.TempDir()
	mkfiles(t, dir, "tree/a.txt", "tree/sub/deeper/z.txt", "file.txt")
	t.Chdir(dir)
	for remote, e := range entriesOf(t, "tree", "./file.txt") {
		got, err := readEntry(t, e)
		if err != nil {
			t.Errorf("%s: %v", remote, err)
			continue
		}
		if got != remote {
			t.Errorf("%s holds %q, want %q", remote, got, remote)
		}
	}
}

// TestOpenEntryRefusesSwaps is the regression test of issue 8, defect 8:
// a private key swapped in for tree/z.txt, while earlier files were on
// the wire, was uploaded as tree/z.txt. Whatever replaces a listed file,
// or a directory on its path, openEntry refuses it with errNotSame.
func TestOpenEntryRefusesSwaps(t *testing.T) {
	tests := []struct {
		name   string
		remote string                          // the entry opened, walked from base/tree or base/f.txt
		swap   func(t *testing.T, base string) // replaces something on the entry's path
	}{
		{"file swapped for a symlink out of the tree", "tree/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/z.txt", func(p string) error { return os.Symlink(filepath.Join(base, "secret.key"), p) })
		}},
		{"file swapped for a relative symlink", "tree/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/z.txt", func(p string) error { return os.Symlink("../secret.key", p) })
		}},
		{"file swapped for a hard link to another file", "tree/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/z.txt", func(p string) error { return os.Link(filepath.Join(base, "secret.key"), p) })
		}},
		{"file swapped for a named pipe", "tree/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/z.txt", func(p string) error { return unix.Mkfifo(p, 0o644) })
		}},
		{"file swapped for a directory", "tree/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/z.txt", func(p string) error { return os.Mkdir(p, 0o755) })
		}},
		{"directory swapped for a symlink to a directory outside", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/sub", func(p string) error { return os.Symlink(filepath.Join(base, "outside"), p) })
		}},
		{"directory swapped for a symlink to where it was moved", "tree/sub/z.txt", func(t *testing.T, base string) {
			// The same file is reached, but through a symlink: not
			// followed either.
			if err := os.Rename(filepath.Join(base, "tree/sub"), filepath.Join(base, "moved")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(base, "moved"), filepath.Join(base, "tree/sub")); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory swapped for another directory", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/sub", func(p string) error { return os.Rename(filepath.Join(base, "outside"), p) })
		}},
		{"directory swapped for a file", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/sub", func(p string) error { return os.WriteFile(p, []byte("x"), 0o644) })
		}},
		{"PATH file swapped for a symlink", "f.txt", func(t *testing.T, base string) {
			replace(t, base, "f.txt", func(p string) error { return os.Symlink(filepath.Join(base, "secret.key"), p) })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			mkfiles(t, base, "secret.key", "outside/z.txt", "outside/sub/z.txt", "tree/a.txt", "tree/sub/z.txt", "tree/z.txt", "f.txt")
			listed := entriesOf(t, filepath.Join(base, "tree"), filepath.Join(base, "f.txt"))
			e, ok := listed[tt.remote]
			if !ok {
				t.Fatalf("the walk did not list %s", tt.remote)
			}
			tt.swap(t, base)
			done := make(chan struct{})
			var got string
			var err error
			go func() {
				defer close(done)
				got, err = readEntry(t, e)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("openEntry hangs")
			}
			if !errors.Is(err, errNotSame) {
				t.Fatalf("openEntry(%s) = %q, %v; want an error wrapping errNotSame", tt.remote, got, err)
			}
			// Other entries still open.
			if _, err := readEntry(t, listed["tree/a.txt"]); err != nil {
				t.Errorf("tree/a.txt: %v", err)
			}
		})
	}
}

// replace puts what mk creates at base/name, moving the old entry aside.
func replace(t *testing.T, base, name string, mk func(path string) error) {
	t.Helper()
	p := filepath.Join(base, filepath.FromSlash(name))
	if err := os.Rename(p, p+".old"); err != nil {
		t.Fatal(err)
	}
	if err := mk(p); err != nil {
		t.Fatal(err)
	}
}

func TestOpenEntryErrors(t *testing.T) {
	base := t.TempDir()
	mkfiles(t, base, "tree/z.txt", "tree/sub/y.txt")
	listed := entriesOf(t, filepath.Join(base, "tree"))
	if err := os.Remove(filepath.Join(base, "tree/z.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(base, "tree/sub")); err != nil {
		t.Fatal(err)
	}
	for _, remote := range []string{"tree/z.txt", "tree/sub/y.txt"} {
		_, err := openEntry(listed[remote])
		if !errors.Is(err, os.ErrNotExist) || errors.Is(err, errNotSame) {
			t.Errorf("openEntry(%s) after its removal = %v, want a not-exist error", remote, err)
		}
	}
	// The file changed in place is still the file the walk saw.
	mkfiles(t, base, "tree2/f.txt")
	e := entriesOf(t, filepath.Join(base, "tree2"))["tree2/f.txt"]
	if err := os.WriteFile(filepath.Join(base, "tree2/f.txt"), []byte("new content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := readEntry(t, e); err != nil || got != "new content" {
		t.Errorf("openEntry of a file rewritten in place = %q, %v; want its new content", got, err)
	}
}

// TestEntryOpenerRefusesSwaps: the entryOpener keeps the directory of the
// last entry open (issue 9). With that directory open before the swaps of
// TestOpenEntryRefusesSwaps, it still opens only the file the walk saw:
// a swapped file is refused (errNotSame), and a swapped directory is not
// followed, so the file is either refused or read from the directory the
// walk read, never from where a symlink points.
func TestEntryOpenerRefusesSwaps(t *testing.T) {
	tests := []struct {
		name   string
		remote string
		swap   func(t *testing.T, base string)
	}{
		{"file swapped for a symlink out of the tree", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/sub/z.txt", func(p string) error { return os.Symlink(filepath.Join(base, "secret.key"), p) })
		}},
		{"file swapped for a hard link to another file", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/sub/z.txt", func(p string) error { return os.Link(filepath.Join(base, "secret.key"), p) })
		}},
		{"file swapped for a named pipe", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/sub/z.txt", func(p string) error { return unix.Mkfifo(p, 0o644) })
		}},
		{"directory swapped for a symlink to a directory outside", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/sub", func(p string) error { return os.Symlink(filepath.Join(base, "outside"), p) })
		}},
		{"parent directory swapped for a symlink outside", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree", func(p string) error { return os.Symlink(filepath.Join(base, "outside"), p) })
		}},
		{"directory swapped for another directory", "tree/sub/z.txt", func(t *testing.T, base string) {
			replace(t, base, "tree/sub", func(p string) error { return os.Rename(filepath.Join(base, "outside/sub"), p) })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			mkfiles(t, base, "secret.key", "outside/z.txt", "outside/sub/z.txt", "tree/sub/a.txt", "tree/sub/z.txt")
			listed := entriesOf(t, filepath.Join(base, "tree"))
			o := newEntryOpener()
			defer o.Close()
			read := func(e entry) (string, error) {
				f, err := o.open(e)
				if err != nil {
					return "", err
				}
				defer f.Close()
				b, err := io.ReadAll(f)
				return string(b), err
			}
			if got, err := read(listed["tree/sub/a.txt"]); err != nil || got != "tree/sub/a.txt" {
				t.Fatalf("tree/sub/a.txt: %q, %v", got, err)
			}
			tt.swap(t, base)
			done := make(chan struct{})
			var got string
			var err error
			go func() {
				defer close(done)
				got, err = read(listed[tt.remote])
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("open hangs")
			}
			if !errors.Is(err, errNotSame) && (err != nil || got != tt.remote) {
				t.Fatalf("open(%s) = %q, %v; want the walk's file (%q) or an error wrapping errNotSame", tt.remote, got, err, tt.remote)
			}
		})
	}
}
