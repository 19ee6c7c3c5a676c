package daemon

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// The receiver: one transfer's chunks, verified, queued to the chunk
// writer, synced and acknowledged, up to its trailer.

// receiver takes one transfer's chunks.
type receiver struct {
	ss          *session
	t           *rxTransfer
	p           Partial
	o           *transfer.Offer
	stack       transfer.MergeStack // of the chunks in [0, next): the whole-file hash
	sync        *syncer
	w           *chunkWriter // writes verified chunks behind the reads during a data run; nil between runs
	written     syncPoint    // every chunk up to here was written, once w is stopped
	werr        error        // the first failed write
	asked       int64        // offset of the last sync point handed to w
	next        int64        // offset of the next chunk expected
	awaiting    bool         // a chunk was nacked; skip chunks until a data run from next
	bad         int          // chunks that failed verification
	received    int64        // chunk data bytes read from the wire
	resumedFrom int64
	lastSync    time.Time
	align       int64 // the partial's SyncAlign, or 0

	failed atomic.Bool // the transfer failed: no more acks
}

func newReceiver(ss *session, t *rxTransfer) *receiver {
	p := t.p
	st := p.State()
	// The merge stack from the state record stands for the durable
	// prefix: no byte of it is read again (croc#1029 waited hours for a
	// re-read).
	rx := &receiver{ss: ss, t: t, p: p, o: t.o, stack: st.Stack, next: st.DurableOffset,
		asked: st.DurableOffset, resumedFrom: st.DurableOffset, lastSync: time.Now()}
	rx.written = rx.point()
	if a, ok := p.(SyncAligner); ok {
		rx.align = a.SyncAlign()
	}
	rx.sync = newSyncer(p, rx.point(), rx.ack)
	rx.sync.met = ss.srv.met
	return rx
}

// point returns the sync point of the chunks received so far.
func (rx *receiver) point() syncPoint { return syncPoint{offset: rx.next, stack: rx.stack} }

// stopWriter waits until every queued chunk is written and ends the
// writer of the data run, if one runs. It returns the first write error
// of the transfer; only the data before it is ever made durable.
func (rx *receiver) stopWriter() error {
	if rx.w != nil {
		written, err := rx.w.stop()
		rx.w = nil
		if rx.ss.writing == rx {
			rx.ss.writing = nil
		}
		rx.written = written
		if rx.werr == nil {
			rx.werr = err
		}
	}
	return rx.werr
}

// stop ends the transfer's background work: its writer, then its syncer,
// after a last flush of the data written.
func (rx *receiver) stop() {
	// The sender may have stopped reading, so an ack could block this
	// flush until the write deadline: no more acks.
	rx.failed.Store(true)
	// Only what was written may become durable: after a failed write
	// the verified chunks behind it were not.
	if err := rx.stopWriter(); err != nil {
		rx.ss.log.Error("writing chunk", "err", err)
	}
	if ferr := rx.sync.flush(rx.written); ferr != nil {
		rx.ss.log.Error("fsync after interruption", "err", ferr)
	}
	_ = rx.sync.stop() // reported by the flush
}

// ack tells the sender that durable offset d is durable, unless the
// transfer has failed (TestIOFaultRefusalDuringSlowFsync).
func (rx *receiver) ack(d int64) {
	if rx.failed.Load() {
		return
	}
	if err := rx.ss.send(&transfer.Ack{ID: rx.t.id, DurableOffset: d}); err != nil {
		rx.failed.Store(true) // no more acks, and none after a torn one (TestAckWriteFailure)
		rx.ss.log.Warn("writing ack", "durable_offset", d, "err", err)
	}
}

// chunk verifies one chunk, read into buf, and queues it to be written;
// buf goes back to rx.w either way. A chunk that fails verification is
// never written: the sender is told to resend from its offset.
func (rx *receiver) chunk(c *transfer.Chunk, buf []byte) error {
	queued := false
	defer func() {
		if !queued {
			rx.ss.release(buf)
		}
	}()
	n := int64(len(c.Data))
	rx.received += n
	rx.ss.srv.met.received(n)
	if c.Offset != rx.next {
		return fmt.Errorf("%w: chunk at offset %d, expected %d", transfer.ErrProtocol, c.Offset, rx.next)
	}
	if cs := int64(rx.stack.ChunkSize()); n != min(cs, rx.o.Size-c.Offset) {
		return fmt.Errorf("%w: chunk [%d,+%d) of a file of %d bytes in %d-byte chunks", transfer.ErrProtocol, c.Offset, n, rx.o.Size, cs)
	}
	if !c.Verify(rx.o.Size) {
		return rx.reject(c.Offset)
	}
	if err := rx.accept(c.Hash, n); err != nil {
		return err
	}
	j := writeJob{buf: buf, data: c.Data, off: c.Offset, pt: rx.point()}
	queued = true
	rx.queue(j)
	return nil
}

