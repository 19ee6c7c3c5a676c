package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to the hidden raw-copy modes, which the benchmark starts
// as its own children, or to the benchmark or the profile.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 1 {
		switch args[1] {
		case rusageExecCmd:
			return rusageExec(args[2:])
		case "raw-send":
			return exitCode(stderr, rawSend(ctx, args[2:]))
		case "raw-recv":
			return exitCode(stderr, rawRecv(ctx, args[2:], stdout, stderr))
		case "fsync":
			return exitCode(stderr, fsyncBench(ctx, args[2:], stdout, stderr))
		case "s3":
			return exitCode(stderr, s3Bench(ctx, args[2:], stdout, stderr))
		}
	}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.profile {
		return exitCode(stderr, profile(ctx, cfg, stdout, stderr))
	}
	if cfg.restart {
		return exitCode(stderr, restartRead(ctx, cfg, stdout, stderr))
	}
	return exitCode(stderr, benchmark(ctx, cfg, stdout, stderr))
}

func exitCode(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "ferrybench: %v\n", err)
	return 1
}

// config is the benchmark's flags.
type config struct {
	sizes          []size   // random files, run in rounds
	memory         []string // memory states each size runs in (allMemory), interleaved in a round
	sparse         size     // sparse file for first chunk and memory; 0 skips
	concurrent     int      // senders in the concurrent run; 0 skips
	concurrentSize size     // bytes per concurrent sender
	rounds         int
	pause          time.Duration
	quietWait      time.Duration // longest wait for other processes to go quiet
	tools          []string
	binDir         string
	workParent     string // the temporary work directory is made in here
	out            string // results JSON
	keep           bool   // keep the work directory
	treeKeep       bool   // keep each tree run's destination until the end, so that no run starts right after files were deleted
	syncBytes      int64  // ferryd --sync-bytes; 0 keeps its default
	syncInterval   time.Duration

	trees        []string      // tree workloads (allTrees), in rounds after the sizes
	treeFiles    int           // files of 4 KiB in the small tree
	treeDirs     int           // directories they are spread over
	rttFiles     int           // files of 4 KiB in the rtt tree
	rttDelay     time.Duration // one-way delay of the rtt relay
	millionFiles int           // empty files in the million run
	millionDir   string        // where the million run's files go (tmpfs)
	millionTime  time.Duration // the million run's sender is stopped after this

	profile     bool
	profileSize size
	cpuProfile  string
	execTrace   string
	profDirect  bool // -profile's daemon writes with O_DIRECT, as ferryd does by default
	profTLS     bool // -profile's session runs inside TLS, as ferry's TCP sessions do

	restart     bool
	restartSize size
}

// Memory states of the VM for the sizes' runs (bench/doc.go, "Memory
// states"): settled, after sync and the pause, when the memory the guest
// freed has gone back to the host and buffered writes fault every page in
// again; fresh, right after a ballast file of twice the run's bytes was
// written and deleted, when buffered writes land in pages the guest holds.
const (
	memSettled = "settled"
	memFresh   = "fresh"
)

var allMemory = []string{memSettled, memFresh}

