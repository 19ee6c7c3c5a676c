package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Tree workloads (issue 9), selected by -trees.
const (
	treeSmall   = "small"   // -tree-files files of 4 KiB in -tree-dirs directories
	treeGoSrc   = "gosrc"   // a copy of $(go env GOROOT)/src, regular files only
	treeResend  = "resend"  // the small tree sent again onto its complete copy
	treeRTT     = "rtt"     // -rtt-files files of 4 KiB through a relay delaying each way by -rtt-delay
	treeMillion = "million" // sender and daemon peak RSS for -million-files empty files, ferry only
)

var allTrees = []string{treeSmall, treeGoSrc, treeResend, treeRTT, treeMillion}

// Tree tools, in the order they run within a round.
const (
	toolFerry      = "ferry"
	toolRsync      = "rsync"       // rsync -a to an rsync daemon
	toolRsyncFsync = "rsync-fsync" // rsync -a --fsync, the durable reference
)

// treeSource is a directory to send and what it holds.
type treeSource struct {
	name  string // workload
	path  string // the directory sent; its base name is the name under DEST
	files int    // regular files
	bytes int64  // their bytes
	delay time.Duration
}

// treeSample is one measured tree run.
type treeSample struct {
	sample
	round     int
	sentBytes int64 // ferry: sum of sent_bytes; rsync: "Total bytes sent" of --stats
	files     int   // files the tool reported or committed
}

// treeSeries is every run of one tool on one tree workload.
type treeSeries struct {
	workload, tool string
	files          int
	bytes          int64
	samples        []treeSample
}

func (b *bench) treeSeries(workload, tool string, src treeSource) *treeSeries {
	for _, s := range b.trees {
		if s.workload == workload && s.tool == tool {
			return s
		}
	}
	s := &treeSeries{workload: workload, tool: tool, files: src.files, bytes: src.bytes}
	b.trees = append(b.trees, s)
	return s
}

// treeTools returns the tools for tree runs: ferry, and both rsync forms
// when rsync is selected and installed.
func (b *bench) treeTools() []string {
	var ts []string
	if slices.Contains(b.cfg.tools, "ferry") {
		ts = append(ts, toolFerry)
	}
	if slices.Contains(b.cfg.tools, "rsync") && b.rsync != nil {
		ts = append(ts, toolRsync, toolRsyncFsync)
	}
	return ts
}

// runTrees makes the selected tree sources, then runs the rounds: in each
// round every workload, and within it every tool in turn, each to a fresh
// destination; the re-send follows each tool's small-tree run onto that
// run's destination. The million-file run comes last, once.
func (b *bench) runTrees(ctx context.Context) error {
	sel := b.cfg.trees
	if len(sel) == 0 {
		return nil
	}
	b.loadStart = loadAvg()
	var srcs []treeSource
	needSmall := slices.Contains(sel, treeSmall) || slices.Contains(sel, treeResend)
	if needSmall {
		s, err := b.makeTree(treeSmall, b.cfg.treeFiles, b.cfg.treeDirs, 4096, 0)
		if err != nil {
			return err
		}
		srcs = append(srcs, s)
	}
	if slices.Contains(sel, treeGoSrc) {
		s, err := b.copyGoSrc()
		if err != nil {
			return err
		}
		srcs = append(srcs, s)
	}
	if slices.Contains(sel, treeRTT) {
		s, err := b.makeTree(treeRTT, b.cfg.rttFiles, max(1, b.cfg.rttFiles/100), 4096, b.cfg.rttDelay)
		if err != nil {
			return err
		}
		srcs = append(srcs, s)
	}
	syscall.Sync()
	tools := b.treeTools()
	for r := range b.cfg.rounds {
		for _, src := range srcs {
			for _, tool := range tools {
				if err := b.treeRound(ctx, r, tool, src); err != nil {
					return err
				}
			}
		}
	}
	for _, src := range srcs {
		_ = os.RemoveAll(filepath.Dir(src.path)) // best effort: cleanup removes b.work too
	}
	if slices.Contains(sel, treeMillion) && slices.Contains(tools, toolFerry) {
		if err := b.runMillion(ctx); err != nil {
			return err
		}
	}
	b.loadEnd = loadAvg()
	return nil
}

// treeRound runs tool once on src, and for the small tree the re-send.
func (b *bench) treeRound(ctx context.Context, r int, tool string, src treeSource) error {
	dir, _, err := b.newRun(tool)
	if err != nil {
		return err
	}
	record := src.name != treeSmall || slices.Contains(b.cfg.trees, treeSmall)
	if err := b.treeMeasure(ctx, r, tool, src, src.name, dir, record); err != nil {
		return err
	}
	if src.name == treeSmall && slices.Contains(b.cfg.trees, treeResend) {
		if err := b.treeMeasure(ctx, r, tool, src, treeResend, dir, true); err != nil {
			return err
		}
	}
	if b.cfg.treeKeep {
		return nil // removed with the work directory, after every run
	}
	return os.RemoveAll(dir)
}

