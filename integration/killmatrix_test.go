package integration

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

// The kill -9 matrix (issue 5, suite 1): one large upload through a
// throttling proxy, interrupted by SIGKILL at random points — of ferryd,
// which is restarted on the same root while the sender retries on its own,
// and, in a second test, of the sender, which is run again. Each kill
// point is a file offset, turned into a byte count of the session carrying
// it and waited for with the proxy's counters.
//
// After each kill the test reads the durable offset from the partial's
// state record and checks the next session: it must start at that offset
// (at most one chunk below it) and carry every byte from there once. The
// file must end bit-identical to the source. Figures are logged per kill
// and summed up in one line: bytes resent past the durable offset, how far
// the durable offset lagged behind what had reached ferryd, and the time
// from ferryd's restart (its listening line) or the sender's rerun to the
// first chunk byte of the next session.
//
// The bounded form runs in `make test`: a 128 MiB file at 64 MiB/s, 20
// kills each (5 under -short). FERRY_SOAK=1 runs the long form: a 1 GiB
// file at 256 MiB/s, 50 kills each.
// FERRY_KILL_SEED=N repeats a run's kill points; every run logs its seed.

// matrix is the shape of one kill -9 matrix run.
type matrix struct {
	size  int64    // bytes of the file sent
	kills int      // SIGKILLs before the run that completes
	rate  int64    // proxy throttle, client→server bytes per second
	flags []string // ferryd's
	seed  uint64
}

func newMatrix(t *testing.T, flags []string) matrix {
	t.Helper()
	m := matrix{size: 128 << 20, kills: 20, rate: 64 << 20, flags: flags}
	switch {
	case os.Getenv("FERRY_SOAK") != "":
		m.size, m.kills, m.rate = 1<<30, 50, 256<<20
	case testing.Short():
		m.kills = 5
	}
	m.seed = uint64(time.Now().UnixNano())
	if s := os.Getenv("FERRY_KILL_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_KILL_SEED=%q: %v", s, err)
		}
		m.seed = seed
	}
	t.Logf("kill matrix: seed %d (repeat with FERRY_KILL_SEED=%d), %d kills, %d MiB file at %d MiB/s, ferryd flags %q",
		m.seed, m.seed, m.kills, m.size>>20, m.rate>>20, m.flags)
	return m
}

// points returns m.kills distinct file offsets in (0, size − margin),
// ascending: the i-th session is killed once it has carried the file up
// to the i-th. The margin keeps the upload from completing before a kill
// lands (see TestKillMatrixSender).
func (m matrix) points(margin int64) []int64 {
	rng := rand.New(rand.NewPCG(m.seed, 0x6b696c6c))
	seen := map[int64]bool{}
	var pts []int64
	for len(pts) < m.kills {
		p := 1 + rng.Int64N(m.size-margin-1)
		if !seen[p] {
			seen[p] = true
			pts = append(pts, p)
		}
	}
	slices.Sort(pts)
	return pts
}

// Wire layout of a session's client→server stream after its preamble
// (docs/PROTOCOL.md): chunk frames of a 49-byte header and up to chunkSize
// data bytes, then a trailer frame.
const (
	chunkFrameHeader = chunkHashAt + 32
	trailerFrame     = frameHeaderSize + 4 + 32 // transfer ID, whole-file BLAKE3
)

// matrixSession is one connection of a run, as the proxy saw it.
type matrixSession struct {
	id        int       // the proxy's ConnStats.ID
	preamble  int64     // client→server bytes before the first chunk frame
	from      int64     // offset of the first chunk: where the session resumed
	firstByte time.Time // when the first byte of that chunk frame went through
}

// bytesTo is how many bytes of the session's stream carry the file up
// to offset off, frame headers included: the preamble alone when the
// session started past off (a kill landed late, past the next point).
func (s matrixSession) bytesTo(off int64) int64 {
	k := max(off-s.from, 0)
	n := s.preamble + k/chunkSize*(chunkFrameHeader+chunkSize)
	if rem := k % chunkSize; rem > 0 {
		n += chunkFrameHeader + rem
	}
	return n
}

