package integration

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

// faultFileSize is 7 chunks, the last one short, so that cuts and flips
// can land in full chunks, on boundaries and in the short tail.
const faultFileSize = 6*chunkSize + 123

// TestCutResume cuts the first connection after n client→server bytes,
// at points chosen in the session's layout, and lets the sender's retries
// resume. The daemon keeps exactly the whole chunks that reached it, the
// final attempt resumes there and sends the rest once, and the last
// connection carries exactly that session.
func TestCutResume(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, faultFileSize, 7)
	w := probeWire(t, src, faultFileSize)
	tests := []struct {
		name string
		n    int64
	}{
		{"at connect", 0},
		{"in the hello magic", 3},
		{"at the end of the hello", w.hello},
		{"in the offer", w.hello + 20},
		{"before the first chunk", w.preamble},
		{"in the first chunk header", w.preamble + chunkHashAt},
		{"mid first chunk", w.chunkFrame(0) + w.chunkHeader + chunkSize/2},
		{"on the boundary after two chunks", w.chunkFrame(2)},
		{"one byte into the third chunk", w.chunkFrame(2) + 1},
		{"one byte before the boundary after four chunks", w.chunkFrame(4) - 1},
		{"in the short last chunk", w.chunkFrame(6) + w.chunkHeader + 50},
		{"after the last chunk", w.total - w.trailer},
		{"in the trailer", w.total - w.trailer/2},
		{"one byte short of the end", w.total - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			d := startDaemon(t, root)
			p := newProxy(t, d.addr)
			p.CutNextConn(tt.n)
			r := runFerry(t, sendArgs(p.Addr(), "--retries", "10", src)...)
			wantCode(t, r, exitOK)
			rec := onlyRecord(t, r)
			checkCommitted(t, rec, src, filepath.Join(root, "data.bin"))
			conns := p.Conns()
			if first := conns[0]; !first.Cut || first.Bytes[faultproxy.ClientToServer] != tt.n {
				t.Fatalf("first connection: cut %v after %d bytes, want a cut after %d", first.Cut, first.Bytes[0], tt.n)
			}
			// The daemon may still hold the cut session's transfer (it is
			// making its data durable) when the next session offers it: a
			// busy refusal, and one more attempt on the same connection.
			busy := len(d.lines(0, "msg=refused", "code=7"))
			if rec.Attempts < 2 || rec.Attempts != len(conns)+busy {
				t.Errorf("attempts = %d over %d connections and %d busy refusals; want one connection per attempt, at least 2, and one more per busy refusal",
					rec.Attempts, len(conns), busy)
			}
			want := w.durableAfter(tt.n)
			if rec.ResumedFrom != want {
				t.Errorf("resumed_from = %d, want %d: the whole chunks that reached the daemon before the cut", rec.ResumedFrom, want)
			}
			checkResend(t, rec)
			if rec.TotalSentBytes < rec.SentBytes+want {
				t.Errorf("total_sent_bytes %d < %d sent last + %d that reached the daemon first", rec.TotalSentBytes, rec.SentBytes, want)
			}
			last := conns[len(conns)-1].Bytes[faultproxy.ClientToServer]
			if wantLast := w.session(rec.ResumedFrom); last != wantLast && busy == 0 {
				t.Errorf("last connection carried %d bytes; a session resuming at %d that sends each chunk once is %d",
					last, rec.ResumedFrom, wantLast)
			}
			d.waitLine(0, "msg=committed", fmt.Sprintf("resumed_from=%d", rec.ResumedFrom))
		})
	}
}

// TestCorruptionIsResent inverts one byte of the client→server stream. A
// corrupted chunk must be refused and sent again in the same session; a
// corrupted frame header or trailer may end the session, and a retry must
// then mend it. Either way the committed file is the source.
func TestCorruptionIsResent(t *testing.T) {
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, faultFileSize, 8)
	w := probeWire(t, src, faultFileSize)
	tests := []struct {
		name        string
		at          int64
		sameSession bool // a chunk hash catches it: rejected and resent without reconnecting
		chunkLen    int64
	}{
		{name: "data of the second chunk", at: w.chunkFrame(1) + w.chunkHeader + 100, sameSession: true, chunkLen: chunkSize},
		{name: "hash of the second chunk", at: w.chunkFrame(1) + chunkHashAt + 3, sameSession: true, chunkLen: chunkSize},
		{name: "data of the short last chunk", at: w.total - w.trailer - 50, sameSession: true, chunkLen: faultFileSize % chunkSize},
		{name: "offset of the second chunk", at: w.chunkFrame(1) + frameHeaderSize},
		{name: "length field of the third frame header", at: w.chunkFrame(2) + 1},
		{name: "whole-file hash in the trailer", at: w.total - 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			d := startDaemon(t, root)
			p := newProxy(t, d.addr)
			p.FlipByte(tt.at)
			r := runFerry(t, sendArgs(p.Addr(), "--retries", "5", src)...)
			wantCode(t, r, exitOK)
			rec := onlyRecord(t, r)
			checkCommitted(t, rec, src, filepath.Join(root, "data.bin"))
			if p.Flips() != 1 {
				t.Fatalf("the fault did not fire (flips = %d)", p.Flips())
			}
			if !tt.sameSession {
				return
			}
			if rec.Attempts != 1 {
				t.Errorf("attempts = %d, want 1: a bad chunk is resent within the session", rec.Attempts)
			}
			if rec.SentBytes < rec.Size+tt.chunkLen || rec.SentBytes > 2*rec.Size {
				t.Errorf("sent_bytes = %d; want the file (%d) plus at least the rejected chunk (%d), at most twice the file",
					rec.SentBytes, rec.Size, tt.chunkLen)
			}
		})
	}
}

