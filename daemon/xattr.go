package daemon

import (
	"encoding/binary"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ferry-dev/ferry/transfer"
)

// hashXattr is the extended attribute in which the daemon keeps a
// committed file's BLAKE3 with the size and mtime it was taken at, so that
// `ferry send --checksum` on an unchanged file is answered without
// re-reading it. Layout: 32 bytes of hash, size (u64, bytes) and mtime
// (i64, ns since the epoch), big-endian: 48 bytes.
const hashXattr = "user.ferry.blake3"

const hashRecordLen = transfer.HashSize + 16

// setStoredHash records h for f's data of size bytes and mtime mtimeNs.
// It is set before the commit's fsync, so that it is durable with the
// data. File systems without user xattrs (and FS seams whose files are
// not OS files) keep no record: the daemon then re-hashes on --checksum.
func setStoredHash(f File, h transfer.Hash, size, mtimeNs int64) {
	sc, ok := f.(syscall.Conn)
	if !ok {
		return
	}
	rec := make([]byte, 0, hashRecordLen)
	rec = append(rec, h[:]...)
	rec = binary.BigEndian.AppendUint64(rec, uint64(size))
	rec = binary.BigEndian.AppendUint64(rec, uint64(mtimeNs))
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.Fsetxattr(int(fd), hashXattr, rec, 0) // unsupported: no record, re-hash later
	})
}

// osFile is what storedHash needs of a committed file: an *os.File has
// it.
type osFile interface {
	Stat() (os.FileInfo, error)
	SyscallConn() (syscall.RawConn, error)
}

// storedHash returns the BLAKE3 recorded for the committed file f, if its
// record exists and was taken at f's current size and mtime, which must
// also be the offered size and mtimeNs. A file changed since (its mtime
// or size moved) falls back to a re-hash. An edit that keeps both size
// and mtime is not noticed, as with the quick check.
func storedHash(f CommittedFile, size, mtimeNs int64) (transfer.Hash, bool) {
	var h transfer.Hash
	if hs, ok := f.(HashStorer); ok {
		return hs.StoredHash(size, mtimeNs)
	}
	of, ok := f.(osFile)
	if !ok {
		return h, false
	}
	fi, err := of.Stat()
	if err != nil || fi.Size() != size || fi.ModTime().UnixNano() != mtimeNs {
		return h, false
	}
	rec := make([]byte, hashRecordLen+1)
	var n int
	rc, err := of.SyscallConn()
	if err != nil {
		return h, false
	}
	cerr := rc.Control(func(fd uintptr) {
		n, err = unix.Fgetxattr(int(fd), hashXattr, rec)
	})
	if cerr != nil || err != nil || n != hashRecordLen {
		return h, false
	}
	if int64(binary.BigEndian.Uint64(rec[32:])) != size || int64(binary.BigEndian.Uint64(rec[40:])) != mtimeNs {
		return h, false
	}
	copy(h[:], rec)
	return h, true
}
