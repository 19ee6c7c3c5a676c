package daemon_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/bits"
	"slices"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// stackAt returns a merge stack at offset in chunks of chunkSize bytes
// whose chaining values are filled with fill: a stand-in for a real one
// that DecodeState cannot tell apart.
func stackAt(chunkSize int, offset int64, fill byte) transfer.MergeStack {
	n := transfer.MergeStackLen(offset, chunkSize)
	b := []byte{byte(bits.TrailingZeros(uint(chunkSize)))}
	b = binary.BigEndian.AppendUint64(b, uint64(offset))
	b = append(b, byte(n))
	b = append(b, bytes.Repeat([]byte{fill}, n*transfer.HashSize)...)
	var s transfer.MergeStack
	if err := s.UnmarshalBinary(b); err != nil {
		panic("bug: " + err.Error())
	}
	return s
}

func sampleStates() []struct {
	name string
	st   daemon.State
} {
	h := transfer.HashBytes([]byte("prefix"))
	mib := 1 << 20
	return []struct {
		name string
		st   daemon.State
	}{
		{"fresh", daemon.State{Name: "f", Size: 100, Mode: 0o644, MtimeNs: 1, Inode: 2, PrefixID: h, Stack: stackAt(mib, 0, 0)}},
		{"empty file", daemon.State{Name: "empty", Mode: 0o600, Stack: stackAt(transfer.MinChunkSize, 0, 0)}},
		{"mid-transfer", daemon.State{Name: "dir/f.bin", Size: 10 << 20, Mode: 0o640, MtimeNs: 1700000000123456789, Inode: 1<<64 - 1,
			PrefixID: h, DurableOffset: 3 << 20, Stack: *daemon.StackOf(make([]byte, 3<<20), 10<<20, mib), Remote: "[2001:db8::1]:40000"}},
		{"complete, short tail", daemon.State{Name: "f", Size: 1000, DurableOffset: 1000, Stack: *daemon.StackOf(make([]byte, 1000), 1000, mib)}},
		{"largest stack", daemon.State{Name: "f", Size: transfer.MaxFileSize, DurableOffset: transfer.MaxFileSize,
			Stack: stackAt(transfer.MinChunkSize, transfer.MaxFileSize, 0xcc)}},
		{"largest chunk", daemon.State{Name: "f", Size: 1 << 40, DurableOffset: 3 << 24,
			Stack: stackAt(transfer.MaxChunkSize, 3<<24, 0xdd)}},
		{"negative mtime", daemon.State{Name: "old", Size: 1, MtimeNs: -5, Stack: stackAt(mib, 0, 0)}},
		{"unicode name", daemon.State{Name: "Fähre/日本語 ⛴", Size: 1, Stack: stackAt(mib, 0, 0)}},
		{"longest name", daemon.State{Name: strings.Repeat(strings.Repeat("n", 200)+"/", 20) + strings.Repeat("n", 76), Size: 1,
			Stack: stackAt(mib, 0, 0), Remote: strings.Repeat("r", daemon.MaxRemoteLen), Token: strings.Repeat("t", daemon.MaxTokenLen)}},
		{"token", daemon.State{Name: "f", Size: 1, Stack: stackAt(mib, 0, 0), Remote: "1.2.3.4:5", Token: "backup"}},
	}
}

// TestDecodeStateVersion3 decodes a record written before the token's
// name was recorded: a partial survives the upgrade, with Token "".
func TestDecodeStateVersion3(t *testing.T) {
	st := sampleStates()[2].st
	b := mustEncode(t, &st)
	v3 := slices.Clone(b[:len(b)-transfer.HashSize-1]) // without the token name length and checksum
	binary.BigEndian.PutUint16(v3[4:], 3)
	sum := transfer.HashBytes(v3)
	got, err := daemon.DecodeState(append(v3, sum[:]...))
	if err != nil {
		t.Fatal(err)
	}
	if *got != st {
		t.Fatalf("decoded %+v, want %+v", got, st)
	}
	long := st
	long.Token = strings.Repeat("t", daemon.MaxTokenLen+1)
	if _, err := daemon.EncodeState(&long); err == nil {
		t.Error("encoded a token name longer than MaxTokenLen")
	}
}

