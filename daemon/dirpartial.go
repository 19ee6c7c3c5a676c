package daemon

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/ferry-dev/ferry/transfer"
)

// dirPartial: one DirStore partial, its data file and its state record.

var _ Extender = (*dirPartial)(nil)

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