// reached returns how far the first b bytes of the session's stream carry
// a file of size bytes: to offset data, and to offset whole in complete
// chunks.
func (s matrixSession) reached(b, size int64) (data, whole int64) {
	b -= s.preamble
	if b <= 0 {
		return s.from, s.from
	}
	frame := int64(chunkFrameHeader + chunkSize)
	full := b / frame
	data = full*chunkSize + max(0, b%frame-chunkFrameHeader)
	whole = full * chunkSize
	if s.from+data >= size {
		data, whole = size-s.from, size-s.from
	}
	return s.from + data, s.from + whole
}

// wholeSession is the length of a session's stream that resumes at from
// and sends every chunk once.
func (s matrixSession) wholeSession(size int64) int64 {
	rest := size - s.from
	return s.preamble + (rest+chunkSize-1)/chunkSize*chunkFrameHeader + rest + trailerFrame
}

// matrixRun follows the sessions of one run through the proxy.
type matrixRun struct {
	t     *testing.T
	p     *faultproxy.Proxy
	proc  *ferryProc // the sender running
	next  int        // ID of the next connection to look at
	extra int        // connections that ended before their first chunk
}

var errSenderExited = errors.New("ferry send exited")

// waitBytes waits until connection id has forwarded n client→server
// bytes, giving up when the sender exits first.
func (r *matrixRun) waitBytes(id int, n int64) error {
	ctx, cancel := context.WithTimeoutCause(r.t.Context(), waitTimeout, errors.New("timed out"))
	defer cancel()
	ctx, cancelCause := context.WithCancelCause(ctx)
	defer cancelCause(nil)
	proc := r.proc
	go func() {
		select {
		case <-proc.done:
			cancelCause(errSenderExited)
		case <-ctx.Done():
		}
	}()
	return r.p.WaitConnBytes(ctx, id, n)
}

// session waits for the next connection that sends a chunk frame and
// reads its layout from the proxy's recording of its first bytes.
func (r *matrixRun) session() matrixSession {
	r.t.Helper()
	for {
		id := r.next
		r.next++
		s, err := r.readSession(id)
		if errors.Is(err, faultproxy.ErrConnClosed) && r.extra < 5 {
			r.t.Logf("connection %d ended before its first chunk: %v", id, err)
			r.extra++
			continue
		}
		if err != nil {
			r.t.Fatalf("waiting for the first chunk of connection %d: %v", id, err)
		}
		return s
	}
}

func (r *matrixRun) readSession(id int) (matrixSession, error) {
	var at int64 // where the next frame starts
	for {
		if err := r.waitBytes(id, at+1); err != nil {
			return matrixSession{}, err
		}
		first := time.Now()
		if err := r.waitBytes(id, at+chunkHashAt); err != nil {
			return matrixSession{}, err
		}
		head := r.p.Conns()[id-1].Head
		if int64(len(head)) < at+chunkHashAt {
			return matrixSession{}, fmt.Errorf("frame at %d is past the %d bytes recorded", at, len(head))
		}
		if head[at] == frameChunk {
			off := int64(binary.BigEndian.Uint64(head[at+frameHeaderSize:]))
			return matrixSession{id: id, preamble: at, from: off, firstByte: first}, nil
		}
		at += frameHeaderSize + int64(binary.BigEndian.Uint32(head[at+1:]))
	}
}

