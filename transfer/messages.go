package transfer

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// HashSize is the size in bytes of a BLAKE3 hash as ferry uses it.
const HashSize = 32

// Hash is a 32-byte BLAKE3 digest.
type Hash [HashSize]byte

// ProtocolMajor and ProtocolMinor are the protocol version this package
// speaks. Peers with a different major version refuse each other; minor
// versions only add optional fields, flags and messages. Minor 1 adds
// the quick check (OfferChecksum, CommittedUnchanged); minor 2 the
// sender's token in its Hello (Hello.Token), Entry (directories and
// symbolic links), ZeroChunk (holes of sparse files) and OfferSparse;
// minor 3 the durable window of an Accept (Accept.Window).
const (
	ProtocolMajor = 2
	ProtocolMinor = 3
)

// helloMagic opens every Hello payload, so that a stray client (HTTP, TLS)
// is told apart from an old ferry at once.
var helloMagic = [4]byte{'F', 'R', 'R', 'Y'}

// Message is a decoded control frame: *Hello, *Offer, *Accept, *RemoteError
// (a refusal of the session, or of one transfer when its ID is set), *Ack,
// *Nack, *Trailer, *Committed, *Data, *Entry or *ZeroChunk.
//
// Every message about one transfer carries the transfer's ID: a u32 the
// sender picks, increasing within a session, never 0.
type Message interface {
	frameType() FrameType
	appendPayload(b []byte) []byte
}

// Hello opens a session in both directions. The sender proposes a chunk
// size; the daemon answers with the chunk size both will use (never larger
// than proposed).
type Hello struct {
	Major, Minor uint16
	ChunkSize    uint32 // bytes; a power of two, MinChunkSize..MaxChunkSize
	Agent        string // software name and version, for logs; ≤ 256 bytes
	// Token is the sender's secret (protocol 2.2), ≤ MaxTokenLen bytes of
	// UTF-8; "" sends none. It is encoded only when not empty, so a
	// Hello without a token is the same bytes as in 2.1; the daemon's
	// Hello never carries one.
	Token Secret
}

// Secret is a credential. It prints as "[secret]" (fmt's %v and %#v,
// slog), so that logging a message that holds one never shows it.
type Secret string

// String returns "[secret]", never the secret.
func (Secret) String() string { return "[secret]" }

// GoString returns "[secret]" for %#v, never the secret.
func (Secret) GoString() string { return "[secret]" }

// MaxTokenLen is the longest Hello.Token in bytes.
const MaxTokenLen = 256

// Offer starts a transfer: the destination name, the source's metadata and
// its identity (size, mtime, inode, BLAKE3 of the first IdentityPrefix bytes).
type Offer struct {
	ID       uint32 // transfer ID, ≥ 1, increasing within a session (a restart repeats it)
	Flags    OfferFlags
	Size     int64  // bytes; 0..MaxFileSize
	Mode     uint32 // permission bits (0o777 mask)
	MtimeNs  int64  // modification time, nanoseconds since the Unix epoch
	Inode    uint64 // source inode, 0 if unknown
	PrefixID Hash   // BLAKE3 of the first min(Size, IdentityPrefix) bytes
	Name     string // slash-separated, relative to the daemon root; see ValidateName
}

// OfferFlags modify an Offer.
type OfferFlags uint32

const (
	// OfferRestart asks the daemon to discard any partial for this name and
	// start at offset 0: the sender found that the partial's tail chunk does
	// not match its file.
	OfferRestart OfferFlags = 1 << 0
	// OfferData says the file's data follows the offer at once, from
	// offset 0, without waiting for an Accept: the offer opens a data run
	// (chunks, then a Trailer). The daemon takes it from 0, discarding any
	// partial of the name, or refuses it and skips the run's frames. The
	// sender uses it for files of at most one chunk.
	OfferData OfferFlags = 1 << 1
	// OfferChecksum asks the daemon to tell an already committed file of
	// the offered size and mtime by its BLAKE3 rather than by size and
	// mtime alone: it answers AcceptCommitted and compares the Trailer's
	// hash (see CommittedUnchanged for the default, rsync's quick check).
	OfferChecksum OfferFlags = 1 << 2
	// OfferUpdate asks the daemon to replace a committed file of other
	// content under the name instead of refusing it (CodeExists): the
	// file is received into a partial as any other, and at its commit
	// renamed over the old one, which stays until the new one is durable.
	// Protocol 2.1; a 2.0 daemon ignores it and refuses.
	OfferUpdate OfferFlags = 1 << 3
	// OfferSparse says the source has holes (it allocates fewer blocks
	// than its size needs): some chunks may come as ZeroChunks, so the
	// daemon does not reserve the file's blocks ahead (Protocol 2.2).
	OfferSparse OfferFlags = 1 << 4
)

