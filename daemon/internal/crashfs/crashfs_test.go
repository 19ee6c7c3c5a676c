package crashfs_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/internal/crashfs"
)

// mustT is a small fluent helper: every call fails the test on error.
type mustT struct {
	t  *testing.T
	fs *crashfs.FS
}

func (m mustT) create(name string, data []byte) daemon.File {
	m.t.Helper()
	f, err := m.fs.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		m.t.Fatalf("create %s: %v", name, err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		m.t.Fatalf("write %s: %v", name, err)
	}
	return f
}

func (m mustT) do(what string, err error) {
	m.t.Helper()
	if err != nil {
		m.t.Fatalf("%s: %v", what, err)
	}
}

func (m mustT) sync(f daemon.File) { m.t.Helper(); m.do("sync", f.Sync()) }

func (m mustT) syncDir(name string) { m.t.Helper(); m.do("syncdir "+name, m.fs.SyncDir(name)) }

// want checks name's contents (nil: name must not exist).
func (m mustT) want(name string, data []byte) {
	m.t.Helper()
	got, err := m.fs.ReadFile(name)
	switch {
	case data == nil && errors.Is(err, fs.ErrNotExist):
	case data == nil:
		m.t.Errorf("%s: exists (%q, %v), want it gone", name, got, err)
	case err != nil:
		m.t.Errorf("%s: %v, want %q", name, err, data)
	case !bytes.Equal(got, data):
		m.t.Errorf("%s: %q, want %q", name, got, data)
	}
}

func newFS(t *testing.T) (*crashfs.FS, mustT) {
	f := crashfs.New()
	return f, mustT{t, f}
}

func TestDurabilityRules(t *testing.T) {
	tests := []struct {
		name string
		run  func(m mustT)
		want map[string][]byte // name → durable contents; nil: gone
	}{
		{"unsynced file and entry are lost", func(m mustT) {
			m.create("f", []byte("data")).Close()
		}, map[string][]byte{"f": nil}},
		{"file sync without directory sync loses the entry", func(m mustT) {
			m.sync(m.create("f", []byte("data")))
		}, map[string][]byte{"f": nil}},
		{"directory sync without file sync keeps an empty file", func(m mustT) {
			m.create("f", []byte("data"))
			m.syncDir(".")
		}, map[string][]byte{"f": {}}},
		{"file and directory sync keep both", func(m mustT) {
			m.sync(m.create("f", []byte("data")))
			m.syncDir(".")
		}, map[string][]byte{"f": []byte("data")}},
		{"writes after the last sync are lost", func(m mustT) {
			f := m.create("f", []byte("aaaa"))
			m.sync(f)
			m.syncDir(".")
			f.WriteAt([]byte("bbbbbb"), 2)
		}, map[string][]byte{"f": []byte("aaaa")}},
		{"a shrinking truncate is durable only after sync", func(m mustT) {
			f := m.create("f", []byte("abcdef"))
			m.sync(f)
			m.syncDir(".")
			m.do("truncate", f.Truncate(2))
			g := m.create("g", []byte("abcdef"))
			m.sync(g)
			m.syncDir(".")
			m.do("truncate", g.Truncate(2))
			g.WriteAt([]byte("Z"), 4)
			m.sync(g)
		}, map[string][]byte{"f": []byte("abcdef"), "g": []byte("ab\x00\x00Z")}},
		{"O_TRUNC is durable only after sync", func(m mustT) {
			m.sync(m.create("f", []byte("old")))
			m.syncDir(".")
			m.create("f", []byte("n"))
		}, map[string][]byte{"f": []byte("old")}},
		{"rename is durable only after directory sync", func(m mustT) {
			m.sync(m.create("state", []byte("v1")))
			m.syncDir(".")
			m.sync(m.create("tmp", []byte("v2")))
			m.do("rename", m.fs.Rename("tmp", "state"))
		}, map[string][]byte{"state": []byte("v1"), "tmp": nil}},
		{"rename then directory sync replaces", func(m mustT) {
			m.sync(m.create("state", []byte("v1")))
			m.syncDir(".")
			m.sync(m.create("tmp", []byte("v2")))
			m.do("rename", m.fs.Rename("tmp", "state"))
			m.syncDir(".")
		}, map[string][]byte{"state": []byte("v2"), "tmp": nil}},
		{"remove is durable only after directory sync", func(m mustT) {
			m.sync(m.create("f", []byte("x")))
			m.syncDir(".")
			m.do("remove", m.fs.Remove("f"))
		}, map[string][]byte{"f": []byte("x")}},
		{"link into an unsynced directory is lost", func(m mustT) {
			m.do("mkdir", m.fs.Mkdir("d", 0o755))
			m.do("mkdir", m.fs.Mkdir("out", 0o755))
			m.syncDir(".")
			m.sync(m.create("d/data", []byte("payload")))
			m.syncDir("d")
			m.do("link", m.fs.Link("d/data", "out/final"))
			m.do("remove", m.fs.Remove("d/data"))
			m.syncDir("d")
		}, map[string][]byte{"d/data": nil, "out/final": nil}},
		{"link survives once its directory is synced", func(m mustT) {
			m.do("mkdir", m.fs.Mkdir("d", 0o755))
			m.do("mkdir", m.fs.Mkdir("out", 0o755))
			m.syncDir(".")
			m.sync(m.create("d/data", []byte("payload")))
			m.syncDir("d")
			m.do("link", m.fs.Link("d/data", "out/final"))
			m.syncDir("out")
			m.do("remove", m.fs.Remove("d/data"))
			m.syncDir("d")
		}, map[string][]byte{"d/data": nil, "out/final": []byte("payload")}},
		{"a new directory needs its parent synced", func(m mustT) {
			m.do("mkdir", m.fs.Mkdir("d", 0o755))
			m.sync(m.create("d/f", []byte("x")))
			m.syncDir("d")
		}, map[string][]byte{"d/f": nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys, m := newFS(t)
			tt.run(m)
			fsys.ResetToSyncedState()
			for name, data := range tt.want {
				m.want(name, data)
			}
		})
	}
}

