package daemon

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// session is one connection: a Hello, then any number of transfers one
// after another. Its goroutine reads frames and writes verified chunks; a
// syncer goroutine per transfer fsyncs and acknowledges.
type session struct {
	srv  *Server
	conn net.Conn
	ip   string          // remote IP address counted for MaxSessionsPerIP; "" if not TCP
	in   *countingReader // conn, counting bytes for MinRate
	r    *bufio.Reader
	log  *slog.Logger
	wmu  sync.Mutex // serialises frames written to conn

	chunkSize int
	buf       []byte // one chunk frame, from the server's pool during a transfer

	intMu       sync.Mutex
	interrupted bool
	dropped     error // why the session was dropped mid-transfer (MinRate), or nil

	admitted bool // counted as active by the server; guarded by srv.mu

	reoffer *transfer.Offer // an offer that replaced an accepted transfer before its first chunk
}

func newSession(srv *Server, conn net.Conn) *session {
	in := &countingReader{r: conn}
	return &session{
		srv:  srv,
		conn: conn,
		ip:   remoteIP(conn),
		in:   in,
		// Chunk payloads bypass this buffer (bufio reads large requests
		// straight into the caller's slice), so it stays small: idle
		// connections are cheap.
		r:   bufio.NewReaderSize(in, 16<<10),
		log: srv.cfg.Logger.With("remote", conn.RemoteAddr().String()),
	}
}

// interrupt makes a blocked read return at once, for Shutdown.
func (ss *session) interrupt() {
	ss.intMu.Lock()
	ss.interrupted = true
	ss.intMu.Unlock()
	_ = ss.conn.SetReadDeadline(time.Now()) // fails only once closed, when reads fail anyway
}

// readDeadline arms the idle timeout for the next frame, unless the
// session was interrupted (then the past deadline set by interrupt stays).
func (ss *session) readDeadline() { ss.readDeadlineIn(ss.srv.cfg.IdleTimeout) }

func (ss *session) readDeadlineIn(d time.Duration) {
	ss.intMu.Lock()
	defer ss.intMu.Unlock()
	if !ss.interrupted {
		_ = ss.conn.SetReadDeadline(time.Now().Add(d)) // fails only once closed, when reads fail anyway
	}
}

// send writes one control frame, bounded by the idle timeout so that a
// peer that stops reading cannot pin the session. A failed write closes
// the connection (see writeFailed).
func (ss *session) send(m transfer.Message) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	err := ss.conn.SetWriteDeadline(time.Now().Add(ss.srv.cfg.IdleTimeout))
	if err == nil {
		err = transfer.WriteMessage(ss.conn, m)
	}
	if err != nil {
		ss.writeFailed()
	}
	return err
}

// writeFailed closes the connection after a failed write: the write may
// have put part of a frame on the wire, and nothing sent after it could
// be read as a frame. The receive loop then ends, flushing what is
// verified. Called with wmu held.
func (ss *session) writeFailed() {
	_ = ss.conn.Close() // the write's error is the one that matters
}

// refuse sends a refusal and logs it on one line.
func (ss *session) refuse(err error) {
	code := transfer.CodeOf(err)
	msg := err.Error()
	var re *transfer.RemoteError
	if errors.As(err, &re) {
		msg = re.Message
	}
	ss.log.Warn("refused", "code", code, "reason", msg)
	if err := ss.send(&transfer.RemoteError{Code: code, Message: msg}); err != nil {
		ss.log.Warn("sending refusal", "err", err)
	}
}

// refuseAndClose turns a connection away before its Hello: with a
// refusal when shutting down, silently when too many are pending (writing
// to each of a flood of clients would only feed it).
func (ss *session) refuseAndClose(full bool) {
	defer ss.conn.Close() //nolint:errcheck // turned away; nothing to report to
	if full {
		ss.log.Warn("connection dropped", "reason", "too many connections waiting for their hello")
		return
	}
	ss.refuse(&transfer.RemoteError{Code: transfer.CodeShuttingDown, Message: "daemon is shutting down; retry later"})
}

