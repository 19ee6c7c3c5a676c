package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// job is one transfer to measure: a file sent by one or more senders at
// once, each under its own name.
type job struct {
	group   string // "sizes", "sparse" or "concurrent"
	src     source
	senders int
	repeat  int  // raw only: the file goes this many times down one connection; 0 means once
	relay   bool // ferry only: through the relay, to time the first chunk
	// memory is the state the run starts in: memSettled, or memFresh for
	// a sizes run that asks for it.
	memory string
}

// bytes is what one sender sends.
func (j job) bytes() int64 { return j.src.size.bytes * int64(max(j.repeat, 1)) }

// total is what all senders send together.
func (j job) total() int64 { return j.bytes() * int64(j.senders) }

// label names the job in the table: "1G", or "8x256M" for the concurrent
// senders and for the raw copy of the same bytes.
func (j job) label() string {
	if n := max(j.senders, j.repeat); n > 1 {
		return fmt.Sprintf("%dx%s", n, j.src.size.label)
	}
	return j.src.size.label
}

// sample is one measured run.
type sample struct {
	wall       time.Duration // sender start to durable result
	sender     usage         // summed over senders
	receiver   usage
	firstChunk time.Duration // sender start to first data on the wire; 0 if not measured
	handshake  time.Duration // sender's connect to first chunk (TCP, TLS, hello, offer); 0 if not measured
	background float64       // busy fraction of all CPUs in the pause before the run
}

// bench holds what every run needs.
type bench struct {
	cfg           *config
	stderr        io.Writer
	self          string // this binary, started as raw-send and raw-recv
	ferry, ferryd string
	rsync         *rsyncInfo // nil when not run
	scp           *scpInfo   // nil when not run
	work          string     // temporary directory: sources, runs/, logs/
	seq           int        // numbers runs, for unique directory and log names
	background    float64    // CPU busy fraction during the last settle pause
	ballast       int64      // bytes settle writes and deletes after its pause (memFresh); 0 for none
	rec           recorder

	trees              []*treeSeries  // tree runs, in the order first measured
	million            *millionResult // nil when not run
	loadStart, loadEnd string         // /proc/loadavg around the tree runs
	rssFloor           int64          // peak RSS reported for `true`
}

func benchmark(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	b, err := newBench(cfg, stderr)
	if err != nil {
		return err
	}
	defer b.cleanup()
	if err := b.checkSpace(); err != nil {
		return err
	}
	if b.rssFloor, err = rssFloor(ctx, b.work); err != nil {
		return err
	}
	started := time.Now()
	if err := b.runAll(ctx); err != nil {
		return err
	}
	res := b.results(started)
	printTable(stdout, res)
	if cfg.out == "" {
		return nil
	}
	if err := writeJSON(cfg.out, res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s\n", cfg.out)
	return nil
}

func newBench(cfg *config, stderr io.Writer) (*bench, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b := &bench{
		cfg: cfg, stderr: stderr, self: self,
		ferry: filepath.Join(cfg.binDir, "ferry"), ferryd: filepath.Join(cfg.binDir, "ferryd"),
	}
	for _, p := range []string{b.ferry, b.ferryd} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%w (run make build, or point -bin at the binaries)", err)
		}
	}
	if slices.Contains(cfg.tools, "rsync") {
		if b.rsync, err = findRsync(); err != nil {
			return nil, err
		}
		if b.rsync == nil {
			fmt.Fprintln(stderr, "ferrybench: rsync is not installed (apt-get install rsync); running without it")
		}
	}
	if b.work, err = os.MkdirTemp(cfg.workParent, "ferrybench-"); err != nil {
		return nil, err
	}
	for _, d := range []string{"runs", "logs"} {
		if err := os.Mkdir(filepath.Join(b.work, d), 0o755); err != nil {
			return nil, err
		}
	}
	if slices.Contains(cfg.tools, "scp") {
		var why string
		if b.scp, why, err = findScp(context.Background(), filepath.Join(b.work, "ssh")); err != nil {
			b.cleanup()
			return nil, err
		}
		if b.scp == nil {
			fmt.Fprintf(stderr, "ferrybench: running without scp: %s\n", why)
		}
	}
	return b, nil
}

func (b *bench) cleanup() {
	if b.cfg.keep {
		fmt.Fprintf(b.stderr, "ferrybench: kept %s\n", b.work)
		return
	}
	_ = os.RemoveAll(b.work) // best effort: a scratch directory
}

