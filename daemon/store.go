package daemon

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// Store keeps partials and commits them under their final names. It is the
// seam for other backends (DirStore on a local file system, s3store on
// object storage); session code touches stored data only through it and
// never reads uncommitted data back. Implementations are safe for
// concurrent use on distinct keys; the server never lets two sessions use
// one key at once (Config.Locker).
//
// Stores classify their own errors: a failure for lack of space wraps
// transfer.ErrNoSpace, a name already taken transfer.ErrExists, a name
// that cannot be resolved transfer.ErrBadName, and a committed file that
// is not there ErrNotFound; anything else is an internal error worth a
// retry. storetest.Run checks every store against this contract.
type Store interface {
	// Open returns the partial under key for the transfer o offers, in
	// chunks of at most chunkSize bytes (a power of two). An existing
	// partial that records the same source is resumed at its durable
	// offset with its merge stack, after its tail chunk alone is
	// re-verified (the prefix is never read), unless restart is set; a
	// partial in larger chunks is re-cut to chunkSize from that tail
	// chunk (MergeStack.Rechunk), one in smaller chunks keeps its own
	// (State().Stack.ChunkSize()). Any other partial is discarded
	// (restarted is then true) and a new one starts at offset 0 in chunks
	// of chunkSize.
	Open(key string, o *transfer.Offer, chunkSize int, restart bool) (p Partial, restarted bool, err error)
	// Exists reports whether something already has name, which a commit
	// must not overwrite. Errors wrap transfer.ErrBadName when name cannot
	// be resolved inside the root (a symlink out, a file as a directory).
	Exists(name string) (bool, error)
	// Stat returns the size in bytes and modification time of the
	// committed file at name; an error wrapping ErrNotFound if there is
	// none.
	Stat(name string) (size int64, mtime time.Time, err error)
	// OpenCommitted opens the committed regular file at name for reading;
	// an error wrapping ErrNotFound if there is none.
	OpenCommitted(name string) (CommittedFile, error)
	// FinishCommit completes a commit of the partial under key at name
	// that was cut short (a crash, a failed directory fsync or cleanup):
	// the partial's data is then the committed file, which must never be
	// resumed, truncated or written. It makes name durable and removes
	// the partial, and reports whether there was such a commit. The
	// session calls it before anything else touches the partial. A store
	// whose commit is one atomic step (s3store) has none to finish: it
	// only removes a partial left behind by a finished commit.
	FinishCommit(key, name string) (finished bool, err error)
	// CommitGroup commits many partials together (group commit): it
	// applies each one's mode and mtime, makes all their data durable
	// together, links each into place without overwriting, and fsyncs
	// every directory it touched once. It returns one error per partial
	// (nil: that file is committed and durable); errors wrap
	// transfer.ErrExists or transfer.ErrBadName as Partial.Commit's do.
	// It does not remove the partials: Tidy does, once the senders were
	// told.
	CommitGroup(ps []Partial) []error
	// Tidy closes and removes the partials of committed files, with one
	// fsync of the partials' directory. A crash before it ends leaves
	// partials that FinishCommit (or, at start, FinishCommits) removes.
	Tidy(ps []Partial) error
}

// SyncStrategy makes the data of many files durable together. It is the
// seam for measuring other ways of doing so (syncfs, sync_file_range then
// fsync); the default is ParallelFsync.
type SyncStrategy interface {
	// SyncFiles makes every file's written data durable and returns one
	// error per file (nil: durable).
	SyncFiles(files []File) []error
}

// ParallelFsync fsyncs files concurrently, Workers at a time (default 16):
// a device with a write cache commits many flushes together.
type ParallelFsync struct{ Workers int }

// SyncFiles implements SyncStrategy.
func (p ParallelFsync) SyncFiles(files []File) []error {
	errs := make([]error, len(files))
	workers := p.Workers
	if workers <= 0 {
		workers = 16
	}
	if len(files) == 1 {
		errs[0] = files[0].Sync()
		return errs
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(workers, len(files)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				errs[i] = files[i].Sync()
			}
		}()
	}
	for i := range files {
		next <- i
	}
	close(next)
	wg.Wait()
	return errs
}

// ErrNotFound is wrapped by Store.Stat's and OpenCommitted's errors when
// nothing is committed at the name.
var ErrNotFound = errors.New("no such file")

// CommittedFile is a committed file open for reading.
type CommittedFile interface {
	io.ReaderAt
	io.Closer
}

// HashStorer is implemented by a CommittedFile that can return the
// whole-file BLAKE3 recorded at its commit (s3store's object metadata):
// ok is false when none is recorded or it does not describe a file of
// size bytes and mtime mtimeNs.
type HashStorer interface {
	StoredHash(size, mtimeNs int64) (h transfer.Hash, ok bool)
}

