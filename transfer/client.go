package transfer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// ClientOptions configure a sender session. The zero value is usable.
type ClientOptions struct {
	// ChunkSize is the chunk size in bytes proposed in the Hello, a power
	// of two from MinChunkSize to MaxChunkSize; the daemon may lower it.
	// Defaults to DefaultChunkSize.
	ChunkSize int
	// Agent names the sending software in the Hello, for the daemon's logs.
	Agent string
	// Timeout bounds every wait for the daemon when the connection can
	// set deadlines (a net.Conn can): each write must complete within it,
	// and a read fails when the daemon has sent nothing and taken no data
	// for that long. The wait for Committed gets more time when the daemon
	// must re-read data to hash it (see RehashRate). Zero means no
	// deadlines.
	Timeout time.Duration
	// Checksum has the daemon tell an already committed file by its
	// BLAKE3 (OfferChecksum) instead of by size and mtime: the sender
	// hashes its file, the daemon answers from the hash it recorded at
	// the commit or re-hashes its file. Default false (rsync's quick
	// check).
	Checksum bool
	// Update has the daemon replace a committed file of other content
	// under the name (OfferUpdate) instead of refusing it with
	// ErrExists. Default false.
	Update bool
	// Token is the secret the daemon authenticates this sender by, sent
	// in the Hello (protocol 2.2; only inside TLS on TCP); "" sends none.
	Token string
}

// RehashRate is the slowest rate, in bytes per second, at which the sender
// assumes a daemon re-reads data to hash it: after the Trailer of a
// transfer accepted as already committed (AcceptCommitted), which the
// daemon hashes again, the wait for Committed may last Timeout +
// size/RehashRate. A resumed partial needs no such wait: the daemon keeps
// its merge stack.
const RehashRate = 64 << 20

// Client is the sending end of one session. Transfers on a Client run one
// at a time; a Client is not safe for concurrent use.
type Client struct {
	rwc       io.ReadWriteCloser
	r         *bufio.Reader
	chunkSize int
	broken    error  // set once the session can carry no more transfers
	lastID    uint32 // the last transfer ID used in this session
	peerMinor uint16 // the daemon's protocol minor version
	// confirming is set while the daemon answers small files with
	// "already committed": their offers then go without data. A session
	// starts with it set, so that a re-run sends no data at all. The
	// first Accept of a small file that is not there clears it, unless
	// the daemon already answered some file of this session "already
	// committed" (sawAlready): then it stays set for the session, so that
	// the holes a cut run left in a tree do not send the committed files
	// after them again (the daemon's answers lag the offers by a round
	// trip and the data in flight). Offers without data cost a pipelined
	// round trip, not one per file.
	confirming bool
	sawAlready bool
	checksum   bool // ClientOptions.Checksum
	update     bool // ClientOptions.Update
	reading    atomic.Bool
}

// interruptRead ends a read of the daemon's messages in progress, which
// SendAll's reader goroutine is blocked in once every transfer settled.
func (c *Client) interruptRead() {
	c.reading.Store(true)
	if d, ok := c.rwc.(*deadlineConn); ok {
		d.heldUntil.Store(0) // no hold is in progress: SendAll's writer has returned
		_ = d.d.SetReadDeadline(time.Unix(1, 0))
	} else if d, ok := c.rwc.(deadliner); ok {
		_ = d.SetReadDeadline(time.Unix(1, 0))
	}
}

// resumeRead undoes interruptRead once the reader has stopped.
func (c *Client) resumeRead() {
	if !c.reading.Swap(false) {
		return
	}
	if d, ok := c.rwc.(*deadlineConn); ok {
		_ = d.d.SetReadDeadline(time.Time{})
	} else if d, ok := c.rwc.(deadliner); ok {
		_ = d.SetReadDeadline(time.Time{})
	}
}

