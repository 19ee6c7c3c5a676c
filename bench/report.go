package main

import (
	"cmp"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// series is every measurement of one tool on one job.
type series struct {
	group, tool, size string
	memory            string // memSettled or memFresh
	bytes             int64  // per sender
	senders           int
	samples           []sample
	firstChunks       []time.Duration // from timed runs and probes
	handshakes        []time.Duration // connect to first chunk, same runs
}

// recorder keeps series in the order they were first measured.
type recorder struct {
	all []*series
}

func (r *recorder) get(tool string, j job) *series {
	mem := cmp.Or(j.memory, memSettled)
	for _, s := range r.all {
		if s.group == j.group && s.tool == tool && s.size == j.label() && s.senders == j.senders && s.memory == mem {
			return s
		}
	}
	s := &series{group: j.group, tool: tool, size: j.label(), bytes: j.bytes(), senders: j.senders, memory: mem}
	r.all = append(r.all, s)
	return s
}

func (r *recorder) add(tool string, j job, s sample) {
	sr := r.get(tool, j)
	sr.samples = append(sr.samples, s)
	if s.firstChunk > 0 {
		sr.firstChunks = append(sr.firstChunks, s.firstChunk)
	}
	if s.handshake > 0 {
		sr.handshakes = append(sr.handshakes, s.handshake)
	}
}

func (r *recorder) addFirstChunk(tool string, j job, d, handshake time.Duration) {
	if d > 0 {
		sr := r.get(tool, j)
		sr.firstChunks = append(sr.firstChunks, d)
	}
	if handshake > 0 {
		sr := r.get(tool, j)
		sr.handshakes = append(sr.handshakes, handshake)
	}
}

// results is bench/results.json. Every key is always present (null when not
// measured) and rows keep their run order, so that files from two commits
// diff line by line.
type results struct {
	Schema   int      `json:"schema"`
	Commit   string   `json:"commit"` // of the ferry binary measured
	Date     string   `json:"date"`
	Machine  machine  `json:"machine"`
	Settings settings `json:"settings"`
	Rows     []row    `json:"rows"`
	Targets  []target `json:"targets"`
	// Trees are the -trees workloads; Million the million-file run (null
	// when not run); Load is /proc/loadavg before and after the tree runs.
	Trees   []treeRow      `json:"trees"`
	Million *millionResult `json:"million"`
	Load    []string       `json:"load"`
}

type machine struct {
	CPUs     int    `json:"cpus"`
	MemBytes int64  `json:"mem_bytes"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
}

type settings struct {
	Rounds           int     `json:"rounds"`
	PauseSeconds     float64 `json:"pause_seconds"`
	QuietLimit       float64 `json:"quiet_limit"`
	FerrydArgs       string  `json:"ferryd_args"`
	Rsync            string  `json:"rsync"`
	RsyncDurability  string  `json:"rsync_durability"`
	Scp              string  `json:"scp"` // ssh -V; empty when scp did not run
	ScpDurability    string  `json:"scp_durability"`
	FirstChunkMethod string  `json:"first_chunk_method"`
	// RSSFloorBytes is the peak RSS reported for `true`: every child runs
	// under the rusage-exec wrapper, and a child's peak includes the
	// wrapper's at the time it started the child. A figure at the floor
	// means "at most this".
	RSSFloorBytes int64 `json:"rss_floor_bytes"`
}

// row is one tool on one job. Wall time, CPU and first chunk are medians
// over the runs; RSS is the peak over the runs.
type row struct {
	Group   string `json:"group"`
	Tool    string `json:"tool"`
	Size    string `json:"size"`
	Bytes   int64  `json:"bytes"` // sent by each sender
	Senders int    `json:"senders"`
	// Memory is the state the runs started in: "settled" (after sync and
	// the pause) or "fresh" (right after a ballast file was written and
	// deleted); see bench/doc.go.
	Memory string `json:"memory"`
	Runs   int    `json:"runs"`

	WallSeconds  float64 `json:"wall_seconds"`
	MiBPerSecond float64 `json:"mib_per_second"` // all senders' bytes over the wall time
	// RatioToRaw is the time per byte over raw's in the same group and
	// size: the wall-time ratio for one sender, the inverse of the
	// throughput ratio for several. Null when raw did not run.
	RatioToRaw *float64 `json:"ratio_to_raw"`
	// RawWallSeconds is raw's median wall time beside RatioToRaw, and
	// RatioToRawPerRound the median over rounds of this tool's wall time
	// over raw's in the same round, which drift of a shared machine
	// between rounds moves less. Null when raw did not run.
	RawWallSeconds     *float64 `json:"raw_wall_seconds"`
	RatioToRawPerRound *float64 `json:"ratio_to_raw_per_round"`

	SenderCPUSeconds     float64  `json:"sender_cpu_seconds"`
	ReceiverCPUSeconds   float64  `json:"receiver_cpu_seconds"`
	SenderPeakRSSBytes   int64    `json:"sender_peak_rss_bytes"`
	ReceiverPeakRSSBytes int64    `json:"receiver_peak_rss_bytes"`
	FirstChunkMs         *float64 `json:"first_chunk_ms"`
	// HandshakeMs is the median time from the sender's connect to its
	// first chunk (TCP, TLS handshake, hello, offer), seen by the relay;
	// null when not measured.
	HandshakeMs *float64 `json:"handshake_ms"`
	// BackgroundCPU is the largest busy fraction of all CPUs in the
	// pauses before the runs: well above 0 means something else ran.
	BackgroundCPU float64 `json:"background_cpu"`

	RoundSeconds []float64 `json:"round_seconds"`
}

// total is the bytes all senders sent in one run.
func (r row) total() int64 { return r.Bytes * int64(r.Senders) }

type target struct {
	Name     string `json:"name"`
	Measured string `json:"measured"`
	Met      *bool  `json:"met"` // null when not measured
}

func (b *bench) results(started time.Time) *results {
	res := &results{
		Schema:  2,
		Commit:  binaryCommit(b.ferry),
		Date:    started.UTC().Format(time.RFC3339),
		Machine: thisMachine(),
		Settings: settings{
			Rounds:        b.cfg.rounds,
			PauseSeconds:  b.cfg.pause.Seconds(),
			QuietLimit:    quietLimit,
			FerrydArgs:    strings.Join(b.ferrydArgs("ROOT", "127.0.0.1:0"), " "),
			RSSFloorBytes: b.rssFloor,
			FirstChunkMethod: "ferry: a relay in the benchmark timestamps the header of the first chunk frame " +
				"from the sender, in one extra untimed run per size (the sparse run itself); " +
				"raw: the receiver's first read",
		},
	}
	if b.rsync != nil {
		res.Settings.Rsync, res.Settings.RsyncDurability = b.rsync.version, b.rsync.durability()
	}
	if b.scp != nil {
		res.Settings.Scp, res.Settings.ScpDurability = b.scp.version, b.scp.durability()
	}
	for _, s := range b.rec.all {
		r := s.row()
		r.RatioToRawPerRound = b.rec.perRoundRatio(s)
		res.Rows = append(res.Rows, r)
	}
	sortRows(res.Rows)
	for i := range res.Rows {
		res.Rows[i].RatioToRaw = ratioToRaw(res.Rows, &res.Rows[i])
		if res.Rows[i].RatioToRaw != nil {
			// Same bytes in all, so the ratio of times per byte is the
			// ratio of wall times, for several senders too.
			v := round3(res.Rows[i].WallSeconds / *res.Rows[i].RatioToRaw)
			res.Rows[i].RawWallSeconds = &v
		}
	}
	res.Targets = targets(res.Rows)
	res.Trees = treeRows(b.trees)
	res.Million = b.million
	if b.loadStart != "" {
		res.Load = []string{b.loadStart, b.loadEnd}
	}
	return res
}

// sortRows orders rows by phase, then file size, then tool in round order,
// whatever order the runs happened in.
func sortRows(rows []row) {
	groups := []string{"sizes", "sparse", "concurrent"}
	slices.SortStableFunc(rows, func(a, b row) int {
		return cmp.Or(
			cmp.Compare(slices.Index(groups, a.Group), slices.Index(groups, b.Group)),
			cmp.Compare(a.total(), b.total()),
			cmp.Compare(slices.Index(allMemory, a.Memory), slices.Index(allMemory, b.Memory)),
			cmp.Compare(slices.Index(allTools, a.Tool), slices.Index(allTools, b.Tool)),
			cmp.Compare(a.Senders, b.Senders),
		)
	})
}

func (s *series) row() row {
	r := row{Group: s.group, Tool: s.tool, Size: s.size, Bytes: s.bytes, Senders: s.senders, Memory: s.memory, Runs: len(s.samples)}
	var walls, scpu, rcpu []float64
	for _, x := range s.samples {
		walls = append(walls, x.wall.Seconds())
		scpu = append(scpu, x.sender.cpu.Seconds())
		rcpu = append(rcpu, x.receiver.cpu.Seconds())
		r.SenderPeakRSSBytes = max(r.SenderPeakRSSBytes, x.sender.maxRSS)
		r.ReceiverPeakRSSBytes = max(r.ReceiverPeakRSSBytes, x.receiver.maxRSS)
		r.RoundSeconds = append(r.RoundSeconds, round3(x.wall.Seconds()))
		r.BackgroundCPU = max(r.BackgroundCPU, round3(x.background))
	}
	r.WallSeconds = round3(median(walls))
	r.MiBPerSecond = round3(float64(r.total()) / mib / median(walls))
	r.SenderCPUSeconds = round3(median(scpu))
	r.ReceiverCPUSeconds = round3(median(rcpu))
	if len(s.firstChunks) > 0 {
		var f []float64
		for _, d := range s.firstChunks {
			f = append(f, ms(d))
		}
		v := round3(median(f))
		r.FirstChunkMs = &v
	}
	if len(s.handshakes) > 0 {
		var f []float64
		for _, d := range s.handshakes {
			f = append(f, ms(d))
		}
		v := round3(median(f))
		r.HandshakeMs = &v
	}
	return r
}

// ratioToRaw compares r's time per byte with raw's in the same group and
// memory state for the same bytes in all.
func ratioToRaw(rows []row, r *row) *float64 {
	for _, raw := range rows {
		if raw.Tool == "raw" && raw.Group == r.Group && raw.Memory == r.Memory && raw.total() == r.total() && raw.MiBPerSecond > 0 {
			v := round3(raw.MiBPerSecond / r.MiBPerSecond)
			return &v
		}
	}
	return nil
}

// perRoundRatio returns the median over rounds of s's wall time over raw's
// in the same round (same group, memory state and bytes in all; samples
// are kept in round order), or nil without raw.
func (r *recorder) perRoundRatio(s *series) *float64 {
	for _, raw := range r.all {
		if raw.tool != "raw" || raw.group != s.group || raw.memory != s.memory || raw.size != s.size || raw.senders != 1 {
			continue
		}
		var rs []float64
		for i := range min(len(s.samples), len(raw.samples)) {
			if w := raw.samples[i].wall; w > 0 {
				rs = append(rs, s.samples[i].wall.Seconds()/w.Seconds())
			}
		}
		if len(rs) == 0 {
			return nil
		}
		v := round3(median(rs))
		return &v
	}
	return nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// targets checks issue 4's targets against the rows that were measured.
func targets(rows []row) []target {
	find := func(group, tool string, pick func(row) bool) *row {
		var best *row
		for i := range rows {
			r := &rows[i]
			if r.Group == group && r.Tool == tool && (pick == nil || pick(*r)) && (best == nil || r.Bytes > best.Bytes) {
				best = r
			}
		}
		return best
	}
	var ts []target
	for _, mem := range allMemory {
		inMem := func(r row) bool { return r.Memory == mem }
		ferry := find("sizes", "ferry", inMem) // the largest size: 1 GiB by default
		if ferry == nil {
			continue
		}
		if ferry.RatioToRaw != nil {
			raw := find("sizes", "raw", func(r row) bool { return inMem(r) && r.Bytes == ferry.Bytes })
			ts = append(ts, check(fmt.Sprintf("ferry %s within 1.10x raw wall time (%s memory)", ferry.Size, mem),
				fmt.Sprintf("%.3fx (raw %.3f s)", *ferry.RatioToRaw, raw.WallSeconds), *ferry.RatioToRaw <= 1.10))
		}
		for _, tool := range []string{"rsync", "scp"} {
			if rs := find("sizes", tool, func(r row) bool { return inMem(r) && r.Bytes == ferry.Bytes }); rs != nil {
				ts = append(ts, check(fmt.Sprintf("ferry %s faster than %s (%s memory)", ferry.Size, tool, mem),
					fmt.Sprintf("%.3f s vs %.3f s", ferry.WallSeconds, rs.WallSeconds), ferry.WallSeconds < rs.WallSeconds))
			}
		}
		cpu := ferry.SenderCPUSeconds + ferry.ReceiverCPUSeconds
		gib := float64(ferry.Bytes) / (1 << 30)
		ts = append(ts, check(fmt.Sprintf("ferry at most 2.0 CPU-seconds per GiB, both sides (%s memory)", mem),
			fmt.Sprintf("%.2f s/GiB (sender %.2f + daemon %.2f s for %s)", cpu/gib, ferry.SenderCPUSeconds, ferry.ReceiverCPUSeconds, ferry.Size), cpu/gib <= 2.0))
	}
	if sp := find("sparse", "ferry", nil); sp != nil && sp.FirstChunkMs != nil {
		ts = append(ts, check(fmt.Sprintf("first chunk within 100 ms (%s sparse)", sp.Size),
			fmt.Sprintf("%.1f ms", *sp.FirstChunkMs), *sp.FirstChunkMs <= 100))
	}
	var single []row
	for _, r := range rows {
		if r.Tool == "ferry" && r.Senders == 1 {
			single = append(single, r)
		}
	}
	if len(single) > 0 {
		ts = append(ts, rssTarget("sender peak RSS below 64 MiB", single, 64, func(r row) int64 { return r.SenderPeakRSSBytes }))
		ts = append(ts, rssTarget("daemon peak RSS below 32 MiB with one session", single, 32, func(r row) int64 { return r.ReceiverPeakRSSBytes }))
	}
	for _, mem := range allMemory {
		c := find("concurrent", "ferry", func(r row) bool { return r.Memory == mem })
		if c == nil || c.RatioToRaw == nil || c.RawWallSeconds == nil {
			continue
		}
		tput := 1 / *c.RatioToRaw
		ts = append(ts, check(fmt.Sprintf("%s from %d senders: aggregate at least 0.8 of one raw copy of as many bytes (%s memory)", c.Size, c.Senders, mem),
			fmt.Sprintf("%.3f (%.1f MiB/s, %.3f s against raw's %.3f s); daemon peak RSS %.1f MiB", tput, c.MiBPerSecond, c.WallSeconds, *c.RawWallSeconds, float64(c.ReceiverPeakRSSBytes)/mib), tput >= 0.8))
	}
	return ts
}

// rssTarget reports the peak over rows per size, so that "independent of
// file size" can be read off.
func rssTarget(name string, rows []row, limitMiB float64, rss func(row) int64) target {
	var parts []string
	met := true
	for _, r := range rows {
		v := float64(rss(r)) / mib
		parts = append(parts, fmt.Sprintf("%s: %.1f MiB", r.Size, v))
		met = met && v < limitMiB
	}
	return check(name, strings.Join(parts, ", "), met)
}

func check(name, measured string, met bool) target {
	return target{Name: name, Measured: measured, Met: &met}
}

func printTable(w io.Writer, res *results) {
	if len(res.Rows) > 0 {
		printSizes(w, res)
	}
	printTrees(w, res)
	if res.Settings.Rsync != "" {
		fmt.Fprintf(w, "\nrsync: %s; durability: %s\n", res.Settings.Rsync, res.Settings.RsyncDurability)
	}
	if res.Settings.Scp != "" {
		fmt.Fprintf(w, "scp: %s; durability: %s\n", res.Settings.Scp, res.Settings.ScpDurability)
	}
	fmt.Fprintf(w, "peak RSS floor (the measuring wrapper's own, reported for `true`): %.1f MiB\n", float64(res.Settings.RSSFloorBytes)/mib)
}

func printSizes(w io.Writer, res *results) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tool\tsize\tmemory\tsenders\truns\twall s\tMiB/s\tx raw\traw s\tx raw/round\tsend cpu s\trecv cpu s\tsend rss MiB\trecv rss MiB\tfirst chunk ms\thandshake ms\tbg cpu %\t")
	for _, r := range res.Rows {
		size := r.Size
		if r.Group == "sparse" {
			size += " sparse"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%.3f\t%.1f\t%s\t%s\t%s\t%.2f\t%.2f\t%.1f\t%.1f\t%s\t%s\t%.0f\t\n",
			r.Tool, size, r.Memory, r.Senders, r.Runs, r.WallSeconds, r.MiBPerSecond, optional(r.RatioToRaw, "%.3f"), optional(r.RawWallSeconds, "%.3f"), optional(r.RatioToRawPerRound, "%.3f"),
			r.SenderCPUSeconds, r.ReceiverCPUSeconds,
			float64(r.SenderPeakRSSBytes)/mib, float64(r.ReceiverPeakRSSBytes)/mib, optional(r.FirstChunkMs, "%.1f"), optional(r.HandshakeMs, "%.1f"), 100*r.BackgroundCPU)
	}
	_ = tw.Flush() // to the terminal, like the prints around it
	fmt.Fprintln(w)
	for _, t := range res.Targets {
		verdict := "MISSED"
		if *t.Met {
			verdict = "met"
		}
		fmt.Fprintf(w, "%-6s %s: %s\n", verdict, t.Name, t.Measured)
	}
}

func optional(v *float64, format string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}

func writeJSON(path string, res *results) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// binaryCommit names the commit the ferry binary was built from, as the Go
// toolchain stamped it ("-dirty" when the tree had changes), so that the
// results name what was measured rather than what is checked out now.
// Without a stamp (-buildvcs=false, or no git) it falls back to the
// checked-out commit and says so.
func binaryCommit(path string) string {
	var rev, dirty string
	if info, err := buildinfo.ReadFile(path); err == nil {
		for _, s := range info.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "-dirty"
			}
		}
	}
	if rev != "" {
		return rev[:min(len(rev), 12)] + dirty
	}
	out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		dirty = "-dirty"
	}
	return strings.TrimSpace(string(out)) + dirty + " (checked out; binary not VCS-stamped)"
}

func thisMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		m.MemBytes = int64(si.Totalram) * int64(si.Unit)
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b []byte
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		m.Kernel = string(b)
	}
	return m
}

// treeRow is one tool on one tree workload. Wall time, CPU and bytes sent
// are medians over the rounds, RSS the peak. The ratios are medians of the
// per-round ratios of wall times (this tool over the rsync form), so that a
// round slowed by other processes slows both sides of its ratio.
type treeRow struct {
	Workload string `json:"workload"`
	Tool     string `json:"tool"`
	Files    int    `json:"files"`
	Bytes    int64  `json:"bytes"`
	Runs     int    `json:"runs"`

	WallSeconds       float64  `json:"wall_seconds"`
	MsPerFile         float64  `json:"ms_per_file"`
	RatioToRsync      *float64 `json:"ratio_to_rsync"`       // over rsync -a, same round
	RatioToRsyncFsync *float64 `json:"ratio_to_rsync_fsync"` // over rsync -a --fsync, same round
	// SentBytes: ferry, the sum of the records' sent_bytes (chunk data
	// only, no framing); rsync, "Total bytes sent" of --stats (all it
	// wrote to the socket).
	SentBytes            int64     `json:"sent_bytes"`
	SenderCPUSeconds     float64   `json:"sender_cpu_seconds"`
	ReceiverCPUSeconds   float64   `json:"receiver_cpu_seconds"`
	SenderPeakRSSBytes   int64     `json:"sender_peak_rss_bytes"`
	ReceiverPeakRSSBytes int64     `json:"receiver_peak_rss_bytes"`
	BackgroundCPU        float64   `json:"background_cpu"`
	RoundSeconds         []float64 `json:"round_seconds"`
}

func treeRows(all []*treeSeries) []treeRow {
	var rows []treeRow
	for _, s := range all {
		r := treeRow{Workload: s.workload, Tool: s.tool, Files: s.files, Bytes: s.bytes, Runs: len(s.samples)}
		var walls, scpu, rcpu, sent []float64
		for _, x := range s.samples {
			walls = append(walls, x.wall.Seconds())
			scpu = append(scpu, x.sender.cpu.Seconds())
			rcpu = append(rcpu, x.receiver.cpu.Seconds())
			sent = append(sent, float64(x.sentBytes))
			r.SenderPeakRSSBytes = max(r.SenderPeakRSSBytes, x.sender.maxRSS)
			r.ReceiverPeakRSSBytes = max(r.ReceiverPeakRSSBytes, x.receiver.maxRSS)
			r.RoundSeconds = append(r.RoundSeconds, round3(x.wall.Seconds()))
			r.BackgroundCPU = max(r.BackgroundCPU, round3(x.background))
		}
		r.WallSeconds = round3(median(walls))
		r.MsPerFile = round3(1000 * median(walls) / float64(max(s.files, 1)))
		r.SenderCPUSeconds = round3(median(scpu))
		r.ReceiverCPUSeconds = round3(median(rcpu))
		r.SentBytes = int64(median(sent))
		r.RatioToRsync = roundRatio(s, all, toolRsync)
		r.RatioToRsyncFsync = roundRatio(s, all, toolRsyncFsync)
		rows = append(rows, r)
	}
	return rows
}

// roundRatio is the median over rounds of s's wall time over the wall time
// of tool on the same workload in the same round; nil without such pairs.
func roundRatio(s *treeSeries, all []*treeSeries, tool string) *float64 {
	var ref *treeSeries
	for _, o := range all {
		if o.workload == s.workload && o.tool == tool {
			ref = o
		}
	}
	if ref == nil {
		return nil
	}
	var ratios []float64
	for _, x := range s.samples {
		for _, y := range ref.samples {
			if x.round == y.round && y.wall > 0 {
				ratios = append(ratios, x.wall.Seconds()/y.wall.Seconds())
			}
		}
	}
	if len(ratios) == 0 {
		return nil
	}
	v := round3(median(ratios))
	return &v
}

func printTrees(w io.Writer, res *results) {
	if len(res.Trees) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "tree\ttool\tfiles\tMiB\truns\twall s\tms/file\tx rsync\tx rsync --fsync\tsent bytes\tsend cpu s\trecv cpu s\tsend rss MiB\trecv rss MiB\tbg cpu %\trounds s\t")
		for _, r := range res.Trees {
			var rounds []string
			for _, x := range r.RoundSeconds {
				rounds = append(rounds, fmt.Sprintf("%.2f", x))
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%d\t%.3f\t%.3f\t%s\t%s\t%d\t%.2f\t%.2f\t%.1f\t%.1f\t%.0f\t%s\t\n",
				r.Workload, r.Tool, r.Files, float64(r.Bytes)/mib, r.Runs, r.WallSeconds, r.MsPerFile,
				optional(r.RatioToRsync, "%.3f"), optional(r.RatioToRsyncFsync, "%.3f"), r.SentBytes,
				r.SenderCPUSeconds, r.ReceiverCPUSeconds,
				float64(r.SenderPeakRSSBytes)/mib, float64(r.ReceiverPeakRSSBytes)/mib, 100*r.BackgroundCPU,
				strings.Join(rounds, " "))
		}
		_ = tw.Flush() // to the terminal, like the prints around it
	}
	if m := res.Million; m != nil {
		state := "finished"
		if !m.Finished {
			state = fmt.Sprintf("stopped after %.0f s", m.TimeLimitSeconds)
		}
		fmt.Fprintf(w, "\nmillion: ferry, %d of %d empty files committed in %.1f s (%s) in %s; sender peak RSS %.1f MiB, daemon %.1f MiB; sender VmHWM every 10 s (MiB): %v; daemon's: %v\n",
			m.Committed, m.Files, m.WallSeconds, state, m.Dir,
			float64(m.SenderPeakRSSBytes)/mib, float64(m.DaemonPeakRSSBytes)/mib, m.SenderRSSSamplesMiB, m.DaemonRSSSamplesMiB)
	}
	if len(res.Load) == 2 {
		fmt.Fprintf(w, "load average (1, 5, 15 min) before the tree runs: %s; after: %s\n", res.Load[0], res.Load[1])
	}
}