// SyncAligner is implemented by a Partial that makes data durable only in
// whole parts (s3store): Sync reaches stack.Offset() only when it is a
// multiple of SyncAlign, and otherwise keeps the durable offset it had.
// The session then asks for a sync at each part boundary, so that an
// interruption loses less than one part.
type SyncAligner interface {
	// SyncAlign returns the part size in bytes, a multiple of the
	// partial's chunk size.
	SyncAlign() int64
}

// Partial is one transfer's data and state. Its methods are called from
// one session, but WriteAt and Sync may run concurrently.
type Partial interface {
	// State returns the last durable state.
	State() State
	// WriteAt writes verified chunk data at off, in whole chunks in order
	// from the durable offset; it is not durable yet.
	WriteAt(p []byte, off int64) error
	// Sync makes data written so far durable and atomically records the
	// durable offset it reached with its merge stack; it returns that
	// offset. stack is the merge stack of every chunk before
	// stack.Offset(), all of them written. A store may reach less than
	// stack.Offset() (a SyncAligner: only whole parts), never more, and
	// never less than the durable offset before the call; the session
	// acknowledges only the returned offset. On error the recorded
	// durable offset stays where it was.
	Sync(stack *transfer.MergeStack) (durable int64, err error)
	// Commit makes the data durable under its name with its mode and
	// mtime, never overwriting (CommitGroup of one), then removes the
	// partial (Tidy). It returns an error wrapping transfer.ErrExists if
	// another file took the name meanwhile, and a *LeftoverError if the
	// file is committed but removing the partial failed.
	Commit() error
	// Close releases the partial, leaving it on disk for a later resume.
	Close() error
}

// Extender is implemented by a Partial that can leave a hole of a sparse
// file unwritten: Extend makes its data at least size bytes long without
// writing (the new bytes read as zeros and occupy no block), and never
// shortens it. Called from the same goroutine as WriteAt, in order.
type Extender interface {
	Extend(size int64) error
}

var _ Extender = (*dirPartial)(nil)

// DirStore keeps partials as files under ReservedDir in a root:
//
//	.ferry/partials/KEY.data   the transfer's bytes; only [0, durable) is trusted
//	.ferry/partials/KEY.state  the state record (EncodeState), replaced atomically
//	.ferry/partials/KEY.tmp    a state record being written; ignored on open
//
// KEY is derived by the session from the credential and the destination
// name. Committed files are hard links of KEY.data at their name, so a
// commit never copies data.
type DirStore struct {
	fs FS

	// DirectIO, when set, writes full, aligned chunks with direct I/O
	// (see DirectOpener) where the file system supports it, and through
	// the page cache otherwise. fsync still makes them durable. Set it
	// before the store is used. Off by default.
	DirectIO bool

	// Sync makes a group's data durable; NewDirStore sets it to
	// SyncFSWhenQuiet on an OSFS. nil means ParallelFsync. A strategy
	// that is a DirSyncer also makes the group's directory entries
	// durable. Set it before the store is used.
	Sync SyncStrategy

	// Preallocate, when set, lets a new partial reserve its blocks at
	// admission (Preallocator: fallocate with FALLOC_FL_KEEP_SIZE, so
	// that the file's size stays what was written) unless the offer says
	// the source is sparse (OfferSparse); the admission's promise of
	// those bytes is then dropped, as free space counts them. A file
	// system without fallocate is skipped. Set it before the store is
	// used. Off by default here; ferryd's --preallocate defaults to on.
	// Measured on 1 GiB over loopback (3 rounds each, the machine busy
	// with other work) it changed nothing beyond the noise: wall 1.32 s
	// (1.16–1.76) against 1.38 s (1.08–1.98) without, daemon CPU 0.76 s
	// against 0.74 s (issue 12); what it buys is that an admitted
	// transfer cannot hit a full disk halfway.
	Preallocate bool

	// StartWriteback, when set, starts each written chunk's writeback at
	// once (sync_file_range SYNC_FILE_RANGE_WRITE on Linux), so that
	// the fsyncs of a group commit wait less. It makes nothing durable by
	// itself. Off by default: on the 20,000-file tree it did not shorten
	// the send measurably and cost the daemon about 1.4 s more CPU
	// (bench/doc.go, "Fsync strategies"). Set it before the store is used.
	StartWriteback bool

	skipCommitDirSync  bool // set only by the canary in crash_test.go: drops the commit's directory fsyncs
	skipCommitDataSync bool // set only by a canary in crash_batch_test.go: drops a group's data sync
}

var _ Store = (*DirStore)(nil)

