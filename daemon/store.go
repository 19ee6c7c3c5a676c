package daemon

import (
	"errors"
	"io"
	"sync"
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

// LeftoverError is returned by Partial.Commit when the file is committed,
// in place and durable, but its partial could not be removed. It is not
// the sender's failure: reporting it as one made the sender's retry fail
// with ErrExists on a file that had arrived whole (iofault_test.go).
type LeftoverError struct{ Err error }

func (e *LeftoverError) Error() string { return "committed, but " + e.Err.Error() }

func (e *LeftoverError) Unwrap() error { return e.Err }