func (b *bench) treeMeasure(ctx context.Context, r int, tool string, src treeSource, workload, dir string, record bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, logs, err := b.newRun(tool + "-" + workload)
	if err != nil {
		return err
	}
	var s treeSample
	if tool == toolFerry {
		s, err = b.runFerryTree(ctx, src, dir, logs)
	} else {
		s, err = b.runRsyncTree(ctx, tool, src, dir, logs)
	}
	if err != nil {
		return fmt.Errorf("tree %s round %d %s: %w", workload, r+1, tool, err)
	}
	s.round, s.background = r, b.background
	what := "untimed"
	if record {
		sr := b.treeSeries(workload, tool, src)
		sr.samples = append(sr.samples, s)
		what = fmt.Sprintf("round %d/%d", r+1, b.cfg.rounds)
	}
	fmt.Fprintf(b.stderr, "ferrybench: tree %-7s %-11s %-11s %8.3f s %7.3f ms/file sent %d bytes\n",
		workload, what, tool, s.wall.Seconds(), ms(s.wall)/float64(src.files), s.sentBytes)
	return nil
}

// treeRecord is the part of a `ferry send --json` line a tree run checks.
type treeRecord struct {
	Summary   bool   `json:"summary"` // the run's summary object, after the files' records
	Size      int64  `json:"size"`
	SentBytes int64  `json:"sent_bytes"`
	Status    string `json:"status"`
	Error     string `json:"error"`
}

// runFerryTree sends src with one `ferry send` to a ferryd started for
// this run on root (empty, or holding an earlier run's copy for the
// re-send), through a delaying relay when src has a delay.
func (b *bench) runFerryTree(ctx context.Context, src treeSource, root, logs string) (treeSample, error) {
	daemon, addr, err := startListener(ctx, logs+"-ferryd.log", b.ferryd, b.ferrydArgs(root, "127.0.0.1:0")...)
	if err != nil {
		return treeSample{}, err
	}
	to := addr
	var rl *relay
	if src.delay > 0 {
		if rl, err = startDelayRelay(addr, src.delay); err != nil {
			_, _ = daemon.stop() // the relay error is the one to report
			return treeSample{}, err
		}
		to = rl.Addr()
	}
	b.settle()
	start := time.Now()
	p, err := startProc(ctx, logs+"-send.log", b.ferry, "send", "--to", to, "--fingerprint", daemon.fingerprint, "--json", "--quiet", "--retries", "0", src.path)
	var su usage
	if err == nil {
		su, err = p.wait()
	}
	end := time.Now()
	du, stopErr := daemon.stop()
	if rl != nil {
		stopErr = errors.Join(stopErr, rl.Close())
	}
	if err := errors.Join(err, stopErr); err != nil {
		return treeSample{}, err
	}
	s := treeSample{sample: sample{wall: end.Sub(start), sender: su, receiver: du}}
	var got int64
	sc := bufio.NewScanner(bytes.NewReader(p.stdout.Bytes()))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec treeRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return treeSample{}, fmt.Errorf("ferry send --json line %q: %w", sc.Bytes(), err)
		}
		if rec.Summary {
			continue
		}
		if rec.Status != "committed" && rec.Status != "unchanged" {
			return treeSample{}, fmt.Errorf("ferry send: a file %s: %s", rec.Status, rec.Error)
		}
		s.files++
		s.sentBytes += rec.SentBytes
		got += rec.Size
	}
	if s.files != src.files || got != src.bytes {
		return treeSample{}, fmt.Errorf("ferry send committed %d files of %d bytes, want %d files of %d bytes", s.files, got, src.files, src.bytes)
	}
	return s, nil
}

var rsyncStat = regexp.MustCompile(`(?m)^(Total bytes sent|Number of regular files transferred): ([0-9,]+)`)

