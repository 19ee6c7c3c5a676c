package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runFerryd runs a ferryd tool command (not the daemon) to completion.
func runFerryd(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(testContext(t), bin.ferryd, args...)
	cmd.Env = childEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running ferryd %q: %v", args, err)
	}
	return r
}

// listedPartial is one object of `ferryd partials --json`.
type listedPartial struct {
	Key           string  `json:"key"`
	Name          string  `json:"name"`
	Token         string  `json:"token"`
	Size          int64   `json:"size"`
	DurableOffset int64   `json:"durable_offset"`
	Remote        string  `json:"remote"`
	AgeSeconds    float64 `json:"age_seconds"`
}

func listPartials(t *testing.T, root string) []listedPartial {
	t.Helper()
	r := runFerryd(t, "partials", "--root", root, "--json")
	if r.code != exitOK {
		t.Fatalf("ferryd partials --json: %s", r)
	}
	var out []listedPartial
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("decoding %q: %v", r.stdout, err)
	}
	return out
}

// partialFiles returns the files under ROOT/.ferry/partials.
func partialFiles(t *testing.T, root string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(root, ".ferry", "partials"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// TestPartialExpiry: with --partial-ttl 1s, the partial an interrupted
// transfer leaves is removed in the background, with one log line.
func TestPartialExpiry(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	root := t.TempDir()
	d := startDaemon(t, root, append(syncEveryChunk, "--partial-ttl", "1s")...)
	in := sendUntil(t, ctx, d, 120)
	in.sender.kill()
	d.waitLine(0, `msg="session ended"`)
	line := d.waitLine(0, `msg="partial expired"`, "name=data.bin", fmt.Sprintf("size=%d", killSize), "durable_offset=", "age=")
	if strings.Contains(line, "durable_offset=0 ") {
		t.Errorf("expired partial had nothing durable: %s", line)
	}
	if left := partialFiles(t, root); len(left) != 0 {
		t.Errorf("partials left after expiry: %v", left)
	}
	if got := listPartials(t, root); len(got) != 0 {
		t.Errorf("ferryd partials lists %+v after expiry", got)
	}
}

// TestPartialInUseNotExpired: a transfer slower than --partial-ttl, whose
// partial goes unwritten for longer than the TTL between chunks, is never
// expired while its session holds it, and commits.
func TestPartialInUseNotExpired(t *testing.T) {
	slow(t)
	root := t.TempDir()
	d := startDaemon(t, root, "--partial-ttl", "1s")
	src := filepath.Join(t.TempDir(), "slow.bin")
	writeRandom(t, src, 2*chunkSize, 121)
	p := newProxy(t, d.addr)
	p.Throttle(chunkSize / 3) // a chunk every 3s: three TTLs without a write
	r := runFerry(t, sendArgs(p.Addr(), src)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "slow.bin"))
	if l := d.lines(0, `msg="partial expired"`); len(l) != 0 {
		t.Errorf("a partial in use was expired: %q", l)
	}
}

// TestPartialsToolLiveDaemon: `ferryd partials` lists the partial of an
// interrupted transfer while ferryd runs, and `ferryd partials purge NAME`
// has the running daemon remove it; without a daemon, purge removes
// partials itself under the root's lock.
func TestPartialsToolLiveDaemon(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	root := t.TempDir()
	d := startDaemon(t, root, syncEveryChunk...)
	in := sendUntil(t, ctx, d, 122)
	in.sender.kill()
	d.waitLine(0, `msg="session ended"`)

	got := listPartials(t, root)
	if len(got) != 1 || got[0].Name != "data.bin" || got[0].Size != killSize || got[0].DurableOffset <= 0 ||
		got[0].DurableOffset > killSize || got[0].Token != "" || got[0].AgeSeconds < 0 || len(got[0].Key) < 16 ||
		!strings.HasPrefix(got[0].Remote, "127.0.0.1:") {
		t.Fatalf("ferryd partials --json: %+v", got)
	}
	text := runFerryd(t, "partials", "--root", root)
	if text.code != exitOK || !strings.Contains(text.stdout, "NAME") ||
		!strings.Contains(text.stdout, "data.bin") || !strings.Contains(text.stdout, fmt.Sprint(got[0].DurableOffset)) ||
		!strings.Contains(text.stdout, got[0].Remote) {
		t.Errorf("ferryd partials: %s", text)
	}

	r := runFerryd(t, "partials", "purge", "--root", root, "data.bin")
	if r.code != exitOK || !strings.Contains(r.stdout, "removed data.bin") {
		t.Fatalf("ferryd partials purge data.bin: %s", r)
	}
	d.waitLine(0, `msg="partial purged"`, "name=data.bin")
	if left := partialFiles(t, root); len(left) != 0 {
		t.Errorf("partials left after purge: %v", left)
	}

	// Without the daemon the tool takes the lock and removes an orphan
	// data file itself.
	if code := d.term(); code != exitOK {
		t.Fatalf("ferryd exited %d on SIGTERM", code)
	}
	orphan := strings.Repeat("ab", 16)
	if err := os.WriteFile(filepath.Join(root, ".ferry", "partials", orphan+".data"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runFerryd(t, "partials", "purge", "--root", root)
	if r.code != exitOK || !strings.Contains(r.stdout, "removed key "+orphan) {
		t.Fatalf("ferryd partials purge without a daemon: %s", r)
	}
	if left := partialFiles(t, root); len(left) != 0 {
		t.Errorf("partials left after purge: %v", left)
	}
}