func TestModeAndMtimeDurableWithSync(t *testing.T) {
	fsys, m := newFS(t)
	f := m.create("f", []byte("x"))
	m.syncDir(".")
	mtime := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	m.do("chmod", f.Chmod(0o640))
	m.do("chtimes", fsys.Chtimes("f", mtime, mtime))
	fsys.ResetToSyncedState()
	fi, err := fsys.Lstat("f")
	m.do("lstat", err)
	if fi.Mode().Perm() != 0o600 || fi.ModTime().Equal(mtime) {
		t.Errorf("unsynced chmod/chtimes survived: %v %v", fi.Mode(), fi.ModTime())
	}
	f, err = fsys.OpenFile("f", os.O_RDWR, 0)
	m.do("open", err)
	m.do("chmod", f.Chmod(0o640))
	m.do("chtimes", fsys.Chtimes("f", mtime, mtime))
	m.sync(f)
	fsys.ResetToSyncedState()
	fi, err = fsys.Lstat("f")
	m.do("lstat", err)
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
		t.Errorf("synced chmod/chtimes lost: %v %v", fi.Mode(), fi.ModTime())
	}
}

func TestErrors(t *testing.T) {
	fsys, m := newFS(t)
	m.create("f", nil).Close()
	m.do("mkdir", fsys.Mkdir("d", 0o755))
	m.create("d/g", nil).Close()
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"open missing", func() error { _, err := fsys.OpenFile("nope", os.O_RDONLY, 0); return err }(), fs.ErrNotExist},
		{"create in missing dir", func() error { _, err := fsys.OpenFile("x/y", os.O_CREATE|os.O_RDWR, 0o600); return err }(), fs.ErrNotExist},
		{"exclusive create", func() error { _, err := fsys.OpenFile("f", os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600); return err }(), fs.ErrExist},
		{"write-open a directory", func() error { _, err := fsys.OpenFile("d", os.O_RDWR, 0); return err }(), syscall.EISDIR},
		{"link over a file", fsys.Link("f", "d/g"), fs.ErrExist},
		{"link a directory", fsys.Link("d", "e"), syscall.EPERM},
		{"mkdir existing", fsys.Mkdir("d", 0o755), fs.ErrExist},
		{"remove non-empty dir", fsys.Remove("d"), syscall.ENOTEMPTY},
		{"remove missing", fsys.Remove("nope"), fs.ErrNotExist},
		{"rename missing", fsys.Rename("nope", "x"), fs.ErrNotExist},
		{"lstat missing", func() error { _, err := fsys.Lstat("d/nope"); return err }(), fs.ErrNotExist},
		{"lstat through a file", func() error { _, err := fsys.Lstat("f/x"); return err }(), syscall.ENOTDIR},
		{"syncdir a file", fsys.SyncDir("f"), syscall.ENOTDIR},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, tt.err, tt.want)
		}
	}
	for _, bad := range []string{"/abs", "../up", "d/../../up", ""} {
		if _, err := fsys.OpenFile(bad, os.O_CREATE|os.O_RDWR, 0o600); err == nil {
			t.Errorf("OpenFile(%q) succeeded", bad)
		}
	}
	f, err := fsys.OpenFile("f", os.O_RDONLY, 0)
	m.do("open", err)
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.EBADF) {
		t.Errorf("write on read-only handle: %v", err)
	}
	f.Close()
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
}

