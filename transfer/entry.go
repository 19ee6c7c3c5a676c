package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// MaxEntryBatch is the most entries one SendEntries call takes: the
// entries in flight on a session, whose answers the sender waits for
// before it sends more.
const MaxEntryBatch = 64

// ErrEntriesUnsupported is returned by SendEntries when the daemon speaks
// a protocol older than 2.2, which has no Entry message: directories keep
// the daemon's mode and mtime, and symlinks are not made.
var ErrEntriesUnsupported = errors.New("the daemon speaks protocol 2.1 or older, which cannot create directories or symbolic links; upgrade ferryd")

// SendEntries sends entries (at most MaxEntryBatch) on the session and
// waits for the daemon's answer to each. It returns one error per entry,
// nil for an entry the daemon made (a *RemoteError for one it refused),
// and the session's failure, after which the Client must not be reused
// and the entries whose error is nil in errs are not known to be made.
// Call it only between SendAll calls, with no transfer in flight.
func (c *Client) SendEntries(ctx context.Context, entries []*Entry) (errs []error, err error) {
	if c.broken != nil {
		return nil, fmt.Errorf("session unusable: %w", c.broken)
	}
	if len(entries) > MaxEntryBatch {
		return nil, fmt.Errorf("%w: %d entries in one batch, at most %d", ErrInvalidConfig, len(entries), MaxEntryBatch)
	}
	if c.peerMinor < 2 {
		return nil, ErrEntriesUnsupported
	}
	stop := closeOnCancel(ctx, c.rwc)
	defer stop()
	first := c.lastID + 1
	for _, e := range entries {
		c.lastID++
		e.ID = c.lastID
	}
	// Written on their own goroutine while the answers are read: on an
	// unbuffered connection (net.Pipe) the daemon's first answer waits
	// for this side to read it.
	werrc := make(chan error, 1)
	go func() {
		for _, e := range entries {
			if err := WriteMessage(c.rwc, e); err != nil {
				werrc <- err
				return
			}
		}
		werrc <- nil
	}()
	errs, err = c.readEntryAnswers(entries, first)
	if err != nil {
		c.broken = err
		// Closing ends a write blocked on a daemon that stopped reading;
		// the read's error is the one to report, not the write's.
		_ = c.rwc.Close()
		_ = waitWrite(werrc)
		return errs, ctxErr(ctx, err)
	}
	if werr := waitWrite(werrc); werr != nil {
		c.broken = werr
		return errs, ctxErr(ctx, werr)
	}
	return errs, nil
}

// waitWrite waits for SendEntries' writer and returns its error.
func waitWrite(werrc <-chan error) error { return <-werrc }

// readEntryAnswers reads the daemon's answer to each of entries, whose
// IDs start at first.
func (c *Client) readEntryAnswers(entries []*Entry, first uint32) ([]error, error) {
	errs := make([]error, len(entries))
	answered := 0
	seen := make([]bool, len(entries))
	for answered < len(entries) {
		m, rerr := ReadMessage(c.r)
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				rerr = fmt.Errorf("daemon closed the session: %w", io.ErrUnexpectedEOF)
			}
			return errs, rerr
		}
		var id uint32
		var answer error
		switch m := m.(type) {
		case *Committed:
			id = m.ID
		case *RemoteError:
			if m.ID == 0 {
				return errs, m
			}
			id, answer = m.ID, m
		default:
			return errs, fmt.Errorf("%w: unexpected %v from the daemon while it made entries", ErrProtocol, m.frameType())
		}
		i := int(id) - int(first)
		if id < first || i >= len(entries) || seen[i] {
			return errs, fmt.Errorf("%w: answer for entry %d, never sent or answered twice", ErrProtocol, id)
		}
		seen[i] = true
		errs[i] = answer
		answered++
	}
	return errs, nil
}

// SendEntries sends entries over the Sender's session (at most
// MaxEntryBatch at a time) and calls done once per entry with nil, the
// daemon's refusal of it (a *RemoteError), or the failure that retries
// could not fix. After a session failure it reconnects with backoff and
// sends the entries not yet answered again: making an entry again is
// harmless (a directory is given its mode and mtime again, an existing
// link with the same target is accepted). It returns that failure,
// ErrInvalidConfig, ErrEntriesUnsupported, or ctx's error, after calling
// done for every entry.
func (s *Sender) SendEntries(ctx context.Context, entries []*Entry, done func(*Entry, error)) error {
	if err := s.check(); err != nil {
		return err
	}
	failures := 0
	for len(entries) > 0 {
		batch := entries[:min(len(entries), MaxEntryBatch)]
		err := ctx.Err()
		if err == nil && s.client == nil {
			err = s.connect(ctx)
		}
		var errs []error
		if err == nil {
			errs, err = s.client.SendEntries(ctx, batch)
			if !s.client.Usable() {
				_ = s.Close() // the next attempt starts a new session
			}
		}
		if err == nil {
			for i, e := range batch {
				done(e, errs[i])
			}
			entries = entries[len(batch):]
			failures = 0
			continue
		}
		failures++
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", context.Cause(ctx))
		}
		if errors.Is(err, ErrEntriesUnsupported) || !Retryable(err) || failures > s.Retries || ctx.Err() != nil {
			for _, e := range entries {
				done(e, err)
			}
			return err
		}
		jitter := s.Jitter
		if jitter == nil {
			jitter = rand.Float64
		}
		wait := Backoff(orDefault(s.Backoff, DefaultBackoff), orDefault(s.MaxBackoff, DefaultMaxBackoff), failures, jitter())
		if s.OnRetry != nil {
			s.OnRetry(RetryEvent{Name: batch[0].Name, Attempt: failures, Err: err, Wait: wait, Failures: failures, Retries: s.Retries})
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	return nil
}
