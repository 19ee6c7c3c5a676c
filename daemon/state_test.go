package daemon_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

func sampleStates() []struct {
	name string
	st   daemon.State
} {
	h := transfer.HashBytes([]byte("prefix"))
	tail := transfer.HashBytes([]byte("tail"))
	return []struct {
		name string
		st   daemon.State
	}{
		{"fresh", daemon.State{Name: "f", Size: 100, Mode: 0o644, MtimeNs: 1, Inode: 2, PrefixID: h}},
		{"empty file", daemon.State{Name: "empty", Mode: 0o600}},
		{"mid-transfer", daemon.State{Name: "dir/f.bin", Size: 10 << 20, Mode: 0o640, MtimeNs: 1700000000123456789, Inode: 1<<64 - 1,
			PrefixID: h, DurableOffset: 3 << 20, TailOffset: 2 << 20, TailHash: tail}},
		{"complete, short tail", daemon.State{Name: "f", Size: 1000, DurableOffset: 1000, TailOffset: 999, TailHash: tail}},
		{"largest tail", daemon.State{Name: "f", Size: transfer.MaxFileSize, DurableOffset: transfer.MaxFileSize,
			TailOffset: transfer.MaxFileSize - transfer.MaxChunkSize, TailHash: tail}},
		{"negative mtime", daemon.State{Name: "old", Size: 1, MtimeNs: -5}},
		{"unicode name", daemon.State{Name: "Fähre/日本語 ⛴", Size: 1}},
		{"longest name", daemon.State{Name: strings.Repeat(strings.Repeat("n", 200)+"/", 20) + strings.Repeat("n", 76), Size: 1}},
	}
}

