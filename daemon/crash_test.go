package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/internal/crashfs"
	"github.com/ferry-dev/ferry/transfer"
)

// The power-loss sweep (issue 5, suite 2). A kill -9 leaves the page cache
// alone, so it cannot tell whether the daemon fsyncs the right things in
// the right order. Here the daemon's DirStore runs on crashfs, which keeps
// only what was fsync'ed (directory entries only once their directory is
// synced). For every N, a transfer runs until the N-th sync operation of
// the "machine" (boot included, every step of commit included), the power
// goes out before or after that sync takes effect, the machine comes back
// with only its durable state, and a new daemon and a fresh sender finish
// the transfer. After each crash the sweep checks:
//
//   - every state record decodes, and the durable offset it records never
//     runs ahead of the data: re-reading [0, durable) gives the source's
//     bytes;
//   - a file under its final name is complete, with its mode and mtime;
//   - the sender was never told of a durable offset (Accept, Ack) or a
//     commit that the crash took back;
//   - the new daemon resumes exactly at the surviving durable offset, and
//     the result is bit-identical to the source and itself survives a
//     crash.
//
// With -crash.long (or FERRY_CRASH_LONG=1) the sweep also crashes the
// recovery at each of its syncs, from each first crash's durable state,
// and covers bigger files.

var crashLong = flag.Bool("crash.long", os.Getenv("FERRY_CRASH_LONG") != "",
	"power-loss sweep: also crash every recovery at each of its syncs, on more files (env FERRY_CRASH_LONG)")

// crashCase is one transfer the sweep crashes.
type crashCase struct {
	name      string
	chunk     int   // chunk size in bytes
	size      int   // file size in bytes
	syncBytes int64 // Config.SyncBytes
	remote    string
	// replace puts a committed file of other content at remote, durable,
	// before the sweep, and sends with ClientOptions.Update (--update).
	replace bool
}

var crashCases = []crashCase{
	{"16KiB chunks, fsync every chunk", 16 << 10, 8*(16<<10) + 1000, 16 << 10, "crash/a.bin", false},
	{"16KiB chunks, fsync every 2", 16 << 10, 12*(16<<10) + 77, 32 << 10, "b.bin", false},
	{"64KiB chunks, fsync every 3", 64 << 10, 16 * (64 << 10), 3 * (64 << 10), "deep/er/c.bin", false},
}

var crashLongCases = []crashCase{
	{"16KiB chunks, fsync every 5, 40 chunks", 16 << 10, 40*(16<<10) + 5, 5 * (16 << 10), "x/y/z/d.bin", false},
	{"16KiB chunks, fsync every chunk, 16 chunks", 16 << 10, 16 * (16 << 10), 1, "e.bin", false},
}

var crashPartials = path.Join(transfer.ReservedDir, "partials")

// crashMachine is one simulated machine: a crashfs that outlives daemon
// processes, and the file its sender keeps sending.
type crashMachine struct {
	fs     *crashfs.FS
	cc     crashCase
	data   []byte
	src    transfer.Source
	canary bool
	old    []byte        // the content replace installed at remote, or nil
	locker daemon.Locker // Config.Locker of the daemons booted; nil for the default
}

func newCrashMachine(cc crashCase, canary bool) *crashMachine {
	data := randomData(cc.size, byte(cc.size))
	m := &crashMachine{
		fs: crashfs.New(), cc: cc, data: data, canary: canary,
		src: transfer.Source{R: bytes.NewReader(data), Size: int64(len(data)), Mode: 0o640, ModTime: testMtime, Inode: 42},
	}
	if cc.replace {
		m.old = randomData(cc.size/2+3, byte(cc.size)+1)
		if err := m.install(m.old); err != nil {
			panic(fmt.Sprintf("installing the old file: %v", err))
		}
	}
	return m
}

