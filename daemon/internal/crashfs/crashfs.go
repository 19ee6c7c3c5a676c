// Package crashfs is a strict, in-memory daemon.FS that simulates power
// loss, in the spirit of pebble's vfs.NewStrictMem and its
// ResetToSyncedState. It keeps apart what was made durable and what only
// sits in the page cache, and throws the latter away on a crash.
//
// The rules are stricter than any real file system's, which is the point:
//
//   - A file's data, size, mode and mtime become durable when File.Sync
//     returns nil on one of its handles. Sync does not make the file's
//     directory entry durable.
//   - A directory's entries (files created, removed, renamed or linked into
//     it, directories made in it) become durable only when SyncDir names
//     that directory. A new directory's own entry is durable only once its
//     parent is synced.
//   - SyncFS (syncfs) makes all of the above durable for every file and
//     directory reachable from the root.
//   - Nothing else is ever durable.
//
// After ResetToSyncedState, a file exists if it can be reached from the
// root through durable entries, and it holds its durable contents.
//
// Hooks make the file system misbehave on purpose: CrashAtSync freezes it
// at the n-th sync operation (File.Sync, SyncDir and SyncFS count alike), before or
// after that sync takes effect; SetFault fails any operation with an error
// of the test's choosing (a failed File.Sync drops the file's unsynced data,
// as Linux does after an fsync error — "fsyncgate"; later syncs may
// succeed); SetSpaceLimit makes writes past a byte budget fail with ENOSPC.
//
// An FS is safe for concurrent use.
package crashfs

import (
	"errors"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/daemon"
)

// ErrCrashed is returned by every operation after a crash, until
// ResetToSyncedState, and forever by handles opened before the crash.
var ErrCrashed = errors.New("crashfs: file system crashed")

// OpKind names an operation, for fault hooks.
type OpKind int

// Operations passed to a FaultFunc.
const (
	OpOpen OpKind = iota + 1
	OpRead
	OpWrite
	OpSync    // File.Sync
	OpSyncDir // FS.SyncDir
	OpTruncate
	OpStat // File.Stat and FS.Lstat
	OpChmod
	OpChtimes
	OpRemove
	OpRename
	OpLink
	OpMkdir
	OpSyncFS // FS.SyncFS
)

var opNames = map[OpKind]string{
	OpOpen: "open", OpRead: "read", OpWrite: "write", OpSync: "sync", OpSyncDir: "syncdir",
	OpTruncate: "truncate", OpStat: "stat", OpChmod: "chmod", OpChtimes: "chtimes",
	OpRemove: "remove", OpRename: "rename", OpLink: "link", OpMkdir: "mkdir", OpSyncFS: "syncfs",
}

func (k OpKind) String() string { return opNames[k] }

// Op describes one operation about to take effect.
type Op struct {
	Kind OpKind
	Name string // the file or directory; for rename and link, the old name
	New  string // for rename and link, the new name
	Off  int64  // for read and write: the offset in bytes
	Len  int    // for read and write: the length in bytes
	// Seq counts operations of this Kind since New, this one included.
	Seq int
	// SyncSeq counts sync operations (OpSync, OpSyncDir and OpSyncFS
	// together) since New, this one included; 0 for other kinds.
	SyncSeq int
}

// FaultFunc decides whether op fails: a non-nil error fails it without
// effect (a failed OpSync also drops the file's unsynced data, see
// SetFsyncgate). It runs with the file system locked and must not call it.
type FaultFunc func(op Op) error

// Fsyncgate selects what a failed File.Sync does to the data it did not
// make durable.
type Fsyncgate int

const (
	// FsyncgateDrop reverts the file to its durable contents and size:
	// the unsynced writes are gone, for readers too. The default.
	FsyncgateDrop Fsyncgate = iota
	// FsyncgateKeepClean keeps the unsynced writes readable but marks them
	// clean, as Linux does: a later successful Sync does not persist them
	// (their range reads as zeros after a crash, at the file's later size).
	FsyncgateKeepClean
)

// FS is the simulated file system. The zero value is not usable; call New.
type FS struct {
	mu       sync.Mutex
	root     *inode
	nextIno  uint64
	gen      uint64 // bumped by ResetToSyncedState; older handles are dead
	crashed  bool
	crashAt  int  // sync sequence number to crash at; 0 if unarmed
	crashAft bool // crash after the sync takes effect
	crashOp  *Op  // the sync the crash happened at, if any
	notified bool // OnCrash ran for the current crash
	onCrash  func()
	fault    FaultFunc
	latency  func(op Op) time.Duration
	gate     Fsyncgate
	seq      map[OpKind]int
	syncs    int
	limit    int64 // bytes of file data; <0: unlimited
	used     int64 // bytes of file data in live, existing files
	handles  int   // open handles of the current generation
	report   bool  // FreeSpace reports limit-used
}

