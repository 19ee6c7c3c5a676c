package daemon

import (
	"log/slog"
	"sync/atomic"
)

// FSSyncer is implemented by an FS that can make everything written
// through it durable in one call (syncfs(2) on Linux).
type FSSyncer interface {
	// SyncFS makes durable the data, size, mode and mtime of every file
	// and the entries of every directory of the file system, as they were
	// when it was called. It returns an error if writeback of anything on
	// the file system failed since the FS was opened or since SyncFS last
	// returned an error; the error does not say which file, so a caller
	// that gets one must fsync each file it needs to know about (each
	// file's own fsync reports its own writeback errors once).
	SyncFS() error
}

// DirSyncer is implemented by a SyncStrategy that can also make many
// directories' entries durable at once.
type DirSyncer interface {
	// SyncDirs makes the entries of every directory durable after a
	// group of files files was linked into place, or reports false when
	// it did not and the caller must fsync each directory.
	SyncDirs(files int) bool
}

// SyncFSWhenQuiet is the group-commit SyncStrategy of a DirStore on the
// local file system: it makes a group's files durable with one syncfs(2)
// (FSSyncer) when the machine holds little dirty data, and with Fallback
// otherwise. syncfs writes back everything dirty on the file system, not
// only the group's files: alone it is the cheapest way to make many small
// files durable (one flush of the device for the group instead of one per
// file, and no per-file inode write), beside a process writing a large
// file it waits for that file too (bench/doc.go, "Fsync strategies"). It
// is used only while Dirty plus Writeback in /proc/meminfo are at most
// MaxDirty, and never again once it returned an error (the group then
// falls back, so that each file's fsync reports its own error). As a
// DirSyncer it makes the group's directory entries durable with a second
// syncfs, instead of one fsync per directory.
type SyncFSWhenQuiet struct {
	// FS is the file system to sync.
	FS FSSyncer
	// Fallback makes a group durable when syncfs is not used; nil means
	// ParallelFsync{}.
	Fallback SyncStrategy
	// MaxDirty is the most dirty data, in bytes, the machine may hold for
	// syncfs to be used; 0 means DefaultMaxDirty.
	MaxDirty int64
	// Dirty returns the bytes of dirty data the machine holds and whether
	// it could tell; nil means dirtyBytes (/proc/meminfo). A machine
	// that cannot tell never uses syncfs.
	Dirty func() (int64, bool)
	// Log gets one warning when a syncfs fails and group commits fall
	// back for good; nil means slog.Default().
	Log *slog.Logger

	off atomic.Bool // a SyncFS failed, or the kernel cannot report errors: fall back for good
}

// DefaultMaxDirty is SyncFSWhenQuiet's default limit of dirty data: 32
// MiB, which this machine's disk writes back in well under a second.
const DefaultMaxDirty = 32 << 20

var (
	_ SyncStrategy = (*SyncFSWhenQuiet)(nil)
	_ DirSyncer    = (*SyncFSWhenQuiet)(nil)
)

// NewSyncFSWhenQuiet returns the strategy for fs, which falls back to
// ParallelFsync for good where syncfs does not report writeback errors
// (Linux before 5.8, other systems).
func NewSyncFSWhenQuiet(fs FSSyncer) *SyncFSWhenQuiet {
	s := &SyncFSWhenQuiet{FS: fs}
	if !syncFSReportsErrors() {
		s.off.Store(true)
	}
	return s
}

func (s *SyncFSWhenQuiet) fallback() SyncStrategy {
	if s.Fallback != nil {
		return s.Fallback
	}
	return ParallelFsync{}
}

// quiet reports whether syncfs is to be used now.
func (s *SyncFSWhenQuiet) quiet() bool {
	if s.off.Load() || s.FS == nil {
		return false
	}
	dirty := s.Dirty
	if dirty == nil {
		dirty = dirtyBytes
	}
	n, ok := dirty()
	limit := s.MaxDirty
	if limit <= 0 {
		limit = DefaultMaxDirty
	}
	return ok && n <= limit
}

// syncFS runs one syncfs; a failure turns syncfs off for good, with one
// warning: the operator sees why group commits cost more from then on.
func (s *SyncFSWhenQuiet) syncFS() bool {
	err := s.FS.SyncFS()
	if err == nil {
		return true
	}
	if s.off.CompareAndSwap(false, true) {
		log := s.Log
		if log == nil {
			log = slog.Default()
		}
		log.Warn("syncfs failed: group commits fsync each file and directory from now on; check the disk and the kernel log", "err", err)
	}
	return false
}

// SyncFiles implements SyncStrategy.
func (s *SyncFSWhenQuiet) SyncFiles(files []File) []error {
	if len(files) > 1 && s.quiet() && s.syncFS() {
		return make([]error, len(files))
	}
	return s.fallback().SyncFiles(files)
}

// SyncDirs implements DirSyncer. A group of one file (a lone transfer)
// has one or two directories to fsync, cheaper than a syncfs.
func (s *SyncFSWhenQuiet) SyncDirs(files int) bool {
	return files > 1 && s.quiet() && s.syncFS()
}

// Off reports whether syncfs was turned off for good (an error, or a
// kernel that does not report writeback errors to syncfs).
func (s *SyncFSWhenQuiet) Off() bool { return s.off.Load() }
