package s3store

import (
	"bytes"
	"errors"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/internal/versitygw"
	"github.com/ferry-dev/ferry/transfer"
)

// TestStateWriteConditional: a daemon that lost a transfer to another
// (its lease taken over while it was paused) and writes on never
// overwrites the state object the new holder wrote: its write is
// conditional on the ETag it last wrote, fails, and the new holder's
// state stands. A state object that is damaged is replaced by a new
// partial's first write.
func TestStateWriteConditional(t *testing.T) {
	gw := versitygw.Start(t)
	gw.CreateBucket(t, "cond")
	const partSz, cs = 5 << 20, 1 << 20
	newStore := func() *Store { return partStore(t, gw, "cond", partSz) }
	size := int64(4 * partSz)
	b := randomBytes(size, 3)
	o := &transfer.Offer{Name: "c.bin", Size: size, Mode: 0o644, MtimeNs: 7, Inode: 9}
	const key = "k"
	// writeTo writes p's chunks from stack's offset to `to`, syncing at
	// each part boundary, and returns the first Sync error.
	writeTo := func(p daemon.Partial, stack *transfer.MergeStack, to int64) error {
		t.Helper()
		for off := stack.Offset(); off < to; off += cs {
			if err := p.WriteAt(b[off:off+cs], off); err != nil {
				t.Fatal(err)
			}
			h, err := transfer.ChunkHash(b[off:off+cs], off, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := stack.Push(transfer.CV(h), cs); err != nil {
				t.Fatal(err)
			}
			if (off+cs)%partSz == 0 {
				if _, err := p.Sync(stack); err != nil {
					return err
				}
			}
		}
		return nil
	}

	// A damaged state object: a new partial's first write replaces it.
	if _, err := gw.Core(t).PutObject(t.Context(), "cond", newStore().stateObject(key), bytes.NewReader([]byte("{")), 1, "", "",
		minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	a, _, err := newStore().Open(key, o, cs, false)
	if err != nil {
		t.Fatal(err)
	}
	stackA, err := transfer.NewMergeStack(cs)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeTo(a, stackA, partSz); err != nil {
		t.Fatalf("daemon A's first state write over a damaged state object: %v", err)
	}

	// B takes the transfer over at A's durable offset and gets further.
	bp, _, err := newStore().Open(key, o, cs, false)
	if err != nil {
		t.Fatal(err)
	}
	st := bp.State()
	if st.DurableOffset != partSz {
		t.Fatalf("B resumed at %d, want %d", st.DurableOffset, partSz)
	}
	stackB := st.Stack
	if err := writeTo(bp, &stackB, 3*partSz); err != nil {
		t.Fatal(err)
	}
	if err := bp.Close(); err != nil {
		t.Fatal(err)
	}

	// A, paused meanwhile, writes on: its state write is refused.
	err = writeTo(a, stackA, 2*partSz)
	if !errors.Is(err, errStateChanged) {
		t.Fatalf("A's state write after B's: %v, want %v", err, errStateChanged)
	}
	_ = a.Close()
	s := newStore()
	_, got, _, found, err := s.loadState(key)
	if err != nil || !found {
		t.Fatalf("state object: found %v, %v", found, err)
	}
	if got.DurableOffset != 3*partSz {
		t.Fatalf("state object at %d after A's refused write, want B's %d", got.DurableOffset, 3*partSz)
	}
}
