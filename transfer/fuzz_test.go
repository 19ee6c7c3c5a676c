package transfer

import (
	"bytes"
	"errors"
	"io"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// Fuzz targets for every decoder of the wire protocol. Each also runs its
// seeds (f.Add below and testdata/fuzz/FuzzXxx) as a plain test. Property,
// as in archive/tar's FuzzReader: decoding never panics, and whatever
// decodes re-encodes to the same bytes.

// fuzzChunkSize maps any uint32 to a chunk size the daemon may negotiate.
func fuzzChunkSize(n uint32) int {
	return MinChunkSize + int(n%(MaxChunkSize-MinChunkSize+1))
}

func FuzzReadFrameHeader(f *testing.F) {
	for _, typ := range []FrameType{0, FrameHello, FrameOffer, FrameAccept, FrameRefuse, FrameChunk, FrameAck, FrameNack, FrameTrailer, FrameCommitted, FrameData, FrameRefuseTransfer, FrameEntry, FrameZeroChunk, 14, 255} {
		for _, n := range []uint32{0, 8, MaxControlPayload, MaxControlPayload + 1, ChunkHeaderSize + MinChunkSize, ChunkHeaderSize + DefaultChunkSize + 1, 1<<32 - 1} {
			f.Add(header(typ, n), uint32(DefaultChunkSize-MinChunkSize))
		}
	}
	f.Add([]byte("GET / HTTP/1.1\r\n"), uint32(0))
	f.Add([]byte{1, 0}, uint32(0))
	f.Add([]byte{}, uint32(0))
	f.Fuzz(func(t *testing.T, b []byte, cs uint32) {
		maxChunk := fuzzChunkSize(cs)
		r := bytes.NewReader(b)
		h, err := ReadFrameHeader(r, maxChunk)
		if read := len(b) - r.Len(); read > FrameHeaderSize {
			t.Fatalf("read %d bytes", read)
		}
		switch {
		case len(b) == 0:
			if !errors.Is(err, io.EOF) {
				t.Fatalf("empty input: %v", err)
			}
			return
		case len(b) < FrameHeaderSize:
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("short input: %v", err)
			}
			return
		case err != nil:
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		limit := uint32(MaxControlPayload)
		if h.Type == FrameChunk {
			limit = uint32(ChunkHeaderSize + maxChunk)
		}
		if h.Type < FrameHello || h.Type > FrameZeroChunk || h.Length > limit {
			t.Fatalf("accepted %+v with limit %d", h, limit)
		}
		if !bytes.Equal(header(h.Type, h.Length), b[:FrameHeaderSize]) {
			t.Fatalf("header %+v does not re-encode to % x", h, b[:FrameHeaderSize])
		}
	})
}

func FuzzDecodeMessage(f *testing.F) {
	for _, tt := range sampleMessages() {
		f.Add(byte(tt.msg.frameType()), EncodeMessage(tt.msg))
	}
	hello := EncodeMessage(&Hello{Major: ProtocolMajor, ChunkSize: DefaultChunkSize, Agent: "a"})
	f.Add(byte(FrameHello), append(append([]byte(nil), hello[:4]...), 0, 2, 0, 0))
	f.Add(byte(FrameHello), hello[:11])
	f.Add(byte(FrameAccept), EncodeMessage(&Accept{ID: 1, ChunkSize: MinChunkSize, DurableOffset: MinChunkSize + 40, TailOffset: MinChunkSize, TailLength: 40}))
	f.Add(byte(FrameRefuse), []byte{0, 1, 0, 3, 'a', 0xff, 'b'})
	f.Add(byte(FrameChunk), make([]byte, ChunkHeaderSize))
	f.Add(byte(0), []byte{})
	f.Fuzz(func(t *testing.T, typ byte, p []byte) {
		m, err := DecodeMessage(FrameType(typ), p)
		if err != nil {
			if m != nil {
				t.Fatalf("message %#v returned with error %v", m, err)
			}
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error %v wraps neither ErrProtocol nor ErrVersion", err)
			}
			if errors.Is(err, ErrVersion) && FrameType(typ) != FrameHello {
				t.Fatalf("version error from a %v frame", FrameType(typ))
			}
			return
		}
		if m.frameType() != FrameType(typ) {
			t.Fatalf("%v frame decoded as %T", FrameType(typ), m)
		}
		enc := EncodeMessage(m)
		if !bytes.Equal(enc, p) {
			t.Fatalf("%#v re-encodes to\n% x\nnot\n% x", m, enc, p)
		}
		m2, err := DecodeMessage(FrameType(typ), enc)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoded message decodes to %#v, %v; want %#v", m2, err, m)
		}
		// And as a whole frame on a stream.
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
		m3, err := ReadMessage(&buf)
		if err != nil || !reflect.DeepEqual(m, m3) || buf.Len() != 0 {
			t.Fatalf("frame reads back as %#v, %v", m3, err)
		}
	})
}

