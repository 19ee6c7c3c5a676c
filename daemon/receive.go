package daemon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// The receive loop of protocol 2: one session carries a window of
// transfers. Offers arrive ahead of data; a data run (an Offer with
// OfferData, or a Data frame, then chunks, then a Trailer) carries one
// transfer's chunks at a time; each transfer is answered as it settles,
// and files whose trailer verified are committed in groups by the
// session's committer (commit.go). docs/PROTOCOL.md describes it.

// rxTransfer is one transfer of a session.
type rxTransfer struct {
	id      uint32
	o       *transfer.Offer
	key     string
	log     *slog.Logger
	start   time.Time
	p       Partial      // nil when confirming an already committed file, or refused
	res     *reservation // nil when p is nil
	rx      *receiver
	confirm bool // the name holds a committed file of the offer's size and mtime
	skip    bool // refused: the frames of its data run are dropped
	held    bool // holds key on the server
	// lost is closed when the lock on key is lost (a lease taken over):
	// the transfer stops writing at the next chunk.
	lost <-chan struct{}
	// committed is set by the committer once the transfer settled there
	// and gave back its key.
	committed atomic.Bool
	hash      transfer.Hash
}

// serve runs the handshake and the transfers, until the sender closes the
// session (nil) or it fails.
func (ss *session) serve() error {
	if err := ss.handshake(); err != nil {
		return err
	}
	ss.transfers = make(map[uint32]*rxTransfer)
	ss.byKey = make(map[string]*rxTransfer)
	ss.commits = newCommitter(ss)
	// The frame buffers are held while the session runs. Their data
	// parts are aligned for direct I/O (the slack pays for that). A
	// frame reader goroutine reads and decrypts frames into them ahead of
	// this one (readFrames), which verifies chunks and hands them to a
	// writer goroutine (chunkWriter): one buffer is read while the next
	// is verified and the ones before are written.
	n := transfer.ChunkHeaderSize + ss.chunkSize
	pool := ss.srv.pool(n + DirectAlign)
	ss.bufs = make([][]byte, frameBuffers(ss.chunkSize))
	ss.free = make(chan []byte, len(ss.bufs))
	for i := range ss.bufs {
		buf := pool.Get()
		defer pool.Put(buf)
		at := alignedAt(*buf, transfer.ChunkHeaderSize)
		ss.bufs[i] = (*buf)[at : at+n : at+n]
		ss.free <- ss.bufs[i]
	}
	stopWatch := ss.watchRate(func() bool { return ss.receiving.Load() > 0 })
	fr := newFrameReader(len(ss.bufs))
	go fr.run(ss)
	err := ss.loop(fr)
	// The reader may be blocked in a read: interrupt it (no read
	// follows), and wait for it before the buffers go back.
	close(fr.quit)
	ss.interrupt()
	<-fr.done
	stopWatch()
	if err != nil {
		// The session is over and its peer may have stopped reading:
		// answers still due (Committed for files whose commit is under
		// way) would only block. Their files commit all the same, and a
		// sender that offers them again is told so.
		_ = ss.conn.SetWriteDeadline(time.Now()) // fails only once closed
	}
	// Whatever ended the session, verified data is made durable: open
	// transfers flush, and the files whose trailers verified commit.
	ss.dropOpen(err)
	ss.commits.close()
	if ss.writing != nil { // not reached: the transfer it writes for was open
		_ = ss.writing.stopWriter()
	}
	ss.bufs, ss.free = nil, nil
	return err
}

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

