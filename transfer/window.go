package transfer

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Window bounds: how much one session keeps in flight. docs/PROTOCOL.md
// ("The window") explains them.
const (
	// DefaultWindowFiles is the most transfers a sender keeps in flight
	// (offered and not yet settled) on one session. The daemon refuses a
	// session that opens more than MaxWindowFiles.
	DefaultWindowFiles = 1024
	// MaxWindowFiles is the most transfers in flight the daemon allows
	// per session.
	MaxWindowFiles = 1024
	// DefaultWindowBytes is how many chunk data bytes of unsettled
	// transfers may be on the wire before the sender waits for answers
	// to start another file. A file already streaming is not held back.
	DefaultWindowBytes = 64 << 20
)

// Job is one file for Client.SendAll: an open source and its remote name.
type Job struct {
	Name string
	Src  Source
	// Progress, if set, is called after each chunk is written and each
	// answer about the job arrives, one call at a time, from SendAll's
	// goroutines with the window's lock held: it must return quickly and
	// not call the Client.
	Progress func(Progress)
	// Tag is the caller's; SendAll does not look at it.
	Tag any

	// Last holds what the daemon reported for this job so far, also
	// when the session failed before it settled.
	Last Result
}

// WindowOptions configure Client.SendAll.
type WindowOptions struct {
	// Files bounds the transfers in flight. Defaults to
	// DefaultWindowFiles; at most MaxWindowFiles.
	Files int
	// Bytes bounds the unsettled chunk data before a new file starts.
	// Defaults to DefaultWindowBytes.
	Bytes int64
	// MaxNacks is how many times one chunk may be rejected before its
	// file fails with ErrIntegrity. Defaults to 3.
	MaxNacks int
}

// flight is one transfer in flight on a session.
type flight struct {
	id          uint32
	job         *Job
	offer       *Offer
	speculative bool // its data went out with its offer (OfferData)

	acc       *Accept
	chunkSize int // this transfer's: the Accept's, or the session's for a speculative one
	restarted bool
	resumed   int64
	whole     *wholeHash
	hash      Hash
	hashed    bool
	sent      int64 // chunk data bytes written, this session
	durable   int64
	nacks     map[int64]int
	rerun     int64 // offset to send a new data run from; -1 when none is due
	trailer   bool  // the trailer of the last run is out
	progress  Progress
	committed *Committed
	err       error // the file's own failure, once settled
}

// window is one SendAll call's state, shared by the writer (the caller's
// goroutine) and the reader goroutine.
type window struct {
	c    *Client
	ctx  context.Context
	opts WindowOptions

	mu   sync.Mutex
	kick chan struct{} // cap 1: something changed
	// moved is broadcast (with mu) when a durable offset grows, a
	// flight is nacked or settles, or the session fails: what a writer
	// waiting for room in a durable window (awaitWindow) waits for.
	moved    sync.Cond
	flights  map[uint32]*flight
	ready    []*flight // accepted, waiting for their data run
	reruns   []*flight // nacked, waiting for a data run from rerun
	settled  []*flight
	unsent   int64 // chunk bytes of unsettled flights
	sessErr  error
	lastID   uint32
	slack    time.Duration
	progress bool // some transfer committed or moved a durable offset
	hashers  []*wholeHash

	// out buffers the writer's frames, so that a tree's offers go out
	// many to a write (issue 9); outSince is when its oldest unflushed
	// byte was buffered. Used by the writer goroutine only.
	out      *bufio.Writer
	outSince time.Time
}

