package daemon

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"syscall"
	"time"
)

// FS is the file system the partial store writes through, with names
// relative to the root. It is the seam where tests put a crash-simulating
// file system, so it exposes exactly the operations whose durability order
// matters, directory fsync included.
type FS interface {
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	Remove(name string) error
	// Rename replaces newname atomically.
	Rename(oldname, newname string) error
	// Link creates newname as a hard link to oldname; it fails with an
	// error matching fs.ErrExist if newname exists (never overwrites).
	Link(oldname, newname string) error
	// Mkdir creates one directory; it fails if name exists.
	Mkdir(name string, perm os.FileMode) error
	// Lstat describes name without following a symlink. The FileInfo's
	// Sys is a *syscall.Stat_t (as the os package's is) whose Dev and Ino
	// identify the file, so that hard links can be recognised.
	Lstat(name string) (os.FileInfo, error)
	Chtimes(name string, atime, mtime time.Time) error
	// SyncDir fsyncs the directory name, making its entries durable.
	SyncDir(name string) error
}

// File is an open file of an FS. Safe for concurrent WriteAt and Sync.
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Chmod(mode os.FileMode) error
}

// TreeFS is implemented by an FS that can make what a tree holds besides
// regular files: symbolic links, and directory modes. Names resolve as
// for FS (never out of the root).
type TreeFS interface {
	// Symlink creates name as a symbolic link holding target; it fails
	// with an error matching fs.ErrExist if name exists.
	Symlink(target, name string) error
	// Readlink returns the target of the symbolic link name.
	Readlink(name string) (string, error)
	// Chmod sets name's permission bits, following a symlink (callers
	// Lstat first).
	Chmod(name string, mode os.FileMode) error
}

// FreeSpacer is implemented by an FS that can report the bytes available
// to the daemon.
type FreeSpacer interface {
	FreeSpace() (int64, error)
}

// OSFS is the local file system under a root directory, with every name
// resolved by os.Root: no name escapes the root, through "..", an absolute
// path or a symlink.
type OSFS struct {
	root *os.Root
	dirs dirCache // open handles of recently used directories, for Lstat
	// rootDir is the root directory, open since OpenOSFS, for SyncFS:
	// syncfs reports the writeback errors since the handle was opened.
	rootDir *os.File
}

var (
	_ FS         = (*OSFS)(nil)
	_ TreeFS     = (*OSFS)(nil)
	_ FreeSpacer = (*OSFS)(nil)
	_ DirReader  = (*OSFS)(nil)
	_ FSSyncer   = (*OSFS)(nil)
)

// OpenOSFS opens dir (creating it with mode 0o750 if absent) as an OSFS.
//
// Only dir itself is created, never its parents: a mistyped --root
// (/srv/inbx/new) should fail with a clear line, not grow a tree in the
// wrong place (issue 8). The error wraps fs.ErrNotExist when the parent is
// missing.
func OpenOSFS(dir string) (*OSFS, error) {
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("creating root %s: its parent directory does not exist; create it first (ferryd creates only the root itself): %w",
				dir, fs.ErrNotExist)
		}
		return nil, err
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	d, err := r.Open(".")
	if err != nil {
		_ = r.Close() // the open error is the one to report
		return nil, err
	}
	return &OSFS{root: r, rootDir: d}, nil
}

// Close releases the root and the directory handles it keeps.
func (f *OSFS) Close() error {
	f.dirs.close()
	derr := f.rootDir.Close()
	if err := f.root.Close(); err != nil {
		return err
	}
	return derr
}

// Name returns the root directory's path.
func (f *OSFS) Name() string { return f.root.Name() }

// OpenFile implements FS with os.Root.OpenFile of name's last component
// in its parent directory, whose handle is kept as for Lstat (dirCache):
// a partial's data file is opened with one openat, not three.
func (f *OSFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	var file *os.File
	err := f.atParent(name, func(r *os.Root, name string) (err error) {
		file, err = r.OpenFile(name, flag, perm)
		return err
	})
	if err != nil {
		return nil, err // not a nil *os.File in a File
	}
	return file, nil
}

// Remove implements FS with os.Root.Remove, of name's last component in
// its parent directory's kept handle, as OpenFile.
func (f *OSFS) Remove(name string) error {
	f.dirs.forget(name)
	return f.atParent(name, (*os.Root).Remove)
}

// atParent runs op with the kept handle of name's parent directory and
// name's last component (cachedParent), or with the root and name when
// the parent is not kept.
func (f *OSFS) atParent(name string, op func(r *os.Root, name string) error) error {
	d, base := f.cachedParent(name)
	if d == nil {
		return op(f.root, name)
	}
	defer f.dirs.put(d)
	return op(d.root, base)
}

