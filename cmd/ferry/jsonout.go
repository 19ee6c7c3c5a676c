package main

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// jsonFlushDelay is the longest a --json record waits in lineBatcher's
// buffer.
const jsonFlushDelay = 20 * time.Millisecond

// lineBatcher buffers --json records so that a tree's records go out many
// to a write (issue 9: a re-sent tree of 20,000 files made 20,000 writes
// to stdout), and writes them within jsonFlushDelay of the first one
// buffered, so that a reader of the stream still sees each file promptly.
// A write error is kept and returned by every later Write and by Flush.
type lineBatcher struct {
	mu    sync.Mutex
	w     *bufio.Writer
	timer *time.Timer // armed while something is buffered
	err   error
}

func newLineBatcher(w io.Writer) *lineBatcher {
	return &lineBatcher{w: bufio.NewWriterSize(w, 64<<10)}
}

// Write buffers p, a whole record.
func (b *lineBatcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.w.Write(p)
	if err != nil {
		b.err = err
		return n, err
	}
	if b.timer == nil && b.w.Buffered() > 0 {
		b.timer = time.AfterFunc(jsonFlushDelay, func() { _ = b.Flush() }) // a failure is kept in b.err
	}
	return n, nil
}

// Flush writes what is buffered.
func (b *lineBatcher) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if b.err != nil {
		return b.err
	}
	b.err = b.w.Flush()
	return b.err
}
