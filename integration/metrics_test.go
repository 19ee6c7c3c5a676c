package integration

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMetrics runs a committed, a refused (exists), a committed after a
// chunk failed verification, and an interrupted transfer through a ferryd with --metrics-listen, then checks the
// scraped counters and that `promtool check metrics` finds nothing to
// report. promtool (Debian's prometheus package) is required under CI
// (any non-empty CI, as in diskfull_test.go) and skipped with a message
// otherwise.
func TestMetrics(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--metrics-listen", "127.0.0.1:0")
	addr := loggedAddr(d.waitLine(0, "metrics listening"))
	if addr == "" {
		t.Fatal("no addr= in the metrics listening line")
	}

	// Committed.
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, faultFileSize, 21)
	wantCode(t, runFerry(t, sendArgs(d.addr, src)...), exitOK)

	// Refused: the name holds a committed file of other content.
	other := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, other, faultFileSize, 22)
	wantCode(t, runFerry(t, sendArgs(d.addr, other)...), exitRefused)

	// Committed after a chunk failed verification and was sent again.
	flip := filepath.Join(t.TempDir(), "flip.bin")
	writeRandom(t, flip, faultFileSize, 24)
	w := probeWire(t, flip, faultFileSize)
	fp := newProxy(t, d.addr)
	fp.FlipByte(w.chunkFrame(1) + w.chunkHeader + 100)
	wantCode(t, runFerry(t, sendArgs(fp.Addr(), flip)...), exitOK)

	// Interrupted: every connection is cut inside the first chunk, so no
	// attempt makes progress and --retries 0 gives up after one.
	cut := filepath.Join(t.TempDir(), "cut.bin")
	writeRandom(t, cut, faultFileSize, 23)
	p := newProxy(t, d.addr)
	p.CutAfter(64 << 10)
	mark := d.mark()
	wantCode(t, runFerry(t, sendArgs(p.Addr(), "--retries", "0", cut)...), exitFailed)
	d.waitLine(mark, "transfer interrupted", "cut.bin")

	// The sessions end (and give back their transfers) just after their
	// senders hear the outcome: wait until the gauges settle.
	var m map[string]float64
	var text []byte
	deadline := time.Now().Add(waitTimeout)
	for {
		text = scrape(t, addr)
		m = parseMetrics(t, text)
		if m["ferry_sessions_active"] == 0 && m["ferry_transfers_active"] == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	want := map[string]float64{
		`ferry_transfers_total{outcome="committed",reason=""}`:     2,
		`ferry_transfers_total{outcome="refused",reason="exists"}`: 1,
		`ferry_transfers_total{outcome="interrupted",reason=""}`:   1,
		`ferry_transfers_total{outcome="expired",reason=""}`:       0,
		`ferry_transfers_total{outcome="unchanged",reason=""}`:     0,
		"ferry_chunk_verify_failures_total":                        1,
		"ferry_auth_failures_total":                                0,
		"ferry_sessions_active":                                    0,
		"ferry_transfers_active":                                   0,
		"ferry_reserved_bytes":                                     0,
	}
	for k, v := range want {
		got, ok := m[k]
		if !ok {
			t.Errorf("%s missing from /metrics", k)
		} else if got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	// The committed files' bytes with the chunk sent again, and at most
	// the refused and the cut ones' on top.
	if got := m["ferry_received_bytes_total"]; got < 2*faultFileSize+chunkSize || got > 4*faultFileSize+chunkSize {
		t.Errorf("ferry_received_bytes_total = %v, want between %d and %d", got, 2*faultFileSize+chunkSize, 4*faultFileSize+chunkSize)
	}
	if got := m[`ferry_fsync_seconds_count{op="commit"}`]; got < 1 {
		t.Errorf(`ferry_fsync_seconds_count{op="commit"} = %v, want at least 1`, got)
	}
	if got, ok := m["ferry_partial_bytes"]; !ok || got < 0 {
		t.Errorf("ferry_partial_bytes = %v (present %v), want a size", got, ok)
	}
	for _, k := range []string{"go_goroutines", "process_open_fds"} {
		if _, ok := m[k]; !ok {
			t.Errorf("%s missing: the Go and process collectors are not registered", k)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not found; CI installs it (Debian package prometheus)")
		}
		t.Skip("promtool not found; install Debian's prometheus package to check the metrics' names and help")
	}
	cmd := exec.CommandContext(testContext(t), promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// scrape returns the body of http://addr/metrics.
func scrape(t *testing.T, addr string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scraping: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping: status %s, %v\n%s", resp.Status, err, body)
	}
	return body
}

// parseMetrics reads the samples of a text exposition: each sample's
// name with its labels as written, to its value.
func parseMetrics(t *testing.T, text []byte) map[string]float64 {
	t.Helper()
	m := make(map[string]float64)
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("no value in metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}