// SendAll sends files over the session, keeping a window of transfers in
// flight: offers, and the data of files of at most one chunk, go out
// without waiting for the daemon, which answers each transfer as it
// settles. next returns the next job (false when there are none); it may
// block. settle is called, from SendAll's goroutine, once per job as it
// settles: with a nil error once the daemon committed it, or with the
// file's own failure (the daemon's refusal of it, ErrIntegrity,
// ErrSourceChanged). The session's failure, if any, is returned together
// with the jobs that did not settle (their Last says how far they got);
// after it the Client must not be reused. progressed reports whether
// the session committed a file or moved a durable offset. Every
// goroutine SendAll starts has ended when it returns.
func (c *Client) SendAll(ctx context.Context, next func() (*Job, bool), settle func(*Job, error),
	opts WindowOptions) (unsettled []*Job, progressed bool, err error) {
	if c.broken != nil {
		return nil, false, fmt.Errorf("session unusable: %w", c.broken)
	}
	if opts.Files <= 0 || opts.Files > MaxWindowFiles {
		opts.Files = DefaultWindowFiles
	}
	if opts.Bytes <= 0 {
		opts.Bytes = DefaultWindowBytes
	}
	if opts.MaxNacks <= 0 {
		opts.MaxNacks = 3
	}
	setSlack(c.rwc, 0)
	defer setSlack(c.rwc, 0)
	stop := closeOnCancel(ctx, c.rwc)
	defer stop()
	actx, cancel := context.WithCancel(ctx)
	w := &window{c: c, ctx: actx, opts: opts,
		kick: make(chan struct{}, 1), flights: make(map[uint32]*flight), lastID: c.lastID}
	w.out = bufio.NewWriterSize(windowWriter{w}, outBuffer)
	w.moved.L = &w.mu
	stopWake := context.AfterFunc(actx, func() {
		w.mu.Lock()
		w.moved.Broadcast()
		w.mu.Unlock()
	})
	defer stopWake()
	var wg sync.WaitGroup
	wg.Add(1)
	readDone := make(chan struct{})
	go func() {
		defer wg.Done()
		defer close(readDone)
		w.readLoop()
	}()
	err = w.run(next, settle)
	if err != nil && ctx.Err() == nil {
		// A daemon that refuses closes the session, and a write fails
		// before the refusal is read: give the reader a moment to
		// deliver it, so that the user sees why (and the right exit code).
		t := time.NewTimer(refusalWait)
		select {
		case <-readDone:
		case <-t.C:
		}
		t.Stop()
		w.mu.Lock()
		var re *RemoteError
		if errors.As(w.sessErr, &re) {
			err = re
		}
		done := w.settled
		w.settled = nil
		w.mu.Unlock()
		for _, f := range done {
			f.job.Last = f.result()
			settle(f.job, f.err)
		}
	}
	c.lastID = w.lastID
	if err != nil {
		c.broken = err
		_ = c.rwc.Close() // unblocks the reader; err is the one to report
	} else {
		// All settled: the reader waits for a frame that will not come
		// until the next SendAll. Hand it over by ending it with the
		// attempt: a read deadline in the past, then a fresh one.
		c.interruptRead()
	}
	cancel()
	joined := make(chan struct{})
	go func() {
		wg.Wait()
		close(joined)
	}()
	for waiting := true; waiting; {
		select {
		case <-joined:
			waiting = false
		case <-time.After(5 * time.Millisecond):
			if err == nil {
				c.interruptRead() // the reader may have armed a new deadline since
			}
		}
	}
	c.resumeRead()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, h := range w.hashers {
		h.wait()
	}
	for _, f := range w.flights {
		f.job.Last = f.result()
		unsettled = append(unsettled, f.job)
	}
	// Oldest first, so that a retry keeps the walk's order.
	ids := make(map[*Job]uint32, len(w.flights))
	for id, f := range w.flights {
		ids[f.job] = id
	}
	slices.SortFunc(unsettled, func(a, b *Job) int { return cmp.Compare(ids[a], ids[b]) })
	return unsettled, w.progress, ctxErr(ctx, err)
}

func (f *flight) result() Result {
	r := Result{Size: f.job.Src.Size, ResumedFrom: f.resumed, SentBytes: f.sent, DurableOffset: f.durable,
		Restarted: f.restarted, accepted: f.acc != nil || f.committed != nil}
	if f.acc != nil && f.acc.Flags&AcceptCommitted != 0 {
		r.DurableOffset = 0
	}
	if f.committed != nil {
		r.DurableOffset = 0
		r.Hash = f.committed.Hash
		r.AlreadyCommitted = f.committed.Flags&CommittedAlready != 0 ||
			(f.acc != nil && f.acc.Flags&AcceptCommitted != 0 && f.sent == 0)
		r.Unchanged = f.committed.Flags&CommittedUnchanged != 0
		if r.AlreadyCommitted {
			r.ResumedFrom = r.Size // the daemon had all of it
		}
	}
	return r
}