// partialsDir holds the partials, relative to the root.
var partialsDir = path.Join(transfer.ReservedDir, "partials")

// NewDirStore returns a store on fs, creating the partials directory.
func NewDirStore(fs FS) (*DirStore, error) {
	if err := mkdirs(fs, partialsDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", partialsDir, err)
	}
	s := &DirStore{fs: fs}
	if o, ok := fs.(*OSFS); ok {
		s.Sync = NewSyncFSWhenQuiet(o)
	}
	return s, nil
}

// FreeSpace returns the bytes available on the store's file system, or -1
// if it cannot tell.
func (s *DirStore) FreeSpace() int64 {
	if fsp, ok := s.fs.(FreeSpacer); ok {
		if n, err := fsp.FreeSpace(); err == nil {
			return n
		}
	}
	return -1
}

func (s *DirStore) paths(key string) (data, state, tmp string) {
	base := path.Join(partialsDir, key)
	return base + ".data", base + ".state", base + ".tmp"
}

// Exists implements Store.
func (s *DirStore) Exists(name string) (bool, error) {
	_, err := s.fs.Lstat(name)
	switch {
	case err == nil:
		return true, nil
	case isNotExist(err):
		return false, nil
	case errors.Is(err, syscall.ENOTDIR):
		if file := s.fileInPath(name); file != "" {
			return false, fmt.Errorf("%w: %s: %s is a file on the daemon, not a directory; choose another --dest",
				transfer.ErrBadName, transfer.QuoteName(name), transfer.QuoteName(file))
		}
	}
	return false, fmt.Errorf("%w: %s: %v", transfer.ErrBadName, transfer.QuoteName(name), err)
}

// fileInPath returns the first leading component of name that exists and
// is not a directory, or "" if there is none: what a user who named an
// existing file in --dest needs to hear, rather than "not a directory".
func (s *DirStore) fileInPath(name string) string {
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		fi, err := s.fs.Lstat(name[:i])
		if err != nil {
			return ""
		}
		if !fi.IsDir() {
			return name[:i]
		}
	}
	return ""
}

// Stat implements Store.
func (s *DirStore) Stat(name string) (int64, time.Time, error) {
	fi, err := s.fs.Lstat(name)
	if isNotExist(err) {
		return 0, time.Time{}, fmt.Errorf("%w: %s", ErrNotFound, transfer.QuoteName(name))
	}
	if err != nil {
		return 0, time.Time{}, err
	}
	if !fi.Mode().IsRegular() {
		return 0, time.Time{}, fmt.Errorf("%s is not a regular file", transfer.QuoteName(name))
	}
	return fi.Size(), fi.ModTime(), nil
}

// OpenCommitted implements Store.
func (s *DirStore) OpenCommitted(name string) (CommittedFile, error) {
	if _, _, err := s.Stat(name); err != nil {
		return nil, err
	}
	return s.fs.OpenFile(name, os.O_RDONLY, 0)
}

// linkedAt reports whether the partial under key is linked at name: a
// commit that was cut short after the link.
func (s *DirStore) linkedAt(key, name string) bool {
	data, _, _ := s.paths(key)
	a, err := s.fs.Lstat(data)
	if err != nil {
		return false // no partial: the common case, one lookup
	}
	b, err := s.fs.Lstat(name)
	return err == nil && sameFile(a, b)
}

// FinishCommit implements Store.
func (s *DirStore) FinishCommit(key, name string) (bool, error) {
	if !validKey(key) {
		return false, fmt.Errorf("bug: partial key %q", key)
	}
	if !s.linkedAt(key, name) {
		return false, nil
	}
	return true, classify(s.finishCommit(key, name))
}

// finishCommit does what Commit does after its link, for a partial whose
// data file is linked at name, without writing the file.
func (s *DirStore) finishCommit(key, name string) error {
	if err := s.fs.SyncDir(parentDir(name)); err != nil {
		return fmt.Errorf("fsync directory of %s: %w", transfer.QuoteName(name), err)
	}
	return s.discard(key)
}

// discard removes key's partial: its state record, then its data file,
// which is unlinked, never truncated (it may be a link of a committed
// file).
func (s *DirStore) discard(key string) error {
	dataPath, statePath, _ := s.paths(key)
	if err := s.fs.Remove(statePath); err != nil && !isNotExist(err) {
		return fmt.Errorf("removing state record: %w", err)
	}
	if err := s.fs.Remove(dataPath); err != nil && !isNotExist(err) {
		return fmt.Errorf("removing partial data: %w", err)
	}
	if err := s.fs.SyncDir(partialsDir); err != nil {
		return fmt.Errorf("fsync %s: %w", partialsDir, err)
	}
	return nil
}

