package transfer

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/zeebo/blake3"
	"lukechampine.com/blake3/guts"
)

// Tests of subtreeNodeB3X, subtreeNode with internal/b3x's kernel, against
// subtreeNode with guts alone. internal/b3x tests the kernel itself.

// gutsSubtreeNode is subtreeNode with useB3X cleared: guts' paths only.
func gutsSubtreeNode(data []byte, counter uint64) guts.Node {
	var n guts.Node
	withSIMD(gutsMode{name: "guts", avx512: true, avx2: true}, func() { n = subtreeNode(data, counter) })
	return n
}

func skipWithoutB3X(t testing.TB) {
	if !useB3X {
		t.Skip("internal/b3x's kernel does not run here")
	}
}

// b3xCounters are first BLAKE3 chunk counters: 0, and counters whose
// pieces and groups cross a boundary of the low 32-bit word.
var b3xCounters = []uint64{0, 1<<32 - 3, 1<<32 - 16, 1<<32 - 256, 1<<32 - 4096, 5<<32 - 1000, 1 << 42}

// TestSubtreeNodeB3XMatchesGuts compares the two paths at lengths around
// BLAKE3 chunks, 16 KiB pieces, 256 KiB groups and MaxTreeChunkSize, and
// at random lengths up to MaxTreeChunkSize.
func TestSubtreeNodeB3XMatchesGuts(t *testing.T) {
	skipWithoutB3X(t)
	data := randomData(MaxTreeChunkSize, 21)
	lengths := []int{1, 63, 64, 1023, 1024, 1025, 16<<10 - 1, 16 << 10, 16<<10 + 1, 32 << 10, 48 << 10, 48<<10 + 1,
		240 << 10, 255<<10 + 1, 256<<10 - 1, 256 << 10, 256<<10 + 1, 256<<10 + 16<<10, 512 << 10, 768<<10 + 5,
		1 << 20, 1<<20 + 16<<10 - 1, 15<<20 + 255<<10, 16<<20 - 1, 16 << 20}
	r := rand.New(rand.NewPCG(21, 22))
	for range 20 {
		lengths = append(lengths, 1+r.IntN(MaxTreeChunkSize))
	}
	for _, n := range lengths {
		for _, counter := range b3xCounters {
			if got, want := subtreeNodeB3X(data[:n], counter), gutsSubtreeNode(data[:n], counter); got != want {
				t.Fatalf("%d bytes at counter %#x: node %x, guts %x", n, counter, guts.ChainingValue(got), guts.ChainingValue(want))
			}
		}
	}
}

// TestTreeHashB3XIsBlake3 hashes a file of 64 MiB + 7 bytes and random
// lengths below it through the chunk tree with internal/b3x's kernel, at
// chunk sizes from 16 KiB to 16 MiB, against zeebo/blake3's hash of the
// whole file, which is what b3sum prints.
func TestTreeHashB3XIsBlake3(t *testing.T) {
	skipWithoutB3X(t)
	data := randomData(64<<20+7, 22)
	r := rand.New(rand.NewPCG(22, 23))
	for _, n := range []int{len(data), 1 + r.IntN(len(data)), 1 + r.IntN(4<<20), 1 + r.IntN(300<<10)} {
		for _, c := range []int{MinTreeChunkSize, 256 << 10, DefaultChunkSize, MaxTreeChunkSize} {
			if n > 8<<20 && c == MinTreeChunkSize {
				continue // 4096 chunks of 16 KiB take long under -race for no more coverage
			}
			t.Run(fmt.Sprintf("%d/%d", n, c), func(t *testing.T) {
				if got, want := treeHash(t, data[:n], c), Hash(blake3.Sum256(data[:n])); got != want {
					t.Errorf("tree hash %x, blake3 %x", got, want)
				}
			})
		}
	}
}

// FuzzSubtreeB3X compares the two paths on random data of any length from
// 1 byte to 600 KiB (two 256 KiB groups and a ragged third) at any chunk
// counter.
func FuzzSubtreeB3X(f *testing.F) {
	for _, n := range []uint32{0, 1023, 16 << 10, 16<<10 + 1, 256 << 10, 256<<10 + 1, 512<<10 + 16<<10 - 1, 600<<10 - 1} {
		for _, c := range []uint64{0, 1<<32 - 3, 1<<32 - 300} {
			f.Add(n, c, uint64(n))
		}
	}
	f.Fuzz(func(t *testing.T, n uint32, counter, seed uint64) {
		skipWithoutB3X(t)
		var s [32]byte
		for i := range 8 {
			s[i] = byte(seed >> (8 * i))
		}
		data := make([]byte, 1+int(n%(600<<10)))
		rand.NewChaCha8(s).Read(data)
		if got, want := subtreeNodeB3X(data, counter), gutsSubtreeNode(data, counter); got != want {
			t.Fatalf("%d bytes at counter %#x: node %x, guts %x", len(data), counter, guts.ChainingValue(got), guts.ChainingValue(want))
		}
	})
}