// install puts content at the machine's remote name (top level), durable,
// as an earlier commit would have.
func (m *crashMachine) install(content []byte) error {
	f, err := m.fs.OpenFile(m.cc.remote, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(content, 0); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return m.fs.SyncDir(".")
}

// with returns a machine like m on another file system.
func (m *crashMachine) with(fs *crashfs.FS) *crashMachine {
	c := *m
	c.fs = fs
	return &c
}

// boot starts a daemon process on the machine.
func (m *crashMachine) boot() (*daemon.Server, error) {
	store, err := daemon.NewDirStore(m.fs)
	if err != nil {
		return nil, err
	}
	if m.canary {
		daemon.SkipCommitDirSync(store)
	}
	return daemon.NewServer(daemon.Config{
		Store: store, MaxChunkSize: m.cc.chunk, SyncBytes: m.cc.syncBytes,
		SyncInterval: time.Hour, // fsync by bytes only, so runs repeat
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Locker:       m.locker,
	})
}

// crashAttempt is what a sender saw in one session.
type crashAttempt struct {
	res transfer.Result
	err error
	// told is the highest durable offset the daemon reported: in its
	// Accept, an Ack, or Committed (the size).
	told int64
}

// send runs one sender session against srv. When the machine crashes, the
// daemon's end of the connection dies with it.
func (m *crashMachine) send(srv *daemon.Server) crashAttempt {
	c, d := net.Pipe()
	defer c.Close()
	m.fs.OnCrash(func() { d.Close() })
	defer m.fs.OnCrash(nil)
	srv.ServeConn(d)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var a crashAttempt
	cl, err := transfer.Handshake(ctx, c, transfer.ClientOptions{ChunkSize: m.cc.chunk, Agent: "crash-test", Checksum: true, Update: m.cc.replace})
	if err != nil {
		a.err = err
		return a
	}
	a.res, a.err = cl.Send(ctx, m.src, m.cc.remote, transfer.SendOptions{
		Progress: func(p transfer.Progress) { a.told = max(a.told, p.DurableOffset) },
	})
	a.told = max(a.told, a.res.ResumedFrom)
	return a
}

// stop shuts a daemon down, as the power cut would have.
func crashStop(srv *daemon.Server) error {
	if srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("daemon did not stop: %w", err)
	}
	return nil
}

// durableView is what survived a crash.
type durableView struct {
	durable   int64 // where a resume may start: the state record's offset, or the size once committed
	committed bool  // the file is in place under its name
	partial   bool  // a state record for the transfer exists
}

func (v durableView) String() string {
	return fmt.Sprintf("durable=%d committed=%v partial=%v", v.durable, v.committed, v.partial)
}

// inspect checks the machine's state after a crash and reset.
func (m *crashMachine) inspect() (durableView, []string) {
	var v durableView
	var bad []string
	badf := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	names, err := m.fs.ReadDir(crashPartials)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		badf("reading partials: %v", err)
	}
	for _, n := range names {
		key, ok := strings.CutSuffix(n, ".state")
		if !ok {
			continue
		}
		b, err := m.fs.ReadFile(path.Join(crashPartials, n))
		if err != nil {
			badf("reading state record %s: %v", n, err)
			continue
		}
		st, err := daemon.DecodeState(b)
		if err != nil {
			badf("state record %s: %v", n, err)
			continue
		}
		if st.Name != m.cc.remote {
			badf("state record %s for %q", n, st.Name)
			continue
		}
		v.partial = true
		data, err := m.fs.ReadFile(path.Join(crashPartials, key+".data"))
		switch {
		case err != nil:
			badf("state record at durable offset %d, but its data: %v", st.DurableOffset, err)
		case int64(len(data)) < st.DurableOffset:
			badf("state record at durable offset %d, but only %d bytes of data are durable", st.DurableOffset, len(data))
		case !bytes.Equal(data[:st.DurableOffset], m.data[:st.DurableOffset]):
			badf("state record at durable offset %d, but the durable data differs from the source at offset %d",
				st.DurableOffset, firstDiff(data, m.data))
		default:
			v.durable = st.DurableOffset
		}
	}
	got, err := m.fs.ReadFile(m.cc.remote)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if m.old != nil {
			badf("%s is gone: neither the old content nor the new one is in place", m.cc.remote)
		}
	case err != nil:
		badf("reading %s: %v", m.cc.remote, err)
	case m.old != nil && bytes.Equal(got, m.old):
		// --update: the old content stays until the new one is durable.
	case !bytes.Equal(got, m.data):
		badf("%s is in place with %d wrong bytes (first difference at offset %d of %d)", m.cc.remote, len(got), firstDiff(got, m.data), len(m.data))
	default:
		v.committed = true
		v.durable = int64(len(m.data))
		fi, err := m.fs.Lstat(m.cc.remote)
		if err != nil || fi.Mode().Perm() != m.src.Mode.Perm() || !fi.ModTime().Equal(m.src.ModTime) {
			badf("%s is in place with mode/mtime %v/%v (%v), want %v/%v", m.cc.remote, fi.Mode(), fi.ModTime(), err, m.src.Mode.Perm(), m.src.ModTime)
		}
	}
	return v, bad
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// crashReport sums up a sweep.
type crashReport struct {
	points     int             // crash points explored (first crashes and, in the long form, second ones)
	states     map[string]bool // distinct durable states seen after a crash
	violations []string
	// existsAfterCommit counts recoveries refused with ErrExists because
	// the crash came after the commit completed but before the sender
	// heard of it.
	existsAfterCommit int
}

