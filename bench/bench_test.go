package main

// These tests check the benchmark's own logic; they time nothing.

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/ferry-dev/ferry/transfer"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
		ok   bool
	}{
		{"bytes", "4096", 4096, true},
		{"mebibytes", "100M", 100 << 20, true},
		{"gibibytes lower case", "1g", 1 << 30, true},
		{"zero", "0", 0, true},
		{"empty", "", 0, false},
		{"unit only", "G", 0, false},
		{"negative", "-1M", 0, false},
		{"unknown unit", "5X", 0, false},
		{"overflow", "9999999T", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if (err == nil) != tt.ok || got.bytes != tt.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got.bytes, err, tt.want, tt.ok)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{"one", []float64{3}, 3},
		{"odd", []float64{5, 1, 3}, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.in); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func frame(typ transfer.FrameType, payload string) []byte {
	b := make([]byte, transfer.FrameHeaderSize, transfer.FrameHeaderSize+len(payload))
	b[0] = byte(typ)
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

// TestRelayWatch checks that the relay passes control frames through
// unchanged and stops right after the first chunk frame's header.
func TestRelayWatch(t *testing.T) {
	var in bytes.Buffer
	in.Write(frame(transfer.FrameHello, "hello"))
	in.Write(frame(transfer.FrameOffer, "offer with a chunk type byte \x05 inside"))
	chunk := frame(transfer.FrameChunk, "chunk data")
	in.Write(chunk)
	want := in.Bytes()[:in.Len()-len(chunk)+transfer.FrameHeaderSize]
	want = bytes.Clone(want)

	var r relay
	var out bytes.Buffer
	if err := r.watch(&out, &in); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Errorf("relayed %q, want %q", out.Bytes(), want)
	}
	if r.FirstChunk().IsZero() {
		t.Error("first chunk not timestamped")
	}
	if rest := in.String(); rest != "chunk data" {
		t.Errorf("left %q unread, want the chunk payload", rest)
	}
}

func TestRelayWatchNoChunk(t *testing.T) {
	in := bytes.NewReader(frame(transfer.FrameHello, "hello"))
	var r relay
	var out bytes.Buffer
	if err := r.watch(&out, in); err != nil {
		t.Fatal(err)
	}
	if !r.FirstChunk().IsZero() {
		t.Error("first chunk timestamped without a chunk")
	}
}
