package daemon

import (
	"errors"
	"os"
	"syscall"
	"unsafe"
)

// DirectOpener is implemented by an FS that can open a file for writes
// that bypass the page cache (O_DIRECT on Linux).
//
// Why: on the virtual machines ferry was measured on, copying received
// data into fresh page-cache pages costs about 2.4 s of CPU per GiB, more
// than hashing it four times; an O_DIRECT write of the same GiB costs about
// 0.5 s (bench/results.json, issue 4). A collector also has no use for
// caching what it will rarely read back.
type DirectOpener interface {
	// OpenDirect opens name write-only for direct I/O. Writes through it
	// must be DirectAlign-aligned in offset, length and memory.
	OpenDirect(name string) (File, error)
}

// DirectAlign is the alignment in bytes of direct writes: offset, length
// and buffer address. 4096 covers devices of 512 and 4096-byte sectors.
const DirectAlign = 4096

var _ DirectOpener = (*OSFS)(nil)

// OpenDirect implements DirectOpener with O_DIRECT.
func (f *OSFS) OpenDirect(name string) (File, error) {
	return f.root.OpenFile(name, os.O_WRONLY|syscall.O_DIRECT, 0)
}

// directAligned reports whether b can be written at off with direct I/O.
func directAligned(b []byte, off int64) bool {
	return len(b) > 0 && off%DirectAlign == 0 && len(b)%DirectAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(b)))%DirectAlign == 0
}

// alignedAt returns the index i in buf such that &buf[i+skip] is
// DirectAlign-aligned, so that data following a skip-byte header can be
// written with direct I/O straight from the receive buffer. buf must have
// DirectAlign bytes of slack.
func alignedAt(buf []byte, skip int) int {
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(buf))) + uintptr(skip)
	return int((DirectAlign - addr%DirectAlign) % DirectAlign)
}

// openDirect opens a direct-I/O handle on the partial's data when the
// store allows it and the file system supports it; nil otherwise (tmpfs,
// some FUSE and network file systems refuse O_DIRECT with EINVAL).
func (s *DirStore) openDirect(dataPath string) File {
	do, ok := s.fs.(DirectOpener)
	if !s.DirectIO || !ok {
		return nil
	}
	f, err := do.OpenDirect(dataPath)
	if err != nil {
		return nil
	}
	return f
}

// writeAt writes b at off, directly when it is aligned and a direct
// handle is open, through the page cache otherwise (the file's last,
// short chunk). A file system that refuses a direct write with EINVAL
// loses its direct handle and the write is retried buffered.
func (p *dirPartial) writeAt(b []byte, off int64) error {
	if !p.directTried && directAligned(b, off) && off+int64(len(b)) < p.st.Size {
		p.directTried = true
		dataPath, _, _ := p.s.paths(p.key)
		p.direct = p.s.openDirect(dataPath)
	}
	if p.direct != nil && directAligned(b, off) {
		_, err := p.direct.WriteAt(b, off)
		if !errors.Is(err, syscall.EINVAL) {
			return err
		}
		// A direct handle buffers nothing, and the fsync through p.f
		// covers what was written through it.
		_ = p.direct.Close()
		p.direct = nil
	}
	_, err := p.f.WriteAt(b, off)
	return err
}