// Handshake exchanges Hellos over rwc and returns a Client ready to Send.
// It returns an error wrapping ErrVersion if the daemon speaks another
// major version, or the daemon's *RemoteError if it refuses the session.
// It returns an error wrapping ErrNotFerry if the peer answers with bytes
// that are no ferry frame, and ErrInvalidConfig if opts.ChunkSize is not a
// power of two from MinChunkSize to MaxChunkSize. If ctx ends during the
// handshake, rwc is closed.
func Handshake(ctx context.Context, rwc io.ReadWriteCloser, opts ClientOptions) (*Client, error) {
	cs := opts.ChunkSize
	if cs == 0 {
		cs = DefaultChunkSize
	}
	if err := CheckChunkSize(cs); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	rwc = withDeadlines(rwc, opts.Timeout)
	stop := closeOnCancel(ctx, rwc)
	defer stop()
	agent := opts.Agent
	if len(agent) > maxAgent || !utf8.ValidString(agent) {
		agent = "ferry" // the agent is for logs only; never fail a session over it
	}
	if len(opts.Token) > MaxTokenLen || !utf8.ValidString(opts.Token) {
		return nil, fmt.Errorf("%w: a token is at most %d bytes of UTF-8", ErrInvalidConfig, MaxTokenLen)
	}
	hello := &Hello{Major: ProtocolMajor, Minor: ProtocolMinor, ChunkSize: uint32(cs), Agent: agent, Token: Secret(opts.Token)}
	if err := WriteMessage(rwc, hello); err != nil {
		return nil, ctxErr(ctx, err)
	}
	c := &Client{rwc: rwc, r: bufio.NewReaderSize(rwc, 64<<10), checksum: opts.Checksum, update: opts.Update, confirming: true}
	m, err := ReadMessage(c.r)
	if errors.Is(err, ErrProtocol) {
		// The first bytes are no Hello and no Refuse: whatever listens
		// there is not a ferry daemon, and asking again will not change it.
		return nil, fmt.Errorf("%w: reading daemon hello: %w", ErrNotFerry, err)
	}
	if err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("reading daemon hello: %w", err))
	}
	switch m := m.(type) {
	case *Hello:
		if int(m.ChunkSize) > cs {
			return nil, fmt.Errorf("%w: daemon chose chunk size %d above proposed %d", ErrProtocol, m.ChunkSize, cs)
		}
		c.chunkSize = int(m.ChunkSize)
		c.peerMinor = m.Minor
		return c, nil
	case *RemoteError:
		return nil, m
	default:
		return nil, fmt.Errorf("%w: expected hello, got %v", ErrProtocol, m.frameType())
	}
}

// Usable reports whether the session can carry another transfer: true
// unless a transfer failed past its offer (a refusal at offer time leaves
// the session usable).
func (c *Client) Usable() bool { return c.broken == nil }

// ChunkSize returns the negotiated chunk size in bytes.
func (c *Client) ChunkSize() int { return c.chunkSize }

// Close closes the session's connection.
func (c *Client) Close() error { return c.rwc.Close() }

// Progress is a snapshot of one transfer, passed to SendOptions.Progress.
type Progress struct {
	Size          int64 // bytes in the file
	ResumedFrom   int64 // durable offset the daemon accepted at
	Sent          int64 // offset up to which chunks are written to the session
	DurableOffset int64 // last durable offset the daemon acknowledged
	Restarted     bool  // the daemon's partial held other content and was discarded
}

// SendOptions configure one transfer.
type SendOptions struct {
	// Progress, if set, is called after each chunk is written and each
	// acknowledgement arrives, one call at a time (see Job.Progress). It
	// must return quickly.
	Progress func(Progress)
	// MaxNacks is how many times one chunk may be rejected by the daemon
	// before Send gives up with ErrIntegrity. Defaults to 3.
	MaxNacks int
}

// Result describes a committed transfer.
type Result struct {
	Size        int64 // bytes
	ResumedFrom int64 // durable offset the daemon accepted at
	SentBytes   int64 // chunk data bytes written in this session, resends included
	// DurableOffset is the last durable offset the daemon acknowledged,
	// also when Send fails: a retry resumes at least there. It is 0 when
	// the transfer started over (no partial is kept) or the file was
	// already committed (AlreadyCommitted: a committed file, no partial).
	DurableOffset int64
	Restarted     bool // a partial for this name held other content and was discarded
	// AlreadyCommitted says the daemon already held this file under the
	// name (AcceptCommitted) and confirmed it by its BLAKE3: no chunk was
	// sent.
	AlreadyCommitted bool
	// Unchanged, with AlreadyCommitted, says the daemon found a committed
	// file of the same size and mtime (CommittedUnchanged) and neither
	// side hashed it: Hash is all zeros.
	Unchanged bool
	Hash      Hash // whole-file BLAKE3, as b3sum prints it; zero when Unchanged

	accepted bool // the daemon accepted the offer: DurableOffset is known
}

// Send offers src under the remote name and sends it until the daemon
// commits it: SendAll with a window of one. It resumes from the daemon's
// durable offset after checking that the daemon's tail chunk matches src,
// and restarts from 0 when it does not. It returns the daemon's refusal
// as a *RemoteError (which matches ErrExists, ErrBadName, … with
// errors.Is), ErrIntegrity when a chunk was rejected more than MaxNacks
// times or the daemon's whole-file hash disagrees, ErrSourceChanged when
// src changed, or the I/O error that broke the session; after the latter
// the Client must not be reused (Usable). If ctx ends, the connection is
// closed. Every goroutine Send starts has ended when it returns.
func (c *Client) Send(ctx context.Context, src Source, name string, opts SendOptions) (Result, error) {
	job := &Job{Name: name, Src: src, Progress: opts.Progress}
	given, settled := false, false
	var ferr error
	next := func() (*Job, bool) {
		if given {
			return nil, false
		}
		given = true
		return job, true
	}
	_, _, err := c.SendAll(ctx, next, func(_ *Job, err error) { ferr, settled = err, true }, WindowOptions{Files: 1, MaxNacks: opts.MaxNacks})
	if err != nil && !settled {
		return job.Last, err
	}
	return job.Last, ctxErr(ctx, ferr)
}

// ctxErr prefers ctx's error over the I/O error that closing the
// connection on cancellation caused.
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return err
}
