package daemon

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ferry-dev/ferry/transfer"
)

// State is a partial's state record: what the transfer is (its offer) and
// how far its data is durable, with the merge stack of the durable chunks,
// so that a restarted daemon resumes without re-reading the prefix. The
// record on disk is only ever replaced atomically, after the data it
// describes has been fsync'ed.
type State struct {
	Name     string // destination name, relative to the root
	Size     int64  // declared size in bytes
	Mode     uint32 // permission bits to apply at commit
	MtimeNs  int64  // modification time to apply at commit
	Inode    uint64 // source identity: inode on the sender
	PrefixID transfer.Hash

	// DurableOffset is the number of leading bytes verified, written and
	// fsync'ed.
	DurableOffset int64
	// Stack is the merge stack of the chunks in [0, DurableOffset):
	// Stack.Offset() is DurableOffset and Stack.ChunkSize() the
	// partial's chunk size, which every later chunk of the transfer
	// keeps. Its last chaining value is the tail chunk's hash (Tail).
	Stack transfer.MergeStack
	// Remote is the address ("host:port") of the sender that last wrote
	// the partial, at most MaxRemoteLen bytes; "" when not recorded
	// (records of version 2).
	Remote string
	// Token is the name of the token that started the partial, at most
	// MaxTokenLen bytes; "" for an anonymous sender (and records of
	// versions 2 and 3). Only that token resumes it: the partial's key
	// is derived from it.
	Token string
}

// MaxTokenLen is the longest State.Token in bytes.
const MaxTokenLen = 255

// MaxRemoteLen is the longest State.Remote in bytes.
const MaxRemoteLen = 255

// Tail returns the tail chunk [offset, DurableOffset) and its chunk hash
// (transfer.ChunkHash), read off the merge stack; 0 and the zero hash at
// durable offset 0.
func (st *State) Tail() (offset int64, hash transfer.Hash) {
	cv, _ := st.Stack.Last()
	return st.Stack.LastOffset(), transfer.Hash(cv)
}

// stateMagic and stateVersion open every state record. Version 1 records
// (plain BLAKE3 tail hashes, no merge stack) no longer decode: their
// partials start over. Version 2 records, without the sender's address,
// still decode, with Remote "", and version 3 records, without the token's
// name, with Token "".
var stateMagic = [4]byte{'F', 'R', 'Y', 'S'}

const stateVersion = 4

// ErrBadState is returned by DecodeState for a record that is truncated,
// of another version, inconsistent, or whose checksum does not match.
var ErrBadState = errors.New("bad state record")

// SameSource reports whether st records the source an offer describes:
// same name, size, mtime, inode and prefix ID.
func (st *State) SameSource(o *transfer.Offer) bool {
	return st.Name == o.Name && st.Size == o.Size && st.MtimeNs == o.MtimeNs &&
		st.Inode == o.Inode && st.PrefixID == o.PrefixID
}

// EncodeState returns the record for st: magic, version, fields in
// big-endian order, name, merge stack, sender's address, then a BLAKE3
// checksum of everything before it (docs/PROTOCOL.md, "State record"). It
// returns an error for a State without a merge stack (a zero Stack) or
// with a Remote longer than MaxRemoteLen or a Token longer than
// MaxTokenLen.
func EncodeState(st *State) ([]byte, error) {
	if len(st.Remote) > MaxRemoteLen {
		return nil, fmt.Errorf("encoding state record: remote address of %d bytes", len(st.Remote))
	}
	if len(st.Token) > MaxTokenLen {
		return nil, fmt.Errorf("encoding state record: token name of %d bytes", len(st.Token))
	}
	b := make([]byte, 0, stateFixed+len(st.Name)+2+transfer.MaxMergeStackSize+1+len(st.Remote)+1+len(st.Token)+transfer.HashSize)
	b = append(b, stateMagic[:]...)
	b = binary.BigEndian.AppendUint16(b, stateVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(st.Size))
	b = binary.BigEndian.AppendUint32(b, st.Mode)
	b = binary.BigEndian.AppendUint64(b, uint64(st.MtimeNs))
	b = binary.BigEndian.AppendUint64(b, st.Inode)
	b = append(b, st.PrefixID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(st.DurableOffset))
	b = binary.BigEndian.AppendUint16(b, uint16(len(st.Name)))
	b = append(b, st.Name...)
	at := len(b)
	b = binary.BigEndian.AppendUint16(b, 0) // stack length, set below
	b, err := st.Stack.AppendBinary(b)
	if err != nil {
		return nil, fmt.Errorf("encoding state record: %w", err)
	}
	binary.BigEndian.PutUint16(b[at:], uint16(len(b)-at-2))
	b = append(b, byte(len(st.Remote)))
	b = append(b, st.Remote...)
	b = append(b, byte(len(st.Token)))
	b = append(b, st.Token...)
	sum := transfer.HashBytes(b)
	return append(b, sum[:]...), nil
}

