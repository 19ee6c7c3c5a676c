package b3x

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"

	"lukechampine.com/blake3/guts"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x62337878))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randomKey(seed uint64) *[8]uint32 {
	r := rand.New(rand.NewPCG(seed, 1))
	var k [8]uint32
	for i := range k {
		k[i] = r.Uint32()
	}
	return &k
}

// counters are chunk counters whose 16 lanes cross (or end just before) a
// boundary of the low 32-bit word, where each lane's high word must carry
// on its own, and a few far from any.
var counters = []uint64{0, 1, 1<<32 - 16, 1<<32 - 15, 1<<32 - 3, 1<<32 - 1, 1 << 32, 2<<32 - 7, 0xffff_fffe_ffff_fff9, 1<<40 + 12345, 0xffff_ffff_ffff_ffef}

// skipWithoutKernel skips a test of the assembly on a CPU without it;
// hashMany16 is then hashManyGeneric, which TestGenericMatchesGuts checks.
func skipWithoutKernel(t testing.TB) {
	if !Available {
		t.Skip("no AVX-512 on this CPU, or a build without assembly")
	}
}

// TestHashManyChunks checks the kernel over chunks against guts'
// generic CompressChunk, lane by lane: every block count from 1 to 16,
// strides of one chunk and others (64 bytes: lanes that overlap), counters around the 2^32 boundaries,
// the IV and other keys, extra flags.
func TestHashManyChunks(t *testing.T) {
	skipWithoutKernel(t)
	for _, stride := range []int{guts.ChunkSize, 64, 1088, 4096} {
		for blocks := 1; blocks <= 16; blocks++ {
			in := randomBytes(15*stride+blocks*guts.BlockSize, uint64(stride*100+blocks))
			for ki, key := range []*[8]uint32{&guts.IV, randomKey(uint64(blocks))} {
				for _, counter := range counters {
					for _, flags := range []uint32{0, 1 << 4} { // KEYED_HASH
						var got [Lanes][8]uint32
						hashMany16(&got, &in[0], uintptr(stride), uintptr(blocks), key, counter, flags, guts.FlagChunkStart, guts.FlagChunkEnd, 1)
						for lane := range Lanes {
							chunk := in[lane*stride : lane*stride+blocks*guts.BlockSize]
							want := guts.ChainingValue(guts.CompressChunk(chunk, key, counter+uint64(lane), flags))
							if got[lane] != want {
								t.Fatalf("stride %d, %d blocks, key %d, counter %#x, flags %#x: lane %d: %x, guts %x",
									stride, blocks, ki, counter, flags, lane, got[lane], want)
							}
						}
					}
				}
			}
		}
	}
}

// TestHashManyParents checks the kernel over parent nodes against guts'
// ParentNode: one block per lane, the counter 0 in every lane whatever
// counter says when inc is 0, keys other than the IV.
func TestHashManyParents(t *testing.T) {
	skipWithoutKernel(t)
	in := randomBytes(Lanes*guts.BlockSize, 7)
	for ki, key := range []*[8]uint32{&guts.IV, randomKey(3)} {
		for _, flags := range []uint32{0, 1 << 4} {
			for _, counter := range []uint64{0, 1<<32 - 3} {
				var got [Lanes][8]uint32
				hashMany16(&got, &in[0], guts.BlockSize, 1, key, counter, guts.FlagParent|flags, 0, 0, 0)
				for lane := range Lanes {
					var l, r [8]uint32
					copy(l[:], unsafe.Slice((*uint32)(unsafe.Pointer(&in[lane*64])), 8))
					copy(r[:], unsafe.Slice((*uint32)(unsafe.Pointer(&in[lane*64+32])), 8))
					n := guts.ParentNode(l, r, key, flags)
					n.Counter = counter
					if want := guts.ChainingValue(n); got[lane] != want {
						t.Fatalf("key %d, flags %#x, counter %#x: lane %d: %x, guts %x", ki, flags, counter, lane, got[lane], want)
					}
				}
			}
		}
	}
}

// TestGenericMatchesGuts checks hashManyGeneric, the kernel's stand-in
// without assembly, the way TestHashManyChunks checks the kernel.
func TestGenericMatchesGuts(t *testing.T) {
	in := randomBytes(16*guts.ChunkSize, 5)
	for _, counter := range counters {
		var got [Lanes][8]uint32
		hashManyGeneric(&got, &in[0], guts.ChunkSize, 16, &guts.IV, counter, 0, guts.FlagChunkStart, guts.FlagChunkEnd, 1)
		for lane := range Lanes {
			want := guts.ChainingValue(guts.CompressChunk(in[lane*guts.ChunkSize:][:guts.ChunkSize], &guts.IV, counter+uint64(lane), 0))
			if got[lane] != want {
				t.Fatalf("counter %#x: lane %d: %x, guts %x", counter, lane, got[lane], want)
			}
		}
	}
}

// refNode is the BLAKE3 subtree of whole chunks, written out recursively
// with guts' generic CompressChunk and ParentNode: its top node,
// uncompressed. len(data) is a power of two of chunks, at least two.
func refNode(data []byte, counter uint64) guts.Node {
	half := len(data) / 2
	cv := func(d []byte, c uint64) [8]uint32 {
		if len(d) == guts.ChunkSize {
			return guts.ChainingValue(guts.CompressChunk(d, &guts.IV, c, 0))
		}
		return guts.ChainingValue(refNode(d, c))
	}
	return guts.ParentNode(cv(data[:half], counter), cv(data[half:], counter+uint64(half/guts.ChunkSize)), &guts.IV, 0)
}

// TestSubtreeNode checks SubtreeNode against refNode for every number of
// pieces it takes, so that each parent layer's lane count (16 and the
// partly filled 8, 4, 2 and 1) is covered, at counters around 2^32.
func TestSubtreeNode(t *testing.T) {
	skipWithoutKernel(t)
	data := randomBytes(MaxPieces*PieceSize, 11)
	for pieces := 1; pieces <= MaxPieces; pieces *= 2 {
		for _, counter := range []uint64{0, 1<<32 - 16*uint64(pieces)/2, 1<<32 - 3, 3 << 40} {
			t.Run(fmt.Sprintf("%d/%#x", pieces, counter), func(t *testing.T) {
				d := data[:pieces*PieceSize]
				if got, want := SubtreeNode(d, counter), refNode(d, counter); got != want {
					t.Errorf("node %x, reference %x", guts.ChainingValue(got), guts.ChainingValue(want))
				}
			})
		}
	}
}

// TestSubtreeNodePanics checks that SubtreeNode refuses lengths it does
// not handle.
func TestSubtreeNodePanics(t *testing.T) {
	for _, n := range []int{0, 1, PieceSize - 1, 3 * PieceSize, 32 * PieceSize, PieceSize + 1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("SubtreeNode of %d bytes did not panic", n)
				}
			}()
			SubtreeNode(make([]byte, n), 0)
		}()
	}
}