// durableOnDisk returns the durable offset in the state record of the
// root's only partial (docs/PROTOCOL.md, "State record"), 0 if none.
func durableOnDisk(t *testing.T, root string) int64 {
	t.Helper()
	states, err := filepath.Glob(filepath.Join(root, ".ferry", "partials", "*.state"))
	if err != nil || len(states) > 1 {
		t.Fatalf("state records %q: %v", states, err)
	}
	if len(states) == 0 {
		return 0
	}
	b, err := os.ReadFile(states[0])
	if err != nil {
		t.Fatal(err)
	}
	// Version 4: the name (length at 74) is followed by the merge stack
	// (u16 length, then its encoding), the sender's address (u8 length,
	// then the address), the token's name (likewise) and the checksum.
	if len(b) < 76+2+10+1+1+32 || string(b[:4]) != "FRYS" || binary.BigEndian.Uint16(b[4:]) != 4 {
		t.Fatalf("%s is not a state record of version 4 (%d bytes)", states[0], len(b))
	}
	stack := 76 + int(binary.BigEndian.Uint16(b[74:]))
	if len(b) < stack+2 {
		t.Fatalf("%s is not a state record of version 4 (%d bytes)", states[0], len(b))
	}
	remote := stack + 2 + int(binary.BigEndian.Uint16(b[stack:]))
	token := remote + 1
	if len(b) > remote {
		token += int(b[remote])
	}
	if len(b) < token+1 || len(b) != token+1+int(b[token])+32 {
		t.Fatalf("%s is not a state record of version 4 (%d bytes)", states[0], len(b))
	}
	return int64(binary.BigEndian.Uint64(b[66:]))
}

// kill is what one SIGKILL left and how the next session took over.
type kill struct {
	point   int64         // file offset the kill was aimed at (see bytesTo)
	reached int64         // file offset that had reached ferryd's socket
	durable int64         // durable offset in the state record after the kill
	resumed int64         // offset the next session started at
	latency time.Duration // restart or rerun to the next session's first chunk byte
}

// checkResume checks the next session against the kill before it: it
// starts at the durable offset, at most one chunk below it.
func checkResume(t *testing.T, i int, k *kill, next matrixSession) {
	t.Helper()
	k.resumed = next.from
	if resent := k.durable - k.resumed; resent < 0 || resent > chunkSize {
		t.Errorf("kill %d: durable offset %d, but the next session started at %d", i+1, k.durable, k.resumed)
	}
	t.Logf("kill %2d at %10d: reached %10d, durable %10d (lag %8d), resumed at %10d (resent %d), first chunk byte after %v",
		i+1, k.point, k.reached, k.durable, k.reached-k.durable, k.resumed, k.durable-k.resumed, k.latency.Round(time.Microsecond))
}

// summarize logs the matrix's figures on one line.
func summarize(t *testing.T, what, latencyFrom string, m matrix, kills []kill, finalResent int64, proxied int64, elapsed time.Duration) {
	t.Helper()
	var resent, lag []int64
	var lat []time.Duration
	for i, k := range kills {
		r := k.durable - k.resumed
		if i == len(kills)-1 {
			r += finalResent
		}
		resent = append(resent, r)
		lag = append(lag, k.reached-k.durable)
		lat = append(lat, k.latency)
	}
	slices.Sort(resent)
	slices.Sort(lag)
	slices.Sort(lat)
	med := func(n int) int { return n / 2 }
	t.Logf("kill -9 %s matrix: seed %d, %d kills of a %d MiB upload: resent past the durable offset max %d median %d bytes; "+
		"durable offset behind data received max %d median %d bytes; %s to first chunk byte max %v median %v; "+
		"%d bytes through the proxy (%.2f× the file) in %v",
		what, m.seed, len(kills), m.size>>20, resent[len(resent)-1], resent[med(len(resent))],
		lag[len(lag)-1], lag[med(len(lag))], latencyFrom, lat[len(lat)-1].Round(time.Microsecond), lat[med(len(lat))].Round(time.Microsecond),
		proxied, float64(proxied)/float64(m.size), elapsed.Round(time.Millisecond))
}

// finish checks the session that completed the upload and its --json
// record, and returns the record and the bytes sent past size −
// resumed_from.
func finish(t *testing.T, r result, last matrixSession, p *faultproxy.Proxy, src, root string, size int64) (record, int64) {
	t.Helper()
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	checkCommitted(t, rec, src, filepath.Join(root, filepath.Base(src)))
	checkOnly(t, filepath.Join(root, ".ferry", "partials"))
	if rec.ResumedFrom != last.from {
		t.Errorf("resumed_from = %d, but the last session's first chunk was at %d", rec.ResumedFrom, last.from)
	}
	checkResend(t, rec)
	got := p.Conns()[last.id-1].Bytes[faultproxy.ClientToServer]
	if want := last.wholeSession(size); got != want {
		t.Errorf("the last session carried %d bytes; resuming at %d and sending each chunk once is %d", got, last.from, want)
	}
	t.Logf("completed: resumed_from %d, sent_bytes %d (size − resumed_from = %d), total_sent_bytes %d, attempts %d",
		rec.ResumedFrom, rec.SentBytes, size-rec.ResumedFrom, rec.TotalSentBytes, rec.Attempts)
	return rec, rec.SentBytes - (size - rec.ResumedFrom)
}

