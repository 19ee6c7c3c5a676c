package transfer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"time"
)

// Defaults of Sender's fields.
const (
	DefaultBackoff     = 500 * time.Millisecond
	DefaultMaxBackoff  = 30 * time.Second
	DefaultTimeout     = 60 * time.Second
	DefaultMaxRestarts = 3
)

// Sender sends files to one daemon and never makes a transfer start again
// from zero because of a failure it can recover from: after a network or
// I/O failure it reconnects, with exponential backoff, and resumes from the
// daemon's durable offset. It keeps one session across files while the
// session is usable.
//
// Set Addr (and Network); the other fields have working zero values. A
// Sender is not safe for concurrent use; call Close when done.
type Sender struct {
	// Network and Addr name the daemon, as for net.Dial: Network "tcp"
	// (the default when empty) or "unix". Addr appears in error messages.
	Network, Addr string
	// Dial opens a connection to the daemon. Defaults to a net.Dialer
	// with Timeout as its timeout and 15s keep-alives.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLS, when set and Network is "tcp", runs every session inside TLS
	// 1.3 and checks the daemon's identity as TLSOptions says before the
	// Hello; a mismatch fails with an *IdentityError (ErrIdentity),
	// never retried. Nil: plaintext, which ferryd accepts only on Unix
	// sockets (and which in-process tests use over net.Pipe).
	TLS *TLSOptions
	// ChunkSize is the chunk size in bytes proposed to the daemon, which
	// may lower it. Defaults to DefaultChunkSize; unless it is a power of
	// two from MinChunkSize to MaxChunkSize, Send fails with
	// ErrInvalidConfig.
	ChunkSize int
	// Agent names the sending software in the Hello, for the daemon's logs.
	Agent string
	// Retries is how many attempts in a row that make no progress (move
	// no durable offset of an unchanged source) may follow a retryable
	// failure. An attempt that makes progress resets the count, so a long
	// transfer over a link that drops now and then never runs out.
	// Zero means no retry; negative is ErrInvalidConfig.
	Retries int
	// Backoff is the wait before the first retry in a row; it doubles with
	// each further retry up to MaxBackoff, with ±50% jitter, never above
	// MaxBackoff. Defaults to DefaultBackoff (500ms) and
	// DefaultMaxBackoff (30s).
	Backoff, MaxBackoff time.Duration
	// Timeout bounds every wait for the daemon: dialing, each write, and
	// each read (the daemon must send something or take data at least
	// this often; see ClientOptions.Timeout for the wait for Committed).
	// Defaults to DefaultTimeout (60s).
	Timeout time.Duration
	// Checksum has the daemon tell an already committed file by BLAKE3
	// rather than by size and mtime (ClientOptions.Checksum). Default
	// false.
	Checksum bool
	// Update has the daemon replace a committed file of other content
	// (ClientOptions.Update). Default false.
	Update bool
	// Token is the secret the daemon authenticates this sender by
	// (ClientOptions.Token); "" sends none.
	Token string
	// MaxRestarts is how many times one Send may start a file over
	// because the source changed (it was modified during an attempt, or
	// differs from the one the previous attempt sent). One more change
	// fails the file with ErrKeepsChanging. Defaults to
	// DefaultMaxRestarts (3).
	MaxRestarts int
	// Window is how many files SendAll keeps in flight on a session
	// (offered and not settled), 1..MaxWindowFiles. Defaults to
	// DefaultWindowFiles; 1 sends one file after another.
	Window int
	// OnRetry, if set, is called before each wait for a retry.
	OnRetry func(RetryEvent)
	// Jitter returns a number in [0, 1) for the backoff jitter. Defaults to
	// math/rand/v2's Float64; tests set it.
	Jitter func() float64

	client *Client
}

// File is one file for Sender.Send.
type File struct {
	// Name is the file's name on the daemon, relative to its root.
	Name string
	// Open opens the source. Send calls it at the start of every
	// attempt and closes the file at the attempt's end, so that each
	// attempt offers the file as it is then. Defaults to os.Open(Path).
	Open func() (*os.File, error)
	// Path is the local path opened when Open is nil.
	Path string
	// Progress, if set, is called as in SendOptions.Progress, during
	// every attempt.
	Progress func(Progress)
}

// RetryEvent describes a failed attempt that Send is about to retry.
type RetryEvent struct {
	Name     string        // File.Name
	Attempt  int           // the attempt that failed, from 1
	Err      error         // why it failed
	Wait     time.Duration // the backoff before the next attempt
	Failures int           // attempts in a row without progress, from 1
	Retries  int           // Sender.Retries
}

