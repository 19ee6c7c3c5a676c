package transfer

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"lukechampine.com/blake3/guts"
)

const (
	// MaxMergeStackLen is the most chaining values a merge stack may hold
	// in its encoding: 54, enough for any BLAKE3 input (2^64 bytes in 1 KiB
	// BLAKE3 chunks). A file of at most MaxFileSize bytes in chunks of
	// MinTreeChunkSize needs 49 at most; MergeStackBound gives the exact
	// bound for a file.
	MaxMergeStackLen = 54

	// mergeStackHeader is the encoded size in bytes of a merge stack
	// before its chaining values: chunk-size exponent (1), offset (8),
	// count (1).
	mergeStackHeader = 1 + 8 + 1

	// MaxMergeStackSize is the largest encoded merge stack in bytes:
	// 10 + 54·32 = 1738.
	MaxMergeStackSize = mergeStackHeader + MaxMergeStackLen*HashSize
)

// MergeStack builds a file's BLAKE3 root hash from its chunk chaining
// values, pushed in offset order, with parent compressions only. It holds
// one chaining value per complete subtree to the left of the last chunk,
// plus the last chunk's: MergeStackLen(offset, chunkSize) values, at most
// 21 for a file of 1 TiB in 1 MiB chunks. Its binary encoding is what a
// resumable receiver stores with its durable offset, so that it resumes
// without re-reading the prefix.
//
// The zero MergeStack has no chunk size: use NewMergeStack, or
// UnmarshalBinary into it. Two MergeStacks are == when they hold the same
// chunk size, offset and chaining values. A MergeStack is not safe for
// concurrent use.
type MergeStack struct {
	chunkShift uint8 // log2 of the chunk size in bytes; 0 if unset
	offset     int64 // bytes covered by the chunks pushed
	n          int   // entries used in cvs
	cvs        [MaxMergeStackLen][8]uint32
}

// NewMergeStack returns an empty merge stack, at offset 0, for chunks of
// chunkSize bytes. It returns CheckChunkSize's error for a size that is not
// a power of two from MinTreeChunkSize to MaxTreeChunkSize.
func NewMergeStack(chunkSize int) (*MergeStack, error) {
	if err := CheckChunkSize(chunkSize); err != nil {
		return nil, err
	}
	return &MergeStack{chunkShift: uint8(bits.TrailingZeros(uint(chunkSize)))}, nil
}

// ChunkSize returns the chunk size in bytes, or 0 for the zero MergeStack.
func (s *MergeStack) ChunkSize() int {
	if s.chunkShift == 0 {
		return 0
	}
	return 1 << s.chunkShift
}

// Offset returns the number of bytes the pushed chunks cover.
func (s *MergeStack) Offset() int64 { return s.offset }

// Len returns the number of chaining values on the stack,
// MergeStackLen(s.Offset(), s.ChunkSize()).
func (s *MergeStack) Len() int { return s.n }

// Last returns the chaining value of the last chunk pushed (the root hash
// for a file of one chunk), which the stack keeps unmerged, and false for
// a stack at offset 0.
func (s *MergeStack) Last() (CV, bool) {
	if s.n == 0 {
		return CV{}, false
	}
	return wordsCV(s.cvs[s.n-1]), true
}

// LastOffset returns the offset of the last chunk pushed: Offset() rounded
// down to a multiple of ChunkSize() just below it, 0 at offset 0.
func (s *MergeStack) LastOffset() int64 {
	c := int64(s.ChunkSize())
	if s.offset == 0 || c == 0 {
		return 0
	}
	return (s.offset - 1) / c * c
}

// MergeStackLen returns the number of chaining values a MergeStack holds
// once chunks of chunkSize bytes covering offset bytes have been pushed:
// 0 for offset 0, else one more than the number of one bits in the index
// of the last chunk. chunkSize must be positive.
func MergeStackLen(offset int64, chunkSize int) int {
	if offset <= 0 {
		return 0
	}
	return bits.OnesCount64(uint64(offset-1)/uint64(chunkSize)) + 1
}

// MergeStackBound returns the most chaining values a MergeStack holds at
// any offset while a file of size bytes is pushed in chunks of chunkSize
// bytes: the bit length of its number of chunks. It is 20 for every proper
// prefix of 1 TiB in 1 MiB chunks and 21 for the whole of it. chunkSize must
// be positive.
func MergeStackBound(size int64, chunkSize int) int {
	if size <= 0 {
		return 0
	}
	return bits.Len64((uint64(size) + uint64(chunkSize) - 1) / uint64(chunkSize))
}

