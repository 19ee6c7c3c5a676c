package transfer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/zeebo/blake3"
)

// Chunk is one framed slice of file data: Data is the bytes at Offset, and
// Hash is its chunk hash (ChunkHash) as the sender computed it.
type Chunk struct {
	Offset int64
	Hash   Hash
	Data   []byte
}

// Verify reports whether c.Hash is ChunkHash(c.Data, c.Offset, size) for a
// file of size bytes. A chunk that is not an aligned subtree (ChunkCV's
// rules) does not verify.
func (c *Chunk) Verify(size int64) bool {
	h, err := ChunkHash(c.Data, c.Offset, size)
	return err == nil && h == c.Hash
}

// ChunkHash returns the hash a chunk frame carries for data at offset in a
// file of size bytes: the BLAKE3 chaining value of the chunk's subtree
// (ChunkCV), or, when the chunk is the whole file (offset 0, len(data) ==
// size), the file's root hash, the value b3sum prints. It depends on
// offset, so a chunk replayed at another offset does not match. Errors are
// ChunkCV's (wrapping ErrProtocol) for a chunk that is not an aligned
// subtree.
func ChunkHash(data []byte, offset, size int64) (Hash, error) {
	cv, err := ChunkCV(data, offset, offset == 0 && int64(len(data)) == size)
	return Hash(cv), err
}

// zeros returns MaxChunkSize zero bytes, allocated on first use (never
// written: its pages stay the kernel's shared zero page until read).
var zeros = sync.OnceValue(func() []byte { return make([]byte, MaxChunkSize) })

// ZeroChunkHash returns the chunk hash of n zero bytes at offset in a
// file of size bytes: what a ZeroChunk carries. It costs what hashing n
// bytes costs (the value depends on the chunk's position). Errors are
// ChunkHash's; n above MaxChunkSize wraps ErrProtocol.
func ZeroChunkHash(offset int64, n int, size int64) (Hash, error) {
	if n < 0 || n > MaxChunkSize {
		return Hash{}, fmt.Errorf("%w: zero chunk of %d bytes", ErrProtocol, n)
	}
	return ChunkHash(zeros()[:n], offset, size)
}

// allZero reports whether every byte of b is zero.
func allZero(b []byte) bool {
	return len(b) <= MaxChunkSize && bytes.Equal(b, zeros()[:len(b)])
}

// HashBytes returns the BLAKE3 hash of b, as b3sum prints it, computed
// with zeebo/blake3 (plain digests: offer identity, state record
// checksums, `ferry hash`).
func HashBytes(b []byte) Hash { return blake3.Sum256(b) }

// WriteChunk writes c as one chunk frame: a 49-byte header (frame header
// and chunk header) then the data, without copying the data.
func WriteChunk(w io.Writer, c *Chunk) error {
	var hdr [FrameHeaderSize + ChunkHeaderSize]byte
	putHeader(hdr[:], FrameChunk, ChunkHeaderSize+len(c.Data))
	putChunkHeader(hdr[FrameHeaderSize:], c.Offset, len(c.Data), c.Hash)
	if _, err := w.Write(hdr[:]); err != nil {
		return fmt.Errorf("writing chunk header at offset %d: %w", c.Offset, err)
	}
	if _, err := w.Write(c.Data); err != nil {
		return fmt.Errorf("writing chunk data at offset %d: %w", c.Offset, err)
	}
	return nil
}

func putChunkHeader(b []byte, off int64, n int, h Hash) {
	binary.BigEndian.PutUint64(b, uint64(off))
	binary.BigEndian.PutUint32(b[8:], uint32(n))
	copy(b[12:], h[:])
}

// ReadChunk reads the payload of a chunk frame whose header h was just read
// into buf, which must have capacity ≥ h.Length. c.Data aliases buf. It
// checks that the declared data length matches the frame, that the chunk
// lies within [0, MaxFileSize], and returns errors wrapping ErrProtocol
// otherwise. It does not verify the hash.
func ReadChunk(r io.Reader, h FrameHeader, buf []byte, c *Chunk) error {
	if h.Type != FrameChunk || h.Length < ChunkHeaderSize || int(h.Length) > cap(buf) {
		return fmt.Errorf("%w: chunk frame of %d bytes (buffer %d)", ErrProtocol, h.Length, cap(buf))
	}
	buf = buf[:h.Length]
	if _, err := io.ReadFull(r, buf); err != nil {
		return fmt.Errorf("reading chunk: %w", noEOF(err))
	}
	return DecodeChunk(buf, c)
}

// DecodeChunk decodes a chunk frame payload p into c; c.Data aliases p.
func DecodeChunk(p []byte, c *Chunk) error {
	if len(p) < ChunkHeaderSize {
		return fmt.Errorf("%w: chunk payload of %d bytes", ErrProtocol, len(p))
	}
	off := binary.BigEndian.Uint64(p)
	n := binary.BigEndian.Uint32(p[8:])
	if int(n) != len(p)-ChunkHeaderSize {
		return fmt.Errorf("%w: chunk declares %d bytes, frame carries %d", ErrProtocol, n, len(p)-ChunkHeaderSize)
	}
	if off > MaxFileSize || off+uint64(n) > MaxFileSize {
		return fmt.Errorf("%w: chunk at offset %d beyond %d", ErrProtocol, off, uint64(MaxFileSize))
	}
	c.Offset = int64(off)
	copy(c.Hash[:], p[12:ChunkHeaderSize])
	c.Data = p[ChunkHeaderSize:]
	return nil
}

// EncodeChunk returns c's frame payload (chunk header and data).
func EncodeChunk(c *Chunk) []byte {
	b := make([]byte, ChunkHeaderSize+len(c.Data))
	putChunkHeader(b, c.Offset, len(c.Data), c.Hash)
	copy(b[ChunkHeaderSize:], c.Data)
	return b
}

// BufferPool hands out byte slices of one fixed capacity, so that chunk
// buffers are reused instead of allocated per chunk. Only slices obtained
// from Get go back with Put (syncthing's bufferpool rule). Safe for
// concurrent use.
type BufferPool struct {
	size int
	pool sync.Pool
}

// NewBufferPool returns a pool of slices with capacity size bytes.
func NewBufferPool(size int) *BufferPool {
	p := &BufferPool{size: size}
	p.pool.New = func() any {
		b := make([]byte, size)
		return &b
	}
	return p
}

// Get returns a slice of length and capacity p's size.
func (p *BufferPool) Get() *[]byte { return p.pool.Get().(*[]byte) }

// Put returns b to the pool; slices of another capacity are dropped.
func (p *BufferPool) Put(b *[]byte) {
	if cap(*b) != p.size {
		return
	}
	*b = (*b)[:p.size]
	p.pool.Put(b)
}
