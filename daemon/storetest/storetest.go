// Package storetest is the conformance suite every daemon.Store passes
// (Run) and every daemon.Locker (RunLocker). It checks the contract the
// session relies on: durable offsets, resume, restart, commits that never
// overwrite, group commit, Exists and Stat, classified errors, and the
// crash case that applies to every store (a store reopened after an
// un-synced write resumes at the last durable offset it reported).
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// ChunkSize is the chunk size the suite writes in (16 KiB).
const ChunkSize = transfer.MinChunkSize

// NewStore returns a store for a subtest. The first call with a given t
// returns a store over fresh, empty backing storage; every later call
// with the same t returns a new store over the same storage, as a
// daemon restarted (after a crash: partials are not closed) would get.
type NewStore func(t *testing.T) daemon.Store

var mtime = time.Date(2025, 3, 4, 5, 6, 7, 891011121, time.UTC)

// offer describes a source of size bytes named name; inode tells sources
// apart.
func offer(name string, size int64, inode uint64) *transfer.Offer {
	return &transfer.Offer{Name: name, Size: size, Mode: 0o640, MtimeNs: mtime.UnixNano(), Inode: inode}
}

// data returns size bytes from seed.
func data(size int64, seed byte) []byte {
	b := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b) // never fails
	return b
}

// key returns a partial key for name.
func key(name string) string {
	h := transfer.HashBytes([]byte("storetest\x00" + name))
	return fmt.Sprintf("%x", h[:16])
}

// unit returns the sync granularity of p: its part size, or 4 chunks.
func unit(p daemon.Partial) int64 {
	if a, ok := p.(daemon.SyncAligner); ok && a.SyncAlign() > 0 {
		return a.SyncAlign()
	}
	return 4 * ChunkSize
}

// write writes b[from:to) in chunks and returns the merge stack at to,
// continuing stack (the one at from).
func write(t *testing.T, p daemon.Partial, b []byte, stack *transfer.MergeStack, to int64) {
	t.Helper()
	size := int64(len(b))
	for off := stack.Offset(); off < to; off += ChunkSize {
		end := min(off+ChunkSize, size)
		if err := p.WriteAt(b[off:end], off); err != nil {
			t.Fatalf("WriteAt(%d): %v", off, err)
		}
		h, err := transfer.ChunkHash(b[off:end], off, size)
		if err != nil {
			t.Fatal(err)
		}
		if err := stack.Push(transfer.CV(h), end-off); err != nil {
			t.Fatal(err)
		}
	}
}

// syncAt syncs p at stack and checks the durable offset reported: all of it
// for a store that is no SyncAligner or at a part boundary, what was
// durable before otherwise.
func syncAt(t *testing.T, p daemon.Partial, stack *transfer.MergeStack) int64 {
	t.Helper()
	before := p.State().DurableOffset
	d, err := p.Sync(stack)
	if err != nil {
		t.Fatalf("Sync(%d): %v", stack.Offset(), err)
	}
	want := stack.Offset()
	if a, ok := p.(daemon.SyncAligner); ok && a.SyncAlign() > 0 && want%a.SyncAlign() != 0 {
		want = before
	}
	if d != want {
		t.Fatalf("Sync(%d) reached %d, want %d", stack.Offset(), d, want)
	}
	if got := p.State().DurableOffset; got != d {
		t.Fatalf("State().DurableOffset %d after Sync reported %d", got, d)
	}
	return d
}

func open(t *testing.T, s daemon.Store, name string, o *transfer.Offer, restart bool) (daemon.Partial, bool) {
	t.Helper()
	p, restarted, err := s.Open(key(name), o, ChunkSize, restart)
	if err != nil {
		t.Fatalf("Open(%s): %v", name, err)
	}
	return p, restarted
}