func TestStateRoundTrip(t *testing.T) {
	for _, tt := range sampleStates() {
		t.Run(tt.name, func(t *testing.T) {
			b := daemon.EncodeState(&tt.st)
			if len(b) != 116+len(tt.st.Name)+32 {
				t.Fatalf("record of %d bytes, want %d", len(b), 116+len(tt.st.Name)+32)
			}
			got, err := daemon.DecodeState(b)
			if err != nil {
				t.Fatalf("DecodeState: %v", err)
			}
			if *got != tt.st {
				t.Fatalf("decoded %+v, want %+v", got, tt.st)
			}
			if again := daemon.EncodeState(got); !bytes.Equal(again, b) {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

// TestStateLayout pins the byte offsets documented in docs/PROTOCOL.md.
func TestStateLayout(t *testing.T) {
	st := daemon.State{Name: "ab", Size: 0x0102, Mode: 0o755, MtimeNs: 0x0304, Inode: 0x0506,
		PrefixID: transfer.Hash{0: 0xa1, 31: 0xa2}, DurableOffset: 0x20, TailOffset: 0x10, TailHash: transfer.Hash{0: 0xb1, 31: 0xb2}}
	b := daemon.EncodeState(&st)
	be16, be32, be64 := binary.BigEndian.Uint16, binary.BigEndian.Uint32, binary.BigEndian.Uint64
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"magic", uint64(be32(b[0:])), uint64(be32([]byte("FRYS")))},
		{"version at 4", uint64(be16(b[4:])), 1},
		{"size at 6", be64(b[6:]), 0x0102},
		{"mode at 14", uint64(be32(b[14:])), 0o755},
		{"mtime at 18", be64(b[18:]), 0x0304},
		{"inode at 26", be64(b[26:]), 0x0506},
		{"prefix id at 34", uint64(b[34])<<8 | uint64(b[65]), 0xa1a2},
		{"durable offset at 66", be64(b[66:]), 0x20},
		{"tail offset at 74", be64(b[74:]), 0x10},
		{"tail hash at 82", uint64(b[82])<<8 | uint64(b[113]), 0xb1b2},
		{"name length at 114", uint64(be16(b[114:])), 2},
		{"name at 116", uint64(b[116])<<8 | uint64(b[117]), 'a'<<8 | 'b'},
		{"length", uint64(len(b)), 118 + 32},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if sum := transfer.HashBytes(b[:118]); !bytes.Equal(sum[:], b[118:]) {
		t.Error("checksum is not BLAKE3 of the bytes before it")
	}
}

func TestDecodeStateRejectsDamage(t *testing.T) {
	st := sampleStates()[2].st
	b := daemon.EncodeState(&st)
	t.Run("every single-bit flip", func(t *testing.T) {
		for i := range len(b) * 8 {
			c := append([]byte(nil), b...)
			c[i/8] ^= 1 << (i % 8)
			if _, err := daemon.DecodeState(c); !errors.Is(err, daemon.ErrBadState) {
				t.Fatalf("bit %d flipped: error %v, want ErrBadState", i, err)
			}
		}
	})
	t.Run("every truncation", func(t *testing.T) {
		for n := range len(b) {
			if _, err := daemon.DecodeState(b[:n]); !errors.Is(err, daemon.ErrBadState) {
				t.Fatalf("cut to %d bytes: error %v, want ErrBadState", n, err)
			}
		}
	})
	t.Run("trailing byte", func(t *testing.T) {
		if _, err := daemon.DecodeState(append(append([]byte(nil), b...), 0)); !errors.Is(err, daemon.ErrBadState) {
			t.Fatalf("error %v, want ErrBadState", err)
		}
	})
}

// reseal replaces the checksum after a change to the body, so that the
// field checks, not the checksum, must catch it.
func reseal(b []byte) []byte {
	body := b[:len(b)-32]
	sum := transfer.HashBytes(body)
	return append(append([]byte(nil), body...), sum[:]...)
}

func TestDecodeStateRejectsInconsistentFields(t *testing.T) {
	valid := daemon.State{Name: "dir/f", Size: 10 << 20, DurableOffset: 3 << 20, TailOffset: 2 << 20, TailHash: transfer.Hash{1}}
	tests := []struct {
		name string
		edit func(st *daemon.State)
		raw  func(b []byte) []byte // edits the encoded record instead
		msg  string
	}{
		{"negative size", func(st *daemon.State) { st.Size = -1 }, nil, "size"},
		{"size above MaxFileSize", func(st *daemon.State) { st.Size = transfer.MaxFileSize + 1 }, nil, "size"},
		{"durable offset beyond size", func(st *daemon.State) { st.Size = 3<<20 - 1 }, nil, "durable offset"},
		{"negative durable offset", func(st *daemon.State) { st.DurableOffset, st.TailOffset = -1, -2 }, nil, "durable offset"},
		{"tail offset beyond durable offset", func(st *daemon.State) { st.TailOffset = 3<<20 + 1 }, nil, "tail offset"},
		{"negative tail offset", func(st *daemon.State) { st.TailOffset = -1 }, nil, "tail offset"},
		{"tail longer than MaxChunkSize", func(st *daemon.State) { st.TailOffset = 3<<20 - transfer.MaxChunkSize - 1 }, nil, "tail offset"},
		{"empty tail at a durable offset", func(st *daemon.State) { st.TailOffset = 3 << 20 }, nil, "empty tail"},
		{"tail without durable data", func(st *daemon.State) { st.DurableOffset, st.TailOffset = 0, 0; st.TailOffset = 1 }, nil, "tail offset"},
		{"empty name", func(st *daemon.State) { st.Name = "" }, nil, "empty"},
		{"name climbing out", func(st *daemon.State) { st.Name = "../x" }, nil, "'..'"},
		{"absolute name", func(st *daemon.State) { st.Name = "/etc/x" }, nil, "absolute"},
		{"reserved name", func(st *daemon.State) { st.Name = ".ferry/x" }, nil, "reserved"},
		{"name length too long", nil, func(b []byte) []byte { binary.BigEndian.PutUint16(b[114:], 6); return b }, "name length 6"},
		{"name length too short", nil, func(b []byte) []byte { binary.BigEndian.PutUint16(b[114:], 4); return b }, "name length 4"},
		{"wrong magic", nil, func(b []byte) []byte { b[0] = 'X'; return b }, "magic"},
		{"version 2", nil, func(b []byte) []byte { binary.BigEndian.PutUint16(b[4:], 2); return b }, "version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := valid
			if tt.edit != nil {
				tt.edit(&st)
			}
			b := daemon.EncodeState(&st)
			if tt.raw != nil {
				b = tt.raw(b)
			}
			_, err := daemon.DecodeState(reseal(b))
			if !errors.Is(err, daemon.ErrBadState) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want ErrBadState saying %q", err, tt.msg)
			}
		})
	}
}
