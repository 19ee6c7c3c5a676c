package transfer

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/zeebo/blake3"
)

// chunkCVs returns the chunk chaining values of data cut at chunkSize, as
// HashChunks yields them.
func chunkCVs(t *testing.T, data []byte, chunkSize int) []CV {
	t.Helper()
	var cvs []CV
	err := HashChunks(t.Context(), bytes.NewReader(data), 0, int64(len(data)), chunkSize, 2, func(_ int64, _ []byte, cv CV) error {
		cvs = append(cvs, cv)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return cvs
}

// TestMergeStackResume stores the merge stack at every chunk boundary,
// restores it into a fresh MergeStack as a resumed daemon would, pushes the
// remaining chunks and wants the b3sum root every time.
func TestMergeStackResume(t *testing.T) {
	const c = MinTreeChunkSize
	tests := []struct {
		name string
		size int
	}{
		{"one chunk", c},
		{"two chunks", 2 * c},
		{"power of two chunks", 16 * c},
		{"ragged tail", 13*c + 5},
		{"tail of one byte", 33*c + 1},
		{"odd chunk count", 39 * c},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := randomData(tt.size, uint64(tt.size))
			want := Hash(blake3.Sum256(data))
			cvs := chunkCVs(t, data, c)
			for k := 0; k <= len(cvs); k++ {
				s, err := NewMergeStack(c)
				if err != nil {
					t.Fatal(err)
				}
				for i, cv := range cvs[:k] {
					if err := s.Push(cv, int64(min(c, tt.size-i*c))); err != nil {
						t.Fatal(err)
					}
				}
				enc, err := s.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				if len(enc) > MaxMergeStackSize || len(enc) != 10+32*MergeStackLen(s.Offset(), c) {
					t.Fatalf("after %d chunks: %d bytes encoded", k, len(enc))
				}
				var r MergeStack
				if err := r.UnmarshalBinary(enc); err != nil {
					t.Fatalf("after %d chunks: %v", k, err)
				}
				if r != *s {
					t.Fatalf("after %d chunks: restored %+v, stored %+v", k, r, *s)
				}
				for i := k; i < len(cvs); i++ {
					if err := r.Push(cvs[i], int64(min(c, tt.size-i*c))); err != nil {
						t.Fatal(err)
					}
				}
				got, err := r.Sum(int64(tt.size))
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Fatalf("resumed after %d chunks: %x, want %x", k, got, want)
				}
			}
		})
	}
}