// stderrOf kills s if it still runs and returns what it wrote on stderr.
func stderrOf(s *ferryProc) string {
	s.kill()
	return s.stderr.String()
}

// TestKillMatrixDaemon kills ferryd with SIGKILL at random points of one
// upload and restarts it on the same root each time; the sender, retrying
// on its own, resumes from what the killed daemon had made durable.
//
// The proxy holds new connections across each restart (HoldDials), so
// that every kill costs the sender exactly one retry, whatever its
// backoff: ferry's backoff grows with the attempt count and does not
// reset after progress, and 20 retries would otherwise wait minutes.
func TestKillMatrixDaemon(t *testing.T) {
	tests := []struct {
		name  string
		flags []string
	}{
		// The durable offset follows the data closely: the resume is
		// checked to the chunk.
		{name: "fsync every chunk", flags: syncEveryChunk},
		// What a SIGKILL costs with ferryd's defaults (16 MiB or 1 s).
		{name: "default fsync batching"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { killMatrixDaemon(t, newMatrix(t, tt.flags)) })
	}
}

func killMatrixDaemon(t *testing.T, m matrix) {
	start := time.Now()
	root := t.TempDir()
	src := filepath.Join(t.TempDir(), "big.bin")
	writeRandom(t, src, m.size, m.seed)
	d := startDaemon(t, root, m.flags...)
	p := newProxy(t, d.addr)
	p.RecordHead(8 << 10)
	p.Throttle(m.rate)
	s := startFerry(t, "send", "--to", p.Addr(), "--json", "--backoff", "0s",
		"--retries", strconv.Itoa(2*m.kills+10), src)
	run := &matrixRun{t: t, p: p, proc: s, next: 1}

	cur := run.session()
	if cur.from != 0 {
		t.Fatalf("first session started at %d", cur.from)
	}
	var kills []kill
	// A kill lands within milliseconds of its point; at the proxy's
	// rate 8 MiB are 125 ms, room for a loaded machine.
	for i, point := range m.points(8 << 20) {
		if err := run.waitBytes(cur.id, cur.bytesTo(point)); err != nil {
			t.Fatalf("kill %d: waiting for offset %d on connection %d: %v\nsender: %s", i+1, point, cur.id, err, stderrOf(s))
		}
		p.HoldDials()
		d.kill()
		k := kill{point: point}
		k.reached, _ = cur.reached(p.Conns()[cur.id-1].Bytes[faultproxy.ClientToServer], m.size)
		k.durable = durableOnDisk(t, root)
		if k.durable < cur.from || k.durable > k.reached {
			t.Errorf("kill %d: durable offset %d outside [%d, %d]: where the session resumed, what had reached ferryd", i+1, k.durable, cur.from, k.reached)
		}
		if _, err := os.Lstat(filepath.Join(root, filepath.Base(src))); !os.IsNotExist(err) {
			t.Fatalf("kill %d: the file is committed before the upload ended (%v)", i+1, err)
		}
		d = startDaemon(t, root, m.flags...)
		restarted := time.Now()
		p.SetUpstream(d.addr)
		p.ReleaseDials()
		cur = run.session()
		k.latency = cur.firstByte.Sub(restarted)
		checkResume(t, i, &k, cur)
		kills = append(kills, k)
	}
	p.Throttle(0)
	rec, finalResent := finish(t, s.wait(), cur, p, src, root, m.size)
	if conns := len(p.Conns()); rec.Attempts != conns || run.extra > 0 {
		t.Errorf("attempts = %d over %d connections, %d of them ended before a chunk; want one connection per kill and one more", rec.Attempts, conns, run.extra)
	}
	summarize(t, "ferryd", "restart (listening line)", m, kills, finalResent, p.Total(faultproxy.ClientToServer), time.Since(start))
}