func (ss *session) run() {
	defer ss.conn.Close() //nolint:errcheck // the session is over and logged
	start := time.Now()
	n, err := ss.serve()
	reason := "closed by sender"
	if err != nil {
		reason = err.Error()
	}
	ss.log.Info("session ended", "transfers", n, "seconds", time.Since(start).Seconds(), "reason", reason)
}

// serve runs the handshake and the transfers, returning how many were
// committed and why the session ended (nil for a clean close).
func (ss *session) serve() (int, error) {
	if err := ss.handshake(); err != nil {
		return 0, err
	}
	committed := 0
	for {
		o := ss.reoffer
		ss.reoffer = nil
		if o == nil {
			ss.readDeadline()
			m, err := transfer.ReadMessage(ss.r)
			if errors.Is(err, io.EOF) {
				return committed, nil
			}
			if err != nil {
				return committed, ss.readFailed(err)
			}
			var ok bool
			if o, ok = m.(*transfer.Offer); !ok {
				err := fmt.Errorf("%w: expected offer, got %T", transfer.ErrProtocol, m)
				ss.refuse(err)
				return committed, err
			}
		}
		done, err := ss.transfer(o)
		if done {
			committed++
		}
		if err != nil {
			return committed, err
		}
	}
}

func (ss *session) handshake() error {
	ss.readDeadlineIn(min(ss.srv.cfg.HandshakeTimeout, ss.srv.cfg.IdleTimeout))
	m, err := transfer.ReadMessage(ss.r)
	if err != nil {
		return ss.readFailed(fmt.Errorf("reading hello: %w", err))
	}
	h, ok := m.(*transfer.Hello)
	if !ok {
		err := fmt.Errorf("%w: expected hello, got %T", transfer.ErrProtocol, m)
		ss.refuse(err)
		return err
	}
	if err := ss.srv.admit(ss); err != nil {
		ss.refuse(err)
		return err
	}
	// Both are powers of two (the Hello decoder and setDefaults see to
	// it), so the smaller is one too: every chunk is a complete BLAKE3
	// subtree, and a multiple of DirectAlign, so that every chunk but a
	// file's last can be written with direct I/O.
	ss.chunkSize = min(int(h.ChunkSize), ss.srv.cfg.MaxChunkSize)
	ss.log = ss.log.With("agent", h.Agent)
	return ss.send(&transfer.Hello{
		Major: transfer.ProtocolMajor, Minor: transfer.ProtocolMinor,
		ChunkSize: uint32(ss.chunkSize), Agent: ss.srv.cfg.Agent,
	})
}

// readFailed turns a read error into the reason the session ends, telling
// the peer why when it is still listening.
func (ss *session) readFailed(err error) error {
	var ne net.Error
	switch {
	case ss.srv.ctx.Err() != nil:
		err = context.Cause(ss.srv.ctx)
		ss.refuse(&transfer.RemoteError{Code: transfer.CodeShuttingDown, Message: "daemon is shutting down; retry later"})
	case ss.dropReason() != nil:
		err = ss.dropReason()
		_ = ss.send(&transfer.RemoteError{Code: transfer.CodeOf(err), Message: err.Error()}) // drop logged it; send closes on failure
	case errors.As(err, &ne) && ne.Timeout():
		err = fmt.Errorf("%w: no frame for %v", transfer.ErrTimeout, ss.srv.cfg.IdleTimeout)
		ss.refuse(err)
	case errors.Is(err, transfer.ErrProtocol) || errors.Is(err, transfer.ErrVersion):
		ss.refuse(err)
	}
	return err
}

// partialKey names the partial of a transfer: it binds the credential that
// started it and the destination name, so that one sender cannot write into
// another's transfer. There are no credentials yet; all share "".
func partialKey(credential, name string) string {
	h := transfer.HashBytes([]byte("ferry partial v1\x00" + credential + "\x00" + name))
	return hex.EncodeToString(h[:16])
}