func (ss *session) loop(fr *frameReader) error {
	for {
		f := <-fr.frames
		h := f.h
		if f.err != nil {
			ss.release(f.buf)
			switch {
			case f.flushErr:
				return f.err // the connection is closed
			case errors.Is(f.err, io.EOF):
				return nil
			}
			return ss.readFailed(f.err)
		}
		switch h.Type {
		case transfer.FrameChunk:
			if err := ss.chunk(&f.c, ss.writer(), f.buf); err != nil {
				return err
			}
		case transfer.FrameZeroChunk:
			m, err := transfer.DecodeMessage(h.Type, f.p)
			ss.release(f.buf)
			if err != nil {
				return ss.readFailed(err)
			}
			if err := ss.zeroChunk(m.(*transfer.ZeroChunk), ss.writer()); err != nil {
				return err
			}
		case transfer.FrameOffer, transfer.FrameData, transfer.FrameTrailer, transfer.FrameEntry:
			// The data run's chunks are written before a trailer is
			// checked, a transfer dropped or a partial opened again.
			ss.stopWriting()
			m, err := transfer.DecodeMessage(h.Type, f.p)
			ss.release(f.buf) // messages keep no part of their payload
			if err != nil {
				return ss.readFailed(err)
			}
			switch m := m.(type) {
			case *transfer.Offer:
				err = ss.offer(m)
			case *transfer.Data:
				err = ss.data(m)
			case *transfer.Trailer:
				err = ss.trailer(m)
			case *transfer.Entry:
				err = ss.entry(m)
			}
			if err != nil {
				ss.refuse(err)
				return err
			}
			fr.resume <- struct{}{}
		default:
			return ss.readFailed(fmt.Errorf("%w: unexpected %v frame from a sender", transfer.ErrProtocol, h.Type))
		}
	}
}

// writer returns the receiver of the current data run with its writer
// started, or nil when the run's chunks are not written (none, refused,
// or an already committed file).
func (ss *session) writer() *receiver {
	t := ss.cur
	if t == nil || t.skip || t.confirm || t.rx == nil {
		return nil
	}
	rx := t.rx
	if ss.writing != rx {
		ss.stopWriting() // not reached: ss.cur changes only at control frames
		rx.w = newChunkWriterOn(rx.p, rx.sync, rx.point(), ss.free)
		ss.writing = rx
	}
	return rx
}

// stopWriting waits until the chunks of the current data run are written
// and ends its writer. A failed write fails its transfer, and the rest of
// its run is dropped; the session goes on.
func (ss *session) stopWriting() {
	rx := ss.writing
	if rx == nil {
		return
	}
	if err := rx.stopWriter(); err != nil {
		ss.failRun(rx.t, storageError("writing chunk", err))
	}
}

// failRun fails t and the session goes on: when t's data run is the
// current one, the rest of the run is dropped.
func (ss *session) failRun(t *rxTransfer, err error) {
	cur := ss.cur == t
	ss.dropTransfer(t, err)
	ss.refuseTransfer(t, err)
	if cur {
		ss.cur = &rxTransfer{id: t.id, skip: true}
	}
}

// chunkDone acts on what handing a chunk (or zero chunk) of t, the
// current run's transfer, to its receiver returned: a protocol violation
// ends the session (and is returned); any other error fails only t.
func (ss *session) chunkDone(t *rxTransfer, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, transfer.ErrProtocol):
		ss.refuse(err)
		return err
	}
	ss.failRun(t, err)
	return nil
}

// chunk hands a chunk, read into buf, to the transfer of the current data
// run. rx is what writer returned. buf goes back to the session's free
// buffers once written, or at once when the chunk is not written.
func (ss *session) chunk(c *transfer.Chunk, rx *receiver, buf []byte) error {
	t := ss.cur
	if t == nil {
		ss.release(buf)
		err := fmt.Errorf("%w: chunk outside a data run", transfer.ErrProtocol)
		ss.refuse(err)
		return err
	}
	if t.skip || t.confirm || t.rx.awaiting && c.Offset != t.rx.next || rx == nil {
		ss.release(buf)
		return nil // refused, already committed, or in flight before the sender saw a nack
	}
	return ss.chunkDone(t, t.rx.chunk(c, buf))
}

// zeroChunk hands a zero chunk (a hole) to the transfer of the current
// data run, as chunk does a chunk; rx is what writer returned.
func (ss *session) zeroChunk(z *transfer.ZeroChunk, rx *receiver) error {
	t := ss.cur
	if t == nil {
		err := fmt.Errorf("%w: zero chunk outside a data run", transfer.ErrProtocol)
		ss.refuse(err)
		return err
	}
	if t.skip || t.confirm || t.rx.awaiting && z.Offset != t.rx.next || rx == nil {
		return nil // as for a chunk
	}
	return ss.chunkDone(t, rx.zero(z))
}