var (
	_ daemon.FS         = (*FS)(nil)
	_ daemon.FreeSpacer = (*FS)(nil)
	_ daemon.FSSyncer   = (*FS)(nil)
	_ daemon.File       = (*file)(nil)
)

// inode is a file or directory: its live state (what reads see) and its
// durable state (what survives a crash).
type inode struct {
	ino  uint64
	dir  bool
	dead bool // no links and no handles: its space is released

	data    []byte
	mode    os.FileMode // permission bits
	mtime   time.Time
	entries map[string]*inode // directories only

	sData    []byte
	sMode    os.FileMode
	sMtime   time.Time
	sEntries map[string]*inode

	// [dirtyLo, dirtyHi) is the range of data changed since the last
	// sync; empty when dirtyLo >= dirtyHi. dirtyHi may be MaxInt64.
	dirtyLo, dirtyHi int64

	nlink int // live entries naming it
	open  int // live handles
	// wbErr counts failed writebacks of the file (a failed SyncFS); a
	// handle opened before one reports it at its next Sync, once.
	wbErr int
}

// New returns an empty file system: a root directory, durable, with no
// entries.
func New() *FS {
	f := &FS{seq: make(map[OpKind]int), limit: -1}
	f.root = f.newInode(true, 0o755)
	f.root.nlink = 1
	return f
}

func (f *FS) newInode(dir bool, perm os.FileMode) *inode {
	f.nextIno++
	n := &inode{ino: f.nextIno, dir: dir, mode: perm & os.ModePerm, mtime: time.Unix(0, 0)}
	n.sMode, n.sMtime = n.mode, n.mtime
	if dir {
		n.entries = make(map[string]*inode)
		n.sEntries = make(map[string]*inode)
	}
	return n
}

// CrashAtSync arms a crash at the n-th sync operation from now (n ≥ 1;
// File.Sync and SyncDir count alike). If after is false the crash comes
// before that sync has any effect, otherwise right after it took effect.
// Either way the sync returns ErrCrashed, and so does every later
// operation, until ResetToSyncedState. n ≤ 0 disarms.
func (f *FS) CrashAtSync(n int, after bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashAt, f.crashAft = 0, after
	if n > 0 {
		f.crashAt = f.syncs + n
	}
}

// OnCrash sets a function called (without locks held) once the file
// system crashes, e.g. to cut the network connections of the "machine".
func (f *FS) OnCrash(fn func()) {
	f.mu.Lock()
	f.onCrash = fn
	f.mu.Unlock()
}

// SetFault installs fn (nil removes it).
func (f *FS) SetFault(fn FaultFunc) {
	f.mu.Lock()
	f.fault = fn
	f.mu.Unlock()
}

// SetLatency makes every operation (but Close) first sleep for the
// duration fn returns, without holding the file system: a slow disk, to
// widen races. fn sees Kind, Name, New, Off and Len, not the sequence
// numbers; it may be called concurrently. nil removes it.
func (f *FS) SetLatency(fn func(op Op) time.Duration) {
	f.mu.Lock()
	f.latency = fn
	f.mu.Unlock()
}

// pause applies the latency for op.
func (f *FS) pause(op Op) {
	f.mu.Lock()
	fn := f.latency
	f.mu.Unlock()
	if fn != nil {
		if d := fn(op); d > 0 {
			time.Sleep(d)
		}
	}
}

// SetFsyncgate selects what a failed File.Sync does; see Fsyncgate.
func (f *FS) SetFsyncgate(g Fsyncgate) {
	f.mu.Lock()
	f.gate = g
	f.mu.Unlock()
}

// SetSpaceLimit bounds the bytes of file data the file system holds; a
// write that would grow past it writes what fits and fails with ENOSPC.
// n < 0 removes the limit (the default). Lowering the limit below what is
// used already frees nothing; it only stops growth.
func (f *FS) SetSpaceLimit(n int64) {
	f.mu.Lock()
	f.limit = n
	f.mu.Unlock()
}

