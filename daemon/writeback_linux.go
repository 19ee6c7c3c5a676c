package daemon

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing [off, off+n) of f to
// disk now (sync_file_range with SYNC_FILE_RANGE_WRITE), so that the
// group commit's fsync finds the data already on its way. It makes
// nothing durable: the fsync still does that. Best effort: a file that is
// not an *os.File, or an error, is ignored.
func startWriteback(f File, off, n int64) {
	of, ok := f.(*os.File)
	if !ok {
		return
	}
	rc, err := of.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE) // a hint; fsync reports errors
	})
}
