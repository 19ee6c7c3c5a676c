package daemon_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// FuzzDecodeState feeds DecodeState arbitrary records: as they are, and
// with a valid checksum appended so that the fuzzer gets past the checksum
// to the field checks, merge stack included. Property: no panic; whatever
// decodes is consistent (its merge stack at its durable offset, its tail
// chunk inside the file) and re-encodes to the same bytes.
func FuzzDecodeState(f *testing.F) {
	for _, tt := range sampleStates() {
		b := mustEncode(f, &tt.st)
		f.Add(b)
		f.Add(b[:len(b)-transfer.HashSize])
	}
	f.Add([]byte("FRYS"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		checkState(t, b)
		sum := transfer.HashBytes(b)
		checkState(t, append(append([]byte(nil), b...), sum[:]...))
	})
}

func checkState(t *testing.T, b []byte) {
	st, err := daemon.DecodeState(b)
	if err != nil {
		if !errors.Is(err, daemon.ErrBadState) {
			t.Fatalf("error %v does not wrap ErrBadState", err)
		}
		return
	}
	tail, _ := st.Tail()
	cs := int64(st.Stack.ChunkSize())
	if st.Size < 0 || st.Size > transfer.MaxFileSize || st.DurableOffset < 0 || st.DurableOffset > st.Size ||
		st.Stack.Offset() != st.DurableOffset || transfer.CheckChunkSize(int(cs)) != nil ||
		(st.DurableOffset < st.Size && st.DurableOffset%cs != 0) ||
		tail < 0 || tail%cs != 0 || (st.DurableOffset > 0) != (tail < st.DurableOffset) || st.DurableOffset-tail > cs ||
		st.Stack.Len() != transfer.MergeStackLen(st.DurableOffset, int(cs)) {
		t.Fatalf("accepted inconsistent state %+v", st)
	}
	if err := transfer.ValidateName(st.Name); err != nil {
		t.Fatalf("accepted state with name %v", err)
	}
	enc := mustEncode(t, st)
	if b[5] == 2 || b[5] == 3 {
		// A version 2 or 3 record re-encodes as the current version, which
		// decodes to the same state.
		again, err := daemon.DecodeState(enc)
		if err != nil || *again != *st {
			t.Fatalf("version 2 state %+v re-encodes to %+v, %v", st, again, err)
		}
		return
	}
	if !bytes.Equal(enc, b) {
		t.Fatalf("state %+v re-encodes to\n% x\nnot\n% x", st, enc, b)
	}
}