func (r *crashReport) violate(label, format string, args ...any) {
	r.violations = append(r.violations, label+": "+fmt.Sprintf(format, args...))
}

// crashLabel names a crash point.
func crashLabel(cc crashCase, fs *crashfs.FS, n int, after bool) string {
	when := map[bool]string{false: "before", true: "after"}[after]
	if _, at, ok := fs.Crashed(); ok {
		return fmt.Sprintf("%s: crash %s sync %d (%v %s)", cc.name, when, n, at.Kind, at.Name)
	}
	return fmt.Sprintf("%s: crash once the session ended (sync %d never came)", cc.name, n)
}

// crashRun runs the machine's daemon and one sender, crashing at the n-th
// sync from now (or at the end if it never comes), then resets to the
// synced state and checks it. It returns what survived, the attempt, and
// whether the n-th sync came.
func (m *crashMachine) crashRun(rep *crashReport, n int, after bool) (durableView, crashAttempt, string, bool) {
	m.fs.CrashAtSync(n, after)
	var a crashAttempt
	srv, err := m.boot()
	if err == nil {
		a = m.send(srv)
	} else {
		a.err = err
	}
	crashed, _, hit := m.fs.Crashed()
	label := crashLabel(m.cc, m.fs, n, after)
	if !crashed {
		m.fs.Crash()
	}
	if err := crashStop(srv); err != nil {
		rep.violate(label, "%v", err)
	}
	m.fs.ResetToSyncedState()
	rep.points++
	v, bad := m.inspect()
	rep.states[v.String()] = true
	for _, b := range bad {
		rep.violate(label, "%s", b)
	}
	if a.err == nil && !v.committed {
		rep.violate(label, "the sender got Committed, but after the crash %s is not in place", m.cc.remote)
	}
	if a.told > v.durable {
		rep.violate(label, "the sender was told durable offset %d, but only %d survived the crash", a.told, v.durable)
	}
	return v, a, label, hit
}

// recover boots a new daemon after a crash and lets a fresh sender finish,
// unless the sender already had its Committed.
func (m *crashMachine) recover(rep *crashReport, label string, v durableView, first crashAttempt) {
	if first.err == nil {
		return // checked by crashRun: the file survived
	}
	label += ", then recovery"
	srv, err := m.boot()
	if err != nil {
		rep.violate(label, "daemon does not start: %v", err)
		return
	}
	a := m.send(srv)
	if err := crashStop(srv); err != nil {
		rep.violate(label, "%v", err)
	}
	switch {
	case a.err == nil:
		if a.res.Hash != transfer.HashBytes(m.data) {
			rep.violate(label, "result hash %x", a.res.Hash)
		}
		if a.res.ResumedFrom != v.durable {
			rep.violate(label, "resumed from %d, but the durable offset was %d (%v)", a.res.ResumedFrom, v.durable, v)
		}
	case errors.Is(a.err, transfer.ErrExists) && v.committed && !v.partial:
		rep.existsAfterCommit++
	default:
		rep.violate(label, "resume failed after a crash at %v: %v", v, a.err)
		return
	}
	if names, _ := m.fs.ReadDir(crashPartials); slices.ContainsFunc(names, func(n string) bool { return !strings.HasSuffix(n, ".tmp") }) {
		rep.violate(label, "partials left after commit: %v", names)
	}
	// The sender has its Committed; the power may go out at once.
	m.fs.Crash()
	m.fs.ResetToSyncedState()
	v2, bad := m.inspect()
	for _, b := range bad {
		rep.violate(label+", then crash", "%s", b)
	}
	if !v2.committed {
		rep.violate(label+", then crash", "%s is gone after a crash that followed Committed", m.cc.remote)
	}
}

