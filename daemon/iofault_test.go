package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/internal/crashfs"
	"github.com/ferry-dev/ferry/transfer"
)

// I/O errors (issue 5, suite 3), injected behind the storage interface
// with crashfs: a failing fsync (with both of Linux's fsyncgate
// behaviours), EIO on write and on read, ENOSPC. Each must fail only the
// transfer it hits, with a clear error the sender may retry (ENOSPC: a
// permanent one), leave the durable offset where it was, and let the next
// session resume from what is really on disk.

// iofCase is the transfer the I/O-error tests run: 24 chunks of 8 KiB,
// fsync'ed every 2 chunks.
var iofCase = crashCase{name: "iofault", chunk: 16 << 10, size: 24*(16<<10) + 300, syncBytes: 32 << 10, remote: "io/f.bin"}

// liveState returns the state record of the machine's transfer as the
// daemon would read it now, or nil.
func (m *crashMachine) liveState(t *testing.T) *daemon.State {
	t.Helper()
	names, _ := m.fs.ReadDir(crashPartials)
	for _, n := range names {
		if strings.HasSuffix(n, ".state") {
			b, err := m.fs.ReadFile(path.Join(crashPartials, n))
			if err != nil {
				t.Fatal(err)
			}
			st, err := daemon.DecodeState(b)
			if err != nil {
				t.Fatalf("state record: %v", err)
			}
			return st
		}
	}
	return nil
}

// mustBoot starts a daemon on the machine, stopped at cleanup.
func (m *crashMachine) mustBoot(t *testing.T) *daemon.Server {
	t.Helper()
	srv, err := m.boot()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := crashStop(srv); err != nil {
			t.Error(err)
		}
	})
	return srv
}

// finish sends again on srv and checks that the transfer resumes at the
// durable offset wantFrom and commits the source durably.
func (m *crashMachine) finish(t *testing.T, srv *daemon.Server, wantFrom int64) {
	t.Helper()
	a := m.sendRetryBusy(srv)
	if a.err != nil {
		t.Fatalf("resume: %v", a.err)
	}
	if a.res.ResumedFrom != wantFrom {
		t.Errorf("resumed from %d, want the durable offset %d", a.res.ResumedFrom, wantFrom)
	}
	if a.res.Hash != transfer.HashBytes(m.data) {
		t.Errorf("result hash %x", a.res.Hash)
	}
	m.checkDurablyCommitted(t)
}

// sendRetryBusy sends until the daemon stops answering busy: the session
// that failed may still be releasing the transfer, as a sender retrying
// with backoff would see.
func (m *crashMachine) sendRetryBusy(srv *daemon.Server) crashAttempt {
	deadline := time.Now().Add(5 * time.Second)
	for {
		a := m.send(srv)
		if !errors.Is(a.err, transfer.ErrBusy) || time.Now().After(deadline) {
			return a
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkDurablyCommitted crashes the machine and checks the file survived.
func (m *crashMachine) checkDurablyCommitted(t *testing.T) {
	t.Helper()
	m.fs.Crash()
	m.fs.ResetToSyncedState()
	v, bad := m.inspect()
	for _, b := range bad {
		t.Error(b)
	}
	if !v.committed {
		t.Errorf("%s not in place after a crash that followed Committed (%v)", m.cc.remote, v)
	}
}

// settle waits until the daemon has closed every file: the session that
// failed has made what it could durable and released the transfer.
func (m *crashMachine) settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for m.fs.OpenHandles() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("daemon still holds %d files", m.fs.OpenHandles())
		}
		time.Sleep(time.Millisecond)
	}
}

// checkDurable waits for the daemon to settle, then checks that the
// live state record is at least at the offset the sender was told and
// never past data whose bytes are wrong, and returns its offset.
func (m *crashMachine) checkDurable(t *testing.T, told int64) int64 {
	t.Helper()
	m.settle(t)
	st := m.liveState(t)
	if st == nil {
		if told > 0 {
			t.Fatalf("no state record, but the sender was told durable offset %d", told)
		}
		return 0
	}
	if st.DurableOffset < told {
		t.Errorf("state record at %d, but the sender was told %d", st.DurableOffset, told)
	}
	data, err := m.fs.ReadFile(path.Join(crashPartials, strings.TrimSuffix(partialName(st.Name), ".state")+".data"))
	if err != nil || int64(len(data)) < st.DurableOffset || !bytes.Equal(data[:st.DurableOffset], m.data[:st.DurableOffset]) {
		t.Errorf("state record at %d, data of %d bytes does not hold the source there (%v)", st.DurableOffset, len(data), err)
	}
	return st.DurableOffset
}

