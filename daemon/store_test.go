package daemon_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

const testKey = "0123456789abcdef0123456789abcdef"

func newStore(t *testing.T) (*daemon.DirStore, string) {
	t.Helper()
	root := t.TempDir()
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	s, err := daemon.NewDirStore(fsys)
	if err != nil {
		t.Fatal(err)
	}
	return s, root
}

// TestDirStoreResume writes a partial, makes part of it durable, and
// reopens it after various kinds of damage.
func TestDirStoreResume(t *testing.T) {
	data := randomData(4*testChunk, 91)
	offer := &transfer.Offer{Size: int64(len(data)), Mode: 0o600, MtimeNs: 5, Inode: 6,
		PrefixID: transfer.HashBytes(data[:transfer.IdentityPrefix]), Name: "d/f"}
	partials := func(root string) string { return filepath.Join(root, ".ferry", "partials") }
	tests := []struct {
		name          string
		damage        func(t *testing.T, root string)
		offer         func(o transfer.Offer) *transfer.Offer
		restart       bool
		wantDurable   int64
		wantRestarted bool
	}{
		{"clean resume drops unsynced bytes", nil, nil, false, 2 * testChunk, false},
		{"same source, restart asked", nil, nil, true, 0, true},
		{"other source", nil, func(o transfer.Offer) *transfer.Offer { o.MtimeNs++; return &o }, false, 0, true},
		{"other size", nil, func(o transfer.Offer) *transfer.Offer { o.Size++; return &o }, false, 0, true},
		{"tail chunk damaged", func(t *testing.T, root string) {
			flipByte(t, filepath.Join(partials(root), testKey+".data"), testChunk+10)
		}, nil, false, 0, true},
		{"damage before the tail chunk goes unseen until the whole-file hash", func(t *testing.T, root string) {
			flipByte(t, filepath.Join(partials(root), testKey+".data"), 10)
		}, nil, false, 2 * testChunk, false},
		{"data shorter than the durable offset", func(t *testing.T, root string) {
			if err := os.Truncate(filepath.Join(partials(root), testKey+".data"), 2*testChunk-1); err != nil {
				t.Fatal(err)
			}
		}, nil, false, 0, true},
		{"data missing", func(t *testing.T, root string) {
			if err := os.Remove(filepath.Join(partials(root), testKey+".data")); err != nil {
				t.Fatal(err)
			}
		}, nil, false, 0, true},
		{"state record damaged counts as no partial", func(t *testing.T, root string) {
			flipByte(t, filepath.Join(partials(root), testKey+".state"), 50)
		}, nil, false, 0, false},
		{"state record missing counts as no partial", func(t *testing.T, root string) {
			if err := os.Remove(filepath.Join(partials(root), testKey+".state")); err != nil {
				t.Fatal(err)
			}
		}, nil, false, 0, false},
		{"leftover temporary state record is ignored", func(t *testing.T, root string) {
			if err := os.WriteFile(filepath.Join(partials(root), testKey+".tmp"), []byte("half"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, nil, false, 2 * testChunk, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, root := newStore(t)
			p, restarted, err := s.Open(testKey, offer, testChunk, false)
			if err != nil || restarted {
				t.Fatalf("Open: %v, restarted %v", err, restarted)
			}
			for off := 0; off < 3*testChunk; off += testChunk {
				if err := p.WriteAt(data[off:off+testChunk], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			// Durable up to 2 chunks; the third is written, never synced.
			if _, err := p.Sync(daemon.StackOf(data[:2*testChunk], int64(len(data)), testChunk)); err != nil {
				t.Fatal(err)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if tt.damage != nil {
				tt.damage(t, root)
			}
			o := offer
			if tt.offer != nil {
				o = tt.offer(*offer)
			}
			p, restarted, err = s.Open(testKey, o, testChunk, tt.restart)
			if err != nil {
				t.Fatalf("reopening: %v", err)
			}
			defer p.Close()
			st := p.State()
			if st.DurableOffset != tt.wantDurable || restarted != tt.wantRestarted {
				t.Fatalf("durable offset %d restarted %v, want %d and %v", st.DurableOffset, restarted, tt.wantDurable, tt.wantRestarted)
			}
			fi, err := os.Stat(filepath.Join(partials(root), testKey+".data"))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != tt.wantDurable {
				t.Errorf("data file of %d bytes, want it cut to the durable offset %d", fi.Size(), tt.wantDurable)
			}
			if st.Name != o.Name || st.Size != o.Size {
				t.Errorf("state %+v does not describe the offer", st)
			}
		})
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestDirStoreCommit(t *testing.T) {
	s, root := newStore(t)
	data := []byte("committed bytes")
	offer := &transfer.Offer{Size: int64(len(data)), Mode: 0o751, MtimeNs: 1e18, Name: "out/dir/f"}
	if ok, err := s.Exists(offer.Name); ok || err != nil {
		t.Fatalf("Exists before commit: %v, %v", ok, err)
	}
	p, _, err := s.Open(testKey, offer, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sync(daemon.StackOf(data, int64(len(data)), testChunk)); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(root, "out", "dir", "f"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o751 || fi.ModTime().UnixNano() != 1e18 || fi.Size() != int64(len(data)) {
		t.Errorf("committed file %v %v %d", fi.Mode(), fi.ModTime(), fi.Size())
	}
	if ok, err := s.Exists(offer.Name); !ok || err != nil {
		t.Fatalf("Exists after commit: %v, %v", ok, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, ".ferry", "partials")); len(ents) != 0 {
		t.Errorf("partial left behind: %v", ents)
	}

	// A second partial for the same name cannot overwrite it.
	p, _, err = s.Open(testKey, offer, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.WriteAt([]byte("other bytes!!!!"), 0); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); !errors.Is(err, transfer.ErrExists) {
		t.Fatalf("Commit over an existing file: %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "out", "dir", "f")); string(b) != string(data) {
		t.Fatalf("existing file overwritten: %q", b)
	}
}

// TestDirStoreCommitting: a commit cut short after the link is recognised
// and FinishCommit finishes it; a partial whose data file is linked at its
// name is never resumed (issue 8: resuming it let a later reset truncate
// the committed file).
func TestDirStoreCommitting(t *testing.T) {
	s, root := newStore(t)
	offer := &transfer.Offer{Size: 3, Name: "f"}
	p, _, err := s.Open(testKey, offer, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt([]byte("abc"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sync(daemon.StackOf([]byte("abc"), 3, testChunk)); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if s.LinkedAt(testKey, "f") {
		t.Fatal("LinkedAt before the link")
	}
	if err := os.Link(filepath.Join(root, ".ferry", "partials", testKey+".data"), filepath.Join(root, "f")); err != nil {
		t.Fatal(err)
	}
	if !s.LinkedAt(testKey, "f") {
		t.Fatal("Committing false after the link")
	}
	finished, err := s.FinishCommit(testKey, "f")
	if err != nil || !finished {
		t.Fatalf("FinishCommit: %v, %v; want it finished", finished, err)
	}
	if s.LinkedAt(testKey, "f") {
		t.Error("Committing after the partial is gone")
	}
	if ents, _ := os.ReadDir(filepath.Join(root, ".ferry", "partials")); len(ents) != 0 {
		t.Errorf("partial left after FinishCommit: %v", ents)
	}
	if finished, err := s.FinishCommit(testKey, "f"); err != nil || finished {
		t.Errorf("FinishCommit again: %v, %v; want nothing to finish", finished, err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "f")); err != nil || string(b) != "abc" {
		t.Errorf("committed file %q, %v", b, err)
	}
}

func TestDirStoreRejectsBadKeys(t *testing.T) {
	s, _ := newStore(t)
	for _, key := range []string{"", "short", "../../../etc/passwd", "0123456789ABCDEF", "0123456789abcdef/x", "0123456789abcdeg"} {
		if p, _, err := s.Open(key, &transfer.Offer{Name: "f"}, testChunk, false); err == nil {
			p.Close()
			t.Errorf("Open(%q) succeeded", key)
		}
	}
}

// TestDirStoreNeverWritesThroughCommittedFile recreates the root as a
// crash leaves it between the two removals at the end of a commit: the
// state record is gone, but KEY.data is still a hard link of the committed
// file. A new partial under that key must not truncate or write the
// committed file through that link.
func TestDirStoreNeverWritesThroughCommittedFile(t *testing.T) {
	data := []byte("committed bytes")
	offer := &transfer.Offer{Size: int64(len(data)), Mode: 0o644, Name: "f"}
	tests := []struct {
		name  string
		offer *transfer.Offer
	}{
		{"same source offered again", offer},
		{"other source under the same name", &transfer.Offer{Size: 4, Mode: 0o644, MtimeNs: 1, Name: "f"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, root := newStore(t)
			p, _, err := s.Open(testKey, offer, testChunk, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Sync(daemon.StackOf(data, int64(len(data)), testChunk)); err != nil {
				t.Fatal(err)
			}
			if err := p.Commit(); err != nil {
				t.Fatal(err)
			}
			p.Close()
			committed := filepath.Join(root, "f")
			if err := os.Link(committed, filepath.Join(root, ".ferry", "partials", testKey+".data")); err != nil {
				t.Fatal(err)
			}

			p, _, err = s.Open(testKey, tt.offer, testChunk, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.WriteAt([]byte("XXXX"), 0); err != nil {
				t.Fatal(err)
			}
			p.Close()
			if b, err := os.ReadFile(committed); err != nil || string(b) != string(data) {
				t.Fatalf("committed file now %q (%v), want %q", b, err, data)
			}
		})
	}
}
