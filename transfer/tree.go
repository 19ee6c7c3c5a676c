package transfer

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"

	"lukechampine.com/blake3/guts"

	"github.com/ferry-dev/ferry/internal/b3x"
)

// Chunk hashes as BLAKE3 subtree chaining values (issue 10).
//
// A file is cut into chunks of a power-of-two size C (MinTreeChunkSize to
// MaxTreeChunkSize): chunk i covers [i·C, (i+1)·C), the last one shorter.
// Every chunk is then a complete subtree of the file's BLAKE3 tree, and
// its hash is that subtree's chaining value (bao and iroh-blobs do the
// same). The whole-file hash, the one b3sum prints, follows from the chunk
// values by parent compressions alone (MergeStack), so each side reads and
// hashes every byte once. docs/CHUNK-HASH.md is the specification, with a
// test vector.

// CV is a BLAKE3 chaining value: the first eight 32-bit words of a node's
// compression output, serialised little-endian as BLAKE3 serialises its
// hashes. A chunk's CV depends on the chunk's offset in the file, so a
// chunk replayed at another offset does not verify.
type CV [HashSize]byte

const (
	// MinTreeChunkSize and MaxTreeChunkSize bound the chunk size in bytes
	// for chunk hashes that are BLAKE3 subtrees: 16 KiB to 16 MiB, and the
	// size must be a power of two (CheckChunkSize). Below 16 KiB the
	// AVX-512 compressor fills only part of its 16 lanes and wastes work:
	// at 8 KiB a byte costs twice as much (BenchmarkChunkSizes).
	MinTreeChunkSize = 16 << 10
	// MaxTreeChunkSize is the upper bound; see MinTreeChunkSize.
	MaxTreeChunkSize = 16 << 20

	// pieceSize is what one guts.CompressBuffer call hashes at once: 16
	// BLAKE3 chunks of 1 KiB, one per AVX-512 lane.
	pieceSize = guts.MaxSIMD * guts.ChunkSize

	// maxPieceStack is log2(MaxTreeChunkSize/pieceSize): a chunk of 2^10
	// pieces leaves at most 10 merged CVs on subtreeNode's stack before
	// its last piece.
	maxPieceStack = 10
)

// CheckChunkSize returns nil if size, in bytes, can be used for chunk
// hashes: a power of two from MinTreeChunkSize to MaxTreeChunkSize. It
// returns an error saying so otherwise.
func CheckChunkSize(size int) error {
	if size < MinTreeChunkSize || size > MaxTreeChunkSize || size&(size-1) != 0 {
		return fmt.Errorf("chunk size %d is not a power of two from %d to %d bytes: choose one such as %d",
			size, MinTreeChunkSize, MaxTreeChunkSize, DefaultChunkSize)
	}
	return nil
}

// ChunkCV returns the BLAKE3 chaining value of data, the subtree of the
// file's BLAKE3 tree that covers bytes [offset, offset+len(data)).
//
// With root set, data must be the whole file (offset 0, a file of at most
// one chunk), and ChunkCV returns the file's root hash instead, the value
// b3sum prints, as CV. A file of one chunk carries that hash as its chunk
// hash, because the root of a one-node tree cannot be derived from its
// chaining value.
//
// The subtree must be aligned: offset is a non-negative multiple of
// MinTreeChunkSize and of the power of two at or above len(data) (the chunk
// size C, for the chunks of a file cut at C), len(data) is at most
// MaxTreeChunkSize, and data is empty only for the root of an empty file.
// Anything else returns an error wrapping ErrProtocol, since offsets and
// lengths come off the wire. ChunkCV is safe for concurrent use; it hashes
// 16 KiB at a time with AVX-512 or AVX2 where the CPU has them, with
// internal/b3x's kernel where it has AVX-512.
func ChunkCV(data []byte, offset int64, root bool) (CV, error) {
	if err := checkSubtree(offset, len(data), root); err != nil {
		return CV{}, err
	}
	n := subtreeNode(data, uint64(offset)/guts.ChunkSize)
	if root {
		n.Flags |= guts.FlagRoot
	}
	return wordsCV(guts.ChainingValue(n)), nil
}

// checkSubtree checks ChunkCV's preconditions.
func checkSubtree(offset int64, n int, root bool) error {
	span := int64(MinTreeChunkSize)
	if n > MinTreeChunkSize {
		span = 1 << bits.Len(uint(n-1))
	}
	switch {
	case root && offset != 0:
		return fmt.Errorf("%w: root chunk at offset %d, not 0", ErrProtocol, offset)
	case n == 0 && !root:
		return fmt.Errorf("%w: empty chunk at offset %d", ErrProtocol, offset)
	case n > MaxTreeChunkSize:
		return fmt.Errorf("%w: chunk of %d bytes above %d", ErrProtocol, n, MaxTreeChunkSize)
	case offset < 0 || offset > MaxFileSize-int64(n):
		return fmt.Errorf("%w: chunk of %d bytes at offset %d outside 0..%d", ErrProtocol, n, offset, int64(MaxFileSize))
	case offset%span != 0:
		return fmt.Errorf("%w: chunk of %d bytes at offset %d is not aligned to %d bytes", ErrProtocol, n, offset, span)
	}
	return nil
}

