package daemon

import (
	"sync"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// syncPoint is a durable offset to record with its merge stack.
type syncPoint struct {
	offset int64               // the durable offset to record
	stack  transfer.MergeStack // the merge stack at offset
}

// syncer fsyncs a partial in the background so that reading and verifying
// the next chunks overlaps the disk flush. Requests coalesce: while one
// fsync runs, later requests collapse into the newest. After each
// successful sync the durable offset is acknowledged to the sender. Once a
// sync fails the syncer stays failed: a failed fsync may have dropped dirty
// pages, so the data after the last durable offset is never trusted again
// ("fsyncgate").
type syncer struct {
	p   Partial
	ack func(durable int64)
	met *metrics // observes each sync; may be nil

	mu      sync.Mutex
	cond    sync.Cond
	want    syncPoint
	done    syncPoint // the last point synced; the store may have reached less
	reached int64     // the durable offset the store reported
	// align is the partial's SyncAlign (0: none): a point off a part
	// boundary cannot become durable, and must not replace one that can.
	align   int64
	running bool
	stopped bool
	err     error
}

// stop waits for a sync in progress and starts no more: the commit
// makes the rest durable. It returns the error of a failed sync.
func (s *syncer) stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	for s.running {
		s.cond.Wait()
	}
	return s.err
}

func newSyncer(p Partial, durable syncPoint, ack func(int64)) *syncer {
	s := &syncer{p: p, ack: ack, want: durable, done: durable, reached: durable.offset}
	if a, ok := p.(SyncAligner); ok {
		s.align = a.SyncAlign()
	}
	s.cond.L = &s.mu
	return s
}

// request asks for pt to become durable, without waiting.
func (s *syncer) request(pt syncPoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pt.offset > s.want.offset && (s.align <= 0 || pt.offset%s.align == 0) {
		s.want = pt
	}
	if !s.running && !s.stopped && s.err == nil && s.want.offset > s.done.offset {
		s.running = true
		go s.loop()
	}
}

func (s *syncer) loop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.err == nil && s.want.offset > s.done.offset {
		pt := s.want
		s.mu.Unlock()
		start := time.Now()
		d, err := s.p.Sync(&pt.stack)
		s.met.synced("partial", start)
		s.mu.Lock()
		grew := err == nil && d > s.reached
		s.mu.Unlock()
		// Only the offset the store reached is acknowledged: a store of
		// whole parts makes less durable than was written.
		if grew {
			s.ack(d)
		}
		s.mu.Lock()
		if err != nil {
			s.err = err
		} else {
			s.done = pt
			s.reached = max(s.reached, d)
		}
		s.cond.Broadcast()
	}
	s.running = false
	s.cond.Broadcast()
}

// flush makes pt durable and waits for it (and for any sync in progress).
func (s *syncer) flush(pt syncPoint) error {
	s.request(pt)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.align > 0 && pt.offset%s.align != 0 {
		pt = s.want // the last part boundary asked for is as far as it gets
	}
	for s.running || (!s.stopped && s.err == nil && s.done.offset < pt.offset) {
		s.cond.Wait()
	}
	return s.err
}

// durable returns the last durable offset the store reported.
func (s *syncer) durable() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reached
}

// failed returns the error of a failed sync, if any.
func (s *syncer) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}
