package storetest

import (
	"bytes"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// MemBacking is what a MemStore keeps across a restart: the durable
// partials and the committed files. Data written but not synced lives in
// the partial alone, and is lost when a store is reopened over the
// backing without closing it (a crash).
type MemBacking struct {
	mu        sync.Mutex
	partials  map[string]*memRecord // key → durable partial
	committed map[string]*memFile   // name → committed file
}

type memRecord struct {
	st   daemon.State
	data []byte // [0, st.DurableOffset)
}

type memFile struct {
	data  []byte
	mode  uint32
	mtime int64
	hash  transfer.Hash
}

// NewMemBacking returns an empty backing.
func NewMemBacking() *MemBacking {
	return &MemBacking{partials: make(map[string]*memRecord), committed: make(map[string]*memFile)}
}

// MemStore is an in-memory daemon.Store over a MemBacking, for unit
// tests. With Part > 0 it behaves as an object store does: Sync makes
// only whole parts of Part bytes durable (a daemon.SyncAligner), and a
// commit is one atomic step that never overwrites. It is safe for
// concurrent use on distinct keys.
type MemStore struct {
	b *MemBacking
	// Part, when > 0, is the part size in bytes, rounded up to a multiple
	// of each partial's chunk size.
	Part int64
}

var _ daemon.Store = (*MemStore)(nil)

// NewMemStore returns a store over b (a restarted daemon: a new store
// over the same backing).
func NewMemStore(b *MemBacking, part int64) *MemStore { return &MemStore{b: b, Part: part} }

// Exists implements daemon.Store: a committed file at name, or a
// directory (a prefix of one); a file as a directory is a bad name.
func (s *MemStore) Exists(name string) (bool, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if _, ok := s.b.committed[name]; ok {
		return true, nil
	}
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		if _, ok := s.b.committed[d]; ok {
			return false, fmt.Errorf("%w: %s: %s is a file, not a directory", transfer.ErrBadName, transfer.QuoteName(name), transfer.QuoteName(d))
		}
	}
	for n := range s.b.committed {
		if strings.HasPrefix(n, name+"/") {
			return true, nil
		}
	}
	return false, nil
}

// Stat implements daemon.Store.
func (s *MemStore) Stat(name string) (int64, time.Time, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	f, ok := s.b.committed[name]
	if !ok {
		return 0, time.Time{}, fmt.Errorf("%w: %s", daemon.ErrNotFound, transfer.QuoteName(name))
	}
	return int64(len(f.data)), time.Unix(0, f.mtime), nil
}

// OpenCommitted implements daemon.Store.
func (s *MemStore) OpenCommitted(name string) (daemon.CommittedFile, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	f, ok := s.b.committed[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", daemon.ErrNotFound, transfer.QuoteName(name))
	}
	return &memCommitted{Reader: bytes.NewReader(f.data), f: f}, nil
}

type memCommitted struct {
	*bytes.Reader
	f *memFile
}

func (m *memCommitted) Close() error { return nil }

// StoredHash implements daemon.HashStorer.
func (m *memCommitted) StoredHash(size, mtimeNs int64) (transfer.Hash, bool) {
	return m.f.hash, int64(len(m.f.data)) == size && m.f.mtime == mtimeNs
}

// FinishCommit implements daemon.Store: a commit is atomic, so there is
// none to finish; a partial left by a finished commit is removed.
func (s *MemStore) FinishCommit(key, name string) (bool, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if r, ok := s.b.partials[key]; ok && r.st.Name == name {
		if _, done := s.b.committed[name]; done && r.st.DurableOffset == r.st.Size {
			delete(s.b.partials, key)
		}
	}
	return false, nil
}

