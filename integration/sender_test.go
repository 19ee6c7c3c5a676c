package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Exit codes of ferry, from the README's table.
const (
	exitOK        = 0
	exitFailed    = 1
	exitUsage     = 2
	exitRefused   = 3
	exitIntegrity = 4
)

// chunkSize is ferry send's default chunk size, which these tests rely on
// when they reason about how much a resume may resend.
const chunkSize = 1 << 20

// record is one --json object of ferry send.
type record struct {
	Path             string  `json:"path"`
	Remote           string  `json:"remote"`
	Size             int64   `json:"size"`
	ResumedFrom      int64   `json:"resumed_from"`
	SentBytes        int64   `json:"sent_bytes"`
	TotalSentBytes   int64   `json:"total_sent_bytes"`
	Attempts         int     `json:"attempts"`
	Restarted        bool    `json:"restarted"`
	AlreadyCommitted bool    `json:"already_committed"`
	BLAKE3           string  `json:"blake3"`
	Seconds          float64 `json:"seconds"`
	Status           string  `json:"status"`
	Reason           string  `json:"reason"`
	Error            string  `json:"error"` // the same as Reason, for older scripts

	fields map[string]bool // the keys present in the object
}

// result is what one ferry run left behind.
type result struct {
	code   int // -1 when killed by a signal
	stdout string
	stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ferryProc is a running ferry command. exec's own goroutines drain its
// output into buffers, read only after the process has been reaped.
type ferryProc struct {
	t              *testing.T
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
}

func startFerry(t *testing.T, args ...string) *ferryProc {
	t.Helper()
	return startFerryEnv(t, nil, args...)
}

// startFerryEnv starts ferry with extra environment variables.
func startFerryEnv(t *testing.T, env []string, args ...string) *ferryProc {
	t.Helper()
	p := &ferryProc{t: t, cmd: exec.Command(bin.ferry, args...), done: make(chan struct{})}
	p.cmd.Env = append(childEnv(t), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting ferry: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.kill)
	return p
}

// kill sends SIGKILL and waits until the process is reaped.
func (p *ferryProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// wait waits for ferry to exit and parses its --json output.
func (p *ferryProc) wait() result {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		p.kill()
		p.t.Fatalf("ferry %q did not exit within %v; stderr:\n%s", p.cmd.Args[1:], waitTimeout, p.stderr.String())
	}
	r := result{stdout: p.stdout.String(), stderr: p.stderr.String()}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
	case errors.As(p.err, &ee):
		r.code = ee.ExitCode()
	default:
		p.t.Fatalf("waiting for ferry: %v", p.err)
	}
	return r
}

// summaryRecord is the --json object that ends a run of ferry send.
type summaryRecord struct {
	Summary   bool    `json:"summary"`
	Committed int     `json:"committed"`
	Unchanged int     `json:"unchanged"`
	Skipped   int     `json:"skipped"`
	Refused   int     `json:"refused"`
	Failed    int     `json:"failed"`
	Files     int     `json:"files"`
	Bytes     int64   `json:"bytes"`
	SentBytes int64   `json:"sent_bytes"`
	Seconds   float64 `json:"seconds"`
	Rate      float64 `json:"rate"`
}

// parseSummary returns the summary object of ferry send --json's output,
// which must be its last line.
func parseSummary(t *testing.T, stdout string) summaryRecord {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var sum summaryRecord
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil || !sum.Summary {
		t.Fatalf("the last --json line is not a summary (%v):\n%s", err, stdout)
	}
	return sum
}

// parseRecords decodes one JSON object per line, the files' records; stdout
// carries nothing else but the summary object (parseSummary), skipped.
func parseRecords(t *testing.T, stdout string) []record {
	t.Helper()
	var recs []record
	sc := bufio.NewScanner(strings.NewReader(stdout))
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r record
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(line, &r); err != nil {
			t.Errorf("stdout line is not a --json record: %q: %v", line, err)
			continue
		}
		json.Unmarshal(line, &keys)
		if _, ok := keys["summary"]; ok {
			continue // parseSummary's
		}
		r.fields = map[string]bool{}
		for k := range keys {
			r.fields[k] = true
		}
		recs = append(recs, r)
	}
	return recs
}

func runFerry(t *testing.T, args ...string) result {
	t.Helper()
	return startFerry(t, args...).wait()
}

// sendArgs are the arguments of a ferry send to addr with --json and a
// short backoff, followed by extra flags and paths.
func sendArgs(addr string, extra ...string) []string {
	return append([]string{"send", "--to", addr, "--json", "--backoff", "50ms"}, extra...)
}

// wantCode fails the test unless ferry exited with code.
func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("ferry exited %d, want %d\n%s", r.code, code, r)
	}
}

