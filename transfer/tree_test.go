package transfer

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zeebo/blake3"
	"lukechampine.com/blake3/guts"
)

// treeChunkSizes are the chunk sizes CheckChunkSize allows.
func treeChunkSizes() []int {
	var sizes []int
	for c := MinTreeChunkSize; c <= MaxTreeChunkSize; c <<= 1 {
		sizes = append(sizes, c)
	}
	return sizes
}

// treeHash hashes data chunk by chunk with ChunkCV, on this goroutine, and
// merges with a MergeStack: what the two sides of a transfer do.
func treeHash(t testing.TB, data []byte, chunkSize int) Hash {
	t.Helper()
	s, err := NewMergeStack(chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(data))
	root := size <= int64(chunkSize)
	for off := int64(0); off < size; off += int64(chunkSize) {
		chunk := data[off:min(size, off+int64(chunkSize))]
		cv, err := ChunkCV(chunk, off, root)
		if err != nil {
			t.Fatalf("ChunkCV at offset %d: %v", off, err)
		}
		if err := s.Push(cv, int64(len(chunk))); err != nil {
			t.Fatal(err)
		}
		if bound := MergeStackBound(size, chunkSize); s.Len() > bound || s.Len() != MergeStackLen(s.Offset(), chunkSize) {
			t.Fatalf("%d chaining values at offset %d, bound %d", s.Len(), s.Offset(), bound)
		}
	}
	h, err := s.Sum(size)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// patternData is the input of the BLAKE3 test vectors: byte i is i mod 251.
func patternData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// TestTreeHashIsBlake3 checks the root merged from chunk chaining values
// against zeebo/blake3 (itself pinned to b3sum by TestHashBytesIsB3sum) for
// every allowed chunk size, around BLAKE3's 1 KiB chunks and the 16 KiB
// pieces, around the chunk size, and at odd sizes up to 64 MiB + 7.
func TestTreeHashIsBlake3(t *testing.T) {
	maxSize := 64<<20 + 7
	if testing.Short() {
		maxSize = 5<<20 + 3
	}
	data := randomData(maxSize, 10)
	want := map[int]Hash{}
	sum := func(n int) Hash {
		if h, ok := want[n]; ok {
			return h
		}
		want[n] = blake3.Sum256(data[:n])
		return want[n]
	}
	for _, c := range treeChunkSizes() {
		sizes := []int{0, 1, 1023, 1024, 1025, 16<<10 - 1, 16 << 10, 16<<10 + 1, 100 << 10,
			c - 1, c, c + 1, c + 1023, c + 16<<10 + 1025, 2 * c, 3*c - 7, 4 * c, 5<<20 + 3, 17<<20 + 1, maxSize}
		t.Run(fmt.Sprint(c>>10, "KiB"), func(t *testing.T) {
			seen := map[int]bool{}
			for _, n := range sizes {
				if n > maxSize || seen[n] {
					continue
				}
				seen[n] = true
				if got := treeHash(t, data[:n], c); got != sum(n) {
					t.Errorf("%d bytes: tree hash %x, BLAKE3 %x", n, got, sum(n))
				}
			}
		})
	}
}

// TestTreeHashMatchesB3sum checks HashAt against the real b3sum binary on
// files on disk, at the smallest, the default and the largest chunk size.
func TestTreeHashMatchesB3sum(t *testing.T) {
	b3sum, err := exec.LookPath("b3sum")
	if err != nil {
		t.Skip("b3sum not installed (apt-get install b3sum); CI installs it")
	}
	dir := t.TempDir()
	for _, n := range []int{0, 1, 1023, 1024, 1025, 3 << 14, 1<<20 + 1, 5<<20 + 7} {
		data := randomData(n, uint64(n))
		name := filepath.Join(dir, fmt.Sprint(n))
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(b3sum, "--no-names", name).Output()
		if err != nil {
			t.Fatalf("b3sum: %v", err)
		}
		want := strings.TrimSpace(string(out))
		for _, c := range []int{MinTreeChunkSize, DefaultChunkSize, MaxTreeChunkSize} {
			f, err := os.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			h, err := HashAt(t.Context(), f, int64(n), c, 3)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(h[:]); got != want {
				t.Errorf("%d bytes in %d-byte chunks: %s, b3sum %s", n, c, got, want)
			}
		}
	}
}

// TestChunkCVVector pins the test vectors of docs/CHUNK-HASH.md: files of
// the BLAKE3 test-vector pattern in chunks of 16 KiB. The roots are what
// b3sum prints; the chunk values are also checked against refSubtreeCV.
func TestChunkCVVector(t *testing.T) {
	const (
		cv0 = "5384f9b342c6cb86badedcbe662b0e980476a8db17db3cc1f13b19329749ab1f"
		cv1 = "406632eceb31aa6735f072ad0554f5963f4082b5139978455b44f67732cf949d"
		p01 = "1e03bf3657c5076623059f21d92f2ec634dd276b07e3760625c73416f343d857"
	)
	tests := []struct {
		name  string
		size  int
		cvs   []string
		stack string // merge stack before Sum, encoded
		root  string
	}{
		{"three chunks", 3 * MinTreeChunkSize,
			[]string{cv0, cv1, "bccbba6c1168012dc733c21a85cc8500576e28489a119e848307770260b3c87f"},
			"0e000000000000c00002" + p01 + "bccbba6c1168012dc733c21a85cc8500576e28489a119e848307770260b3c87f",
			"88c8baf84eb0b231f985d2be3540430506a9280fd0ec4cec74524bbc33bbc5df"},
		{"ragged last chunk", 40000,
			[]string{cv0, cv1, "083663d9bddc14d40cc2f3869e01c5bebde7632dfea165eda38af01d93d5045b"},
			"0e0000000000009c4002" + p01 + "083663d9bddc14d40cc2f3869e01c5bebde7632dfea165eda38af01d93d5045b",
			"ccd32b4544a24c50fbefb249e10a8fcedc26e2794c79eb8a44ad0631bf07f53f"},
		{"one chunk is its root", MinTreeChunkSize,
			[]string{"f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4"},
			"0e000000000000400001" + "f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4",
			"f875d6646de28985646f34ee13be9a576fd515f76b5b0a26bb324735041ddde4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := patternData(tt.size)
			root := len(tt.cvs) == 1
			s, err := NewMergeStack(MinTreeChunkSize)
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range tt.cvs {
				off := int64(i * MinTreeChunkSize)
				chunk := data[off:min(off+MinTreeChunkSize, int64(tt.size))]
				cv, err := ChunkCV(chunk, off, root)
				if err != nil {
					t.Fatal(err)
				}
				if got := hex.EncodeToString(cv[:]); got != want {
					t.Errorf("chunk %d: CV %s, want %s", i, got, want)
				}
				if ref := refSubtreeCV(chunk, uint64(off)/1024, root); cv != ref {
					t.Errorf("chunk %d: CV %x, reference %x", i, cv, ref)
				}
				if err := s.Push(cv, int64(len(chunk))); err != nil {
					t.Fatal(err)
				}
			}
			enc, _ := s.MarshalBinary()
			if got := hex.EncodeToString(enc); got != tt.stack {
				t.Errorf("merge stack %s, want %s", got, tt.stack)
			}
			h, err := s.Sum(int64(tt.size))
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(h[:]); got != tt.root {
				t.Errorf("root %s, want %s", got, tt.root)
			}
			if b := blake3.Sum256(data); h != b {
				t.Errorf("root %x, BLAKE3 %x", h, b)
			}
		})
	}
}

