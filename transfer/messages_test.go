package transfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// sampleMessages holds one or more instances of every control message,
// with fields at their bounds.
func sampleMessages() []struct {
	name string
	msg  Message
} {
	h := HashBytes([]byte("ferry"))
	return []struct {
		name string
		msg  Message
	}{
		{"hello", &Hello{Major: ProtocolMajor, Minor: ProtocolMinor, ChunkSize: DefaultChunkSize, Agent: "ferry/test"}},
		{"hello min chunk, empty agent", &Hello{Major: ProtocolMajor, Minor: 7, ChunkSize: MinChunkSize}},
		{"hello max chunk, longest agent", &Hello{Major: ProtocolMajor, ChunkSize: MaxChunkSize, Agent: strings.Repeat("a", maxAgent)}},
		{"hello unicode agent", &Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize, Agent: "fähre/1 ⛴"}},
		{"hello with a token", &Hello{Major: ProtocolMajor, Minor: 2, ChunkSize: MinChunkSize, Agent: "a", Token: "ferry_abc"}},
		{"offer", &Offer{ID: 7, Size: 12345, Mode: 0o644, MtimeNs: 1700000000123456789, Inode: 42, PrefixID: h, Name: "dir/file.bin"}},
		{"offer restart", &Offer{ID: 7, Flags: OfferRestart, Size: 0, Mode: 0o7777, MtimeNs: -1, Inode: 1<<64 - 1, Name: "a"}},
		{"offer max size and name", &Offer{ID: 7, Size: MaxFileSize, Name: strings.Repeat("n", MaxNameLen)}},
		{"offer invalid UTF-8 name passes the decoder", &Offer{ID: 7, Size: 1, Name: "bad\xffname"}},
		{"accept fresh", &Accept{ID: 7, ChunkSize: DefaultChunkSize}},
		{"accept resume", &Accept{ID: 7, ChunkSize: 1 << 20, DurableOffset: 3 << 20, TailOffset: 2 << 20, TailLength: 1 << 20, TailHash: h}},
		{"accept restarted", &Accept{ID: 7, Flags: AcceptRestarted, ChunkSize: MinChunkSize}},
		{"accept max tail", &Accept{ID: 7, ChunkSize: MaxChunkSize, DurableOffset: MaxFileSize, TailOffset: MaxFileSize - MaxChunkSize, TailLength: MaxChunkSize, TailHash: h}},
		{"accept short tail", &Accept{ID: 7, ChunkSize: MinChunkSize, DurableOffset: MinChunkSize + 1, TailOffset: MinChunkSize, TailLength: 1, TailHash: h}},
		{"accept with a window (2.3)", &Accept{ID: 7, ChunkSize: 1 << 20, DurableOffset: 3 << 20, TailOffset: 2 << 20, TailLength: 1 << 20, TailHash: h, Window: 8 << 20}},
		{"refuse", &RemoteError{Code: CodeExists, Message: `file exists: "a" is already on the daemon`}},
		{"refuse unknown code, empty message", &RemoteError{Code: 999}},
		{"refuse longest message", &RemoteError{Code: CodeBadName, Message: strings.Repeat("é", maxMessage/2)}},
		{"ack", &Ack{ID: 7, DurableOffset: 1 << 40}},
		{"ack zero", &Ack{ID: 7}},
		{"nack", &Nack{ID: 7, Offset: MaxFileSize}},
		{"trailer", &Trailer{ID: 7, Hash: h}},
		{"committed", &Committed{ID: 7, Size: 99, Hash: h}},
		{"data", &Data{ID: 1<<32 - 1, Offset: MaxFileSize}},
		{"zero chunk", &ZeroChunk{Offset: 1 << 40, Length: MaxChunkSize, Hash: Hash{7}}},
		{"entry dir", &Entry{ID: 3, Kind: EntryDir, Mode: 0o2755, MtimeNs: -5, Name: "a/b"}},
		{"entry symlink", &Entry{ID: 4, Kind: EntrySymlink, Name: "a/l", Target: "../b"}},
		{"refuse one transfer", &RemoteError{ID: 3, Code: CodeExists, Message: "m"}},
		{"committed already", &Committed{ID: 2, Flags: CommittedAlready, Size: 1, Hash: h}},
		{"committed empty file", &Committed{ID: 7, Size: 0, Hash: HashBytes(nil)}},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, tt := range sampleMessages() {
		t.Run(tt.name, func(t *testing.T) {
			p := EncodeMessage(tt.msg)
			got, err := DecodeMessage(tt.msg.frameType(), p)
			if err != nil {
				t.Fatalf("DecodeMessage: %v", err)
			}
			if !reflect.DeepEqual(got, tt.msg) {
				t.Fatalf("decoded %#v, want %#v", got, tt.msg)
			}
			if again := EncodeMessage(got); !bytes.Equal(again, p) {
				t.Fatalf("re-encoded %x, want %x", again, p)
			}

			// The same through a frame on a stream.
			var buf bytes.Buffer
			if err := WriteMessage(&buf, tt.msg); err != nil {
				t.Fatal(err)
			}
			if buf.Len() != FrameHeaderSize+len(p) {
				t.Fatalf("frame is %d bytes, want %d", buf.Len(), FrameHeaderSize+len(p))
			}
			if buf.Bytes()[0] != byte(tt.msg.frameType()) || binary.BigEndian.Uint32(buf.Bytes()[1:]) != uint32(len(p)) {
				t.Fatalf("frame header % x", buf.Bytes()[:FrameHeaderSize])
			}
			got, err = ReadMessage(&buf)
			if err != nil {
				t.Fatalf("ReadMessage: %v", err)
			}
			if !reflect.DeepEqual(got, tt.msg) {
				t.Fatalf("read %#v, want %#v", got, tt.msg)
			}
			if buf.Len() != 0 {
				t.Fatalf("%d bytes left after the frame", buf.Len())
			}
		})
	}
}