// reject answers a chunk at off that failed verification with a Nack, or
// fails the transfer after too many.
func (rx *receiver) reject(off int64) error {
	rx.bad++
	rx.ss.srv.met.chunkRejected()
	rx.t.log.Warn("chunk rejected", "offset", off, "reason", "BLAKE3 mismatch")
	if rx.bad > rx.ss.srv.cfg.MaxBadChunks {
		return fmt.Errorf("%w: %d chunks failed verification", transfer.ErrIntegrity, rx.bad)
	}
	rx.awaiting = true
	if err := rx.ss.send(&transfer.Nack{ID: rx.t.id, Offset: off}); err != nil {
		return fmt.Errorf("%w: %v", transfer.ErrProtocol, err) // the session is broken
	}
	return nil
}

// accept takes a verified chunk of n bytes whose hash is h into the
// merge stack, once no write or fsync of the transfer has failed.
func (rx *receiver) accept(h transfer.Hash, n int64) error {
	select {
	case <-rx.t.lost:
		return fmt.Errorf("%w: the lock on %s was lost (another daemon may hold it now); retry", transfer.ErrInternal, transfer.QuoteName(rx.o.Name))
	default:
	}
	if err := rx.w.failed(); err != nil {
		return storageError("writing chunk", err)
	}
	if err := rx.sync.failed(); err != nil {
		return storageError("fsync", err)
	}
	if err := rx.stack.Push(transfer.CV(h), n); err != nil {
		return fmt.Errorf("%w: %v", transfer.ErrInternal, err)
	}
	rx.next += n
	// The bytes are about to occupy disk (or, for a hole, never will), so
	// free space reflects them: stop promising them too.
	rx.t.res.consume(n)
	return nil
}

// zero verifies a zero chunk, whose hash the daemon computes from zeros
// at its offset, and queues the hole: the writer extends the data file
// over it without writing.
func (rx *receiver) zero(z *transfer.ZeroChunk) error {
	n := int64(z.Length)
	if z.Offset != rx.next {
		return fmt.Errorf("%w: zero chunk at offset %d, expected %d", transfer.ErrProtocol, z.Offset, rx.next)
	}
	if cs := int64(rx.stack.ChunkSize()); n != min(cs, rx.o.Size-z.Offset) {
		return fmt.Errorf("%w: zero chunk [%d,+%d) of a file of %d bytes in %d-byte chunks", transfer.ErrProtocol, z.Offset, n, rx.o.Size, cs)
	}
	if h, err := transfer.ZeroChunkHash(z.Offset, int(n), rx.o.Size); err != nil || h != z.Hash {
		return rx.reject(z.Offset)
	}
	if err := rx.accept(z.Hash, n); err != nil {
		return err
	}
	rx.queue(writeJob{off: z.Offset, hole: n, pt: rx.point()})
	return nil
}

// queue hands j, a verified chunk or hole, to the writer, asking for a
// sync point on the way when one is due.
func (rx *receiver) queue(j writeJob) {
	cfg := &rx.ss.srv.cfg
	// A file that arrives whole in one run needs no state record: the
	// group commit makes it durable. Only a longer transfer syncs on
	// its way, so that a cut resumes. The writer hands the sync point to
	// the syncer once the chunk is written.
	due := rx.next-rx.asked >= cfg.SyncBytes || time.Since(rx.lastSync) >= cfg.SyncInterval
	if rx.align > 0 {
		// A store of whole parts: a sync at every part boundary, and
		// only there, since it can reach no further.
		due = rx.next%rx.align == 0
	}
	if rx.next < rx.o.Size && due {
		j.sync = true
		rx.asked = rx.next
		rx.lastSync = time.Now()
	}
	rx.w.write(j)
}

// finish checks the whole-file hash at the trailer. On a mismatch the
// partial's durable offset is reset to 0, so the next attempt starts over.
func (rx *receiver) finish(t *transfer.Trailer) error {
	// The session stopped the writer before it read the trailer: every
	// chunk is in the partial before the group commit's fsync.
	if err := rx.stopWriter(); err != nil {
		return storageError("writing chunk", err)
	}
	if err := rx.sync.stop(); err != nil {
		return storageError("fsync", err)
	}
	h, err := rx.stack.Sum(rx.o.Size)
	if err != nil {
		return fmt.Errorf("%w: whole-file hash: %v", transfer.ErrInternal, err)
	}
	if h != t.Hash {
		// Every chunk verified, yet the whole does not: the stored prefix
		// is not what was sent. Start the next attempt from zero.
		empty, err := transfer.NewMergeStack(rx.stack.ChunkSize())
		if err == nil {
			_, err = rx.p.Sync(empty)
		}
		if err != nil {
			rx.t.log.Error("resetting partial", "err", err)
		}
		return fmt.Errorf("%w: whole-file BLAKE3 %x, sender's %x", transfer.ErrIntegrity, h, t.Hash)
	}
	rx.t.hash = h
	return nil
}
