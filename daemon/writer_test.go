package daemon

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// gatedPartial is a Partial whose writes wait for a gate and whose syncs
// are recorded, to watch the order chunkWriter keeps.
type gatedPartial struct {
	Partial // nil: only WriteAt and Sync are called
	gate    chan error

	mu     sync.Mutex
	writes []int64
	syncs  []int64
}

func (p *gatedPartial) WriteAt(b []byte, off int64) error {
	if err := <-p.gate; err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.writes = append(p.writes, off)
	return nil
}

func (p *gatedPartial) Sync(stack *transfer.MergeStack) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.syncs = append(p.syncs, stack.Offset())
	return stack.Offset(), nil
}

func (p *gatedPartial) recorded() (writes, syncs []int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int64(nil), p.writes...), append([]int64(nil), p.syncs...)
}

// pointAt returns a sync point whose merge stack covers n chunks of cs bytes.
func pointAt(t *testing.T, cs, n int) syncPoint {
	t.Helper()
	s, err := transfer.NewMergeStack(cs)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := s.Push(transfer.CV{}, int64(cs)); err != nil {
			t.Fatal(err)
		}
	}
	return syncPoint{offset: s.Offset(), stack: *s}
}

// TestChunkWriterSyncsOnlyWrittenData: a sync point reaches the syncer
// only once every chunk it covers is written, so the durable offset never
// runs ahead of the data (DESIGN.md, durability).
func TestChunkWriterSyncsOnlyWrittenData(t *testing.T) {
	const cs = 16 << 10
	p := &gatedPartial{gate: make(chan error)}
	start := pointAt(t, cs, 0)
	s := newSyncer(p, start, func(int64) {})
	bufs := [][]byte{make([]byte, cs), make([]byte, cs)}
	w := newChunkWriter(p, s, start, bufs)

	b := w.buffer()
	w.write(writeJob{buf: b, data: b, off: 0, pt: pointAt(t, cs, 1)})
	b = w.buffer() // the second buffer: free while the first is written
	w.write(writeJob{buf: b, data: b, off: cs, pt: pointAt(t, cs, 2), sync: true})
	if _, syncs := p.recorded(); len(syncs) != 0 {
		t.Fatalf("synced %v before any chunk was written", syncs)
	}
	p.gate <- nil // first chunk
	if _, syncs := p.recorded(); len(syncs) != 0 {
		t.Fatalf("synced %v before the chunk its point covers was written", syncs)
	}
	p.gate <- nil // second chunk
	written, err := w.stop()
	if err != nil || written.offset != 2*cs {
		t.Fatalf("stop = %d, %v; want %d, nil", written.offset, err, 2*cs)
	}
	if err := s.flush(written); err != nil {
		t.Fatal(err)
	}
	writes, syncs := p.recorded()
	if len(writes) != 2 || writes[0] != 0 || writes[1] != cs {
		t.Errorf("writes at %v, want [0 %d]", writes, cs)
	}
	if len(syncs) == 0 || syncs[len(syncs)-1] != 2*cs {
		t.Errorf("syncs at %v, want the last at %d", syncs, 2*cs)
	}
}

// TestChunkWriterStopsAtFailedWrite: after a failed write no later chunk
// is written, and the written point stays before the failed chunk, so
// the session makes durable only what reached the file.
func TestChunkWriterStopsAtFailedWrite(t *testing.T) {
	const cs = 16 << 10
	p := &gatedPartial{gate: make(chan error, 2)}
	start := pointAt(t, cs, 1)
	s := newSyncer(p, start, func(int64) {})
	w := newChunkWriter(p, s, start, [][]byte{make([]byte, cs), make([]byte, cs)})

	broken := errors.New("disk on fire")
	p.gate <- broken
	p.gate <- nil
	b := w.buffer()
	w.write(writeJob{buf: b, data: b, off: cs, pt: pointAt(t, cs, 2), sync: true})
	b = w.buffer()
	w.write(writeJob{buf: b, data: b, off: 2 * cs, pt: pointAt(t, cs, 3), sync: true})
	written, err := w.stop()
	if !errors.Is(err, broken) || written.offset != cs {
		t.Fatalf("stop = %d, %v; want %d, %v", written.offset, err, cs, broken)
	}
	if !errors.Is(w.failed(), broken) {
		t.Errorf("failed = %v, want %v", w.failed(), broken)
	}
	if writes, syncs := p.recorded(); len(writes) != 0 || len(syncs) != 0 {
		t.Errorf("after a failed write: writes %v, syncs %v; want none", writes, syncs)
	}
}