func (w *window) signal() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// run is the writer: it starts files while the window has room, sends
// data runs of accepted and nacked transfers, and delivers settlements.
func (w *window) run(next func() (*Job, bool), settle func(*Job, error)) error {
	exhausted := false
	for {
		w.mu.Lock()
		done := w.settled
		w.settled = nil
		w.mu.Unlock()
		for _, f := range done {
			f.job.Last = f.result()
			settle(f.job, f.err)
		}
		w.mu.Lock()
		if err := w.sessErr; err != nil {
			w.mu.Unlock()
			return err
		}
		var f *flight
		var from int64
		switch {
		case len(w.reruns) > 0:
			f, w.reruns = w.reruns[0], w.reruns[1:]
			from, f.rerun = f.rerun, -1
		case len(w.ready) > 0:
			f, w.ready = w.ready[0], w.ready[1:]
			from = -1
		}
		room := !exhausted && len(w.flights) < w.opts.Files && (w.unsent < w.opts.Bytes || len(w.flights) == 0)
		idle := exhausted && len(w.flights) == 0 && len(w.settled) == 0
		w.mu.Unlock()
		var err error
		switch {
		case f != nil && from >= 0:
			err = w.dataRun(f, from, true)
		case f != nil:
			err = w.accepted(f)
		case room:
			if err := w.flushAged(false); err != nil {
				w.fail(err)
				continue
			}
			var job *Job
			var ok bool
			w.local(func() { job, ok = next() })
			if !ok {
				exhausted = true
				continue
			}
			err = w.start(job)
		case idle:
			return w.flush()
		default:
			if err := w.flush(); err != nil {
				w.fail(err)
				continue
			}
			select {
			case <-w.kick:
			case <-w.ctx.Done():
				return w.ctx.Err()
			}
		}
		if err != nil {
			w.fail(err)
		}
	}
}

// outBuffer is the size in bytes of the writer's buffer, and outDelay
// the longest its frames wait there while the window keeps starting
// files: it is flushed whenever the writer waits for the daemon, and
// before it asks for the next file once its oldest frame is that old.
const (
	outBuffer = 64 << 10
	outDelay  = time.Millisecond
)

// windowWriter is what the writer's buffer writes to: the connection.
type windowWriter struct{ w *window }

func (ww windowWriter) Write(p []byte) (int, error) { return ww.w.c.rwc.Write(p) }

// frames returns the writer's buffer, to write frames to.
func (w *window) frames() io.Writer {
	if w.out.Buffered() == 0 {
		w.outSince = time.Now()
	}
	return w.out
}

// flush writes the buffered frames out.
func (w *window) flush() error {
	if w.out.Buffered() == 0 {
		return nil
	}
	if err := w.out.Flush(); err != nil {
		return fmt.Errorf("writing to the daemon: %w", err)
	}
	return nil
}

// local runs fn, a wait on this side (the next job, a source's first
// bytes), keeping the reader's deadline from running out meanwhile: the
// daemon may have nothing to say until the sender sends more.
func (w *window) local(fn func()) {
	c, ok := w.c.rwc.(*deadlineConn)
	if !ok {
		fn()
		return
	}
	release := c.hold()
	defer release()
	fn()
}

// refusalWait is how long a failed session waits for the refusal that
// usually explains it.
const refusalWait = 2 * time.Second

// fail records a session failure. The daemon's refusal of the session
// wins over the write error it caused.
func (w *window) fail(err error) {
	w.mu.Lock()
	var re *RemoteError
	if w.sessErr == nil || errors.As(err, &re) && re.ID == 0 {
		w.sessErr = err
	}
	w.moved.Broadcast()
	w.mu.Unlock()
	w.signal()
}

