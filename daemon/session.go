package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-dev/ferry/daemon/auth"
	"github.com/ferry-dev/ferry/transfer"
)

// session is one connection: a Hello, then any number of transfers one
// after another. A reader goroutine reads and decrypts frames
// (frameReader), the session's goroutine handles them and verifies
// chunks, a writer goroutine writes the chunks of the current data run
// (chunkWriter) and a syncer goroutine per transfer fsyncs and
// acknowledges.
type session struct {
	srv  *Server
	conn net.Conn
	ip   string          // remote IP address counted for MaxSessionsPerIP; "" if not TCP
	in   *countingReader // conn, counting bytes for MinRate
	r    *bufio.Reader
	// raw buffers the socket under a TLS connection once the Hello is
	// accepted (bufferReads); nil before, and without TLS.
	raw *bufio.Reader
	log *slog.Logger
	wmu sync.Mutex // serialises frames written to conn
	// queued holds answers of the receive loop not yet written
	// (sendQueued); guarded by wmu. queuing says the loop queued some
	// since its last flushQueued, so that the frame reader takes wmu
	// only then (a committer writing its answers holds it).
	queued  bytes.Buffer
	queuing atomic.Bool

	chunkSize int
	peerMinor uint16      // the sender's protocol minor version, from its Hello
	bufs      [][]byte    // the frame buffers, from the server's pool while the session runs
	free      chan []byte // the buffers of bufs that no reader, loop or writer holds
	writing   *receiver   // the receiver whose writer holds bufs, or nil

	intMu       sync.Mutex
	interrupted bool
	dropped     error // why the session was dropped mid-transfer (MinRate), or nil

	admitted bool // counted as active by the server; guarded by srv.mu

	// tok is the session's token, nil for an anonymous sender; set at the
	// handshake, read by the token file's poll. cred is its name ("" when
	// anonymous), which the partial keys bind.
	tok  atomic.Pointer[auth.Token]
	cred string

	// The transfers of the session (receive.go): open ones by ID, the
	// one whose data run the next chunks belong to, and the committer.
	transfers map[uint32]*rxTransfer
	byKey     map[string]*rxTransfer // every transfer holding a partial key, committing ones included
	cur       *rxTransfer
	lastID    uint32
	inFlight  atomic.Int64 // transfers offered and not settled
	receiving atomic.Int64 // open transfers waiting for data
	waiting   atomic.Bool  // the receive loop is about to wait for the network
	commits   *committer
	doneMu    sync.Mutex
	done      []*rxTransfer // committed by the committer, still in byKey
	stats     sessionStats
	plainDirs map[string]bool // directories checkNoSymlink found free of symlinks
}

