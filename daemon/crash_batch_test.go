package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/internal/crashfs"
	"github.com/ferry-dev/ferry/transfer"
)

// The power-loss sweep for group commit (issue 9): one session sends
// several small files, which the daemon commits in groups (one data sync
// per file, one fsync per touched directory per group, then Committed
// for each). For every N, the machine crashes before or after its N-th
// sync; after the crash every file the sender was told is committed must
// be in place, whole, with its mode and mtime, and no file may be in
// place with wrong bytes. A new daemon and sender then finish the tree.

type batchFile struct {
	name string
	data []byte
}

var batchFiles = func() []batchFile {
	var fs []batchFile
	for i := range 6 {
		dir := []string{"g/a", "g/b", "top"}[i%3]
		fs = append(fs, batchFile{fmt.Sprintf("%s/f%d", dir, i), randomData(1000+i*700, byte(40+i))})
	}
	return fs
}()

// groupSizes records the size of each group a store's SyncStrategy made
// durable.
type groupSizes struct {
	mu    sync.Mutex
	sizes []int

	syncfsPoints int // crash points of a sweep that were a SyncFS
}

// batchMode is how a sweep's stores commit groups.
type batchMode struct {
	// syncfs: the store makes groups durable with daemon.SyncFSWhenQuiet
	// (one SyncFS for the files' data, one for the directories) instead
	// of ParallelFsync and one fsync per directory.
	syncfs bool
	// The canaries: the store leaves out a group's directory syncs, or
	// its data sync.
	skipDirSync, skipDataSync bool
}

// recorder is a store's SyncStrategy: it counts each group in g and
// passes it on.
type recorder struct {
	g     *groupSizes
	inner daemon.SyncStrategy
}

func (r *recorder) SyncFiles(files []daemon.File) []error {
	r.g.mu.Lock()
	r.g.sizes = append(r.g.sizes, len(files))
	r.g.mu.Unlock()
	return r.inner.SyncFiles(files)
}

func (r *recorder) SyncDirs(files int) bool {
	ds, ok := r.inner.(daemon.DirSyncer)
	return ok && ds.SyncDirs(files)
}

func (g *groupSizes) max() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := 0
	for _, n := range g.sizes {
		m = max(m, n)
	}
	return m
}

