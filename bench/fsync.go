package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// fsyncStrategy makes files (already written, still open) durable. The
// directory fsyncs are separate: see fsyncTrial.
type fsyncStrategy struct {
	name       string
	background bool // a 1 GiB dd writes to the same file system meanwhile
	dirs       bool // the directories are fsynced after the files
	run        func(root string, files []*os.File) error
}

func fsyncStrategies() []fsyncStrategy {
	ss := []fsyncStrategy{
		{name: "seq-fsync", dirs: true, run: func(_ string, fs []*os.File) error { return syncEach(fs, 1, unix.Fsync) }},
		{name: "seq-fdatasync", dirs: true, run: func(_ string, fs []*os.File) error { return syncEach(fs, 1, unix.Fdatasync) }},
	}
	for _, k := range []int{2, 4, 8, 16} {
		ss = append(ss,
			fsyncStrategy{name: fmt.Sprintf("par%d-fsync", k), dirs: true, run: func(_ string, fs []*os.File) error { return syncEach(fs, k, unix.Fsync) }},
			fsyncStrategy{name: fmt.Sprintf("par%d-fdatasync", k), dirs: true, run: func(_ string, fs []*os.File) error { return syncEach(fs, k, unix.Fdatasync) }})
	}
	ss = append(ss,
		fsyncStrategy{name: "sfr+seq-fsync", dirs: true, run: func(_ string, fs []*os.File) error {
			if err := startWriteback(fs); err != nil {
				return err
			}
			return syncEach(fs, 1, unix.Fsync)
		}},
		fsyncStrategy{name: "sfr+par8-fsync", dirs: true, run: func(_ string, fs []*os.File) error {
			if err := startWriteback(fs); err != nil {
				return err
			}
			return syncEach(fs, 8, unix.Fsync)
		}},
		fsyncStrategy{name: "syncfs", run: syncFS},
		fsyncStrategy{name: "syncfs+bg-dd", background: true, run: syncFS},
		fsyncStrategy{name: "par8-fsync+bg-dd", background: true, dirs: true, run: func(_ string, fs []*os.File) error { return syncEach(fs, 8, unix.Fsync) }},
	)
	return ss
}

// syncEach calls syncFn (unix.Fsync or unix.Fdatasync) on every file from k goroutines.
func syncEach(files []*os.File, k int, syncFn func(int) error) error {
	if k == 1 {
		for _, f := range files {
			if err := syncFn(int(f.Fd())); err != nil {
				return fmt.Errorf("syncing %s: %w", f.Name(), err)
			}
		}
		return nil
	}
	next := make(chan *os.File)
	errs := make(chan error, k)
	var wg sync.WaitGroup
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var first error
			for f := range next {
				if err := syncFn(int(f.Fd())); err != nil && first == nil {
					first = fmt.Errorf("syncing %s: %w", f.Name(), err)
				}
			}
			errs <- first
		}()
	}
	for _, f := range files {
		next <- f
	}
	close(next)
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// startWriteback starts writeback of every file without waiting:
// sync_file_range(SYNC_FILE_RANGE_WRITE) over the whole file.
func startWriteback(files []*os.File) error {
	for _, f := range files {
		if err := unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE); err != nil {
			return fmt.Errorf("sync_file_range %s: %w", f.Name(), err)
		}
	}
	return nil
}

// syncFS flushes the whole file system holding root: one syncfs(2).
func syncFS(root string, _ []*os.File) error {
	d, err := os.Open(root)
	if err != nil {
		return err
	}
	defer d.Close() //nolint:errcheck // a directory opened read-only
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", root, err)
	}
	return nil
}

// fsyncTimes is one trial: the files' strategy, then the directory fsyncs.
type fsyncTimes struct {
	files, dirs time.Duration
}

