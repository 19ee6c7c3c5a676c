package daemon_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// TestEntries (protocol 2.2) drives Sender.SendEntries against a daemon:
// a directory is created with its mode and mtime (again harmlessly), a
// link inside the root is made and accepted again, and the daemon itself
// refuses, whatever the sender checked, a link leading out of the root,
// an entry whose way goes through a link, a bad name, and a directory
// over a file; the session goes on after each refusal.
func TestEntries(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	s := &transfer.Sender{Addr: "pipe", ChunkSize: testChunk, Backoff: 10 * time.Millisecond,
		Dial: func(context.Context, string, string) (net.Conn, error) { return srv.dial(t), nil }}
	defer s.Close()
	if err := os.WriteFile(filepath.Join(srv.root, "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2018, 1, 2, 3, 4, 5, 6, time.UTC)
	dir := &transfer.Entry{Kind: transfer.EntryDir, Mode: 0o710, MtimeNs: mtime.UnixNano(), Name: "d/e"}
	entries := []*transfer.Entry{
		dir,
		{Kind: transfer.EntrySymlink, Name: "d/l", Target: "e"},
		{Kind: transfer.EntrySymlink, Name: "d/l", Target: "e"}, // again: accepted
		{Kind: transfer.EntrySymlink, Name: "d/out", Target: "../../etc"},
		{Kind: transfer.EntryDir, Mode: 0o755, Name: "d/l/sub"},
		{Kind: transfer.EntrySymlink, Name: "d/l/x", Target: "y"},
		{Kind: transfer.EntryDir, Mode: 0o755, Name: "../up"},
		{Kind: transfer.EntryDir, Mode: 0o755, Name: "file"},
		{Kind: transfer.EntryDir, Mode: 0o700, MtimeNs: mtime.UnixNano(), Name: "d/e"}, // again, new mode
	}
	want := []transfer.Code{0, 0, 0, transfer.CodeBadName, transfer.CodeBadName, transfer.CodeBadName, transfer.CodeBadName, transfer.CodeExists, 0}
	got := make(map[*transfer.Entry]error)
	if err := s.SendEntries(context.Background(), entries, func(e *transfer.Entry, err error) { got[e] = err }); err != nil {
		t.Fatal(err)
	}
	for i, e := range entries {
		err := got[e]
		var re *transfer.RemoteError
		switch {
		case want[i] == 0 && err != nil:
			t.Errorf("entry %d %+v: %v, want made", i, e, err)
		case want[i] != 0 && (!errors.As(err, &re) || re.Code != want[i]):
			t.Errorf("entry %d %+v: %v, want refused with code %d", i, e, err, want[i])
		}
	}
	fi, err := os.Stat(filepath.Join(srv.root, "d", "e"))
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 || !fi.ModTime().Equal(mtime) {
		t.Errorf("directory: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(srv.root, "d", "l")); err != nil || l != "e" {
		t.Errorf("link: %q %v", l, err)
	}
	for _, n := range []string{"d/out", "d/e/sub", "d/e/x"} {
		if _, err := os.Lstat(filepath.Join(srv.root, filepath.FromSlash(n))); err == nil {
			t.Errorf("%s exists", n)
		}
	}
}