// IdentityPrefix is how many leading bytes of a file enter Offer.PrefixID.
// Fixed (not the chunk size) so that identity survives a change of chunk size.
const IdentityPrefix = 64 << 10

// MaxFileSize is the largest size an Offer may declare: 2^62 bytes, so that
// offset arithmetic never overflows int64.
const MaxFileSize = 1 << 62

// Accept answers an Offer. DurableOffset is where the sender continues; the
// tail chunk [TailOffset, TailOffset+TailLength) ends at DurableOffset and
// TailHash is its chunk hash (ChunkHash: the chaining value of its subtree,
// the root hash for a file of one chunk), which the sender checks against
// its own file before sending more. TailLength is 0 when DurableOffset is
// 0. The tail is one chunk of ChunkSize: TailOffset is a multiple of it.
type Accept struct {
	ID    uint32 // the offer's transfer ID
	Flags AcceptFlags
	// ChunkSize is the chunk size in bytes of this transfer: the
	// session's for a new partial, the partial's own (never above the
	// session's) for a resumed one, since its merge stack is built from
	// chunks of that size. A power of two (CheckChunkSize).
	ChunkSize     uint32
	DurableOffset int64
	TailOffset    int64
	TailLength    uint32
	TailHash      Hash
	// Window (protocol 2.3) is the most chunk data bytes, counted from
	// the last durable offset the daemon acknowledged, that the sender
	// may have sent: a daemon whose store makes data durable only in
	// whole parts gives its part size, so that a daemon that dies makes
	// the sender resend at most one part. 0 (the field absent, as a
	// daemon sends it to a sender of minor < 3) is no limit. Otherwise at
	// least ChunkSize, at most MaxFileSize.
	Window int64
}

// AcceptFlags describe an Accept.
type AcceptFlags uint32

const (
	// AcceptRestarted says a partial existed for this name but belonged to
	// different content, so the daemon discarded it.
	AcceptRestarted AcceptFlags = 1 << 0
	// AcceptCommitted says a file of the offered size and mtime is already
	// committed under the name. DurableOffset is its size; the sender
	// checks the tail chunk and sends its Trailer, and the daemon answers
	// Committed if the whole-file hashes match, or refuses as exists.
	AcceptCommitted AcceptFlags = 1 << 1
)

// Ack reports the daemon's durable offset for the current transfer.
type Ack struct {
	ID            uint32
	DurableOffset int64
}

// Nack says the chunk at Offset failed verification and was not written;
// the daemon ignores chunks and trailers until the chunk at Offset arrives.
type Nack struct {
	ID     uint32
	Offset int64
}

// Trailer ends a transfer's data with the sender's whole-file BLAKE3.
type Trailer struct {
	ID   uint32
	Hash Hash
}

// Committed tells the sender the file is verified, fsync'ed and renamed
// into place under its final name.
type Committed struct {
	ID    uint32
	Flags CommittedFlags
	Size  int64
	Hash  Hash
}

// CommittedFlags describe a Committed.
type CommittedFlags uint32

const (
	// CommittedAlready says the file was already committed under the name
	// with this content; nothing was written.
	CommittedAlready CommittedFlags = 1 << 0
	// CommittedUnchanged is set, with CommittedAlready, in the answer to
	// an Offer without OfferChecksum from a sender of minor version 1 or
	// later, sent at once (no Accept, before any Trailer): the name holds
	// a committed file of the offered size and mtime (rsync's quick
	// check), which the daemon did not read. Hash is all zeros; the
	// sender does not hash its file.
	CommittedUnchanged CommittedFlags = 1 << 1
)

// Data opens a data run of an accepted transfer: the chunks that follow,
// up to the Trailer with the same ID, belong to transfer ID and start at
// Offset (its durable offset, or the offset of a rejected chunk).
type Data struct {
	ID     uint32
	Offset int64
}