// Push adds the chaining value of the next chunk, length bytes long at
// s.Offset(). Every chunk but the file's last is exactly ChunkSize bytes;
// for a file of one chunk, cv is its root hash (ChunkCV with root set),
// which Sum then returns as it is.
//
// Push merges the subtrees that the new chunk completes, one parent
// compression each, lazily: the last chunk stays unmerged until another
// follows, so that Sum can put the ROOT flag on the final merge. It returns
// an error, and leaves s unchanged, for the zero MergeStack, for a length
// outside 1..ChunkSize, for a chunk after a short one, or past MaxFileSize.
func (s *MergeStack) Push(cv CV, length int64) error {
	c := int64(s.ChunkSize())
	switch {
	case c == 0:
		return fmt.Errorf("bug: pushing a chunk onto a merge stack without a chunk size")
	case length <= 0 || length > c:
		return fmt.Errorf("pushing a chunk of %d bytes onto a merge stack of %d-byte chunks", length, c)
	case s.offset%c != 0:
		return fmt.Errorf("pushing a chunk at offset %d after the file's last, short, chunk", s.offset)
	case length > MaxFileSize-s.offset:
		return fmt.Errorf("pushing a chunk of %d bytes at offset %d past %d", length, s.offset, int64(MaxFileSize))
	}
	// Before chunk i joins, the chunks 0..i-1 form one complete subtree per
	// one bit of i.
	for keep := bits.OnesCount64(uint64(s.offset / c)); s.n > keep; s.n-- {
		s.cvs[s.n-2] = parentCV(s.cvs[s.n-2], s.cvs[s.n-1], false)
		s.cvs[s.n-1] = [8]uint32{} // unused entries stay zero, so == compares stacks
	}
	s.cvs[s.n] = cvWords(&cv)
	s.n++
	s.offset += length
	return nil
}

// Sum returns the BLAKE3 hash of the file, the value b3sum prints. size is
// the file's size in bytes and must equal s.Offset(): all chunks pushed.
// It merges the stack right to left, the final parent with the ROOT flag;
// with no chunk it returns the hash of empty input, and with one chunk the
// value pushed. Sum does not change s.
func (s *MergeStack) Sum(size int64) (Hash, error) {
	if size != s.offset {
		return Hash{}, fmt.Errorf("bug: merge stack covers %d bytes, file has %d", s.offset, size)
	}
	switch s.n {
	case 0:
		n := guts.CompressChunk(nil, &guts.IV, 0, guts.FlagRoot)
		return Hash(wordsCV(guts.ChainingValue(n))), nil
	case 1:
		return Hash(wordsCV(s.cvs[0])), nil
	}
	cv := s.cvs[s.n-1]
	for i := s.n - 2; i >= 0; i-- {
		cv = parentCV(s.cvs[i], cv, i == 0)
	}
	return Hash(wordsCV(cv)), nil
}

// AppendBinary appends s's encoding to b, MergeStackLen(s.Offset(),
// s.ChunkSize())·32 + 10 bytes, at most MaxMergeStackSize. Integers are
// big-endian:
//
//	offset 0   u8   log2 of the chunk size in bytes, 14..24
//	offset 1   u64  offset: bytes covered, 0..MaxFileSize
//	offset 9   u8   count of chaining values, MergeStackLen(offset, chunk size)
//	offset 10  count × 32 bytes: the chaining values, bottom (leftmost) first
//
// The zero MergeStack has no encoding and returns an error.
func (s *MergeStack) AppendBinary(b []byte) ([]byte, error) {
	if s.chunkShift == 0 {
		return b, fmt.Errorf("bug: encoding a merge stack without a chunk size")
	}
	b = append(b, s.chunkShift)
	b = binary.BigEndian.AppendUint64(b, uint64(s.offset))
	b = append(b, byte(s.n))
	for _, w := range s.cvs[:s.n] {
		cv := wordsCV(w)
		b = append(b, cv[:]...)
	}
	return b, nil
}

// MarshalBinary returns s's encoding; see AppendBinary.
func (s *MergeStack) MarshalBinary() ([]byte, error) {
	return s.AppendBinary(make([]byte, 0, mergeStackHeader+s.n*HashSize))
}