// allTools lists the tools in the order they run within a round.
var allTools = []string{"raw", "ferry", "ferry-unix", "rsync", "scp"}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet(filepath.Base(args[0]), flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{}
	var sizes, sparse, concSize, tools, syncBytes, profSize, trees, memory string
	fs.StringVar(&sizes, "sizes", "100M,1G", "comma-separated `LIST` of random file sizes (K, M, G, T: binary units)")
	fs.StringVar(&sparse, "sparse", "16G", "size of the sparse file sent once for first chunk and memory; 0 skips")
	fs.IntVar(&cfg.concurrent, "concurrent", 8, "number of concurrent ferry senders to one daemon; 0 skips")
	fs.StringVar(&concSize, "concurrent-size", "256M", "file size per concurrent sender")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds per size; each round runs every tool once in each -memory state")
	fs.StringVar(&memory, "memory", strings.Join(allMemory, ","), "comma-separated `LIST` of memory states the sizes run in: settled (after sync and the pause), fresh (right after a ballast file of twice the bytes was written and deleted); -profile runs in the first")
	fs.DurationVar(&cfg.pause, "pause", 3*time.Second, "pause after sync before each run")
	fs.DurationVar(&cfg.quietWait, "quiet-wait", 2*time.Minute, "before a run, wait up to this long for other processes to leave the CPUs idle")
	fs.StringVar(&tools, "tools", strings.Join(allTools, ","), "tools to run; rsync, and scp (which needs sshd), are skipped when not installed")
	fs.StringVar(&cfg.binDir, "bin", "bin", "directory holding the ferry and ferryd binaries")
	fs.StringVar(&cfg.workParent, "dir", "", "directory for the temporary work directory (default $TMPDIR); must have room for the files")
	fs.StringVar(&cfg.out, "out", filepath.Join("bench", "results.json"), "results JSON file; empty skips")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the work directory")
	fs.BoolVar(&cfg.treeKeep, "tree-keep", false, "keep each tree run's destination until the end instead of deleting it before the next run: on ext4 without a journal, creating files within a minute of deleting many is several times slower (bench/doc.go)")
	fs.StringVar(&syncBytes, "sync-bytes", "0", "ferryd --sync-bytes; 0 keeps ferryd's default")
	fs.DurationVar(&cfg.syncInterval, "sync-interval", 0, "ferryd --sync-interval; 0 keeps ferryd's default")
	fs.StringVar(&trees, "trees", "", "comma-separated `LIST` of tree workloads to run after the sizes ("+strings.Join(allTrees, ", ")+", or all)")
	fs.IntVar(&cfg.treeFiles, "tree-files", 20000, "files of 4 KiB in the small tree")
	fs.IntVar(&cfg.treeDirs, "tree-dirs", 100, "directories the small tree's files are spread over")
	fs.IntVar(&cfg.rttFiles, "rtt-files", 500, "files of 4 KiB in the rtt tree")
	fs.DurationVar(&cfg.rttDelay, "rtt-delay", 25*time.Millisecond, "delay the rtt relay adds to each direction")
	fs.IntVar(&cfg.millionFiles, "million-files", 1000000, "empty files in the million run")
	fs.StringVar(&cfg.millionDir, "million-dir", "/dev/shm", "directory (tmpfs) for the million run's source and daemon root")
	fs.DurationVar(&cfg.millionTime, "million-time", 3*time.Minute, "stop the million run's sender after this long; its peak RSS so far counts")
	fs.BoolVar(&cfg.profile, "profile", false, "instead of the benchmark, profile one in-process transfer")
	fs.StringVar(&profSize, "profile-size", "1G", "file size for -profile")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", filepath.Join("bench", "out", "cpu.prof"), "CPU profile written by -profile")
	fs.StringVar(&cfg.execTrace, "trace", "", "execution trace written by -profile (go tool trace), none if empty")
	fs.BoolVar(&cfg.profDirect, "profile-direct-io", true, "-profile's daemon writes chunks with O_DIRECT, as ferryd's default --direct-io does")
	fs.BoolVar(&cfg.profTLS, "profile-tls", true, "-profile's session runs inside TLS 1.3, as every TCP session of ferry does")
	fs.BoolVar(&cfg.restart, "restart", false, "instead of the benchmark, measure what a restarted ferryd reads to resume a large sparse partial")
	var restartSize string
	fs.StringVar(&restartSize, "restart-size", "16G", "size of the sparse file for -restart")
	if err := fs.Parse(args[1:]); err != nil {
		return nil, err
	}
	err := cfg.parseValues(sizes, sparse, concSize, tools, syncBytes, profSize)
	if err == nil {
		if cfg.restartSize, err = parseSize(restartSize); err != nil {
			err = fmt.Errorf("-restart-size: %w", err)
		}
	}
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err == nil {
		err = cfg.parseTrees(trees)
	}
	if err == nil {
		err = cfg.parseMemory(memory)
	}
	if err == nil && cfg.rounds < 1 {
		err = errors.New("-rounds must be at least 1")
	}
	if err != nil {
		fmt.Fprintf(stderr, "ferrybench: %v\n", err)
		return nil, err
	}
	return cfg, nil
}

func (cfg *config) parseValues(sizes, sparse, concSize, tools, syncBytes, profSize string) error {
	var err error
	if cfg.sizes, err = parseSizes(sizes); err != nil {
		return fmt.Errorf("-sizes: %w", err)
	}
	if cfg.sparse, err = parseSize(sparse); err != nil {
		return fmt.Errorf("-sparse: %w", err)
	}
	if cfg.concurrentSize, err = parseSize(concSize); err != nil {
		return fmt.Errorf("-concurrent-size: %w", err)
	}
	if cfg.profileSize, err = parseSize(profSize); err != nil {
		return fmt.Errorf("-profile-size: %w", err)
	}
	sb, err := parseSize(syncBytes)
	if err != nil {
		return fmt.Errorf("-sync-bytes: %w", err)
	}
	cfg.syncBytes = sb.bytes
	for _, t := range strings.Split(tools, ",") {
		t = strings.TrimSpace(t)
		if !slices.Contains(allTools, t) {
			return fmt.Errorf("-tools: unknown tool %q (want %s)", t, strings.Join(allTools, ", "))
		}
		cfg.tools = append(cfg.tools, t)
	}
	return nil
}

func (cfg *config) parseMemory(list string) error {
	for _, m := range strings.Split(list, ",") {
		m = strings.TrimSpace(m)
		if !slices.Contains(allMemory, m) {
			return fmt.Errorf("-memory: unknown state %q (want %s)", m, strings.Join(allMemory, ", "))
		}
		if !slices.Contains(cfg.memory, m) {
			cfg.memory = append(cfg.memory, m)
		}
	}
	return nil
}

func (cfg *config) parseTrees(list string) error {
	for _, t := range strings.Split(list, ",") {
		t = strings.TrimSpace(t)
		switch {
		case t == "":
		case t == "all":
			cfg.trees = slices.Clone(allTrees)
		case slices.Contains(allTrees, t):
			if !slices.Contains(cfg.trees, t) {
				cfg.trees = append(cfg.trees, t)
			}
		default:
			return fmt.Errorf("-trees: unknown workload %q (want %s, or all)", t, strings.Join(allTrees, ", "))
		}
	}
	if len(cfg.trees) > 0 && (cfg.treeFiles < 1 || cfg.treeDirs < 1 || cfg.rttFiles < 1 || cfg.millionFiles < 1) {
		return errors.New("-tree-files, -tree-dirs, -rtt-files and -million-files must be at least 1")
	}
	return nil
}
