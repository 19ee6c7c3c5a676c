// Package transfer is what both ends of ferry share: the wire protocol
// (frames, messages, version negotiation, refusal codes), chunking, BLAKE3
// hashing, destination-name validation, and the sender engine as a
// library: Sender (a window of files over one session, reconnect, resume,
// backoff, deadlines, retryable versus permanent errors) on top of one
// session's Handshake and Client.SendAll (Client.Send is a window of one).
// It knows no flags, terminals or daemon root.
//
// The full specification, with every payload layout, the session flow,
// resume and the daemon's durability order, is docs/PROTOCOL.md. In short:
//
// # Frames
//
// Every frame is a 5-byte header, then its payload. All integers are
// big-endian.
//
//	offset 0  u8   type     1 Hello, 2 Offer, 3 Accept, 4 Refuse, 5 Chunk,
//	                        6 Ack, 7 Nack, 8 Trailer, 9 Committed,
//	                        10 Data, 11 RefuseTransfer, 12 Entry (2.2),
//	                        13 ZeroChunk (2.2)
//	offset 1  u32  length   payload bytes after the header
//
// ReadFrameHeader checks length before any allocation: at most
// MaxControlPayload (64 KiB) for control frames, ChunkHeaderSize plus the
// negotiated chunk size for chunk frames. An unknown type, an oversized
// frame, a short or over-long field, trailing bytes, invalid UTF-8 in a
// string, or a size or offset above MaxFileSize (2^62) is an error
// wrapping ErrProtocol.
//
// A chunk payload is offset (u64, at 0), length (u32, at 8), BLAKE3 of the
// data (32 bytes, at 12), then the data (at 44). Strings are a u16 length
// and the bytes; hashes are 32-byte BLAKE3 digests, the value b3sum prints.
//
// # Versions
//
// A Hello opens the session in both directions: "FRRY", major (u16, 2),
// minor (u16), chunk size (u32, a power of two from MinChunkSize, 16 KiB,
// to MaxChunkSize, 16 MiB; anything else is refused), agent, and, from a
// sender of minor 2 that has one, its token (Hello.Token). The
// sender proposes a chunk size and the daemon answers with the size both
// use, never larger. Bytes 0-7 of a Hello are fixed across versions, and
// the major version is judged before the rest, so a peer of another major
// version always gets a Refuse with CodeVersion and a readable reason
// (ErrVersion on this side), never a hang or a garbled error. Minor
// versions only add flag bits, or fields a peer sends once the other side's
// Hello has announced them; the sender's token is the one exception, sent
// only when the user gave one, to a daemon that needs it.
//
// # Transfers (protocol 2)
//
// A session carries a window of transfers (DefaultWindowFiles files,
// DefaultWindowBytes of unsettled data), so a tree costs a few round
// trips, not two per file. Every message about a transfer starts with its
// ID (u32, chosen by the sender, increasing). Offer (name, size, mode,
// mtime and the source's identity) is answered by Accept (the transfer's
// chunk size, durable offset and the tail chunk's hash, which the sender
// checks against its file before sending more) or RefuseTransfer (a
// stable Code; see errors.go; the session goes on). A file of at most one
// chunk goes out with its Offer (OfferData) without waiting, in chunks of
// the session's size. Chunks travel in data runs, one transfer at a time:
// an OfferData offer or a Data frame, the chunks, then a Trailer with the
// whole-file BLAKE3; Acks report durable offsets and Nacks rejected chunks
// (the sender sends a new run from there). The daemon commits files in
// groups and answers Committed for each. Refuse (without ID) refuses the
// whole session.
//
// # Chunk hashes
//
// A chunk's hash is the BLAKE3 chaining value of its subtree at its offset
// (ChunkHash, ChunkCV; docs/CHUNK-HASH.md): chunk i covers [i·C, (i+1)·C),
// so a chunk replayed at another offset does not verify, and the
// whole-file hash, the one b3sum prints, is merged from the chunk values
// (MergeStack). lukechampine.com/blake3/guts computes chaining values;
// zeebo/blake3 computes plain digests (HashBytes, HashReader).
//
// Refusals arrive as *RemoteError, which matches its sentinel with
// errors.Is (errors.Is(err, ErrExists)); Retryable says whether a new
// session may succeed.
package transfer
