package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// errNotSame is what openEntry's (and warn's) err wraps when the file at
// an entry's path is not the one the walk saw: it was replaced, by another
// file or a symlink, or a directory on its path was (issue 8: a private
// key swapped in for tree/z.txt was uploaded as tree/z.txt).
var errNotSame = errors.New("replaced since it was listed (not the file the walk saw); skipped")

// openEntry opens the file the walk saw as e, for reading. It opens e's
// PATH (following it if it is a symlink, as the walk did), then each
// component below it with O_NOFOLLOW, so that no symlink below the PATH is
// followed, and checks that what it opened is a regular file with the
// device and inode number the walk recorded.
//
// It returns an error wrapping errNotSame if a component is now a symlink
// or not a directory, or the file is not the same regular file; otherwise
// the error from opening (wrapping a syscall.Errno, e.g. ENOENT when the
// file was removed, EACCES). Errors do not repeat e.Local: the caller
// names the file. The returned file's Name is e.Local; the caller closes
// it.
func openEntry(e entry) (*os.File, error) {
	fd, err := openBelow(e.top, e.rel)
	if err != nil {
		return nil, err
	}
	return checkOpened(fd, e)
}

// checkOpened checks that fd, just opened for e, is the regular file the
// walk saw, and returns it as e.Local; it closes fd on error.
func checkOpened(fd int, e entry) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = unix.Close(fd) // read-only descriptor; the error at hand is the one to report
		return nil, fmt.Errorf("reading metadata: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || uint64(st.Dev) != e.Dev || st.Ino != e.Ino {
		_ = unix.Close(fd) // read-only descriptor; the error at hand is the one to report
		return nil, errNotSame
	}
	// O_NONBLOCK kept the open from hanging on a named pipe swapped in;
	// a regular file does not need it.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, 0); err != nil { // one call: O_NONBLOCK is the only status flag set
		_ = unix.Close(fd) // read-only descriptor; the error at hand is the one to report
		return nil, fmt.Errorf("opening: %w", err)
	}
	return os.NewFile(uintptr(fd), e.Local), nil
}

// openBelow opens top, then each slash-separated component of rel in turn
// without following symlinks, and returns the last descriptor: the file.
// With rel == "", top is the file.
func openBelow(top, rel string) (int, error) {
	const file = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY
	if rel == "" {
		fd, err := openRetry(func() (int, error) { return unix.Open(top, file, 0) })
		if err != nil {
			return -1, fmt.Errorf("opening: %w", err)
		}
		return fd, nil
	}
	dir, err := openRetry(func() (int, error) {
		return unix.Open(top, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			return -1, errNotSame
		}
		return -1, fmt.Errorf("opening %s: %w", escapeName(top), err)
	}
	for {
		name, rest, more := strings.Cut(rel, "/")
		flags := file | unix.O_NOFOLLOW
		if more {
			flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		}
		fd, err := openRetry(func() (int, error) { return unix.Openat(dir, name, flags, 0) })
		_ = unix.Close(dir) // read-only descriptor; the error at hand is the one to report
		switch {
		case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
			// A symlink (O_NOFOLLOW), or a file where a directory was.
			return -1, errNotSame
		case err != nil && more:
			return -1, fmt.Errorf("opening directory %s: %w", escapeName(name), err)
		case err != nil:
			return -1, fmt.Errorf("opening: %w", err)
		case !more:
			return fd, nil
		}
		dir, rel = fd, rest
	}
}

// entryOpener opens entries as openEntry does, keeping the directory of
// the last one open, so that the files of one directory cost one open
// each, not one per component of their path (issue 9). The directory was
// opened as openEntry opens it (its PATH followed, each component below
// with O_NOFOLLOW), and each file is opened in it with O_NOFOLLOW and
// checked against the walk's device and inode: it is always the file the
// walk saw. A directory on the path swapped since the handle was opened
// is not followed either: the handle still names the directory the walk
// read. Safe for concurrent use.
type entryOpener struct {
	mu       sync.Mutex
	top, dir string // the open directory: rel dir below top
	fd       int    // -1 when none is open
}

func newEntryOpener() *entryOpener { return &entryOpener{fd: -1} }

// open opens e; see openEntry for the errors.
func (o *entryOpener) open(e entry) (*os.File, error) {
	if e.rel == "" {
		return openEntry(e) // the PATH itself
	}
	dir, base := "", e.rel
	if i := strings.LastIndexByte(e.rel, '/'); i >= 0 {
		dir, base = e.rel[:i], e.rel[i+1:]
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fd < 0 || o.top != e.top || o.dir != dir {
		o.closeLocked()
		fd, err := openDirBelow(e.top, dir)
		if err != nil {
			return nil, err
		}
		o.fd, o.top, o.dir = fd, e.top, dir
	}
	const file = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_NOFOLLOW
	fd, err := openRetry(func() (int, error) { return unix.Openat(o.fd, base, file, 0) })
	switch {
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
		return nil, errNotSame
	case err != nil:
		return nil, fmt.Errorf("opening: %w", err)
	}
	return checkOpened(fd, e)
}

// Close closes the directory kept open.
func (o *entryOpener) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closeLocked()
	return nil
}

func (o *entryOpener) closeLocked() {
	if o.fd >= 0 {
		_ = unix.Close(o.fd) // read-only directory handle
		o.fd = -1
	}
}

// openDirBelow opens top (following it, as the walk does), then each
// slash-separated component of rel as a directory without following
// symlinks, and returns the last descriptor. Errors are openBelow's.
func openDirBelow(top, rel string) (int, error) {
	const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC
	dir, err := openRetry(func() (int, error) { return unix.Open(top, dirFlags, 0) })
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			return -1, errNotSame
		}
		return -1, fmt.Errorf("opening %s: %w", escapeName(top), err)
	}
	for rel != "" {
		name, rest, _ := strings.Cut(rel, "/")
		fd, err := openRetry(func() (int, error) { return unix.Openat(dir, name, dirFlags|unix.O_NOFOLLOW, 0) })
		_ = unix.Close(dir) // read-only descriptor; the error at hand is the one to report
		switch {
		case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
			return -1, errNotSame
		case err != nil:
			return -1, fmt.Errorf("opening directory %s: %w", escapeName(name), err)
		}
		dir, rel = fd, rest
	}
	return dir, nil
}