// TestDecodeStateVersion2 decodes a record written before the sender's
// address was recorded: a partial survives the upgrade, with Remote "".
func TestDecodeStateVersion2(t *testing.T) {
	st := sampleStates()[2].st
	st.Remote = ""
	b := mustEncode(t, &st)
	v2 := slices.Clone(b[:len(b)-transfer.HashSize-2]) // without the remote address and token name lengths and checksum
	binary.BigEndian.PutUint16(v2[4:], 2)
	sum := transfer.HashBytes(v2)
	got, err := daemon.DecodeState(append(v2, sum[:]...))
	if err != nil {
		t.Fatal(err)
	}
	if *got != st {
		t.Fatalf("decoded %+v, want %+v", got, st)
	}
	long := st
	long.Remote = strings.Repeat("r", daemon.MaxRemoteLen+1)
	if _, err := daemon.EncodeState(&long); err == nil {
		t.Error("encoded a remote address longer than MaxRemoteLen")
	}
}

// mustEncode is EncodeState for a State known to have a merge stack.
func mustEncode(t testing.TB, st *daemon.State) []byte {
	t.Helper()
	b, err := daemon.EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStateRoundTrip(t *testing.T) {
	for _, tt := range sampleStates() {
		t.Run(tt.name, func(t *testing.T) {
			b := mustEncode(t, &tt.st)
			want := 76 + len(tt.st.Name) + 2 + 10 + tt.st.Stack.Len()*32 + 1 + len(tt.st.Remote) + 1 + len(tt.st.Token) + 32
			if len(b) != want || len(b) > daemon.MaxStateSize {
				t.Fatalf("record of %d bytes, want %d (at most %d)", len(b), want, daemon.MaxStateSize)
			}
			got, err := daemon.DecodeState(b)
			if err != nil {
				t.Fatalf("DecodeState: %v", err)
			}
			if *got != tt.st {
				t.Fatalf("decoded %+v, want %+v", got, tt.st)
			}
			if again := mustEncode(t, got); !bytes.Equal(again, b) {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

// TestStateSize pins the bound that issue 10 promises: the merge stack of
// any partial, at most 54 chaining values, keeps the record under 2 KiB
// beside its name, and the largest record fits MaxStateSize.
func TestStateSize(t *testing.T) {
	if transfer.MaxMergeStackSize != 1738 {
		t.Fatalf("MaxMergeStackSize %d, want 1738", transfer.MaxMergeStackSize)
	}
	if daemon.MaxStateSize != 76+transfer.MaxNameLen+2+1738+1+255+1+255+32 {
		t.Fatalf("MaxStateSize %d", daemon.MaxStateSize)
	}
}

// TestStateLayout pins the byte offsets documented in docs/PROTOCOL.md.
func TestStateLayout(t *testing.T) {
	cv0, cv1 := bytes.Repeat([]byte{0xc0}, 32), bytes.Repeat([]byte{0xc1}, 32)
	var stack transfer.MergeStack
	if err := stack.UnmarshalBinary(slices.Concat([]byte{16}, []byte{0, 0, 0, 0, 0, 2, 0, 0}, []byte{2}, cv0, cv1)); err != nil {
		t.Fatal(err)
	}
	st := daemon.State{Name: "ab", Size: 0x30000, Mode: 0o755, MtimeNs: 0x0304, Inode: 0x0506,
		PrefixID: transfer.Hash{0: 0xa1, 31: 0xa2}, DurableOffset: 0x20000, Stack: stack, Remote: "1.2.3.4:5", Token: "tk"}
	b := mustEncode(t, &st)
	be16, be32, be64 := binary.BigEndian.Uint16, binary.BigEndian.Uint32, binary.BigEndian.Uint64
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"magic", uint64(be32(b[0:])), uint64(be32([]byte("FRYS")))},
		{"version at 4", uint64(be16(b[4:])), 4},
		{"size at 6", be64(b[6:]), 0x30000},
		{"mode at 14", uint64(be32(b[14:])), 0o755},
		{"mtime at 18", be64(b[18:]), 0x0304},
		{"inode at 26", be64(b[26:]), 0x0506},
		{"prefix id at 34", uint64(b[34])<<8 | uint64(b[65]), 0xa1a2},
		{"durable offset at 66", be64(b[66:]), 0x20000},
		{"name length at 74", uint64(be16(b[74:])), 2},
		{"name at 76", uint64(b[76])<<8 | uint64(b[77]), 'a'<<8 | 'b'},
		{"merge stack length at 78", uint64(be16(b[78:])), 10 + 64},
		{"chunk size exponent at 80", uint64(b[80]), 16},
		{"stack offset at 81", be64(b[81:]), 0x20000},
		{"chaining values at 89", uint64(b[89]), 2},
		{"first chaining value at 90", uint64(b[90])<<8 | uint64(b[121]), 0xc0c0},
		{"tail chunk's chaining value at 122", uint64(b[122])<<8 | uint64(b[153]), 0xc1c1},
		{"remote address length at 154", uint64(b[154]), 9},
		{"remote address at 155", uint64(b[155])<<8 | uint64(b[163]), '1'<<8 | '5'},
		{"token name length at 164", uint64(b[164]), 2},
		{"token name at 165", uint64(b[165])<<8 | uint64(b[166]), 't'<<8 | 'k'},
		{"length", uint64(len(b)), 167 + 32},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if sum := transfer.HashBytes(b[:167]); !bytes.Equal(sum[:], b[167:]) {
		t.Error("checksum is not BLAKE3 of the bytes before it")
	}
	if off, h := st.Tail(); off != 0x10000 || !bytes.Equal(h[:], cv1) {
		t.Errorf("Tail() = %#x, %x; want 0x10000 and the last chaining value", off, h)
	}
}

func TestDecodeStateRejectsDamage(t *testing.T) {
	st := sampleStates()[2].st
	b := mustEncode(t, &st)
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
	valid := daemon.State{Name: "dir/f", Size: 10 << 20, DurableOffset: 3 << 20, Stack: stackAt(1<<20, 3<<20, 1)}
	tests := []struct {
		name string
		edit func(st *daemon.State)
		raw  func(b []byte) []byte // edits the encoded record instead
		msg  string
	}{
		{"negative size", func(st *daemon.State) { st.Size = -1 }, nil, "size"},
		{"size above MaxFileSize", func(st *daemon.State) { st.Size = transfer.MaxFileSize + 1 }, nil, "size"},
		{"durable offset beyond size", func(st *daemon.State) { st.Size = 3<<20 - 1 }, nil, "durable offset"},
		{"negative durable offset", func(st *daemon.State) { st.DurableOffset = -1 }, nil, "durable offset"},
		{"stack behind the durable offset", func(st *daemon.State) { st.Stack = stackAt(1<<20, 2<<20, 1) }, nil, "merge stack at offset"},
		{"stack ahead of the durable offset", func(st *daemon.State) { st.Stack = stackAt(1<<20, 4<<20, 1) }, nil, "merge stack at offset"},
		{"durable offset inside a chunk", func(st *daemon.State) {
			st.DurableOffset, st.Stack = 3<<20-1, stackAt(1<<20, 3<<20-1, 1)
		}, nil, "inside a chunk"},
		{"empty name", func(st *daemon.State) { st.Name = "" }, nil, "empty"},
		{"name climbing out", func(st *daemon.State) { st.Name = "../x" }, nil, "'..'"},
		{"absolute name", func(st *daemon.State) { st.Name = "/etc/x" }, nil, "absolute"},
		{"reserved name", func(st *daemon.State) { st.Name = ".ferry/x" }, nil, "reserved"},
		{"name length too long", nil, func(b []byte) []byte { binary.BigEndian.PutUint16(b[74:], 600); return b }, "name length 600"},
		{"stack length too long", nil, func(b []byte) []byte { binary.BigEndian.PutUint16(b[81:], 100); return b }, "merge stack length 100"},
		{"stack length too short", nil, func(b []byte) []byte { binary.BigEndian.PutUint16(b[81:], 2); return b }, "merge stack length 2"},
		{"stack count off", nil, func(b []byte) []byte { b[92]++; return b }, "chaining values"},
		{"stack chunk size not a power of two", nil, func(b []byte) []byte { b[83] = 13; return b }, "chunk size"},
		{"wrong magic", nil, func(b []byte) []byte { b[0] = 'X'; return b }, "magic"},
		{"version 1", nil, func(b []byte) []byte { binary.BigEndian.PutUint16(b[4:], 1); return b }, "version"},
		{"version 5", nil, func(b []byte) []byte { binary.BigEndian.PutUint16(b[4:], 5); return b }, "version"},
		{"token name length too long", nil, func(b []byte) []byte { b[len(b)-33] = 9; return b }, "token name length 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := valid
			if tt.edit != nil {
				tt.edit(&st)
			}
			b := mustEncode(t, &st)
			if tt.raw != nil {
				b = tt.raw(b)
			}
			_, err := daemon.DecodeState(reseal(b))
			if !errors.Is(err, daemon.ErrBadState) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want ErrBadState saying %q", err, tt.msg)
			}
		})
	}
	t.Run("no merge stack", func(t *testing.T) {
		st := valid
		st.Stack = transfer.MergeStack{}
		if _, err := daemon.EncodeState(&st); err == nil {
			t.Fatal("EncodeState accepted a State without a merge stack")
		}
	})
}
