package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestJSONLogs runs ferryd with --log-format json through one committed,
// one refused and one interrupted transfer and a SIGTERM drain (issue 12): every stderr
// line is a JSON object with msg and level, the transfer lines name the
// file, its size and the sender, and the refusal names the sender and
// the code.
func TestJSONLogs(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root, "--log-format", "json", "--max-size", "4096")
	dir := t.TempDir()
	small, big := filepath.Join(dir, "small.bin"), filepath.Join(dir, "big.bin")
	writeRandom(t, small, 4096, 1)
	writeRandom(t, big, 4097, 2)
	wantCode(t, runFerry(t, sendArgs(d.addr, small)...), exitOK)
	wantCode(t, runFerry(t, sendArgs(d.addr, big)...), exitRefused)
	// Interrupted: the only connection is cut inside the first chunk.
	cut := filepath.Join(dir, "cut.bin")
	writeRandom(t, cut, 4000, 3)
	p := newProxy(t, d.addr)
	p.CutAfter(2 << 10)
	mark := d.mark()
	wantCode(t, runFerry(t, sendArgs(p.Addr(), "--retries", "0", cut)...), exitFailed)
	d.waitLine(mark, "transfer interrupted", "cut.bin")
	if code := d.term(); code != 0 {
		t.Fatalf("ferryd exited %d after SIGTERM", code)
	}

	byMsg := map[string][]map[string]any{}
	for _, line := range d.log.snapshot() {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("stderr line is not JSON: %q: %v", line, err)
			continue
		}
		msg, _ := rec["msg"].(string)
		if msg == "" || rec["level"] == nil || rec["time"] == nil {
			t.Errorf("line lacks msg, level or time: %q", line)
		}
		byMsg[msg] = append(byMsg[msg], rec)
	}
	want := []struct {
		msg    string
		fields []string
	}{
		{"listening", []string{"addr", "root", "fingerprint"}},
		{"transfer started", []string{"name", "size", "remote", "token", "resumed_from"}},
		{"committed", []string{"name", "size", "remote", "token", "resumed_from", "received_bytes", "seconds", "rate", "blake3"}},
		{"transfer interrupted", []string{"name", "size", "remote", "token", "resumed_from", "durable_offset", "received_bytes", "seconds", "rate", "err"}},
		{"refused", []string{"name", "remote", "token", "code", "reason"}},
		{"session ended", []string{"remote", "transfers", "seconds"}},
		{"stopped", nil},
	}
	for _, w := range want {
		recs := byMsg[w.msg]
		if len(recs) == 0 {
			t.Errorf("no %q line; messages: %v", w.msg, keys(byMsg))
			continue
		}
		for _, f := range w.fields {
			if recs[0][f] == nil {
				t.Errorf("%q line lacks %q: %v", w.msg, f, recs[0])
			}
		}
	}
	if got := byMsg["committed"]; len(got) == 1 && (got[0]["name"] != "small.bin" || got[0]["size"] != 4096.0) {
		t.Errorf("committed line names %v of %v bytes, want small.bin of 4096", got[0]["name"], got[0]["size"])
	}
	if got := byMsg["committed"]; len(got) == 1 && got[0]["blake3"] != fileHash(t, small) {
		t.Errorf("committed line has blake3 %v, want the file's %s", got[0]["blake3"], fileHash(t, small))
	}
	if got := byMsg["refused"]; len(got) != 1 || got[0]["name"] != "big.bin" || got[0]["reason"] == nil {
		t.Errorf("refused lines %v, want one naming big.bin with the reason the sender saw", got)
	}
	if got := byMsg["shutting down"]; len(got) == 1 && got[0]["timeout"] != "30s" {
		t.Errorf("shutting down timeout = %v, want \"30s\"", got[0]["timeout"])
	}
}

// TestJSONLogsStartupFailure: a daemon that cannot start still writes
// only JSON under --log-format json, its reason included.
func TestJSONLogsStartupFailure(t *testing.T) {
	root := t.TempDir()
	startDaemon(t, root)
	r := runDaemon(t, "--listen", "127.0.0.1:0", "--root", root, "--log-format", "json")
	if r.code != exitFailed {
		t.Errorf("second ferryd on one root exited %d, want %d", r.code, exitFailed)
	}
	for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("stderr line is not JSON: %q", line)
		} else if rec["level"] == "ERROR" && !strings.Contains(rec["err"].(string), "locked") {
			t.Errorf("error line %q does not say the root is locked", line)
		}
	}
}

// runDaemon runs a ferryd that is expected to exit by itself and returns
// its exit code and stderr.
func runDaemon(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(testContext(t), bin.ferryd, args...)
	cmd.Env = childEnv(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	r := result{stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running ferryd: %v", err)
	}
	return r
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// fileHash returns the BLAKE3 of the file at path in hex, as ferry hash
// prints it.
func fileHash(t *testing.T, path string) string {
	t.Helper()
	r := runFerry(t, "hash", path)
	wantCode(t, r, exitOK)
	h, _, _ := strings.Cut(r.stdout, " ")
	return h
}