// TestMessageLayout pins the byte offsets documented in docs/PROTOCOL.md.
func TestMessageLayout(t *testing.T) {
	h := Hash{0: 0xaa, 31: 0xbb}
	id := []byte{0, 0, 0, 9}
	tests := []struct {
		name string
		msg  Message
		want []byte
	}{
		{"hello", &Hello{Major: 2, Minor: 2, ChunkSize: 0x00100000, Agent: "ab"},
			[]byte{'F', 'R', 'R', 'Y', 0, 2, 0, 2, 0, 0x10, 0, 0, 0, 2, 'a', 'b'}},
		{"hello with a token (2.2)", &Hello{Major: 2, Minor: 2, ChunkSize: 0x00100000, Agent: "ab", Token: "s"},
			[]byte{'F', 'R', 'R', 'Y', 0, 2, 0, 2, 0, 0x10, 0, 0, 0, 2, 'a', 'b', 0, 1, 's'}},
		{"offer", &Offer{ID: 9, Flags: 3, Size: 0x0102, Mode: 0o644, MtimeNs: 0x0304, Inode: 0x0506, PrefixID: h, Name: "x"},
			cat(id, []byte{0, 0, 0, 3}, []byte{0, 0, 0, 0, 0, 0, 1, 2}, []byte{0, 0, 1, 0xa4},
				[]byte{0, 0, 0, 0, 0, 0, 3, 4}, []byte{0, 0, 0, 0, 0, 0, 5, 6}, h[:], []byte{0, 1, 'x'})},
		{"accept", &Accept{ID: 9, Flags: 1, ChunkSize: 0x4000, DurableOffset: 0x4020, TailOffset: 0x4000, TailLength: 0x20, TailHash: h},
			cat(id, []byte{0, 0, 0, 1}, []byte{0, 0, 0x40, 0}, []byte{0, 0, 0, 0, 0, 0, 0x40, 0x20}, []byte{0, 0, 0, 0, 0, 0, 0x40, 0}, []byte{0, 0, 0, 0x20}, h[:])},
		{"accept with a window (2.3)", &Accept{ID: 9, ChunkSize: 0x4000, Window: 0x0180_0000},
			cat(id, []byte{0, 0, 0, 0}, []byte{0, 0, 0x40, 0}, make([]byte, 8), make([]byte, 8), []byte{0, 0, 0, 0}, make([]byte, HashSize),
				[]byte{0, 0, 0, 0, 0x01, 0x80, 0, 0})},
		{"refuse (session, as in every version)", &RemoteError{Code: CodeBusy, Message: "m"}, []byte{0, 7, 0, 1, 'm'}},
		{"refuse transfer", &RemoteError{ID: 9, Code: CodeBusy, Message: "m"}, cat(id, []byte{0, 7, 0, 1, 'm'})},
		{"ack", &Ack{ID: 9, DurableOffset: 0x0102}, cat(id, []byte{0, 0, 0, 0, 0, 0, 1, 2})},
		{"nack", &Nack{ID: 9, Offset: 0x0102}, cat(id, []byte{0, 0, 0, 0, 0, 0, 1, 2})},
		{"trailer", &Trailer{ID: 9, Hash: h}, cat(id, h[:])},
		{"committed", &Committed{ID: 9, Flags: 1, Size: 5, Hash: h}, cat(id, []byte{0, 0, 0, 1}, []byte{0, 0, 0, 0, 0, 0, 0, 5}, h[:])},
		{"data", &Data{ID: 9, Offset: 0x0102}, cat(id, []byte{0, 0, 0, 0, 0, 0, 1, 2})},
		{"zero chunk (2.2)", &ZeroChunk{Offset: 0x0102, Length: 0x4000, Hash: h},
			cat([]byte{0, 0, 0, 0, 0, 0, 1, 2}, []byte{0, 0, 0x40, 0}, h[:])},
		{"entry (2.2)", &Entry{ID: 9, Kind: EntrySymlink, Mode: 0o755, MtimeNs: 0x0304, Name: "l", Target: "t"},
			cat(id, []byte{2}, []byte{0, 0, 1, 0xed}, []byte{0, 0, 0, 0, 0, 0, 3, 4}, []byte{0, 1, 'l'}, []byte{0, 1, 't'})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EncodeMessage(tt.msg); !bytes.Equal(got, tt.want) {
				t.Fatalf("payload\n got % x\nwant % x", got, tt.want)
			}
		})
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// put returns a copy of p with v written big-endian at off (len 2, 4 or 8
// by v's type).
func put(p []byte, off int, v any) []byte {
	q := append([]byte(nil), p...)
	switch v := v.(type) {
	case uint16:
		binary.BigEndian.PutUint16(q[off:], v)
	case uint32:
		binary.BigEndian.PutUint32(q[off:], v)
	case uint64:
		binary.BigEndian.PutUint64(q[off:], v)
	default:
		panic("bug: put of " + reflect.TypeOf(v).String())
	}
	return q
}

func TestDecodeMessageRejects(t *testing.T) {
	hello := EncodeMessage(&Hello{Major: ProtocolMajor, ChunkSize: DefaultChunkSize, Agent: "a"})
	offer := EncodeMessage(&Offer{ID: 1, Size: 10, Mode: 0o644, Name: "f"})
	accept := EncodeMessage(&Accept{ID: 1, ChunkSize: MinChunkSize, DurableOffset: MinChunkSize + 40, TailOffset: MinChunkSize, TailLength: 40})
	refuse := EncodeMessage(&RemoteError{Code: CodeExists, Message: "m"})
	type tc struct {
		name    string
		typ     FrameType
		payload []byte
		want    error  // ErrProtocol or ErrVersion
		msg     string // substring of the error
	}
	tests := []tc{
		// Hello.
		{"hello bad magic", FrameHello, cat([]byte("HTTP"), hello[4:]), ErrProtocol, "bad magic"},
		{"hello TLS record", FrameHello, []byte{0x16, 0x03, 0x01, 0x02, 0, 1, 0, 0, 0, 0x10, 0, 0, 0, 0}, ErrProtocol, "not a ferry peer"},
		{"hello major 1", FrameHello, put(hello, 4, uint16(1)), ErrVersion, "v1.0"},
		{"hello major 1 with a 4 KiB chunk", FrameHello, put(put(hello, 4, uint16(1)), 8, uint32(4096)), ErrVersion, "v1.0"},
		{"hello major 3", FrameHello, put(hello, 4, uint16(3)), ErrVersion, "v3.0"},
		{"hello major 0", FrameHello, put(hello, 4, uint16(0)), ErrVersion, "v0.0"},
		{"hello major 1 with another layout", FrameHello, cat(hello[:4], []byte{0, 1, 0, 5}), ErrVersion, "v1.5"},
		{"hello major 3 with another layout", FrameHello, cat(hello[:4], []byte{0, 3, 0, 5}), ErrVersion, "v3.5"},
		{"hello major 3 with a longer layout", FrameHello, cat(put(hello, 4, uint16(3)), []byte("new fields")), ErrVersion, "v3.0"},
		{"hello chunk size below min", FrameHello, put(hello, 8, uint32(MinChunkSize/2)), ErrProtocol, "chunk size"},
		{"hello chunk size not a power of two", FrameHello, put(hello, 8, uint32(MinChunkSize+4096)), ErrProtocol, "not a power of two"},
		{"hello chunk size zero", FrameHello, put(hello, 8, uint32(0)), ErrProtocol, "chunk size"},
		{"hello chunk size above max", FrameHello, put(hello, 8, uint32(2*MaxChunkSize)), ErrProtocol, "chunk size"},
		{"hello agent too long", FrameHello, cat(hello[:12], []byte{1, 1}, bytes.Repeat([]byte("a"), maxAgent+1)), ErrProtocol, "above 256"},
		{"hello agent invalid UTF-8", FrameHello, cat(hello[:12], []byte{0, 2, 0xc3, 0x28}), ErrProtocol, "UTF-8"},
		{"hello agent length beyond payload", FrameHello, cat(hello[:12], []byte{0, 9, 'a'}), ErrProtocol, "too short"},
		{"hello short", FrameHello, hello[:11], ErrProtocol, "too short"},
		{"hello magic only", FrameHello, hello[:4], ErrProtocol, "too short"},
		{"hello trailing byte", FrameHello, cat(hello, []byte{0, 1, 't', 0}), ErrProtocol, "trailing"},
		{"hello token cut short", FrameHello, cat(hello, []byte{0}), ErrProtocol, "too short"},
		{"hello empty token", FrameHello, cat(hello, []byte{0, 0}), ErrProtocol, "empty token"},
		{"hello token too long", FrameHello, cat(hello, []byte{1, 1}, make([]byte, 257)), ErrProtocol, "above 256"},
		// Offer.
		{"offer size 2^62+1", FrameOffer, put(offer, 8, uint64(MaxFileSize+1)), ErrProtocol, "above"},
		{"offer size 2^63-1", FrameOffer, put(offer, 8, uint64(1<<63-1)), ErrProtocol, "above"},
		{"offer negative size", FrameOffer, put(offer, 8, uint64(1<<63)), ErrProtocol, "above"},
		{"offer mode setuid ok but 0o10000 not", FrameOffer, put(offer, 16, uint32(0o10000)), ErrProtocol, "mode"},
		{"offer mode type bits", FrameOffer, put(offer, 16, uint32(0o40755)), ErrProtocol, "mode"},
		{"offer name too long", FrameOffer, cat(offer[:68], []byte{0x10, 0x01}, bytes.Repeat([]byte("n"), MaxNameLen+1)), ErrProtocol, "above 4096"},
		{"offer name length beyond payload", FrameOffer, cat(offer[:68], []byte{0, 5, 'f'}), ErrProtocol, "too short"},
		{"offer short", FrameOffer, offer[:67], ErrProtocol, "too short"},
		{"offer transfer ID 0", FrameOffer, put(offer, 0, uint32(0)), ErrProtocol, "transfer ID 0"},
		{"offer trailing byte", FrameOffer, cat(offer, []byte{0}), ErrProtocol, "trailing"},
		// Accept.
		{"accept tail does not end at durable offset", FrameAccept, put(accept, 20, uint64(50)), ErrProtocol, "does not end"},
		{"accept tail past durable offset", FrameAccept, put(accept, 28, uint32(41)), ErrProtocol, "does not end"},
		{"accept tail longer than the chunk size", FrameAccept,
			put(put(put(accept, 12, uint64(4*MinChunkSize)), 20, uint64(2*MinChunkSize)), 28, uint32(2*MinChunkSize)), ErrProtocol, "not one chunk"},
		{"accept tail not at a chunk boundary", FrameAccept,
			put(put(accept, 20, uint64(MinChunkSize+20)), 28, uint32(20)), ErrProtocol, "not one chunk"},
		{"accept empty tail at a durable offset", FrameAccept,
			put(put(accept, 12, uint64(MinChunkSize)), 28, uint32(0)), ErrProtocol, "empty tail"},
		{"accept chunk size not a power of two", FrameAccept, put(accept, 8, uint32(3*MinChunkSize)), ErrProtocol, "not a power of two"},
		{"accept chunk size zero", FrameAccept, put(accept, 8, uint32(0)), ErrProtocol, "chunk size"},
		{"accept durable offset above max", FrameAccept, put(accept, 12, uint64(MaxFileSize+1)), ErrProtocol, "above"},
		{"accept tail offset above max", FrameAccept, put(accept, 20, uint64(1<<63)), ErrProtocol, "above"},
		{"accept short", FrameAccept, accept[:63], ErrProtocol, "too short"},
		{"accept window cut short", FrameAccept, cat(accept, []byte{0}), ErrProtocol, "too short"},
		{"accept window below the chunk size", FrameAccept, cat(accept, []byte{0, 0, 0, 0, 0, 0, 0x3f, 0xff}), ErrProtocol, "below the chunk size"},
		{"accept window of zero", FrameAccept, cat(accept, make([]byte, 8)), ErrProtocol, "below the chunk size"},
		{"accept window above max", FrameAccept, cat(accept, []byte{0x80, 0, 0, 0, 0, 0, 0, 0}), ErrProtocol, "above"},
		{"accept trailing byte", FrameAccept, cat(accept, []byte{0, 0, 0, 0, 0, 0x80, 0, 0}, []byte{0}), ErrProtocol, "trailing"},
		// Refuse.
		{"refuse message too long", FrameRefuse, cat([]byte{0, 1, 0x04, 0x01}, bytes.Repeat([]byte("m"), maxMessage+1)), ErrProtocol, "above 1024"},
		{"refuse message invalid UTF-8", FrameRefuse, []byte{0, 1, 0, 3, 'a', 0xff, 'b'}, ErrProtocol, "UTF-8"},
		{"refuse message cut mid-rune", FrameRefuse, []byte{0, 1, 0, 1, 0xc3}, ErrProtocol, "UTF-8"},
		{"refuse short", FrameRefuse, []byte{0, 1, 0}, ErrProtocol, "too short"},
		{"refuse trailing byte", FrameRefuse, cat(refuse, []byte{0}), ErrProtocol, "trailing"},
		// Ack, Nack, Trailer, Committed.
		{"ack above max", FrameAck, put(put(make([]byte, 12), 0, uint32(1)), 4, uint64(MaxFileSize+1)), ErrProtocol, "above"},
		{"ack transfer ID 0", FrameAck, make([]byte, 12), ErrProtocol, "transfer ID 0"},
		{"ack short", FrameAck, put(make([]byte, 11), 0, uint32(1)), ErrProtocol, "too short"},
		{"ack trailing byte", FrameAck, put(make([]byte, 13), 0, uint32(1)), ErrProtocol, "trailing"},
		{"nack negative", FrameNack, put(put(make([]byte, 12), 0, uint32(1)), 4, uint64(1<<63)), ErrProtocol, "above"},
		{"nack short", FrameNack, nil, ErrProtocol, "too short"},
		{"trailer short", FrameTrailer, put(make([]byte, 35), 0, uint32(1)), ErrProtocol, "too short"},
		{"trailer trailing byte", FrameTrailer, put(make([]byte, 37), 0, uint32(1)), ErrProtocol, "trailing"},
		{"committed size above max", FrameCommitted, put(put(make([]byte, 48), 0, uint32(1)), 8, uint64(MaxFileSize+1)), ErrProtocol, "above"},
		{"committed short", FrameCommitted, put(make([]byte, 47), 0, uint32(1)), ErrProtocol, "too short"},
		// Frame types that are not control frames.
		{"chunk is not a control frame", FrameChunk, make([]byte, ChunkHeaderSize), ErrProtocol, "not a control frame"},
		{"type 0", 0, nil, ErrProtocol, "not a control frame"},
		{"type 14", 14, nil, ErrProtocol, "not a control frame"},
		{"zero chunk empty", FrameZeroChunk, make([]byte, 44), ErrProtocol, "zero chunk of 0 bytes"},
		{"zero chunk too long", FrameZeroChunk, cat(make([]byte, 8), []byte{2, 0, 0, 0}, make([]byte, 32)), ErrProtocol, "zero chunk of"},
		{"zero chunk past the end", FrameZeroChunk, cat([]byte{0x40, 0, 0, 0, 0, 0, 0, 0}, []byte{0, 0, 0, 1}, make([]byte, 32)), ErrProtocol, "ends above"},
		{"entry unknown kind", FrameEntry, cat([]byte{0, 0, 0, 1, 3}, make([]byte, 16)), ErrProtocol, "unknown entry kind"},
		{"entry dir with target", FrameEntry, cat([]byte{0, 0, 0, 1, 1}, make([]byte, 12), []byte{0, 1, 'd', 0, 1, 't'}), ErrProtocol, "link target"},
		{"entry mode bits", FrameEntry, cat([]byte{0, 0, 0, 1, 1, 0, 1, 0, 0}, make([]byte, 8), []byte{0, 1, 'd', 0, 0}), ErrProtocol, "outside 0o7777"},
		// Data, RefuseTransfer (protocol 2).
		{"data transfer ID 0", FrameData, make([]byte, 12), ErrProtocol, "transfer ID 0"},
		{"data offset above max", FrameData, put(put(make([]byte, 12), 0, uint32(1)), 4, uint64(MaxFileSize+1)), ErrProtocol, "above"},
		{"refuse transfer ID 0", FrameRefuseTransfer, cat([]byte{0, 0, 0, 0}, refuse), ErrProtocol, "transfer ID 0"},
	}
	for _, typ := range []FrameType{FrameHello, FrameOffer, FrameAccept, FrameRefuse, FrameAck, FrameNack, FrameTrailer, FrameCommitted, FrameData, FrameRefuseTransfer} {
		tests = append(tests, tc{typ.String() + " empty", typ, nil, ErrProtocol, "too short"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeMessage(tt.typ, tt.payload)
			if err == nil {
				t.Fatalf("decoded %#v, want an error", m)
			}
			if m != nil {
				t.Errorf("returned message %#v with error", m)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("error %q does not wrap %q", err, tt.want)
			}
			if errors.Is(tt.want, ErrVersion) && errors.Is(err, ErrProtocol) {
				t.Errorf("version error %q also wraps ErrProtocol", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
		})
	}
}

func TestDecodeMessageAccepts(t *testing.T) {
	hello := EncodeMessage(&Hello{Major: ProtocolMajor, ChunkSize: DefaultChunkSize})
	offer := EncodeMessage(&Offer{ID: 1, Size: 10, Name: "f"})
	tests := []struct {
		name    string
		typ     FrameType
		payload []byte
	}{
		{"hello of a newer minor version", FrameHello, put(hello, 6, uint16(9))},
		{"offer with unknown flags (added by minor versions)", FrameOffer, put(offer, 4, uint32(0xfffffffc))},
		{"offer with setuid, setgid and sticky bits", FrameOffer, put(offer, 16, uint32(0o7777))},
		{"offer with a negative mtime", FrameOffer, put(offer, 20, uint64(1<<63))},
		{"refuse with a code this side does not know", FrameRefuse, []byte{0xff, 0xff, 0, 0}},
		{"committed with unknown flags", FrameCommitted, put(EncodeMessage(&Committed{ID: 1}), 4, uint32(0xfffffffe))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeMessage(tt.typ, tt.payload)
			if err != nil {
				t.Fatal(err)
			}
			if got := EncodeMessage(m); !bytes.Equal(got, tt.payload) {
				t.Fatalf("re-encoded % x, want % x", got, tt.payload)
			}
		})
	}
}

// TestRefuseMessageTruncation checks that a refusal message longer than
// the wire allows is cut to a prefix that still decodes: at a rune
// boundary, so that a long non-ASCII name in a reason cannot turn a
// refusal into a protocol error on the sender.
func TestRefuseMessageTruncation(t *testing.T) {
	tests := []struct {
		name string
		msg  string
	}{
		{"ASCII", strings.Repeat("x", 3000)},
		{"two-byte runes across the limit", "a" + strings.Repeat("é", 1000)},
		{"three-byte runes across the limit", strings.Repeat("€", 1000)},
		{"four-byte runes across the limit", "ab" + strings.Repeat("🚢", 1000)},
		{"invalid UTF-8 in the reason", "name \xff\xfe is bad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeMessage(FrameRefuse, EncodeMessage(&RemoteError{Code: CodeBadName, Message: tt.msg}))
			if err != nil {
				t.Fatalf("refusal does not decode: %v", err)
			}
			got := m.(*RemoteError).Message
			if len(got) > maxMessage || !utf8.ValidString(got) {
				t.Fatalf("message of %d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
			}
			if utf8.ValidString(tt.msg) && !strings.HasPrefix(tt.msg, got) {
				t.Fatalf("message %q is not a prefix of the original", got)
			}
			if utf8.ValidString(tt.msg) && len(tt.msg) > maxMessage && len(got) < maxMessage-utf8.UTFMax {
				t.Fatalf("message cut to %d bytes, want close to %d", len(got), maxMessage)
			}
		})
	}
}

// TestSecretNotPrinted checks that a Hello's token never shows in fmt or
// slog output.
func TestSecretNotPrinted(t *testing.T) {
	h := &Hello{Token: "ferry_topsecret"}
	for _, s := range []string{fmt.Sprintf("%v", h), fmt.Sprintf("%+v", h), fmt.Sprintf("%#v", h), fmt.Sprint(h.Token)} {
		if strings.Contains(s, "topsecret") {
			t.Errorf("printed the secret: %s", s)
		}
	}
}