// Entry asks the daemon for a tree entry that is not a regular file's
// data (protocol 2.2): a directory (created if missing, then given Mode
// and the mtime) or a symbolic link (created with Target, never
// followed). The sender sends a directory's Entry after every file and
// entry below it has settled, so that its mtime is not changed again by
// their creation. The daemon answers Committed (size 0, hash all zeros)
// or RefuseTransfer with the same ID.
type Entry struct {
	ID      uint32 // ≥ 1, from the session's transfer IDs
	Kind    EntryKind
	Mode    uint32 // permission bits (0o7777 mask); ignored for a symlink
	MtimeNs int64  // nanoseconds since the Unix epoch; ignored for a symlink
	Name    string // as an Offer's name; see ValidateName
	Target  string // symlink only: the link's text, ≤ MaxNameLen bytes, relative, staying inside the sent tree
}

// EntryKind says what an Entry makes.
type EntryKind uint8

const (
	// EntryDir is a directory: created if missing, then chmod and mtime.
	EntryDir EntryKind = 1
	// EntrySymlink is a symbolic link holding Target.
	EntrySymlink EntryKind = 2
)

// ZeroChunk stands for the chunk [Offset, Offset+Length) of the current
// data run when all its bytes are zero: a hole of a sparse file, found by
// the sender with SEEK_DATA (protocol 2.2). Hash is the chunk hash of
// Length zero bytes at Offset (ChunkHash), which the daemon computes and
// compares as for a Chunk; the daemon does not write the bytes (the data
// file is extended, so the hole stays a hole). Length follows a Chunk's
// rules (the transfer's chunk size, shorter only at the end of the file).
type ZeroChunk struct {
	Offset int64
	Length uint32
	Hash   Hash
}

// Maximum string lengths in bytes, checked by the decoder.
const (
	maxAgent   = 256
	MaxNameLen = 4096
	maxMessage = 1024
)

func (*Hello) frameType() FrameType  { return FrameHello }
func (*Offer) frameType() FrameType  { return FrameOffer }
func (*Accept) frameType() FrameType { return FrameAccept }
func (*Data) frameType() FrameType   { return FrameData }

// A RemoteError with an ID refuses one transfer (FrameRefuseTransfer); one
// without refuses the session (FrameRefuse, whose layout every protocol
// version shares).
func (e *RemoteError) frameType() FrameType {
	if e.ID != 0 {
		return FrameRefuseTransfer
	}
	return FrameRefuse
}
func (*Ack) frameType() FrameType       { return FrameAck }
func (*Nack) frameType() FrameType      { return FrameNack }
func (*Trailer) frameType() FrameType   { return FrameTrailer }
func (*Committed) frameType() FrameType { return FrameCommitted }
func (*Entry) frameType() FrameType     { return FrameEntry }
func (*ZeroChunk) frameType() FrameType { return FrameZeroChunk }

func (m *ZeroChunk) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(m.Offset))
	b = binary.BigEndian.AppendUint32(b, m.Length)
	return append(b, m.Hash[:]...)
}

func (m *Entry) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.ID)
	b = append(b, byte(m.Kind))
	b = binary.BigEndian.AppendUint32(b, m.Mode)
	b = binary.BigEndian.AppendUint64(b, uint64(m.MtimeNs))
	b = appendString(b, m.Name)
	return appendString(b, m.Target)
}

func (m *Hello) appendPayload(b []byte) []byte {
	b = append(b, helloMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, m.Major)
	b = binary.BigEndian.AppendUint16(b, m.Minor)
	b = binary.BigEndian.AppendUint32(b, m.ChunkSize)
	b = appendString(b, m.Agent)
	if m.Token != "" {
		b = appendString(b, string(m.Token))
	}
	return b
}

func (m *Offer) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.ID)
	b = binary.BigEndian.AppendUint32(b, uint32(m.Flags))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	b = binary.BigEndian.AppendUint32(b, m.Mode)
	b = binary.BigEndian.AppendUint64(b, uint64(m.MtimeNs))
	b = binary.BigEndian.AppendUint64(b, m.Inode)
	b = append(b, m.PrefixID[:]...)
	return appendString(b, m.Name)
}

func (m *Accept) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.ID)
	b = binary.BigEndian.AppendUint32(b, uint32(m.Flags))
	b = binary.BigEndian.AppendUint32(b, m.ChunkSize)
	b = binary.BigEndian.AppendUint64(b, uint64(m.DurableOffset))
	b = binary.BigEndian.AppendUint64(b, uint64(m.TailOffset))
	b = binary.BigEndian.AppendUint32(b, m.TailLength)
	b = append(b, m.TailHash[:]...)
	if m.Window != 0 {
		b = binary.BigEndian.AppendUint64(b, uint64(m.Window))
	}
	return b
}