// Report describes how a Send went, also when it failed.
type Report struct {
	Size           int64 // bytes in the source, as the last attempt opened it
	Attempts       int   // attempts made, from 1
	ResumedFrom    int64 // durable offset the last attempt started at
	SentBytes      int64 // chunk data bytes sent by the last attempt
	TotalSentBytes int64 // chunk data bytes sent by all attempts
	// DurableOffset is the daemon's last known durable offset of a
	// partial of this file; 0 when there is none (or the file is
	// committed). After a failure, a partial exists on the daemon when it
	// is above 0, and a new Send resumes there.
	DurableOffset int64
	Restarted     bool // some attempt discarded a partial and started at 0
	Restarts      int  // attempts that started over because the source changed
	// AlreadyCommitted says the daemon already held this file under the
	// name and confirmed it by BLAKE3; no data was sent.
	AlreadyCommitted bool
	// Unchanged, with AlreadyCommitted, says the daemon matched the file
	// by size and mtime alone (rsync's quick check): Hash is all zeros.
	Unchanged bool
	Hash      Hash // whole-file BLAKE3, set when Send returns nil (zero when Unchanged)
}

// Send sends f until the daemon commits it, retrying as the Sender's
// fields say: SendAll with one file. It returns nil once the daemon
// confirmed the commit (or that the same file was already committed).
// Errors:
//   - ErrInvalidConfig for a Sender field out of range;
//   - ErrSourceUnreadable when f cannot be opened or is not a regular file;
//   - ErrKeepsChanging when the source changed more than MaxRestarts times;
//   - the daemon's refusal (a *RemoteError) when it is permanent;
//   - ErrNotFerry or ErrVersion when the peer is not a compatible daemon;
//   - ctx's error (context.Canceled) when ctx ends;
//   - otherwise the last retryable error, once Retries attempts in a row
//     made no progress, with the attempt count appended.
//
// Retryable tells them apart. Every goroutine Send starts has ended when
// it returns.
func (s *Sender) Send(ctx context.Context, f File) (Report, error) {
	var rep Report
	var ferr error
	given := false
	err := s.SendAll(ctx, func() (File, bool) {
		if given {
			return File{}, false
		}
		given = true
		return f, true
	}, func(_ File, r Report, err error) { rep, ferr = r, err })
	if ferr != nil {
		return rep, ferr
	}
	return rep, err
}

// pending is a file of SendAll that has not settled.
type pending struct {
	f        File
	rep      Report
	fh       *os.File
	failures int      // attempts in a row without progress
	prev     identity // the source as the previous attempt opened it
	seen     bool     // prev is set
	job      *Job     // opened before connecting, not yet offered
	changed  bool     // the previous attempt found the source modified
	notAfter time.Time
}