func FuzzDecodeChunk(f *testing.F) {
	f.Add(EncodeChunk(&Chunk{Offset: 0, Hash: HashBytes([]byte("data")), Data: []byte("data")}))
	f.Add(EncodeChunk(&Chunk{Offset: MaxFileSize - 1, Data: []byte("x")}))
	f.Add(EncodeChunk(&Chunk{Offset: 1 << 30}))
	f.Add(chunkPayload(0, 5, []byte("abcd")))
	f.Add(chunkPayload(MaxFileSize+1, 0, nil))
	f.Add(make([]byte, ChunkHeaderSize-1))
	f.Fuzz(func(t *testing.T, p []byte) {
		var c Chunk
		err := DecodeChunk(p, &c)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if c.Offset < 0 || c.Offset+int64(len(c.Data)) > MaxFileSize {
			t.Fatalf("accepted chunk [%d,+%d)", c.Offset, len(c.Data))
		}
		if enc := EncodeChunk(&c); !bytes.Equal(enc, p) {
			t.Fatalf("chunk re-encodes to % x, not % x", enc, p)
		}
		// The same payload read from a frame.
		var frame bytes.Buffer
		if err := WriteChunk(&frame, &c); err != nil {
			t.Fatal(err)
		}
		h, err := ReadFrameHeader(&frame, max(len(c.Data), MinChunkSize))
		if err != nil {
			if len(c.Data) > MaxChunkSize {
				return // larger than any frame may carry
			}
			t.Fatal(err)
		}
		var c2 Chunk
		if err := ReadChunk(&frame, h, make([]byte, h.Length), &c2); err != nil {
			t.Fatal(err)
		}
		if c2.Offset != c.Offset || c2.Hash != c.Hash || !bytes.Equal(c2.Data, c.Data) {
			t.Fatalf("frame reads back as %+v", c2)
		}
	})
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{
		"file", "a/b/c", "../x", "/etc/x", "a/../../x", ".", "a//b", "a/", "a\x00b", "a\x7fb", "a\u0085b",
		"\xff", `a\b`, ".ferry", ".ferry/x", "x/.ferry", "Fähre/日本語", "a\uFFFDb", strings.Repeat("x", 256),
		strings.Repeat("a/", 2049), "..", "...", "a/./b", " ", "~", "-rf", "\u202e",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName(name)
		if q := QuoteName(name); strings.ContainsFunc(q, unicode.IsControl) || !utf8.ValidString(q) {
			t.Fatalf("QuoteName(%q) = %s carries raw control bytes", name, q)
		}
		if err != nil {
			if !errors.Is(err, ErrBadName) {
				t.Fatalf("error %v does not wrap ErrBadName", err)
			}
			if strings.ContainsFunc(err.Error(), unicode.IsControl) {
				t.Fatalf("error %q carries raw control characters", err)
			}
			return
		}
		switch {
		case name == "" || len(name) > MaxNameLen:
			t.Fatalf("accepted %q of %d bytes", name, len(name))
		case !utf8.ValidString(name):
			t.Fatalf("accepted invalid UTF-8 %q", name)
		case strings.HasPrefix(name, "/"):
			t.Fatalf("accepted absolute %q", name)
		case strings.ContainsFunc(name, unicode.IsControl):
			t.Fatalf("accepted control characters in %q", name)
		case strings.ContainsRune(name, '\\'):
			t.Fatalf("accepted a backslash in %q", name)
		case path.Clean(name) != name:
			t.Fatalf("accepted %q, which cleans to %q", name, path.Clean(name))
		case !filepath.IsLocal(name):
			t.Fatalf("accepted %q, which is not local", name)
		case name == ReservedDir || strings.HasPrefix(name, ReservedDir+"/"):
			t.Fatalf("accepted reserved %q", name)
		}
		for _, c := range strings.Split(name, "/") {
			if c == ".." || c == "." || c == "" || len(c) > MaxComponentLen {
				t.Fatalf("accepted %q with component %q", name, c)
			}
		}
	})
}
