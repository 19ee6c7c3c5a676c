package daemon_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon/internal/crashfs"
	"github.com/ferry-dev/ferry/transfer"
)

// TestSlowWriteCommitWaitsForWriter: the chunks of a data run are
// written on the writer goroutine. With every data write slow, the
// session must wait at the trailer until the run's last chunk is written,
// before the transfer joins the group commit and its fsync: the committed
// file holds every sent byte and survives a crash after Committed
// (DESIGN.md, durability). Not waiting commits a file with a missing tail.
func TestSlowWriteCommitWaitsForWriter(t *testing.T) {
	m := newCrashMachine(iofCase, false)
	m.fs.SetLatency(func(op crashfs.Op) time.Duration {
		if op.Kind == crashfs.OpWrite && strings.HasSuffix(op.Name, ".data") {
			return 20 * time.Millisecond
		}
		return 0
	})
	srv := m.mustBoot(t)
	a := m.send(srv)
	if a.err != nil {
		t.Fatalf("send: %v", a.err)
	}
	if a.res.Hash != transfer.HashBytes(m.data) {
		t.Errorf("result hash %x", a.res.Hash)
	}
	m.fs.SetLatency(nil)
	m.checkDurablyCommitted(t)
}
