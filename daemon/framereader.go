package daemon

import "github.com/ferry-dev/ferry/transfer"

// The frame reader: reads and decrypts a session's next frame on its own
// goroutine while the receive loop verifies the current one.

// frameBuffers returns how many frame buffers of chunkSize bytes (plus
// a chunk header) a session holds: writeDepth for the writer, and one
// more for the frame the reader reads while the receive loop verifies
// another: 5 MiB at the default chunk size of 1 MiB.
func frameBuffers(chunkSize int) int { return writeDepth(chunkSize) + 1 }

// rxFrame is one frame read by the frame reader.
type rxFrame struct {
	h   transfer.FrameHeader
	buf []byte         // the session buffer the frame was read into, or nil; the loop gives it back
	p   []byte         // the payload of a frame other than a chunk
	c   transfer.Chunk // a chunk frame's chunk; its data aliases buf
	// err is why the read failed: io.EOF when the sender closed the
	// session between frames. The reader stops after it.
	err error
	// flushErr says err is a failed write of queued answers, not a read.
	flushErr bool
}

// frameReader reads frames on its own goroutine ahead of the receive
// loop, so that reading and decrypting the next chunk overlaps with
// verifying this one (on a loopback transfer both cost about as much as
// the sender's work; issue 10). It reads ahead only within a data run:
// after any other frame it waits until the loop has handled it, so that
// control frames are read, and the idle timeout armed, exactly as a loop
// reading its own frames would, and the loop's answers to a frame are
// queued before the reader decides whether to flush them.
type frameReader struct {
	frames chan rxFrame
	resume chan struct{} // the loop handled a frame the reader waits on
	quit   chan struct{} // closed when the loop ends
	done   chan struct{} // closed when the reader returns
}

func newFrameReader(n int) *frameReader {
	return &frameReader{frames: make(chan rxFrame, n), resume: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{})}
}

// run reads frames into the session's free buffers and sends them to the
// loop until a read fails or the loop ends.
func (fr *frameReader) run(ss *session) {
	defer close(fr.done)
	for {
		ss.readDeadline()
		// Nothing buffered: the read waits for the network, and the
		// committer need not wait for more files (commit.go).
		idle := !ss.buffered()
		if idle {
			if err := ss.flushQueued(); err != nil {
				fr.send(rxFrame{err: err, flushErr: true}) // the connection is closed
				return
			}
		}
		ss.waiting.Store(idle)
		h, err := transfer.ReadFrameHeader(ss.r, ss.chunkSize)
		ss.waiting.Store(false)
		if err != nil {
			fr.send(rxFrame{h: h, err: err})
			return
		}
		f := rxFrame{h: h}
		ahead := false
		switch h.Type {
		case transfer.FrameChunk:
			if f.buf = fr.buffer(ss); f.buf == nil {
				return
			}
			f.err = transfer.ReadChunk(ss.r, h, f.buf, &f.c)
			ahead = true
		case transfer.FrameZeroChunk, transfer.FrameOffer, transfer.FrameData, transfer.FrameTrailer, transfer.FrameEntry:
			if f.buf = fr.buffer(ss); f.buf == nil {
				return
			}
			f.p, f.err = transfer.ReadControl(ss.r, h, f.buf[:0])
			// A zero chunk is part of the data run, like a chunk.
			ahead = h.Type == transfer.FrameZeroChunk
		}
		// Any other frame is unexpected: the loop ends the session.
		if f.err != nil {
			f.err = noEOF(f.err)
		}
		if !fr.send(f) || f.err != nil {
			return
		}
		if !ahead {
			select {
			case <-fr.resume:
			case <-fr.quit:
				return
			}
		}
	}
}

// buffer returns a free buffer, waiting for the writer to give one back,
// or nil once the loop has ended.
func (fr *frameReader) buffer(ss *session) []byte {
	select {
	case b := <-ss.free:
		return b
	case <-fr.quit:
		return nil
	}
}

// send hands f to the loop; false once the loop has ended.
func (fr *frameReader) send(f rxFrame) bool {
	select {
	case fr.frames <- f:
		return true
	case <-fr.quit:
		return false
	}
}

// release gives back a buffer that is not to be written.
func (ss *session) release(buf []byte) {
	if buf != nil {
		ss.free <- buf
	}
}