// partialName returns KEY.state for a destination name: the key derived
// as daemon.partialKey does for the empty credential.
func partialName(name string) string {
	h := transfer.HashBytes([]byte("ferry partial v1\x00" + "" + "\x00" + name))
	const hexdigits = "0123456789abcdef"
	var b strings.Builder
	for _, c := range h[:16] {
		b.WriteByte(hexdigits[c>>4])
		b.WriteByte(hexdigits[c&15])
	}
	return b.String() + ".state"
}

// failNth fails the n-th operation that match selects with err, once.
func failNth(n int, err error, match func(op crashfs.Op) bool) (crashfs.FaultFunc, *atomic.Bool) {
	var seen int
	fired := new(atomic.Bool)
	return func(op crashfs.Op) error {
		if fired.Load() || !match(op) {
			return nil
		}
		if seen++; seen == n {
			fired.Store(true)
			return err
		}
		return nil
	}, fired
}

func isSync(suffix string) func(crashfs.Op) bool {
	return func(op crashfs.Op) bool { return op.Kind == crashfs.OpSync && strings.HasSuffix(op.Name, suffix) }
}

func isSyncDir(name string) func(crashfs.Op) bool {
	return func(op crashfs.Op) bool { return op.Kind == crashfs.OpSyncDir && op.Name == name }
}

// after matches the operations match selects once trigger has matched an
// earlier operation: e.g. the data fsync that follows the commit's chmod.
func after(trigger, match func(crashfs.Op) bool) func(crashfs.Op) bool {
	armed := false
	return func(op crashfs.Op) bool {
		if armed && match(op) {
			return true
		}
		armed = armed || trigger(op)
		return false
	}
}

func isOp(kind crashfs.OpKind, suffix string) func(crashfs.Op) bool {
	return func(op crashfs.Op) bool { return op.Kind == kind && strings.HasSuffix(op.Name, suffix) }
}

func TestIOFaultFsyncFails(t *testing.T) {
	tests := []struct {
		name     string
		n        int
		match    func() func(crashfs.Op) bool
		midway   bool   // the failure comes before all data is durable
		whatFail string // what the error names; "" if the transfer may commit
	}{
		// The syncer coalesces requests, so a transfer may make as few as
		// two state records before its commit: aim at the second.
		{"data fsync mid-transfer", 2, func() func(crashfs.Op) bool { return isSync(".data") }, true, "fsync"},
		{"state record fsync", 2, func() func(crashfs.Op) bool { return isSync(".tmp") }, true, "fsync"},
		// Not midway: when the syncer coalesces so that the failing
		// directory fsync is the last record's, a later directory fsync
		// may persist that rename, and rightly so: its data was fsync'ed
		// before it. checkDurable still proves nothing is recorded past
		// synced data and nothing was told beyond it.
		{"state record directory fsync", 2, func() func(crashfs.Op) bool {
			return after(isOp(crashfs.OpRename, ".tmp"), isSyncDir(crashPartials))
		}, false, "fsync"},
		{"data fsync in the commit", 1, func() func(crashfs.Op) bool {
			return after(isOp(crashfs.OpChmod, ".data"), isSync(".data"))
		}, false, "commit"},
		// The file is linked at its name when the directory fsync fails:
		// the next session finishes that commit and confirms the file by
		// its hash (it "resumes" at its size, sending nothing).
		{"directory fsync after the link", 1, func() func(crashfs.Op) bool { return isSyncDir("io") }, false, "commit"},
		{"partials directory fsync after the commit", 1, func() func(crashfs.Op) bool {
			return after(isOp(crashfs.OpLink, ".data"), isSyncDir(crashPartials))
		}, false, ""},
	}
	for _, gate := range []crashfs.Fsyncgate{crashfs.FsyncgateDrop, crashfs.FsyncgateKeepClean} {
		for _, tt := range tests {
			t.Run(map[crashfs.Fsyncgate]string{0: "drop/", 1: "keep clean/"}[gate]+tt.name, func(t *testing.T) {
				m := newCrashMachine(iofCase, false)
				m.fs.SetFsyncgate(gate)
				fault, fired := failNth(tt.n, syscall.EIO, tt.match())
				m.fs.SetFault(fault)
				srv := m.mustBoot(t)
				a := m.send(srv)
				if !fired.Load() {
					t.Fatalf("the fault never fired (%v)", a.err)
				}
				if tt.whatFail == "" {
					// After the commit point the file is in place and
					// durable: a failure to tidy up is not the sender's.
					if a.err != nil {
						t.Fatalf("commit reported as failed after the commit point: %v", a.err)
					}
					m.checkDurablyCommitted(t)
					return
				}
				if a.err == nil {
					t.Fatalf("transfer committed despite a failed fsync")
				}
				if !errors.Is(a.err, transfer.ErrInternal) || !transfer.Retryable(a.err) {
					t.Errorf("error %v: want a retryable internal error", a.err)
				}
				if tt.whatFail != "" && !strings.Contains(a.err.Error(), tt.whatFail) {
					t.Errorf("error %q does not say %q", a.err, tt.whatFail)
				}
				d := m.checkDurable(t, a.told)
				if tt.midway && d >= int64(len(m.data)) {
					t.Errorf("durable offset %d moved past the failed fsync", d)
				}
				// The next session, on the same daemon, resumes at the
				// durable offset, re-reading what is on disk; a file
				// already linked at its name is confirmed whole.
				if _, err := m.fs.Lstat(m.cc.remote); err == nil {
					d = int64(len(m.data))
				}
				m.finish(t, srv, d)
			})
		}
	}
}