// offer admits a transfer. A refusal leaves the session open; the data
// run an OfferData offer opens is then skipped.
func (ss *session) offer(o *transfer.Offer) error {
	if old, ok := ss.transfers[o.ID]; ok && o.Flags&transfer.OfferRestart != 0 && ss.cur != old &&
		(old.confirm || old.rx != nil && old.rx.received == 0) {
		// The sender's file does not match the partial's tail chunk: it
		// offers a restart in place of the first chunk.
		ss.dropTransfer(old, nil)
	} else if _, open := ss.transfers[o.ID]; open {
		return fmt.Errorf("%w: offer of transfer %d, which is open", transfer.ErrProtocol, o.ID)
	}
	ss.lastID = max(ss.lastID, o.ID)
	ss.forgetCommitted()
	if ss.inFlight.Load() >= transfer.MaxWindowFiles {
		return fmt.Errorf("%w: more than %d transfers in flight", transfer.ErrProtocol, transfer.MaxWindowFiles)
	}
	ss.cur = nil
	o.Name = ss.scoped(o.Name)
	t := &rxTransfer{id: o.ID, o: o, key: partialKey(ss.cred, o.Name), start: time.Now(),
		log: ss.log.With("name", o.Name, "size", o.Size)} // slog escapes control characters and invalid UTF-8
	speculative := o.Flags&transfer.OfferData != 0
	if speculative {
		ss.cur = t
	}
	ss.inFlight.Add(1)
	if err := ss.admitTransfer(t); err != nil {
		if errors.Is(err, errSessionBroken) {
			return nil // the write failed; the next read ends the session
		}
		// Released before the refusal is written: a sender that
		// retries on it must not find the name busy.
		ss.settled(t)
		if !errors.Is(err, errUnchanged) {
			ss.refuseTransfer(t, err)
		}
		t.skip = true
		return nil
	}
	ss.transfers[t.id] = t
	if t.rx != nil {
		ss.receiving.Add(1)
	}
	return nil
}

// errUnchanged says the offer was answered Committed{CommittedUnchanged}:
// nothing more to do for it (a speculative run's frames are skipped).
var errUnchanged = errors.New("unchanged")

// errSessionBroken says an answer could not be written: the connection is
// closed, and the receive loop ends at its next read.
var errSessionBroken = errors.New("session broken")