// TestKillMatrixSender kills the sender with SIGKILL at random points of
// one upload and runs it again each time; every run resumes from what the
// daemon made durable when it saw the session end.
func TestKillMatrixSender(t *testing.T) {
	m := newMatrix(t, nil)
	start := time.Now()
	root := t.TempDir()
	src := filepath.Join(t.TempDir(), "big.bin")
	writeRandom(t, src, m.size, m.seed+1)
	d := startDaemon(t, root, m.flags...)
	p := newProxy(t, d.addr)
	p.RecordHead(8 << 10)
	p.Throttle(m.rate)
	args := []string{"send", "--to", p.Addr(), "--json", "--retries", "0", src}
	run := &matrixRun{t: t, p: p, next: 1}

	var kills []kill
	var k *kill
	// The sender runs ahead of the proxy by what the socket buffers on
	// both sides of it hold, a few MiB on loopback: a sender killed
	// closer than that to the end has handed over the whole file, the
	// daemon commits it, and a rerun is refused as existing.
	for i, point := range append(m.points(16<<20), -1) {
		from := d.mark()
		s := startFerry(t, args...)
		started := time.Now()
		run.proc = s
		cur := run.session()
		if k == nil {
			if cur.from != 0 {
				t.Fatalf("first session started at %d", cur.from)
			}
		} else {
			k.latency = cur.firstByte.Sub(started)
			checkResume(t, i-1, k, cur)
			kills = append(kills, *k)
		}
		if point < 0 { // the run that completes
			p.Throttle(0)
			_, finalResent := finish(t, s.wait(), cur, p, src, root, m.size)
			summarize(t, "sender", "rerun (process start)", m, kills, finalResent, p.Total(faultproxy.ClientToServer), time.Since(start))
			return
		}
		if err := run.waitBytes(cur.id, cur.bytesTo(point)); err != nil {
			t.Fatalf("kill %d: waiting for offset %d on connection %d: %v\nsender: %s", i+1, point, cur.id, err, stderrOf(s))
		}
		s.kill()
		d.waitLine(from, `msg="session ended"`) // the daemon has made what it verified durable
		k = &kill{point: point}
		got := p.Conns()[cur.id-1].Bytes[faultproxy.ClientToServer]
		var whole int64
		k.reached, whole = cur.reached(got, m.size)
		k.durable = durableOnDisk(t, root)
		// Nothing was lost with the sender: every whole chunk that
		// reached the daemon is durable, and nothing more.
		if k.durable != whole {
			t.Errorf("kill %d: durable offset %d, want %d: the whole chunks among the %d bytes that reached ferryd", i+1, k.durable, whole, got)
		}
	}
}

// TestKillSenderAfterLastByte kills the sender after its last byte has
// left it but before it hears that the file is committed, and runs it
// again: the run must end as the first would have, exit 0 and the file
// reported committed, without resending it.
func TestKillSenderAfterLastByte(t *testing.T) {
	ctx := testContext(t)
	root := t.TempDir()
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, faultFileSize, 9)
	w := probeWire(t, src, faultFileSize)
	d := startDaemon(t, root)
	p := newProxy(t, d.addr)
	s := startFerry(t, sendArgs(p.Addr(), src)...)
	if err := p.WaitBytes(ctx, w.total); err != nil {
		t.Fatal(err)
	}
	p.Stall() // hold the daemon's answer
	s.kill()
	p.Release()
	d.waitLine(0, "msg=committed")
	r := runFerry(t, sendArgs(d.addr, src)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	checkCommitted(t, rec, src, filepath.Join(root, "data.bin"))
	if rec.Status != "unchanged" {
		t.Errorf("the rerun's record has status %q, want unchanged: the daemon committed it before", rec.Status)
	}
	if rec.SentBytes != 0 {
		t.Errorf("the rerun sent %d bytes of a file already committed", rec.SentBytes)
	}
}
