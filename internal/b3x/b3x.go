package b3x

import (
	"sync"
	"unsafe"

	"lukechampine.com/blake3/guts"
)

const (
	// Lanes is how many inputs the kernel compresses at once: 16 BLAKE3
	// chunks, or 16 parent nodes.
	Lanes = 16
	// PieceSize is what one kernel call over chunks hashes: 16 BLAKE3
	// chunks of 1 KiB, 16 KiB.
	PieceSize = Lanes * guts.ChunkSize
	// MaxPieces is the most pieces SubtreeNode hashes in one call, so that
	// the parent layers above them run 16 lanes wide: 16 pieces, 256 KiB.
	MaxPieces = 16
)

// cvPool holds SubtreeNode's working memory: the chaining values of the
// BLAKE3 chunks below the subtree (8 KiB), reduced in place one layer at a
// time.
var cvPool = sync.Pool{New: func() any { return new([MaxPieces * Lanes][8]uint32) }}

// SubtreeNode returns the top node of the BLAKE3 subtree over data with
// the key IV and no flags, whose first BLAKE3 chunk has counter counter:
// the parent node of its two halves, not yet compressed, so that the
// caller can add guts.FlagRoot or take guts.ChainingValue. len(data) must
// be PieceSize times a power of two up to MaxPieces (16 KiB to 256 KiB);
// SubtreeNode panics otherwise. It requires Available. It is safe for
// concurrent use.
//
// The kernel reads each 16 KiB piece where it lies, as 16 streams 1 KiB
// apart. Unlike guts' gathers (transfer's piecePool), it runs no faster
// from a copy in L1: over 256 MiB not in cache, 0.126 CPU ns/byte straight
// from data against 0.131 with the copy, on an AMD EPYC; prefetching the
// streams 2 or 4 blocks ahead did not help either. The parent layers run
// 16 at a time while there are 32 chaining values or more, then one call
// each for the last layers but the top.
func SubtreeNode(data []byte, counter uint64) guts.Node {
	pieces := len(data) / PieceSize
	if len(data)%PieceSize != 0 || pieces == 0 || pieces > MaxPieces || pieces&(pieces-1) != 0 {
		panic("bug: b3x.SubtreeNode of a length that is not 16 KiB times a power of two up to 16")
	}
	cvs := cvPool.Get().(*[MaxPieces * Lanes][8]uint32)
	defer cvPool.Put(cvs)
	key := &guts.IV
	for p := range pieces {
		hashMany16((*[Lanes][8]uint32)(cvs[p*Lanes:]), &data[p*PieceSize], guts.ChunkSize, guts.ChunkSize/guts.BlockSize,
			key, counter+uint64(p*Lanes), 0, guts.FlagChunkStart, guts.FlagChunkEnd, 1)
	}
	for n := pieces * Lanes; n > 2; n /= 2 {
		// Parent i of this layer is the block cvs[2i] ‖ cvs[2i+1]; it
		// overwrites cvs[i], which the calls after this one no longer read
		// (a call reads all its blocks before it writes). Below 32 values
		// the one call reads stale values past n as spare lanes.
		for i := 0; i < max(n/2, Lanes); i += Lanes {
			hashMany16((*[Lanes][8]uint32)(cvs[i:]), (*byte)(unsafe.Pointer(&cvs[2*i])), guts.BlockSize, 1,
				key, 0, guts.FlagParent, 0, 0, 0)
		}
	}
	return guts.ParentNode(cvs[0], cvs[1], key, 0)
}

// hashManyGeneric is hashMany16 in Go, one lane after another with
// guts.CompressNode: the fallback without assembly, and a reference for
// the tests.
func hashManyGeneric(out *[Lanes][8]uint32, in *byte, stride uintptr, blocks uintptr, key *[8]uint32, counter uint64, flags uint32, flagsStart uint32, flagsEnd uint32, inc uint32) {
	for lane := range Lanes {
		n := guts.Node{CV: *key, Counter: counter + uint64(lane)*uint64(inc), BlockLen: guts.BlockSize}
		for b := range blocks {
			block := (*[guts.BlockSize]byte)(unsafe.Add(unsafe.Pointer(in), uintptr(lane)*stride+b*guts.BlockSize))
			n.Block = guts.BytesToWords(*block)
			n.Flags = flags
			if b == 0 {
				n.Flags |= flagsStart
			}
			if b == blocks-1 {
				n.Flags |= flagsEnd
			}
			n.CV = guts.ChainingValue(n)
		}
		out[lane] = n.CV
	}
}