// ReportFreeSpace makes FreeSpace report the bytes left under the space
// limit. Off by default: FreeSpace then fails, so that daemon admission
// does not see the limit coming and writes run into ENOSPC.
func (f *FS) ReportFreeSpace(on bool) {
	f.mu.Lock()
	f.report = on
	f.mu.Unlock()
}

// FreeSpace implements daemon.FreeSpacer; see ReportFreeSpace.
func (f *FS) FreeSpace() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.report:
		return 0, errors.New("crashfs: free space not reported")
	case f.limit < 0:
		return 1 << 50, nil
	}
	return max(f.limit-f.used, 0), nil
}

// Used returns the bytes of file data held by existing files.
func (f *FS) Used() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used
}

// OpenHandles returns how many handles opened since the last reset are
// still open: a test waits for 0 to know a daemon has finished with its
// files.
func (f *FS) OpenHandles() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.handles
}

// SyncCount returns the number of sync operations since New.
func (f *FS) SyncCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncs
}

// Crashed reports whether the file system has crashed and not been reset,
// and, if it crashed at a sync armed by CrashAtSync, which one (ok false
// otherwise).
func (f *FS) Crashed() (crashed bool, at Op, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashOp != nil {
		at, ok = *f.crashOp, true
	}
	return f.crashed, at, ok
}

// Crash freezes the file system now, as a power cut would: every later
// operation fails with ErrCrashed until ResetToSyncedState. The OnCrash
// function runs if this is the first crash since the last reset.
func (f *FS) Crash() {
	f.mu.Lock()
	f.crashed = true
	f.mu.Unlock()
	f.notify()
}

// notify runs OnCrash once per crash, without locks held.
func (f *FS) notify() {
	f.mu.Lock()
	fn := f.onCrash
	first := f.crashed && !f.notified
	f.notified = f.notified || first
	f.mu.Unlock()
	if first && fn != nil {
		fn()
	}
}

// ResetToSyncedState drops everything that was not durable: afterwards the
// file system holds exactly the durable state, which is also what reads
// see, and works again. Handles opened before are dead (ErrCrashed). Any
// armed crash is disarmed; faults, limits and counters stay.
func (f *FS) ResetToSyncedState() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	f.crashed, f.crashOp, f.crashAt, f.notified = false, nil, 0, false
	f.handles = 0
	f.used = 0
	seen := make(map[*inode]bool)
	var walk func(n *inode)
	walk = func(n *inode) {
		if seen[n] {
			n.nlink++
			return
		}
		seen[n] = true
		n.nlink, n.open, n.dead = 1, 0, false
		n.mode, n.mtime = n.sMode, n.sMtime
		n.dirtyLo, n.dirtyHi = 0, 0
		if !n.dir {
			n.data = slices.Clone(n.sData)
			f.used += int64(len(n.data))
			return
		}
		n.entries = maps(n.sEntries)
		for _, c := range n.entries {
			walk(c)
		}
	}
	walk(f.root)
}

func maps(m map[string]*inode) map[string]*inode {
	c := make(map[string]*inode, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Clone returns an independent copy of the file system's live and durable
// state, with no handles open, no crash armed or in progress, and the
// fault, space and fsyncgate settings of f (but no OnCrash function). A
// test clones the state after one crash to sweep a second crash over the
// recovery from it.
func (f *FS) Clone() *FS {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := &FS{nextIno: f.nextIno, fault: f.fault, gate: f.gate, seq: make(map[OpKind]int),
		limit: f.limit, report: f.report}
	copies := make(map[*inode]*inode)
	var cp func(n *inode) *inode
	cp = func(n *inode) *inode {
		if m, ok := copies[n]; ok {
			return m
		}
		m := *n
		copies[n] = &m
		m.data, m.sData = slices.Clone(n.data), slices.Clone(n.sData)
		m.open = 0
		if n.dir {
			m.entries = make(map[string]*inode, len(n.entries))
			m.sEntries = make(map[string]*inode, len(n.sEntries))
			for k, v := range n.entries {
				m.entries[k] = cp(v)
			}
			for k, v := range n.sEntries {
				m.sEntries[k] = cp(v)
			}
		}
		return &m
	}
	c.root = cp(f.root)
	for _, m := range copies {
		if !m.dir && !m.dead {
			if m.nlink <= 0 {
				m.dead = true // held only by a handle of f
			} else {
				c.used += int64(len(m.data))
			}
		}
	}
	return c
}

// ReadFile returns the live contents of name (after ResetToSyncedState:
// the durable contents). It is a test helper and bypasses hooks.
func (f *FS) ReadFile(name string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup("open", name)
	if err != nil {
		return nil, err
	}
	if n.dir {
		return nil, &fs.PathError{Op: "read", Path: name, Err: syscall.EISDIR}
	}
	return slices.Clone(n.data), nil
}

// ReadDir returns the sorted live entry names of the directory name. It is
// a test helper and bypasses hooks.
func (f *FS) ReadDir(name string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup("readdir", name)
	if err != nil {
		return nil, err
	}
	if !n.dir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: syscall.ENOTDIR}
	}
	names := make([]string, 0, len(n.entries))
	for k := range n.entries {
		names = append(names, k)
	}
	slices.Sort(names)
	return names, nil
}