func bootBatch(fs *crashfs.FS, mode batchMode, groups *groupSizes) (*daemon.Server, error) {
	store, err := daemon.NewDirStore(fs)
	if err != nil {
		return nil, err
	}
	var inner daemon.SyncStrategy = daemon.ParallelFsync{}
	if mode.syncfs {
		inner = &daemon.SyncFSWhenQuiet{FS: fs, Dirty: func() (int64, bool) { return 0, true }}
	}
	store.Sync = &recorder{g: groups, inner: inner}
	if mode.skipDirSync {
		daemon.SkipCommitDirSync(store)
	}
	if mode.skipDataSync {
		daemon.SkipCommitDataSync(store)
	}
	return daemon.NewServer(daemon.Config{Store: store, MaxChunkSize: testChunk, SyncInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// sendBatch sends every file in one session and returns the names the
// daemon said are committed.
func sendBatch(fs *crashfs.FS, srv *daemon.Server) (committed map[string]bool, err error) {
	c, d := net.Pipe()
	defer c.Close()
	fs.OnCrash(func() { d.Close() })
	defer fs.OnCrash(nil)
	srv.ServeConn(d)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := transfer.Handshake(ctx, c, transfer.ClientOptions{ChunkSize: testChunk, Agent: "crash-batch"})
	if err != nil {
		return nil, err
	}
	var jobs []*transfer.Job
	for _, f := range batchFiles {
		jobs = append(jobs, &transfer.Job{Name: f.name, Src: source(f.data)})
	}
	committed = make(map[string]bool)
	var ferr error
	_, _, err = cl.SendAll(ctx, feed(jobs), func(j *transfer.Job, err error) {
		if err == nil {
			committed[j.Name] = true
		} else if ferr == nil {
			ferr = err
		}
	}, transfer.WindowOptions{})
	if err == nil {
		err = ferr
	}
	return committed, err
}

// inspectBatch lists the files in place after a crash and what is wrong.
func inspectBatch(fs *crashfs.FS) (inPlace map[string]bool, bad []string) {
	inPlace = make(map[string]bool)
	for _, f := range batchFiles {
		got, err := fs.ReadFile(f.name)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			bad = append(bad, fmt.Sprintf("reading %s: %v", f.name, err))
		case !bytes.Equal(got, f.data):
			bad = append(bad, fmt.Sprintf("%s is in place with %d wrong bytes", f.name, len(got)))
		default:
			fi, err := fs.Lstat(f.name)
			if err != nil || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(testMtime) {
				bad = append(bad, fmt.Sprintf("%s is in place with mode/mtime %v/%v (%v)", f.name, fi.Mode(), fi.ModTime(), err))
			}
			inPlace[f.name] = true
		}
	}
	return inPlace, bad
}

// batchSweep crashes a session of batchFiles at every sync, before and
// after it takes effect (a SyncFS: while it takes effect, see crashfs),
// and recovers from each crash.
func batchSweep(t *testing.T, mode batchMode) (points int, violations []string, groups *groupSizes) {
	canary := mode.skipDirSync || mode.skipDataSync
	groups = &groupSizes{}
	for _, after := range []bool{false, true} {
		for n := 1; ; n++ {
			if n > 1000 {
				t.Fatal("bug: sweep does not end")
			}
			fs := crashfs.New()
			// A slow disk: files that verify while a group's fsyncs run
			// wait and form the next group.
			fs.SetLatency(func(op crashfs.Op) time.Duration {
				if op.Kind == crashfs.OpSync || op.Kind == crashfs.OpSyncFS {
					return 2 * time.Millisecond
				}
				return 0
			})
			fs.CrashAtSync(n, after)
			srv, err := bootBatch(fs, mode, groups)
			var told map[string]bool
			if err == nil {
				told, _ = sendBatch(fs, srv)
			}
			crashed, at, hit := fs.Crashed()
			if hit && at.Kind == crashfs.OpSyncFS {
				groups.syncfsPoints++
			}
			label := fmt.Sprintf("crash %s sync %d (%v %s)", map[bool]string{false: "before", true: "after"}[after], n, at.Kind, at.Name)
			if !crashed {
				fs.Crash()
			}
			if err := crashStop(srv); err != nil {
				violations = append(violations, label+": "+err.Error())
			}
			fs.ResetToSyncedState()
			points++
			inPlace, bad := inspectBatch(fs)
			for _, b := range bad {
				violations = append(violations, label+": "+b)
			}
			for name := range told {
				if !inPlace[name] {
					violations = append(violations, fmt.Sprintf("%s: the sender got Committed for %s, but after the crash it is not in place", label, name))
				}
			}
			// Recovery: a new daemon and sender finish the tree.
			fs.SetLatency(nil)
			srv2, err := bootBatch(fs, mode, &groupSizes{})
			if err != nil {
				violations = append(violations, label+", then recovery: daemon does not start: "+err.Error())
			} else {
				got, err := sendBatch(fs, srv2)
				if err != nil || len(got) != len(batchFiles) {
					violations = append(violations, fmt.Sprintf("%s, then recovery: %d of %d committed: %v", label, len(got), len(batchFiles), err))
				}
				if err := crashStop(srv2); err != nil {
					violations = append(violations, label+", then recovery: "+err.Error())
				}
				fs.Crash()
				fs.ResetToSyncedState()
				inPlace, bad := inspectBatch(fs)
				for _, b := range bad {
					violations = append(violations, label+", then recovery and crash: "+b)
				}
				if !canary && len(inPlace) != len(batchFiles) {
					violations = append(violations, fmt.Sprintf("%s, then recovery and crash: %d of %d files in place", label, len(inPlace), len(batchFiles)))
				}
			}
			if !hit {
				break
			}
		}
	}
	return points, violations, groups
}

func TestPowerLossSweepGroupCommit(t *testing.T) {
	for _, mode := range []batchMode{{}, {syncfs: true}} {
		t.Run(map[bool]string{false: "fsync", true: "syncfs"}[mode.syncfs], func(t *testing.T) {
			groupCommitSweep(t, mode)
		})
	}
}

func groupCommitSweep(t *testing.T, mode batchMode) {
	points, violations, groups := batchSweep(t, mode)
	if mode.syncfs && groups.syncfsPoints == 0 {
		t.Error("no crash point was a SyncFS: the sweep did not cover syncfs")
	}
	t.Logf("%d crash points, %d violations, largest group %d files", points, len(violations), groups.max())
	for i, v := range violations {
		if i == 20 {
			t.Errorf("… and %d more", len(violations)-i)
			break
		}
		t.Error(v)
	}
	if groups.max() < 2 {
		t.Errorf("every group held one file: the sweep did not cover group commit (%v)", groups.sizes)
	}
}

// TestPowerLossSweepGroupCommitCanary proves the sweep sees a group
// commit without its directory fsyncs: some crash must lose a file the
// sender was told is committed.
func TestPowerLossSweepGroupCommitCanary(t *testing.T) {
	for _, mode := range []batchMode{{skipDirSync: true}, {syncfs: true, skipDirSync: true}} {
		t.Run(map[bool]string{false: "fsync", true: "syncfs"}[mode.syncfs], func(t *testing.T) {
			canarySweep(t, mode, "the sender got Committed for")
		})
	}
}

// TestPowerLossSweepGroupCommitCanaryData proves the sweep sees a group
// commit by syncfs without its data sync: the second syncfs, which makes
// the links durable, may reach the disk with the directories' entries
// before the files' data, so some crash must leave a file in place with
// wrong bytes.
func TestPowerLossSweepGroupCommitCanaryData(t *testing.T) {
	canarySweep(t, batchMode{syncfs: true, skipDataSync: true}, "in place with")
}

func canarySweep(t *testing.T, mode batchMode, want string) {
	_, violations, _ := batchSweep(t, mode)
	found := 0
	for _, v := range violations {
		if strings.Contains(v, want) {
			found++
		}
	}
	if found == 0 {
		t.Fatalf("the sweep found no violation %q without the sync; violations: %q", want, violations)
	}
	t.Logf("canary: %d crash points found %q", found, want)
}

// TestGroupCommitSyncFSError: when a group's syncfs fails, some files'
// writes may be lost (Linux drops the pages, "fsyncgate") and the error
// does not say whose. The group must fall back to each file's fsync,
// which reports its own loss, so that no file whose data is gone is
// reported committed; and syncfs must stay off afterwards, since it would
// not report that error again.
func TestGroupCommitSyncFSError(t *testing.T) {
	for _, gate := range []crashfs.Fsyncgate{crashfs.FsyncgateDrop, crashfs.FsyncgateKeepClean} {
		fs := crashfs.New()
		fs.SetFsyncgate(gate)
		fs.SetLatency(func(op crashfs.Op) time.Duration {
			if op.Kind == crashfs.OpSync || op.Kind == crashfs.OpSyncFS {
				return 2 * time.Millisecond
			}
			return 0
		})
		fs.SetFault(func(op crashfs.Op) error {
			if op.Kind == crashfs.OpSyncFS && op.Seq == 1 {
				return syscall.EIO
			}
			return nil
		})
		store, err := daemon.NewDirStore(fs)
		if err != nil {
			t.Fatal(err)
		}
		strategy := &daemon.SyncFSWhenQuiet{FS: fs, Dirty: func() (int64, bool) { return 0, true }}
		store.Sync = strategy
		srv, err := daemon.NewServer(daemon.Config{Store: store, MaxChunkSize: testChunk, SyncInterval: time.Hour,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		told, _ := sendBatch(fs, srv)
		if err := crashStop(srv); err != nil {
			t.Error(err)
		}
		if !strategy.Off() {
			t.Errorf("gate %d: syncfs is still used after it failed", gate)
		}
		fs.Crash()
		fs.ResetToSyncedState()
		inPlace, bad := inspectBatch(fs)
		for _, b := range bad {
			t.Errorf("gate %d: %s", gate, b)
		}
		for name := range told {
			if !inPlace[name] {
				t.Errorf("gate %d: the sender got Committed for %s, but after the crash it is not in place", gate, name)
			}
		}
		if len(told) == len(batchFiles) {
			t.Errorf("gate %d: every file was committed: the failed syncfs lost nothing, so the test tests nothing", gate)
		}
		t.Logf("gate %d: %d of %d files committed", gate, len(told), len(batchFiles))
	}
}