// onlyRecord returns the run's single --json record, checking the keys
// that every record carries.
func onlyRecord(t *testing.T, r result) record {
	t.Helper()
	recs := parseRecords(t, r.stdout)
	if len(recs) != 1 {
		t.Fatalf("got %d --json records, want 1\n%s", len(recs), r)
	}
	rec := recs[0]
	keys := []string{"path", "remote", "size", "resumed_from", "sent_bytes", "total_sent_bytes", "attempts", "restarted", "seconds", "status"}
	if rec.Status == "committed" || rec.Status == "unchanged" {
		keys = append(keys, "blake3")
	} else {
		keys = append(keys, "reason", "error")
	}
	for _, k := range keys {
		if !rec.fields[k] {
			t.Errorf("--json record lacks %q: %s", k, r.stdout)
		}
	}
	return rec
}

// checkResend checks the resume bound of PRODUCT.md: the final attempt
// sends every byte past the durable offset it resumed from, and at most
// one chunk more.
func checkResend(t *testing.T, rec record) {
	t.Helper()
	need := rec.Size - rec.ResumedFrom
	if rec.SentBytes < need || rec.SentBytes > need+chunkSize {
		t.Errorf("final attempt sent %d bytes after resuming at %d of %d; want between %d and %d",
			rec.SentBytes, rec.ResumedFrom, rec.Size, need, need+chunkSize)
	}
	if rec.TotalSentBytes < rec.SentBytes {
		t.Errorf("total_sent_bytes %d < sent_bytes %d", rec.TotalSentBytes, rec.SentBytes)
	}
}

// writeRandom writes size pseudo-random bytes, the same for the same seed.
func writeRandom(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, randReader(seed), size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func randReader(seed uint64) io.Reader {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

// sameFile fails the test unless the two files hold the same bytes,
// naming the first offset where they differ.
func sameFile(t *testing.T, want, got string) {
	t.Helper()
	a, err := os.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.Open(got)
	if err != nil {
		t.Fatalf("committed file: %v", err)
	}
	defer b.Close()
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; {
		n, errA := io.ReadFull(a, bufA)
		m, errB := io.ReadFull(b, bufB)
		if !bytes.Equal(bufA[:n], bufB[:m]) {
			i := 0
			for i < min(n, m) && bufA[i] == bufB[i] {
				i++
			}
			t.Fatalf("%s differs from %s at offset %d (sizes differ: %v)", got, want, off+int64(i), n != m)
		}
		if errA != nil || errB != nil { // both at their end, as they matched
			return
		}
		off += int64(n)
	}
}

// ferryHash returns the hash `ferry hash` prints for path.
func ferryHash(t *testing.T, path string) string {
	t.Helper()
	r := runFerry(t, "hash", path)
	wantCode(t, r, exitOK)
	h, _, ok := strings.Cut(strings.TrimPrefix(r.stdout, `\`), "  ")
	if !ok || len(h) != 64 {
		t.Fatalf("ferry hash printed %q", r.stdout)
	}
	return h
}

// b3sumPath is the real b3sum, or "" when it is not installed.
var b3sumPath, _ = exec.LookPath("b3sum")

// b3sumHash returns the hash b3sum prints for path; ok is false when
// b3sum is not installed.
func b3sumHash(t *testing.T, path string) (hash string, ok bool) {
	t.Helper()
	if b3sumPath == "" {
		return "", false
	}
	out, err := exec.Command(b3sumPath, "--no-names", path).Output()
	if err != nil {
		t.Fatalf("b3sum %s: %v", path, err)
	}
	return strings.TrimSpace(string(out)), true
}

// checkCommitted checks a file on the daemon, committed by this run or
// (status unchanged) before it: the file at dst holds exactly src's bytes,
// and the record's BLAKE3 is the hash ferry hash and b3sum (when
// installed) print for both.
func checkCommitted(t *testing.T, rec record, src, dst string) {
	t.Helper()
	if (rec.Status != "committed" && rec.Status != "unchanged") || rec.Reason != "" {
		t.Fatalf("record status %q reason %q, want committed (or unchanged: committed before)", rec.Status, rec.Reason)
	}
	sameFile(t, src, dst)
	want := ferryHash(t, src)
	if b3, ok := b3sumHash(t, src); ok && b3 != want {
		t.Fatalf("ferry hash %s, b3sum %s for %s", want, b3, src)
	}
	// A file found unchanged by size and mtime (quick check) is hashed
	// by neither side: its record has no blake3.
	if rec.BLAKE3 != want && (rec.BLAKE3 != "" || !rec.AlreadyCommitted) {
		t.Errorf("record blake3 %s, want %s", rec.BLAKE3, want)
	}
	if got := ferryHash(t, dst); got != want {
		t.Errorf("committed file hashes to %s, want %s", got, want)
	}
}
