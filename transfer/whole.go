package transfer

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// wholeHash builds the sender's whole-file hash from chunk chaining values
// with a MergeStack, so that the sender hashes every byte it sends once.
//
// After a resume at durable offset D, the sender never trusts the daemon's
// merge stack: it re-hashes its own prefix [0, D) from its file in a
// goroutine (hashRange, in parallel on idle cores) while chunks past D go
// out. Their chaining values wait in a list until the prefix is done, 32
// bytes per chunk sent meanwhile (32 KiB per GiB at 1 MiB chunks), and are
// then merged in order. The trailer carries the root of the sender's own
// stack, so the printed hash is the hash of the sender's file whatever the
// daemon kept.
//
// wholeHash is safe for concurrent use by the stream and its prefix
// goroutine.
type wholeHash struct {
	size int64

	mu      sync.Mutex
	stack   *MergeStack // the prefix's stack once done; chunks join it in order
	pending []CV        // chaining values of chunks from D on, while the prefix hashes
	next    int64       // offset of the next chunk to push (or to queue)
	err     error
	done    chan struct{} // closed when the prefix goroutine ends; nil if none runs
}

// newWholeHash returns a whole-file hasher for a file of size bytes cut
// in chunkSize chunks, with chunks from offset from on to be pushed with
// push. For from > 0 it starts hashing [0, from) of r in a goroutine that
// stops when ctx ends; wait joins it.
func newWholeHash(ctx context.Context, r io.ReaderAt, from, size int64, chunkSize int) (*wholeHash, error) {
	stack, err := NewMergeStack(chunkSize)
	if err != nil {
		return nil, err
	}
	w := &wholeHash{size: size, next: from}
	if from == 0 {
		w.stack = stack
		return w, nil
	}
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		err := hashRange(ctx, r, 0, from, size, chunkSize, HashWorkers(chunkSize), func(_ int64, data []byte, cv CV) error {
			return stack.Push(cv, int64(len(data)))
		})
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			w.err = fmt.Errorf("hashing the first %d bytes of the source: %w", from, err)
			return
		}
		for _, cv := range w.pending {
			if err := stack.Push(cv, min(int64(chunkSize), size-stack.Offset())); err != nil {
				w.err = err
				return
			}
		}
		w.pending = nil
		w.stack = stack
	}()
	return w, nil
}

// push adds the chaining value of the chunk of n bytes at off. A chunk
// before the next one expected was pushed already (a resend after a Nack)
// and is ignored; a gap is a bug reported by sum.
func (w *wholeHash) push(off, n int64, cv CV) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case off < w.next:
		return
	case off > w.next:
		if w.err == nil {
			w.err = fmt.Errorf("bug: whole-file hash gap at offset %d, expected %d", off, w.next)
		}
		return
	}
	w.next += n
	if w.stack == nil {
		w.pending = append(w.pending, cv)
		return
	}
	if err := w.stack.Push(cv, n); err != nil && w.err == nil {
		w.err = err
	}
}

// wait joins the prefix goroutine, if any.
func (w *wholeHash) wait() {
	if w.done != nil {
		<-w.done
	}
}

// sum waits for the prefix and returns the file's BLAKE3, the value b3sum
// prints. It fails if the prefix could not be read, if not every chunk was
// pushed, or if ctx ends first.
func (w *wholeHash) sum(ctx context.Context) (Hash, error) {
	if w.done != nil {
		select {
		case <-w.done:
		case <-ctx.Done():
			return Hash{}, context.Cause(ctx)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return Hash{}, w.err
	}
	return w.stack.Sum(w.size)
}