// settle ends f with err (nil: committed). Called with mu held.
func (w *window) settleLocked(f *flight, err error) {
	if _, ok := w.flights[f.id]; !ok {
		return
	}
	delete(w.flights, f.id)
	w.unsent -= f.sent
	f.err = err
	w.settled = append(w.settled, f)
	w.moved.Broadcast()
	w.signal()
}

// sawSmall notes whether the daemon already had a file (of at most one
// chunk, or any file answered as already committed); see
// Client.confirming. Called with w.mu held.
func (c *Client) sawSmall(already bool) {
	switch {
	case already:
		c.confirming, c.sawAlready = true, true
	case !c.sawAlready:
		c.confirming = false
	}
}

// start offers job: with its data at once when it fits in one chunk,
// otherwise alone, to be streamed once accepted.
func (w *window) start(job *Job) error {
	var offer *Offer
	var err error
	w.local(func() { offer, err = job.Src.offer(job.Name) }) // reads the source's first bytes
	if err == nil && len(job.Name) > MaxNameLen {
		err = fmt.Errorf("%w: remote name is %d bytes, the limit is %d", ErrBadName, len(job.Name), MaxNameLen)
	}
	w.mu.Lock()
	w.lastID++
	f := &flight{id: w.lastID, job: job, offer: offer, chunkSize: w.c.chunkSize, nacks: make(map[int64]int), rerun: -1,
		progress: Progress{Size: job.Src.Size}}
	w.flights[f.id] = f
	if err != nil {
		w.settleLocked(f, err)
		w.mu.Unlock()
		return nil
	}
	offer.ID = f.id
	if w.c.checksum {
		offer.Flags |= OfferChecksum
	}
	if w.c.update {
		offer.Flags |= OfferUpdate
	}
	if job.Src.Hole != nil {
		offer.Flags |= OfferSparse
	}
	// A file of at most one chunk goes out with its offer, unless the
	// daemon has lately been finding the files already committed (a send
	// run again): then its offer goes alone, and its data only if the
	// daemon wants it, one round trip later but without blocking the
	// window.
	f.speculative = job.Src.Size <= int64(w.c.chunkSize) && !w.c.confirming
	w.mu.Unlock()
	if f.speculative {
		offer.Flags |= OfferData
		if err := WriteMessage(w.frames(), offer); err != nil {
			return err
		}
		return w.dataRun(f, 0, false)
	}
	return WriteMessage(w.frames(), offer)
}

// accepted acts on the Accept of a file that waited for one: checks the
// daemon's tail chunk, then streams, confirms an already committed file,
// or offers a restart.
func (w *window) accepted(f *flight) error {
	acc := f.acc
	src := f.job.Src
	ok := true
	if acc.DurableOffset > 0 {
		buf := make([]byte, acc.TailLength)
		if err := src.readFull(buf, acc.TailOffset); err != nil {
			// The daemon keeps the transfer open (its durable data stays)
			// until the session ends or the name is offered again.
			w.mu.Lock()
			w.settleLocked(f, err)
			w.mu.Unlock()
			return nil
		}
		h, err := ChunkHash(buf, acc.TailOffset, src.Size)
		ok = err == nil && h == acc.TailHash
	}
	if !ok {
		o := *f.offer
		o.Flags |= OfferRestart
		w.mu.Lock()
		f.acc, f.restarted = nil, true
		f.progress.Restarted = true
		w.mu.Unlock()
		return WriteMessage(w.frames(), &o)
	}
	w.mu.Lock()
	f.resumed, f.durable = acc.DurableOffset, acc.DurableOffset
	if acc.Flags&AcceptCommitted != 0 {
		f.durable = 0
	}
	f.progress.ResumedFrom, f.progress.Sent, f.progress.DurableOffset = acc.DurableOffset, acc.DurableOffset, acc.DurableOffset
	w.report(f)
	w.mu.Unlock()
	if acc.Flags&AcceptCommitted != 0 {
		return w.trailer(f)
	}
	return w.dataRun(f, acc.DurableOffset, true)
}