// begin runs the checks every operation starts with, under f.mu: the
// crash state, then the fault hook. It returns the error the operation
// fails with, if any.
func (f *FS) begin(op Op) error {
	if f.crashed {
		return ErrCrashed
	}
	f.seq[op.Kind]++
	op.Seq = f.seq[op.Kind]
	if op.Kind == OpSync || op.Kind == OpSyncDir || op.Kind == OpSyncFS {
		f.syncs++
		op.SyncSeq = f.syncs
		if f.crashAt > 0 && f.syncs == f.crashAt {
			f.crashed = true
			o := op
			f.crashOp = &o
			if f.crashAft {
				return errCrashAfter
			}
			return ErrCrashed
		}
	}
	if f.fault != nil {
		return f.fault(op)
	}
	return nil
}

// errCrashAfter tells a sync to take effect, then fail with ErrCrashed.
var errCrashAfter = errors.New("crashfs: crash after this sync")

// end is deferred by every operation (after the unlock): once the file
// system has crashed, it runs OnCrash.
func (f *FS) end(err *error) {
	if *err != nil && errors.Is(*err, ErrCrashed) {
		f.notify()
	}
}

// split checks name the way os.Root does (relative, no "..") and returns
// its components; "." has none.
func split(op, name string) ([]string, error) {
	if name == "" || path.IsAbs(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: syscall.EINVAL}
	}
	c := path.Clean(name)
	if c == "." {
		return nil, nil
	}
	parts := strings.Split(c, "/")
	if slices.Contains(parts, "..") {
		return nil, &fs.PathError{Op: op, Path: name, Err: errors.New("path escapes from parent")}
	}
	return parts, nil
}

// lookup returns the live inode at name.
func (f *FS) lookup(op, name string) (*inode, error) {
	parts, err := split(op, name)
	if err != nil {
		return nil, err
	}
	n := f.root
	for _, p := range parts {
		if !n.dir {
			return nil, &fs.PathError{Op: op, Path: name, Err: syscall.ENOTDIR}
		}
		c, ok := n.entries[p]
		if !ok {
			return nil, &fs.PathError{Op: op, Path: name, Err: syscall.ENOENT}
		}
		n = c
	}
	return n, nil
}

// parent returns the live directory holding name and name's last
// component. name must not be the root.
func (f *FS) parent(op, name string) (*inode, string, error) {
	parts, err := split(op, name)
	if err != nil {
		return nil, "", err
	}
	if len(parts) == 0 {
		return nil, "", &fs.PathError{Op: op, Path: name, Err: syscall.EINVAL}
	}
	d, err := f.lookup(op, path.Join(append([]string{"."}, parts[:len(parts)-1]...)...))
	if err != nil {
		return nil, "", &fs.PathError{Op: op, Path: name, Err: errors.Unwrap(err)}
	}
	if !d.dir {
		return nil, "", &fs.PathError{Op: op, Path: name, Err: syscall.ENOTDIR}
	}
	return d, parts[len(parts)-1], nil
}

// unlink drops one live link of n, releasing it when nothing refers to it.
func (f *FS) unlink(n *inode) {
	n.nlink--
	f.release(n)
}

func (f *FS) release(n *inode) {
	if n.nlink <= 0 && n.open <= 0 && !n.dead {
		n.dead = true
		f.used -= int64(len(n.data))
	}
}

// resize sets n's live size, keeping the space count, and marks the
// changed range dirty.
func (f *FS) resize(n *inode, size int64) {
	old := int64(len(n.data))
	if size == old {
		return
	}
	if size < old {
		clear(n.data[size:])
		n.data = n.data[:size]
	} else {
		n.data = append(n.data, make([]byte, size-old)...)
	}
	if !n.dead {
		f.used += size - old
	}
	n.markDirty(min(size, old), math.MaxInt64)
}