// TestIOFaultDurableOffsetOfferedIsDurable fails the directory fsync that
// makes a state record durable. The record is in place but may not survive
// a crash: the next session must not offer its offset until it is.
func TestIOFaultDurableOffsetOfferedIsDurable(t *testing.T) {
	m := newCrashMachine(iofCase, false)
	fault, _ := failNth(2, syscall.EIO, after(isOp(crashfs.OpRename, ".tmp"), isSyncDir(crashPartials)))
	m.fs.SetFault(fault)
	srv := m.mustBoot(t)
	if a := m.send(srv); a.err == nil {
		t.Fatal("transfer survived a failed fsync")
	}
	// A new session is accepted at some offset; then the power fails.
	c, d := net.Pipe()
	defer c.Close()
	srv.ServeConn(d)
	cl, err := transfer.Handshake(context.Background(), c, transfer.ClientOptions{ChunkSize: iofCase.chunk, Checksum: true})
	if err != nil {
		t.Fatal(err)
	}
	var accepted int64 = -1
	ctx, cancel := context.WithCancel(context.Background())
	_, err = cl.Send(ctx, m.src, iofCase.remote, transfer.SendOptions{Progress: func(p transfer.Progress) {
		if accepted < 0 {
			accepted = p.ResumedFrom
			m.fs.Crash()
			cancel()
		}
	}})
	if accepted < 0 {
		t.Fatalf("no progress before the end: %v", err)
	}
	if err := crashStop(srv); err != nil {
		t.Fatal(err)
	}
	m.fs.ResetToSyncedState()
	v, bad := m.inspect()
	for _, b := range bad {
		t.Error(b)
	}
	if accepted > v.durable {
		t.Errorf("the daemon accepted at durable offset %d, but only %d survived a crash", accepted, v.durable)
	}
	m.finish(t, m.mustBoot(t), v.durable)
}

func TestIOFaultWriteEIO(t *testing.T) {
	m := newCrashMachine(iofCase, false)
	fault, fired := failNth(1, syscall.EIO, func(op crashfs.Op) bool {
		return op.Kind == crashfs.OpWrite && strings.HasSuffix(op.Name, ".data") && op.Off >= 10*int64(iofCase.chunk)
	})
	m.fs.SetFault(fault)
	srv := m.mustBoot(t)
	a := m.send(srv)
	if !fired.Load() || a.err == nil {
		t.Fatalf("fault fired %v, send: %v", fired.Load(), a.err)
	}
	if !errors.Is(a.err, transfer.ErrInternal) || !transfer.Retryable(a.err) || !strings.Contains(a.err.Error(), "writing chunk") {
		t.Errorf("error %v: want a retryable internal error about writing a chunk", a.err)
	}
	d := m.checkDurable(t, a.told)
	if d > 10*int64(iofCase.chunk) || d == 0 {
		t.Errorf("durable offset %d, want the synced chunks before the failed write", d)
	}
	m.finish(t, srv, d)
}

