package transfer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// FrameType identifies a frame. See docs/PROTOCOL.md for each layout.
type FrameType uint8

// Frame types of protocol version 2.
const (
	FrameHello     FrameType = 1
	FrameOffer     FrameType = 2
	FrameAccept    FrameType = 3
	FrameRefuse    FrameType = 4
	FrameChunk     FrameType = 5
	FrameAck       FrameType = 6
	FrameNack      FrameType = 7
	FrameTrailer   FrameType = 8
	FrameCommitted FrameType = 9
	// FrameData opens a data run of an accepted transfer (version 2).
	FrameData FrameType = 10
	// FrameRefuseTransfer refuses one transfer; the session goes on
	// (version 2).
	FrameRefuseTransfer FrameType = 11
	// FrameEntry creates a directory or a symbolic link, or sets a
	// directory's mode and mtime (version 2.2).
	FrameEntry FrameType = 12
	// FrameZeroChunk stands for a chunk of zeros (a hole of a sparse
	// file) in a data run, without its data (version 2.2).
	FrameZeroChunk FrameType = 13
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameOffer:
		return "offer"
	case FrameAccept:
		return "accept"
	case FrameRefuse:
		return "refuse"
	case FrameChunk:
		return "chunk"
	case FrameAck:
		return "ack"
	case FrameNack:
		return "nack"
	case FrameTrailer:
		return "trailer"
	case FrameCommitted:
		return "committed"
	case FrameData:
		return "data"
	case FrameRefuseTransfer:
		return "refuse-transfer"
	case FrameEntry:
		return "entry"
	case FrameZeroChunk:
		return "zero-chunk"
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

const (
	// FrameHeaderSize is the size in bytes of a frame header: one type byte
	// and a big-endian uint32 payload length.
	FrameHeaderSize = 5

	// MaxControlPayload is the largest payload, in bytes, of any frame
	// other than a chunk. Checked before allocation.
	MaxControlPayload = 64 << 10

	// ChunkHeaderSize is the size in bytes of a chunk frame's payload
	// before the data: offset (8), length (4), BLAKE3 hash (32).
	ChunkHeaderSize = 8 + 4 + HashSize

	// MinChunkSize is the smallest negotiable chunk size in bytes, 16 KiB.
	// A chunk size must also be a power of two (CheckChunkSize), so that
	// every chunk is a complete BLAKE3 subtree.
	MinChunkSize = MinTreeChunkSize
	// MaxChunkSize is the largest negotiable chunk size in bytes, 16 MiB.
	MaxChunkSize = MaxTreeChunkSize

	// DefaultChunkSize is the chunk size in bytes a sender proposes unless
	// told otherwise: 1 MiB, chosen by measurement (see docs/PROTOCOL.md).
	DefaultChunkSize = 1 << 20
)

// FrameHeader is the fixed prefix of every frame.
type FrameHeader struct {
	Type   FrameType
	Length uint32 // payload length in bytes
}

// ReadFrameHeader reads one frame header from r and checks its length
// against the bound for its type: MaxControlPayload for control frames,
// ChunkHeaderSize+maxChunk for chunk frames. It returns an error wrapping
// ErrProtocol when the bound is exceeded or the type is unknown, and the
// reader's error (io.EOF only when no byte was read) otherwise.
func ReadFrameHeader(r io.Reader, maxChunk int) (FrameHeader, error) {
	var b [FrameHeaderSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return FrameHeader{}, err
	}
	h := FrameHeader{Type: FrameType(b[0]), Length: binary.BigEndian.Uint32(b[1:])}
	limit := uint32(MaxControlPayload)
	switch h.Type {
	case FrameChunk:
		limit = uint32(ChunkHeaderSize + maxChunk)
	case FrameHello, FrameOffer, FrameAccept, FrameRefuse, FrameAck, FrameNack, FrameTrailer, FrameCommitted,
		FrameData, FrameRefuseTransfer, FrameEntry, FrameZeroChunk:
	default:
		return h, fmt.Errorf("%w: unknown frame type %d", ErrProtocol, b[0])
	}
	if h.Length > limit {
		return h, fmt.Errorf("%w: %v frame of %d bytes exceeds limit %d", ErrProtocol, h.Type, h.Length, limit)
	}
	return h, nil
}

// ReadControl reads the payload of a control frame whose header was just
// read into buf, growing buf as needed up to MaxControlPayload. It returns
// the payload slice, which aliases buf.
func ReadControl(r io.Reader, h FrameHeader, buf []byte) ([]byte, error) {
	if h.Length > MaxControlPayload {
		return nil, fmt.Errorf("%w: control frame of %d bytes", ErrProtocol, h.Length)
	}
	if cap(buf) < int(h.Length) {
		buf = make([]byte, h.Length)
	}
	buf = buf[:h.Length]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("reading %v payload: %w", h.Type, noEOF(err))
	}
	return buf, nil
}

// noEOF turns io.EOF inside a frame into io.ErrUnexpectedEOF: a peer that
// stops mid-frame has cut the session, not ended it.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// putHeader writes a frame header for typ and payload length n into b[:5].
func putHeader(b []byte, typ FrameType, n int) {
	b[0] = byte(typ)
	binary.BigEndian.PutUint32(b[1:], uint32(n))
}

// WriteMessage encodes m as one frame and writes it to w in one Write call.
func WriteMessage(w io.Writer, m Message) error {
	buf := make([]byte, FrameHeaderSize, FrameHeaderSize+64)
	buf = m.appendPayload(buf)
	putHeader(buf, m.frameType(), len(buf)-FrameHeaderSize)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("writing %v: %w", m.frameType(), err)
	}
	return nil
}

// ReadMessage reads one control frame from r and decodes it. A chunk frame
// is refused here: chunk payloads are read with ReadChunk into pooled
// buffers.
func ReadMessage(r io.Reader) (Message, error) {
	h, err := ReadFrameHeader(r, MaxChunkSize)
	if err != nil {
		return nil, err
	}
	if h.Type == FrameChunk {
		// Not read: the payload may be large, and the session ends anyway.
		return nil, fmt.Errorf("%w: chunk frame outside a transfer", ErrProtocol)
	}
	p, err := ReadControl(r, h, nil)
	if err != nil {
		return nil, err
	}
	return DecodeMessage(h.Type, p)
}
