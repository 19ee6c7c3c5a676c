package transfer

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

func header(typ FrameType, n uint32) []byte {
	b := make([]byte, FrameHeaderSize)
	b[0] = byte(typ)
	b[1], b[2], b[3], b[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return b
}

func TestReadFrameHeader(t *testing.T) {
	const maxChunk = 64 << 10
	tests := []struct {
		name     string
		in       []byte
		maxChunk int
		want     FrameHeader
		wantErr  error // nil, ErrProtocol, io.EOF or io.ErrUnexpectedEOF
	}{
		{"hello", header(FrameHello, 20), maxChunk, FrameHeader{FrameHello, 20}, nil},
		{"empty ack payload is a header matter only", header(FrameAck, 0), maxChunk, FrameHeader{FrameAck, 0}, nil},
		{"control at the limit", header(FrameOffer, MaxControlPayload), maxChunk, FrameHeader{FrameOffer, MaxControlPayload}, nil},
		{"control one above the limit", header(FrameOffer, MaxControlPayload+1), maxChunk, FrameHeader{}, ErrProtocol},
		{"committed of 4 GiB", header(FrameCommitted, 1<<32-1), maxChunk, FrameHeader{}, ErrProtocol},
		{"chunk at the limit", header(FrameChunk, ChunkHeaderSize+maxChunk), maxChunk, FrameHeader{FrameChunk, ChunkHeaderSize + maxChunk}, nil},
		{"chunk one above the limit", header(FrameChunk, ChunkHeaderSize+maxChunk+1), maxChunk, FrameHeader{}, ErrProtocol},
		{"chunk above the limit, below MaxChunkSize", header(FrameChunk, ChunkHeaderSize+MaxChunkSize), maxChunk, FrameHeader{}, ErrProtocol},
		{"chunk of 4 GiB", header(FrameChunk, 1<<32-1), MaxChunkSize, FrameHeader{}, ErrProtocol},
		{"chunk larger than a control frame is fine", header(FrameChunk, MaxControlPayload+1), MaxChunkSize, FrameHeader{FrameChunk, MaxControlPayload + 1}, nil},
		{"type 0", header(0, 1), maxChunk, FrameHeader{}, ErrProtocol},
		{"data (protocol 2)", header(FrameData, 12), maxChunk, FrameHeader{FrameData, 12}, nil},
		{"refuse transfer (protocol 2)", header(FrameRefuseTransfer, 9), maxChunk, FrameHeader{FrameRefuseTransfer, 9}, nil},
		{"entry (protocol 2.2)", header(FrameEntry, 9), maxChunk, FrameHeader{FrameEntry, 9}, nil},
		{"zero chunk (protocol 2.2)", header(FrameZeroChunk, 44), maxChunk, FrameHeader{FrameZeroChunk, 44}, nil},
		{"type 14", header(14, 1), maxChunk, FrameHeader{}, ErrProtocol},
		{"type 255", header(255, 0), maxChunk, FrameHeader{}, ErrProtocol},
		{"HTTP request", []byte("GET / HTTP/1.1\r\n"), maxChunk, FrameHeader{}, ErrProtocol},
		{"TLS client hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00}, maxChunk, FrameHeader{}, ErrProtocol},
		{"nothing", nil, maxChunk, FrameHeader{}, io.EOF},
		{"cut header", []byte{byte(FrameHello), 0, 0}, maxChunk, FrameHeader{}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &countingReader{r: bytes.NewReader(append(tt.in, bytes.Repeat([]byte{0xee}, 64)...))}
			if len(tt.in) < FrameHeaderSize {
				r.r = bytes.NewReader(tt.in)
			}
			h, err := ReadFrameHeader(r, tt.maxChunk)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if err == nil && h != tt.want {
				t.Fatalf("header %+v, want %+v", h, tt.want)
			}
			if r.n > FrameHeaderSize {
				t.Fatalf("read %d bytes, more than a header", r.n)
			}
		})
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestReadMessageBoundsBeforeAllocation sends headers that announce huge
// payloads and checks that ReadMessage refuses them without reading past
// the header or allocating anything near the announced size.
func TestReadMessageBoundsBeforeAllocation(t *testing.T) {
	tests := []struct {
		name string
		hdr  []byte
		msg  string
	}{
		{"control frame of 4 GiB", header(FrameOffer, 1<<32-1), "exceeds limit"},
		{"control frame of 64 KiB + 1", header(FrameHello, MaxControlPayload+1), "exceeds limit"},
		{"chunk frame of 4 GiB", header(FrameChunk, 1<<32-1), "exceeds limit"},
		{"chunk frame within bounds outside a transfer", header(FrameChunk, ChunkHeaderSize+MaxChunkSize), "outside a transfer"},
		{"unknown type", header(200, 1<<32-1), "unknown frame type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &countingReader{r: io.MultiReader(bytes.NewReader(tt.hdr), endlessReader{})}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := ReadMessage(r)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want ErrProtocol mentioning %q", err, tt.msg)
			}
			if r.n != FrameHeaderSize {
				t.Errorf("read %d bytes, want the %d of the header only", r.n, FrameHeaderSize)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
				t.Errorf("allocated %d bytes refusing the frame", d)
			}
		})
	}
}

// endlessReader yields zeros forever: a reader of announced payloads that
// must never be drained.
type endlessReader struct{}

func (endlessReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestReadControl(t *testing.T) {
	tests := []struct {
		name    string
		h       FrameHeader
		in      []byte
		buf     []byte
		wantErr error
	}{
		{"fits the buffer", FrameHeader{FrameAck, 8}, make([]byte, 8), make([]byte, 0, 16), nil},
		{"grows the buffer", FrameHeader{FrameTrailer, 32}, make([]byte, 32), make([]byte, 0, 4), nil},
		{"nil buffer", FrameHeader{FrameTrailer, 32}, make([]byte, 32), nil, nil},
		{"above the limit", FrameHeader{FrameOffer, MaxControlPayload + 1}, nil, nil, ErrProtocol},
		{"payload cut", FrameHeader{FrameTrailer, 32}, make([]byte, 31), nil, io.ErrUnexpectedEOF},
		{"payload missing", FrameHeader{FrameTrailer, 32}, nil, nil, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ReadControl(bytes.NewReader(tt.in), tt.h, tt.buf)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(p) != int(tt.h.Length) {
				t.Fatalf("payload of %d bytes, error %v", len(p), err)
			}
		})
	}
}

func TestReadMessageCutMidFrame(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMessage(&buf, &Trailer{}); err != nil {
		t.Fatal(err)
	}
	for n := 1; n < buf.Len(); n++ {
		_, err := ReadMessage(bytes.NewReader(buf.Bytes()[:n]))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut after %d bytes: error %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
	if _, err := ReadMessage(bytes.NewReader(nil)); !errors.Is(err, io.EOF) {
		t.Fatalf("empty stream: error %v, want io.EOF", err)
	}
}

func TestFrameTypeString(t *testing.T) {
	tests := []struct {
		name string
		typ  FrameType
		want string
	}{
		{"hello", FrameHello, "hello"}, {"offer", FrameOffer, "offer"}, {"accept", FrameAccept, "accept"},
		{"refuse", FrameRefuse, "refuse"}, {"chunk", FrameChunk, "chunk"}, {"ack", FrameAck, "ack"},
		{"nack", FrameNack, "nack"}, {"trailer", FrameTrailer, "trailer"}, {"committed", FrameCommitted, "committed"},
		{"unknown", 42, "frame(42)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.typ.String(); got != tt.want {
				t.Fatalf("%q, want %q", got, tt.want)
			}
		})
	}
}