// partsPartial makes only whole parts of align bytes durable, as an object
// store does.
type partsPartial struct {
	gatedPartial
	align int64
}

func (p *partsPartial) WriteAt([]byte, int64) error { return nil }

func (p *partsPartial) Sync(stack *transfer.MergeStack) (int64, error) {
	_, _ = p.gatedPartial.Sync(stack)
	return stack.Offset() / p.align * p.align, nil
}

// TestSyncerAcksOnlyReachedOffset: the sender hears of the durable offset
// the store reached, not of the one asked for.
func TestSyncerAcksOnlyReachedOffset(t *testing.T) {
	const cs = 16 << 10
	p := &partsPartial{align: 4 * cs}
	var mu sync.Mutex
	var acks []int64
	s := newSyncer(p, pointAt(t, cs, 0), func(d int64) { mu.Lock(); acks = append(acks, d); mu.Unlock() })
	for _, n := range []int{3, 5, 6, 9} {
		if err := s.flush(pointAt(t, cs, n)); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acks) != 2 || acks[0] != 4*cs || acks[1] != 8*cs {
		t.Errorf("acks %v, want [%d %d]", acks, 4*cs, 8*cs)
	}
	if d := s.durable(); d != 8*cs {
		t.Errorf("durable %d, want %d", d, 8*cs)
	}
}

// alignedPartial is a partsPartial that says so (a SyncAligner) and whose
// syncs wait for gate.
type alignedPartial struct {
	partsPartial
	syncGate chan struct{}
	reached  int64
}

func (p *alignedPartial) SyncAlign() int64 { return p.align }

func (p *alignedPartial) Sync(stack *transfer.MergeStack) (int64, error) {
	<-p.syncGate
	if stack.Offset()%p.align == 0 {
		p.reached = stack.Offset()
	}
	return p.reached, nil // off a boundary: no further than before
}

