package integration

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestHumanSizes gives every size flag a unit (issue 12): ferryd
// --max-size 1KiB refuses a 2 KiB file and takes a 1 KiB one, ferry
// --chunk-size 64KiB (and FERRY_CHUNK_SIZE=64KiB) sends, and a size ferry
// cannot read, or one outside the chunk bounds, is a usage error.
func TestHumanSizes(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--max-size", "1KiB", "--sync-bytes", "1MiB", "--max-chunk-size", "64KiB", "--min-rate", "1KiB/s")
	dir := t.TempDir()
	big, small := filepath.Join(dir, "big.bin"), filepath.Join(dir, "small.bin")
	writeRandom(t, big, 2048, 1)
	writeRandom(t, small, 1024, 2)

	r := runFerry(t, sendArgs(d.addr, "--chunk-size", "64KiB", big)...)
	wantCode(t, r, exitRefused)
	if rec := onlyRecord(t, r); !strings.Contains(rec.Error, "too large") && !strings.Contains(rec.Error, "larger") {
		t.Errorf("refusal %q does not say the file is too large", rec.Error)
	}

	r = runFerry(t, sendArgs(d.addr, "--chunk-size", "64KiB", small)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), small, filepath.Join(root, "small.bin"))

	r = startFerryEnv(t, []string{"FERRY_CHUNK_SIZE=64KiB"}, sendArgs(d.addr, "--dest", "env", small)...).wait()
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), small, filepath.Join(root, "env", "small.bin"))

	for _, tt := range []struct {
		name string
		env  []string
		args []string
	}{
		{"garbage", nil, []string{"--chunk-size", "lots"}},
		{"negative", nil, []string{"--chunk-size", "-64KiB"}},
		{"below the bound", nil, []string{"--chunk-size", "1KiB"}},
		{"above the bound", nil, []string{"--chunk-size", "1GiB"}},
		{"garbage in the environment", []string{"FERRY_CHUNK_SIZE=64 parsecs"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startFerryEnv(t, tt.env, sendArgs(d.addr, append(tt.args, small)...)...).wait()
			wantCode(t, r, exitUsage)
			if !strings.Contains(r.stderr, "chunk") {
				t.Errorf("stderr does not name the flag: %q", r.stderr)
			}
		})
	}
}
