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

// DirStore: the Store of ferryd's root, partials and their state records
// under ROOT/.ferry/partials, committed files linked into place in groups.

var _ Store = (*DirStore)(nil)

// partialsDir holds the partials, relative to the root.
var partialsDir = path.Join(transfer.ReservedDir, "partials")

// errDamaged marks a partial that cannot be resumed and is discarded: its
// data is missing, shorter than the durable offset, or its tail chunk no
// longer matches. Other errors from resume are I/O errors, which must not
// discard a partial (an EIO while re-reading the tail used to restart the
// transfer from zero; iofault_test.go).
var errDamaged = errors.New("partial damaged")

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