// cachedParent returns the kept handle of name's parent directory (give
// it back with f.dirs.put) and name's last component, or nil when name
// is at the top of the root, is not a plain name, or its parent cannot be
// opened as a directory under the root (os.Root then says why).
func (f *OSFS) cachedParent(name string) (*cachedDir, string) {
	dir, base := path.Split(name)
	if dir == "" || base == "" || base == "." || base == ".." {
		return nil, ""
	}
	return f.dirs.get(f.root, dir[:len(dir)-1]), base
}

// Rename implements FS with os.Root.Rename.
func (f *OSFS) Rename(oldname, newname string) error {
	f.dirs.forget(oldname)
	f.dirs.forget(newname)
	return f.root.Rename(oldname, newname)
}

// Link implements FS with linkat(2) between the kept handles of both
// names' parent directories (see OpenFile), which follows no symlink, or
// with os.Root.Link when a parent is not kept.
func (f *OSFS) Link(oldname, newname string) error {
	od, ob := f.cachedParent(oldname)
	if od == nil {
		return f.root.Link(oldname, newname)
	}
	defer f.dirs.put(od)
	nd, nb := f.cachedParent(newname)
	if nd == nil {
		return f.root.Link(oldname, newname)
	}
	defer f.dirs.put(nd)
	of, err1 := od.dirFile()
	nf, err2 := nd.dirFile()
	if err1 != nil || err2 != nil {
		return f.root.Link(oldname, newname)
	}
	err := linkAt(of, ob, nf, nb, oldname, newname)
	if errors.Is(err, errors.ErrUnsupported) {
		return f.root.Link(oldname, newname)
	}
	return err
}

// Mkdir implements FS with os.Root.Mkdir.
func (f *OSFS) Mkdir(name string, perm os.FileMode) error {
	f.dirs.forget(name)
	return f.root.Mkdir(name, perm)
}

// Lstat implements FS: os.Root.Lstat of name's last component in its
// parent directory, whose handle is kept for dirCacheAge (see dirCache),
// so that a tree's quick checks cost one fstatat each rather than an
// open and close per directory on the path.
//
// A parent found missing is remembered for as long (dirCache.missing),
// so that the quick checks of a new tree's files, whose directories do
// not exist yet, cost no lookup at all.
func (f *OSFS) Lstat(name string) (os.FileInfo, error) {
	dir := path.Dir(name)
	if dir != "." && f.dirs.isMissing(dir) {
		return nil, &fs.PathError{Op: "statat", Path: name, Err: syscall.ENOENT}
	}
	d, base := f.cachedParent(name)
	if d == nil {
		// Not a directory under the root (missing, a file, a symlink
		// out): os.Root says which, as it always did.
		fi, err := f.root.Lstat(name)
		if dir != "." && errors.Is(err, syscall.ENOENT) {
			f.dirs.noteMissing(dir)
		}
		return fi, err
	}
	defer f.dirs.put(d)
	return d.root.Lstat(base)
}

// Chtimes implements FS with os.Root.Chtimes, of name's last component
// in its parent directory's kept handle, as OpenFile.
func (f *OSFS) Chtimes(name string, atime, mtime time.Time) error {
	return f.atParent(name, func(r *os.Root, name string) error { return r.Chtimes(name, atime, mtime) })
}

// Symlink implements TreeFS with os.Root.Symlink.
func (f *OSFS) Symlink(target, name string) error {
	f.dirs.forget(name)
	return f.root.Symlink(target, name)
}

// Readlink implements TreeFS with os.Root.Readlink.
func (f *OSFS) Readlink(name string) (string, error) { return f.root.Readlink(name) }

// Chmod implements TreeFS with os.Root.Chmod.
func (f *OSFS) Chmod(name string, mode os.FileMode) error { return f.root.Chmod(name, mode) }

// ReadDir returns the sorted entry names of the directory name.
func (f *OSFS) ReadDir(name string) ([]string, error) {
	d, err := f.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer d.Close() //nolint:errcheck // read-only directory handle
	names, err := d.Readdirnames(-1)
	slices.Sort(names)
	return names, err
}

// SyncDir opens the directory under the root and fsyncs it.
func (f *OSFS) SyncDir(name string) error {
	d, err := f.root.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// FreeSpace returns the bytes available to unprivileged users on the file
// system holding the root (statfs f_bavail × f_bsize).
func (f *OSFS) FreeSpace() (int64, error) {
	rc, err := f.rootDir.SyscallConn()
	if err != nil {
		return 0, err
	}
	var st syscall.Statfs_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fstatfs(int(fd), &st) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// parentDir returns the directory holding name ("." for a top-level name).
func parentDir(name string) string { return path.Dir(name) }

// isNotExist reports whether err says a file does not exist.
func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
