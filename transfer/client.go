package transfer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
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
	streaming bool  // the current transfer has passed its offer
	broken    error // set once the session can carry no more transfers
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
	hello := &Hello{Major: ProtocolMajor, Minor: ProtocolMinor, ChunkSize: uint32(cs), Agent: agent}
	if err := WriteMessage(rwc, hello); err != nil {
		return nil, ctxErr(ctx, err)
	}
	c := &Client{rwc: rwc, r: bufio.NewReaderSize(rwc, 64<<10)}
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
	// Progress, if set, is called from Send's goroutine after each chunk is
	// written and each acknowledgement arrives. It must return quickly.
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
	Hash             Hash // whole-file BLAKE3, as b3sum prints it

	accepted bool // the daemon accepted the offer: DurableOffset is known
}

// Send offers src under the remote name and sends it until the daemon
// commits it. It resumes from the daemon's durable offset after checking
// that the daemon's tail chunk matches src, and restarts from 0 when it
// does not. It returns the daemon's refusal as a *RemoteError (which
// matches ErrExists, ErrBadName, … with errors.Is), ErrIntegrity when a
// chunk was rejected more than MaxNacks times or the daemon's whole-file
// hash disagrees, ErrSourceChanged when src shrank, or the I/O error that
// broke the session. After any error other than a refusal at offer time the
// Client must not be reused. If ctx ends, the connection is closed.
// Every goroutine Send starts has ended when it returns.
func (c *Client) Send(ctx context.Context, src Source, name string, opts SendOptions) (Result, error) {
	if c.broken != nil {
		return Result{}, fmt.Errorf("session unusable: %w", c.broken)
	}
	setSlack(c.rwc, 0)
	defer setSlack(c.rwc, 0)
	stop := closeOnCancel(ctx, c.rwc)
	defer stop()
	if opts.MaxNacks == 0 {
		opts.MaxNacks = 3
	}
	if len(name) > MaxNameLen {
		// The daemon would refuse it too, but the frame could not even
		// carry a name this long.
		return Result{}, fmt.Errorf("%w: remote name is %d bytes, the limit is %d", ErrBadName, len(name), MaxNameLen)
	}
	res, err := c.send(ctx, src, name, opts)
	var re *RemoteError
	if err != nil && !(errors.As(err, &re) && !c.streaming) {
		c.broken = err
	}
	return res, ctxErr(ctx, err)
}

func (c *Client) send(ctx context.Context, src Source, name string, opts SendOptions) (Result, error) {
	c.streaming = false
	offer, err := src.offer(name)
	if err != nil {
		return Result{}, err
	}
	acc, err := c.offer(offer)
	if err != nil {
		return Result{}, err
	}
	res := Result{Size: src.Size, Restarted: acc.Flags&AcceptRestarted != 0, DurableOffset: acc.DurableOffset, accepted: true}
	if acc.Flags&AcceptCommitted != 0 {
		res.DurableOffset = 0 // a committed file, not a partial
	}
	if ok, err := c.tailMatches(src, acc); err != nil {
		return res, err
	} else if !ok {
		offer.Flags |= OfferRestart
		if acc, err = c.offer(offer); err != nil {
			return res, err
		}
		if acc.DurableOffset != 0 {
			return res, fmt.Errorf("%w: restart accepted at offset %d", ErrProtocol, acc.DurableOffset)
		}
		res.Restarted = true
		res.DurableOffset = 0
	}
	res.ResumedFrom = acc.DurableOffset
	c.streaming = true
	s := newStream(ctx, c, src, acc, opts)
	s.progress.Restarted = res.Restarted
	res.SentBytes, res.Hash, err = s.run()
	res.DurableOffset = s.progress.DurableOffset
	if acc.Flags&AcceptCommitted != 0 {
		res.DurableOffset = 0
		res.AlreadyCommitted = err == nil && res.SentBytes == 0
	}
	return res, err
}

// offer writes o and reads the daemon's answer.
func (c *Client) offer(o *Offer) (*Accept, error) {
	if err := WriteMessage(c.rwc, o); err != nil {
		return nil, err
	}
	m, err := ReadMessage(c.r)
	if err != nil {
		return nil, fmt.Errorf("reading answer to offer: %w", err)
	}
	switch m := m.(type) {
	case *Accept:
		if m.DurableOffset > o.Size {
			return nil, fmt.Errorf("%w: accepted at %d beyond size %d", ErrProtocol, m.DurableOffset, o.Size)
		}
		if int(m.ChunkSize) > c.chunkSize {
			return nil, fmt.Errorf("%w: accepted with chunk size %d above the session's %d", ErrProtocol, m.ChunkSize, c.chunkSize)
		}
		if m.DurableOffset < o.Size && m.DurableOffset%int64(m.ChunkSize) != 0 {
			return nil, fmt.Errorf("%w: accepted at %d, not a multiple of chunk size %d", ErrProtocol, m.DurableOffset, m.ChunkSize)
		}
		return m, nil
	case *RemoteError:
		return nil, m
	}
	return nil, fmt.Errorf("%w: expected accept, got %v", ErrProtocol, m.frameType())
}

