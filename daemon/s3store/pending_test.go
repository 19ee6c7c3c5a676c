package s3store

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/internal/versitygw"
	"github.com/ferry-dev/ferry/transfer"
)

// TestPendingPartResolvedOnResume: a part boundary's state object is
// written while the gateway still answers the part, naming that part as
// pending. A resume counts the part when the upload lists it whole (the
// state at its end holds) and falls back to the state at its start when
// it does not (the daemon died before the gateway answered).
func TestPendingPartResolvedOnResume(t *testing.T) {
	gw := versitygw.Start(t)
	gw.CreateBucket(t, "pending")
	const partSz, cs = 5 << 20, 1 << 20
	s := partStore(t, gw, "pending", partSz)
	size := int64(3*partSz + 100)
	b := randomBytes(size, 1)
	o := &transfer.Offer{Name: "f.bin", Size: size, Mode: 0o644, MtimeNs: 7, Inode: 9}
	const key = "k"

	pp, _, err := s.Open(key, o, cs, false)
	if err != nil {
		t.Fatal(err)
	}
	stack, err := transfer.NewMergeStack(cs)
	if err != nil {
		t.Fatal(err)
	}
	stacks := map[int64]transfer.MergeStack{0: *stack}
	for off := int64(0); off < 3*partSz; off += cs {
		if err := pp.WriteAt(b[off:off+cs], off); err != nil {
			t.Fatal(err)
		}
		h, err := transfer.ChunkHash(b[off:off+cs], off, size)
		if err != nil {
			t.Fatal(err)
		}
		if err := stack.Push(transfer.CV(h), cs); err != nil {
			t.Fatal(err)
		}
		if end := off + cs; end%partSz == 0 {
			stacks[end] = *stack
			if end == 3*partSz {
				break // part 3 is uploaded but never recorded
			}
			if d, err := pp.Sync(stack); err != nil || d != end {
				t.Fatalf("Sync(%d) = %d, %v", end, d, err)
			}
		}
	}
	if err := pp.Close(); err != nil {
		t.Fatal(err)
	}
	doc, st, _, found, err := s.loadState(key)
	if err != nil || !found {
		t.Fatalf("state object: found %v, %v", found, err)
	}
	if doc.Pending == nil || doc.Pending.Number != 2 || len(doc.Parts) != 1 || st.DurableOffset != 2*partSz {
		t.Fatalf("state object: pending %+v, %d parts, durable offset %d; want part 2 pending after part 1, at %d",
			doc.Pending, len(doc.Parts), st.DurableOffset, 2*partSz)
	}
	resumes := func(want int64) {
		t.Helper()
		p, restarted, err := s.Open(key, o, cs, false)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close() //nolint:errcheck // nothing written
		got := p.State()
		if restarted || got.DurableOffset != want {
			t.Fatalf("resumed at %d (restarted %v), want %d", got.DurableOffset, restarted, want)
		}
		ws := stacks[want]
		g, err1 := got.Stack.MarshalBinary()
		w, err2 := ws.MarshalBinary()
		if err1 != nil || err2 != nil || !slices.Equal(g, w) {
			t.Fatalf("merge stack at %d is not the one of the data", want)
		}
	}
	// Part 2 was answered: it is listed whole, and the state at its end
	// holds.
	resumes(2 * partSz)

	// Part 3 was uploaded, but the daemon died while its state object
	// named it pending with a wrong size (as a part cut short would be
	// listed): the state at its start holds.
	put := func(d *stateDoc) {
		t.Helper()
		raw, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := gw.Core(t).PutObject(t.Context(), "pending", s.stateObject(key), bytes.NewReader(raw), int64(len(raw)), "", "",
			minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	stateAt := func(d int64) []byte {
		t.Helper()
		x := *st
		x.DurableOffset, x.Stack = d, stacks[d]
		rec, err := daemon.EncodeState(&x)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	doc2, _, _, _, err := s.loadState(key)
	if err != nil {
		t.Fatal(err)
	}
	parts := append([]part(nil), doc2.Parts...)
	// loadState does not resolve: complete part 2 as resolve would.
	res, err := gw.Core(t).ListObjectParts(t.Context(), "pending", s.object("f.bin"), doc2.UploadID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, lp := range res.ObjectParts {
		if lp.PartNumber == 2 {
			parts = append(parts, part{Number: 2, ETag: lp.ETag})
		}
	}
	wrong := &stateDoc{Version: 1, UploadID: doc2.UploadID, PartSize: partSz, Parts: parts,
		State: stateAt(3 * partSz), Pending: &pendingPart{Number: 3, Size: partSz - 1}, Prev: stateAt(2 * partSz)}
	put(wrong)
	resumes(2 * partSz)

	// Listed whole: the state at its end holds.
	right := *wrong
	right.Pending = &pendingPart{Number: 3, Size: partSz}
	put(&right)
	resumes(3 * partSz)

	// A pending part that was never uploaded at all (the file's last,
	// 100 bytes): the state at its start.
	h, err := transfer.ChunkHash(b[3*partSz:], 3*partSz, size)
	if err != nil {
		t.Fatal(err)
	}
	last := stacks[3*partSz]
	if err := last.Push(transfer.CV(h), size-3*partSz); err != nil {
		t.Fatal(err)
	}
	stacks[size] = last
	res, err = gw.Core(t).ListObjectParts(t.Context(), "pending", s.object("f.bin"), doc2.UploadID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, lp := range res.ObjectParts {
		if lp.PartNumber == 3 {
			parts = append(parts, part{Number: 3, ETag: lp.ETag})
		}
	}
	never := *wrong
	never.Parts = parts
	never.State, never.Prev = stateAt(size), stateAt(3*partSz)
	never.Pending = &pendingPart{Number: 4, Size: size - 3*partSz}
	put(&never)
	resumes(3 * partSz)
}

// partStore returns a store on bucket whose parts are partSz bytes.
func partStore(t *testing.T, gw *versitygw.Server, bucket string, partSz int64) *Store {
	s := New(gw.Core(t), bucket, "")
	s.PartSize = partSz
	return s
}

// randomBytes returns n bytes of a stream that seed picks.
func randomBytes(n int64, seed byte) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b) // never fails
	return b
}
