package transfer

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/zeebo/blake3"
)

// StreamHasher computes the whole-file BLAKE3 (the hash b3sum prints) of a
// file written or read in offset order, without ever making the data path
// wait for it.
//
// In a fresh transfer every chunk goes through Write in order and is hashed
// inline. After a resume at offset D, the prefix [0, D) has to be read back
// from storage first; CatchUp does that in a goroutine while Write calls
// keep arriving and only record how far the backing file extends. When the
// catch-up reader meets the writes, hashing switches to inline. Neither the
// sender nor the daemon blocks on the prefix (croc#1029 is what happens
// otherwise).
//
// StreamHasher is safe for concurrent use by one writer and its catch-up
// goroutine.
type StreamHasher struct {
	mu       sync.Mutex
	h        *blake3.Hasher
	n        int64 // bytes hashed so far
	avail    int64 // bytes known present in the backing file
	catching bool
	done     chan struct{} // closed when catch-up ends; nil if none ran
	err      error
}

// NewStreamHasher returns a hasher at offset 0 in inline mode.
func NewStreamHasher() *StreamHasher {
	return &StreamHasher{h: blake3.New()}
}

// CatchUp starts hashing r from offset 0 in a goroutine; avail is how many
// bytes r holds now. Writes at or beyond avail only extend it until the
// goroutine has caught up. Call it at most once, before any Write. The
// goroutine stops early when ctx is done; Sum then reports ctx's error.
func (s *StreamHasher) CatchUp(ctx context.Context, r io.ReaderAt, avail int64) {
	s.mu.Lock()
	s.avail = avail
	s.catching = true
	s.done = make(chan struct{})
	s.mu.Unlock()
	go s.catchUp(ctx, r)
}

// catchUpBuf is the read size of the catch-up goroutine in bytes.
const catchUpBuf = 1 << 20

func (s *StreamHasher) catchUp(ctx context.Context, r io.ReaderAt) {
	defer close(s.done)
	buf := make([]byte, catchUpBuf)
	for {
		s.mu.Lock()
		if s.n >= s.avail {
			s.catching = false
			s.mu.Unlock()
			return
		}
		n, avail := s.n, s.avail
		s.mu.Unlock()
		if err := ctx.Err(); err != nil {
			s.fail(err)
			return
		}
		want := min(int64(len(buf)), avail-n)
		if _, err := r.ReadAt(buf[:want], n); err != nil {
			s.fail(fmt.Errorf("re-reading for whole-file hash at offset %d: %w", n, noEOF(err)))
			return
		}
		s.mu.Lock()
		s.h.Write(buf[:want])
		s.n += want
		s.mu.Unlock()
	}
}

func (s *StreamHasher) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.catching = false
	s.mu.Unlock()
}

// Write records that p now sits at off in the backing file and hashes it if
// the hasher is inline. Bytes before the hashed offset are ignored (a
// resent chunk); a gap after it is a bug in the caller and is reported by
// Sum.
func (s *StreamHasher) Write(off int64, p []byte) {
	end := off + int64(len(p))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.catching {
		s.avail = max(s.avail, end)
		return
	}
	switch {
	case end <= s.n:
	case off > s.n:
		if s.err == nil {
			s.err = fmt.Errorf("bug: whole-file hash gap at offset %d, hashed %d", off, s.n)
		}
	default:
		s.h.Write(p[s.n-off:])
		s.n = end
		s.avail = max(s.avail, end)
	}
}

// Sum waits for any catch-up to finish and returns the hash of the first
// size bytes. It fails if fewer or more bytes were hashed, if the catch-up
// read failed, or if ctx ends first.
func (s *StreamHasher) Sum(ctx context.Context, size int64) (Hash, error) {
	if s.done != nil {
		select {
		case <-s.done:
		case <-ctx.Done():
			return Hash{}, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return Hash{}, s.err
	}
	if s.n != size {
		return Hash{}, fmt.Errorf("bug: whole-file hash covers %d bytes, want %d", s.n, size)
	}
	var h Hash
	s.h.Sum(h[:0])
	return h, nil
}

// Hashed returns how many bytes have been hashed so far.
func (s *StreamHasher) Hashed() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// HashReader returns the BLAKE3 of everything r yields, as b3sum computes it.
func HashReader(r io.Reader) (Hash, error) {
	h := blake3.New()
	if _, err := io.CopyBuffer(h, r, make([]byte, catchUpBuf)); err != nil {
		return Hash{}, err
	}
	var out Hash
	h.Sum(out[:0])
	return out, nil
}