// UnmarshalBinary sets s from an encoding made by AppendBinary. It refuses,
// with an error and s unchanged, a chunk size outside 16 KiB..16 MiB, an
// offset above MaxFileSize, a count other than MergeStackLen(offset, chunk
// size), and missing or trailing bytes. Whatever it accepts re-encodes to
// the same bytes. It cannot tell forged chaining values from real ones:
// those show up as a root hash that does not match.
func (s *MergeStack) UnmarshalBinary(data []byte) error {
	if len(data) < mergeStackHeader {
		return fmt.Errorf("decoding merge stack: %d bytes, want at least %d", len(data), mergeStackHeader)
	}
	shift := data[0]
	if shift > 24 || CheckChunkSize(1<<shift) != nil {
		return fmt.Errorf("decoding merge stack: chunk size 2^%d outside 2^14..2^24 bytes", shift)
	}
	off := binary.BigEndian.Uint64(data[1:])
	if off > MaxFileSize {
		return fmt.Errorf("decoding merge stack: offset %d above %d", off, uint64(MaxFileSize))
	}
	count := int(data[9])
	if want := MergeStackLen(int64(off), 1<<shift); count != want {
		return fmt.Errorf("decoding merge stack: %d chaining values at offset %d, want %d", count, off, want)
	}
	if want := mergeStackHeader + count*HashSize; len(data) != want {
		return fmt.Errorf("decoding merge stack: %d bytes, want %d", len(data), want)
	}
	*s = MergeStack{chunkShift: shift, offset: int64(off), n: count}
	for i := range count {
		s.cvs[i] = cvWords((*CV)(data[mergeStackHeader+i*HashSize:]))
	}
	return nil
}

// Rechunk returns s re-cut into chunks of chunkSize bytes, a power of two
// smaller than s.ChunkSize(), at the same offset, so that a receiver can
// go on with smaller chunks without re-reading its prefix. tail is the
// data of the last chunk pushed, [s.LastOffset(), s.Offset()), and size
// the file's size in bytes. Every complete subtree left of the last chunk
// stays as it is; only the last chunk is hashed again, in pieces of
// chunkSize. Rechunk does not check tail against the last chaining value:
// the caller verifies it first (ChunkHash). It returns an error for a
// chunk size that is not smaller and allowed, or a tail of the wrong
// length.
func (s *MergeStack) Rechunk(chunkSize int, tail []byte, size int64) (*MergeStack, error) {
	if err := CheckChunkSize(chunkSize); err != nil {
		return nil, err
	}
	if chunkSize >= s.ChunkSize() {
		return nil, fmt.Errorf("bug: re-cutting a merge stack of %d-byte chunks into %d-byte chunks", s.ChunkSize(), chunkSize)
	}
	last := s.LastOffset()
	if int64(len(tail)) != s.offset-last || s.offset > size {
		return nil, fmt.Errorf("bug: re-cutting a merge stack at offset %d with a tail of %d bytes at %d", s.offset, len(tail), last)
	}
	out := &MergeStack{chunkShift: uint8(bits.TrailingZeros(uint(chunkSize))), offset: s.offset}
	if s.n == 0 {
		return out, nil
	}
	// The tail's small chunks form the last big chunk's subtree, aligned
	// to it, and parent compressions do not depend on position: merged on
	// a stack of their own, they leave exactly the entries that the
	// subtree contributes to the re-cut stack.
	sub := &MergeStack{chunkShift: out.chunkShift}
	c := int64(chunkSize)
	for off := int64(0); off < int64(len(tail)); off += c {
		piece := tail[off:min(off+c, int64(len(tail)))]
		h, err := ChunkHash(piece, last+off, size)
		if err != nil {
			return nil, err
		}
		if err := sub.Push(CV(h), int64(len(piece))); err != nil {
			return nil, err
		}
	}
	out.n = s.n - 1 + sub.n
	if want := MergeStackLen(s.offset, chunkSize); out.n != want || out.n > MaxMergeStackLen {
		return nil, fmt.Errorf("bug: re-cut merge stack holds %d chaining values, want %d", out.n, want)
	}
	copy(out.cvs[:], s.cvs[:s.n-1])
	copy(out.cvs[s.n-1:], sub.cvs[:sub.n])
	return out, nil
}