// runRsyncTree runs `rsync -a --stats` (with --fsync for rsync-fsync) from
// src to an rsync daemon started for this run on root. An rsync without
// --fsync gets `sync -f` on root after the client exits, inside the clock.
func (b *bench) runRsyncTree(ctx context.Context, tool string, src treeSource, root, logs string) (treeSample, error) {
	daemon, port, err := b.startRsyncd(ctx, root, logs)
	if err != nil {
		return treeSample{}, err
	}
	target := fmt.Sprintf("127.0.0.1:%d", port)
	var rl *relay
	if src.delay > 0 {
		if rl, err = startDelayRelay(target, src.delay); err != nil {
			_, _ = daemon.stop() // the relay error is the one to report
			return treeSample{}, err
		}
		target = rl.Addr()
	}
	args := []string{"-a", "--stats", src.path, "rsync://" + target + "/bench/"}
	durable := tool == toolRsyncFsync
	if durable && b.rsync.fsync {
		args = append([]string{"--fsync"}, args...)
	}
	b.settle()
	start := time.Now()
	client, err := startProc(ctx, logs+"-client.log", b.rsync.path, args...)
	var cu, su usage
	if err == nil {
		cu, err = client.wait()
	}
	if err == nil && durable && !b.rsync.fsync {
		var p *proc
		if p, err = startProc(ctx, logs+"-sync.log", "sync", "-f", root); err == nil {
			su, err = p.wait()
		}
	}
	end := time.Now()
	du, stopErr := daemon.stop()
	if rl != nil {
		stopErr = errors.Join(stopErr, rl.Close())
	}
	if err := errors.Join(err, stopErr); err != nil {
		return treeSample{}, err
	}
	s := treeSample{sample: sample{wall: end.Sub(start), sender: cu, receiver: du.add(su)}}
	for _, m := range rsyncStat.FindAllSubmatch(client.stdout.Bytes(), -1) {
		n, _ := strconv.ParseInt(strings.ReplaceAll(string(m[2]), ",", ""), 10, 64)
		if string(m[1]) == "Total bytes sent" {
			s.sentBytes = n
		} else {
			s.files = int(n)
		}
	}
	files, size, err := countTree(filepath.Join(root, filepath.Base(src.path)))
	if err == nil && (files != src.files || size != src.bytes) {
		err = fmt.Errorf("rsync result holds %d files of %d bytes, want %d files of %d bytes", files, size, src.files, src.bytes)
	}
	return s, err
}

// countTree counts the regular files below dir and their bytes.
func countTree(dir string) (files int, size int64, err error) {
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		files++
		size += fi.Size()
		return nil
	})
	return files, size, err
}

// makeTree writes files of fileSize pseudo-random bytes (the same in every
// run) spread over dirs directories under b.work/trees/NAME/NAME.
func (b *bench) makeTree(name string, files, dirs int, fileSize int, delay time.Duration) (treeSource, error) {
	root := filepath.Join(b.work, "trees", name, name)
	fmt.Fprintf(b.stderr, "ferrybench: writing tree %s: %d files of %d bytes in %d directories\n", name, files, fileSize, dirs)
	rng := rand.NewChaCha8([32]byte{0: 't', 1: 'r', 2: 'e', 3: 'e'})
	buf := make([]byte, fileSize)
	for i := range files {
		d := filepath.Join(root, fmt.Sprintf("d%03d", i%dirs))
		if i < dirs {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return treeSource{}, err
			}
		}
		_, _ = rng.Read(buf) // ChaCha8 never fails
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%06d", i)), buf, 0o644); err != nil {
			return treeSource{}, err
		}
	}
	return treeSource{name: name, path: root, files: files, bytes: int64(files) * int64(fileSize), delay: delay}, nil
}

// copyGoSrc copies the regular files and directories of GOROOT/src (the Go
// that runs `go env GOROOT`, else this binary's) into b.work/trees/gosrc/src.
// Symlinks and other special files are left out: ferry skips them.
func (b *bench) copyGoSrc() (treeSource, error) {
	goroot := runtime.GOROOT() //nolint:staticcheck // only the fallback
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		goroot = strings.TrimSpace(string(out))
	}
	from := filepath.Join(goroot, "src")
	root := filepath.Join(b.work, "trees", treeGoSrc, "src")
	fmt.Fprintf(b.stderr, "ferrybench: copying %s\n", from)
	src := treeSource{name: treeGoSrc, path: root}
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		to := filepath.Join(root, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if err := copyFile(to, path, fi.Mode().Perm()); err != nil {
				return err
			}
			src.files++
			src.bytes += fi.Size()
		}
		return nil
	})
	return src, err
}

