package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSendSizes(t *testing.T) {
	tests := []struct {
		name string
		size int64
		dest string // --dest, "" for the root
		slow bool
	}{
		{name: "empty", size: 0},
		{name: "one byte", size: 1},
		{name: "exactly one chunk", size: chunkSize},
		{name: "one chunk and a byte", size: chunkSize + 1},
		{name: "into a nested dest", size: 3*chunkSize + 17, dest: "sub/dir"},
		{name: "40 MiB", size: 40 << 20, slow: true},
	}
	root := t.TempDir()
	d := startDaemon(t, root)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.slow {
				slow(t)
			}
			name := fmt.Sprintf("file-%d.bin", i)
			src := filepath.Join(t.TempDir(), name)
			writeRandom(t, src, tt.size, uint64(i))
			args := []string{src}
			remote := name
			if tt.dest != "" {
				args = append([]string{"--dest", tt.dest}, args...)
				remote = tt.dest + "/" + name
			}
			from := d.mark()
			r := runFerry(t, sendArgs(d.addr, args...)...)
			wantCode(t, r, exitOK)
			rec := onlyRecord(t, r)
			checkCommitted(t, rec, src, filepath.Join(root, filepath.FromSlash(remote)))
			// blake3 was checked against the source above; seconds varies.
			want := record{Path: src, Remote: remote, Size: tt.size, SentBytes: tt.size, TotalSentBytes: tt.size,
				Attempts: 1, BLAKE3: rec.BLAKE3, Seconds: rec.Seconds, Status: "committed", fields: rec.fields}
			if fmt.Sprint(rec) != fmt.Sprint(want) {
				t.Errorf("record\n got %+v\nwant %+v", rec, want)
			}
			if rec.Seconds < 0 {
				t.Errorf("seconds = %v", rec.Seconds)
			}
			d.waitLine(from, "msg=committed", "name="+remote, fmt.Sprintf("size=%d", tt.size), "resumed_from=0")
		})
	}
	if !t.Failed() {
		checkNoPartials(t, root)
	}
}

// checkNoPartials fails if any partial is left under ROOT/.ferry/partials
// once every transfer has committed (DESIGN.md: commit removes the
// partial's state). ROOT/.ferry/lock is the daemon's, not a partial.
func checkNoPartials(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(filepath.Join(root, ".ferry", "partials"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			t.Errorf("partial left behind after commit: %s", p)
		}
		return nil
	})
}

// TestRefusals sends what the daemon must refuse: a name that is already
// committed, and a file above --max-size. Both exit 3 with one line on
// stderr, and the committed file is untouched.
func TestRefusals(t *testing.T) {
	tests := []struct {
		name   string
		flags  []string // ferryd flags
		first  int64    // size of a first send of the same name, 0: none
		second int64    // size of the send that must be refused
	}{
		{name: "name exists", first: 5000, second: 7000},
		{name: "same size exists", first: 5000, second: 5000},
		{name: "too large", flags: []string{"--max-size", "4096"}, second: 4097},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			d := startDaemon(t, root, tt.flags...)
			dir := t.TempDir()
			src := filepath.Join(dir, "data.bin")
			dst := filepath.Join(root, "data.bin")
			var original []byte
			if tt.first > 0 {
				writeRandom(t, src, tt.first, 1)
				wantCode(t, runFerry(t, sendArgs(d.addr, src)...), exitOK)
				original, _ = os.ReadFile(dst)
			}
			writeRandom(t, src, tt.second, 2)
			from := d.mark()
			r := runFerry(t, sendArgs(d.addr, src)...)
			wantCode(t, r, exitRefused)
			rec := onlyRecord(t, r)
			if rec.Status != "refused" || rec.Reason == "" {
				t.Errorf("record status %q reason %q, want refused with a reason", rec.Status, rec.Reason)
			}
			if lines := strings.Split(strings.TrimSpace(r.stderr), "\n"); len(lines) != 1 || lines[0] == "" {
				t.Errorf("want a one-line reason on stderr, got %q", r.stderr)
			}
			got, err := os.ReadFile(dst)
			switch {
			case tt.first == 0 && !os.IsNotExist(err):
				t.Errorf("refused file was written: %v", err)
			case tt.first > 0 && !bytes.Equal(got, original):
				t.Errorf("committed file changed by a refused send (%d bytes, was %d)", len(got), len(original))
			}
			d.waitLine(from, "msg=refused", "code=")
		})
	}
}

