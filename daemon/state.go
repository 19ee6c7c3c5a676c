package daemon

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ferry-dev/ferry/transfer"
)

// State is a partial's state record: what the transfer is (its offer) and
// how far its data is durable. The record on disk is only ever replaced
// atomically, after the data it describes has been fsync'ed.
type State struct {
	Name     string // destination name, relative to the root
	Size     int64  // declared size in bytes
	Mode     uint32 // permission bits to apply at commit
	MtimeNs  int64  // modification time to apply at commit
	Inode    uint64 // source identity: inode on the sender
	PrefixID transfer.Hash

	// DurableOffset is the number of leading bytes verified, written and
	// fsync'ed. The tail chunk [TailOffset, DurableOffset) has BLAKE3
	// TailHash; TailLength is DurableOffset-TailOffset (0 when 0).
	DurableOffset int64
	TailOffset    int64
	TailHash      transfer.Hash
}

// stateMagic and stateVersion open every state record.
var stateMagic = [4]byte{'F', 'R', 'Y', 'S'}

const stateVersion = 1

// ErrBadState is returned by DecodeState for a record that is truncated,
// of another version, inconsistent, or whose checksum does not match.
var ErrBadState = errors.New("bad state record")

// sameSource reports whether st records the source an offer describes.
func (st *State) sameSource(o *transfer.Offer) bool {
	return st.Name == o.Name && st.Size == o.Size && st.MtimeNs == o.MtimeNs &&
		st.Inode == o.Inode && st.PrefixID == o.PrefixID
}

// EncodeState returns the record for st: magic, version, fields in
// big-endian order, name, then a BLAKE3 checksum of everything before it.
func EncodeState(st *State) []byte {
	b := make([]byte, 0, 160+len(st.Name))
	b = append(b, stateMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, stateVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(st.Size))
	b = binary.BigEndian.AppendUint32(b, st.Mode)
	b = binary.BigEndian.AppendUint64(b, uint64(st.MtimeNs))
	b = binary.BigEndian.AppendUint64(b, st.Inode)
	b = append(b, st.PrefixID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(st.DurableOffset))
	b = binary.BigEndian.AppendUint64(b, uint64(st.TailOffset))
	b = append(b, st.TailHash[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(st.Name)))
	b = append(b, st.Name...)
	sum := transfer.HashBytes(b)
	return append(b, sum[:]...)
}

// stateFixed is the size of a record without its name and checksum.
const stateFixed = 4 + 2 + 8 + 4 + 8 + 8 + 32 + 8 + 8 + 32 + 2

// DecodeState parses a record written by EncodeState. It returns an error
// wrapping ErrBadState unless the checksum matches and the fields are
// consistent (offsets within the size, the name valid).
func DecodeState(b []byte) (*State, error) {
	if len(b) < stateFixed+transfer.HashSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadState, len(b))
	}
	body, sum := b[:len(b)-transfer.HashSize], b[len(b)-transfer.HashSize:]
	if h := transfer.HashBytes(body); !bytes.Equal(h[:], sum) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrBadState)
	}
	if !bytes.Equal(body[:4], stateMagic[:]) || binary.BigEndian.Uint16(body[4:]) != stateVersion {
		return nil, fmt.Errorf("%w: magic or version", ErrBadState)
	}
	p := body[6:]
	u64 := func() uint64 { v := binary.BigEndian.Uint64(p); p = p[8:]; return v }
	st := &State{}
	st.Size = int64(u64())
	st.Mode = binary.BigEndian.Uint32(p)
	p = p[4:]
	st.MtimeNs = int64(u64())
	st.Inode = u64()
	p = p[copy(st.PrefixID[:], p):]
	st.DurableOffset = int64(u64())
	st.TailOffset = int64(u64())
	p = p[copy(st.TailHash[:], p):]
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if len(p) != n {
		return nil, fmt.Errorf("%w: name length %d, %d bytes left", ErrBadState, n, len(p))
	}
	st.Name = string(p)
	if err := st.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadState, err)
	}
	return st, nil
}

// check reports an inconsistent record.
func (st *State) check() error {
	switch {
	case st.Size < 0 || st.Size > transfer.MaxFileSize:
		return fmt.Errorf("size %d", st.Size)
	case st.DurableOffset < 0 || st.DurableOffset > st.Size:
		return fmt.Errorf("durable offset %d of size %d", st.DurableOffset, st.Size)
	case st.TailOffset < 0 || st.TailOffset > st.DurableOffset || st.DurableOffset-st.TailOffset > transfer.MaxChunkSize:
		return fmt.Errorf("tail offset %d, durable offset %d", st.TailOffset, st.DurableOffset)
	case st.DurableOffset > 0 && st.TailOffset == st.DurableOffset:
		return fmt.Errorf("empty tail at durable offset %d", st.DurableOffset)
	}
	return transfer.ValidateName(st.Name)
}