func TestReadAtEOF(t *testing.T) {
	_, m := newFS(t)
	f := m.create("f", []byte("hello"))
	buf := make([]byte, 8)
	n, err := f.ReadAt(buf, 2)
	if n != 3 || !errors.Is(err, io.EOF) || string(buf[:n]) != "llo" {
		t.Errorf("ReadAt = %d, %v, %q", n, err, buf[:n])
	}
	if n, err := f.ReadAt(buf[:5], 0); n != 5 || err != nil {
		t.Errorf("exact ReadAt = %d, %v", n, err)
	}
	if n, err := f.ReadAt(buf, 9); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("ReadAt past end = %d, %v", n, err)
	}
}

func TestHardLinksShareIdentity(t *testing.T) {
	fsys, m := newFS(t)
	m.create("a", []byte("x")).Close()
	m.create("c", []byte("x")).Close()
	m.do("link", fsys.Link("a", "b"))
	fa, _ := fsys.Lstat("a")
	fb, _ := fsys.Lstat("b")
	fc, _ := fsys.Lstat("c")
	id := func(fi os.FileInfo) [2]uint64 {
		st := fi.Sys().(*syscall.Stat_t)
		return [2]uint64{uint64(st.Dev), st.Ino}
	}
	if id(fa) != id(fb) || id(fa) == id(fc) {
		t.Errorf("identities a %v b %v c %v", id(fa), id(fb), id(fc))
	}
	// A write through one name shows through the other, and survives a
	// crash once the inode is synced and both entries are durable.
	f, err := fsys.OpenFile("b", os.O_RDWR, 0)
	m.do("open", err)
	f.WriteAt([]byte("yz"), 0)
	m.sync(f)
	m.syncDir(".")
	fsys.ResetToSyncedState()
	m.want("a", []byte("yz"))
	m.want("b", []byte("yz"))
}

func TestCrashAtSync(t *testing.T) {
	for _, after := range []bool{false, true} {
		t.Run(map[bool]string{false: "before", true: "after"}[after], func(t *testing.T) {
			fsys, m := newFS(t)
			calls := 0
			fsys.OnCrash(func() { calls++ })
			f := m.create("f", []byte("one"))
			m.syncDir(".")
			fsys.CrashAtSync(2, after)
			m.sync(f) // sync 1 from now: fine
			f.WriteAt([]byte("two"), 0)
			err := f.Sync() // sync 2: crashes
			if !errors.Is(err, crashfs.ErrCrashed) {
				t.Fatalf("crashing sync: %v", err)
			}
			crashed, at, ok := fsys.Crashed()
			if !crashed || !ok || at.Kind != crashfs.OpSync || at.Name != "f" || at.SyncSeq != 3 {
				t.Errorf("Crashed() = %v %+v %v", crashed, at, ok)
			}
			// Everything fails now, through every path.
			if _, err := fsys.OpenFile("f", os.O_RDONLY, 0); !errors.Is(err, crashfs.ErrCrashed) {
				t.Errorf("open after crash: %v", err)
			}
			if err := fsys.SyncDir("."); !errors.Is(err, crashfs.ErrCrashed) {
				t.Errorf("syncdir after crash: %v", err)
			}
			if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, crashfs.ErrCrashed) {
				t.Errorf("write after crash: %v", err)
			}
			if calls != 1 {
				t.Errorf("OnCrash ran %d times", calls)
			}
			fsys.ResetToSyncedState()
			want := map[bool]string{false: "one", true: "two"}[after]
			m.want("f", []byte(want))
			// Old handles stay dead; new ones work.
			if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, crashfs.ErrCrashed) {
				t.Errorf("old handle after reset: %v", err)
			}
			g := m.create("g", []byte("fresh"))
			m.sync(g)
			if fsys.SyncCount() != 4 {
				t.Errorf("SyncCount = %d", fsys.SyncCount())
			}
		})
	}
}

func TestCrashWithoutSyncKeepsNothingNew(t *testing.T) {
	fsys, m := newFS(t)
	m.sync(m.create("f", []byte("v1")))
	m.syncDir(".")
	f, _ := fsys.OpenFile("f", os.O_RDWR, 0)
	f.WriteAt([]byte("v2"), 0)
	fsys.Crash()
	if _, err := f.WriteAt([]byte("v3"), 0); !errors.Is(err, crashfs.ErrCrashed) {
		t.Errorf("write after Crash: %v", err)
	}
	fsys.ResetToSyncedState()
	m.want("f", []byte("v1"))
}