// checkSpace refuses to start when the disk cannot hold the sources and the
// largest run's output, rather than failing half an hour in.
func (b *bench) checkSpace() error {
	cfg := b.cfg
	var sources, largest int64
	for _, s := range cfg.sizes {
		sources += s.bytes
		largest = max(largest, s.bytes)
	}
	largest = max(largest, cfg.sparse.bytes)
	if cfg.concurrent > 0 {
		sources += cfg.concurrentSize.bytes
		largest = max(largest, int64(cfg.concurrent)*cfg.concurrentSize.bytes)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(b.work, &st); err != nil {
		return err
	}
	free := int64(st.Bavail) * st.Bsize
	if need := sources + largest + 1<<30; free < need {
		return fmt.Errorf("%s has %d MiB free, the benchmark needs %d MiB; use -dir or smaller -sizes", b.work, free/mib, need/mib)
	}
	return nil
}

// newRun makes a fresh directory for one run's received files and returns
// it with a prefix for its log files, both unique to the run.
func (b *bench) newRun(tool string) (dir, logs string, err error) {
	b.seq++
	name := fmt.Sprintf("%03d-%s", b.seq, tool)
	dir = filepath.Join(b.work, "runs", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	return dir, filepath.Join(b.work, "logs", name), nil
}

// settle makes every run start from the same state: no dirty pages of an
// earlier run left to write back, and a pause for the host to take back
// memory the guest freed. Nothing is dropped from the page cache.
//
// The pause doubles as a check that the machine is otherwise idle: other
// processes busy during it (a build, a fuzzer) would share the cores with
// the run. settle pauses again until a pause is quiet, for at most
// -quiet-wait, and records how busy the last one was.
func (b *bench) settle() {
	b.background = settle(b.cfg.pause, b.cfg.quietWait, b.stderr)
	if b.ballast > 0 {
		if err := freshen(b.work, b.ballast); err != nil {
			fmt.Fprintf(b.stderr, "ferrybench: warning: run not in the fresh memory state: %v\n", err)
		}
	}
}

// freshen writes a ballast file of n bytes in dir through the page cache
// and deletes it, so that the next n bytes of buffered writes land in
// pages the guest holds already (memFresh): for a few seconds, until the
// guest reports the freed pages to the host. The ballast is never written
// back: it is deleted while still dirty.
func freshen(dir string, n int64) error {
	f, err := os.CreateTemp(dir, "ballast-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) //nolint:errcheck // deleted below; this covers the error paths
	buf := make([]byte, 1<<20)
	for left := n; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			_ = f.Close() // the write error is the one to report
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Remove(f.Name())
}

// settle syncs, then pauses until a pause is quiet or quietWait has passed,
// and returns the busy fraction of the last pause (-1 if unknown).
func settle(pause, quietWait time.Duration, stderr io.Writer) float64 {
	syscall.Sync()
	deadline := time.Now().Add(quietWait)
	told := false
	for {
		bg, err := busyDuring(pause)
		if err != nil {
			return -1 // /proc/stat unreadable; the pause still happened
		}
		if bg <= quietLimit {
			return bg
		}
		if !time.Now().Before(deadline) {
			fmt.Fprintf(stderr, "ferrybench: warning: other processes kept %.0f%% of the CPUs busy before this run\n", 100*bg)
			return bg
		}
		if !told {
			fmt.Fprintf(stderr, "ferrybench: other processes keep %.0f%% of the CPUs busy; waiting up to %v for quiet\n", 100*bg, quietWait)
			told = true
		}
	}
}

// runAll runs the phases: sizes in interleaved rounds, the sparse file
// once, the concurrent senders, and the tree workloads (-trees).
func (b *bench) runAll(ctx context.Context) error {
	tools := b.tools()
	for _, sz := range b.cfg.sizes {
		src, err := b.source(sz, makeRandom)
		if err != nil {
			return err
		}
		if err := b.runSize(ctx, src, tools); err != nil {
			return err
		}
		_ = os.Remove(src.path) // best effort: the run cleans b.work up
	}
	if b.cfg.sparse.bytes > 0 && slices.Contains(tools, "ferry") {
		src, err := b.source(b.cfg.sparse, makeSparse)
		if err != nil {
			return err
		}
		j := job{group: "sparse", src: src, senders: 1, relay: true}
		if err := b.measure(ctx, "ferry", j, "once"); err != nil {
			return err
		}
		_ = os.Remove(src.path) // best effort: the run cleans b.work up
	}
	if b.cfg.concurrent > 0 && slices.Contains(tools, "ferry") {
		if err := b.runConcurrent(ctx); err != nil {
			return err
		}
	}
	return b.runTrees(ctx)
}

// tools returns the tools to run, in round order.
func (b *bench) tools() []string {
	var ts []string
	for _, t := range allTools {
		if slices.Contains(b.cfg.tools, t) && (t != "rsync" || b.rsync != nil) && (t != "scp" || b.scp != nil) {
			ts = append(ts, t)
		}
	}
	return ts
}

func (b *bench) source(sz size, mk func(string, size) (source, error)) (source, error) {
	fmt.Fprintf(b.stderr, "ferrybench: writing %s source file in %s\n", sz.label, b.work)
	return mk(b.work, sz)
}

// runSize runs a first ferry transfer through the relay for the first
// chunk (which also warms the binaries and the source in the page cache),
// then the rounds, every tool once per round.
func (b *bench) runSize(ctx context.Context, src source, tools []string) error {
	if slices.Contains(tools, "ferry") {
		j := job{group: "sizes", src: src, senders: 1, relay: true}
		if err := b.probe(ctx, j); err != nil {
			return err
		}
	}
	for r := range b.cfg.rounds {
		for _, m := range b.cfg.memory {
			for _, t := range tools {
				j := job{group: "sizes", src: src, senders: 1, memory: m}
				if err := b.measure(ctx, t, j, fmt.Sprintf("round %d/%d", r+1, b.cfg.rounds)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// runConcurrent runs the senders together against one daemon in the same
// rounds and memory states as the sizes, each run right after one raw copy
// of the same bytes as the reference: the file sent -concurrent
// times down one connection into one file. A raw copy of just one 256 MiB
// file would be the wrong reference on these machines: so little dirty
// data is absorbed by the host and fsyncs at twice the speed of 2 GiB.
func (b *bench) runConcurrent(ctx context.Context) error {
	src, err := b.source(b.cfg.concurrentSize, makeRandom)
	if err != nil {
		return err
	}
	defer os.Remove(src.path) //nolint:errcheck // best effort: the run cleans b.work up
	n := b.cfg.concurrent
	for r := range b.cfg.rounds {
		for _, m := range b.cfg.memory {
			what := fmt.Sprintf("round %d/%d", r+1, b.cfg.rounds)
			if err := b.measure(ctx, "raw", job{group: "concurrent", src: src, senders: 1, repeat: n, memory: m}, what); err != nil {
				return err
			}
			if err := b.measure(ctx, "ferry", job{group: "concurrent", src: src, senders: n, memory: m}, what); err != nil {
				return err
			}
		}
	}
	return nil
}

// measure runs one timed transfer and records it.
func (b *bench) measure(ctx context.Context, tool string, j job, what string) error {
	if j.memory == "" {
		j.memory = memSettled
	}
	b.ballast = 0
	if j.memory == memFresh {
		b.ballast = 2 * j.total()
	}
	defer func() { b.ballast = 0 }()
	s, err := b.runTool(ctx, tool, j)
	if err != nil {
		return fmt.Errorf("%s %s %s: %w", j.label(), what, tool, err)
	}
	s.background = b.background
	b.rec.add(tool, j, s)
	mibs := float64(j.total()) / mib / s.wall.Seconds()
	fmt.Fprintf(b.stderr, "ferrybench: %-6s %-12s %-7s %-6s %8.3f s %8.1f MiB/s\n", j.label(), what, j.memory, tool, s.wall.Seconds(), mibs)
	return nil
}

// probe runs one untimed ferry transfer through the relay and records only
// its first chunk.
func (b *bench) probe(ctx context.Context, j job) error {
	s, err := b.runFerry(ctx, j, false)
	if err != nil {
		return fmt.Errorf("%s first-chunk probe: %w", j.label(), err)
	}
	b.rec.addFirstChunk("ferry", j, s.firstChunk, s.handshake)
	fmt.Fprintf(b.stderr, "ferrybench: %-6s %-12s %-6s first chunk after %.1f ms, %.1f ms after connecting\n", j.label(), "probe", "ferry", ms(s.firstChunk), ms(s.handshake))
	return nil
}

func (b *bench) runTool(ctx context.Context, tool string, j job) (sample, error) {
	if err := ctx.Err(); err != nil {
		return sample{}, err
	}
	switch tool {
	case "raw":
		return b.runRaw(ctx, j)
	case "ferry":
		return b.runFerry(ctx, j, false)
	case "ferry-unix":
		return b.runFerry(ctx, j, true)
	case "rsync":
		return b.runRsync(ctx, j)
	case "scp":
		return b.runScp(ctx, j)
	}
	return sample{}, errors.New("bug: unknown tool " + tool)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rssFloor returns the peak RSS reported for `true`: the least any child
// can report (see proc).
func rssFloor(ctx context.Context, work string) (int64, error) {
	p, err := startProc(ctx, filepath.Join(work, "logs", "true.log"), "true")
	if err != nil {
		return 0, err
	}
	u, err := p.wait()
	return u.maxRSS, err
}