// TestIOFaultReadEIO fails reads of a resumed partial: the tail chunk's
// re-verification, and the whole-file hash catch-up.
func TestIOFaultReadEIO(t *testing.T) {
	tests := []struct {
		name string
		n    int // which read of the partial's data fails in the resuming session
	}{
		// The tail chunk is the only read of a resume: the whole-file
		// hash comes from the merge stack (issue 10).
		{"tail re-verification", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newCrashMachine(iofCase, false)
			// A first session breaks off with part of the file durable.
			stop, _ := failNth(1, syscall.EIO, func(op crashfs.Op) bool {
				return op.Kind == crashfs.OpWrite && strings.HasSuffix(op.Name, ".data") && op.Off >= 12*int64(iofCase.chunk)
			})
			m.fs.SetFault(stop)
			srv := m.mustBoot(t)
			if a := m.send(srv); a.err == nil {
				t.Fatal("first session survived its write error")
			}
			d := m.checkDurable(t, 0)
			if d == 0 {
				t.Fatal("nothing durable before the write error")
			}
			fault, fired := failNth(tt.n, syscall.EIO, func(op crashfs.Op) bool {
				return op.Kind == crashfs.OpRead && strings.HasSuffix(op.Name, ".data")
			})
			m.fs.SetFault(fault)
			a := m.sendRetryBusy(srv)
			if !fired.Load() {
				t.Fatalf("the read fault never fired (%v)", a.err)
			}
			if a.err == nil {
				t.Fatal("transfer committed though its data could not be re-read")
			}
			if !errors.Is(a.err, transfer.ErrInternal) || !transfer.Retryable(a.err) {
				t.Errorf("error %v: want a retryable internal error", a.err)
			}
			// Nothing durable was lost; the next session re-reads it.
			d2 := m.checkDurable(t, a.told)
			if d2 < d {
				t.Errorf("durable offset went back from %d to %d after a read error", d, d2)
			}
			m.fs.SetFault(nil)
			m.finish(t, srv, d2)
		})
	}
}

// TestIOFaultNoSpace runs the disk full mid-transfer. The sender gets the
// permanent ErrNoSpace (exit code 3), the partial keeps its durable
// prefix, the daemon keeps serving, and once space is freed the transfer
// resumes.
func TestIOFaultNoSpace(t *testing.T) {
	m := newCrashMachine(iofCase, false)
	srv := m.mustBoot(t)
	m.fs.SetSpaceLimit(m.fs.Used() + 100<<10)
	a := m.send(srv)
	if !errors.Is(a.err, transfer.ErrNoSpace) || transfer.Retryable(a.err) {
		t.Fatalf("send on a full disk: %v; want the permanent ErrNoSpace", a.err)
	}
	d := m.checkDurable(t, a.told)
	// d is usually above 0, but may be 0: when the disk fills before any
	// background sync has finished, even the small state record cannot
	// be written. That is honest, and still resumable (from zero).
	if d > 100<<10 {
		t.Errorf("durable offset %d after ENOSPC at 100 KiB", d)
	}
	// The daemon serves other sessions meanwhile.
	other := newCrashMachine(crashCase{name: "other", chunk: iofCase.chunk, size: 0, remote: "empty"}, false)
	other.fs = m.fs
	if a := other.sendRetryBusy(srv); a.err != nil {
		t.Errorf("another session on a full disk: %v", a.err)
	}
	// Space is freed; the same daemon resumes the transfer.
	m.fs.SetSpaceLimit(-1)
	m.finish(t, srv, d)
}

// TestIOFaultNoSpaceAtAdmission: with the free space known, a transfer
// that cannot fit is refused before its first byte; once there is room it
// starts from zero and completes.
func TestIOFaultNoSpaceAtAdmission(t *testing.T) {
	m := newCrashMachine(iofCase, false)
	srv := m.mustBoot(t)
	m.fs.ReportFreeSpace(true)
	m.fs.SetSpaceLimit(m.fs.Used() + int64(len(m.data)) - 1)
	a := m.send(srv)
	if !errors.Is(a.err, transfer.ErrNoSpace) || a.res.SentBytes != 0 {
		t.Fatalf("send: %v after %d bytes; want ErrNoSpace before any data", a.err, a.res.SentBytes)
	}
	m.fs.SetSpaceLimit(m.fs.Used() + int64(len(m.data)) + 4096)
	m.finish(t, srv, 0)
}

