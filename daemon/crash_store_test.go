package daemon_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/internal/crashfs"
	"github.com/ferry-dev/ferry/transfer"
)

// Regression tests for what the power-loss sweep found, at the level of
// the store, each on crashfs.

const crashKey = "00112233445566778899aabbccddeeff"

func crashOffer(name string, data []byte, mtimeNs int64) *transfer.Offer {
	return &transfer.Offer{Size: int64(len(data)), Mode: 0o644, MtimeNs: mtimeNs, Inode: 7,
		PrefixID: transfer.HashBytes(data[:min(len(data), transfer.IdentityPrefix)]), Name: name}
}

func crashStore(t *testing.T, fs *crashfs.FS) *daemon.DirStore {
	t.Helper()
	s, err := daemon.NewDirStore(fs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// crashWrite writes data into p and makes it durable in one chunk.
func crashWrite(t *testing.T, p daemon.Partial, data []byte) {
	t.Helper()
	if err := p.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sync(daemon.StackOf(data, int64(len(data)), testChunk)); err != nil {
		t.Fatal(err)
	}
}

// TestCrashStateRecordSurvives: the state record was renamed into place
// without a directory fsync, so a power loss took every durable offset
// back to nothing (and the sender had been told otherwise).
func TestCrashStateRecordSurvives(t *testing.T) {
	fs := crashfs.New()
	data := randomData(5000, 1)
	o := crashOffer("f", data, 1)
	p, _, err := crashStore(t, fs).Open(crashKey, o, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	crashWrite(t, p, data)
	fs.Crash()
	fs.ResetToSyncedState()
	p, restarted, err := crashStore(t, fs).Open(crashKey, o, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if d := p.State().DurableOffset; d != int64(len(data)) || restarted {
		t.Errorf("after a crash: durable offset %d (restarted %v), want %d", d, restarted, len(data))
	}
}

// commitCrashedBeforeCleanup commits a partial and crashes before the
// partials directory is synced: the file is durably in place, and so is
// the partial (state record and data, a hard link of the file).
func commitCrashedBeforeCleanup(t *testing.T, data []byte, o *transfer.Offer) *crashfs.FS {
	t.Helper()
	fs := crashfs.New()
	p, _, err := crashStore(t, fs).Open(crashKey, o, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	crashWrite(t, p, data)
	// The cleanup's fsync of the partials directory fails; crashing then
	// leaves what crashing before it would.
	fault, fired := failNth(1, errEIO, after(isOp(crashfs.OpLink, ".data"), isSyncDir(crashPartials)))
	fs.SetFault(fault)
	if err := p.Commit(); err == nil || !fired.Load() {
		t.Fatalf("Commit: %v, want the cleanup to fail", err)
	}
	fs.SetFault(nil)
	fs.Crash()
	fs.ResetToSyncedState()
	if got, err := fs.ReadFile(o.Name); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("committed file after the crash: %d bytes, %v", len(got), err)
	}
	return fs
}

// TestCrashCommittingRecognisedOnAnyFS: Committing used os.SameFile,
// which is false for any FileInfo not from package os, so on another FS a
// commit cut short after its link was refused as "exists" on retry.
func TestCrashCommittingRecognisedOnAnyFS(t *testing.T) {
	data := randomData(3000, 2)
	o := crashOffer("dir/f", data, 1)
	fs := commitCrashedBeforeCleanup(t, data, o)
	s := crashStore(t, fs)
	if !s.LinkedAt(crashKey, o.Name) {
		t.Fatal("Committing does not recognise the partial linked at its name")
	}
	// The retry finishes the commit without writing the file.
	if finished, err := s.FinishCommit(crashKey, o.Name); err != nil || !finished {
		t.Fatalf("FinishCommit: %v, %v", finished, err)
	}
	fs.Crash()
	fs.ResetToSyncedState()
	if got, err := fs.ReadFile(o.Name); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("committed file after finishing: %d bytes, %v", len(got), err)
	}
	if names, _ := fs.ReadDir(crashPartials); len(names) != 0 {
		t.Errorf("partials after finishing, durably: %v", names)
	}
}

// TestCrashNewSourceNeverTouchesCommitted: after the same crash, a
// different file offered under that name (or a restart) must start a new
// partial, not truncate the old one's data: it is the committed file.
func TestCrashNewSourceNeverTouchesCommitted(t *testing.T) {
	data := randomData(3000, 3)
	o := crashOffer("dir/f", data, 1)
	for _, restart := range []bool{false, true} {
		fs := commitCrashedBeforeCleanup(t, data, o)
		s := crashStore(t, fs)
		other := randomData(4000, 4)
		o2 := crashOffer(o.Name, other, 2) // a new mtime: another source
		p, _, err := s.Open(crashKey, o2, testChunk, restart)
		if err != nil {
			t.Fatal(err)
		}
		if d := p.State().DurableOffset; d != 0 {
			t.Errorf("new source resumed at %d", d)
		}
		crashWrite(t, p, other)
		if err := p.Commit(); !errors.Is(err, transfer.ErrExists) {
			t.Errorf("committing over the existing file: %v, want ErrExists", err)
		}
		p.Close()
		fs.Crash()
		fs.ResetToSyncedState()
		if got, _ := fs.ReadFile(o.Name); !bytes.Equal(got, data) {
			t.Errorf("restart %v: the committed file changed (%d bytes)", restart, len(got))
		}
	}
}

// TestCrashStoreIOErrorKeepsPartial: an I/O error while resuming (state
// record or tail chunk unreadable) fails this attempt and keeps the
// partial; it used to discard it and restart from zero.
func TestCrashStoreIOErrorKeepsPartial(t *testing.T) {
	for _, suffix := range []string{".state", ".data"} {
		t.Run(suffix, func(t *testing.T) {
			fs := crashfs.New()
			data := randomData(6000, 5)
			o := crashOffer("f", data, 1)
			p, _, err := crashStore(t, fs).Open(crashKey, o, testChunk, false)
			if err != nil {
				t.Fatal(err)
			}
			crashWrite(t, p, data)
			p.Close()
			fault, _ := failNth(1, errEIO, isOp(crashfs.OpRead, suffix))
			fs.SetFault(fault)
			s := crashStore(t, fs)
			if _, _, err := s.Open(crashKey, o, testChunk, false); !errors.Is(err, errEIO) {
				t.Fatalf("Open with an unreadable %s: %v", suffix, err)
			}
			p, restarted, err := s.Open(crashKey, o, testChunk, false)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if d := p.State().DurableOffset; d != int64(len(data)) || restarted {
				t.Errorf("after the read error: durable offset %d (restarted %v), want %d", d, restarted, len(data))
			}
		})
	}
}

var errEIO = errors.New("test: injected EIO")