// Open implements daemon.Store. A partial recorded in larger chunks than
// chunkSize is discarded: its tail cannot be re-read to re-cut it.
func (s *MemStore) Open(key string, o *transfer.Offer, chunkSize int, restart bool) (daemon.Partial, bool, error) {
	if err := transfer.CheckChunkSize(chunkSize); err != nil {
		return nil, false, fmt.Errorf("bug: %w", err)
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	r, found := s.b.partials[key]
	if found && !restart && r.st.SameSource(o) && r.st.Stack.ChunkSize() <= chunkSize {
		cs := r.st.Stack.ChunkSize()
		return &memPartial{s: s, key: key, st: r.st, data: bytes.Clone(r.data), part: s.partSize(cs)}, false, nil
	}
	stack, err := transfer.NewMergeStack(chunkSize)
	if err != nil {
		return nil, false, err
	}
	delete(s.b.partials, key)
	st := daemon.State{Name: o.Name, Size: o.Size, Mode: o.Mode, MtimeNs: o.MtimeNs, Inode: o.Inode, PrefixID: o.PrefixID, Stack: *stack}
	return &memPartial{s: s, key: key, st: st, part: s.partSize(chunkSize)}, found, nil
}

func (s *MemStore) partSize(chunkSize int) int64 {
	if s.Part <= 0 {
		return 0
	}
	cs := int64(chunkSize)
	return (s.Part + cs - 1) / cs * cs
}

// CommitGroup implements daemon.Store: each file is committed whole, or
// refused with transfer.ErrExists.
func (s *MemStore) CommitGroup(ps []daemon.Partial) []error {
	errs := make([]error, len(ps))
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	for i, pp := range ps {
		p, ok := pp.(*memPartial)
		if !ok || p.s.b != s.b || p.closed {
			errs[i] = fmt.Errorf("bug: committing a partial of another store, or closed")
			continue
		}
		if int64(len(p.data)) != p.st.Size {
			errs[i] = fmt.Errorf("bug: committing %d of %d bytes", len(p.data), p.st.Size)
			continue
		}
		name := p.st.Name
		if _, taken := s.b.committed[name]; taken {
			errs[i] = fmt.Errorf("%w: %s", transfer.ErrExists, transfer.QuoteName(name))
			continue
		}
		s.b.committed[name] = &memFile{data: bytes.Clone(p.data), mode: p.st.Mode, mtime: p.st.MtimeNs, hash: transfer.HashBytes(p.data)}
	}
	return errs
}

// Tidy implements daemon.Store.
func (s *MemStore) Tidy(ps []daemon.Partial) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	for _, pp := range ps {
		if p, ok := pp.(*memPartial); ok {
			delete(s.b.partials, p.key)
			p.closed = true
		}
	}
	return nil
}

// memPartial is a MemStore partial: data holds every byte written, of
// which [0, st.DurableOffset) is in the backing.
type memPartial struct {
	s   *MemStore
	key string

	mu     sync.Mutex // WriteAt and Sync run concurrently
	st     daemon.State
	data   []byte
	part   int64
	closed bool
}

func (p *memPartial) State() daemon.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// SyncAlign implements daemon.SyncAligner (0 without parts).
func (p *memPartial) SyncAlign() int64 { return p.part }

func (p *memPartial) WriteAt(b []byte, off int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if off != int64(len(p.data)) && off > p.st.DurableOffset {
		return fmt.Errorf("bug: write at %d, data ends at %d", off, len(p.data))
	}
	p.data = append(p.data[:off], b...)
	return nil
}

func (p *memPartial) Sync(stack *transfer.MergeStack) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := stack.Offset()
	if p.part > 0 && d < p.st.Size {
		if d%p.part != 0 {
			return p.st.DurableOffset, nil // whole parts only: this one is not
		}
	}
	if d > int64(len(p.data)) {
		return p.st.DurableOffset, fmt.Errorf("bug: sync at %d, %d bytes written", d, len(p.data))
	}
	st := p.st
	st.DurableOffset, st.Stack = d, *stack
	p.s.b.mu.Lock()
	p.s.b.partials[p.key] = &memRecord{st: st, data: bytes.Clone(p.data[:d])}
	p.s.b.mu.Unlock()
	p.st = st
	return d, nil
}

func (p *memPartial) Commit() error {
	if err := p.s.CommitGroup([]daemon.Partial{p})[0]; err != nil {
		return err
	}
	if err := p.s.Tidy([]daemon.Partial{p}); err != nil {
		return &daemon.LeftoverError{Err: err}
	}
	return nil
}

func (p *memPartial) Close() error {
	p.closed = true
	return nil
}

var _ io.ReaderAt = (*memCommitted)(nil)