// DirReader is implemented by an FS that can list a directory.
type DirReader interface {
	// ReadDir returns the names of the entries of the directory name.
	ReadDir(name string) ([]string, error)
}

// FinishCommits finds, run at start before the store serves, every
// partial whose data file has another link: a commit cut short after its
// link. When the link is at the partial's name, it finishes the commit as
// FinishCommit does; otherwise (no state record left, or another name
// links the data) it discards the partial, unlinking its data without
// writing it. It returns the names whose commits it finished and how many
// partials it discarded. On an FS that is not a DirReader it does nothing.
func (s *DirStore) FinishCommits() (finished []string, discarded int, err error) {
	rd, ok := s.fs.(DirReader)
	if !ok {
		return nil, 0, nil
	}
	names, err := rd.ReadDir(partialsDir)
	if err != nil {
		return nil, 0, fmt.Errorf("listing %s: %w", partialsDir, err)
	}
	for _, n := range names {
		key, ok := strings.CutSuffix(n, ".data")
		if !ok || !validKey(key) {
			continue
		}
		fi, err := s.fs.Lstat(path.Join(partialsDir, n))
		if err != nil {
			return finished, discarded, err
		}
		if linkCount(fi) <= 1 {
			continue
		}
		st, found, err := s.loadState(key)
		if err != nil {
			return finished, discarded, err
		}
		if found && s.linkedAt(key, st.Name) {
			if err := s.finishCommit(key, st.Name); err != nil {
				return finished, discarded, err
			}
			finished = append(finished, st.Name)
			continue
		}
		if err := s.discard(key); err != nil {
			return finished, discarded, err
		}
		discarded++
	}
	return finished, discarded, nil
}

// linkCount returns the number of hard links of the file fi (from FS.Lstat
// or File.Stat) describes, or 1 if fi does not say.
func linkCount(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 0 {
		return uint64(st.Nlink)
	}
	return 1
}

// sameFile reports whether a and b, from FS.Lstat, describe one file. It
// compares the *syscall.Stat_t of each rather than calling os.SameFile,
// which knows only the os package's FileInfo and is always false for
// another FS (crashfs found this: linkedAt never matched there).
func sameFile(a, b os.FileInfo) bool {
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// Open implements Store.
func (s *DirStore) Open(key string, o *transfer.Offer, chunkSize int, restart bool) (Partial, bool, error) {
	p, restarted, err := s.open(key, o, chunkSize, restart)
	return p, restarted, classify(err)
}

func (s *DirStore) open(key string, o *transfer.Offer, chunkSize int, restart bool) (Partial, bool, error) {
	if !validKey(key) {
		return nil, false, fmt.Errorf("bug: partial key %q", key)
	}
	if err := transfer.CheckChunkSize(chunkSize); err != nil {
		return nil, false, fmt.Errorf("bug: %w", err)
	}
	st, found, err := s.loadState(key)
	if err != nil {
		return nil, false, err
	}
	// No record at all (the common case of a new file) needs no removal
	// before the new partial starts.
	noRecord := st == nil
	replace := o.Flags&transfer.OfferUpdate != 0
	if found && st.SameSource(o) && !restart {
		p, err := s.resume(key, st, chunkSize)
		if err == nil {
			p.replace = replace
			return p, false, nil
		}
		if !errors.Is(err, errDamaged) {
			// An I/O error says nothing about the partial: keep it, and
			// its durable prefix, for the next attempt.
			return nil, false, err
		}
	}
	p, err := s.create(key, o, chunkSize, noRecord)
	if err != nil {
		return nil, found, err
	}
	p.replace = replace
	return p, found, nil
}

// errDamaged marks a partial that cannot be resumed and is discarded: its
// data is missing, shorter than the durable offset, or its tail chunk no
// longer matches. Other errors from resume are I/O errors, which must not
// discard a partial (an EIO while re-reading the tail used to restart the
// transfer from zero; iofault_test.go).
var errDamaged = errors.New("partial damaged")

func validKey(key string) bool {
	return len(key) >= 16 && len(key) <= 64 && strings.Trim(key, "0123456789abcdef") == ""
}

// loadState reads key's state record; a missing or damaged one counts as
// no partial at all, since nothing it describes can be trusted. An error
// reading it is returned, and leaves the partial alone. The State is nil
// only when there is no record file.
func (s *DirStore) loadState(key string) (*State, bool, error) {
	_, statePath, _ := s.paths(key)
	f, err := s.fs.OpenFile(statePath, os.O_RDONLY, 0)
	if isNotExist(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading state record: %w", err)
	}
	defer f.Close() //nolint:errcheck // opened read-only
	b := make([]byte, MaxStateSize+1)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, fmt.Errorf("reading state record: %w", err)
	}
	st, err := DecodeState(b[:n])
	if err != nil {
		return &State{}, false, nil
	}
	return st, true, nil
}

