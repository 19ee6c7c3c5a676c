package transfer

import (
	"errors"
	"os"
	"syscall"
)

// seekData is lseek's SEEK_DATA on Linux: the next offset at or after the
// one given that holds data (ENXIO when none does).
const seekData = 3

// holeFinder returns a Source.Hole for f, or nil when f has no holes to
// find: it allocates at least as many blocks as its size needs (a file
// with holes allocates fewer), so that a file without holes pays no
// lseek per chunk.
func holeFinder(f *os.File, fi os.FileInfo) func(off, n int64) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Blocks*512 >= fi.Size() {
		return nil
	}
	return func(off, n int64) bool {
		next, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			return true // no data at or after off: a hole to the end
		}
		return err == nil && next >= off+n
	}
}