func copyFile(to, from string, perm fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close() //nolint:errcheck // opened read-only
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm|0o200)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// millionResult is the -trees million run: one ferry send of many empty
// files, stopped after -million-time if not done, for peak RSS.
type millionResult struct {
	Files               int       `json:"files"`
	Committed           int       `json:"committed"` // files committed before the end or the stop
	Finished            bool      `json:"finished"`  // false: stopped after time_limit_seconds
	TimeLimitSeconds    float64   `json:"time_limit_seconds"`
	WallSeconds         float64   `json:"wall_seconds"`
	SenderPeakRSSBytes  int64     `json:"sender_peak_rss_bytes"`
	DaemonPeakRSSBytes  int64     `json:"daemon_peak_rss_bytes"`
	SenderRSSSamplesMiB []float64 `json:"sender_rss_samples_mib"` // VmHWM every 10 s
	DaemonRSSSamplesMiB []float64 `json:"daemon_rss_samples_mib"` // VmHWM every 10 s
	Dir                 string    `json:"dir"`
}

// runMillion makes -million-files empty files in 1000-file directories
// under -million-dir (tmpfs by default), sends them with ferry to a ferryd
// whose root is there too, and records both peak RSS, and each one's
// VmHWM every 10 s. The sender is
// killed after -million-time; its peak so far still counts.
func (b *bench) runMillion(ctx context.Context) error {
	n := b.cfg.millionFiles
	parent, err := os.MkdirTemp(b.cfg.millionDir, "ferrybench-million-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(parent) //nolint:errcheck // best effort: scratch on tmpfs
	src := filepath.Join(parent, "src", "many")
	fmt.Fprintf(b.stderr, "ferrybench: creating %d empty files in %s\n", n, src)
	for i := range n {
		d := filepath.Join(src, fmt.Sprintf("d%04d", i/1000))
		if i%1000 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%04d", i%1000)), nil, 0o644); err != nil {
			return err
		}
	}
	root := filepath.Join(parent, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return err
	}
	logs := filepath.Join(b.work, "logs", "million")
	daemon, addr, err := startListener(ctx, logs+"-ferryd.log", b.ferryd, b.ferrydArgs(root, "127.0.0.1:0")...)
	if err != nil {
		return err
	}
	b.settle()
	start := time.Now()
	p, err := startProc(ctx, logs+"-send.log", b.ferry, "send", "--to", addr, "--fingerprint", daemon.fingerprint, "--json", "--quiet", "--retries", "0", src)
	if err != nil {
		_, _ = daemon.stop() // the start error is the one to report
		return err
	}
	res := &millionResult{Files: n, TimeLimitSeconds: b.cfg.millionTime.Seconds(), Dir: b.cfg.millionDir}
	done := make(chan struct{})
	var su usage
	var waitErr error
	go func() {
		su, waitErr = p.wait()
		close(done)
	}()
	tick := time.NewTicker(10 * time.Second)
	limit := time.NewTimer(b.cfg.millionTime)
wait:
	for {
		select {
		case <-done:
			res.Finished = true
			break wait
		case <-tick.C:
			if hwm := procHWM(childPID(p.cmd.Process.Pid)); hwm > 0 {
				res.SenderRSSSamplesMiB = append(res.SenderRSSSamplesMiB, round3(float64(hwm)/mib))
			}
			if hwm := procHWM(childPID(daemon.cmd.Process.Pid)); hwm > 0 {
				res.DaemonRSSSamplesMiB = append(res.DaemonRSSSamplesMiB, round3(float64(hwm)/mib))
			}
		case <-limit.C:
			// The wrapper passes SIGTERM on and reports the sender's usage,
			// which holds the peak so far.
			_ = p.cmd.Process.Signal(syscall.SIGTERM) // it may have just finished
			<-done
			break wait
		}
	}
	tick.Stop()
	limit.Stop()
	res.WallSeconds = round3(time.Since(start).Seconds())
	du, stopErr := daemon.stop()
	if res.Finished && waitErr != nil {
		return waitErr
	}
	if stopErr != nil {
		return stopErr
	}
	res.SenderPeakRSSBytes, res.DaemonPeakRSSBytes = su.maxRSS, du.maxRSS
	res.Committed = bytes.Count(p.stdout.Bytes(), []byte(`"status":"committed"`))
	b.million = res
	fmt.Fprintf(b.stderr, "ferrybench: million: %d of %d files committed in %.1f s; sender peak RSS %.1f MiB, daemon %.1f MiB\n",
		res.Committed, n, res.WallSeconds, float64(su.maxRSS)/mib, float64(du.maxRSS)/mib)
	return nil
}

// procHWM returns a running process's peak RSS in bytes from
// /proc/PID/status (VmHWM), or 0.
func procHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// childPID returns a child of process pid (the program a rusage-exec
// wrapper runs), or pid itself. The children are listed per thread, and
// the wrapper starts its child from whichever thread it runs on.
func childPID(pid int) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			if c, err := strconv.Atoi(f[0]); err == nil {
				return c
			}
		}
	}
	return pid
}

// loadAvg returns the first three fields of /proc/loadavg, as uptime
// prints them.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}