// resume opens key's data, drops bytes past the durable offset and
// re-verifies the tail chunk against the state record, so that nothing
// unverified or damaged is ever offered to a sender.
func (s *DirStore) resume(key string, st *State, chunkSize int) (*dirPartial, error) {
	dataPath, _, _ := s.paths(key)
	f, err := s.fs.OpenFile(dataPath, os.O_RDWR, 0)
	if isNotExist(err) {
		return nil, fmt.Errorf("%w: %v", errDamaged, err)
	}
	if err != nil {
		return nil, err
	}
	// A data file with another link is, or was, a committed file (a
	// commit cut short after its link): truncating or writing it would
	// change that file (issue 8). It is discarded, by unlinking.
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close() // read-only use so far; the stat error is the one to report
		return nil, err
	}
	if n := linkCount(fi); n > 1 {
		_ = f.Close() // never written
		return nil, fmt.Errorf("%w: data file has %d links", errDamaged, n)
	}
	p := &dirPartial{s: s, key: key, f: f, st: *st, writeback: s.StartWriteback, recorded: true}
	if err := p.verifyTail(chunkSize); err != nil {
		_ = f.Close() // the error above is the one to report
		return nil, err
	}
	// A failed directory fsync in writeState can leave a record renamed
	// into place but not durable. Make it durable before its offset is
	// offered, or a crash could take back what the sender was told.
	if err := s.fs.SyncDir(partialsDir); err != nil {
		_ = p.Close() // the error above is the one to report
		return nil, err
	}
	return p, nil
}

// verifyTail drops bytes past the durable offset and checks the tail
// chunk, the only bytes a resume reads, against the merge stack's last
// chaining value. A stack in chunks larger than chunkSize is re-cut from
// that tail.
func (p *dirPartial) verifyTail(chunkSize int) error {
	fi, err := p.f.Stat()
	if err != nil {
		return err
	}
	d := p.st.DurableOffset
	if fi.Size() < d {
		return fmt.Errorf("%w: data is %d bytes, durable offset %d", errDamaged, fi.Size(), d)
	}
	if fi.Size() > d {
		if err := p.f.Truncate(d); err != nil {
			return err
		}
	}
	if d == 0 {
		if p.st.Stack.ChunkSize() > chunkSize {
			stack, err := transfer.NewMergeStack(chunkSize)
			if err != nil {
				return err
			}
			p.st.Stack = *stack
		}
		return nil
	}
	// The tail chunk alone: the merge stack stands for the prefix.
	off, want := p.st.Tail()
	buf := make([]byte, d-off)
	if _, err := p.f.ReadAt(buf, off); err != nil {
		return err
	}
	if h, err := transfer.ChunkHash(buf, off, p.st.Size); err != nil || h != want {
		return fmt.Errorf("%w: tail chunk at offset %d does not match its recorded hash", errDamaged, off)
	}
	if p.st.Stack.ChunkSize() > chunkSize {
		// The record on disk keeps the larger chunks until the next
		// Sync: both describe the same durable prefix.
		stack, err := p.st.Stack.Rechunk(chunkSize, buf, p.st.Size)
		if err != nil {
			return err
		}
		p.st.Stack = *stack
	}
	return nil
}