func (n *inode) markDirty(lo, hi int64) {
	if n.dirtyLo >= n.dirtyHi {
		n.dirtyLo, n.dirtyHi = lo, hi
		return
	}
	n.dirtyLo, n.dirtyHi = min(n.dirtyLo, lo), max(n.dirtyHi, hi)
}

// syncData makes n's live data, size and metadata durable.
func (n *inode) syncData() {
	size := int64(len(n.data))
	if int64(len(n.sData)) < size {
		n.sData = append(n.sData, make([]byte, size-int64(len(n.sData)))...)
	} else {
		n.sData = n.sData[:size]
	}
	lo, hi := max(n.dirtyLo, 0), min(n.dirtyHi, size)
	if lo < hi {
		copy(n.sData[lo:hi], n.data[lo:hi])
	}
	n.dirtyLo, n.dirtyHi = 0, 0
	n.sMode, n.sMtime = n.mode, n.mtime
}

// OpenFile implements daemon.FS. Flags O_RDONLY, O_WRONLY, O_RDWR,
// O_CREATE, O_EXCL and O_TRUNC are honoured; directories open read-only.
func (f *FS) OpenFile(name string, flag int, perm os.FileMode) (_ daemon.File, err error) {
	f.pause(Op{Kind: OpOpen, Name: name})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	if err := f.begin(Op{Kind: OpOpen, Name: name}); err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	n, err := f.lookup("open", name)
	switch {
	case err == nil && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EEXIST}
	case err == nil && n.dir && acc != os.O_RDONLY:
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EISDIR}
	case err == nil:
	case flag&os.O_CREATE != 0 && errors.Is(err, fs.ErrNotExist):
		d, base, perr := f.parent("open", name)
		if perr != nil {
			return nil, perr
		}
		n = f.newInode(false, perm)
		n.nlink = 1
		d.entries[base] = n
	default:
		return nil, err
	}
	if flag&os.O_TRUNC != 0 && !n.dir && acc != os.O_RDONLY {
		f.resize(n, 0)
	}
	n.open++
	f.handles++
	return &file{fs: f, n: n, name: name, gen: f.gen, acc: acc, seenErr: n.wbErr}, nil
}

// Remove implements daemon.FS: it removes a file or an empty directory.
func (f *FS) Remove(name string) (err error) {
	f.pause(Op{Kind: OpRemove, Name: name})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	if err := f.begin(Op{Kind: OpRemove, Name: name}); err != nil {
		return &fs.PathError{Op: "remove", Path: name, Err: err}
	}
	d, base, err := f.parent("remove", name)
	if err != nil {
		return err
	}
	n, ok := d.entries[base]
	switch {
	case !ok:
		return &fs.PathError{Op: "remove", Path: name, Err: syscall.ENOENT}
	case n.dir && len(n.entries) > 0:
		return &fs.PathError{Op: "remove", Path: name, Err: syscall.ENOTEMPTY}
	}
	delete(d.entries, base)
	f.unlink(n)
	return nil
}

// Rename implements daemon.FS: it replaces newname atomically. A directory
// may only move to a name that does not exist.
func (f *FS) Rename(oldname, newname string) (err error) {
	f.pause(Op{Kind: OpRename, Name: oldname, New: newname})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	lerr := func(e error) error { return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: e} }
	if err := f.begin(Op{Kind: OpRename, Name: oldname, New: newname}); err != nil {
		return lerr(err)
	}
	od, ob, err := f.parent("rename", oldname)
	if err != nil {
		return lerr(errors.Unwrap(err))
	}
	nd, nb, err := f.parent("rename", newname)
	if err != nil {
		return lerr(errors.Unwrap(err))
	}
	n, ok := od.entries[ob]
	if !ok {
		return lerr(syscall.ENOENT)
	}
	if old, ok := nd.entries[nb]; ok {
		switch {
		case old == n:
			return nil
		case old.dir || n.dir:
			return lerr(syscall.EEXIST)
		}
		f.unlink(old)
	}
	delete(od.entries, ob)
	nd.entries[nb] = n
	return nil
}