// TestEnvironmentVariables configures both binaries through FERRY_*
// variables alone: ferryd's listener, root and size limit, and ferry's
// daemon address, destination and --json.
func TestEnvironmentVariables(t *testing.T) {
	root := t.TempDir()
	d := startDaemonEnv(t, []string{"FERRY_LISTEN=127.0.0.1:0", "FERRY_ROOT=" + root, "FERRY_MAX_SIZE=5000"})
	env := []string{"FERRY_TO=" + d.addr, "FERRY_DEST=from-env", "FERRY_JSON=true"}
	dir := t.TempDir()
	small, big := filepath.Join(dir, "small.bin"), filepath.Join(dir, "big.bin")
	writeRandom(t, small, 5000, 1)
	writeRandom(t, big, 5001, 2)

	r := startFerryEnv(t, env, "send", small).wait()
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	if rec.Remote != "from-env/small.bin" {
		t.Errorf("remote = %q, want FERRY_DEST applied", rec.Remote)
	}
	checkCommitted(t, rec, small, filepath.Join(root, "from-env", "small.bin"))

	r = startFerryEnv(t, env, "send", big).wait()
	wantCode(t, r, exitRefused) // FERRY_MAX_SIZE
}

// usageCases are ferry invocations that are wrong before any file is
// read or any connection made; to is an address, src a readable file.
func usageCases(to, src string) []struct {
	name string
	args []string
} {
	return []struct {
		name string
		args []string
	}{
		{"no command", nil},
		{"unknown command", []string{"frobnicate"}},
		{"unknown flag", []string{"send", "--to", to, "--no-such-flag", src}},
		{"no paths", []string{"send", "--to", to}},
		{"no --to", []string{"send", src}},
		{"retries not a number", []string{"send", "--to", to, "--retries", "many", src}},
		{"negative retries", []string{"send", "--to", to, "--retries", "-1", src}},
		{"backoff not a duration", []string{"send", "--to", to, "--backoff", "soon", src}},
		{"chunk size not a number", []string{"send", "--to", to, "--chunk-size", "big", src}},
		{"flag without its value", []string{"send", src, "--to"}},
	}
}

func TestBadFlagsExit2(t *testing.T) {
	src := filepath.Join(t.TempDir(), "f")
	writeRandom(t, src, 10, 1)
	// Usage errors must not touch the network: the proxy counts connections.
	p := newProxy(t, "127.0.0.1:1")
	for _, tt := range usageCases(p.Addr(), src) {
		t.Run(tt.name, func(t *testing.T) {
			r := runFerry(t, tt.args...)
			wantCode(t, r, exitUsage)
			if strings.TrimSpace(r.stderr) == "" {
				t.Error("no reason on stderr")
			}
		})
	}
	if n := len(p.Conns()); n != 0 {
		t.Errorf("usage errors opened %d connections", n)
	}
}

// TestUsageErrorsLeaveStdoutEmpty: stdout carries results only (STYLE.md),
// so a script reading --json or hash lines never gets help text; the
// reason and any help belong on stderr.
func TestUsageErrorsLeaveStdoutEmpty(t *testing.T) {
	src := filepath.Join(t.TempDir(), "f")
	writeRandom(t, src, 10, 1)
	for _, tt := range usageCases("127.0.0.1:1", src) {
		t.Run(tt.name, func(t *testing.T) {
			r := runFerry(t, tt.args...)
			if first, _, _ := strings.Cut(r.stdout, "\n"); r.stdout != "" {
				t.Errorf("exit %d with %d bytes on stdout, starting %q", r.code, len(r.stdout), first)
			}
		})
	}
}

func TestDaemonBadFlagsExit2(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"unknown flag", []string{"--no-such-flag"}},
		{"duration not a duration", []string{"--idle-timeout", "soon"}},
		{"size not a number", []string{"--max-size", "big"}},
		{"size with an unknown unit", []string{"--max-size", "10 parsecs"}},
		{"negative size", []string{"--sync-bytes", "-1MiB"}},
		{"rate not a rate", []string{"--min-rate", "fast"}},
		{"unknown log format", []string{"--log-format", "xml"}},
		{"unexpected argument", []string{"extra"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin.ferryd, append([]string{"--listen", "127.0.0.1:0", "--root", t.TempDir()}, tt.args...)...)
			cmd.Env = childEnv(t)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			t.Cleanup(func() { cmd.Process.Kill(); <-done })
			select {
			case <-done:
			case <-time.After(waitTimeout):
				t.Fatal("ferryd with a bad flag did not exit")
			}
			if code := cmd.ProcessState.ExitCode(); code != exitUsage {
				t.Errorf("ferryd exited %d, want %d; stderr: %s", code, exitUsage, stderr.String())
			}
			if strings.Contains(stderr.String(), "msg=listening") {
				t.Error("ferryd listened despite a bad flag")
			}
		})
	}
}