// crashSweep crashes cc at every sync of a fresh machine, before and after
// the sync takes effect, and recovers from each. With nested it also
// crashes each recovery at each of its syncs.
func crashSweep(t *testing.T, cc crashCase, canary, nested bool) *crashReport {
	rep := &crashReport{states: make(map[string]bool)}
	for _, after := range []bool{false, true} {
		for n := 1; ; n++ {
			m := newCrashMachine(cc, canary)
			v, a, label, hit := m.crashRun(rep, n, after)
			if nested {
				base := m.fs.Clone()
				for n2 := 1; ; n2++ {
					m2 := m.with(base.Clone())
					v2, a2, label2, hit2 := m2.crashRun(rep, n2, after)
					m2.recover(rep, label+"; "+label2, v2, a2)
					if !hit2 {
						break
					}
				}
			}
			m.recover(rep, label, v, a)
			if !hit {
				break // the transfer ended before its n-th sync: the end state is explored
			}
			if n > 10000 {
				t.Fatal("bug: sweep does not end")
			}
		}
	}
	return rep
}

func (r *crashReport) log(t *testing.T, name string) {
	t.Logf("%s: %d crash points, %d distinct durable states, %d violations, %d recoveries refused as exists after a completed commit",
		name, r.points, len(r.states), len(r.violations), r.existsAfterCommit)
}

func TestPowerLossSweep(t *testing.T) {
	type sweep struct {
		cc     crashCase
		nested bool
	}
	var sweeps []sweep
	for i, cc := range crashCases {
		// The bounded form crashes the recovery too for the smallest case.
		sweeps = append(sweeps, sweep{cc, *crashLong || i == 0})
	}
	if *crashLong {
		for _, cc := range crashLongCases {
			sweeps = append(sweeps, sweep{cc, true})
		}
	}
	total := &crashReport{states: make(map[string]bool)}
	for _, sw := range sweeps {
		cc := sw.cc
		t.Run(cc.name, func(t *testing.T) {
			rep := crashSweep(t, cc, false, sw.nested)
			rep.log(t, cc.name)
			for i, v := range rep.violations {
				if i == 20 {
					t.Errorf("… and %d more", len(rep.violations)-i)
					break
				}
				t.Error(v)
			}
			total.points += rep.points
			total.violations = append(total.violations, rep.violations...)
			total.existsAfterCommit += rep.existsAfterCommit
			for s := range rep.states {
				total.states[cc.name+" "+s] = true
			}
		})
	}
	total.log(t, "all cases")
}

// TestPowerLossSweepCanary proves the sweep can see a missing directory
// fsync: with the fsync after linking a committed file into place left
// out, some crash must lose a file whose commit the sender was told of.
func TestPowerLossSweepCanary(t *testing.T) {
	rep := crashSweep(t, crashCases[0], true, false)
	rep.log(t, "canary")
	for _, v := range rep.violations {
		t.Log(v)
	}
	lost := 0
	for _, v := range rep.violations {
		if strings.Contains(v, "the sender got Committed, but after the crash") {
			lost++
		}
	}
	if lost == 0 {
		t.Fatalf("the sweep found no lost commit without the directory fsync; violations: %q", rep.violations)
	}
	t.Logf("canary: %d crash points lost a file the sender was told is committed", lost)
}

// TestPowerLossSweepReplace runs the power-loss sweep on --update: the
// name holds a committed file of other content, which the transfer
// replaces. At every crash point the name holds the old content or the
// new one, complete, never a mix or nothing, and the recovery ends with
// the new content.
func TestPowerLossSweepReplace(t *testing.T) {
	cc := crashCase{"replace, 16KiB chunks, fsync every 2", 16 << 10, 6*(16<<10) + 77, 32 << 10, "r.bin", true}
	rep := crashSweep(t, cc, false, true)
	rep.log(t, cc.name)
	for i, v := range rep.violations {
		if i == 20 {
			t.Errorf("… and %d more", len(rep.violations)-i)
			break
		}
		t.Error(v)
	}
}