func TestMergeStackEmptyFile(t *testing.T) {
	s, err := NewMergeStack(DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.Sum(0)
	if err != nil || h != blake3.Sum256(nil) {
		t.Fatalf("Sum(0) = %x, %v; want %x", h, err, blake3.Sum256(nil))
	}
	root, err := ChunkCV(nil, 0, true)
	if err != nil || Hash(root) != h {
		t.Fatalf("ChunkCV(empty root) = %x, %v; want %x", root, err, h)
	}
	enc, _ := s.MarshalBinary()
	if want := []byte{20, 0, 0, 0, 0, 0, 0, 0, 0, 0}; !bytes.Equal(enc, want) {
		t.Fatalf("empty stack encodes as % x, want % x", enc, want)
	}
}

func TestMergeStackErrors(t *testing.T) {
	const c = MinTreeChunkSize
	var zero MergeStack
	if err := zero.Push(CV{}, c); err == nil {
		t.Error("zero MergeStack accepted a chunk")
	}
	if _, err := zero.MarshalBinary(); err == nil {
		t.Error("zero MergeStack encoded")
	}
	s, _ := NewMergeStack(c)
	for _, n := range []int64{0, -1, c + 1} {
		if err := s.Push(CV{}, n); err == nil {
			t.Errorf("chunk of %d bytes accepted", n)
		}
	}
	if err := s.Push(CV{1}, c-1); err != nil {
		t.Fatal(err)
	}
	if err := s.Push(CV{2}, c); err == nil {
		t.Error("chunk after a short chunk accepted")
	}
	if s.Offset() != c-1 || s.Len() != 1 {
		t.Errorf("refused pushes changed the stack: offset %d, %d values", s.Offset(), s.Len())
	}
	if _, err := s.Sum(c); err == nil {
		t.Error("Sum with the wrong size accepted")
	}
	big := MergeStack{chunkShift: 14, offset: MaxFileSize - c + 1, n: 1}
	if err := big.Push(CV{}, c); err == nil {
		t.Error("chunk past MaxFileSize accepted")
	}
}

// TestMergeStackBound checks the figures of issue 10 and that the bound is
// the maximum of MergeStackLen over every offset.
func TestMergeStackBound(t *testing.T) {
	const tib, mib = 1 << 40, 1 << 20
	if got := MergeStackBound(tib, mib); got != 21 {
		t.Errorf("bound for 1 TiB in 1 MiB chunks: %d, want 21", got)
	}
	prefix := 0
	for _, off := range []int64{tib - mib, tib - 2*mib, tib/2 - mib, 0x5555500000} {
		prefix = max(prefix, MergeStackLen(off, mib))
	}
	if prefix != 20 {
		t.Errorf("most values for a proper prefix of 1 TiB in 1 MiB chunks: %d, want 20", prefix)
	}
	if got := MergeStackBound(MaxFileSize, MinTreeChunkSize); got > MaxMergeStackLen || got != 49 {
		t.Errorf("bound for MaxFileSize in 16 KiB chunks: %d", got)
	}
	if MaxMergeStackSize != 1738 {
		t.Errorf("MaxMergeStackSize %d", MaxMergeStackSize)
	}
	const c = 16 << 10
	for chunks := int64(1); chunks <= 300; chunks++ {
		size := chunks*c - 3
		most := 0
		for off := int64(0); off <= size; off = min(off+c, size) {
			most = max(most, MergeStackLen(off, c))
			if off == size {
				break
			}
		}
		if got := MergeStackBound(size, c); got != most {
			t.Fatalf("MergeStackBound(%d) = %d, want %d", size, got, most)
		}
	}
}

// TestMergeStackLayout pins the encoding documented in AppendBinary and
// docs/CHUNK-HASH.md.
func TestMergeStackLayout(t *testing.T) {
	s, _ := NewMergeStack(1 << 20)
	for i := range 3 {
		if err := s.Push(CV{byte(i + 1)}, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	enc, err := s.AppendBinary([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	// Chunks 0 and 1 merged into one parent; chunk 2 on top.
	p := wordsCV(parentCV(cvWords(&CV{1}), cvWords(&CV{2}), false))
	want := append([]byte("x\x14"), binary.BigEndian.AppendUint64(nil, 3<<20)...)
	want = append(append(append(want, 2), p[:]...), CV{3}.bytes()...)
	if !bytes.Equal(enc, want) {
		t.Fatalf("encoded\n% x\nwant\n% x", enc, want)
	}
}

func (c CV) bytes() []byte { return c[:] }

// mergeStackSeeds are valid encodings for FuzzDecodeMergeStack.
func mergeStackSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, tt := range []struct {
		chunkSize int
		lengths   []int64
	}{
		{MinTreeChunkSize, nil},
		{MinTreeChunkSize, []int64{1}},
		{MinTreeChunkSize, []int64{16 << 10, 16 << 10, 16 << 10}},
		{1 << 20, []int64{1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 5}},
		{MaxTreeChunkSize, []int64{MaxTreeChunkSize}},
	} {
		s, err := NewMergeStack(tt.chunkSize)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range tt.lengths {
			if err := s.Push(CV{byte(i), 0xff}, n); err != nil {
				t.Fatal(err)
			}
		}
		enc, _ := s.MarshalBinary()
		seeds = append(seeds, enc)
	}
	return seeds
}

// FuzzDecodeMergeStack: decoding never panics, whatever decodes re-encodes
// to the same bytes and can be pushed onto and summed, and a refused input
// leaves the stack as it was.
func FuzzDecodeMergeStack(f *testing.F) {
	for _, s := range mergeStackSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add(make([]byte, MaxMergeStackSize+1))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, _ := NewMergeStack(MinTreeChunkSize)
		if err := s.Push(CV{7}, 100); err != nil {
			t.Fatal(err)
		}
		before := *s
		if err := s.UnmarshalBinary(b); err != nil {
			if *s != before {
				t.Fatalf("refused input changed the stack: %v", err)
			}
			return
		}
		if len(b) > MaxMergeStackSize || s.Len() > MaxMergeStackLen || s.Len() > MergeStackBound(s.Offset(), s.ChunkSize()) {
			t.Fatalf("accepted %d bytes, %d values at offset %d", len(b), s.Len(), s.Offset())
		}
		enc, err := s.MarshalBinary()
		if err != nil || !bytes.Equal(enc, b) {
			t.Fatalf("re-encodes to\n% x, %v\nnot\n% x", enc, err, b)
		}
		if _, err := s.Sum(s.Offset()); err != nil {
			t.Fatal(err)
		}
		c := int64(s.ChunkSize())
		if err := s.Push(CV{}, c); (err == nil) != (s.Offset()%c == 0 && s.Offset() <= MaxFileSize-c) {
			t.Fatalf("push at offset %d in %d-byte chunks: %v", s.Offset(), c, err)
		}
	})
}

// stackOf pushes the chaining values of data's chunks up to offset d.
func stackOf(t *testing.T, data []byte, chunkSize int, d int64) *MergeStack {
	t.Helper()
	s, err := NewMergeStack(chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < d; off += int64(chunkSize) {
		c := data[off:min(off+int64(chunkSize), int64(len(data)))]
		h, err := ChunkHash(c, off, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Push(CV(h), int64(len(c))); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// TestMergeStackRechunk re-cuts a stack into smaller chunks at every
// boundary of the larger ones: the result equals the stack built in the
// smaller chunks from the start, and finishes to b3sum's hash.
func TestMergeStackRechunk(t *testing.T) {
	for _, size := range []int{MinTreeChunkSize / 2, 4*MinTreeChunkSize + 1000, 8 * MinTreeChunkSize, 13*MinTreeChunkSize + 1} {
		data := randomData(size, uint64(size))
		want := HashBytes(data)
		for _, cs := range [][2]int{{2 * MinTreeChunkSize, MinTreeChunkSize}, {8 * MinTreeChunkSize, MinTreeChunkSize}, {4 * MinTreeChunkSize, 2 * MinTreeChunkSize}} {
			big, small := cs[0], cs[1]
			for d := int64(0); ; d = min(d+int64(big), int64(size)) {
				s := stackOf(t, data, big, d)
				got, err := s.Rechunk(small, data[s.LastOffset():d], int64(size))
				if err != nil {
					t.Fatalf("size %d, %d→%d at %d: %v", size, big, small, d, err)
				}
				if direct := stackOf(t, data, small, d); *got != *direct {
					t.Fatalf("size %d, %d→%d at %d: re-cut stack differs from one built in %d-byte chunks", size, big, small, d, small)
				}
				for off := d; off < int64(size); off += int64(small) {
					c := data[off:min(off+int64(small), int64(size))]
					h, _ := ChunkHash(c, off, int64(size))
					if err := got.Push(CV(h), int64(len(c))); err != nil {
						t.Fatal(err)
					}
				}
				if h, err := got.Sum(int64(size)); err != nil || h != want {
					t.Fatalf("size %d, %d→%d at %d: root %x, %v; want %x", size, big, small, d, h, err, want)
				}
				if d == int64(size) {
					break
				}
			}
		}
	}
	s := stackOf(t, randomData(MinTreeChunkSize, 1), MinTreeChunkSize, MinTreeChunkSize)
	if _, err := s.Rechunk(2*MinTreeChunkSize, make([]byte, MinTreeChunkSize), 2*MinTreeChunkSize); err == nil {
		t.Error("Rechunk to a larger chunk size succeeded")
	}
	if _, err := s.Rechunk(MinTreeChunkSize, make([]byte, MinTreeChunkSize), 2*MinTreeChunkSize); err == nil {
		t.Error("Rechunk to the same chunk size succeeded")
	}
}