// transfer handles one offer through commit. It returns whether the file
// was committed, and a non-nil error when the session must end. Refusals
// at offer time leave the session open for the next offer.
func (ss *session) transfer(o *transfer.Offer) (bool, error) {
	log := ss.log.With("name", o.Name, "size", o.Size) // slog escapes control characters and invalid UTF-8
	newDirs, err := ss.admit(o)
	if err != nil {
		ss.refuse(err)
		return false, nil
	}
	key := partialKey("", o.Name)
	if !ss.srv.hold(key, ss) {
		ss.refuse(fmt.Errorf("%w: %s is being received by another session; retry later", transfer.ErrBusy, transfer.QuoteName(o.Name)))
		return false, nil
	}
	defer ss.srv.release(key)
	// Before anything else looks at the partial: if a commit was cut
	// short after its link, its data file is the committed file, and must
	// never be resumed, truncated or written (issue 8).
	finished, err := ss.srv.cfg.Store.FinishCommit(key, o.Name)
	if err != nil {
		log.Error("finishing an interrupted commit", "err", err)
		ss.refuse(storageError("finishing an interrupted commit", err))
		return false, nil
	}
	if finished {
		log.Info("interrupted commit finished")
	}
	exists, err := ss.checkExists(o)
	if err != nil {
		ss.refuse(err)
		return false, nil
	}
	if exists {
		return ss.confirmCommitted(o, log)
	}
	p, restarted, err := ss.srv.cfg.Store.Open(key, o, ss.chunkSize, o.Flags&transfer.OfferRestart != 0)
	if err != nil {
		log.Error("opening partial", "err", err)
		ss.refuse(fmt.Errorf("%w: opening partial: %v", transfer.ErrInternal, err))
		return false, nil
	}
	defer func() {
		if err := p.Close(); err != nil {
			log.Error("closing partial", "err", err)
		}
	}()
	st := p.State()
	// New directories are counted as a block each, so that names cannot
	// fill the disk past the reservation either.
	remaining, dirs := o.Size-st.DurableOffset, int64(newDirs)*dirCost
	res := ss.srv.reserve(remaining, dirs)
	if res == nil {
		ss.refuse(fmt.Errorf("%w: %d bytes needed for %s", transfer.ErrNoSpace, remaining+dirs, transfer.QuoteName(o.Name)))
		return false, nil
	}
	defer res.release() // on every path: a failed Accept used to leak it (issue 8)
	tailOffset, tailHash := st.Tail()
	acc := &transfer.Accept{ChunkSize: uint32(st.Stack.ChunkSize()), DurableOffset: st.DurableOffset,
		TailOffset: tailOffset, TailLength: uint32(st.DurableOffset - tailOffset), TailHash: tailHash}
	if restarted {
		acc.Flags |= transfer.AcceptRestarted
		log.Info("partial discarded", "reason", "source changed")
	}
	if err := ss.send(acc); err != nil {
		return false, err
	}
	log.Info("transfer started", "resumed_from", st.DurableOffset)
	// The chunk buffer is held only while a transfer runs, so idle
	// sessions cost a read buffer, not a chunk.
	// Its data part is aligned for direct I/O (the slack pays for that).
	n := transfer.ChunkHeaderSize + ss.chunkSize
	pool := ss.srv.pool(n + DirectAlign)
	buf := pool.Get()
	at := alignedAt(*buf, transfer.ChunkHeaderSize)
	ss.buf = (*buf)[at : at+n : at+n]
	defer func() { ss.buf = nil; pool.Put(buf) }()
	start := time.Now()
	rx := newReceiver(ss, p, o, res)
	stopWatch := ss.watchRate(res)
	err = rx.run()
	stopWatch()
	if errors.Is(err, errReoffered) {
		return false, nil
	}
	attrs := []any{"resumed_from", st.DurableOffset, "durable_offset", rx.sync.durable(),
		"received_bytes", rx.received, "seconds", time.Since(start).Seconds()}
	if err != nil {
		log.Warn("transfer interrupted", append(attrs, "err", err)...)
		return false, err
	}
	log.Info("committed", attrs...)
	return true, nil
}