// sessionStats counts a session's transfers for its log line.
type sessionStats struct {
	committed, refused, failed atomic.Int64
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

// buffered reports whether bytes of the next frames have arrived and wait
// in the session's buffers, so that reading them need not wait for the
// network (TLS's own buffer of one record is not seen).
func (ss *session) buffered() bool {
	return ss.r.Buffered() > 0 || (ss.raw != nil && ss.raw.Buffered() > 0)
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
	if ss.queued.Len() > 0 {
		_ = transfer.WriteMessage(&ss.queued, m) // a bytes.Buffer takes all
		return ss.writeQueued()
	}
	err := ss.conn.SetWriteDeadline(time.Now().Add(ss.srv.cfg.IdleTimeout))
	if err == nil {
		err = transfer.WriteMessage(ss.conn, m)
	}
	if err != nil {
		ss.writeFailed()
	}
	return err
}

// maxQueued is how many bytes of answers sendQueued holds back at most.
const maxQueued = 32 << 10

// sendQueued is send for the receive loop's own answers (called by the
// loop only) that need not go
// out at once (a quick check's Committed): they are written together
// with the next frame sent, when the loop is about to wait for the
// network (flushQueued), or once maxQueued bytes are held, so that a
// re-sent tree's answers go out many to a write (issue 9).
func (ss *session) sendQueued(m transfer.Message) error {
	ss.queuing.Store(true)
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	_ = transfer.WriteMessage(&ss.queued, m) // a bytes.Buffer takes all
	if ss.queued.Len() < maxQueued {
		return nil
	}
	return ss.writeQueued()
}

// flushQueued writes the answers sendQueued held back. Called by the
// frame reader (readFrames) when it is about to wait for the network.
func (ss *session) flushQueued() error {
	if !ss.queuing.Swap(false) {
		return nil
	}
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	if ss.queued.Len() == 0 {
		return nil
	}
	return ss.writeQueued()
}

// writeQueued writes and empties ss.queued. Called with wmu held.
func (ss *session) writeQueued() error {
	err := ss.conn.SetWriteDeadline(time.Now().Add(ss.srv.cfg.IdleTimeout))
	if err == nil {
		_, err = ss.conn.Write(ss.queued.Bytes())
	}
	ss.queued.Reset()
	if err != nil {
		ss.writeFailed()
		return fmt.Errorf("writing answers: %w", err)
	}
	return nil
}

// writeFailed closes the connection after a failed write: the write may
// have put part of a frame on the wire, and nothing sent after it could
// be read as a frame. The receive loop then ends, flushing what is
// verified. Called with wmu held.
func (ss *session) writeFailed() {
	_ = ss.conn.Close() // the write's error is the one that matters
}

// refuse sends a refusal, which ends the session, and logs it on one
// line. The session's open transfers are dropped first (dropOpen).
func (ss *session) refuse(err error) {
	ss.dropOpen(err)
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
// to each of a flood of clients would only feed it). The refusal is
// bounded by HandshakeTimeout: on a TLS connection its write first runs
// the TLS handshake, which a peer that sends nothing would otherwise hold
// open for good.
func (ss *session) refuseAndClose(full bool) {
	defer ss.conn.Close() //nolint:errcheck // turned away; nothing to report to
	if full {
		ss.log.Warn("connection dropped", "reason", "too many connections waiting for their hello")
		return
	}
	_ = ss.conn.SetDeadline(time.Now().Add(ss.srv.cfg.HandshakeTimeout)) // fails only once closed, when the refusal fails anyway
	ss.refuse(&transfer.RemoteError{Code: transfer.CodeShuttingDown, Message: "daemon is shutting down; retry later"})
}

func (ss *session) run() {
	defer ss.conn.Close() //nolint:errcheck // the session is over and logged
	start := time.Now()
	err := ss.serve()
	reason := "closed by sender"
	if err != nil {
		reason = err.Error()
	}
	ss.log.Info("session ended", "transfers", ss.stats.committed.Load(), "refused", ss.stats.refused.Load(),
		"failed", ss.stats.failed.Load(), "seconds", time.Since(start).Seconds(), "reason", reason)
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
	tok, err := ss.srv.authenticate(ss, string(h.Token))
	if err != nil {
		ss.refuse(err)
		return err
	}
	tokenName := "-"
	if tok != nil {
		ss.cred, tokenName = tok.Name, tok.Name
	}
	ss.log = ss.log.With("token", tokenName, "agent", h.Agent)
	if err := ss.srv.admit(ss); err != nil {
		ss.refuse(err)
		return err
	}
	if tok != nil {
		// Published after the last write of ss.log, which the token
		// file's poll reads (drop) once it sees the token. A token
		// revoked since authenticate is caught here.
		ss.tok.Store(tok)
		if err := ss.srv.checkToken(tok); err != nil {
			ss.refuse(err)
			return err
		}
	}
	// Both are powers of two (the Hello decoder and setDefaults see to
	// it), so the smaller is one too: every chunk is a complete BLAKE3
	// subtree, and a multiple of DirectAlign, so that every chunk but a
	// file's last can be written with direct I/O.
	ss.chunkSize = min(int(h.ChunkSize), ss.srv.cfg.MaxChunkSize)
	ss.peerMinor = h.Minor
	// Accepted: from here on the session reads many TLS records per
	// read system call (a pending connection holds no buffer).
	ss.raw = bufferReads(ss.conn)
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
		ss.dropOpen(err)
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
// another's transfer: credential is the token's name, "" for an anonymous
// sender (whose keys are those of the daemons before tokens).
func partialKey(credential, name string) string {
	h := transfer.HashBytes([]byte("ferry partial v1\x00" + credential + "\x00" + name))
	return hex.EncodeToString(h[:16])
}

// storageError turns a storage failure, classified by the store, into
// what the sender hears: no space is permanent for this attempt, anything
// else is an internal error worth a retry (the partial stays at its
// durable offset).
func storageError(what string, err error) error {
	if errors.Is(err, transfer.ErrNoSpace) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%w: %s: %v", transfer.ErrInternal, what, err)
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("sender closed the session mid-transfer: %w", io.ErrUnexpectedEOF)
	}
	return err
}
