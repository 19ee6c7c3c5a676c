package daemon

import (
	"sync"
)

// writeDepth returns how many chunk buffers of chunkSize bytes a
// transfer's writer may hold: one being written to the partial while the
// session reads and verifies the next ones. Four, or two for chunks above
// 2 MiB; the session holds one more (frameBuffers), at most 12 MiB. An O_DIRECT write waits for the
// device, and its latency varies with what else the disk does: with two
// buffers, an in-process 1 GiB transfer on a quiet machine waited 164 ms
// of its 0.85 s for a free buffer, and up to 2 s of 4.2 s on a disk that
// other processes used; with four, 0.6-0.8 s of 2.4-3.0 s in the same
// conditions (issue 10; `ferrybench -profile -trace`).
func writeDepth(chunkSize int) int {
	if chunkSize > 2<<20 {
		return 2
	}
	return 4
}

// writeJob is one verified chunk on its way to the partial.
type writeJob struct {
	buf  []byte    // the chunk buffer, handed back once written
	data []byte    // the chunk's data, within buf
	off  int64     // offset of data in the file
	pt   syncPoint // the sync point that holds once data is written
	sync bool      // ask the syncer for pt once data is written
	hole int64     // bytes of zeros at off not to write (a ZeroChunk); buf and data are nil
}

// chunkWriter writes verified chunks to a partial on its own goroutine,
// in order, so that the session reads and verifies the next chunk while
// the disk takes this one (on an O_DIRECT write the session would
// otherwise wait for the device). A sync point reaches the syncer only
// after every byte it covers was written, so the durable offset still
// moves only over written, fsync'ed data. Once a write fails, later
// chunks are not written and failed reports the error.
type chunkWriter struct {
	p    Partial
	sync *syncer
	jobs chan writeJob
	free chan []byte // buffers not being written
	n    int         // buffers in all
	done chan struct{}

	mu      sync.Mutex
	err     error
	written syncPoint // every chunk up to here was written
}

// newChunkWriter starts a writer for p with the given chunk buffers;
// written is the point at which p's data ends now. stop must be called.
func newChunkWriter(p Partial, s *syncer, written syncPoint, bufs [][]byte) *chunkWriter {
	free := make(chan []byte, len(bufs))
	for _, b := range bufs {
		free <- b
	}
	return newChunkWriterOn(p, s, written, free)
}

// newChunkWriterOn starts a writer for p that gives the buffers of the
// chunks it wrote back to free, whose capacity is the number of buffers
// in all (the session's, shared with its frame reader).
func newChunkWriterOn(p Partial, s *syncer, written syncPoint, free chan []byte) *chunkWriter {
	w := &chunkWriter{p: p, sync: s, jobs: make(chan writeJob, cap(free)), free: free,
		n: cap(free), done: make(chan struct{}), written: written}
	go w.loop()
	return w
}

func (w *chunkWriter) loop() {
	defer close(w.done)
	for j := range w.jobs {
		if w.failed() == nil {
			var err error
			if j.hole > 0 {
				err = extend(w.p, j.off, j.hole)
			} else {
				err = w.p.WriteAt(j.data, j.off)
			}
			w.mu.Lock()
			if err != nil {
				w.err = err
			} else {
				w.written = j.pt
			}
			w.mu.Unlock()
			if err == nil && j.sync {
				if w.sync.align > 0 {
					// A store of whole parts: the part just written is
					// recorded before a byte of the next one is written, so
					// that what was received and not made durable never
					// exceeds one part and the chunk buffers
					// (TestChunkWriterWaitsForPartRecord). Writing on would
					// leave a slow record behind a whole further part, all
					// of which a daemon killed then loses. The wait is one
					// small request's; the socket takes the next chunks
					// meanwhile. A failed sync is reported by failed.
					_ = w.sync.flush(j.pt)
				} else {
					w.sync.request(j.pt)
				}
			}
		}
		if j.buf != nil {
			w.free <- j.buf
		}
	}
}

// extend makes p's data cover the n zero bytes at off: without writing
// them (a hole) when p is an Extender, by writing zeros otherwise.
func extend(p Partial, off, n int64) error {
	if e, ok := p.(Extender); ok {
		return e.Extend(off + n)
	}
	return p.WriteAt(make([]byte, n), off)
}

// buffer returns a chunk buffer to read the next chunk into, waiting for
// a write in progress when every buffer is taken.
func (w *chunkWriter) buffer() []byte { return <-w.free }

// write queues a verified chunk; j.buf goes back to the free buffers once
// it is written.
func (w *chunkWriter) write(j writeJob) { w.jobs <- j }

// failed returns the error of a failed write, if any.
func (w *chunkWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// stop waits until every queued chunk and hole is written (or skipped
// after a failure), ends the writer's goroutine, and returns the point up
// to which all were written and the first write error. The writer is
// not used after stop.
func (w *chunkWriter) stop() (syncPoint, error) {
	close(w.jobs)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.written, w.err
}