// TestChunkCVBindsOffset checks that a chunk's chaining value depends on
// where it sits: the same bytes at another offset, or as a root, do not
// verify.
func TestChunkCVBindsOffset(t *testing.T) {
	const c = 64 << 10
	data := randomData(c, 3)
	at := func(off int64, root bool) CV {
		cv, err := ChunkCV(data, off, root)
		if err != nil {
			t.Fatal(err)
		}
		return cv
	}
	seen := map[CV]string{}
	for _, tt := range []struct {
		name string
		cv   CV
	}{
		{"root", at(0, true)},
		{"offset 0", at(0, false)},
		{"offset C", at(c, false)},
		{"offset 2C", at(2*c, false)},
		{"offset 1 GiB", at(1<<30, false)},
		{"offset 2^32 KiB", at(1<<42, false)}, // the chunk counter's high word
	} {
		if other, ok := seen[tt.cv]; ok {
			t.Errorf("%s and %s give the same chaining value %x", tt.name, other, tt.cv)
		}
		seen[tt.cv] = tt.name
	}
	if first, again := at(c, false), at(c, false); first != again {
		t.Error("chaining value not deterministic")
	}
	if root := at(0, true); Hash(root) != blake3.Sum256(data) {
		t.Errorf("root %x, BLAKE3 %x", root, blake3.Sum256(data))
	}
}

func TestChunkCVRefusesMisalignedChunks(t *testing.T) {
	tests := []struct {
		name   string
		n      int
		offset int64
		root   bool
	}{
		{"offset not a multiple of 16 KiB", 1024, 1024, false},
		{"32 KiB chunk at 16 KiB", 32 << 10, 16 << 10, false},
		{"ragged 20 KiB chunk at 16 KiB", 20 << 10, 16 << 10, false},
		{"negative offset", 1024, -16 << 10, false},
		{"past MaxFileSize", 16 << 10, MaxFileSize, false},
		{"empty chunk not the root", 0, 16 << 10, false},
		{"root not at offset 0", 1024, 16 << 10, true},
		{"above 16 MiB", 16<<20 + 1, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ChunkCV(make([]byte, tt.n), tt.offset, tt.root)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("ChunkCV(%d bytes, %d, %v) = %v, want ErrProtocol", tt.n, tt.offset, tt.root, err)
			}
		})
	}
	for _, ok := range []struct {
		n      int
		offset int64
	}{{1024, 16 << 10}, {16 << 10, 16 << 10}, {20 << 10, 32 << 10}, {16 << 20, 16 << 20}} {
		if _, err := ChunkCV(make([]byte, ok.n), ok.offset, false); err != nil {
			t.Errorf("ChunkCV(%d bytes, %d): %v", ok.n, ok.offset, err)
		}
	}
}

