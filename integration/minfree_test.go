package integration

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestMinFree: --min-free refuses, at admission, an offer that would
// leave less free space than asked for (issue 12), and admits one that
// leaves enough. On a 16 MiB tmpfs with --min-free 10MiB, 8 MiB does not
// fit beside the 10 MiB kept free, 1 MiB does.
func TestMinFree(t *testing.T) {
	fs := mountTmpfs(t, "16m")
	root := filepath.Join(fs, "root")
	d := startDaemon(t, root, "--min-free", "10MiB")
	dir := t.TempDir()
	big, small := filepath.Join(dir, "big.bin"), filepath.Join(dir, "small.bin")
	writeRandom(t, big, 8<<20, 41)
	writeRandom(t, small, 1<<20, 42)

	r := runFerry(t, sendArgs(d.addr, big)...)
	wantCode(t, r, exitRefused)
	if !strings.Contains(r.stderr, "minimum of 10485760 bytes free") {
		t.Errorf("refusal does not name the minimum:\n%s", r)
	}
	r = runFerry(t, sendArgs(d.addr, small)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), small, filepath.Join(root, "small.bin"))
}
