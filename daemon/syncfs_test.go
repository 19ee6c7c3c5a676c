package daemon

import (
	"bytes"
	"log/slog"
	"strings"
	"syscall"
	"testing"
)

type failingSyncFS struct{ calls int }

func (f *failingSyncFS) SyncFS() error { f.calls++; return syscall.EIO }

// TestSyncFSFailureWarnsOnce: the first failed syncfs turns group commits
// back to per-file fsyncs for good and says so in one warning; later
// groups neither call syncfs nor warn again.
func TestSyncFSFailureWarnsOnce(t *testing.T) {
	var logs bytes.Buffer
	fs := &failingSyncFS{}
	s := &SyncFSWhenQuiet{FS: fs, Dirty: func() (int64, bool) { return 0, true },
		Log: slog.New(slog.NewTextHandler(&logs, nil))}
	for i := range 3 {
		if s.SyncDirs(5) {
			t.Fatalf("group %d: SyncDirs reported the directories durable after a failed syncfs", i)
		}
	}
	if fs.calls != 1 || !s.Off() {
		t.Errorf("syncfs called %d times, off %v; want once, then off", fs.calls, s.Off())
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], "syncfs failed") ||
		!strings.Contains(lines[0], syscall.EIO.Error()) {
		t.Errorf("log:\n%s\nwant one warning naming the syncfs failure and its error", logs.String())
	}
}