// TestStallRelease stops the proxy mid-file. A short stall is only a
// pause; one longer than the sender's --timeout makes it reconnect (while
// still stalled: the proxy counts the new connection) and resume.
func TestStallRelease(t *testing.T) {
	slow(t)
	const size = 32 << 20 // more than loopback socket buffers hold, so writes block
	tests := []struct {
		name      string
		flags     []string
		reconnect bool
	}{
		{name: "short stall", flags: nil},
		{name: "stall outlasting --timeout", flags: []string{"--timeout", "1s"}, reconnect: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			root := t.TempDir()
			src := filepath.Join(t.TempDir(), "data.bin")
			writeRandom(t, src, size, uint64(20+i))
			d := startDaemon(t, root)
			p := newProxy(t, d.addr)
			p.Throttle(16 << 20)
			s := startFerry(t, sendArgs(p.Addr(), append(tt.flags, "--retries", "10", src)...)...)
			if err := p.WaitBytes(ctx, 4<<20); err != nil {
				t.Fatal(err)
			}
			p.Stall()
			held := p.Total(faultproxy.ClientToServer)
			if tt.reconnect {
				if err := p.WaitConns(ctx, 2); err != nil {
					t.Fatalf("sender did not reconnect during the stall: %v", err)
				}
			} else {
				<-time.After(300 * time.Millisecond) // the fault: how long the link stays stalled
			}
			// At most the slice in flight when Stall was called goes on.
			if moved := p.Total(faultproxy.ClientToServer) - held; moved > 1<<20 {
				t.Errorf("%d bytes went through a stalled proxy", moved)
			}
			p.Throttle(0)
			p.Release()
			r := s.wait()
			wantCode(t, r, exitOK)
			rec := onlyRecord(t, r)
			checkCommitted(t, rec, src, filepath.Join(root, "data.bin"))
			checkResend(t, rec)
			if !tt.reconnect && rec.Attempts != 1 {
				t.Errorf("attempts = %d, want 1: a short stall is no failure", rec.Attempts)
			}
			if tt.reconnect && rec.Attempts < 2 {
				t.Errorf("attempts = %d, want a reconnect", rec.Attempts)
			}
		})
	}
}

// TestRetriesCountOnlyAttemptsWithoutProgress cuts the link on each of the
// first four connections, after every one has made data durable. With
// --retries 1 the send must still finish: --retries bounds attempts in a
// row without progress, not attempts in all, so a long transfer over a
// link that drops now and then never runs out of retries.
func TestRetriesCountOnlyAttemptsWithoutProgress(t *testing.T) {
	ctx := testContext(t)
	root := t.TempDir()
	d := startDaemon(t, root, "--sync-bytes", "1048576")
	p := newProxy(t, d.addr)
	// Slow enough that acknowledgements of durable data reach the sender
	// well before each cut: each connection carries 4 MiB over ~0.5 s,
	// with an fsync and an ack after every MiB.
	p.Throttle(8 << 20)
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 18<<20, 9)
	const cuts = 4
	p.CutNextConn(4 << 20)
	f := startFerry(t, sendArgs(p.Addr(), "--retries", "1", "--backoff", "10ms", src)...)
	for i := 1; i < cuts; i++ {
		if err := p.WaitConns(ctx, i); err != nil {
			t.Fatalf("waiting for connection %d: %v", i, err)
		}
		p.CutNextConn(4 << 20) // arms connection i+1, made only after connection i is cut
	}
	r := f.wait()
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	if rec.Attempts != cuts+1 {
		t.Errorf("%d attempts, want %d (one per cut, then the last)", rec.Attempts, cuts+1)
	}
	checkCommitted(t, rec, src, filepath.Join(root, "data.bin"))
}
