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