// Link implements daemon.FS: newname becomes another name of the file
// oldname; it fails with EEXIST if newname exists.
func (f *FS) Link(oldname, newname string) (err error) {
	f.pause(Op{Kind: OpLink, Name: oldname, New: newname})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	lerr := func(e error) error { return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: e} }
	if err := f.begin(Op{Kind: OpLink, Name: oldname, New: newname}); err != nil {
		return lerr(err)
	}
	n, err := f.lookup("link", oldname)
	if err != nil {
		return lerr(errors.Unwrap(err))
	}
	if n.dir {
		return lerr(syscall.EPERM)
	}
	nd, nb, err := f.parent("link", newname)
	if err != nil {
		return lerr(errors.Unwrap(err))
	}
	if _, ok := nd.entries[nb]; ok {
		return lerr(syscall.EEXIST)
	}
	nd.entries[nb] = n
	n.nlink++
	return nil
}

// Mkdir implements daemon.FS.
func (f *FS) Mkdir(name string, perm os.FileMode) (err error) {
	f.pause(Op{Kind: OpMkdir, Name: name})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	if err := f.begin(Op{Kind: OpMkdir, Name: name}); err != nil {
		return &fs.PathError{Op: "mkdir", Path: name, Err: err}
	}
	d, base, err := f.parent("mkdir", name)
	if err != nil {
		return err
	}
	if _, ok := d.entries[base]; ok {
		return &fs.PathError{Op: "mkdir", Path: name, Err: syscall.EEXIST}
	}
	n := f.newInode(true, perm)
	n.nlink = 1
	d.entries[base] = n
	return nil
}

// Lstat implements daemon.FS. The FileInfo's Sys is a *syscall.Stat_t
// whose Dev and Ino identify the file, as the os package's does.
func (f *FS) Lstat(name string) (_ os.FileInfo, err error) {
	f.pause(Op{Kind: OpStat, Name: name})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	if err := f.begin(Op{Kind: OpStat, Name: name}); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: err}
	}
	n, err := f.lookup("lstat", name)
	if err != nil {
		return nil, err
	}
	return n.info(path.Base(name)), nil
}

// Chtimes implements daemon.FS; only mtime is kept.
func (f *FS) Chtimes(name string, atime, mtime time.Time) (err error) {
	f.pause(Op{Kind: OpChtimes, Name: name})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	if err := f.begin(Op{Kind: OpChtimes, Name: name}); err != nil {
		return &fs.PathError{Op: "chtimes", Path: name, Err: err}
	}
	n, err := f.lookup("chtimes", name)
	if err != nil {
		return err
	}
	n.mtime = mtime
	return nil
}

// SyncDir implements daemon.FS: the directory's live entries become its
// durable entries.
func (f *FS) SyncDir(name string) (err error) {
	f.pause(Op{Kind: OpSyncDir, Name: name})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	berr := f.begin(Op{Kind: OpSyncDir, Name: name})
	if berr != nil && !errors.Is(berr, errCrashAfter) {
		return &fs.PathError{Op: "sync", Path: name, Err: berr}
	}
	n, err := f.lookup("sync", name)
	if err != nil {
		if berr != nil {
			return &fs.PathError{Op: "sync", Path: name, Err: ErrCrashed}
		}
		return err
	}
	if !n.dir {
		return &fs.PathError{Op: "sync", Path: name, Err: syscall.ENOTDIR}
	}
	n.sEntries = maps(n.entries)
	if berr != nil {
		return &fs.PathError{Op: "sync", Path: name, Err: ErrCrashed}
	}
	return nil
}

// SyncFS implements daemon.FSSyncer, as syncfs(2) does: the live data,
// size, mode and mtime of every file and the live entries of every
// directory reachable from the root become durable. It counts as a sync
// operation (OpSyncFS) for CrashAtSync and SyncCount; a crash "after" it
// is a crash while it writes, at the worst moment: every directory's
// entries are durable, no file's data is (syncfs orders nothing). A fault
// fails it:
// then, as after a failed writeback on Linux, every file with unsynced
// writes loses them as a failed File.Sync does (SetFsyncgate), and each
// handle open on such a file reports the loss at its next Sync, once.
func (f *FS) SyncFS() (err error) {
	f.pause(Op{Kind: OpSyncFS, Name: "."})
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	berr := f.begin(Op{Kind: OpSyncFS, Name: "."})
	switch {
	case errors.Is(berr, errCrashAfter):
	case errors.Is(berr, ErrCrashed):
		return &fs.PathError{Op: "syncfs", Path: ".", Err: berr}
	case berr != nil:
		f.walkLive(func(n *inode) {
			if n.dir || n.dirtyLo >= n.dirtyHi {
				return
			}
			if f.gate == FsyncgateDrop {
				f.resize(n, int64(len(n.sData)))
				copy(n.data, n.sData)
				n.mode, n.mtime = n.sMode, n.sMtime
			}
			n.dirtyLo, n.dirtyHi = 0, 0
			n.wbErr++
		})
		return &fs.PathError{Op: "syncfs", Path: ".", Err: berr}
	}
	f.walkLive(func(n *inode) {
		switch {
		case n.dir:
			n.sEntries = maps(n.entries)
		case berr == nil:
			n.syncData()
		}
	})
	if berr != nil {
		return &fs.PathError{Op: "syncfs", Path: ".", Err: ErrCrashed}
	}
	return nil
}