func TestFailedSync(t *testing.T) {
	eio := func(n int) crashfs.FaultFunc {
		return func(op crashfs.Op) error {
			if op.Kind == crashfs.OpSync && op.Seq == n {
				return syscall.EIO
			}
			return nil
		}
	}
	t.Run("drop", func(t *testing.T) {
		fsys, m := newFS(t)
		f := m.create("f", []byte("aaaa"))
		m.sync(f)
		m.syncDir(".")
		fsys.SetFault(eio(2))
		f.WriteAt([]byte("bbbbbb"), 2)
		if err := f.Sync(); !errors.Is(err, syscall.EIO) {
			t.Fatalf("sync: %v", err)
		}
		m.want("f", []byte("aaaa")) // readers see the durable data only
		f.WriteAt([]byte("c"), 4)
		m.sync(f) // a later sync succeeds
		fsys.ResetToSyncedState()
		m.want("f", []byte("aaaac"))
	})
	t.Run("keep clean", func(t *testing.T) {
		fsys, m := newFS(t)
		fsys.SetFsyncgate(crashfs.FsyncgateKeepClean)
		f := m.create("f", []byte("aaaa"))
		m.sync(f)
		m.syncDir(".")
		fsys.SetFault(eio(2))
		f.WriteAt([]byte("bbbb"), 4)
		if err := f.Sync(); !errors.Is(err, syscall.EIO) {
			t.Fatalf("sync: %v", err)
		}
		m.want("f", []byte("aaaabbbb")) // still in the page cache
		f.WriteAt([]byte("c"), 8)
		m.sync(f) // succeeds, but the pages it lost stay lost
		fsys.ResetToSyncedState()
		m.want("f", []byte("aaaa\x00\x00\x00\x00c"))
	})
	t.Run("directory", func(t *testing.T) {
		fsys, m := newFS(t)
		fsys.SetFault(func(op crashfs.Op) error {
			if op.Kind == crashfs.OpSyncDir && op.Seq == 1 {
				return syscall.EIO
			}
			return nil
		})
		m.sync(m.create("f", []byte("x")))
		if err := fsys.SyncDir("."); !errors.Is(err, syscall.EIO) {
			t.Fatalf("syncdir: %v", err)
		}
		fsys.ResetToSyncedState()
		m.want("f", nil)
	})
}

func TestFaultsOnReadAndWrite(t *testing.T) {
	fsys, m := newFS(t)
	f := m.create("f", []byte("0123456789"))
	fsys.SetFault(func(op crashfs.Op) error {
		switch {
		case op.Kind == crashfs.OpRead && op.Off >= 5:
			return syscall.EIO
		case op.Kind == crashfs.OpWrite && op.Name == "f" && op.Off >= 8:
			return syscall.EIO
		}
		return nil
	})
	if _, err := f.ReadAt(make([]byte, 2), 0); err != nil {
		t.Errorf("read below the fault: %v", err)
	}
	if _, err := f.ReadAt(make([]byte, 2), 6); !errors.Is(err, syscall.EIO) {
		t.Errorf("read: %v", err)
	}
	if n, err := f.WriteAt([]byte("zz"), 9); n != 0 || !errors.Is(err, syscall.EIO) {
		t.Errorf("write: %d, %v", n, err)
	}
	fsys.SetFault(nil)
	m.want("f", []byte("0123456789"))
}

