package transfer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"

	"github.com/zeebo/blake3"
)

// countingReaderAt counts ReadAt calls and flags any that start after
// HashChunks returned, which would mean a goroutine outlived the call.
type countingReaderAt struct {
	r        io.ReaderAt
	calls    atomic.Int64
	returned atomic.Bool
	late     atomic.Bool
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if c.returned.Load() {
		c.late.Store(true)
	}
	c.calls.Add(1)
	return c.r.ReadAt(p, off)
}

func TestHashChunksInOrder(t *testing.T) {
	const c = MinTreeChunkSize
	data := randomData(37*c+99, 5)
	for _, workers := range []int{0, 1, 3, 8} {
		for _, from := range []int64{0, c, 20 * c, 37 * c, int64(len(data)) - 99} {
			if from%c != 0 {
				continue
			}
			r := &countingReaderAt{r: bytes.NewReader(data)}
			next := from
			err := HashChunks(t.Context(), r, from, int64(len(data)), c, workers, func(off int64, d []byte, cv CV) error {
				if off != next {
					t.Fatalf("chunk at offset %d, want %d", off, next)
				}
				end := min(off+c, int64(len(data)))
				if !bytes.Equal(d, data[off:end]) {
					t.Fatalf("chunk at offset %d: wrong data", off)
				}
				if want, _ := ChunkCV(data[off:end], off, false); cv != want {
					t.Fatalf("chunk at offset %d: CV %x, want %x", off, cv, want)
				}
				next = end
				return nil
			})
			r.returned.Store(true)
			if err != nil || next != int64(len(data)) {
				t.Fatalf("workers %d from %d: ended at %d: %v", workers, from, next, err)
			}
			if r.late.Load() {
				t.Fatal("ReadAt after HashChunks returned")
			}
		}
	}
}

func TestHashChunksOneChunkFileYieldsRoot(t *testing.T) {
	for _, n := range []int{1, 1025, DefaultChunkSize} {
		data := randomData(n, 6)
		calls := 0
		err := HashChunks(t.Context(), bytes.NewReader(data), 0, int64(n), DefaultChunkSize, 4, func(_ int64, _ []byte, cv CV) error {
			calls++
			if Hash(cv) != blake3.Sum256(data) {
				t.Errorf("%d bytes: yielded %x, want the root %x", n, cv, blake3.Sum256(data))
			}
			return nil
		})
		if err != nil || calls != 1 {
			t.Fatalf("%d bytes: %d chunks, %v", n, calls, err)
		}
	}
	h, err := HashAt(t.Context(), bytes.NewReader(nil), 0, DefaultChunkSize, 2)
	if err != nil || h != blake3.Sum256(nil) {
		t.Fatalf("empty file: %x, %v", h, err)
	}
}

func TestHashAtParallelIsBlake3(t *testing.T) {
	data := randomData(9<<20+12345, 7)
	for _, c := range []int{MinTreeChunkSize, 256 << 10, DefaultChunkSize} {
		for _, workers := range []int{1, 2, 5} {
			h, err := HashAt(t.Context(), bytes.NewReader(data), int64(len(data)), c, workers)
			if err != nil || h != blake3.Sum256(data) {
				t.Fatalf("chunk size %d, %d workers: %x, %v", c, workers, h, err)
			}
		}
	}
}

// failingReaderAt fails every read that reaches past failAt.
type failingReaderAt struct {
	r      io.ReaderAt
	failAt int64
}

var errDisk = errors.New("disk on fire")

func (f failingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.failAt {
		return 0, errDisk
	}
	return f.r.ReadAt(p, off)
}

func TestHashChunksErrors(t *testing.T) {
	const c = MinTreeChunkSize
	data := randomData(50*c, 8)
	errStop := errors.New("stop")
	canceled, cancel := context.WithCancelCause(t.Context())
	errGone := errors.New("sender gone")
	cancel(errGone)
	tests := []struct {
		name      string
		ctx       context.Context
		r         io.ReaderAt
		size      int64
		stopAfter int // yield fails on this chunk; 0: never
		want      error
		maxChunks int // chunks yielded at most
	}{
		{"read error", t.Context(), failingReaderAt{bytes.NewReader(data), 10 * c}, 50 * c, 0, errDisk, 10},
		{"short file", t.Context(), bytes.NewReader(data[:20*c+5]), 50 * c, 0, io.ErrUnexpectedEOF, 21},
		{"yield error", t.Context(), bytes.NewReader(data), 50 * c, 3, errStop, 3},
		{"canceled", canceled, bytes.NewReader(data), 50 * c, 0, errGone, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &countingReaderAt{r: tt.r}
			n := 0
			err := HashChunks(tt.ctx, r, 0, tt.size, c, 4, func(int64, []byte, CV) error {
				n++
				if n == tt.stopAfter {
					return errStop
				}
				return nil
			})
			r.returned.Store(true)
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if n > tt.maxChunks {
				t.Errorf("%d chunks yielded, at most %d expected", n, tt.maxChunks)
			}
			// Hashing runs at most workers+1 chunks ahead of yield.
			if calls := r.calls.Load(); calls > int64(n+4+2) {
				t.Errorf("%d reads for %d chunks yielded", calls, n)
			}
			if r.late.Load() {
				t.Error("ReadAt after HashChunks returned")
			}
		})
	}
	for _, bad := range [][2]int64{{-c, 10 * c}, {1, 10 * c}, {11 * c, 10 * c}, {0, MaxFileSize + 1}} {
		if err := HashChunks(t.Context(), bytes.NewReader(data), bad[0], bad[1], c, 1, nil); err == nil {
			t.Errorf("HashChunks from %d to %d accepted", bad[0], bad[1])
		}
	}
}