// confirmCommitted answers an offer for a file already committed under
// its name: it accepts at offset = size with the file's tail chunk, the
// sender checks that chunk and sends its whole-file hash as the trailer,
// and the daemon re-hashes the committed file. Equal: the sender is told
// Committed and nothing is written. Different: refused as exists. The
// committed file is never opened for writing.
func (ss *session) confirmCommitted(o *transfer.Offer, log *slog.Logger) (bool, error) {
	f, err := ss.srv.cfg.Store.OpenCommitted(o.Name)
	if err != nil {
		ss.refuse(fmt.Errorf("%w: opening %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err))
		return false, nil
	}
	defer f.Close() //nolint:errcheck // opened read-only
	var tailOffset int64
	if o.Size > 0 {
		tailOffset = (o.Size - 1) / int64(ss.chunkSize) * int64(ss.chunkSize)
	}
	tail := make([]byte, o.Size-tailOffset)
	if _, err := f.ReadAt(tail, tailOffset); err != nil {
		ss.refuse(fmt.Errorf("%w: reading %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err))
		return false, nil
	}
	tailHash, err := transfer.ChunkHash(tail, tailOffset, o.Size)
	if err != nil && o.Size > 0 {
		ss.refuse(fmt.Errorf("%w: hashing %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err))
		return false, nil
	}
	acc := &transfer.Accept{Flags: transfer.AcceptCommitted, ChunkSize: uint32(ss.chunkSize), DurableOffset: o.Size,
		TailOffset: tailOffset, TailLength: uint32(len(tail)), TailHash: tailHash}
	if err := ss.send(acc); err != nil {
		return false, err
	}
	t, err := ss.readTrailer()
	if errors.Is(err, errReoffered) {
		return false, nil // the sender's tail chunk differs: it offers a restart
	}
	if err != nil {
		return false, err
	}
	// The one case where the daemon re-reads a whole file, in parallel.
	h, err := transfer.HashAt(ss.srv.ctx, f, o.Size, ss.chunkSize, transfer.HashWorkers(ss.chunkSize))
	if err != nil {
		ss.refuse(fmt.Errorf("%w: hashing %s: %v", transfer.ErrInternal, transfer.QuoteName(o.Name), err))
		return false, nil
	}
	if h != t.Hash {
		ss.refuse(existsError(o.Name))
		return false, nil
	}
	log.Info("already committed", "resumed_from", o.Size, "received_bytes", 0)
	return true, ss.send(&transfer.Committed{Size: o.Size, Hash: h})
}

// readTrailer reads what a sender may send after an Accept at its file's
// end: the trailer, or a new offer that replaces this one (errReoffered).
// Anything else ends the session.
func (ss *session) readTrailer() (*transfer.Trailer, error) {
	ss.readDeadline()
	m, err := transfer.ReadMessage(ss.r)
	if err != nil {
		return nil, ss.readFailed(noEOF(err))
	}
	switch m := m.(type) {
	case *transfer.Trailer:
		return m, nil
	case *transfer.Offer:
		ss.reoffer = m
		return nil, errReoffered
	}
	err = fmt.Errorf("%w: expected trailer, got %T", transfer.ErrProtocol, m)
	ss.refuse(err)
	return nil, err
}

// errReoffered ends a transfer whose Accept the sender answered with a
// new offer; the session goes on with that offer.
var errReoffered = errors.New("offer replaced before the first chunk")

// receiver takes one transfer's chunks and trailer.
type receiver struct {
	ss       *session
	p        Partial
	o        *transfer.Offer
	stack    transfer.MergeStack // of the chunks in [0, next): the whole-file hash
	sync     *syncer
	next     int64        // offset of the next chunk expected
	awaiting bool         // a chunk was nacked; skip frames until it comes again
	bad      int          // chunks that failed verification
	received int64        // chunk data bytes read from the wire
	res      *reservation // disk space still promised to this transfer
	lastSync time.Time

	failed atomic.Bool // the transfer failed: no more acks
}

func newReceiver(ss *session, p Partial, o *transfer.Offer, res *reservation) *receiver {
	st := p.State()
	// The merge stack from the state record stands for the durable
	// prefix: no byte of it is read again (croc#1029 waited hours for a
	// re-read).
	rx := &receiver{ss: ss, p: p, o: o, res: res, stack: st.Stack, next: st.DurableOffset, lastSync: time.Now()}
	rx.sync = newSyncer(p, rx.point(), rx.ack)
	return rx
}

// point returns the sync point of the chunks received so far.
func (rx *receiver) point() syncPoint { return syncPoint{offset: rx.next, stack: rx.stack} }

// run reads frames until the trailer commits the file or the session
// breaks. On every exit path the verified data is made durable first.
func (rx *receiver) run() error {
	err := rx.loop()
	if err != nil {
		if !errors.Is(err, errReoffered) {
			// The sender stops reading once refused, so an ack could
			// block this flush until the write deadline: stop acks, and
			// cut short one being written.
			rx.failed.Store(true)
			_ = rx.ss.conn.SetWriteDeadline(time.Now()) // fails only once closed: nothing to cut
		}
		if ferr := rx.sync.flush(rx.point()); ferr != nil {
			rx.ss.log.Error("fsync after interruption", "err", ferr)
		}
	}
	return err
}

// readControl reads and decodes the payload of the control frame whose
// header h was just read, into the chunk buffer as scratch space.
func (ss *session) readControl(h transfer.FrameHeader) (transfer.Message, error) {
	p, err := transfer.ReadControl(ss.r, h, ss.buf[:0])
	if err != nil {
		return nil, ss.readFailed(err)
	}
	m, err := transfer.DecodeMessage(h.Type, p)
	if err != nil {
		return nil, ss.readFailed(err)
	}
	return m, nil
}

func (rx *receiver) loop() error {
	ss := rx.ss
	for {
		ss.readDeadline()
		h, err := transfer.ReadFrameHeader(ss.r, ss.chunkSize)
		if err != nil {
			return ss.readFailed(noEOF(err))
		}
		switch h.Type {
		case transfer.FrameChunk:
			var c transfer.Chunk
			if err := transfer.ReadChunk(ss.r, h, ss.buf, &c); err != nil {
				return ss.readFailed(err)
			}
			if err := rx.chunk(&c); err != nil {
				ss.refuse(err)
				return err
			}
		case transfer.FrameOffer:
			// A sender whose file does not match the partial's tail chunk
			// answers the Accept with a new offer (OfferRestart) instead
			// of a chunk.
			if rx.received > 0 {
				return ss.readFailed(fmt.Errorf("%w: offer in the middle of a transfer", transfer.ErrProtocol))
			}
			m, err := ss.readControl(h)
			if err != nil {
				return err
			}
			ss.reoffer = m.(*transfer.Offer)
			return errReoffered
		case transfer.FrameTrailer:
			m, err := ss.readControl(h)
			if err != nil {
				return err
			}
			if rx.awaiting {
				continue // the sender will resend the nacked chunk, then the trailer
			}
			err = rx.commit(m.(*transfer.Trailer))
			if err != nil {
				ss.refuse(err)
			}
			return err
		default:
			return ss.readFailed(fmt.Errorf("%w: unexpected %v frame during transfer", transfer.ErrProtocol, h.Type))
		}
	}
}

// ack tells the sender that durable offset d is durable, unless the
// transfer has failed (see run; TestIOFaultRefusalDuringSlowFsync).
func (rx *receiver) ack(d int64) {
	ss := rx.ss
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	err := ss.conn.SetWriteDeadline(time.Now().Add(ss.srv.cfg.IdleTimeout))
	// Checked after the deadline is set: either run's deadline comes
	// later and cuts this write short, or its flag is already visible.
	if rx.failed.Load() {
		return
	}
	if err == nil {
		err = transfer.WriteMessage(ss.conn, &transfer.Ack{DurableOffset: d})
	}
	if err != nil {
		// No more acks, and none after a torn one (TestAckWriteFailure).
		if !rx.failed.Swap(true) { // else run cut it short on purpose
			ss.log.Warn("writing ack", "durable_offset", d, "err", err)
		}
		ss.writeFailed()
	}
}

// chunk verifies one chunk and writes it. A chunk that fails verification
// is never written: the sender is told to resend from its offset.
func (rx *receiver) chunk(c *transfer.Chunk) error {
	n := int64(len(c.Data))
	rx.received += n
	if c.Offset != rx.next {
		if rx.awaiting {
			return nil // in flight before the sender saw the nack
		}
		return fmt.Errorf("%w: chunk at offset %d, expected %d", transfer.ErrProtocol, c.Offset, rx.next)
	}
	if cs := int64(rx.stack.ChunkSize()); n != min(cs, rx.o.Size-c.Offset) {
		return fmt.Errorf("%w: chunk [%d,+%d) of a file of %d bytes in %d-byte chunks", transfer.ErrProtocol, c.Offset, n, rx.o.Size, cs)
	}
	if !c.Verify(rx.o.Size) {
		rx.bad++
		rx.ss.log.Warn("chunk rejected", "offset", c.Offset, "reason", "BLAKE3 mismatch")
		if rx.bad > rx.ss.srv.cfg.MaxBadChunks {
			return fmt.Errorf("%w: %d chunks failed verification", transfer.ErrIntegrity, rx.bad)
		}
		rx.awaiting = true
		return rx.ss.send(&transfer.Nack{Offset: c.Offset})
	}
	rx.awaiting = false
	if err := rx.p.WriteAt(c.Data, c.Offset); err != nil {
		return storageError("writing chunk", err)
	}
	if err := rx.sync.failed(); err != nil {
		return storageError("fsync", err)
	}
	if err := rx.stack.Push(transfer.CV(c.Hash), n); err != nil {
		return fmt.Errorf("%w: %v", transfer.ErrInternal, err)
	}
	rx.next += n
	// The bytes now occupy disk, so free space reflects them: stop
	// promising them too.
	rx.res.consume(n)
	cfg := &rx.ss.srv.cfg
	if rx.next-rx.sync.requested() >= cfg.SyncBytes || time.Since(rx.lastSync) >= cfg.SyncInterval {
		rx.sync.request(rx.point())
		rx.lastSync = time.Now()
	}
	return nil
}

// commit checks the whole-file hash and commits, in DESIGN.md's order.
func (rx *receiver) commit(t *transfer.Trailer) error {
	if rx.next != rx.o.Size {
		return fmt.Errorf("%w: trailer at offset %d of %d", transfer.ErrProtocol, rx.next, rx.o.Size)
	}
	if err := rx.sync.flush(rx.point()); err != nil {
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
			err = rx.p.Sync(empty)
		}
		if err != nil {
			rx.ss.log.Error("resetting partial", "err", err)
		}
		return fmt.Errorf("%w: whole-file BLAKE3 %x, sender's %x", transfer.ErrIntegrity, h, t.Hash)
	}
	if err := rx.p.Commit(); err != nil {
		var left *leftoverError
		switch {
		case errors.As(err, &left):
			rx.ss.log.Warn("partial left behind", "err", err) // the file itself is committed
		case errors.Is(err, transfer.ErrExists) || errors.Is(err, transfer.ErrBadName):
			return err
		default:
			return storageError("commit", err)
		}
	}
	return rx.ss.send(&transfer.Committed{Size: rx.o.Size, Hash: h})
}

// storageError classifies a storage failure for the sender: no space is
// permanent for this attempt, anything else is an internal error worth a
// retry (the partial stays at its durable offset).
func storageError(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %s: %v", transfer.ErrNoSpace, what, err)
	}
	return fmt.Errorf("%w: %s: %v", transfer.ErrInternal, what, err)
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("sender closed the session mid-transfer: %w", io.ErrUnexpectedEOF)
	}
	return err
}