func TestSpaceLimit(t *testing.T) {
	fsys, m := newFS(t)
	fsys.SetSpaceLimit(10)
	if _, err := fsys.FreeSpace(); err == nil {
		t.Error("FreeSpace reported without ReportFreeSpace")
	}
	fsys.ReportFreeSpace(true)
	f := m.create("f", []byte("123456"))
	n, err := f.WriteAt([]byte("abcdef"), 6)
	if n != 4 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("WriteAt past the limit = %d, %v", n, err)
	}
	m.want("f", []byte("123456abcd"))
	if free, _ := fsys.FreeSpace(); free != 0 || fsys.Used() != 10 {
		t.Errorf("free %d used %d", free, fsys.Used())
	}
	// Overwriting in place needs no space; growing does.
	if _, err := f.WriteAt([]byte("ZZ"), 0); err != nil {
		t.Errorf("overwrite: %v", err)
	}
	if _, err := f.WriteAt([]byte("x"), 20); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write past a hole: %v", err)
	}
	// Freeing: a removed file still holds its space while open.
	m.do("remove", fsys.Remove("f"))
	if fsys.Used() != 10 {
		t.Errorf("used %d after remove of an open file", fsys.Used())
	}
	f.Close()
	if fsys.Used() != 0 {
		t.Errorf("used %d after close", fsys.Used())
	}
	g := m.create("g", []byte("0123456789"))
	fsys.SetSpaceLimit(-1)
	if _, err := g.WriteAt(make([]byte, 100), 10); err != nil {
		t.Errorf("write without limit: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	fsys, m := newFS(t)
	m.do("mkdir", fsys.Mkdir("d", 0o755))
	f := m.create("d/f", nil)
	var wg sync.WaitGroup
	const n = 64
	for i := range 4 {
		wg.Go(func() {
			for j := range n {
				off := int64((i*n + j) * 8)
				if _, err := f.WriteAt([]byte("abcdefgh"), off); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Go(func() {
		for range n {
			f.Sync()
			fsys.SyncDir("d")
			fsys.SyncDir(".")
		}
	})
	wg.Go(func() {
		for range n {
			fsys.Lstat("d/f")
			f.ReadAt(make([]byte, 16), 0)
		}
	})
	wg.Wait()
	m.sync(f)
	fsys.ResetToSyncedState()
	got, err := fsys.ReadFile("d/f")
	m.do("read", err)
	if want := bytes.Repeat([]byte("abcdefgh"), 4*n); !bytes.Equal(got, want) {
		t.Errorf("got %d bytes, want %d", len(got), len(want))
	}
	if names, _ := fsys.ReadDir("d"); !slices.Equal(names, []string{"f"}) {
		t.Errorf("ReadDir = %v", names)
	}
}

func TestClone(t *testing.T) {
	fsys, m := newFS(t)
	m.do("mkdir", fsys.Mkdir("d", 0o755))
	m.syncDir(".")
	f := m.create("d/f", []byte("durable"))
	m.sync(f)
	m.syncDir("d")
	f.WriteAt([]byte("LIVE"), 0)
	m.create("d/g", []byte("unsynced")).Close()
	c := fsys.Clone()
	mc := mustT{t, c}
	mc.want("d/f", []byte("LIVEble"))
	// The copy is independent of the original, in both directions.
	g, err := c.OpenFile("d/f", os.O_RDWR, 0)
	m.do("open", err)
	g.WriteAt([]byte("clone"), 0)
	m.sync(g)
	m.want("d/f", []byte("LIVEble"))
	f.WriteAt([]byte("orig"), 0)
	mc.want("d/f", []byte("clonele"))
	// Each crashes to its own durable state.
	c.ResetToSyncedState()
	mc.want("d/f", []byte("clonele"))
	mc.want("d/g", nil)
	fsys.ResetToSyncedState()
	m.want("d/f", []byte("durable"))
	if c.Used() != int64(len("clonele")) {
		t.Errorf("clone uses %d bytes", c.Used())
	}
}

// TestLatencyDoesNotHoldTheFileSystem: a sync held up by its latency
// (here until the test lets it go) does not hold up another file's sync.
func TestLatencyDoesNotHoldTheFileSystem(t *testing.T) {
	fsys, m := newFS(t)
	f := m.create("slow", []byte("x"))
	g := m.create("fast", []byte("y"))
	started, release := make(chan struct{}), make(chan struct{})
	fsys.SetLatency(func(op crashfs.Op) time.Duration {
		if op.Kind == crashfs.OpSync && op.Name == "slow" {
			close(started)
			<-release // the latency: as long as the test wants
		}
		return 0
	})
	done := make(chan struct{})
	go func() { f.Sync(); close(done) }()
	<-started
	fast := make(chan struct{})
	go func() { m.sync(g); close(fast) }()
	select {
	case <-fast:
	case <-time.After(10 * time.Second):
		t.Error("a fast sync waited behind a slow one")
	}
	close(release)
	<-done
	<-fast
}

func TestOpenHandles(t *testing.T) {
	fsys, m := newFS(t)
	f := m.create("a", nil)
	g := m.create("b", nil)
	if n := fsys.OpenHandles(); n != 2 {
		t.Errorf("OpenHandles = %d", n)
	}
	f.Close()
	if n := fsys.OpenHandles(); n != 1 {
		t.Errorf("OpenHandles = %d", n)
	}
	fsys.Crash()
	fsys.ResetToSyncedState()
	g.Close() // a handle of the old generation
	if n := fsys.OpenHandles(); n != 0 {
		t.Errorf("OpenHandles after reset = %d", n)
	}
}