// create starts an empty partial for o, replacing whatever key held;
// noRecord says that key has no state record to remove first.
func (s *DirStore) create(key string, o *transfer.Offer, chunkSize int, noRecord bool) (*dirPartial, error) {
	stack, err := transfer.NewMergeStack(chunkSize)
	if err != nil {
		return nil, err
	}
	dataPath, statePath, _ := s.paths(key)
	if !noRecord {
		if err := s.fs.Remove(statePath); err != nil && !isNotExist(err) {
			return nil, err
		}
	}
	f, err := s.fs.OpenFile(dataPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// Unlink rather than truncate: after a crash at the end of a
		// commit, KEY.data may still be a hard link of the committed
		// file.
		if err := s.fs.Remove(dataPath); err != nil && !isNotExist(err) {
			return nil, err
		}
		f, err = s.fs.OpenFile(dataPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if err != nil {
		return nil, err
	}
	// The data file's directory entry must be durable before any state
	// record that points at it: writeState syncs the directory first.
	// A file committed in one go never has a state record, and needs no
	// fsync of the partials' directory at all (group commit, issue 9).
	st := State{Name: o.Name, Size: o.Size, Mode: o.Mode, MtimeNs: o.MtimeNs, Inode: o.Inode, PrefixID: o.PrefixID, Stack: *stack}
	dense := o.Flags&transfer.OfferSparse == 0 && o.Size > int64(chunkSize)
	return &dirPartial{s: s, key: key, f: f, st: st, fresh: true, writeback: s.StartWriteback, dense: dense}, nil
}

// dirPartial is a DirStore partial.
type dirPartial struct {
	s      *DirStore
	key    string
	f      File
	direct File // the same file opened for direct I/O, or nil
	// directTried says direct I/O was considered: the direct handle is
	// opened at the first aligned write that does not complete the file,
	// so a small file costs one descriptor, not two.
	directTried bool
	st          State // durable state; written only by Sync, read by the session
	fresh       bool  // the data file's directory entry may not be durable yet
	dense       bool  // not sparse, more than a chunk: worth preallocating (Preallocator)
	prealloc    bool  // blocks up to the file's size were reserved: Close gives back what is past its data
	// replace says the commit renames the data file over a committed file
	// at the name (OfferUpdate) instead of linking it beside none.
	replace bool
	hash    transfer.Hash // the whole file's BLAKE3, once SetHash was called
	hashed  bool
	// writeback starts each write's writeback (DirStore.StartWriteback).
	writeback bool
	// recorded says a state record (or its temp file) may exist: the
	// partial was resumed from one or wrote one. Tidy removes it then.
	recorded bool
}

// SetHash gives the partial its verified whole-file BLAKE3, which the
// commit records with the file (setStoredHash).
func (p *dirPartial) SetHash(h transfer.Hash) { p.hash, p.hashed = h, true }

func (p *dirPartial) State() State { return p.st }

// SetRemote implements RemoteRecorder.
func (p *dirPartial) SetRemote(addr string) { p.st.Remote = truncateRemote(addr) }

// SetToken implements TokenRecorder.
func (p *dirPartial) SetToken(name string) { p.st.Token = name }

func (p *dirPartial) WriteAt(b []byte, off int64) error {
	if err := p.writeAt(b, off); err != nil {
		return classify(err)
	}
	if p.writeback {
		startWriteback(p.f, off, int64(len(b)))
	}
	return nil
}

// Extend implements Extender with ftruncate, which leaves a hole. The
// size reaches the disk with the next Sync's fsync, before the durable
// offset that covers it is recorded, so a resume finds the file as long
// as its durable offset.
func (p *dirPartial) Extend(size int64) error {
	fi, err := p.f.Stat()
	if err != nil {
		return fmt.Errorf("extending partial over a hole: %w", err)
	}
	if fi.Size() >= size {
		return nil
	}
	if err := p.f.Truncate(size); err != nil {
		return fmt.Errorf("extending partial over a hole: %w", err)
	}
	return nil
}

// Sync implements Partial: a DirStore makes all of stack.Offset() durable.
func (p *dirPartial) Sync(stack *transfer.MergeStack) (int64, error) {
	if err := p.f.Sync(); err != nil {
		return p.st.DurableOffset, classify(fmt.Errorf("fsync partial data: %w", err))
	}
	st := p.st
	st.DurableOffset, st.Stack = stack.Offset(), *stack
	if err := classify(p.writeState(&st)); err != nil {
		if p.prealloc && errors.Is(err, transfer.ErrNoSpace) {
			// The file system filled after admission: the data's blocks
			// are held, but a new state record needs one more. The old
			// record stands (temp + rename), so report the offset it
			// holds and let the transfer go on to its commit, which needs
			// no record; a crash meanwhile resumes from that offset.
			return p.st.DurableOffset, nil
		}
		return p.st.DurableOffset, err
	}
	p.st = st
	return st.DurableOffset, nil
}

// classify wraps transfer.ErrNoSpace around a failure for lack of space
// (ENOSPC, EDQUOT), so that the session needs no errno of its own.
func classify(err error) error {
	if err != nil && !errors.Is(err, transfer.ErrNoSpace) && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)) {
		return fmt.Errorf("%w: %w", transfer.ErrNoSpace, err)
	}
	return err
}

// writeState replaces the state record atomically and durably: temp
// file, fsync, rename, fsync the directory. Without the directory fsync
// the rename may be lost in a crash, leaving the older record (or none),
// yet the caller acknowledges the new durable offset to the sender; and
// the first record of a partial would not survive a power loss at all, so
// every resume after one would start from zero (the power-loss sweep in
// crash_test.go found both).
func (p *dirPartial) writeState(st *State) error {
	_, statePath, tmpPath := p.s.paths(p.key)
	p.recorded = true
	if p.fresh {
		if err := p.s.fs.SyncDir(partialsDir); err != nil {
			return fmt.Errorf("fsync %s: %w", partialsDir, err)
		}
		p.fresh = false
	}
	f, err := p.s.fs.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing state record: %w", err)
	}
	rec, err := EncodeState(st)
	if err == nil {
		_, err = f.WriteAt(rec, 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = p.s.fs.Rename(tmpPath, statePath)
	}
	if err == nil {
		err = p.s.fs.SyncDir(partialsDir)
	}
	if err != nil {
		return fmt.Errorf("writing state record: %w", err)
	}
	return nil
}