// tailMatches checks the daemon's tail chunk against src, so that a source
// that changed since the partial was made is caught before a byte is
// appended to it.
func (c *Client) tailMatches(src Source, acc *Accept) (bool, error) {
	if acc.DurableOffset == 0 {
		return true, nil
	}
	buf := make([]byte, acc.TailLength)
	if err := src.readFull(buf, acc.TailOffset); err != nil {
		return false, err
	}
	h, err := ChunkHash(buf, acc.TailOffset, src.Size)
	if err != nil {
		return false, err
	}
	return h == acc.TailHash, nil
}

// ctxErr prefers ctx's error over the I/O error that closing the
// connection on cancellation caused.
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return err
}

// stream sends one transfer's chunks from a start offset: HashChunks reads
// and hashes chunks on several goroutines ahead of the writer, a reader
// goroutine takes the daemon's acks and nacks, and run (the writer) puts
// chunks on the wire in order and starts again from a rejected chunk
// (go-back-N). The chunk chaining values build the whole-file hash
// (wholeHash).
type stream struct {
	ctx       context.Context
	c         *Client
	src       Source
	opts      SendOptions
	chunkSize int  // this transfer's, from the Accept
	rehash    bool // the daemon re-hashes the file before Committed (AcceptCommitted)
	whole     *wholeHash
	inbox     chan Message
	readErr   chan error
	progress  Progress
	nacks     map[int64]int
	sentBytes int64
}

func newStream(ctx context.Context, c *Client, src Source, acc *Accept, opts SendOptions) *stream {
	start := acc.DurableOffset
	s := &stream{
		ctx: ctx, c: c, src: src, opts: opts,
		chunkSize: int(acc.ChunkSize),
		rehash:    acc.Flags&AcceptCommitted != 0,
		inbox:     make(chan Message, 16),
		readErr:   make(chan error, 1),
		progress:  Progress{Size: src.Size, ResumedFrom: start, Sent: start, DurableOffset: start},
		nacks:     make(map[int64]int),
	}
	return s
}

func (s *stream) run() (sent int64, h Hash, err error) {
	ctx, cancel := context.WithCancel(s.ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.readLoop(ctx)
	}()
	off := s.progress.ResumedFrom
	// Hash the prefix the daemon already has while chunks past it go
	// out; cancelled with this attempt, not left re-reading.
	s.whole, err = newWholeHash(ctx, sourceReader{s.src}, off, s.src.Size, s.chunkSize)
	if err != nil {
		cancel()
		_ = s.c.rwc.Close() // unblocks the reader; err is the one to report
		wg.Wait()
		return 0, Hash{}, err
	}
	defer func() {
		// Join every goroutine of the transfer before returning. After
		// Committed or a refusal the reader has stopped by itself; after
		// any other error the session is broken, and closing it is what
		// ends a read in progress.
		cancel()
		if err != nil {
			_ = s.c.rwc.Close() // unblocks the reader; err is the one to report
		}
		wg.Wait()
		s.whole.wait()
	}()
	for {
		err := s.sendFrom(ctx, off)
		if err == nil {
			var done bool
			var h Hash
			done, h, off, err = s.finish(ctx)
			if done || err != nil {
				return s.sentBytes, h, err
			}
			continue
		}
		var n *nackError
		if !errors.As(err, &n) {
			return s.sentBytes, Hash{}, err
		}
		off = n.offset
	}
}

type nackError struct{ offset int64 }

func (e *nackError) Error() string { return fmt.Sprintf("chunk at offset %d rejected", e.offset) }

// sendFrom writes chunks from off to the end of the file, hashed on
// HashWorkers goroutines ahead of the socket (HashChunks), with at most
// HashWorkers+1 chunk buffers. Between chunks it handles what the daemon sent. It
// returns a *nackError when the daemon rejected a chunk meanwhile.
func (s *stream) sendFrom(ctx context.Context, off int64) error {
	return HashChunks(ctx, sourceReader{s.src}, off, s.src.Size, s.chunkSize, HashWorkers(s.chunkSize), func(o int64, data []byte, cv CV) error {
		n := int64(len(data))
		s.whole.push(o, n, cv)
		if err := WriteChunk(s.c.rwc, &Chunk{Offset: o, Hash: Hash(cv), Data: data}); err != nil {
			return s.writeFailed(err)
		}
		s.sentBytes += n
		s.progress.Sent = o + n
		s.report()
		for {
			select {
			case m := <-s.inbox:
				if err := s.handle(m); err != nil {
					return err
				}
			case err := <-s.readErr:
				s.drainInbox()
				return err
			default:
				return nil
			}
		}
	})
}

// sourceReader reads a Source for HashChunks: a short read means the
// source shrank (ErrSourceChanged).
type sourceReader struct{ src Source }

