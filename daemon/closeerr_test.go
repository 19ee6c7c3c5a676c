package daemon_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

var errCloseFault = errors.New("test: close failed")

// closeFaultFS is an OSFS whose files fail Close (after closing) while
// failData or failDirect is set. Its direct handles are plain write-only
// handles, so that one exists on any file system.
type closeFaultFS struct {
	*daemon.OSFS
	failData, failDirect atomic.Bool
}

type closeFaultFile struct {
	daemon.File
	fail *atomic.Bool
}

func (f *closeFaultFile) Close() error {
	if err := f.File.Close(); err != nil {
		return err
	}
	if f.fail.Load() {
		return errCloseFault
	}
	return nil
}

func (fs *closeFaultFS) OpenFile(name string, flag int, perm os.FileMode) (daemon.File, error) {
	f, err := fs.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &closeFaultFile{File: f, fail: &fs.failData}, nil
}

func (fs *closeFaultFS) OpenDirect(name string) (daemon.File, error) {
	f, err := fs.OSFS.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	return &closeFaultFile{File: f, fail: &fs.failDirect}, nil
}

// TestCloseErrorsAreReported: closing a partial dropped the error of its
// direct handle, and Commit dropped the error of closing the partial.
func TestCloseErrorsAreReported(t *testing.T) {
	for _, tt := range []struct {
		name   string
		direct bool
		commit bool
	}{
		{"close, data handle", false, false},
		{"close, direct handle", true, false},
		{"commit, data handle", false, true},
		{"commit, direct handle", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			osfs, err := daemon.OpenOSFS(root)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { osfs.Close() })
			fsys := &closeFaultFS{OSFS: osfs}
			s, err := daemon.NewDirStore(fsys)
			if err != nil {
				t.Fatal(err)
			}
			s.DirectIO = true
			data := randomData(2*daemon.DirectAlign, 3)
			offer := &transfer.Offer{ID: 1, Size: int64(len(data)), Mode: 0o600, Name: "f"}
			p, _, err := s.Open(testKey, offer, testChunk, false)
			if err != nil {
				t.Fatal(err)
			}
			// Two writes: a direct handle opens at the first aligned
			// write that does not complete the file.
			if err := p.WriteAt(data[:daemon.DirectAlign], 0); err != nil {
				t.Fatal(err)
			}
			if err := p.WriteAt(data[daemon.DirectAlign:], daemon.DirectAlign); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Sync(daemon.StackOf(data, int64(len(data)), testChunk)); err != nil {
				t.Fatal(err)
			}
			if tt.direct {
				fsys.failDirect.Store(true)
			} else {
				fsys.failData.Store(true)
			}
			if !tt.commit {
				if err := p.Close(); !errors.Is(err, errCloseFault) {
					t.Fatalf("Close = %v, want the close fault", err)
				}
				return
			}
			err = p.Commit()
			if !errors.Is(err, errCloseFault) || !strings.HasPrefix(err.Error(), "committed, but ") {
				t.Fatalf("Commit = %v, want the close fault reported as a leftover", err)
			}
			if b, err := os.ReadFile(filepath.Join(root, "f")); err != nil || string(b) != string(data) {
				t.Fatalf("committed file: %v", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(root, ".ferry", "partials")); len(ents) != 0 {
				t.Errorf("partial left behind: %v", ents)
			}
		})
	}
}