// TestHashMatchesB3sum runs ferry hash and b3sum on the same arguments and
// wants the same bytes on stdout, including b3sum's escaping of names
// with a backslash or a newline.
func TestHashMatchesB3sum(t *testing.T) {
	dir := t.TempDir()
	files := []struct {
		name string
		size int64
	}{
		{"empty", 0},
		{"one byte", 1},
		{"with space.txt", 1000},
		{"chunk-plus-one.bin", chunkSize + 1},
		{"several-chunks.bin", 5*chunkSize + 3},
		{`back\slash`, 10},
		{"new\nline", 10},
	}
	var paths []string
	for i, f := range files {
		p := filepath.Join(dir, f.name)
		writeRandom(t, p, f.size, uint64(i))
		paths = append(paths, p)
	}
	// Known answer, b3sum or not: BLAKE3 of no input.
	if got := ferryHash(t, paths[0]); got != "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262" {
		t.Errorf("ferry hash of an empty file = %s", got)
	}
	if b3sumPath == "" {
		t.Skip("b3sum not installed (apt-get install b3sum); CI installs it")
	}
	tests := []struct {
		name  string
		args  []string
		stdin string // a file fed on standard input, "" for none
	}{
		{name: "one file", args: paths[2:3]},
		{name: "every file at once", args: paths},
		{name: "relative names", args: []string{"with space.txt", "several-chunks.bin"}},
		{name: "standard input", stdin: paths[4]},
		{name: "dash for standard input", args: []string{"-"}, stdin: paths[3]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := runIn(t, dir, tt.stdin, b3sumPath, tt.args...)
			got := runIn(t, dir, tt.stdin, bin.ferry, append([]string{"hash"}, tt.args...)...)
			if got != want {
				t.Errorf("ferry hash printed\n%q\nb3sum printed\n%q", got, want)
			}
		})
	}
}

// runIn runs a short command in dir, with stdin from a file, and returns
// its stdout; it must exit 0.
func runIn(t *testing.T, dir, stdin, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Env = dir, childEnv(t)
	if stdin != "" {
		f, err := os.Open(stdin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %q: %v", name, args, err)
	}
	return string(out)
}

// TestSendAgainIsConfirmed runs the same ferry send twice, then once more
// with --checksum. The second run finds the file committed by size and
// mtime (quick check), the third proves it by BLAKE3; neither sends data,
// and both exit 0, as a retry must when the first run's Committed was
// lost.
func TestSendAgainIsConfirmed(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 3<<20+17, 7)
	wantCode(t, runFerry(t, sendArgs(d.addr, src)...), exitOK)
	before, err := os.Stat(filepath.Join(root, "data.bin"))
	if err != nil {
		t.Fatal(err)
	}
	r := runFerry(t, sendArgs(d.addr, src)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	if rec.Status != "unchanged" || rec.ResumedFrom != rec.Size || rec.SentBytes != 0 {
		t.Errorf("second run: status %q resumed_from %d sent_bytes %d; want unchanged, %d, 0", rec.Status, rec.ResumedFrom, rec.SentBytes, rec.Size)
	}
	if !strings.Contains(r.stderr, "already on the daemon") {
		t.Errorf("no notice that the file was already there:\n%s", r.stderr)
	}
	if !rec.AlreadyCommitted || rec.BLAKE3 != "" {
		t.Errorf("second run: already_committed %v blake3 %q; want true and none (not hashed)", rec.AlreadyCommitted, rec.BLAKE3)
	}
	r = runFerry(t, sendArgs(d.addr, "--checksum", src)...)
	wantCode(t, r, exitOK)
	rec = onlyRecord(t, r)
	if rec.Status != "unchanged" || !rec.AlreadyCommitted || rec.SentBytes != 0 || rec.BLAKE3 != ferryHash(t, src) {
		t.Errorf("--checksum run: %+v; want unchanged, already, 0 bytes sent, the source's blake3", rec)
	}
	after, err := os.Stat(filepath.Join(root, "data.bin"))
	if err != nil || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("committed file replaced or touched by a later run: %v", err)
	}
	if got, want := ferryHash(t, filepath.Join(root, "data.bin")), ferryHash(t, src); got != want {
		t.Errorf("committed BLAKE3 %s, source %s", got, want)
	}
}

// TestSendUpdate (issue 9): a file of other content under a committed
// name is refused (exit 3) and left alone; with --update it replaces the
// committed file, and the daemon keeps no partial.
func TestSendUpdate(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	dir := t.TempDir()
	src := filepath.Join(dir, "data.bin")
	writeRandom(t, src, 2<<20+5, 21)
	wantCode(t, runFerry(t, sendArgs(d.addr, src)...), exitOK)
	old, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeRandom(t, src, 3<<20+9, 22)
	r := runFerry(t, sendArgs(d.addr, src)...)
	wantCode(t, r, exitRefused)
	if !strings.Contains(r.stderr, "--update") {
		t.Errorf("the refusal does not mention --update:\n%s", r.stderr)
	}
	if got, err := os.ReadFile(filepath.Join(root, "data.bin")); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("the refused send changed the committed file (%v)", err)
	}
	r = runFerry(t, sendArgs(d.addr, "--update", src)...)
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "data.bin"))
	checkNoPartials(t, root)
}