func (p *dirPartial) Commit() error {
	if err := p.s.CommitGroup([]Partial{p})[0]; err != nil {
		return err
	}
	if err := p.s.Tidy([]Partial{p}); err != nil {
		return &LeftoverError{Err: err}
	}
	return nil
}

// CommitGroup implements Store, in DESIGN.md's order for each file: mode
// and mtime, then the data of all of them durable (SyncStrategy), then
// each linked into place (never overwriting), then each directory that
// gained an entry fsynced once.
func (s *DirStore) CommitGroup(ps []Partial) []error {
	errs := s.commitGroup(ps)
	for i, err := range errs {
		errs[i] = classify(err)
	}
	return errs
}

func (s *DirStore) commitGroup(ps []Partial) []error {
	errs := make([]error, len(ps))
	dps := make([]*dirPartial, len(ps))
	var files []File
	var idx []int
	for i, pp := range ps {
		p, ok := pp.(*dirPartial)
		if !ok || p.s != s || p.f == nil {
			errs[i] = fmt.Errorf("bug: committing a partial of another store, or closed")
			continue
		}
		dps[i] = p
		dataPath, _, _ := s.paths(p.key)
		if err := p.f.Chmod(os.FileMode(p.st.Mode) & os.ModePerm); err != nil {
			errs[i] = fmt.Errorf("chmod: %w", err)
			continue
		}
		mtime := time.Unix(0, p.st.MtimeNs)
		if err := s.fs.Chtimes(dataPath, mtime, mtime); err != nil {
			errs[i] = fmt.Errorf("setting mtime: %w", err)
			continue
		}
		if p.hashed {
			setStoredHash(p.f, p.hash, p.st.Size, p.st.MtimeNs) // durable with the data's fsync below
		}
		files = append(files, p.f)
		idx = append(idx, i)
	}
	strategy := s.Sync
	if strategy == nil {
		strategy = ParallelFsync{}
	}
	if !s.skipCommitDataSync {
		for k, err := range strategy.SyncFiles(files) {
			if err != nil {
				errs[idx[k]] = fmt.Errorf("fsync before commit: %w", err)
			}
		}
	}
	dirs := make(map[string][]int) // directory to fsync → the files that need it
	for i, p := range dps {
		if p == nil || errs[i] != nil {
			continue
		}
		name := p.st.Name
		dataPath, _, _ := s.paths(p.key)
		var made []string
		if err := mkdirsNoSync(s.fs, parentDir(name), 0o755, &made); err != nil {
			errs[i] = fmt.Errorf("%w: creating directory for %s: %v", transfer.ErrBadName, transfer.QuoteName(name), err)
			continue
		}
		for _, d := range made {
			dirs[parentDir(d)] = append(dirs[parentDir(d)], i)
		}
		if p.replace {
			// --update: atomic, and only now that the data is durable,
			// so that the name holds the old content or the new one.
			// The state record goes first, so that no record outlives
			// its data file; until the partials directory is synced, a
			// crash may leave both, as after a link that was cut short
			// (FinishCommit). The data file leaves the partials
			// directory; Tidy syncs it.
			_, statePath, _ := s.paths(p.key)
			if err := s.fs.Remove(statePath); err != nil && !isNotExist(err) {
				errs[i] = fmt.Errorf("removing state record: %w", err)
				continue
			}
			if err := s.fs.Rename(dataPath, name); err != nil {
				errs[i] = fmt.Errorf("renaming into place: %w", err)
				continue
			}
			dirs[parentDir(name)] = append(dirs[parentDir(name)], i)
			continue
		}
		if err := s.fs.Link(dataPath, name); err != nil {
			if !errors.Is(err, os.ErrExist) {
				errs[i] = fmt.Errorf("linking into place: %w", err)
				continue
			}
			if !s.linkedAt(p.key, name) {
				errs[i] = fmt.Errorf("%w: %s", transfer.ErrExists, transfer.QuoteName(name))
				continue
			}
		}
		dirs[parentDir(name)] = append(dirs[parentDir(name)], i)
	}
	if s.skipCommitDirSync || len(dirs) == 0 {
		return errs
	}
	if ds, ok := strategy.(DirSyncer); ok && ds.SyncDirs(len(files)) {
		return errs
	}
	names := make([]string, 0, len(dirs))
	for d := range dirs {
		names = append(names, d)
	}
	derrs := make([]error, len(names))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for k, d := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			derrs[k] = s.fs.SyncDir(d)
		}()
	}
	wg.Wait()
	for k, err := range derrs {
		if err == nil {
			continue
		}
		for _, i := range dirs[names[k]] {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("fsync directory %s: %w", transfer.QuoteName(names[k]), err)
			}
		}
	}
	return errs
}

