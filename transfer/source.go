package transfer

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Source is a file to send: random access to its bytes plus the metadata
// that goes into an Offer.
type Source struct {
	R       io.ReaderAt
	Size    int64       // bytes
	Mode    os.FileMode // permission bits are sent
	ModTime time.Time
	Inode   uint64 // 0 if unknown
	// Changed, if set, reports whether the file changed since it was
	// opened (its size or mtime differ now). Send calls it before the
	// trailer, so that a file modified while it was read is never
	// committed as a mix of old and new bytes: Send fails with
	// ErrSourceChanged instead, and the retry starts over.
	Changed func() (bool, error)
	// Hole, if set, reports whether [off, off+n) lies in a hole of a
	// sparse file (reads as zeros, occupies no block): such a chunk is
	// sent as a ZeroChunk, without its bytes, and not read. FileSource
	// sets it on Linux for a file that allocates fewer blocks than its
	// size needs (SEEK_DATA). A false answer only costs the bytes.
	Hole func(off, n int64) bool
}

// FileSource describes an open regular file f as a Source. It returns an
// error if f is not a regular file.
func FileSource(f *os.File) (Source, error) {
	fi, err := f.Stat()
	if err != nil {
		return Source{}, err
	}
	if !fi.Mode().IsRegular() {
		return Source{}, fmt.Errorf("%s: not a regular file", f.Name())
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	changed := func() (bool, error) {
		now, err := f.Stat()
		if err != nil {
			return false, err
		}
		return now.Size() != fi.Size() || !now.ModTime().Equal(fi.ModTime()), nil
	}
	return Source{R: f, Size: fi.Size(), Mode: fi.Mode(), ModTime: fi.ModTime(), Inode: ino, Changed: changed,
		Hole: holeFinder(f, fi)}, nil
}

// offer builds the Offer for s under name, reading its identity prefix.
func (s Source) offer(name string) (*Offer, error) {
	n := min(s.Size, IdentityPrefix)
	buf := make([]byte, n)
	if _, err := s.R.ReadAt(buf, 0); err != nil && !(err == io.EOF && n == 0) {
		return nil, fmt.Errorf("reading identity prefix: %w", err)
	}
	return &Offer{
		Size:     s.Size,
		Mode:     uint32(s.Mode.Perm()),
		MtimeNs:  s.ModTime.UnixNano(),
		Inode:    s.Inode,
		PrefixID: HashBytes(buf),
		Name:     name,
	}, nil
}

// readFull reads len(p) bytes at off from s, turning a short read into
// ErrSourceChanged: the file shrank after it was offered.
func (s Source) readFull(p []byte, off int64) error {
	n, err := s.R.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == io.EOF || err == nil {
		return fmt.Errorf("%w: short read at offset %d", ErrSourceChanged, off+int64(n))
	}
	return fmt.Errorf("reading source at offset %d: %w", off+int64(n), err)
}