// admitTransfer runs the offer-time checks and opens the partial. It
// returns the refusal to send, if any.
func (ss *session) admitTransfer(t *rxTransfer) error {
	o := t.o
	speculative := o.Flags&transfer.OfferData != 0
	newDirs, err := ss.admit(o)
	if err != nil {
		return err
	}
	if other := ss.byKey[t.key]; other != nil && other.committed.Load() {
		delete(ss.byKey, t.key)
	} else if other != nil {
		if _, open := ss.transfers[other.id]; !open {
			return fmt.Errorf("%w: %s is being committed; retry later", transfer.ErrBusy, transfer.QuoteName(o.Name))
		}
		// Offered again in this session: the sender gave up on the
		// earlier transfer of the name (its source changed, say).
		ss.dropTransfer(other, nil)
	}
	if err := ss.srv.hold(t.key, ss); errors.Is(err, ErrLocked) {
		return fmt.Errorf("%w: %s is being received by another session; retry later", transfer.ErrBusy, transfer.QuoteName(o.Name))
	} else if err != nil {
		return fmt.Errorf("%w: taking the lock on %s: %v; retry later", transfer.ErrInternal, transfer.QuoteName(o.Name), err)
	}
	t.held = true
	t.lost = ss.srv.lost(t.key)
	ss.byKey[t.key] = t
	// Before anything else looks at the partial: if a commit was cut
	// short after its link, its data file is the committed file, and must
	// never be resumed, truncated or written (issue 8).
	finished, err := ss.srv.cfg.Store.FinishCommit(t.key, o.Name)
	if err != nil {
		t.log.Error("finishing an interrupted commit", "err", err)
		return storageError("finishing an interrupted commit", err)
	}
	if finished {
		t.log.Info("interrupted commit finished")
	}
	exists, sameMtime, replaces, err := ss.checkExists(o)
	if err != nil {
		return err
	}
	if exists {
		// A 2.0 sender expects AcceptCommitted and sends its trailer:
		// the quick check is for senders of minor 1 on. A file of the
		// same size but another mtime (touched) is compared by hash.
		if sameMtime && o.Flags&transfer.OfferChecksum == 0 && ss.peerMinor >= 1 {
			return ss.unchanged(t)
		}
		t.confirm = true
		if speculative {
			return nil // its chunks are dropped; its trailer is compared
		}
		return ss.acceptCommitted(t)
	}
	if err := ss.srv.checkQuota(ss.tok.Load(), t.key, o.Size, replaces); err != nil {
		return err
	}
	p, restarted, err := ss.srv.cfg.Store.Open(t.key, o, ss.chunkSize, o.Flags&transfer.OfferRestart != 0 || speculative)
	if err != nil {
		t.log.Error("opening partial", "err", err)
		return fmt.Errorf("%w: opening partial: %v", transfer.ErrInternal, err)
	}
	if r, ok := p.(RemoteRecorder); ok {
		r.SetRemote(ss.conn.RemoteAddr().String())
	}
	if r, ok := p.(TokenRecorder); ok {
		r.SetToken(ss.cred)
	}
	st := p.State()
	// New directories are counted as a block each, so that names cannot
	// fill the disk past the reservation either.
	remaining, dirs := o.Size-st.DurableOffset, int64(newDirs)*dirCost
	res := ss.srv.reserve(remaining, dirs)
	if res == nil {
		if err := p.Close(); err != nil {
			t.log.Error("closing partial", "err", err)
		}
		if mf := ss.srv.cfg.MinFree; mf > 0 {
			return fmt.Errorf("%w: %d bytes needed for %s would leave less than the daemon's minimum of %d bytes free",
				transfer.ErrNoSpace, remaining+dirs, transfer.QuoteName(o.Name), mf)
		}
		return fmt.Errorf("%w: %d bytes needed for %s", transfer.ErrNoSpace, remaining+dirs, transfer.QuoteName(o.Name))
	}
	if err := preallocate(p, res, remaining); err != nil {
		res.release()
		if err := p.Close(); err != nil {
			t.log.Error("closing partial", "err", err)
		}
		return err
	}
	t.p, t.res = p, res
	t.rx = newReceiver(ss, t)
	if restarted && !speculative {
		t.log.Info("partial discarded", "reason", "source changed")
	}
	t.log.Info("transfer started", "resumed_from", st.DurableOffset)
	if speculative {
		return nil
	}
	tailOffset, tailHash := st.Tail()
	acc := &transfer.Accept{ID: t.id, ChunkSize: uint32(st.Stack.ChunkSize()), DurableOffset: st.DurableOffset,
		TailOffset: tailOffset, TailLength: uint32(st.DurableOffset - tailOffset), TailHash: tailHash}
	if restarted {
		acc.Flags |= transfer.AcceptRestarted
	}
	if a := t.rx.align; a > 0 && ss.peerMinor >= 3 && o.Size-st.DurableOffset > a {
		// A store of whole parts (protocol 2.3): the sender sends at most
		// one part past the durable offset acknowledged, so that a daemon
		// that dies costs it at most one part resent, whatever the
		// sockets on the way hold (docs/SCALE-OUT.md).
		acc.Window = a
	}
	if err := ss.send(acc); err != nil {
		ss.transfers[t.id] = t // dropped with the session
		return errSessionBroken
	}
	return nil
}

// unchanged answers an offer without OfferChecksum for a file already
// committed under its name with the offered size and mtime (rsync's quick
// check): Committed{CommittedAlready|CommittedUnchanged} at once, without
// reading the file. The daemon applied the sender's mtime at the commit,
// so a retry after a commit whose Committed was lost matches too. Logged
// at debug level only: a re-run of a large tree logs no line per file.
func (ss *session) unchanged(t *rxTransfer) error {
	t.log.Debug("unchanged", "received_bytes", 0)
	ss.stats.committed.Add(1)
	if err := ss.sendQueued(&transfer.Committed{ID: t.id, Flags: transfer.CommittedAlready | transfer.CommittedUnchanged,
		Size: t.o.Size}); err != nil {
		return errSessionBroken
	}
	return errUnchanged
}