// track remembers a hasher whose prefix goroutine SendAll must join,
// forgetting those that ended, so that the list stays as short as the
// window. Called with mu held.
func (w *window) track(h *wholeHash) {
	if h.done == nil {
		return
	}
	live := w.hashers[:0]
	for _, o := range w.hashers {
		select {
		case <-o.done:
		default:
			live = append(live, o)
		}
	}
	w.hashers = append(live, h)
}

// newWhole starts f's whole-file hash with chunks from off on to be
// pushed; for off > 0 the sender re-hashes its own prefix [0, off) in the
// background, never trusting the daemon's. Called with mu held.
func (w *window) newWhole(f *flight, off int64) error {
	h, err := newWholeHash(w.ctx, sourceReader{f.job.Src}, off, f.job.Src.Size, f.chunkSize)
	if err != nil {
		return err
	}
	f.whole = h
	w.track(h)
	return nil
}

// sourceReader reads a Source for HashChunks: a short read means the
// source shrank (ErrSourceChanged).
type sourceReader struct{ src Source }

func (r sourceReader) ReadAt(p []byte, off int64) (int, error) {
	if r.src.Hole != nil && r.src.Hole(off, int64(len(p))) {
		clear(p) // a hole reads as zeros; no need to ask the file
		return len(p), nil
	}
	if err := r.src.readFull(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// dataRun sends f's chunks from off to the end of the file, opened by a
// Data frame unless the offer opened it, then its trailer. A nack for f
// that arrives meanwhile cuts the run short; the nacked offset is queued
// for a new run.
func (w *window) dataRun(f *flight, off int64, open bool) error {
	src := f.job.Src
	w.mu.Lock()
	if f.whole == nil {
		if err := w.newWhole(f, off); err != nil {
			w.mu.Unlock()
			return err
		}
	}
	f.trailer = false
	w.mu.Unlock()
	if open {
		if err := WriteMessage(w.frames(), &Data{ID: f.id, Offset: off}); err != nil {
			return err
		}
	}
	if src.Size-off <= int64(f.chunkSize) {
		// One chunk at most: no hashing goroutines. For a file of one
		// chunk its hash is the root (ChunkHash), as HashChunks yields.
		if cut, err := w.awaitWindow(f, src.Size); err != nil || cut {
			return err
		}
		if off < src.Size {
			pool := chunkPool(f.chunkSize)
			buf := pool.Get()
			data := (*buf)[:src.Size-off]
			err := src.readFull(data, off)
			var cv CV
			if err == nil {
				cv, err = ChunkCV(data, off, off == 0)
			}
			if err != nil {
				pool.Put(buf)
				return w.fileFailed(f, err)
			}
			f.whole.push(off, int64(len(data)), cv)
			err = w.writeChunk(f, &Chunk{Offset: off, Hash: Hash(cv), Data: data})
			pool.Put(buf)
			if err != nil {
				return err
			}
		}
	} else if cut, err := w.stream(f, off); err != nil || cut {
		return err
	}
	w.mu.Lock()
	cut := f.rerun >= 0
	w.mu.Unlock()
	if cut {
		return nil
	}
	return w.trailer(f)
}

// fileFailed settles f with a failure of its own source: the session goes
// on without its trailer.
func (w *window) fileFailed(f *flight, err error) error {
	w.mu.Lock()
	w.settleLocked(f, err)
	w.mu.Unlock()
	return nil
}

func (w *window) writeChunk(f *flight, c *Chunk) error {
	if err := WriteChunk(w.frames(), c); err != nil {
		return err
	}
	n := int64(len(c.Data))
	w.mu.Lock()
	f.sent += n
	if _, ok := w.flights[f.id]; ok {
		w.unsent += n
	}
	f.progress.Sent = c.Offset + n
	w.report(f)
	w.mu.Unlock()
	return nil
}

// writeZero sends z, a chunk of f that is a hole, without its data: no
// data byte counts as sent.
func (w *window) writeZero(f *flight, z *ZeroChunk) error {
	// Through the frame buffer, as every frame of a data run: written
	// straight to the connection, a zero chunk overtook the Data frame
	// still buffered before it.
	if err := WriteMessage(w.frames(), z); err != nil {
		return err
	}
	w.mu.Lock()
	f.progress.Sent = z.Offset + int64(z.Length)
	w.report(f)
	w.mu.Unlock()
	return nil
}

// awaitWindow waits until f's data up to end fits in its durable window
// (Accept.Window, protocol 2.3): end at most Window bytes past the
// durable offset the daemon last acknowledged. It flushes the frames
// buffered first, since the daemon acknowledges only what it received.
// It reports cut when a nack for f, f's settlement or the session's
// failure (or the context's end) came first, and the error of the flush.
func (w *window) awaitWindow(f *flight, end int64) (cut bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if f.acc == nil || f.acc.Window <= 0 {
		return false, nil
	}
	flushed := false
	for end > f.durable+f.acc.Window {
		_, live := w.flights[f.id]
		if f.rerun >= 0 || !live || w.sessErr != nil || w.ctx.Err() != nil {
			return true, nil
		}
		if !flushed {
			w.mu.Unlock()
			err := w.flush()
			w.mu.Lock()
			if err != nil {
				return true, err
			}
			flushed = true
			continue
		}
		w.moved.Wait()
	}
	return false, nil
}

// errCut stops HashChunks when a nack for f, its settlement or the
// session's failure ends a data run early.
var errCut = errors.New("data run cut short")

// stream sends f's chunks from off, hashed on SendHashWorkers goroutines
// ahead of the socket (HashChunks), with at most SendHashWorkers+1 chunk
// buffers. It
// reports cut when a nack for f, f's settlement or the session's failure
// ended it early.
func (w *window) stream(f *flight, off int64) (cut bool, err error) {
	src := f.job.Src
	var werr error // the session's: writing to the daemon failed
	holes := src.Hole != nil && w.c.peerMinor >= 2
	first := true
	err = HashChunks(w.ctx, sourceReader{src}, off, src.Size, f.chunkSize, SendHashWorkers(f.chunkSize), func(o int64, data []byte, cv CV) error {
		if cut, err := w.awaitWindow(f, o+int64(len(data))); err != nil || cut {
			if err != nil {
				werr = err
				return err
			}
			return errCut
		}
		f.whole.push(o, int64(len(data)), cv)
		var err error
		// The bytes decide, not the hole: a chunk read as zeros is sent
		// as one whatever the file did meanwhile, so that its hash always
		// matches what the daemon computes.
		if holes && allZero(data) {
			err = w.writeZero(f, &ZeroChunk{Offset: o, Length: uint32(len(data)), Hash: Hash(cv)})
		} else {
			err = w.writeChunk(f, &Chunk{Offset: o, Hash: Hash(cv), Data: data})
		}
		if err == nil {
			err = w.flushAged(first) // a data run's first chunk goes out at once
		}
		first = false
		if err != nil {
			werr = err
			return err
		}
		w.mu.Lock()
		_, live := w.flights[f.id]
		cut := f.rerun >= 0 || !live || w.sessErr != nil
		w.mu.Unlock()
		if cut {
			return errCut
		}
		return nil
	})
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, errCut):
		return true, nil
	case w.ctx.Err() != nil:
		return true, w.ctx.Err()
	case werr != nil:
		return true, werr
	default:
		return true, w.fileFailed(f, err) // reading or hashing f's source
	}
}