func (e *RemoteError) appendPayload(b []byte) []byte {
	if e.ID != 0 {
		b = binary.BigEndian.AppendUint32(b, e.ID)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(e.Code))
	// The decoder insists on valid UTF-8 of at most maxMessage bytes, so
	// cut at a rune boundary: a refusal must never turn into a protocol
	// error on the peer.
	msg := strings.ToValidUTF8(e.Message, "\uFFFD")
	if len(msg) > maxMessage {
		n := maxMessage
		for n > 0 && !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n]
	}
	return appendString(b, msg)
}

func (m *Ack) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.ID)
	return binary.BigEndian.AppendUint64(b, uint64(m.DurableOffset))
}

func (m *Nack) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.ID)
	return binary.BigEndian.AppendUint64(b, uint64(m.Offset))
}

func (m *Trailer) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.ID)
	return append(b, m.Hash[:]...)
}

func (m *Data) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.ID)
	return binary.BigEndian.AppendUint64(b, uint64(m.Offset))
}

func (m *Committed) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, m.ID)
	b = binary.BigEndian.AppendUint32(b, uint32(m.Flags))
	b = binary.BigEndian.AppendUint64(b, uint64(m.Size))
	return append(b, m.Hash[:]...)
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// EncodeMessage returns m's frame payload (without the frame header).
func EncodeMessage(m Message) []byte { return m.appendPayload(nil) }

// DecodeMessage decodes the payload p of a control frame of type t. Every
// field is checked: lengths against their bounds, offsets and sizes for
// sign and range, strings for valid UTF-8, and no trailing bytes. Errors
// wrap ErrProtocol, or ErrVersion for a Hello of another major version.
func DecodeMessage(t FrameType, p []byte) (Message, error) {
	d := decoder{p: p}
	var m Message
	switch t {
	case FrameHello:
		m = d.hello()
	case FrameOffer:
		m = d.offer()
	case FrameAccept:
		m = d.accept()
	case FrameRefuse:
		m = &RemoteError{Code: Code(d.u16()), Message: d.str(maxMessage)}
	case FrameRefuseTransfer:
		m = &RemoteError{ID: d.id(), Code: Code(d.u16()), Message: d.str(maxMessage)}
	case FrameAck:
		m = &Ack{ID: d.id(), DurableOffset: d.offset()}
	case FrameNack:
		m = &Nack{ID: d.id(), Offset: d.offset()}
	case FrameTrailer:
		m = &Trailer{ID: d.id(), Hash: d.hash()}
	case FrameCommitted:
		m = &Committed{ID: d.id(), Flags: CommittedFlags(d.u32()), Size: d.offset(), Hash: d.hash()}
	case FrameData:
		m = &Data{ID: d.id(), Offset: d.offset()}
	case FrameEntry:
		m = d.entry()
	case FrameZeroChunk:
		z := &ZeroChunk{Offset: d.offset(), Length: d.u32(), Hash: d.hash()}
		switch {
		case d.err != nil:
		case z.Length == 0 || z.Length > MaxChunkSize:
			d.fail("zero chunk of %d bytes", z.Length)
		case z.Offset+int64(z.Length) > MaxFileSize:
			d.fail("zero chunk ends above %d", int64(MaxFileSize))
		}
		m = z
	default:
		return nil, fmt.Errorf("%w: %v is not a control frame", ErrProtocol, t)
	}
	if d.err == nil && len(d.p) != 0 {
		d.fail("%d trailing bytes", len(d.p))
	}
	if d.err != nil {
		return nil, fmt.Errorf("decoding %v: %w", t, d.err)
	}
	return m, nil
}

func (d *decoder) hello() *Hello {
	var magic [4]byte
	copy(magic[:], d.take(4))
	if d.err == nil && magic != helloMagic {
		d.fail("bad magic %q: not a ferry peer", magic[:])
		return nil
	}
	m := &Hello{Major: d.u16(), Minor: d.u16()}
	// The version is judged before the rest: another major version may lay
	// out the rest of its Hello differently, and must still be told why.
	if d.err == nil && m.Major != ProtocolMajor {
		d.err = fmt.Errorf("%w: peer speaks v%d.%d, this side v%d", ErrVersion, m.Major, m.Minor, ProtocolMajor)
		return m
	}
	m.ChunkSize = d.u32()
	m.Agent = d.str(maxAgent)
	if d.err == nil && len(d.p) > 0 {
		m.Token = Secret(d.str(MaxTokenLen))
		if d.err == nil && m.Token == "" {
			d.fail("empty token")
		}
	}
	if d.err == nil {
		if err := CheckChunkSize(int(m.ChunkSize)); err != nil {
			d.fail("%v", err)
		}
	}
	return m
}