// fsyncTrial writes n files of 4 KiB round-robin into d new directories
// under parent (after a sync(2), so nothing else is dirty), keeps them open
// and times st on them, then, if st needs it, one fsync per directory.
func fsyncTrial(parent string, n, d int, st fsyncStrategy, rng *rand.ChaCha8, logs io.Writer) (fsyncTimes, error) {
	root, err := os.MkdirTemp(parent, "trial-")
	if err != nil {
		return fsyncTimes{}, err
	}
	defer os.RemoveAll(root) //nolint:errcheck // best effort: scratch
	dirs := make([]string, d)
	for i := range dirs {
		dirs[i] = filepath.Join(root, fmt.Sprintf("d%03d", i))
		if err := os.Mkdir(dirs[i], 0o755); err != nil {
			return fsyncTimes{}, err
		}
	}
	syscall.Sync()
	var bg *exec.Cmd
	if st.background {
		bgFile := filepath.Join(parent, "bg-dd")
		bg = exec.Command("dd", "if=/dev/zero", "of="+bgFile, "bs=1M", "count=1024", "status=none")
		bg.Stderr = logs
		if err := bg.Start(); err != nil {
			return fsyncTimes{}, err
		}
		defer func() {
			_ = bg.Process.Kill() // it may have finished; then this fails harmlessly
			_ = bg.Wait()         // reaped; its exit status does not matter
			_ = os.Remove(bgFile) // best effort: scratch
		}()
		time.Sleep(time.Second) // let it dirty a few hundred MiB first
	}
	buf := make([]byte, 4096)
	files := make([]*os.File, 0, n)
	defer func() {
		for _, f := range files {
			_ = f.Close() // synced or abandoned; nothing to report
		}
	}()
	for i := range n {
		f, err := os.OpenFile(filepath.Join(dirs[i%d], fmt.Sprintf("f%05d", i)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fsyncTimes{}, err
		}
		files = append(files, f)
		_, _ = rng.Read(buf) // ChaCha8 never fails
		if _, err := f.Write(buf); err != nil {
			return fsyncTimes{}, err
		}
	}
	start := time.Now()
	if err := st.run(root, files); err != nil {
		return fsyncTimes{}, err
	}
	t := fsyncTimes{files: time.Since(start)}
	if st.dirs {
		start = time.Now()
		for _, dir := range dirs {
			if err := fsyncDir(dir); err != nil {
				return fsyncTimes{}, err
			}
		}
		t.dirs = time.Since(start)
	}
	return t, nil
}

func fsyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

// fsyncRow is one strategy at one N on one file system: medians over the
// repetitions.
type fsyncRow struct {
	Dir             string    `json:"dir"`
	FSType          string    `json:"fs_type"`
	Files           int       `json:"files"`
	Dirs            int       `json:"dirs"`
	Strategy        string    `json:"strategy"`
	Reps            int       `json:"reps"`
	TotalMs         float64   `json:"total_ms"` // files + directories
	FilesMs         float64   `json:"files_ms"`
	DirsMs          float64   `json:"dirs_ms"`
	MicrosPerFile   float64   `json:"us_per_file"` // total over files
	RatioToSeqFsync float64   `json:"ratio_to_seq_fsync"`
	SamplesMs       []float64 `json:"samples_ms"`
}

type fsyncResults struct {
	Date    string     `json:"date"`
	Machine machine    `json:"machine"`
	Load    []string   `json:"load"` // /proc/loadavg before and after
	Rows    []fsyncRow `json:"rows"`
}

// fsyncBench is `ferrybench fsync`: the group-commit fsync strategies of
// issue 9 on N files of 4 KiB, see doc.go.
func fsyncBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ferrybench fsync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dirList := fs.String("dirs", ".,"+os.TempDir(), "comma-separated `LIST` of directories whose file systems to measure (one per file system)")
	nList := fs.String("n", "100,1000,5000", "comma-separated `LIST` of file counts")
	d := fs.Int("d", 10, "directories the files are spread over")
	reps := fs.Int("reps", 3, "repetitions of each strategy; strategies interleave within a repetition")
	only := fs.String("strategies", "", "comma-separated `LIST` of strategies; empty runs all")
	out := fs.String("out", filepath.Join("bench", "fsync.json"), "results JSON file; empty skips")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var ns []int
	for _, s := range strings.Split(*nList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-n: bad count %q", s)
		}
		ns = append(ns, n)
	}
	if *d < 1 || *reps < 1 {
		return errors.New("-d and -reps must be at least 1")
	}
	strategies := fsyncStrategies()
	if *only != "" {
		want := strings.Split(*only, ",")
		strategies = slices.DeleteFunc(strategies, func(s fsyncStrategy) bool { return !slices.Contains(want, s.name) })
	}
	res := &fsyncResults{Date: time.Now().UTC().Format(time.RFC3339), Machine: thisMachine(), Load: []string{loadAvg()}}
	seen := map[uint64]bool{}
	rng := rand.NewChaCha8([32]byte{0: 'f', 1: 's'})
	for _, dir := range strings.Split(*dirList, ",") {
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil {
			return err
		}
		if seen[st.Dev] {
			fmt.Fprintf(stderr, "ferrybench: %s is on a file system already measured; skipped\n", dir)
			continue
		}
		seen[st.Dev] = true
		parent, err := os.MkdirTemp(dir, "ferrybench-fsync-")
		if err != nil {
			return err
		}
		abs, _ := filepath.Abs(dir)
		fsType := fsTypeOf(parent)
		for _, n := range ns {
			samples := make([][]fsyncTimes, len(strategies))
			for r := range *reps {
				for i, s := range strategies {
					if err := ctx.Err(); err != nil {
						_ = os.RemoveAll(parent) // best effort: scratch
						return err
					}
					t, err := fsyncTrial(parent, n, *d, s, rng, stderr)
					if err != nil {
						_ = os.RemoveAll(parent) // best effort: scratch
						return fmt.Errorf("%s n=%d %s: %w", dir, n, s.name, err)
					}
					samples[i] = append(samples[i], t)
					fmt.Fprintf(stderr, "ferrybench: fsync %s n=%d rep %d/%d %-18s files %8.1f ms dirs %6.1f ms\n",
						fsType, n, r+1, *reps, s.name, ms(t.files), ms(t.dirs))
				}
			}
			var seq float64
			for i, s := range strategies {
				row := fsyncRow{Dir: abs, FSType: fsType, Files: n, Dirs: *d, Strategy: s.name, Reps: *reps}
				var tot, fl, dl []float64
				for _, t := range samples[i] {
					tot = append(tot, ms(t.files+t.dirs))
					fl = append(fl, ms(t.files))
					dl = append(dl, ms(t.dirs))
					row.SamplesMs = append(row.SamplesMs, round3(ms(t.files+t.dirs)))
				}
				row.TotalMs, row.FilesMs, row.DirsMs = round3(median(tot)), round3(median(fl)), round3(median(dl))
				row.MicrosPerFile = round3(1000 * median(tot) / float64(n))
				if s.name == "seq-fsync" {
					seq = row.TotalMs
				}
				res.Rows = append(res.Rows, row)
			}
			for i := range res.Rows {
				if r := &res.Rows[i]; r.Files == n && r.Dir == abs && seq > 0 {
					r.RatioToSeqFsync = round3(r.TotalMs / seq)
				}
			}
		}
		_ = os.RemoveAll(parent) // best effort: scratch
	}
	res.Load = append(res.Load, loadAvg())
	printFsync(stdout, res)
	if *out == "" {
		return nil
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s\n", *out)
	return nil
}

