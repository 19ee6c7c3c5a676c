package daemon

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ferry-dev/ferry/transfer"
)

// fallocate reserves size bytes of blocks for f without changing its
// size (FALLOC_FL_KEEP_SIZE), so that the durable offset stays the only
// length that counts, and reports whether it did. A file system that
// cannot (EOPNOTSUPP, ENOSYS), or a File without a descriptor, is left
// alone; no space wraps transfer.ErrNoSpace.
func fallocate(f File, size int64) (bool, error) {
	fd, ok := f.(interface{ Fd() uintptr })
	if !ok {
		return false, nil
	}
	for {
		err := unix.Fallocate(int(fd.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, size)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
			return false, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
			// The partial is new and empty: give back whatever blocks
			// the failed call took beyond its end.
			_ = f.Truncate(0)
			return false, fmt.Errorf("%w: reserving %d bytes for the partial: %v", transfer.ErrNoSpace, size, err)
		}
		return false, fmt.Errorf("reserving %d bytes for the partial: %w", size, err)
	}
}

// Preallocator is implemented by a Partial that can reserve the blocks
// of its remaining bytes at once (fallocate). The session calls it after
// admission has promised those bytes, and then stops promising them:
// free space counts them from then on.
type Preallocator interface {
	// Preallocate reserves the blocks and reports whether it did. Errors
	// wrap transfer.ErrNoSpace when they do not fit.
	Preallocate() (bool, error)
}

// Preallocate implements Preallocator for a partial of a file that is not
// sparse (OfferSparse) and spans more than one chunk, when
// DirStore.Preallocate is set: new or resumed, it reserves blocks up to
// the file's size (fallocate keeps those it already has).
func (p *dirPartial) Preallocate() (bool, error) {
	if !p.s.Preallocate || !p.dense {
		return false, nil
	}
	did, err := fallocate(p.f, p.st.Size)
	p.prealloc = did
	return did, err
}

// trimPrealloc gives back the blocks f holds past its end, up to size,
// (a truncate to its own size, then FALLOC_FL_PUNCH_HOLE past it). Best effort: a failure only leaves blocks
// that the partial's expiry frees.
func trimPrealloc(f File, size int64) {
	fd, ok := f.(interface {
		Fd() uintptr
		Stat() (os.FileInfo, error)
	})
	if !ok {
		return
	}
	fi, err := fd.Stat()
	if err != nil || fi.Size() >= size {
		return
	}
	// ext4 frees blocks past the end on a truncate to the same size but
	// will not punch past it; tmpfs and others punch.
	_ = unix.Ftruncate(int(fd.Fd()), fi.Size())
	_ = unix.Fallocate(int(fd.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, fi.Size(), size-fi.Size())
}

// preallocate has p reserve its remaining bytes' blocks when it can, and
// then turns res's promise of them into those blocks: free space counts
// them from now on, so admission must not count them twice.
func preallocate(p Partial, res *reservation, remaining int64) error {
	pa, ok := p.(Preallocator)
	if !ok {
		return nil
	}
	did, err := pa.Preallocate()
	if did {
		res.consume(remaining)
	}
	return err
}