// Tidy implements Store: the partials of committed files are closed and
// removed, then the partials' directory is fsynced once. The data files
// were fsynced by CommitGroup, yet a close error is still reported.
func (s *DirStore) Tidy(ps []Partial) error {
	var first error
	note := func(err error) {
		if first == nil {
			first = err
		}
	}
	for _, pp := range ps {
		p, ok := pp.(*dirPartial)
		if !ok {
			continue
		}
		dataPath, statePath, _ := s.paths(p.key)
		if err := p.Close(); err != nil {
			note(fmt.Errorf("closing partial data: %w", err))
		}
		if p.recorded {
			if err := s.fs.Remove(statePath); err != nil && !isNotExist(err) {
				note(fmt.Errorf("removing state record: %w", err))
			}
		}
		if err := s.fs.Remove(dataPath); err != nil && !isNotExist(err) {
			note(fmt.Errorf("removing partial data: %w", err))
		}
	}
	if err := s.fs.SyncDir(partialsDir); err != nil {
		note(fmt.Errorf("fsync %s: %w", partialsDir, err))
	}
	return first
}

// LeftoverError is returned by Partial.Commit when the file is committed,
// in place and durable, but its partial could not be removed. It is not
// the sender's failure: reporting it as one made the sender's retry fail
// with ErrExists on a file that had arrived whole (iofault_test.go).
type LeftoverError struct{ Err error }

func (e *LeftoverError) Error() string { return "committed, but " + e.Err.Error() }
func (e *LeftoverError) Unwrap() error { return e.Err }

func (p *dirPartial) Close() error {
	var derr error
	if p.direct != nil {
		derr = p.direct.Close()
		p.direct = nil
	}
	if p.f == nil {
		return derr
	}
	if p.prealloc {
		// An unfinished transfer gives back the blocks it reserved past
		// its data, so that abandoned offers cannot hold the disk; a
		// resume reserves them again.
		trimPrealloc(p.f, p.st.Size)
		p.prealloc = false
	}
	err := p.f.Close()
	p.f = nil
	if err == nil {
		err = derr
	}
	return err
}

// mkdirsNoSync creates dir and its missing parents one at a time and
// appends each directory it made to made; the caller fsyncs each one's
// parent (CommitGroup does, once per group).
func mkdirsNoSync(fs FS, dir string, perm os.FileMode, made *[]string) error {
	if dir == "." || dir == "" {
		return nil
	}
	fi, err := fs.Lstat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", transfer.QuoteName(dir))
		}
		return nil
	}
	if !isNotExist(err) {
		return err
	}
	if err := mkdirsNoSync(fs, parentDir(dir), perm, made); err != nil {
		return err
	}
	// Made by another session meanwhile, maybe not durable yet: its
	// parent is fsynced with this group too.
	if err := fs.Mkdir(dir, perm); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	*made = append(*made, dir)
	return nil
}

// mkdirs creates dir and its missing parents one at a time, fsyncing each
// new directory's parent so that the entry survives a crash.
func mkdirs(fs FS, dir string, perm os.FileMode) error {
	var made []string
	if err := mkdirsNoSync(fs, dir, perm, &made); err != nil {
		return err
	}
	for _, d := range made { // parents first, as mkdirsNoSync made them
		if err := fs.SyncDir(parentDir(d)); err != nil {
			return err
		}
	}
	return nil
}

// PartialBytes returns the bytes held by partials: the sizes of their
// data files, including those a commit is finishing. It returns 0 on an
// FS that is not a DirReader, and the error of listing or of a Lstat
// other than of a partial that went away meanwhile.
func (s *DirStore) PartialBytes() (int64, error) {
	rd, ok := s.fs.(DirReader)
	if !ok {
		return 0, nil
	}
	names, err := rd.ReadDir(partialsDir)
	if err != nil {
		return 0, fmt.Errorf("listing %s: %w", partialsDir, err)
	}
	var n int64
	for _, name := range names {
		if !strings.HasSuffix(name, ".data") {
			continue
		}
		fi, err := s.fs.Lstat(path.Join(partialsDir, name))
		if isNotExist(err) {
			continue // committed or discarded since the listing
		}
		if err != nil {
			return n, err
		}
		n += fi.Size()
	}
	return n, nil
}