func newStack(t *testing.T) *transfer.MergeStack {
	t.Helper()
	s, err := transfer.NewMergeStack(ChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// setHash gives p the whole-file BLAKE3 of b, as the session does before
// a commit, if p records one.
func setHash(p daemon.Partial, b []byte) {
	if hp, ok := p.(interface{ SetHash(transfer.Hash) }); ok {
		hp.SetHash(transfer.HashBytes(b))
	}
}

// committed checks that name holds b with the suite's mtime.
func committed(t *testing.T, s daemon.Store, name string, b []byte) {
	t.Helper()
	ok, err := s.Exists(name)
	if err != nil || !ok {
		t.Fatalf("Exists(%s) = %v, %v after its commit", name, ok, err)
	}
	size, mt, err := s.Stat(name)
	if err != nil {
		t.Fatalf("Stat(%s): %v", name, err)
	}
	if size != int64(len(b)) || !mt.Equal(mtime) {
		t.Errorf("Stat(%s) = %d, %v; want %d, %v", name, size, mt, len(b), mtime)
	}
	f, err := s.OpenCommitted(name)
	if err != nil {
		t.Fatalf("OpenCommitted(%s): %v", name, err)
	}
	defer f.Close() //nolint:errcheck // read-only
	got := make([]byte, len(b))
	if n, err := f.ReadAt(got, 0); n != len(b) || err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("reading %s: %d bytes, %v", name, n, err)
	}
	if !bytes.Equal(got, b) {
		t.Fatalf("%s: committed bytes differ from those written", name)
	}
	if hs, ok := f.(daemon.HashStorer); ok {
		if h, ok := hs.StoredHash(int64(len(b)), mtime.UnixNano()); !ok || h != transfer.HashBytes(b) {
			t.Errorf("%s: stored hash %x (%v), want %x", name, h, ok, transfer.HashBytes(b))
		}
	}
}

// commitWhole writes b as name in one go and commits it.
func commitWhole(t *testing.T, s daemon.Store, name string, b []byte, inode uint64) error {
	t.Helper()
	// A key of its own: another session's partial for the name.
	p, _, err := s.Open(key(fmt.Sprint(name, "\x00", inode)), offer(name, int64(len(b)), inode), ChunkSize, false)
	if err != nil {
		t.Fatalf("Open(%s): %v", name, err)
	}
	write(t, p, b, newStack(t), int64(len(b)))
	setHash(p, b)
	return p.Commit()
}

// Run runs the conformance suite on the stores newStore returns.
func Run(t *testing.T, newStore NewStore) {
	t.Run("Fresh", func(t *testing.T) {
		s := newStore(t)
		o := offer("fresh", 3*ChunkSize, 1)
		p, restarted := open(t, s, "fresh", o, false)
		defer p.Close() //nolint:errcheck // abandoned
		st := p.State()
		if restarted || st.DurableOffset != 0 || st.Stack.ChunkSize() != ChunkSize || !st.SameSource(o) {
			t.Fatalf("fresh partial: restarted %v, durable %d, chunk %d, same source %v", restarted, st.DurableOffset, st.Stack.ChunkSize(), st.SameSource(o))
		}
		if finished, err := s.FinishCommit(key("fresh"), "fresh"); finished || err != nil {
			t.Fatalf("FinishCommit of a fresh partial = %v, %v", finished, err)
		}
	})

	t.Run("DurableOffset", func(t *testing.T) {
		s := newStore(t)
		p, _ := open(t, s, "durable", offer("durable", 1, 1), false)
		u := unit(p)
		p.Close() //nolint:errcheck,gosec // reopened below with the real size
		size := 3*u + u/2 + 100
		b := data(size, 1)
		p, _ = open(t, s, "durable", offer("durable", size, 1), true)
		defer p.Close() //nolint:errcheck // abandoned
		stack := newStack(t)
		var last int64
		for _, to := range []int64{u - ChunkSize, u, u + 2*ChunkSize, 3 * u} {
			write(t, p, b, stack, to)
			d := syncAt(t, p, stack)
			if d < last {
				t.Fatalf("durable offset went back from %d to %d", last, d)
			}
			last = d
		}
	})

	t.Run("ResumeAfterReopen", func(t *testing.T) {
		s := newStore(t)
		p, _ := open(t, s, "dir/resume", offer("dir/resume", 1, 1), false)
		u := unit(p)
		p.Close() //nolint:errcheck,gosec // reopened below
		size := 2*u + 3*ChunkSize + 5
		b := data(size, 2)
		o := offer("dir/resume", size, 7)
		p, _ = open(t, s, "dir/resume", o, true)
		stack := newStack(t)
		write(t, p, b, stack, u)
		d := syncAt(t, p, stack)
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		s = newStore(t)
		p, restarted := open(t, s, "dir/resume", o, false)
		st := p.State()
		if restarted || st.DurableOffset != d {
			t.Fatalf("resumed at %d (restarted %v), want %d", st.DurableOffset, restarted, d)
		}
		off, h := st.Tail()
		want, _ := transfer.ChunkHash(b[off:d], off, size)
		if h != want || d-off != ChunkSize {
			t.Fatalf("tail [%d,%d) hash %x, want %x", off, d, h, want)
		}
		stack = &st.Stack
		write(t, p, b, stack, size)
		if got, _ := stack.Sum(size); got != transfer.HashBytes(b) {
			t.Fatal("merge stack after resume does not give the whole-file hash")
		}
		setHash(p, b)
		if err := p.Commit(); err != nil {
			t.Fatalf("Commit after resume: %v", err)
		}
		committed(t, s, "dir/resume", b)
		p, restarted = open(t, s, "dir/resume", o, false)
		defer p.Close() //nolint:errcheck // abandoned
		if p.State().DurableOffset != 0 {
			t.Errorf("partial after its commit resumes at %d (restarted %v), want a fresh one", p.State().DurableOffset, restarted)
		}
	})

	t.Run("CrashAfterUnsyncedWrite", func(t *testing.T) {
		s := newStore(t)
		p, _ := open(t, s, "crash", offer("crash", 1, 1), false)
		u := unit(p)
		p.Close() //nolint:errcheck,gosec // reopened below
		size := 3 * u
		b := data(size, 3)
		o := offer("crash", size, 3)
		p, _ = open(t, s, "crash", o, true)
		stack := newStack(t)
		write(t, p, b, stack, u)
		d := syncAt(t, p, stack)
		write(t, p, b, stack, 2*u+ChunkSize) // never synced; the daemon dies
		s = newStore(t)
		p2, restarted := open(t, s, "crash", o, false)
		defer p2.Close() //nolint:errcheck // abandoned
		if got := p2.State().DurableOffset; restarted || got != d {
			t.Fatalf("after a crash: resumed at %d (restarted %v), want the durable offset %d", got, restarted, d)
		}
	})

	t.Run("RestartOnOtherSource", func(t *testing.T) {
		s := newStore(t)
		size := int64(6 * ChunkSize)
		b := data(size, 4)
		o := offer("other", size, 4)
		p, _ := open(t, s, "other", o, false)
		stack := newStack(t)
		write(t, p, b, stack, size-ChunkSize)
		if _, err := p.Sync(stack); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			what    string
			o       *transfer.Offer
			restart bool
		}{
			{"another inode", offer("other", size, 5), false},
			{"another size", offer("other", size+1, 4), false},
			{"restart asked", o, true},
		} {
			s = newStore(t)
			p, _ := open(t, s, "other", c.o, c.restart)
			if st := p.State(); st.DurableOffset != 0 || !st.SameSource(c.o) {
				d := st.DurableOffset
				t.Errorf("%s: resumed at %d, want a fresh partial", c.what, d)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("CommitNeverOverwrites", func(t *testing.T) {
		s := newStore(t)
		first := data(2*ChunkSize+7, 5)
		if err := commitWhole(t, s, "taken", first, 1); err != nil {
			t.Fatalf("first commit: %v", err)
		}
		second := data(3*ChunkSize, 6)
		err := commitWhole(t, s, "taken", second, 2)
		if !errors.Is(err, transfer.ErrExists) {
			t.Fatalf("second commit on a taken name: %v, want ErrExists", err)
		}
		committed(t, s, "taken", first)
		// A file of several parts, committed by another path (a
		// multipart upload on an object store).
		p, _ := open(t, s, "taken", offer("taken", 1, 3), false)
		u := unit(p)
		p.Close() //nolint:errcheck,gosec // reopened below
		third := data(2*u+ChunkSize, 7)
		err = commitWhole(t, s, "taken", third, 3)
		if !errors.Is(err, transfer.ErrExists) {
			t.Fatalf("commit of %d bytes on a taken name: %v, want ErrExists", len(third), err)
		}
		committed(t, s, "taken", first)
	})

	t.Run("GroupCommit", func(t *testing.T) {
		s := newStore(t)
		names := []string{"g/a", "g/b", "g/c/d", "small", "empty"}
		sizes := []int64{3*ChunkSize + 1, ChunkSize, 2 * ChunkSize, 10, 0}
		var ps []daemon.Partial
		var bs [][]byte
		for i, n := range names {
			b := data(sizes[i], byte(10+i))
			p, _ := open(t, s, n, offer(n, sizes[i], uint64(i)), false)
			write(t, p, b, newStack(t), sizes[i])
			setHash(p, b)
			ps, bs = append(ps, p), append(bs, b)
		}
		if err := commitWhole(t, s, "g/b", data(5, 99), 99); err != nil { // takes g/b first
			t.Fatal(err)
		}
		errs := s.CommitGroup(ps)
		if len(errs) != len(ps) {
			t.Fatalf("CommitGroup returned %d errors for %d partials", len(errs), len(ps))
		}
		var done []daemon.Partial
		for i, err := range errs {
			if names[i] == "g/b" {
				if !errors.Is(err, transfer.ErrExists) {
					t.Errorf("%s: %v, want ErrExists", names[i], err)
				}
				_ = ps[i].Close()
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", names[i], err)
			}
			done = append(done, ps[i])
		}
		if err := s.Tidy(done); err != nil {
			t.Fatalf("Tidy: %v", err)
		}
		for i, n := range names {
			if n != "g/b" {
				committed(t, s, n, bs[i])
			}
		}
		if ok, err := s.Exists("g/c"); err != nil || !ok {
			t.Errorf("Exists of a directory of committed files = %v, %v", ok, err)
		}
	})

	t.Run("MissingIsNotFound", func(t *testing.T) {
		s := newStore(t)
		if ok, err := s.Exists("nothing/here"); ok || err != nil {
			t.Errorf("Exists of nothing = %v, %v", ok, err)
		}
		if _, _, err := s.Stat("nothing"); !errors.Is(err, daemon.ErrNotFound) {
			t.Errorf("Stat of nothing: %v, want ErrNotFound", err)
		}
		if _, err := s.OpenCommitted("nothing"); !errors.Is(err, daemon.ErrNotFound) {
			t.Errorf("OpenCommitted of nothing: %v, want ErrNotFound", err)
		}
	})

	t.Run("FileAsDirectory", func(t *testing.T) {
		s := newStore(t)
		if err := commitWhole(t, s, "file", data(10, 7), 1); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Exists("file/inside"); !errors.Is(err, transfer.ErrBadName) {
			t.Errorf("Exists under a file: %v, want ErrBadName", err)
		}
	})
}

// NewLocker returns a Locker for a subtest; every call with the same t
// returns one that shares the locks of the first (another daemon).
type NewLocker func(t *testing.T) daemon.Locker

// RunLocker runs the conformance suite of a Locker.
func RunLocker(t *testing.T, newLocker NewLocker) {
	t.Run("Exclusive", func(t *testing.T) {
		a, b := newLocker(t), newLocker(t)
		ctx := context.Background()
		la, err := a.Lock(ctx, key("x"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Lock(ctx, key("x")); !errors.Is(err, daemon.ErrLocked) {
			t.Fatalf("second Lock of a held key: %v, want ErrLocked", err)
		}
		lb, err := b.Lock(ctx, key("y"))
		if err != nil {
			t.Fatalf("Lock of another key: %v", err)
		}
		select {
		case <-la.Lost():
			t.Fatal("a held lock reports itself lost")
		default:
		}
		if err := la.Unlock(); err != nil {
			t.Fatal(err)
		}
		lx, err := b.Lock(ctx, key("x"))
		if err != nil {
			t.Fatalf("Lock after Unlock: %v", err)
		}
		for _, l := range []daemon.Lock{lb, lx} {
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
		}
	})
}