func TestCheckChunkSize(t *testing.T) {
	for _, c := range treeChunkSizes() {
		if err := CheckChunkSize(c); err != nil {
			t.Errorf("CheckChunkSize(%d): %v", c, err)
		}
	}
	for _, c := range []int{-16 << 10, 0, 1, 1024, 4 << 10, 8 << 10, 16<<10 - 1, 16<<10 + 1, 48 << 10, 1<<20 + 4096, 32 << 20, 1 << 40} {
		if err := CheckChunkSize(c); err == nil {
			t.Errorf("CheckChunkSize(%d) accepted", c)
		}
		if _, err := NewMergeStack(c); err == nil {
			t.Errorf("NewMergeStack(%d) accepted", c)
		}
		err := HashChunks(t.Context(), bytes.NewReader(nil), 0, 0, c, 1, nil)
		if err == nil {
			t.Errorf("HashChunks with chunk size %d accepted", c)
		}
	}
}

// TestPieceStackFits guards subtreeNode's fixed stack.
func TestPieceStackFits(t *testing.T) {
	if MaxTreeChunkSize/pieceSize != 1<<maxPieceStack {
		t.Fatalf("maxPieceStack %d does not fit %d pieces", maxPieceStack, MaxTreeChunkSize/pieceSize)
	}
}

// refSubtreeCV is the BLAKE3 specification's tree, written out
// recursively and compressing one 64-byte block at a time: the chaining
// value (or, with root, the root hash) of the subtree of data whose first
// 1 KiB BLAKE3 chunk has counter counter. Its left child covers the largest
// power of two of BLAKE3 chunks that leaves at least one byte on the right.
func refSubtreeCV(data []byte, counter uint64, root bool) CV {
	var flags uint32
	if root {
		flags = guts.FlagRoot
	}
	if len(data) <= guts.ChunkSize {
		cv := guts.IV
		for i := 0; ; i += guts.BlockSize {
			var block [guts.BlockSize]byte
			n := copy(block[:], data[i:])
			f := uint32(0)
			if i == 0 {
				f |= guts.FlagChunkStart
			}
			last := i+guts.BlockSize >= len(data)
			if last {
				f |= guts.FlagChunkEnd | flags
			}
			cv = guts.ChainingValue(guts.Node{CV: cv, Block: guts.BytesToWords(block), Counter: counter, BlockLen: uint32(n), Flags: f})
			if last {
				return wordsCV(cv)
			}
		}
	}
	left := guts.ChunkSize
	for 2*left < len(data) {
		left *= 2
	}
	l := refSubtreeCV(data[:left], counter, false)
	r := refSubtreeCV(data[left:], counter+uint64(left/guts.ChunkSize), false)
	lw, rw := cvWords(&l), cvWords(&r)
	return wordsCV(guts.ChainingValue(guts.Node{
		CV: guts.IV, Block: [16]uint32(append(lw[:], rw[:]...)),
		BlockLen: guts.BlockSize, Flags: guts.FlagParent | flags,
	}))
}

// TestChunkCVIsReference checks ChunkCV against refSubtreeCV for chunk
// lengths around BLAKE3's 1 KiB chunks and the 16 KiB SIMD pieces, at
// offsets whose chunk counters exercise both counter words.
func TestChunkCVIsReference(t *testing.T) {
	data := randomData(256<<10+1, 4)
	for _, n := range []int{0, 1, 64, 65, 1023, 1024, 1025, 2048, 3073, 15 << 10, 16<<10 - 1, 16 << 10, 16<<10 + 1,
		17 << 10, 31<<10 + 5, 32 << 10, 33 << 10, 48<<10 + 1, 100 << 10, 255<<10 + 3, 256 << 10} {
		for _, off := range []int64{0, 256 << 10, 1 << 30, 1 << 42, 3 << 42} {
			if n == 0 && off != 0 {
				continue
			}
			for _, root := range []bool{false, true} {
				if root && off != 0 || n == 0 && !root {
					continue
				}
				got, err := ChunkCV(data[:n], off, root)
				if err != nil {
					t.Fatal(err)
				}
				if want := refSubtreeCV(data[:n], uint64(off)/1024, root); got != want {
					t.Errorf("%d bytes at offset %d, root %v: %x, reference %x", n, off, root, got, want)
				}
			}
		}
	}
}
