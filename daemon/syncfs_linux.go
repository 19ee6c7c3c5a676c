package daemon

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// SyncFS implements FSSyncer with syncfs(2) on the root directory's
// handle, which OpenOSFS opened before the store wrote anything: since
// Linux 5.8 syncfs reports a writeback error that happened on the file
// system since that handle last reported one.
func (f *OSFS) SyncFS() error {
	rc, err := f.rootDir.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Syncfs(int(fd)) }); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "syncfs", Path: f.root.Name(), Err: serr}
	}
	return nil
}

// syncFSReportsErrors reports whether this kernel's syncfs returns
// writeback errors (Linux 5.8 and later); before, it returned 0 even when
// data was lost.
func syncFSReportsErrors() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 5, 8)
}

// kernelAtLeast reports whether the release string (uname -r, e.g.
// "6.1.0-18-amd64") names version major.minor or later.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi := parts[1]
	if i := strings.IndexFunc(mi, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		mi = mi[:i]
	}
	mn, err2 := strconv.Atoi(mi)
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mn >= minor
}

// dirtyBytes returns Dirty plus Writeback from /proc/meminfo in bytes:
// the data of every file system waiting to be written back.
func dirtyBytes() (int64, bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	return parseDirty(b)
}

func parseDirty(meminfo []byte) (int64, bool) {
	var n int64
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != "Dirty" && name != "Writeback" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		n += kb << 10
		found++
	}
	return n, found == 2
}

// linkAt links the entry oldbase of the directory od at newbase in nd
// (linkat(2) without AT_SYMLINK_FOLLOW: a symlink is linked, never
// followed; an existing newbase fails with EEXIST). Errors are
// *os.LinkError naming oldname and newname.
func linkAt(od *os.File, oldbase string, nd *os.File, newbase, oldname, newname string) error {
	orc, err := od.SyscallConn()
	if err != nil {
		return err
	}
	nrc, err := nd.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	cerr := orc.Control(func(ofd uintptr) {
		if err := nrc.Control(func(nfd uintptr) { lerr = unix.Linkat(int(ofd), oldbase, int(nfd), newbase, 0) }); err != nil {
			lerr = err
		}
	})
	if cerr != nil {
		return cerr
	}
	if lerr != nil {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: lerr}
	}
	return nil
}
