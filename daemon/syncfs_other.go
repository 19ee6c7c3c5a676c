//go:build !linux

package daemon

import "errors"

// SyncFS implements FSSyncer; without syncfs(2) it always fails, and
// SyncFSWhenQuiet never calls it.
func (f *OSFS) SyncFS() error { return errors.New("syncfs is Linux only") }

func syncFSReportsErrors() bool { return false }

func dirtyBytes() (int64, bool) { return 0, false }