// flushAged flushes the writer's buffer once its oldest frame is
// outDelay old, or at once with now, so that no frame waits long behind
// frames that come too slowly to fill it: a window's offers, or the zero
// chunks of a data run. A data chunk leaves nothing there (its payload is
// written straight through), but zero chunks are a few dozen bytes each:
// a run of holes would fill the 64 KiB buffer, about 1,300 chunks of the
// file, before its first chunk reached the daemon (199 ms on a 16 GiB
// sparse file, against the 100 ms that PRODUCT.md promises).
func (w *window) flushAged(now bool) error {
	if w.out.Buffered() == 0 || (!now && time.Since(w.outSince) < outDelay) {
		return nil
	}
	return w.flush()
}

// trailer checks that the source did not change and sends f's trailer.
func (w *window) trailer(f *flight) error {
	src := f.job.Src
	if f.whole == nil {
		// An already committed file (AcceptCommitted): hash all of it.
		w.mu.Lock()
		err := w.newWhole(f, src.Size)
		w.mu.Unlock()
		if err != nil {
			return err
		}
	}
	if f.whole.done != nil {
		if err := w.flush(); err != nil {
			return err
		}
		holdReads(w.ctx, w.c.rwc, f.whole.done) // the wait is on this side
	}
	h, err := f.whole.sum(w.ctx)
	if err != nil {
		if w.ctx.Err() != nil {
			return w.ctx.Err()
		}
		return w.fileFailed(f, err)
	}
	if src.Changed != nil {
		changed, err := src.Changed()
		if err != nil {
			return w.fileFailed(f, fmt.Errorf("checking the source before the trailer: %w", err))
		}
		if changed {
			return w.fileFailed(f, fmt.Errorf("%w: modified while it was being sent; the next attempt starts over", ErrSourceChanged))
		}
	}
	w.mu.Lock()
	f.hash, f.hashed, f.trailer = h, true, true
	// The daemon re-reads an already committed file to hash it before it
	// answers (RehashRate); allow for that on top of the timeout. A
	// partial's hash comes from its merge stack, with no re-read.
	if f.acc != nil && f.acc.Flags&AcceptCommitted != 0 {
		if d := time.Duration(float64(src.Size) / RehashRate * float64(time.Second)); d > w.slack {
			w.slack = d
			setSlack(w.c.rwc, d)
		}
	}
	w.mu.Unlock()
	// A trailer goes out at once, with the frames buffered before it
	// (a small file's offer and chunk): the daemon commits the file as
	// soon as it has it.
	if err := WriteMessage(w.frames(), &Trailer{ID: f.id, Hash: h}); err != nil {
		return err
	}
	return w.flush()
}

