package daemon

import (
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// maxGroup is the most files one group commit takes.
const maxGroup = 1024

// maxGroupWait bounds how long the committer waits for more files while
// the session keeps reading; groupPoll is how often it looks.
const (
	maxGroupWait = 5 * time.Millisecond
	groupPoll    = 200 * time.Microsecond
)

// committer commits a session's files whose trailers verified, in groups:
// while one group's fsyncs run, the files that verify meanwhile wait and
// form the next group. A file that arrives when nothing is being
// committed is committed at once, so a lone file pays no batching delay.
type committer struct {
	ss *session

	mu     sync.Mutex
	cond   sync.Cond
	queue  []*rxTransfer
	closed bool
	done   chan struct{}
}

func newCommitter(ss *session) *committer {
	c := &committer{ss: ss, done: make(chan struct{})}
	c.cond.L = &c.mu
	go c.loop()
	return c
}

// add queues t, whose whole-file hash matched, for commit.
func (c *committer) add(t *rxTransfer) {
	c.mu.Lock()
	c.queue = append(c.queue, t)
	c.mu.Unlock()
	c.cond.Signal()
}

// close commits what is queued and waits for the committer to end.
func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cond.Signal()
	<-c.done
}

func (c *committer) loop() {
	defer close(c.done)
	for {
		c.mu.Lock()
		for len(c.queue) == 0 && !c.closed {
			c.cond.Wait()
		}
		if len(c.queue) == 0 {
			c.mu.Unlock()
			return
		}
		// While the session is still reading frames that came in with
		// these, more files are about to verify: wait a little for
		// them, so that they share the group's fsyncs. A session that
		// waits for the network (a lone file, the end of a tree) commits
		// at once.
		deadline := time.Now().Add(maxGroupWait)
		for len(c.queue) < maxGroup && !c.closed && !c.ss.waiting.Load() && time.Now().Before(deadline) {
			c.mu.Unlock()
			time.Sleep(groupPoll)
			c.mu.Lock()
		}
		n := min(len(c.queue), maxGroup)
		group := c.queue[:n:n]
		c.queue = c.queue[n:]
		c.mu.Unlock()
		c.commit(group)
	}
}

// commit makes a group durable and in place, in DESIGN.md's order, and
// only then tells the sender Committed for each file; then it removes
// the partials.
func (c *committer) commit(group []*rxTransfer) {
	ss := c.ss
	store := ss.srv.cfg.Store
	ps := make([]Partial, len(group))
	for i, t := range group {
		ps[i] = t.p
		if hp, ok := t.p.(interface{ SetHash(transfer.Hash) }); ok {
			hp.SetHash(t.hash)
		}
	}
	start := time.Now()
	errs := store.CommitGroup(ps)
	ss.srv.met.synced("commit", start)
	var done []*rxTransfer
	var refused []error
	for i, t := range group {
		secs := time.Since(t.start).Seconds()
		attrs := []any{"resumed_from", t.rx.resumedFrom, "received_bytes", t.rx.received,
			"seconds", secs, "rate", int64(float64(t.rx.received) / max(secs, 1e-9)), "group", len(group)}
		if err := errs[i]; err != nil {
			if !errors.Is(err, transfer.ErrExists) && !errors.Is(err, transfer.ErrBadName) {
				err = storageError("commit", err)
			}
			t.log.Warn("transfer interrupted", append(attrs, "err", err)...)
			if cerr := t.p.Close(); cerr != nil {
				t.log.Error("closing partial", "err", cerr)
			}
			refused = append(refused, err)
			continue
		}
		t.log.Info("committed", append(attrs, "blake3", hex.EncodeToString(t.hash[:]))...)
		ss.stats.committed.Add(1)
		ss.srv.met.ended(outcomeCommitted)
		ss.srv.committedBy(ss.tok.Load(), t.key, t.o.Size)
		done = append(done, t)
		refused = append(refused, nil)
	}
	// The files are committed and durable. Their partials go before the
	// senders hear of it, with one fsync for the group, so that a sender
	// that offers a name again finds no leftover.
	if len(done) > 0 {
		ps := ps[:0]
		for _, t := range done {
			ps = append(ps, t.p)
		}
		if err := store.Tidy(ps); err != nil {
			ss.log.Warn("partial left behind", "err", err) // the files themselves are committed
		}
	}
	// Settled before the sender hears of it: a sender that starts a new
	// file on each answer must find the window's slot free.
	ss.settleGroup(group)
	for i, t := range group {
		if refused[i] != nil {
			ss.refuseTransfer(t, refused[i])
			continue
		}
		_ = ss.send(&transfer.Committed{ID: t.id, Size: t.o.Size, Hash: t.hash}) // a failed write ends the session; the file is committed
	}
}

// settleGroup gives back what a committed group held. The session's
// goroutine owns byKey, so the committer only releases server-side holds
// and counts, and hands the group to forgetCommitted.
func (ss *session) settleGroup(group []*rxTransfer) {
	for _, t := range group {
		if t.res != nil {
			t.res.release()
		}
		ss.srv.release(t.key)
		t.committed.Store(true)
		ss.inFlight.Add(-1)
	}
	ss.doneMu.Lock()
	ss.done = append(ss.done, group...)
	ss.doneMu.Unlock()
}

// forgetCommitted drops the committed transfers from byKey, so that a
// session's memory does not grow with the files it carried. Called by the
// session's goroutine.
func (ss *session) forgetCommitted() {
	ss.doneMu.Lock()
	done := ss.done
	ss.done = nil
	ss.doneMu.Unlock()
	for _, t := range done {
		if ss.byKey[t.key] == t {
			delete(ss.byKey, t.key)
		}
	}
}