// walkLive calls fn once for every inode reachable from the root through
// live entries, under f.mu.
func (f *FS) walkLive(fn func(n *inode)) {
	seen := make(map[*inode]bool)
	var walk func(n *inode)
	walk = func(n *inode) {
		if seen[n] {
			return
		}
		seen[n] = true
		fn(n)
		for _, c := range n.entries {
			walk(c)
		}
	}
	walk(f.root)
}

func (n *inode) info(name string) os.FileInfo {
	mode := n.mode
	if n.dir {
		mode |= fs.ModeDir
	}
	st := &syscall.Stat_t{Dev: 0xc7a5, Ino: n.ino}
	setNlink(&st.Nlink, max(n.nlink, 0))
	return &fileInfo{name: name, size: int64(len(n.data)), mode: mode, mtime: n.mtime, sys: st}
}

// setNlink stores n in a Stat_t's Nlink, which is a uint64 on amd64 and a
// uint32 on arm64 and others.
func setNlink[T uint32 | uint64](p *T, n int) { *p = T(n) }

type fileInfo struct {
	name  string
	size  int64
	mode  os.FileMode
	mtime time.Time
	sys   *syscall.Stat_t
}

func (i *fileInfo) Name() string       { return i.name }
func (i *fileInfo) Size() int64        { return i.size }
func (i *fileInfo) Mode() os.FileMode  { return i.mode }
func (i *fileInfo) ModTime() time.Time { return i.mtime }
func (i *fileInfo) IsDir() bool        { return i.mode.IsDir() }
func (i *fileInfo) Sys() any           { return i.sys }

// file is an open handle.
type file struct {
	fs      *FS
	n       *inode
	name    string
	gen     uint64
	acc     int
	closed  bool
	seenErr int // the inode's wbErr this handle has reported
}

// check starts an operation on the handle, under f.fs.mu.
func (h *file) check(op Op) error {
	switch {
	case h.closed:
		return os.ErrClosed
	case h.gen != h.fs.gen:
		return ErrCrashed
	}
	op.Name = h.name
	return h.fs.begin(op)
}