// piecePool holds 16 KiB scratch buffers that subtreeNode copies each
// piece into before hashing it. guts.CompressBuffer reads its 16 BLAKE3
// chunks as 16 streams 1 KiB apart, which hardware prefetchers follow
// badly: on data that is not in cache it runs about twice as fast from a
// buffer in L1, copy included (measured on an AMD EPYC over 256 MiB:
// 0.40 against 0.21 CPU ns/byte with AVX-512, 0.71 against 0.37 with
// AVX2; no difference on data already in cache). The copy also keeps a
// short last piece from being read past its end, which would race with
// whoever owns the bytes after it.
var piecePool = sync.Pool{New: func() any { return new([pieceSize]byte) }}

// subtreeNode returns the top node of the BLAKE3 subtree of data whose
// first BLAKE3 chunk has counter counter, not yet compressed, so that the
// caller can add FlagRoot. It hashes data in 16 KiB pieces and merges
// their chaining values with a stack, eagerly while more pieces follow,
// and right to left at the end: the left-heavy tree shape BLAKE3 gives a
// ragged last chunk.
func subtreeNode(data []byte, counter uint64) guts.Node {
	if useB3X {
		return subtreeNodeB3X(data, counter)
	}
	buf := piecePool.Get().(*[pieceSize]byte)
	defer piecePool.Put(buf)
	var stack cvStack
	for len(data) > pieceSize {
		copy(buf[:], data)
		stack.merge(guts.ChainingValue(guts.CompressBuffer(buf, pieceSize, &guts.IV, counter, 0)))
		data = data[pieceSize:]
		counter += guts.MaxSIMD
	}
	return stack.fold(guts.CompressBuffer(buf, copy(buf[:], data), &guts.IV, counter, 0))
}

// cvStack holds the chaining values of the left subtrees of a subtree
// being hashed, for subtreeNode and subtreeNodeB3X: at most
// maxPieceStack of them.
type cvStack struct {
	cvs    [maxPieceStack][8]uint32
	depth  int
	merged uint64 // subtrees given to merge so far
}

// merge pushes the chaining value of the next of a run of equal subtrees
// and merges it eagerly: the n-th one merges with as many values below it
// as n has trailing zero bits, while more subtrees follow.
func (s *cvStack) merge(cv [8]uint32) {
	s.merged++
	for t := s.merged; t&1 == 0; t >>= 1 {
		s.depth--
		cv = guts.ChainingValue(guts.ParentNode(s.cvs[s.depth], cv, &guts.IV, 0))
	}
	s.push(cv)
}

// push pushes cv without merging.
func (s *cvStack) push(cv [8]uint32) {
	s.cvs[s.depth] = cv
	s.depth++
}

// fold merges n, the last subtree, with the stack right to left, and
// returns the top node, not yet compressed.
func (s *cvStack) fold(n guts.Node) guts.Node {
	for s.depth > 0 {
		s.depth--
		n = guts.ParentNode(s.cvs[s.depth], guts.ChainingValue(n), &guts.IV, 0)
	}
	return n
}

// useB3X sends subtreeNode to subtreeNodeB3X, where the CPU has AVX-512.
// Tests and benchmarks clear it to measure guts' paths.
var useB3X = b3x.Available

// b3xGroupSize is the most that one b3x.SubtreeNode call hashes: 16
// pieces, 256 KiB, whose parent layers run 16 lanes wide.
const b3xGroupSize = b3x.MaxPieces * pieceSize

// subtreeNodeB3X is subtreeNode with internal/b3x's kernel, which does
// not gather its message words (about twice guts' speed on AMD Zen). It
// builds the same tree: the 256 KiB groups before the last, merged eagerly
// as subtreeNode merges pieces; then the last group, whole, or as the
// subtrees of 8, 4, 2 and 1 pieces that eager merging would leave of the
// pieces before its last piece, and that last piece, through
// guts.CompressBuffer if it is not whole; then the stack right to left.
func subtreeNodeB3X(data []byte, counter uint64) guts.Node {
	var stack cvStack
	for len(data) > b3xGroupSize {
		stack.merge(guts.ChainingValue(b3x.SubtreeNode(data[:b3xGroupSize], counter)))
		data = data[b3xGroupSize:]
		counter += b3xGroupSize / guts.ChunkSize
	}
	if len(data) == b3xGroupSize {
		return stack.fold(b3x.SubtreeNode(data, counter))
	}
	before := (len(data) - 1) / pieceSize // whole pieces before the last
	for p := b3x.MaxPieces / 2; p > 0; p /= 2 {
		if before&p != 0 {
			stack.push(guts.ChainingValue(b3x.SubtreeNode(data[:p*pieceSize], counter)))
			data = data[p*pieceSize:]
			counter += uint64(p) * guts.MaxSIMD
		}
	}
	if len(data) == pieceSize {
		return stack.fold(b3x.SubtreeNode(data, counter))
	}
	buf := piecePool.Get().(*[pieceSize]byte)
	defer piecePool.Put(buf)
	return stack.fold(guts.CompressBuffer(buf, copy(buf[:], data), &guts.IV, counter, 0))
}

// parentCV returns the chaining value of the parent of left and right; with
// root set, the root hash of that parent instead.
func parentCV(left, right [8]uint32, root bool) [8]uint32 {
	n := guts.ParentNode(left, right, &guts.IV, 0)
	if root {
		n.Flags |= guts.FlagRoot
	}
	return guts.ChainingValue(n)
}

func wordsCV(w [8]uint32) CV {
	var c CV
	for i, x := range w {
		binary.LittleEndian.PutUint32(c[4*i:], x)
	}
	return c
}

func cvWords(c *CV) [8]uint32 {
	var w [8]uint32
	for i := range w {
		w[i] = binary.LittleEndian.Uint32(c[4*i:])
	}
	return w
}