// SendAll sends the files next yields over one session, with a window of
// files in flight (see Client.SendAll), and calls done once per file as
// it settles, from SendAll's goroutine, with the same Report and errors
// as Send. next may block; it is not called again once it returned false.
// After a session failure SendAll reconnects, with backoff, and offers
// every unsettled file again (each resumes from the daemon's durable
// offset); Retries bounds the attempts in a row without progress, as for
// Send, where any committed file or moved durable offset of a session
// counts as progress for all. A failure that retries cannot fix settles
// every unsettled file with it, and SendAll returns it without calling
// next again. It returns nil when every file settled (committed or
// failed on its own), ErrInvalidConfig for a bad field, or ctx's error.
// Every goroutine SendAll starts has ended when it returns.
func (s *Sender) SendAll(ctx context.Context, next func() (File, bool), done func(File, Report, error)) error {
	if err := s.check(); err != nil {
		return err
	}
	maxRestarts := orDefault(s.MaxRestarts, DefaultMaxRestarts)
	var queue []*pending // files to offer again, oldest first
	exhausted := false
	finish := func(p *pending, err error) {
		if p.fh != nil {
			_ = p.fh.Close() // opened read-only
			p.fh = nil
		}
		if err != nil && p.rep.Attempts > 1 && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%w (after %d attempts)", err, p.rep.Attempts)
		}
		if err == nil {
			p.rep.DurableOffset = 0
		}
		done(p.f, p.rep, err)
	}
	// prepare opens p's file for an attempt; false when that settled p
	// (it cannot be opened, or keeps changing).
	prepare := func(p *pending) (*Job, bool) {
		fh, src, err := open(p.f)
		if err != nil {
			finish(p, err)
			return nil, false
		}
		id := identityOf(src)
		if p.seen && (p.changed || id != p.prev) {
			p.rep.Restarts++
			if p.rep.Restarts > maxRestarts {
				_ = fh.Close() // opened read-only
				finish(p, fmt.Errorf("%w: it changed %d times during %d attempts; send it again once nothing writes to it",
					ErrKeepsChanging, p.rep.Restarts, p.rep.Attempts))
				return nil, false
			}
		}
		p.prev, p.fh, p.seen = id, fh, true
		p.rep.Size = src.Size
		p.rep.Attempts++
		return &Job{Name: p.f.Name, Src: src, Progress: p.f.Progress, Tag: p}, true
	}
	// nextJob opens the next file to offer: one to retry, else a new one.
	nextJob := func() (*Job, bool) {
		for {
			var p *pending
			if len(queue) > 0 {
				p, queue = queue[0], queue[1:]
				if wait := time.Until(p.notAfter); wait > 0 {
					t := time.NewTimer(wait)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
						queue = append([]*pending{p}, queue...)
						return nil, false
					}
				}
			} else if !exhausted {
				f, ok := next()
				if !ok {
					exhausted = true
					return nil, false
				}
				p = &pending{f: f}
			} else {
				return nil, false
			}
			if p.job != nil {
				j := p.job
				p.job = nil
				return j, true
			}
			if j, ok := prepare(p); ok {
				return j, true
			}
		}
	}
	// account records an attempt's result in its file's report.
	account := func(p *pending, res Result) {
		p.rep.ResumedFrom, p.rep.SentBytes = res.ResumedFrom, res.SentBytes
		p.rep.TotalSentBytes += res.SentBytes
		p.rep.Restarted = p.rep.Restarted || res.Restarted
		if res.accepted {
			p.rep.DurableOffset = res.DurableOffset
		}
	}
	// retry decides about a file whose attempt failed with err: back in
	// the queue, or settled with err.
	retry := func(p *pending, err error, progressed bool) (wait time.Duration, again bool) {
		if p.fh != nil {
			_ = p.fh.Close() // opened read-only; the next attempt opens it again
			p.fh = nil
		}
		p.changed = errors.Is(err, ErrSourceChanged)
		p.failures++
		if progressed && !p.changed {
			p.failures = 1
		}
		if !Retryable(err) || p.failures > s.Retries || ctx.Err() != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("interrupted: %w", context.Cause(ctx))
			}
			finish(p, err)
			return 0, false
		}
		jitter := s.Jitter
		if jitter == nil {
			jitter = rand.Float64
		}
		wait = Backoff(orDefault(s.Backoff, DefaultBackoff), orDefault(s.MaxBackoff, DefaultMaxBackoff), p.failures, jitter())
		if s.OnRetry != nil {
			s.OnRetry(RetryEvent{Name: p.f.Name, Attempt: p.rep.Attempts, Err: err, Wait: wait, Failures: p.failures, Retries: s.Retries})
		}
		return wait, true
	}
	settle := func(j *Job, err error) {
		p := j.Tag.(*pending)
		account(p, j.Last)
		if err == nil {
			if p.fh != nil {
				_ = p.fh.Close() // opened read-only
				p.fh = nil
			}
			p.rep.AlreadyCommitted, p.rep.Unchanged, p.rep.Hash = j.Last.AlreadyCommitted, j.Last.Unchanged, j.Last.Hash
			finish(p, nil)
			return
		}
		progressed := j.Last.DurableOffset > j.Last.ResumedFrom
		if wait, again := retry(p, err, progressed); again {
			p.notAfter = time.Now().Add(wait)
			queue = append(queue, p)
		}
	}
	sleep := func(wait time.Duration) error {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("interrupted: %w", context.Cause(ctx))
		}
	}
	for {
		if len(queue) == 0 && !exhausted {
			// Hold a file before connecting, so that a failure to
			// connect is that file's failed attempt.
			for !exhausted && len(queue) == 0 {
				f, ok := next()
				if !ok {
					exhausted = true
					break
				}
				p := &pending{f: f}
				if p.job, ok = prepare(p); ok {
					queue = append(queue, p)
				}
			}
		}
		if exhausted && len(queue) == 0 {
			return nil
		}
		var unsettled []*Job
		progressed := false
		err := ctx.Err()
		if err == nil && s.client == nil {
			err = s.connect(ctx)
		}
		if err == nil {
			unsettled, progressed, err = s.client.SendAll(ctx, nextJob, settle, WindowOptions{Files: s.Window})
			if !s.client.Usable() {
				_ = s.Close() // the next attempt starts a new session
			}
		}
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", context.Cause(ctx))
		}
		var again []*pending
		var wait time.Duration
		if len(unsettled) == 0 && len(queue) > 0 {
			// Nothing was in flight (connecting failed): the next file
			// carries the failure.
			p := queue[0]
			queue = queue[1:]
			if p.job != nil {
				p.job = nil // counted as an attempt when opened; retry closes it
			} else {
				p.rep.Attempts++
			}
			unsettled = append(unsettled, &Job{Tag: p})
		}
		for _, j := range unsettled {
			p := j.Tag.(*pending)
			if j.Src.R != nil {
				account(p, j.Last)
			}
			pr := progressed || j.Last.DurableOffset > j.Last.ResumedFrom
			if w, ok := retry(p, err, pr); ok {
				again = append(again, p)
				wait = max(wait, w)
			}
		}
		if len(again) == 0 && len(unsettled) > 0 {
			// Retries could not fix it; the files still to come would
			// meet it too.
			s.failAll(queue, finish, err)
			return err
		}
		queue = append(again, queue...)
		for _, p := range queue {
			p.notAfter = time.Time{}
		}
		if err := sleep(wait); err != nil {
			s.failAll(queue, finish, err)
			return err
		}
	}
}

