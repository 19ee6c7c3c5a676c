package daemon

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ferry-dev/ferry/transfer"
)

// preallocate reserves size bytes of blocks for f without changing its
// size (FALLOC_FL_KEEP_SIZE), so that the durable offset stays the only
// length that counts. A file system that cannot (EOPNOTSUPP, ENOSYS), or
// a File without a descriptor, is left alone; no space wraps
// transfer.ErrNoSpace.
func preallocate(f File, size int64) error {
	fd, ok := f.(interface{ Fd() uintptr })
	if !ok {
		return nil
	}
	for {
		err := unix.Fallocate(int(fd.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, size)
		switch {
		case err == nil, errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
			return fmt.Errorf("%w: reserving %d bytes for the partial: %v", transfer.ErrNoSpace, size, err)
		}
		return fmt.Errorf("reserving %d bytes for the partial: %w", size, err)
	}
}