// stateFixed is the size of a record without its name, merge stack and
// checksum: magic, version, size, mode, mtime, inode, prefix ID, durable
// offset, name length.
const stateFixed = 4 + 2 + 8 + 4 + 8 + 8 + 32 + 8 + 2

// MaxStateSize is the largest state record in bytes: the fixed fields, a
// name of MaxNameLen, the merge stack's length and its largest encoding,
// the sender's address of MaxRemoteLen and the token's name of
// MaxTokenLen with their lengths, and the checksum (6426).
const MaxStateSize = stateFixed + transfer.MaxNameLen + 2 + transfer.MaxMergeStackSize + 1 + MaxRemoteLen + 1 + MaxTokenLen + transfer.HashSize

// DecodeState parses a record written by EncodeState. It returns an error
// wrapping ErrBadState unless the checksum matches and the fields are
// consistent (offsets within the size, the merge stack at the durable
// offset, the name valid).
func DecodeState(b []byte) (*State, error) {
	if len(b) < stateFixed+2+transfer.HashSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadState, len(b))
	}
	body, sum := b[:len(b)-transfer.HashSize], b[len(b)-transfer.HashSize:]
	if h := transfer.HashBytes(body); !bytes.Equal(h[:], sum) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrBadState)
	}
	version := binary.BigEndian.Uint16(body[4:])
	if !bytes.Equal(body[:4], stateMagic[:]) || version < 2 || version > stateVersion {
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
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if len(p) < n+2 {
		return nil, fmt.Errorf("%w: name length %d, %d bytes left", ErrBadState, n, len(p))
	}
	st.Name = string(p[:n])
	p = p[n:]
	m := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if version == 2 && len(p) != m || version != 2 && len(p) < m+1 {
		return nil, fmt.Errorf("%w: merge stack length %d, %d bytes left", ErrBadState, m, len(p))
	}
	p, rest := p[:m], p[m:]
	if version != 2 {
		r := int(rest[0])
		if version == 3 && len(rest) != 1+r || version > 3 && len(rest) < 1+r+1 {
			return nil, fmt.Errorf("%w: merge stack length %d and remote address length %d, %d bytes left", ErrBadState, m, r, len(rest)+m)
		}
		st.Remote = string(rest[1 : 1+r])
		rest = rest[1+r:]
	}
	if version > 3 {
		k := int(rest[0])
		if len(rest) != 1+k {
			return nil, fmt.Errorf("%w: merge stack length %d and token name length %d, %d bytes left", ErrBadState, m, k, len(rest)-1)
		}
		st.Token = string(rest[1:])
	}
	if err := st.Stack.UnmarshalBinary(p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadState, err)
	}
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
	case st.Stack.Offset() != st.DurableOffset:
		return fmt.Errorf("merge stack at offset %d, durable offset %d", st.Stack.Offset(), st.DurableOffset)
	case st.DurableOffset < st.Size && st.DurableOffset%int64(st.Stack.ChunkSize()) != 0:
		return fmt.Errorf("durable offset %d inside a chunk of %d bytes", st.DurableOffset, st.Stack.ChunkSize())
	}
	return transfer.ValidateName(st.Name)
}