// TestSyncerKeepsPartBoundary: on a store of whole parts, the flush of an
// interrupted transfer (at a point off a part boundary) must not replace
// a pending sync at a boundary, which would then never become durable.
func TestSyncerKeepsPartBoundary(t *testing.T) {
	const cs = 16 << 10
	p := &alignedPartial{partsPartial: partsPartial{align: 4 * cs}, syncGate: make(chan struct{})}
	s := newSyncer(p, pointAt(t, cs, 0), func(int64) {})
	s.request(pointAt(t, cs, 4)) // runs, held at the gate
	s.request(pointAt(t, cs, 8)) // pending behind it
	done := make(chan error, 1)
	go func() { done <- s.flush(pointAt(t, cs, 10)) }()
	close(p.syncGate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := s.durable(); d != 8*cs {
		t.Errorf("durable %d after the flush, want the pending part boundary %d", d, 8*cs)
	}
}

// TestWriteDepthReadsAhead: with 1 MiB chunks, while one chunk's write is
// held by the device, the session still has buffers to read, verify and
// queue three more chunks, so that an O_DIRECT write's varying latency
// does not stall the reads (issue 10: with one spare buffer the session
// waited for the writer a fifth of a quiet transfer's time). Chunks above
// 2 MiB keep two buffers, bounding a session's memory.
func TestWriteDepthReadsAhead(t *testing.T) {
	if got := writeDepth(4 << 20); got != 2 {
		t.Errorf("writeDepth(4 MiB) = %d, want 2", got)
	}
	const cs = 16 << 10 // the buffers' size does not matter here
	p := &gatedPartial{gate: make(chan error)}
	start := pointAt(t, cs, 0)
	s := newSyncer(p, start, func(int64) {})
	var bufs [][]byte
	for range writeDepth(1 << 20) {
		bufs = append(bufs, make([]byte, cs))
	}
	w := newChunkWriter(p, s, start, bufs)
	queued := make(chan int, 4)
	go func() {
		for i := range 4 { // the first is held at the gate
			b := w.buffer()
			w.write(writeJob{buf: b, data: b, off: int64(i) * cs, pt: pointAt(t, cs, i+1)})
			queued <- i + 1
		}
	}()
	n := 0
	for timeout := time.After(time.Second); n < 4; {
		select {
		case n = <-queued:
			continue
		case <-timeout:
		}
		break
	}
	if n < 4 {
		t.Errorf("queued %d chunks while the first was being written, want 4", n)
	}
	for range n {
		p.gate <- nil
	}
	for n < 4 { // let a blocked reader finish
		p.gate <- nil
		n = <-queued
	}
	if written, err := w.stop(); err != nil || written.offset != 4*cs {
		t.Fatalf("stop = %d, %v; want %d, nil", written.offset, err, 4*cs)
	}
}

// recordedPartsPartial makes whole parts of align bytes durable; its
// writes wait for gate and its syncs (the record of a part) for syncGate.
type recordedPartsPartial struct {
	gatedPartial
	align    int64
	syncGate chan struct{}
}

func (p *recordedPartsPartial) SyncAlign() int64 { return p.align }

func (p *recordedPartsPartial) Sync(stack *transfer.MergeStack) (int64, error) {
	<-p.syncGate
	_, _ = p.gatedPartial.Sync(stack)
	return stack.Offset() / p.align * p.align, nil
}

// TestChunkWriterWaitsForPartRecord: on a store of whole parts, no byte
// of the next part is written while the record of the part before it is
// pending, so that a daemon killed then has received at most one part
// (and the chunk buffers) past its durable offset. Writing on behind a
// slow record let a kill lose two parts (the S3 benchmark resent 20 MiB
// of 8 MiB parts).
func TestChunkWriterWaitsForPartRecord(t *testing.T) {
	const cs = 16 << 10
	p := &recordedPartsPartial{gatedPartial: gatedPartial{gate: make(chan error)}, align: 2 * cs, syncGate: make(chan struct{})}
	start := pointAt(t, cs, 0)
	s := newSyncer(p, start, func(int64) {})
	w := newChunkWriter(p, s, start, [][]byte{make([]byte, cs), make([]byte, cs)})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for i := range 4 {
			b := w.buffer()
			w.write(writeJob{buf: b, data: b, off: int64(i) * cs, pt: pointAt(t, cs, i+1), sync: (i+1)%2 == 0})
		}
	}()
	p.gate <- nil // chunk 0
	p.gate <- nil // chunk 1 ends part 1, whose record now waits at syncGate
	select {
	case p.gate <- nil:
		t.Fatal("chunk 2, of the next part, was written while the record of part 1 was pending")
	case <-time.After(100 * time.Millisecond):
	}
	p.syncGate <- struct{}{} // part 1 recorded
	p.gate <- nil            // chunk 2
	p.gate <- nil            // chunk 3 ends part 2
	p.syncGate <- struct{}{}
	<-fed
	written, err := w.stop()
	if err != nil || written.offset != 4*cs {
		t.Fatalf("stop = %d, %v; want %d, nil", written.offset, err, 4*cs)
	}
	if d := s.durable(); d != 4*cs {
		t.Errorf("durable %d, want %d", d, 4*cs)
	}
}