func printFsync(w io.Writer, res *fsyncResults) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fs\tfiles\tdirs\tstrategy\ttotal ms\tfiles ms\tdir fsyncs ms\tus/file\tx seq-fsync\tsamples ms\t")
	for _, r := range res.Rows {
		var ss []string
		for _, x := range r.SamplesMs {
			ss = append(ss, fmt.Sprintf("%.0f", x))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.3f\t%s\t\n",
			r.FSType, r.Files, r.Dirs, r.Strategy, r.TotalMs, r.FilesMs, r.DirsMs, r.MicrosPerFile, r.RatioToSeqFsync, strings.Join(ss, " "))
	}
	_ = tw.Flush() // to the terminal
	fmt.Fprintf(w, "\nload average (1, 5, 15 min) before: %s; after: %s\n", res.Load[0], res.Load[len(res.Load)-1])
	// The fastest strategy that does not flush the whole file system, per
	// file system and N.
	type key struct {
		dir string
		n   int
	}
	best := map[key]fsyncRow{}
	var order []key
	for _, r := range res.Rows {
		if strings.HasPrefix(r.Strategy, "syncfs") || strings.Contains(r.Strategy, "+bg") {
			continue
		}
		k := key{r.Dir, r.Files}
		if b, ok := best[k]; !ok || r.TotalMs < b.TotalMs {
			if !ok {
				order = append(order, k)
			}
			best[k] = r
		}
	}
	for _, k := range order {
		b := best[k]
		fmt.Fprintf(w, "fastest per-file strategy on %s, %d files: %s, %.1f us/file (%.2fx seq-fsync)\n", b.FSType, k.n, b.Strategy, b.MicrosPerFile, b.RatioToSeqFsync)
	}
}

// fsTypeOf names the file system type of path from statfs(2)'s magic.
func fsTypeOf(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown"
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("0x%x", st.Type)
}