func (w *window) report(f *flight) {
	if f.job.Progress != nil {
		f.job.Progress(f.progress)
	}
}

// readLoop takes the daemon's messages until the session ends or SendAll
// is over.
func (w *window) readLoop() {
	for {
		m, err := ReadMessage(w.c.r)
		if err != nil {
			if w.ctx.Err() != nil || w.c.reading.Load() {
				return
			}
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("daemon closed the session: %w", io.ErrUnexpectedEOF)
			}
			w.fail(err)
			_ = w.c.rwc.Close() // a write blocked on a daemon that stopped reading ends too
			return
		}
		if err := w.handle(m); err != nil {
			w.fail(err)
			_ = w.c.rwc.Close() // as above; err is the one to report
			return
		}
	}
}

// handle applies one message from the daemon.
func (w *window) handle(m Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var id uint32
	switch m := m.(type) {
	case *RemoteError:
		if m.ID == 0 {
			return m
		}
		id = m.ID
	case *Accept:
		id = m.ID
	case *Ack:
		id = m.ID
	case *Nack:
		id = m.ID
	case *Committed:
		id = m.ID
	default:
		return fmt.Errorf("%w: unexpected %v from the daemon", ErrProtocol, m.frameType())
	}
	f, ok := w.flights[id]
	if !ok {
		if id > w.lastID {
			return fmt.Errorf("%w: %v for transfer %d, never offered", ErrProtocol, m.frameType(), id)
		}
		return nil // a transfer the sender already gave up on
	}
	switch m := m.(type) {
	case *RemoteError:
		w.settleLocked(f, m)
	case *Accept:
		if f.speculative || f.acc != nil {
			return fmt.Errorf("%w: unexpected accept for transfer %d", ErrProtocol, id)
		}
		if m.DurableOffset > f.offer.Size {
			return fmt.Errorf("%w: accepted at %d beyond size %d", ErrProtocol, m.DurableOffset, f.offer.Size)
		}
		if f.restarted && m.DurableOffset != 0 {
			return fmt.Errorf("%w: restart accepted at offset %d", ErrProtocol, m.DurableOffset)
		}
		if int(m.ChunkSize) > w.c.chunkSize {
			return fmt.Errorf("%w: accepted with chunk size %d above the session's %d", ErrProtocol, m.ChunkSize, w.c.chunkSize)
		}
		if m.DurableOffset < f.offer.Size && m.DurableOffset%int64(m.ChunkSize) != 0 {
			return fmt.Errorf("%w: accepted at %d, not a multiple of chunk size %d", ErrProtocol, m.DurableOffset, m.ChunkSize)
		}
		f.chunkSize = int(m.ChunkSize)
		if m.Flags&AcceptRestarted != 0 {
			f.restarted, f.progress.Restarted = true, true
		}
		if f.job.Src.Size <= int64(w.c.chunkSize) {
			w.c.sawSmall(m.Flags&AcceptCommitted != 0)
		}
		f.acc = m
		w.ready = append(w.ready, f)
		w.signal()
	case *Ack:
		if m.DurableOffset < f.durable || m.DurableOffset > f.job.Src.Size {
			return fmt.Errorf("%w: ack of durable offset %d after %d", ErrProtocol, m.DurableOffset, f.durable)
		}
		if m.DurableOffset > f.durable {
			w.progress = true
		}
		f.durable = m.DurableOffset
		f.progress.DurableOffset = m.DurableOffset
		w.report(f)
		w.moved.Broadcast()
	case *Nack:
		if !f.speculative && f.acc == nil && f.whole == nil {
			return fmt.Errorf("%w: nack for transfer %d, which sent no data", ErrProtocol, id)
		}
		if m.Offset < f.durable || m.Offset >= max(f.job.Src.Size, 1) || m.Offset%int64(f.chunkSize) != 0 {
			return fmt.Errorf("%w: nack at offset %d", ErrProtocol, m.Offset)
		}
		f.nacks[m.Offset]++
		if f.nacks[m.Offset] > w.opts.MaxNacks {
			w.settleLocked(f, fmt.Errorf("%w: chunk at offset %d rejected %d times", ErrIntegrity, m.Offset, f.nacks[m.Offset]))
			return nil
		}
		if f.rerun < 0 {
			w.reruns = append(w.reruns, f)
		}
		f.rerun = m.Offset
		w.moved.Broadcast()
		w.signal()
	case *Committed:
		if m.Flags&CommittedUnchanged != 0 && !w.c.checksum && f.acc == nil && !f.restarted {
			// Quick check: the daemon matched size and mtime; nothing to
			// hash. A speculative data run still being written is dropped
			// by the daemon.
			if m.Size != f.job.Src.Size {
				return fmt.Errorf("%w: unchanged at %d bytes, offered %d", ErrProtocol, m.Size, f.job.Src.Size)
			}
			f.committed = m
			w.c.sawSmall(true)
			w.progress = true
			w.report(f)
			w.settleLocked(f, nil)
			return nil
		}
		if !f.trailer || !f.hashed {
			return fmt.Errorf("%w: committed before the trailer of transfer %d", ErrProtocol, id)
		}
		if m.Hash != f.hash || m.Size != f.job.Src.Size {
			w.settleLocked(f, fmt.Errorf("%w: daemon committed %d bytes with BLAKE3 %x, sent %d bytes with %x",
				ErrIntegrity, m.Size, m.Hash, f.job.Src.Size, f.hash))
			return nil
		}
		f.committed = m
		if m.Flags&CommittedAlready != 0 {
			w.c.sawSmall(true)
		}
		w.progress = true
		f.progress.DurableOffset = m.Size
		f.progress.Sent = max(f.progress.Sent, m.Size)
		w.report(f)
		w.settleLocked(f, nil)
	}
	return nil
}
