package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

func randomData(n int, seed uint64) []byte {
	var s [32]byte
	s[0] = byte(seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// TestHashBytesIsB3sum pins the hash to what b3sum prints.
func TestHashBytesIsB3sum(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
		{"abc", "abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := HashBytes([]byte(tt.in))
			if got := fmt.Sprintf("%x", h); got != tt.want {
				t.Fatalf("HashBytes(%q) = %s, want %s", tt.in, got, tt.want)
			}
			h2, err := HashReader(strings.NewReader(tt.in))
			if err != nil || h2 != h {
				t.Fatalf("HashReader = %x, %v", h2, err)
			}
		})
	}
}

func TestStreamHasherInline(t *testing.T) {
	data := randomData(3<<20+17, 1)
	want := blake3.Sum256(data)
	tests := []struct {
		name   string
		writes [][2]int // [off, end) in order
	}{
		{"one write", [][2]int{{0, len(data)}}},
		{"chunks", chunks(len(data), 1<<20)},
		{"small uneven chunks", chunks(len(data), 4093)},
		{"resent chunks are ignored", [][2]int{{0, 1 << 20}, {0, 1 << 20}, {1 << 20, 2 << 20}, {0, 1 << 20}, {1 << 20, 2 << 20}, {2 << 20, len(data)}}},
		{"overlapping chunk hashes only its new bytes", [][2]int{{0, 1000}, {500, 2000}, {2000, len(data)}}},
		{"empty writes", [][2]int{{0, 0}, {0, len(data)}, {len(data), len(data)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStreamHasher()
			for _, w := range tt.writes {
				s.Write(int64(w[0]), data[w[0]:w[1]])
			}
			if s.Hashed() != int64(len(data)) {
				t.Fatalf("Hashed = %d, want %d", s.Hashed(), len(data))
			}
			got, err := s.Sum(context.Background(), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("Sum = %x, want %x", got, want)
			}
		})
	}
}

func chunks(n, size int) [][2]int {
	var w [][2]int
	for off := 0; off < n; off += size {
		w = append(w, [2]int{off, min(off+size, n)})
	}
	return w
}

func TestStreamHasherSumErrors(t *testing.T) {
	data := randomData(10000, 2)
	tests := []struct {
		name   string
		writes [][2]int
		size   int64
		msg    string
	}{
		{"gap", [][2]int{{0, 1000}, {2000, 3000}}, 3000, "gap at offset 2000"},
		{"short", [][2]int{{0, 1000}}, 10000, "covers 1000 bytes, want 10000"},
		{"long", [][2]int{{0, 10000}}, 9999, "covers 10000 bytes"},
		{"nothing written", nil, 1, "covers 0 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStreamHasher()
			for _, w := range tt.writes {
				s.Write(int64(w[0]), data[w[0]:w[1]])
			}
			_, err := s.Sum(context.Background(), tt.size)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Sum error %v, want one saying %q", err, tt.msg)
			}
		})
	}
}

// growingFile is a ReaderAt over data whose first written bytes are
// present; reading past them is a test failure (the catch-up goroutine
// must never read what has not been written).
type growingFile struct {
	data    []byte
	written atomic.Int64
	bad     atomic.Value // error
	delay   time.Duration
}

func (g *growingFile) ReadAt(p []byte, off int64) (int, error) {
	if g.delay > 0 {
		time.Sleep(g.delay)
	}
	if end := off + int64(len(p)); end > g.written.Load() {
		err := fmt.Errorf("read [%d,%d) beyond written %d", off, end, g.written.Load())
		g.bad.CompareAndSwap(nil, err)
		return 0, err
	}
	return copy(p, g.data[off:]), nil
}

// TestStreamHasherCatchUp resumes at an offset: the prefix is read back
// in the background while writes keep arriving, as on the daemon after a
// restart. Run it under -race.
func TestStreamHasherCatchUp(t *testing.T) {
	data := randomData(9<<20+333, 3)
	want := blake3.Sum256(data)
	tests := []struct {
		name   string
		resume int
		chunk  int
		delay  time.Duration // per catch-up read: slows catch-up so writes overtake it
	}{
		{"prefix of several reads, writes overtake", 5<<20 + 7, 64 << 10, time.Millisecond},
		{"prefix of one read", 100, 1 << 20, 0},
		{"whole file durable, no writes", len(data), 1 << 20, 0},
		{"fast catch-up, slow writes", 2 << 20, 256 << 10, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &growingFile{data: data, delay: tt.delay}
			g.written.Store(int64(tt.resume))
			s := NewStreamHasher()
			s.CatchUp(context.Background(), g, int64(tt.resume))
			for _, w := range chunks(len(data)-tt.resume, tt.chunk) {
				off, end := w[0]+tt.resume, w[1]+tt.resume
				// As the daemon does: the bytes are in the file before Write.
				g.written.Store(int64(end))
				s.Write(int64(off), data[off:end])
				if tt.name == "fast catch-up, slow writes" {
					time.Sleep(time.Millisecond)
				}
			}
			got, err := s.Sum(context.Background(), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if e, _ := g.bad.Load().(error); e != nil {
				t.Fatal(e)
			}
			if got != want {
				t.Fatalf("Sum = %x, want %x", got, want)
			}
		})
	}
}

type errReaderAt struct{ err error }

func (e errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, e.err }

func TestStreamHasherCatchUpErrors(t *testing.T) {
	t.Run("read error", func(t *testing.T) {
		s := NewStreamHasher()
		s.CatchUp(context.Background(), errReaderAt{io.ErrUnexpectedEOF}, 10)
		_, err := s.Sum(context.Background(), 10)
		if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "offset 0") {
			t.Fatalf("Sum error %v", err)
		}
	})
	t.Run("short file", func(t *testing.T) {
		s := NewStreamHasher()
		s.CatchUp(context.Background(), bytes.NewReader(make([]byte, 5)), 10)
		if _, err := s.Sum(context.Background(), 10); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Sum error %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("catch-up cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		s := NewStreamHasher()
		s.CatchUp(ctx, bytes.NewReader(make([]byte, 10)), 10)
		if _, err := s.Sum(context.Background(), 10); !errors.Is(err, context.Canceled) {
			t.Fatalf("Sum error %v, want context.Canceled", err)
		}
	})
	t.Run("Sum gives up with its context", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		s := NewStreamHasher()
		s.CatchUp(context.Background(), blockingReaderAt(release), 10)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		if _, err := s.Sum(ctx, 10); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Sum error %v, want context.DeadlineExceeded", err)
		}
	})
}

type blockingReaderAt chan struct{}

func (b blockingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	<-b
	return 0, io.ErrClosedPipe
}
