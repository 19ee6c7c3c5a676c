//go:build !linux

package daemon

import (
	"errors"
	"os"
)

// SyncFS implements FSSyncer; without syncfs(2) it always fails, and
// SyncFSWhenQuiet never calls it.
func (f *OSFS) SyncFS() error { return errors.New("syncfs is Linux only") }

func syncFSReportsErrors() bool { return false }

func dirtyBytes() (int64, bool) { return 0, false }

// linkAt reports errors.ErrUnsupported: OSFS.Link then uses os.Root.Link.
func linkAt(*os.File, string, *os.File, string, string, string) error {
	return errors.ErrUnsupported
}