func (d *decoder) offer() *Offer {
	m := &Offer{
		ID:       d.id(),
		Flags:    OfferFlags(d.u32()),
		Size:     d.offset(),
		Mode:     d.u32(),
		MtimeNs:  int64(d.u64()),
		Inode:    d.u64(),
		PrefixID: d.hash(),
		Name:     d.raw(MaxNameLen), // ValidateName judges the bytes
	}
	if d.err == nil && m.Mode&^0o7777 != 0 {
		d.fail("mode %#o has bits outside 0o7777", m.Mode)
	}
	return m
}

func (d *decoder) entry() *Entry {
	m := &Entry{
		ID:      d.id(),
		Kind:    EntryKind(d.u8()),
		Mode:    d.u32(),
		MtimeNs: int64(d.u64()),
		Name:    d.raw(MaxNameLen), // ValidateName judges the bytes
		Target:  d.raw(MaxNameLen), // judged by the daemon, as the name
	}
	switch {
	case d.err != nil:
	case m.Kind != EntryDir && m.Kind != EntrySymlink:
		d.fail("unknown entry kind %d", m.Kind)
	case m.Mode&^0o7777 != 0:
		d.fail("mode %#o has bits outside 0o7777", m.Mode)
	case m.Kind == EntryDir && m.Target != "":
		d.fail("directory entry with a link target")
	}
	return m
}

func (d *decoder) accept() *Accept {
	m := &Accept{
		ID:            d.id(),
		Flags:         AcceptFlags(d.u32()),
		ChunkSize:     d.u32(),
		DurableOffset: d.offset(),
		TailOffset:    d.offset(),
		TailLength:    d.u32(),
		TailHash:      d.hash(),
	}
	if d.err == nil && len(d.p) > 0 {
		// The durable window of protocol 2.3: present only when set.
		m.Window = d.offset()
		if d.err == nil && m.Window < int64(m.ChunkSize) {
			d.fail("window of %d bytes, below the chunk size %d", m.Window, m.ChunkSize)
		}
	}
	if d.err == nil && m.TailOffset+int64(m.TailLength) != m.DurableOffset {
		d.fail("tail [%d,+%d) does not end at durable offset %d", m.TailOffset, m.TailLength, m.DurableOffset)
	}
	if d.err == nil {
		if err := CheckChunkSize(int(m.ChunkSize)); err != nil {
			d.fail("%v", err)
		}
	}
	if d.err == nil && (m.TailLength > m.ChunkSize || m.TailOffset%int64(m.ChunkSize) != 0) {
		d.fail("tail [%d,+%d) is not one chunk of %d bytes", m.TailOffset, m.TailLength, m.ChunkSize)
	}
	if d.err == nil && m.DurableOffset > 0 && m.TailLength == 0 {
		d.fail("empty tail at durable offset %d", m.DurableOffset)
	}
	return m
}

// decoder reads big-endian fields from p, remembering the first error.
type decoder struct {
	p   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.p) < n {
		d.fail("payload too short")
		return nil
	}
	b := d.p[:n]
	d.p = d.p[n:]
	return b
}

func (d *decoder) u8() uint8 {
	b := d.take(1)
	if d.err != nil {
		return 0
	}
	return b[0]
}

func (d *decoder) u16() uint16 {
	if b := d.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

// id reads a transfer ID, which is never 0.
func (d *decoder) id() uint32 {
	v := d.u32()
	if d.err == nil && v == 0 {
		d.fail("transfer ID 0")
	}
	return v
}

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// offset reads a size or offset: a uint64 that must be ≤ MaxFileSize.
func (d *decoder) offset() int64 {
	v := d.u64()
	if v > MaxFileSize {
		d.fail("offset or size %d above %d", v, uint64(MaxFileSize))
		return 0
	}
	return int64(v)
}

func (d *decoder) hash() (h Hash) {
	copy(h[:], d.take(HashSize))
	return h
}

// str reads a length-prefixed UTF-8 string of at most limit bytes.
func (d *decoder) str(limit int) string {
	s := d.raw(limit)
	if d.err == nil && !utf8.ValidString(s) {
		d.fail("string is not valid UTF-8")
		return ""
	}
	return s
}

// raw reads a length-prefixed byte string of at most limit bytes.
func (d *decoder) raw(limit int) string {
	n := int(d.u16())
	if d.err == nil && n > limit {
		d.fail("string of %d bytes above %d", n, limit)
		return ""
	}
	return string(d.take(n))
}
