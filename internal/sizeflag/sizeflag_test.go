package sizeflag

import (
	"errors"
	"flag"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
		bad  bool
	}{
		{"decimal giga", "10G", 10_000_000_000, false},
		{"binary giga", "10GiB", 10 << 30, false},
		{"binary mega", "1MiB", 1 << 20, false},
		{"binary kilo", "512KiB", 512 << 10, false},
		{"lower case", "512kib", 512 << 10, false},
		{"plain count", "4096", 4096, false},
		{"zero", "0", 0, false},
		{"fraction with space", "1.5 MiB", 3 << 19, false},
		{"bytes unit", "100B", 100, false},
		{"surrounding space", " 64KiB ", 64 << 10, false},
		{"largest", "9223372036854775807", 1<<63 - 1, false},
		{"above int64", "9223372036854775808", 0, true},
		{"exabytes overflow", "16EiB", 0, true},
		{"garbage", "big", 0, true},
		{"unknown unit", "10 parsecs", 0, true},
		{"negative", "-1", 0, true},
		{"negative with unit", "-1MiB", 0, true},
		{"empty", "", 0, true},
		{"rate suffix is not a size", "1MiB/s", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.bad {
				if !errors.Is(err, ErrSize) {
					t.Fatalf("Parse(%q) = %d, %v; want an error wrapping ErrSize", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Parse(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"50MiB/s": 50 << 20, "50MiB": 50 << 20, "4096": 4096, "2 MiB/s": 2 << 20} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := ParseRate("fast/s"); !errors.Is(err, ErrSize) {
		t.Errorf("ParseRate(fast/s): %v, want ErrSize", err)
	}
}

func TestFormat(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 1000: "1000", 4096: "4KiB", 16 << 20: "16MiB", 3 << 30: "3GiB", 1<<20 + 1: "1048577"} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q, want %q", n, got, want)
		}
		if back, err := Parse(Format(n)); err != nil || back != n {
			t.Errorf("Parse(Format(%d)) = %d, %v", n, back, err)
		}
	}
}

// TestValueIsAFlag: the standard flag package (which urfave/cli uses)
// reports a bad size as an invalid value and keeps the default.
func TestValueIsAFlag(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(nopWriter{})
	size, rate := New(1<<20), NewRate(0)
	fs.Var(size, "size", "")
	fs.Var(rate, "rate", "")
	if err := fs.Parse([]string{"--size", "64KiB", "--rate", "2MiB/s"}); err != nil {
		t.Fatal(err)
	}
	if size.Bytes() != 64<<10 || rate.Bytes() != 2<<20 || rate.String() != "2MiB/s" {
		t.Fatalf("size %v rate %v", size, rate)
	}
	if err := fs.Parse([]string{"--size", "garbage"}); err == nil {
		t.Fatal("a bad size parsed")
	}
	if size.Bytes() != 64<<10 {
		t.Fatalf("a bad size changed the value to %d", size.Bytes())
	}
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }
