package integration

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRateLimits: a send of 4 MiB limited to 2 MiB/s, by ferry --bwlimit
// or by ferryd --max-rate, with 1 MiB chunks (one chunk of burst), takes
// at least (4-1)/2 = 1.5 s (issue 12). A lower bound, not a speed test.
// The file arrives intact either way.
func TestRateLimits(t *testing.T) {
	slow(t)
	const size, want = 4 << 20, 1400 * time.Millisecond // 1.5 s, less timer slack
	tests := []struct {
		name         string
		daemon, send []string
	}{
		{"ferry --bwlimit", nil, []string{"--bwlimit", "2MiB"}},
		{"FERRY_BWLIMIT", nil, nil},
		{"ferryd --max-rate", []string{"--max-rate", "2MiB/s", "--max-chunk-size", "1MiB"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			d := startDaemon(t, root, tt.daemon...)
			src := filepath.Join(t.TempDir(), "f.bin")
			writeRandom(t, src, size, 12)
			var env []string
			if tt.name == "FERRY_BWLIMIT" {
				env = []string{"FERRY_BWLIMIT=2MiB/s"}
			}
			start := time.Now()
			r := startFerryEnv(t, env, sendArgs(d.addr, append(tt.send, "--chunk-size", "1MiB", src)...)...).wait()
			el := time.Since(start)
			wantCode(t, r, exitOK)
			checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "f.bin"))
			if el < want {
				t.Errorf("4 MiB at 2 MiB/s took %v, want at least %v", el, want)
			}
			t.Logf("4 MiB at 2 MiB/s: %v", el)
		})
	}
}

// TestRateLimitsTooLowExit2: a limit that could not move one chunk within
// the timeout would only make every transfer time out: a usage error.
func TestRateLimitsTooLowExit2(t *testing.T) {
	src := filepath.Join(t.TempDir(), "f.bin")
	writeRandom(t, src, 10, 1)
	r := runFerry(t, sendArgs("127.0.0.1:1", "--bwlimit", "1KiB", src)...)
	wantCode(t, r, exitUsage)
	if !strings.Contains(r.stderr, "--bwlimit") {
		t.Errorf("stderr does not name --bwlimit: %q", r.stderr)
	}
	for _, args := range [][]string{{"--max-rate", "1KiB"}, {"--max-rate", "2KiB"}, {"--max-rate", "garbage"}} {
		d := runDaemon(t, append([]string{"--listen", "127.0.0.1:0", "--root", t.TempDir(), "--max-chunk-size", "64KiB"}, args...)...)
		if d.code != exitUsage || !strings.Contains(d.stderr, "max-rate") {
			t.Errorf("ferryd %q exited %d, want %d naming --max-rate: %s", args, d.code, exitUsage, d.stderr)
		}
	}
}
