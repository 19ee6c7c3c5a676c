package daemon

import (
	"errors"
	"fmt"
	"os"
	"path"

	"golang.org/x/sys/unix"

	"github.com/ferry-dev/ferry/transfer"
)

// lockFile is the file, relative to the root, whose lock a daemon holds
// while it uses the root.
var lockFile = path.Join(transfer.ReservedDir, "lock")

// ErrRootLocked is returned by LockRoot when another process holds the
// root's lock.
var ErrRootLocked = errors.New("locked by another process")

// RootLock is the exclusive lock on a root. A root has one daemon: two
// daemons on one root once committed one sender's file with another's
// content, while telling the first sender it had succeeded (issue 8).
// Tools that change partials take the same lock.
type RootLock struct {
	f *os.File
}

// LockRoot takes the exclusive lock on fsys's root (flock on
// ROOT/.ferry/lock, created 0600 if missing), without waiting. It returns
// an error wrapping ErrRootLocked, which names the root and says that
// another ferryd is probably running on it, when another process (or
// another LockRoot in this one) holds the lock. The lock lasts until
// Close or the process ends.
func LockRoot(fsys *OSFS) (*RootLock, error) {
	if err := mkdirs(fsys, transfer.ReservedDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", transfer.ReservedDir, err)
	}
	f, err := fsys.root.OpenFile(lockFile, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close() // the lock error is the one to report
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("root %s is %w (%s): another ferryd is probably running on it",
				fsys.Name(), ErrRootLocked, lockFile)
		}
		return nil, fmt.Errorf("locking %s: %w", lockFile, err)
	}
	return &RootLock{f: f}, nil
}

// Close releases the lock.
func (l *RootLock) Close() error { return l.f.Close() }
