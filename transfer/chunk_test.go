package transfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestChunkRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		c    Chunk
	}{
		{"first chunk", Chunk{Offset: 0, Data: []byte("hello, ferry")}},
		{"empty data", Chunk{Offset: 7}},
		{"at the end of the largest file", Chunk{Offset: MaxFileSize - 3, Data: []byte("end")}},
		{"one max chunk", Chunk{Offset: 1 << 40, Data: bytes.Repeat([]byte{0x5a}, MinChunkSize)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.c.Hash = HashBytes(tt.c.Data) // any 32 bytes: framing does not judge them
			p := EncodeChunk(&tt.c)
			if len(p) != ChunkHeaderSize+len(tt.c.Data) ||
				binary.BigEndian.Uint64(p) != uint64(tt.c.Offset) ||
				binary.BigEndian.Uint32(p[8:]) != uint32(len(tt.c.Data)) ||
				!bytes.Equal(p[12:44], tt.c.Hash[:]) {
				t.Fatalf("payload layout % x", p[:ChunkHeaderSize])
			}
			var got Chunk
			if err := DecodeChunk(p, &got); err != nil {
				t.Fatal(err)
			}
			if got.Offset != tt.c.Offset || got.Hash != tt.c.Hash || !bytes.Equal(got.Data, tt.c.Data) {
				t.Fatalf("decoded %+v, want %+v", got, tt.c)
			}

			var wire bytes.Buffer
			if err := WriteChunk(&wire, &tt.c); err != nil {
				t.Fatal(err)
			}
			h, err := ReadFrameHeader(&wire, len(tt.c.Data))
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, ChunkHeaderSize+len(tt.c.Data))
			if err := ReadChunk(&wire, h, buf, &got); err != nil {
				t.Fatal(err)
			}
			if got.Offset != tt.c.Offset || got.Hash != tt.c.Hash || !bytes.Equal(got.Data, tt.c.Data) {
				t.Fatalf("read %+v, want %+v", got, tt.c)
			}
		})
	}
}

func TestChunkVerifyDetectsFlip(t *testing.T) {
	data := randomData(3*MinChunkSize, 7)
	for _, off := range []int64{0, MinChunkSize, 2 * MinChunkSize} {
		c := Chunk{Offset: off, Data: bytes.Clone(data[off : off+MinChunkSize])}
		if off == 2*MinChunkSize {
			c.Data = c.Data[:100] // the file's short last chunk
		}
		size := 2*MinChunkSize + 100
		var err error
		if c.Hash, err = ChunkHash(c.Data, c.Offset, int64(size)); err != nil {
			t.Fatal(err)
		}
		if !c.Verify(int64(size)) {
			t.Fatalf("Verify false for a fresh chunk at offset %d", off)
		}
		c.Data[3] ^= 1
		if c.Verify(int64(size)) {
			t.Fatalf("Verify true after a bit flip at offset %d", off)
		}
	}
}

// TestChunkVerifyBindsOffset: the same bytes and hash, framed at another
// offset or as part of a file of another size, do not verify.
func TestChunkVerifyBindsOffset(t *testing.T) {
	data := randomData(MinChunkSize, 8)
	h, err := ChunkHash(data, MinChunkSize, 4*MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 2 * MinChunkSize, 3 * MinChunkSize} {
		c := Chunk{Offset: off, Hash: h, Data: data}
		if c.Verify(4 * MinChunkSize) {
			t.Fatalf("chunk hashed at offset %d verifies at offset %d", MinChunkSize, off)
		}
	}
	// A one-chunk file's chunk carries the root hash, not the CV.
	root, err := ChunkHash(data, 0, MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if root != HashBytes(data) {
		t.Fatalf("one-chunk hash %x, b3sum %x", root, HashBytes(data))
	}
	if c := (Chunk{Offset: 0, Hash: root, Data: data}); c.Verify(2 * MinChunkSize) {
		t.Fatal("root hash verifies as the first chunk of a longer file")
	}
}

func chunkPayload(off uint64, declared uint32, data []byte) []byte {
	p := make([]byte, ChunkHeaderSize, ChunkHeaderSize+len(data))
	binary.BigEndian.PutUint64(p, off)
	binary.BigEndian.PutUint32(p[8:], declared)
	return append(p, data...)
}

func TestDecodeChunkRejects(t *testing.T) {
	tests := []struct {
		name string
		p    []byte
		msg  string
	}{
		{"empty", nil, "payload of 0 bytes"},
		{"shorter than the chunk header", make([]byte, ChunkHeaderSize-1), "payload of 43 bytes"},
		{"declares more than it carries", chunkPayload(0, 5, []byte("abcd")), "declares 5 bytes, frame carries 4"},
		{"declares less than it carries", chunkPayload(0, 3, []byte("abcd")), "declares 3 bytes, frame carries 4"},
		{"declares 4 GiB", chunkPayload(0, 1<<32-1, []byte("abcd")), "declares"},
		{"offset above MaxFileSize", chunkPayload(MaxFileSize+1, 0, nil), "beyond"},
		{"negative offset", chunkPayload(1<<63, 1, []byte("a")), "beyond"},
		{"ends past MaxFileSize", chunkPayload(MaxFileSize-1, 2, []byte("ab")), "beyond"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Chunk
			err := DecodeChunk(tt.p, &c)
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want ErrProtocol mentioning %q", err, tt.msg)
			}
		})
	}
}

func TestReadChunkRejects(t *testing.T) {
	good := chunkPayload(0, 4, []byte("abcd"))
	tests := []struct {
		name    string
		h       FrameHeader
		in      []byte
		bufCap  int
		wantErr error
	}{
		{"not a chunk frame", FrameHeader{FrameTrailer, uint32(len(good))}, good, 64, ErrProtocol},
		{"frame shorter than a chunk header", FrameHeader{FrameChunk, ChunkHeaderSize - 1}, good, 64, ErrProtocol},
		{"frame larger than the buffer", FrameHeader{FrameChunk, uint32(len(good))}, good, len(good) - 1, ErrProtocol},
		{"length field disagrees with the frame", FrameHeader{FrameChunk, uint32(len(good)) - 1}, good, 64, ErrProtocol},
		{"payload cut", FrameHeader{FrameChunk, uint32(len(good))}, good[:len(good)-1], 64, io.ErrUnexpectedEOF},
		{"payload missing", FrameHeader{FrameChunk, uint32(len(good))}, nil, 64, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Chunk
			err := ReadChunk(bytes.NewReader(tt.in), tt.h, make([]byte, 0, tt.bufCap), &c)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("cut")
	}
	w.after--
	return len(p), nil
}

func TestWriteChunkErrors(t *testing.T) {
	c := &Chunk{Offset: 4096, Data: []byte("data")}
	for _, after := range []int{0, 1} {
		err := WriteChunk(&failWriter{after: after}, c)
		if err == nil || !strings.Contains(err.Error(), "offset 4096") {
			t.Fatalf("after %d writes: error %v, want one naming the offset", after, err)
		}
	}
}

func TestBufferPool(t *testing.T) {
	p := NewBufferPool(100)
	b := p.Get()
	if len(*b) != 100 || cap(*b) != 100 {
		t.Fatalf("Get: len %d cap %d", len(*b), cap(*b))
	}
	*b = (*b)[:10]
	p.Put(b)
	other := make([]byte, 50)
	p.Put(&other) // dropped: another capacity
	for range 10 {
		b := p.Get()
		if len(*b) != 100 || cap(*b) != 100 {
			t.Fatalf("Get after Put: len %d cap %d", len(*b), cap(*b))
		}
	}
}