// failAll settles every queued file with err.
func (s *Sender) failAll(queue []*pending, finish func(*pending, error), err error) {
	for _, p := range queue {
		finish(p, err)
	}
}

// Close ends the Sender's session, if one is open.
func (s *Sender) Close() error {
	if s.client == nil {
		return nil
	}
	err := s.client.Close()
	s.client = nil
	return err
}

// check validates the fields.
func (s *Sender) check() error {
	switch {
	case s.Addr == "":
		return fmt.Errorf("%w: no daemon address", ErrInvalidConfig)
	case s.ChunkSize != 0 && CheckChunkSize(s.ChunkSize) != nil:
		return fmt.Errorf("%w: %w", ErrInvalidConfig, CheckChunkSize(s.ChunkSize))
	case s.Window < 0 || s.Window > MaxWindowFiles:
		return fmt.Errorf("%w: window %d outside 1..%d", ErrInvalidConfig, s.Window, MaxWindowFiles)
	case s.Retries < 0:
		return fmt.Errorf("%w: retries %d below 0", ErrInvalidConfig, s.Retries)
	case s.Backoff < 0 || s.MaxBackoff < 0 || s.Timeout < 0:
		return fmt.Errorf("%w: negative backoff or timeout", ErrInvalidConfig)
	}
	return nil
}

func (s *Sender) connect(ctx context.Context) error {
	network := s.Network
	if network == "" {
		network = "tcp"
	}
	timeout := orDefault(s.Timeout, DefaultTimeout)
	dial := s.Dial
	if dial == nil {
		d := net.Dialer{Timeout: timeout, KeepAlive: 15 * time.Second}
		dial = d.DialContext
	}
	conn, err := dial(ctx, network, s.Addr)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", s.Addr, err)
	}
	if s.TLS != nil && network == "tcp" {
		if conn, err = tlsClient(ctx, conn, s.Addr, s.TLS, timeout); err != nil {
			return fmt.Errorf("connecting to %s: %w", s.Addr, err)
		}
	}
	c, err := Handshake(ctx, conn, ClientOptions{ChunkSize: s.ChunkSize, Agent: s.Agent, Timeout: timeout, Checksum: s.Checksum, Update: s.Update, Token: s.Token})
	if err != nil {
		_ = conn.Close() // the handshake's error is the one to report
		return fmt.Errorf("handshake with %s: %w", s.Addr, err)
	}
	s.client = c
	return nil
}

// open opens f and describes it as a Source; the caller closes the file.
func open(f File) (*os.File, Source, error) {
	o := f.Open
	if o == nil {
		o = func() (*os.File, error) { return os.Open(f.Path) }
	}
	fh, err := o()
	if err != nil {
		return nil, Source{}, fmt.Errorf("%w: %w", ErrSourceUnreadable, err)
	}
	src, err := FileSource(fh)
	if err != nil {
		_ = fh.Close() // opened read-only
		return nil, Source{}, fmt.Errorf("%w: %w", ErrSourceUnreadable, err)
	}
	return fh, src, nil
}

// identity is what tells one version of a source from another between
// attempts: what the Offer carries, less the prefix hash.
type identity struct {
	size    int64
	mtimeNs int64
	inode   uint64
}

func identityOf(src Source) identity {
	return identity{size: src.Size, mtimeNs: src.ModTime.UnixNano(), inode: src.Inode}
}

// Backoff returns the wait before retry n (from 1) in a row: base doubled
// for each retry after the first, with jitter (in [0, 1)) spreading it over
// [0.5, 1.5) times that, so that many senders cut by one outage do not
// reconnect in step; the result never exceeds maxWait.
func Backoff(base, maxWait time.Duration, n int, jitter float64) time.Duration {
	d := base
	for i := 1; i < n && d < maxWait; i++ {
		d *= 2
	}
	d = time.Duration(float64(min(d, maxWait)) * (0.5 + jitter))
	return min(d, maxWait)
}

// orDefault returns v, or def when v is zero.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