func (r sourceReader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.src.readFull(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// finish sends the trailer and waits for the commit. If the daemon rejects
// a chunk that was still in flight, it returns done=false and the offset to
// resend from.
func (s *stream) finish(ctx context.Context) (done bool, h Hash, resend int64, err error) {
	if s.whole.done != nil {
		holdReads(ctx, s.c.rwc, s.whole.done) // the wait is on this side
	}
	h, err = s.whole.sum(ctx)
	if err != nil {
		return false, h, 0, err
	}
	if s.src.Changed != nil {
		changed, err := s.src.Changed()
		if err != nil {
			return false, h, 0, fmt.Errorf("checking the source before the trailer: %w", err)
		}
		if changed {
			return false, h, 0, fmt.Errorf("%w: modified while it was being sent; the next attempt starts over", ErrSourceChanged)
		}
	}
	// The daemon re-reads an already committed file to hash it before it
	// answers (RehashRate); allow for that on top of the timeout. A
	// partial's hash comes from its merge stack, with no re-read.
	if s.rehash {
		setSlack(s.c.rwc, time.Duration(float64(s.src.Size)/RehashRate*float64(time.Second)))
	}
	if err := WriteMessage(s.c.rwc, &Trailer{Hash: h}); err != nil {
		return false, h, 0, s.writeFailed(err)
	}
	for {
		var m Message
		select {
		case m = <-s.inbox:
		case err := <-s.readErr:
			s.drainInbox()
			return false, h, 0, err
		}
		if cm, ok := m.(*Committed); ok {
			if cm.Hash != h || cm.Size != s.src.Size {
				return false, h, 0, fmt.Errorf("%w: daemon committed %d bytes with BLAKE3 %x, sent %d bytes with %x",
					ErrIntegrity, cm.Size, cm.Hash, s.src.Size, h)
			}
			s.progress.DurableOffset = cm.Size
			s.report()
			return true, h, 0, nil
		}
		err := s.handle(m)
		var n *nackError
		if errors.As(err, &n) {
			return false, h, n.offset, nil
		}
		if err != nil {
			return false, h, 0, err
		}
	}
}

// refusalWait is how long a failed write waits for the refusal that
// usually explains it: a daemon that refuses mid-transfer closes the
// session, and the sender's next write fails before it reads why.
const refusalWait = 2 * time.Second

// writeFailed returns the daemon's refusal if one arrives shortly after a
// write failed, and err otherwise, so that the user sees "no space" or
// "integrity" (and the right exit code) rather than "broken pipe".
func (s *stream) writeFailed(err error) error {
	timer := time.NewTimer(refusalWait)
	defer timer.Stop()
	for {
		select {
		case m := <-s.inbox:
			if re, ok := m.(*RemoteError); ok {
				return re
			}
			s.absorb(m)
		case <-s.readErr: //nolint:errcheck // the write's error is the one to report
			s.drainInbox()
			return err
		case <-timer.C:
			return err
		}
	}
}

// absorb applies an acknowledgement that arrives while the transfer is
// failing: the progress it reports is real, and the caller's retry logic
// counts on it (Result.DurableOffset). Other messages no longer matter.
func (s *stream) absorb(m Message) {
	if a, ok := m.(*Ack); ok && a.DurableOffset > s.progress.DurableOffset && a.DurableOffset <= s.src.Size {
		s.progress.DurableOffset = a.DurableOffset
	}
}

// drainInbox absorbs the messages the reader queued before it failed.
func (s *stream) drainInbox() {
	for {
		select {
		case m := <-s.inbox:
			s.absorb(m)
		default:
			return
		}
	}
}

// handle acts on a message from the daemon during a transfer.
func (s *stream) handle(m Message) error {
	switch m := m.(type) {
	case *Ack:
		if m.DurableOffset < s.progress.DurableOffset || m.DurableOffset > s.src.Size {
			return fmt.Errorf("%w: ack of durable offset %d after %d", ErrProtocol, m.DurableOffset, s.progress.DurableOffset)
		}
		s.progress.DurableOffset = m.DurableOffset
		s.report()
		return nil
	case *Nack:
		if m.Offset < s.progress.DurableOffset || m.Offset >= max(s.src.Size, 1) {
			return fmt.Errorf("%w: nack at offset %d", ErrProtocol, m.Offset)
		}
		s.nacks[m.Offset]++
		if s.nacks[m.Offset] > s.opts.MaxNacks {
			return fmt.Errorf("%w: chunk at offset %d rejected %d times", ErrIntegrity, m.Offset, s.nacks[m.Offset])
		}
		return &nackError{offset: m.Offset}
	case *RemoteError:
		return m
	}
	return fmt.Errorf("%w: unexpected %v during transfer", ErrProtocol, m.frameType())
}

func (s *stream) report() {
	if s.opts.Progress != nil {
		s.opts.Progress(s.progress)
	}
}

// readLoop forwards the daemon's messages to inbox until the session ends
// or the transfer commits or is refused.
func (s *stream) readLoop(ctx context.Context) {
	for {
		m, err := ReadMessage(s.c.r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("daemon closed the session: %w", io.ErrUnexpectedEOF)
			}
			s.readErr <- err
			return
		}
		select {
		case s.inbox <- m:
		case <-ctx.Done():
			return
		}
		switch m.(type) {
		case *Committed, *RemoteError:
			return
		}
	}
}
