package b3x

import (
	"testing"

	"lukechampine.com/blake3/guts"
)

// BenchmarkPiece compares, on one 16 KiB piece in cache, the kernel over
// 16 chunks with guts.CompressBuffer, which gathers its message words and
// merges the 16 chaining values to a node.
func BenchmarkPiece(b *testing.B) {
	data := randomBytes(PieceSize, 1)
	b.Run("b3x-chunks", func(b *testing.B) {
		skipWithoutKernel(b)
		var out [Lanes][8]uint32
		b.SetBytes(PieceSize)
		for range b.N {
			hashMany16(&out, &data[0], guts.ChunkSize, guts.ChunkSize/guts.BlockSize, &guts.IV, 0, 0, guts.FlagChunkStart, guts.FlagChunkEnd, 1)
		}
	})
	b.Run("guts-compressbuffer", func(b *testing.B) {
		buf := (*[PieceSize]byte)(data)
		b.SetBytes(PieceSize)
		for range b.N {
			guts.CompressBuffer(buf, PieceSize, &guts.IV, 0, 0)
		}
	})
}

// BenchmarkSubtreeNode is SubtreeNode on 256 KiB in cache: 16 pieces and
// the parent layers above them.
func BenchmarkSubtreeNode(b *testing.B) {
	skipWithoutKernel(b)
	data := randomBytes(MaxPieces*PieceSize, 1)
	b.SetBytes(int64(len(data)))
	for range b.N {
		SubtreeNode(data, 0)
	}
}

// BenchmarkParents is one kernel call over 16 parent nodes, next to 16
// guts.ParentNode compressions in Go.
func BenchmarkParents(b *testing.B) {
	in := randomBytes(Lanes*guts.BlockSize, 1)
	b.Run("b3x", func(b *testing.B) {
		skipWithoutKernel(b)
		var out [Lanes][8]uint32
		for range b.N {
			hashMany16(&out, &in[0], guts.BlockSize, 1, &guts.IV, 0, guts.FlagParent, 0, 0, 0)
		}
	})
	b.Run("guts-generic", func(b *testing.B) {
		var l, r [8]uint32
		for range b.N {
			for range Lanes {
				l = guts.ChainingValue(guts.ParentNode(l, r, &guts.IV, 0))
			}
		}
	})
}