// TestIOFaultHangFree checks that a daemon whose disk fails every sync
// keeps answering: each attempt fails fast, none hangs.
func TestIOFaultHangFree(t *testing.T) {
	m := newCrashMachine(iofCase, false)
	srv := m.mustBoot(t)
	m.fs.SetFault(func(op crashfs.Op) error {
		if op.Kind == crashfs.OpSync || op.Kind == crashfs.OpSyncDir {
			return syscall.EIO
		}
		return nil
	})
	for range 3 {
		start := time.Now()
		a := m.sendRetryBusy(srv)
		if a.err == nil || !transfer.Retryable(a.err) {
			t.Errorf("send on a failing disk: %v", a.err)
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("attempt took %v", time.Since(start))
		}
	}
	m.fs.SetFault(nil)
	m.finish(t, srv, m.checkDurable(t, 0))
}

// TestIOFaultRefusalDuringSlowFsync: a transfer fails (EIO on a write)
// while a slow fsync is in flight. The daemon refuses; the sender stops
// reading once it has the refusal. The fsync then completes, and its
// acknowledgement must not block the daemon (net.Pipe has no buffer):
// it did, while the sender's next chunk waited for a daemon no longer
// reading, until the 60 s write deadline.
func TestIOFaultRefusalDuringSlowFsync(t *testing.T) {
	m := newCrashMachine(iofCase, false)
	m.fs.SetLatency(func(op crashfs.Op) time.Duration {
		if op.Kind == crashfs.OpSync && strings.HasSuffix(op.Name, ".data") {
			return 100 * time.Millisecond
		}
		return 0
	})
	fault, _ := failNth(1, syscall.EIO, func(op crashfs.Op) bool {
		return op.Kind == crashfs.OpWrite && strings.HasSuffix(op.Name, ".data") && op.Off >= 6*int64(iofCase.chunk)
	})
	m.fs.SetFault(fault)
	srv := m.mustBoot(t)
	start := time.Now()
	a := m.send(srv)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the failed transfer took %v to end", took)
	}
	if a.err == nil || !errors.Is(a.err, transfer.ErrInternal) {
		t.Errorf("send: %v; want the daemon's refusal", a.err)
	}
	m.fs.SetLatency(nil)
	m.finish(t, srv, m.checkDurable(t, a.told))
}

// slowUnlocker is a MemLocker whose locks take delay to give back, as a
// lease's release is a round trip to the store (s3store).
type slowUnlocker struct {
	daemon.MemLocker
	delay time.Duration
}

func (l *slowUnlocker) Lock(ctx context.Context, key string) (daemon.Lock, error) {
	lk, err := l.MemLocker.Lock(ctx, key)
	if err != nil {
		return nil, err
	}
	return slowLock{lk, l.delay}, nil
}

type slowLock struct {
	daemon.Lock
	delay time.Duration
}

func (l slowLock) Unlock() error {
	time.Sleep(l.delay) // the store's round trip
	return l.Lock.Unlock()
}

// TestIOFaultRetryAfterRefusalNotBusy: a transfer refused at its trailer
// (the last fsync failed) is released before the refusal is written, so a
// sender that retries at once resumes rather than hearing CodeBusy while
// the daemon still gives the transfer back (here a lock whose release
// takes 300 ms, as a lease's does).
func TestIOFaultRetryAfterRefusalNotBusy(t *testing.T) {
	m := newCrashMachine(iofCase, false)
	m.locker = &slowUnlocker{delay: 300 * time.Millisecond}
	var written atomic.Bool // the last chunk was written: the sender sent all
	fault, fired := failNth(1, syscall.EIO, func(op crashfs.Op) bool {
		if !strings.HasSuffix(op.Name, ".data") {
			return false
		}
		if op.Kind == crashfs.OpWrite && op.Off+int64(op.Len) == int64(len(m.data)) {
			written.Store(true)
		}
		return op.Kind == crashfs.OpSync && written.Load()
	})
	m.fs.SetFault(fault)
	srv := m.mustBoot(t)
	if a := m.send(srv); !fired.Load() || !errors.Is(a.err, transfer.ErrInternal) {
		t.Fatalf("fault fired %v, send: %v; want the daemon's refusal", fired.Load(), a.err)
	}
	a := m.send(srv) // at once, no retry on busy
	if a.err != nil {
		t.Fatalf("send right after the refusal: %v", a.err)
	}
	if a.res.ResumedFrom == 0 {
		t.Errorf("resumed from 0, want the durable offset before the failed fsync")
	}
	m.checkDurablyCommitted(t)
}
