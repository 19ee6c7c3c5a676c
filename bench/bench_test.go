package main

// These tests check the benchmark's own logic; they time nothing.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
		ok   bool
	}{
		{"bytes", "4096", 4096, true},
		{"mebibytes", "100M", 100 << 20, true},
		{"gibibytes lower case", "1g", 1 << 30, true},
		{"zero", "0", 0, true},
		{"empty", "", 0, false},
		{"unit only", "G", 0, false},
		{"negative", "-1M", 0, false},
		{"unknown unit", "5X", 0, false},
		{"overflow", "9999999T", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if (err == nil) != tt.ok || got.bytes != tt.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got.bytes, err, tt.want, tt.ok)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{"one", []float64{3}, 3},
		{"odd", []float64{5, 1, 3}, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.in); got != tt.want {
				t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// record is a TLS record of type typ carrying payload.
func record(typ byte, payload string) []byte {
	b := []byte{typ, 3, 3, 0, 0}
	binary.BigEndian.PutUint16(b[3:], uint16(len(payload)))
	return append(b, payload...)
}

// TestRelayWatch checks that the relay passes the handshake and the first
// few KiB of application data through unchanged and stops right after
// the header of the record that takes the sender past firstChunkAfter
// bytes of application data.
func TestRelayWatch(t *testing.T) {
	var in bytes.Buffer
	in.Write(record(22, "client hello"))
	in.Write(record(20, "\x01"))                                          // change cipher spec
	in.Write(record(tlsAppData, strings.Repeat("f", 53)))                 // Finished
	in.Write(record(tlsAppData, strings.Repeat("o", firstChunkAfter-53))) // hello and offer, exactly at the limit
	chunk := record(tlsAppData, "chunk data")
	in.Write(chunk)
	want := bytes.Clone(in.Bytes()[:in.Len()-len(chunk)+tlsRecordHeader])

	var r relay
	var out bytes.Buffer
	if err := r.watch(&out, &in); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Errorf("relayed %d bytes, want %d", out.Len(), len(want))
	}
	if r.FirstChunk().IsZero() {
		t.Error("first chunk not timestamped")
	}
	if rest := in.String(); rest != "chunk data" {
		t.Errorf("left %q unread, want the chunk record's payload", rest)
	}
}

func TestRelayWatchNoChunk(t *testing.T) {
	in := bytes.NewReader(record(tlsAppData, "hello"))
	var r relay
	var out bytes.Buffer
	if err := r.watch(&out, in); err != nil {
		t.Fatal(err)
	}
	if !r.FirstChunk().IsZero() {
		t.Error("first chunk timestamped without a chunk")
	}
}

func TestMain(m *testing.M) {
	// Children started by startProc run under this binary's rusage-exec,
	// as they do under ferrybench's.
	if len(os.Args) > 1 && os.Args[1] == rusageExecCmd {
		os.Exit(rusageExec(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestChildRSSExcludesParent guards against reporting the benchmark's own
// peak RSS as a child's: Linux carries the peak of the memory a child was
// cloned with over its exec, and Go clones children sharing the parent's
// memory, so wait4 on a direct child reports at least the parent's peak.
func TestChildRSSExcludesParent(t *testing.T) {
	ballast := make([]byte, 128<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	p, err := startProc(context.Background(), filepath.Join(t.TempDir(), "true.log"), "true")
	if err != nil {
		t.Fatal(err)
	}
	u, err := p.wait()
	if err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(ballast)
	if u.maxRSS <= 0 || u.maxRSS > 64<<20 {
		t.Errorf("peak RSS of true = %d MiB, want above 0 and well below the parent's 128 MiB", u.maxRSS>>20)
	}
}

// TestRusageExecSignal checks that a daemon stopped with SIGTERM through
// the wrapper ends by that signal (stop counts that as a clean stop) and
// still reports its usage.
func TestRusageExecSignal(t *testing.T) {
	p, err := startProc(context.Background(), filepath.Join(t.TempDir(), "sleep.log"), "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	waitChild(t, p, "sleep") // the wrapper has started it
	u, err := p.stop()
	if err != nil {
		t.Fatal(err)
	}
	if u.maxRSS <= 0 {
		t.Errorf("no usage reported for the stopped child")
	}
}

// TestDelayPipe checks that the delaying relay keeps the order of the
// bytes and holds them for the delay.
func TestDelayPipe(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		c, err := echo.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(c, c)
		_ = c.Close()
	}()
	const delay = 50 * time.Millisecond
	r, err := startDelayRelay(echo.Addr().String(), delay)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	start := time.Now()
	for i := range 2000 {
		fmt.Fprintf(&want, "%d,", i)
	}
	go func() {
		for _, b := range bytes.SplitAfter(want.Bytes(), []byte(",")) {
			_, _ = c.Write(b)
		}
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 2*delay {
		t.Errorf("round trip took %v, want at least %v", el, 2*delay)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("relayed %d bytes, not the %d sent in order", len(got), want.Len())
	}
	_ = c.Close()
	if err := r.Close(); err != nil {
		t.Error(err)
	}
}

// TestChildPID checks that the million run samples the program a wrapper
// runs, not the wrapper.
func TestChildPID(t *testing.T) {
	p, err := startProc(context.Background(), filepath.Join(t.TempDir(), "sleep.log"), "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop() //nolint:errcheck // only ends the sleep
	waitChild(t, p, "sleep")
}

// waitChild waits until childPID of p's wrapper names the program name:
// the wrapper has started it.
func waitChild(t *testing.T, p *proc, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", childPID(p.cmd.Process.Pid)))
		if string(bytes.TrimSpace(comm)) == name {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("childPID of the wrapper names %q, want %s", comm, name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProfileDirectIO checks that -profile's daemon writes as ferryd does
// by default, with O_DIRECT: a profile of page-cache writes puts most of
// the CPU in copies ferryd does not make.
func TestProfileDirectIO(t *testing.T) {
	cfg, err := parseFlags([]string{"ferrybench", "-profile"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fsys, store, err := inProcessStore(t.TempDir(), cfg.profDirect)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close() //nolint:errcheck // a directory handle
	if !store.DirectIO {
		t.Error("-profile's store writes through the page cache; ferryd's default is --direct-io")
	}
}

// TestProfileTLS checks that -profile's session runs inside TLS by
// default, as every TCP session of ferry does, and that the sender pins
// the in-process daemon's key: a plaintext profile misses the AES-GCM
// and record-sized reads TLS costs each side.
func TestProfileTLS(t *testing.T) {
	cfg, err := parseFlags([]string{"ferrybench", "-profile"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.profTLS {
		t.Fatal("-profile runs plaintext by default; ferry's TCP sessions run inside TLS")
	}
	addr, fingerprint, stop, err := serveInProcess(t.TempDir(), false, cfg.profTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if fingerprint == "" {
		t.Fatal("no fingerprint for the TLS listener")
	}
	src := filepath.Join(t.TempDir(), "f")
	data := bytes.Repeat([]byte("ferry"), 100000)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	hash, err := sendInProcess(t.Context(), addr, fingerprint, src)
	if err != nil {
		t.Fatal(err)
	}
	if hash != transfer.HashBytes(data) {
		t.Errorf("committed hash %x, want the source's", hash)
	}
}

// TestScpSkippedWhenAbsent checks that a machine without OpenSSH runs the
// benchmark without scp, saying why, rather than failing.
func TestScpSkippedWhenAbsent(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := os.Stat("/usr/sbin/sshd"); err == nil {
		// findScp looks there too, but only for sshd: scp is still absent.
		t.Log("sshd is installed; scp is not on the empty PATH")
	}
	s, why, err := findScp(context.Background(), filepath.Join(t.TempDir(), "ssh"))
	if err != nil || s != nil || why == "" {
		t.Fatalf("findScp = %v, %q, %v; want nil, a reason, no error", s, why, err)
	}
}

// TestScpRun sends a small file with scp to the private sshd and checks
// that it arrived and that both sides' CPU was counted. Skipped without
// OpenSSH's client and server.
func TestScpRun(t *testing.T) {
	work := t.TempDir()
	for _, d := range []string{"runs", "logs"} {
		if err := os.Mkdir(filepath.Join(work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s, why, err := findScp(context.Background(), filepath.Join(work, "ssh"))
	if err != nil {
		t.Fatal(err)
	}
	if s == nil {
		t.Skip(why)
	}
	src, err := makeRandom(work, size{bytes: 3<<20 + 5, label: "3M"})
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{cfg: &config{pause: time.Millisecond}, stderr: io.Discard, scp: s, work: work}
	got, err := b.runScp(context.Background(), job{group: "sizes", src: src, senders: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got.wall <= 0 || got.sender.cpu <= 0 || got.receiver.cpu <= 0 {
		t.Errorf("sample %+v: wall and both sides' CPU must be counted", got)
	}
}

// TestRatioToRawSameMemory checks that a tool's ratio is taken over raw's
// in the same memory state and, per round, over raw's in the same round.
func TestRatioToRawSameMemory(t *testing.T) {
	src := source{size: size{bytes: 1 << 30, label: "1G"}}
	var rec recorder
	walls := map[string][]time.Duration{ // settled raw is slow, fresh raw fast
		"raw " + memSettled: {2 * time.Second, 4 * time.Second}, "ferry " + memSettled: {time.Second, 1 * time.Second},
		"raw " + memFresh: {time.Second / 2, time.Second / 2}, "ferry " + memFresh: {time.Second, 2 * time.Second},
	}
	for round := range 2 {
		for _, mem := range allMemory {
			for _, tool := range []string{"raw", "ferry"} {
				rec.add(tool, job{group: "sizes", src: src, senders: 1, memory: mem}, sample{wall: walls[tool+" "+mem][round]})
			}
		}
	}
	var rows []row
	for _, s := range rec.all {
		r := s.row()
		r.RatioToRawPerRound = rec.perRoundRatio(s)
		rows = append(rows, r)
	}
	want := map[string][2]float64{memSettled: {1.0 / 3, 0.375}, memFresh: {3, 3}} // ratio of medians, median of round ratios
	for i := range rows {
		r := &rows[i]
		if r.Tool != "ferry" {
			continue
		}
		got := ratioToRaw(rows, r)
		if got == nil || r.RatioToRawPerRound == nil {
			t.Fatalf("%s: no ratio", r.Memory)
		}
		if w := want[r.Memory]; *got != round3(w[0]) || *r.RatioToRawPerRound != round3(w[1]) {
			t.Errorf("%s: ratio %v, per round %v; want %v", r.Memory, *got, *r.RatioToRawPerRound, w)
		}
	}
}

// TestFreshen checks that the ballast is written and gone afterwards.
func TestFreshen(t *testing.T) {
	dir := t.TempDir()
	if err := freshen(dir, 3<<20+1); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("after freshen: %v, %v; want an empty directory", ents, err)
	}
}

// TestConcurrentTargetsPerMemory checks that the concurrent senders are
// judged in each memory state against raw's copy of as many bytes in the
// same state, with raw's time beside the ratio and a per-round ratio.
func TestConcurrentTargetsPerMemory(t *testing.T) {
	src := source{size: size{bytes: 256 << 20, label: "256M"}}
	var rec recorder
	walls := map[string][]time.Duration{ // settled raw slow, fresh raw fast
		"raw " + memSettled: {3 * time.Second, 3 * time.Second}, "ferry " + memSettled: {2 * time.Second, 2 * time.Second},
		"raw " + memFresh: {time.Second, 2 * time.Second}, "ferry " + memFresh: {2 * time.Second, 2 * time.Second},
	}
	for round := range 2 {
		for _, mem := range allMemory {
			rec.add("raw", job{group: "concurrent", src: src, senders: 1, repeat: 8, memory: mem}, sample{wall: walls["raw "+mem][round]})
			rec.add("ferry", job{group: "concurrent", src: src, senders: 8, memory: mem}, sample{wall: walls["ferry "+mem][round]})
		}
	}
	b := &bench{cfg: &config{}, rec: rec}
	res := b.results(time.Now())
	var ferries int
	for _, r := range res.Rows {
		if r.Tool != "ferry" {
			continue
		}
		ferries++
		wantRaw := map[string]float64{memSettled: 3, memFresh: 1.5}[r.Memory]
		wantRound := map[string]float64{memSettled: round3(2.0 / 3), memFresh: 1.5}[r.Memory] // fresh: median of 2 and 1
		if r.RawWallSeconds == nil || math.Abs(*r.RawWallSeconds-wantRaw) > 0.01 {
			t.Errorf("%s: raw wall %v, want %v", r.Memory, optional(r.RawWallSeconds, "%.3f"), wantRaw)
		}
		if r.RatioToRawPerRound == nil || *r.RatioToRawPerRound != wantRound {
			t.Errorf("%s: per-round ratio %v, want %v", r.Memory, optional(r.RatioToRawPerRound, "%.3f"), wantRound)
		}
	}
	if ferries != 2 {
		t.Fatalf("%d ferry rows, want one per memory state", ferries)
	}
	met := map[string]bool{}
	for _, tg := range res.Targets {
		for _, mem := range allMemory {
			if strings.Contains(tg.Name, "8 senders") && strings.Contains(tg.Name, "("+mem+" memory)") {
				met[mem] = *tg.Met
			}
		}
	}
	// settled: 3 s against 2 s, 1.5 of raw's throughput; fresh: 1.5 s against 2 s, 0.75.
	if want := map[string]bool{memSettled: true, memFresh: false}; !maps.Equal(met, want) {
		t.Errorf("concurrent targets by memory state: %v, want %v", met, want)
	}
}