func (h *file) ReadAt(p []byte, off int64) (_ int, err error) {
	h.fs.pause(Op{Name: h.name, Kind: OpRead, Off: off, Len: len(p)})
	h.fs.mu.Lock()
	defer h.fs.end(&err)
	defer h.fs.mu.Unlock()
	if err := h.check(Op{Kind: OpRead, Off: off, Len: len(p)}); err != nil {
		return 0, &fs.PathError{Op: "read", Path: h.name, Err: err}
	}
	switch {
	case h.n.dir:
		return 0, &fs.PathError{Op: "read", Path: h.name, Err: syscall.EISDIR}
	case h.acc == os.O_WRONLY:
		return 0, &fs.PathError{Op: "read", Path: h.name, Err: syscall.EBADF}
	case off < 0:
		return 0, &fs.PathError{Op: "readat", Path: h.name, Err: errors.New("negative offset")}
	case off >= int64(len(h.n.data)):
		return 0, io.EOF
	}
	n := copy(p, h.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (h *file) WriteAt(p []byte, off int64) (_ int, err error) {
	h.fs.pause(Op{Name: h.name, Kind: OpWrite, Off: off, Len: len(p)})
	f := h.fs
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	if err := h.check(Op{Kind: OpWrite, Off: off, Len: len(p)}); err != nil {
		return 0, &fs.PathError{Op: "write", Path: h.name, Err: err}
	}
	switch {
	case h.acc == os.O_RDONLY:
		return 0, &fs.PathError{Op: "write", Path: h.name, Err: syscall.EBADF}
	case off < 0:
		return 0, &fs.PathError{Op: "writeat", Path: h.name, Err: errors.New("negative offset")}
	}
	n := h.n
	end := off + int64(len(p))
	var werr error
	if allowed := int64(len(n.data)) + max(f.limit-f.used, 0); f.limit >= 0 && end > allowed {
		// Write what fits, as write(2) does, then report ENOSPC.
		werr = &fs.PathError{Op: "write", Path: h.name, Err: syscall.ENOSPC}
		if off >= allowed {
			return 0, werr
		}
		end = allowed
		p = p[:end-off]
	}
	if end > int64(len(n.data)) {
		f.resize(n, end)
	}
	copy(n.data[off:end], p)
	n.markDirty(off, end)
	return len(p), werr
}

func (h *file) Sync() (err error) {
	h.fs.pause(Op{Name: h.name, Kind: OpSync})
	f := h.fs
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	berr := h.check(Op{Kind: OpSync})
	switch {
	case errors.Is(berr, errCrashAfter):
	case errors.Is(berr, ErrCrashed) || errors.Is(berr, os.ErrClosed):
		return &fs.PathError{Op: "sync", Path: h.name, Err: berr}
	case berr != nil:
		// fsyncgate: the writes this sync should have persisted are
		// lost to the disk; what readers see depends on the mode.
		n := h.n
		if f.gate == FsyncgateDrop {
			f.resize(n, int64(len(n.sData)))
			copy(n.data, n.sData)
			n.mode, n.mtime = n.sMode, n.sMtime
		}
		n.dirtyLo, n.dirtyHi = 0, 0
		return &fs.PathError{Op: "sync", Path: h.name, Err: berr}
	}
	if h.seenErr < h.n.wbErr {
		// A failed SyncFS lost some of this file's writes: like
		// Linux's errseq, every handle open before reports it once.
		h.seenErr = h.n.wbErr
		return &fs.PathError{Op: "sync", Path: h.name, Err: syscall.EIO}
	}
	h.n.syncData()
	if berr != nil {
		return &fs.PathError{Op: "sync", Path: h.name, Err: ErrCrashed}
	}
	return nil
}

func (h *file) Truncate(size int64) (err error) {
	h.fs.pause(Op{Name: h.name, Kind: OpTruncate, Off: size})
	f := h.fs
	f.mu.Lock()
	defer f.end(&err)
	defer f.mu.Unlock()
	if err := h.check(Op{Kind: OpTruncate, Off: size}); err != nil {
		return &fs.PathError{Op: "truncate", Path: h.name, Err: err}
	}
	switch {
	case h.acc == os.O_RDONLY || h.n.dir:
		return &fs.PathError{Op: "truncate", Path: h.name, Err: syscall.EINVAL}
	case size < 0:
		return &fs.PathError{Op: "truncate", Path: h.name, Err: syscall.EINVAL}
	}
	if grow := size - int64(len(h.n.data)); grow > 0 && f.limit >= 0 && f.used+grow > f.limit {
		return &fs.PathError{Op: "truncate", Path: h.name, Err: syscall.ENOSPC}
	}
	f.resize(h.n, size)
	return nil
}

func (h *file) Stat() (_ os.FileInfo, err error) {
	h.fs.pause(Op{Name: h.name, Kind: OpStat})
	h.fs.mu.Lock()
	defer h.fs.end(&err)
	defer h.fs.mu.Unlock()
	if err := h.check(Op{Kind: OpStat}); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: h.name, Err: err}
	}
	return h.n.info(path.Base(h.name)), nil
}

func (h *file) Chmod(mode os.FileMode) (err error) {
	h.fs.pause(Op{Name: h.name, Kind: OpChmod})
	h.fs.mu.Lock()
	defer h.fs.end(&err)
	defer h.fs.mu.Unlock()
	if err := h.check(Op{Kind: OpChmod}); err != nil {
		return &fs.PathError{Op: "chmod", Path: h.name, Err: err}
	}
	h.n.mode = mode & os.ModePerm
	return nil
}

// Close releases the handle. It never fails after a crash: a dead process
// holds no handles.
func (h *file) Close() error {
	f := h.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.closed {
		return os.ErrClosed
	}
	h.closed = true
	if h.gen == f.gen {
		h.n.open--
		f.handles--
		f.release(h.n)
	}
	return nil
}