// acceptCommitted answers an offer (not speculative) for a file already
// committed under its name: it accepts at offset = size with the file's
// tail chunk; the sender checks that chunk and sends its trailer, which
// trailer compares with the file's hash.
func (ss *session) acceptCommitted(t *rxTransfer) error {
	o := t.o
	f, err := ss.srv.cfg.Store.OpenCommitted(o.Name)
	if err != nil {
		return fmt.Errorf("%w: opening %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err)
	}
	defer f.Close() //nolint:errcheck // opened read-only
	var tailOffset int64
	if o.Size > 0 {
		tailOffset = (o.Size - 1) / int64(ss.chunkSize) * int64(ss.chunkSize)
	}
	tail := make([]byte, o.Size-tailOffset)
	if _, err := f.ReadAt(tail, tailOffset); err != nil {
		return fmt.Errorf("%w: reading %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err)
	}
	tailHash, err := transfer.ChunkHash(tail, tailOffset, o.Size)
	if err != nil && o.Size > 0 {
		return fmt.Errorf("%w: hashing %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err)
	}
	acc := &transfer.Accept{ID: t.id, Flags: transfer.AcceptCommitted, ChunkSize: uint32(ss.chunkSize), DurableOffset: o.Size,
		TailOffset: tailOffset, TailLength: uint32(len(tail)), TailHash: tailHash}
	if err := ss.send(acc); err != nil {
		ss.transfers[t.id] = t
		return errSessionBroken
	}
	return nil
}

// data opens a data run of an accepted transfer.
func (ss *session) data(m *transfer.Data) error {
	t, ok := ss.transfers[m.ID]
	if !ok || t.rx == nil {
		if m.ID <= ss.lastID && !ok {
			// A transfer refused or failed meanwhile: skip its run.
			ss.cur = &rxTransfer{id: m.ID, skip: true}
			return nil
		}
		return fmt.Errorf("%w: data run of transfer %d, which is not open", transfer.ErrProtocol, m.ID)
	}
	if m.Offset != t.rx.next {
		return fmt.Errorf("%w: data run of transfer %d at offset %d, expected %d", transfer.ErrProtocol, m.ID, m.Offset, t.rx.next)
	}
	t.rx.awaiting = false
	ss.cur = t
	return nil
}

// trailer ends a data run and queues its transfer for commit once its
// whole-file hash matches; for an already committed file it compares.
func (ss *session) trailer(m *transfer.Trailer) error {
	t := ss.cur
	if t == nil || t.id != m.ID {
		// A trailer outside a run: only for an already committed file
		// accepted without data.
		t2, ok := ss.transfers[m.ID]
		if !ok || !t2.confirm {
			return fmt.Errorf("%w: trailer of transfer %d outside its data run", transfer.ErrProtocol, m.ID)
		}
		t = t2
	}
	ss.cur = nil
	switch {
	case t.skip:
		return nil
	case t.confirm:
		ss.confirmCommitted(t, m.Hash)
		return nil
	case t.rx.awaiting:
		return nil // the sender resends from the rejected chunk, then its trailer
	}
	if t.rx.next != t.o.Size {
		return fmt.Errorf("%w: trailer at offset %d of %d", transfer.ErrProtocol, t.rx.next, t.o.Size)
	}
	if err := t.rx.finish(m); err != nil {
		ss.dropTransfer(t, err)
		ss.refuseTransfer(t, err)
		return nil
	}
	ss.forget(t)
	ss.commits.add(t)
	return nil
}

// confirmCommitted re-hashes the committed file at t's name: equal, the
// sender is told Committed and nothing is written; different, refused
// as exists. The committed file is never opened for writing.
func (ss *session) confirmCommitted(t *rxTransfer, sent transfer.Hash) {
	o := t.o
	ss.forget(t)
	h, err := ss.committedHash(o)
	// Released before the answer is written, as dropTransfer is.
	ss.settled(t)
	if err != nil {
		ss.refuseTransfer(t, err)
		return
	}
	if h != sent {
		ss.refuseTransfer(t, existsError(o.Name))
		return
	}
	t.log.Debug("already committed", "resumed_from", o.Size, "received_bytes", 0) // unchanged: no INFO line per file on a re-run
	ss.stats.committed.Add(1)
	ss.srv.met.ended(outcomeUnchanged)
	_ = ss.send(&transfer.Committed{ID: t.id, Flags: transfer.CommittedAlready, Size: o.Size, Hash: h}) // a failed write ends the session
}

// committedHash returns the BLAKE3 of the committed file that o names:
// the one recorded at its commit, if it still describes the file;
// otherwise the one case where the daemon re-reads a whole file, in
// parallel. Errors wrap transfer.ErrInternal.
func (ss *session) committedHash(o *transfer.Offer) (transfer.Hash, error) {
	f, err := ss.srv.cfg.Store.OpenCommitted(o.Name)
	if err != nil {
		return transfer.Hash{}, fmt.Errorf("%w: opening %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err)
	}
	defer f.Close() //nolint:errcheck // opened read-only
	h, ok := storedHash(f, o.Size, o.MtimeNs)
	if !ok {
		h, err = transfer.HashAt(ss.srv.ctx, f, o.Size, ss.chunkSize, transfer.HashWorkers(ss.chunkSize))
	}
	if err != nil {
		return transfer.Hash{}, fmt.Errorf("%w: hashing %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err)
	}
	return h, nil
}

// refuseTransfer refuses one transfer and logs it; the session goes on.
func (ss *session) refuseTransfer(t *rxTransfer, err error) {
	code := transfer.CodeOf(err)
	msg := err.Error()
	var re *transfer.RemoteError
	if errors.As(err, &re) {
		msg = re.Message
	}
	log := t.log
	if log == nil {
		log = ss.log
	}
	log.Warn("refused", "code", code, "reason", msg)
	ss.srv.met.refused(code)
	switch code {
	case transfer.CodeInternal, transfer.CodeIntegrity, transfer.CodeNoSpace:
		ss.stats.failed.Add(1)
	default:
		ss.stats.refused.Add(1)
	}
	if err := ss.send(&transfer.RemoteError{ID: t.id, Code: code, Message: msg}); err != nil {
		ss.log.Warn("sending refusal", "err", err)
	}
}

// drop ends an open transfer that will not commit in this session: its
// verified data is made durable (the next attempt resumes after it) and
// everything it holds is given back. why is logged, when not nil.
// Callers drop a transfer before they refuse it: a sender that retries at
// once on the refusal then finds the name free and the durable offset
// final, never CodeBusy.
func (ss *session) dropTransfer(t *rxTransfer, why error) {
	ss.forget(t)
	if ss.cur == t {
		ss.cur = nil
	}
	if t.rx != nil {
		t.rx.stop()
		if why != nil {
			secs := time.Since(t.start).Seconds()
			t.log.Warn("transfer interrupted", "resumed_from", t.rx.resumedFrom, "durable_offset", t.rx.sync.durable(),
				"received_bytes", t.rx.received, "seconds", secs, "rate", int64(float64(t.rx.received)/max(secs, 1e-9)), "err", why)
		}
	}
	if t.p != nil {
		if err := t.p.Close(); err != nil {
			t.log.Error("closing partial", "err", err)
		}
	}
	ss.settled(t)
}

// dropOpen drops every open transfer of a session that is ending because
// of why: each is counted interrupted, made durable and released. The
// session's last answer (a refusal) is written after it, so that a sender
// that retries on that answer finds its names free. Called by the
// session's goroutine, which owns ss.transfers.
func (ss *session) dropOpen(why error) {
	for _, t := range ss.transfers {
		ss.srv.met.ended(outcomeInterrupted)
		ss.dropTransfer(t, why)
	}
}

// forget takes t out of the open transfers.
func (ss *session) forget(t *rxTransfer) {
	if ss.transfers[t.id] == t {
		delete(ss.transfers, t.id)
		if t.rx != nil {
			ss.receiving.Add(-1)
		}
	}
}

// settled gives back what t holds once it is answered or dropped.
func (ss *session) settled(t *rxTransfer) {
	if t.res != nil {
		t.res.release()
	}
	if t.held {
		t.held = false
		ss.srv.release(t.key)
	}
	if ss.byKey[t.key] == t {
		delete(ss.byKey, t.key)
	}
	ss.inFlight.Add(-1)
}

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
