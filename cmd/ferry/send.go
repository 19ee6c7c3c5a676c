package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/internal/bwlimit"
	"github.com/ferry-dev/ferry/internal/sizeflag"
	"github.com/ferry-dev/ferry/transfer"
)

// defaultPort is ferryd's registered-by-habit port.
const defaultPort = "7219"

func sendCommand(ctx context.Context, stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "send",
		Usage:     "send files and directories to a ferryd daemon",
		ArgsUsage: "PATH...",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "to", EnvVars: []string{"FERRY_TO"}, Usage: "daemon address `ADDR`: HOST[:PORT] (default port 7219) or unix:/path"},
			&cli.StringFlag{Name: "dest", EnvVars: []string{"FERRY_DEST"}, Usage: "remote directory `DIR`, relative to the daemon's root (default: the root)"},
			&cli.IntFlag{Name: "retries", Value: 10, EnvVars: []string{"FERRY_RETRIES"}, Usage: "reconnect-and-resume attempts in a row that make no progress, with exponential backoff"},
			&cli.DurationFlag{Name: "backoff", Value: 500 * time.Millisecond, EnvVars: []string{"FERRY_BACKOFF"}, Usage: "wait before the first retry; doubles each retry up to 30s, jitter included"},
			&cli.DurationFlag{Name: "timeout", Value: 60 * time.Second, EnvVars: []string{"FERRY_TIMEOUT"}, Usage: "bound on every wait for the daemon (connect, each write, any silence); above 0"},
			sizeflag.Flag("chunk-size", transfer.DefaultChunkSize, "FERRY_CHUNK_SIZE", "chunk `SIZE` to propose, a power of two from 16KiB to 16MiB (the daemon may lower it)"),
			&cli.IntFlag{Name: "window", Value: transfer.DefaultWindowFiles, EnvVars: []string{"FERRY_WINDOW"}, Usage: "files in flight on the session, 1..1024 (1: one file after another)"},
			sizeflag.RateFlag("bwlimit", 0, "FERRY_BWLIMIT", "send at most `RATE` (bytes/s, e.g. 50MiB) for the whole run (0: no limit)"),
			&cli.BoolFlag{Name: "checksum", EnvVars: []string{"FERRY_CHECKSUM"}, Usage: "tell a file already on the daemon by its BLAKE3 (read and hashed here), not by size and mtime"},
			&cli.BoolFlag{Name: "links", EnvVars: []string{"FERRY_LINKS"}, Usage: "recreate symbolic links whose target stays inside the sent tree (others are skipped with a warning)"},
			&cli.BoolFlag{Name: "update", EnvVars: []string{"FERRY_UPDATE"}, Usage: "replace a file already on the daemon with other content, atomically, instead of refusing it"},
			&cli.StringFlag{Name: "token", EnvVars: []string{"FERRY_TOKEN"}, Usage: "`SECRET` the daemon authenticates this sender by (from ferryd token add; prefer --token-file: a command line is visible to other users)"},
			&cli.StringFlag{Name: "token-file", EnvVars: []string{"FERRY_TOKEN_FILE"}, Usage: "read the token's secret from the first line of `FILE`"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, EnvVars: []string{"FERRY_QUIET"}, Usage: "print only errors"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, EnvVars: []string{"FERRY_VERBOSE"}, Usage: "print a line per file with its outcome"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"FERRY_JSON"}, Usage: "print one JSON object per file on stdout as it settles, then a summary object"},
		}, identityFlags()...),
		Action: func(c *cli.Context) error {
			s, err := newSender(c, stdout, stderr)
			if err != nil {
				return err
			}
			return s.sendAll(ctx, c.Args().Slice(), c.String("dest"))
		},
	}
}

// sender sends files through one transfer.Sender and reports each on
// stderr and, with --json, on stdout.
type sender struct {
	engine               *transfer.Sender
	addr                 string // as the user typed it, for messages
	quiet, json, verbose bool
	links                bool // --links
	stdout               io.Writer
	jsonOut              *lineBatcher // stdout's buffer with --json, else nil
	stderr               io.Writer
	bars                 bool
	locals               sync.Map // remote name → local path, for retry lines
	overall              *overall // the run's progress, and its bar
	single               bool     // the run names one regular file
	outMu                sync.Mutex
	knownHosts           string    // the known-hosts file in use; "" if none
	identityOnce         sync.Once // a key mismatch is reported once per run
}

func newSender(c *cli.Context, stdout, stderr io.Writer) (*sender, error) {
	if c.NArg() == 0 {
		return nil, fmt.Errorf("%w: ferry send needs at least one PATH", errUsage)
	}
	network, addr, err := parseTo(c.String("to"))
	if err != nil {
		return nil, err
	}
	if c.Int("retries") < 0 {
		return nil, fmt.Errorf("%w: --retries must be 0 or more", errUsage)
	}
	cs := sizeflag.Get(c, "chunk-size")
	if cs > math.MaxInt32 || transfer.CheckChunkSize(int(cs)) != nil {
		return nil, fmt.Errorf("%w: --chunk-size %s is not a power of two from %s to %s", errUsage, sizeflag.Format(cs),
			sizeflag.Format(transfer.MinChunkSize), sizeflag.Format(transfer.MaxChunkSize))
	}
	if w := c.Int("window"); w < 1 || w > transfer.MaxWindowFiles {
		return nil, fmt.Errorf("%w: --window %d is outside 1..%d", errUsage, w, transfer.MaxWindowFiles)
	}
	if c.Duration("timeout") <= 0 || c.Duration("backoff") < 0 {
		return nil, fmt.Errorf("%w: --timeout must be above 0 and --backoff 0 or more", errUsage)
	}
	token, err := readToken(c)
	if err != nil {
		return nil, err
	}
	s := &sender{
		addr: addr, quiet: c.Bool("quiet"), json: c.Bool("json"), verbose: c.Bool("verbose"), links: c.Bool("links"),
		stdout: stdout, stderr: stderr,
	}
	if s.json {
		s.jsonOut = newLineBatcher(stdout)
		s.stdout = s.jsonOut
	}
	s.engine = &transfer.Sender{
		Network: network, Addr: addr,
		ChunkSize: int(cs), Agent: "ferry/" + version,
		Retries: c.Int("retries"), Backoff: c.Duration("backoff"), Timeout: c.Duration("timeout"),
		Window: c.Int("window"), Checksum: c.Bool("checksum"), Update: c.Bool("update"),
		Token:   token,
		OnRetry: s.retrying,
	}
	if network == "tcp" {
		if s.engine.TLS, err = s.tlsOptions(c); err != nil {
			return nil, err
		}
	}
	if bw := sizeflag.Get(c, "bwlimit"); bw > 0 {
		if float64(bw)*s.engine.Timeout.Seconds() < float64(cs) {
			return nil, fmt.Errorf("%w: --bwlimit %s cannot send a %s chunk within --timeout %v; raise either",
				errUsage, sizeflag.Format(bw), sizeflag.Format(cs), s.engine.Timeout)
		}
		s.engine.Dial = limitedDial(bw, int(cs), s.engine.Timeout)
	}
	if s.engine.Backoff == 0 {
		s.engine.Backoff = time.Nanosecond // --backoff 0: retry at once
	}
	s.bars = !s.quiet && isTerminal(stderr)
	return s, nil
}

// limitedDial returns a Sender.Dial whose connections share one token
// bucket of bytesPerSec (--bwlimit is per run, across reconnects), with a
// burst of one chunk; it dials as the Sender's default does.
func limitedDial(bytesPerSec int64, chunk int, timeout time.Duration) func(context.Context, string, string) (net.Conn, error) {
	lim := bwlimit.NewLimiter(bytesPerSec, chunk)
	d := net.Dialer{Timeout: timeout, KeepAlive: 15 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return bwlimit.Writes(conn, lim), nil
	}
}

// parseTo turns --to into a dialable address, adding the default port.
func parseTo(to string) (network, addr string, err error) {
	if to == "" {
		return "", "", fmt.Errorf("%w: --to HOST[:PORT] (or FERRY_TO) is required", errUsage)
	}
	if p, ok := strings.CutPrefix(to, "unix:"); ok {
		return "unix", p, nil
	}
	if _, _, err := net.SplitHostPort(to); err == nil {
		return "tcp", to, nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(to, "["), "]")
	if host == "" || strings.ContainsAny(host, "[]/ ") {
		return "", "", fmt.Errorf("%w: --to %q: want HOST[:PORT]", errUsage, to)
	}
	return "tcp", net.JoinHostPort(host, defaultPort), nil
}

// file is one local file, as the walk found it, and its name on the
// daemon.
type file struct {
	local  string // for messages and --json "path"; never opened by name
	remote string
	entry  entry // opened with an entryOpener, which refuses a swapped file
}

// record is the --json object for one file.
type record struct {
	// Path is the local path; Remote the name on the daemon. A name
	// that is not valid UTF-8 (which JSON cannot carry) is written with
	// each invalid byte escaped as \xNN, and its raw bytes, base64
	// (standard, padded), go in PathB64 or RemoteB64, so that a script
	// gets the exact name back.
	Path             string  `json:"path"`
	PathB64          string  `json:"path_b64,omitempty"`
	Remote           string  `json:"remote"`
	RemoteB64        string  `json:"remote_b64,omitempty"`
	Size             int64   `json:"size"`
	ResumedFrom      int64   `json:"resumed_from"`
	SentBytes        int64   `json:"sent_bytes"`
	TotalSentBytes   int64   `json:"total_sent_bytes"`
	Attempts         int     `json:"attempts"`
	Restarted        bool    `json:"restarted"`
	AlreadyCommitted bool    `json:"already_committed"`
	BLAKE3           *string `json:"blake3,omitempty"` // "" for a file found unchanged by size and mtime, which nobody hashed
	Seconds          float64 `json:"seconds"`
	// Status is the file's outcome: statusCommitted, statusUnchanged,
	// statusSkipped, statusRefused or statusFailed.
	Status string `json:"status"`
	// Reason says why a file was not committed; empty when it was (or
	// was already there).
	Reason string `json:"reason,omitempty"`
	// Type is "symlink" for a symbolic link (sent with --links, Target
	// its text) and "directory" for a directory whose mode and mtime
	// could not be set; empty for a file.
	Type   string `json:"type,omitempty"`
	Target string `json:"target,omitempty"`
	// Error repeats Reason for scripts written before it existed.
	Error string `json:"error,omitempty"`
}

// The outcomes of a file, as --json "status" names them.
const (
	statusCommitted = "committed" // sent and committed by this run
	statusUnchanged = "unchanged" // already on the daemon, confirmed by BLAKE3; nothing sent
	statusSkipped   = "skipped"   // not a regular file (or a looped directory): not sent, by design
	statusRefused   = "refused"   // refused by the daemon (exit 3)
	statusFailed    = "failed"    // anything else that kept it from being committed
)

// statusOf is the outcome of a file that settled with err.
func statusOf(rep transfer.Report, err error) string {
	switch {
	case err == nil && rep.AlreadyCommitted:
		return statusUnchanged
	case err == nil:
		return statusCommitted
	case exitCode(err) == exitRefused:
		return statusRefused
	}
	return statusFailed
}

// summary is the --json object that ends a run, and the numbers of the
// summary line on stderr.
type summary struct {
	Summary   bool    `json:"summary"` // always true: tells this object from a file's
	Committed int     `json:"committed"`
	Unchanged int     `json:"unchanged"`
	Skipped   int     `json:"skipped"`
	Refused   int     `json:"refused"`
	Failed    int     `json:"failed"`
	Files     int     `json:"files"`      // records printed, summary excluded
	Bytes     int64   `json:"bytes"`      // total size of those files
	SentBytes int64   `json:"sent_bytes"` // chunk data bytes sent, over all attempts
	Seconds   float64 `json:"seconds"`    // the run's duration
	Rate      float64 `json:"rate"`       // SentBytes per second
}

// add counts rec in the summary.
func (sum *summary) add(rec record) {
	sum.Summary = true
	switch rec.Status {
	case statusCommitted:
		sum.Committed++
	case statusUnchanged:
		sum.Unchanged++
	case statusSkipped:
		sum.Skipped++
	case statusRefused:
		sum.Refused++
	default:
		sum.Failed++
	}
	sum.Files++
	sum.Bytes += rec.Size
	sum.SentBytes += rec.TotalSentBytes
}

// end sets the run's duration, took, and the rate.
func (sum *summary) end(took time.Duration) {
	sum.Summary = true
	sum.Seconds = took.Seconds()
	sum.Rate = float64(sum.SentBytes) / max(sum.Seconds, 1e-9)
}

// line is the summary line on stderr.
func (sum *summary) line() string {
	files := "files"
	if sum.Files == 1 {
		files = "file"
	}
	return fmt.Sprintf("ferry: %d %s: %d committed, %d unchanged, %d skipped, %d refused, %d failed; %s of %s sent in %.1fs (%s/s)\n",
		sum.Files, files, sum.Committed, sum.Unchanged, sum.Skipped, sum.Refused, sum.Failed,
		human(sum.SentBytes), human(sum.Bytes), sum.Seconds, human(int64(sum.Rate)))
}

// sendAll walks paths (walk.go) and sends each file as the walk finds it,
// so that memory stays flat however many files there are. A refusal, or a
// failure of the file itself (unreadable, replaced, keeps changing),
// skips to the next file; a failure that retries could not fix stops the
// run, as the next file would meet it too. What the walk cannot send is
// reported and counts as a failure, except files skipped by design
// (symlinks, devices). The exit code is the worst seen.
//
// Output: a line per file that was not committed (skipped ones unless
// --quiet), and with --verbose a line per committed or unchanged file too;
// a run that names one regular file prints its line whatever the flags,
// as before trees existed. With --json, a record per file on stdout and a
// summary record at the end; without it, a run of more than one file ends
// with a summary line on stderr (not with --quiet). The bar, on a
// terminal, shows the whole run.
func (s *sender) sendAll(ctx context.Context, paths []string, dest string) error {
	defer s.engine.Close() //nolint:errcheck // every result is in; the session holds nothing more
	defer s.flushJSON()    //nolint:errcheck // on the paths without a summary; that one checks it
	for _, p := range paths {
		if _, err := resolvePath(p); err != nil {
			return err // before the bar: nothing is sent
		}
	}
	if len(paths) == 1 {
		if fi, err := os.Stat(paths[0]); err == nil && fi.Mode().IsRegular() {
			s.single = true
		}
	}
	var barOut io.Writer
	if s.bars {
		barOut = s.stderr
	}
	s.overall = newOverall(barOut, 0)
	var mu sync.Mutex // worst and sum, shared by the walk and the engine
	var worst error
	var sum summary
	note := func(err error) {
		if worst == nil || exitCode(err) > exitCode(worst) {
			worst = err
		}
	}
	// The walk runs in its own goroutine and feeds the engine's window
	// one entry at a time: memory stays flat however many files there are.
	wctx, stopWalk := context.WithCancel(ctx)
	defer stopWalk()
	entries := make(chan file, 64)
	walkErr := make(chan error, 1)
	visit := func(e entry) error {
		s.overall.foundFile(e.Size)
		select {
		case entries <- file{local: e.Local, remote: e.Remote, entry: e}:
			return nil
		case <-wctx.Done():
			return errStopWalk
		}
	}
	warn := func(path string, err error) {
		mu.Lock()
		defer mu.Unlock()
		notice := errors.Is(err, errNotRegular) || errors.Is(err, errLoop)
		if !notice || !s.quiet {
			s.printf("ferry: %s: %s\n", escapeName(path), oneLine(err))
		}
		rec := record{Path: path, Status: statusFailed, Reason: oneLine(err)}
		if notice {
			rec.Status = statusSkipped
		}
		rec.Error = rec.Reason
		sum.add(rec)
		s.overall.notSent()
		if werr := s.emit(rec); werr != nil {
			note(werr)
		}
		if !notice {
			note(fmt.Errorf("%w: %w", errReported, err))
		}
	}
	go func() {
		defer close(entries)
		defer s.overall.walkDone()
		walkErr <- walkFiles(wctx, paths, dest, s.links, visit, warn)
	}()
	s.overall.startBar()
	opener := newEntryOpener()
	defer opener.Close() //nolint:errcheck // a read-only directory handle
	started := make(map[string]time.Time)
	progs := make(map[string]*fileProgress)
	next := func() (transfer.File, bool) {
		f, ok := <-entries
		if !ok {
			return transfer.File{}, false
		}
		fp := s.newFileProgress(f)
		s.locals.Store(f.remote, f.local)
		mu.Lock()
		started[f.remote] = time.Now()
		progs[f.remote] = fp
		mu.Unlock()
		return transfer.File{Name: f.remote, Path: f.local, Progress: fp.update,
			Open: func() (*os.File, error) { return opener.open(f.entry) }}, true
	}
	stopped := false
	done := func(tf transfer.File, rep transfer.Report, err error) {
		mu.Lock()
		defer mu.Unlock()
		fp := progs[tf.Name]
		delete(progs, tf.Name)
		start := started[tf.Name]
		delete(started, tf.Name)
		s.locals.Delete(tf.Name)
		fp.finish()
		rec, rerr := s.report(fp.f, rep, err, time.Since(start))
		sum.add(rec)
		if rerr != nil {
			note(rerr)
			if exitCode(rerr) != exitRefused && !perFile(rerr) && !stopped {
				stopped = true
				stopWalk() // a failure that retries could not fix: the next file would meet it too
			}
		}
	}
	err := s.engine.SendAll(ctx, next, done)
	stopWalk()
	for range entries { // the walk closes entries on every exit
	}
	werr := <-walkErr
	if err == nil && werr == nil && !stopped && ctx.Err() == nil {
		// Every file settled: directories get their mode and mtime now,
		// after everything in them was made, and links are made.
		if eerr := s.sendEntries(ctx, paths, dest, &mu, &sum, note); eerr != nil {
			mu.Lock()
			note(eerr)
			mu.Unlock()
		}
	}
	s.overall.finish()
	mu.Lock()
	defer mu.Unlock()
	if err != nil && !errors.Is(err, transfer.ErrInvalidConfig) {
		note(err)
	}
	switch {
	case werr == nil, errors.Is(werr, errStopWalk), errors.Is(werr, context.Canceled) && ctx.Err() == nil:
	case ctx.Err() != nil:
		note(fmt.Errorf("interrupted: %w", ctx.Err()))
	default:
		return werr // a usage error, found before anything was sent
	}
	sum.end(time.Since(s.overall.start))
	if s.json {
		b, _ := json.Marshal(sum) // numbers only
		if _, err := fmt.Fprintf(s.stdout, "%s\n", b); err != nil {
			note(fmt.Errorf("writing --json summary: %w", err))
		} else if err := s.flushJSON(); err != nil {
			note(fmt.Errorf("writing --json records: %w", err))
		}
	} else if !s.quiet && !s.single {
		s.printf("%s", sum.line())
	}
	return worst
}

// sendEntries walks paths again (walkEntries) and has the daemon make
// each directory, with its mode and mtime, after all it holds, and with
// --links each symlink kept. A symlink's outcome gets a record like a
// file's; a directory's only when it fails. It returns the failure that
// retries could not fix (already reported per entry), or nil.
func (s *sender) sendEntries(ctx context.Context, paths []string, dest string, mu *sync.Mutex, sum *summary, note func(error)) error {
	var batch []*transfer.Entry
	ents := make(map[*transfer.Entry]entry)
	unsupported := false
	done := func(te *transfer.Entry, err error) {
		e := ents[te]
		delete(ents, te)
		if errors.Is(err, transfer.ErrEntriesUnsupported) {
			unsupported = true
			return
		}
		mu.Lock()
		defer mu.Unlock()
		rec := record{Path: e.Local, Remote: e.Remote, Type: "directory", Status: statusCommitted}
		if e.Kind == kindSymlink {
			rec.Type, rec.Target = "symlink", e.Target
		}
		if err == nil {
			if e.Kind == kindSymlink {
				sum.add(rec)
				if s.verbose && !s.quiet {
					s.printf("ferry: linked %s → %s (to %s)\n", escapeName(e.Local), transfer.QuoteName(e.Remote), escapeName(e.Target))
				}
				if werr := s.emit(rec); werr != nil {
					note(werr)
				}
			}
			return
		}
		rec.Status = statusOf(transfer.Report{}, err)
		rec.Reason = oneLine(err)
		rec.Error = rec.Reason
		s.printf("ferry: %s: %s\n", escapeName(e.Local), s.describe(err))
		sum.add(rec)
		_ = s.emit(rec) // the entry's error is the one to report
		note(fmt.Errorf("%w: %w", errReported, err))
	}
	flush := func() error {
		if len(batch) == 0 || unsupported {
			return nil
		}
		err := s.engine.SendEntries(ctx, batch, done)
		batch = batch[:0]
		if errors.Is(err, transfer.ErrEntriesUnsupported) {
			if !s.quiet {
				s.printf("ferry: %s\n", oneLine(err))
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", errReported, err)
		}
		return nil
	}
	err := walkEntries(ctx, paths, dest, s.links, func(e entry) error {
		te := &transfer.Entry{Kind: transfer.EntryDir, Mode: uint32(e.Mode.Perm()), MtimeNs: e.ModTime.UnixNano(), Name: e.Remote}
		if e.Kind == kindSymlink {
			te.Kind, te.Mode, te.MtimeNs, te.Target = transfer.EntrySymlink, 0, 0, e.Target
		}
		ents[te] = e
		batch = append(batch, te)
		if len(batch) == transfer.MaxEntryBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return err
}

// errStopWalk ends the walk after a failure that the next file would meet
// too; the failure itself is already noted.
var errStopWalk = errors.New("stop")

// perFile reports whether err concerns one file only, so the run goes on.
func perFile(err error) bool {
	return errors.Is(err, transfer.ErrSourceUnreadable) || errors.Is(err, transfer.ErrKeepsChanging) ||
		errors.Is(err, transfer.ErrSourceChanged)
}

// report prints how a file settled on stderr and, with --json, on stdout;
// it returns the file's record and the error to count in the exit code.
func (s *sender) report(f file, rep transfer.Report, err error, took time.Duration) (record, error) {
	rec := record{
		Path: f.local, Remote: f.remote, Size: rep.Size,
		ResumedFrom: rep.ResumedFrom, SentBytes: rep.SentBytes, TotalSentBytes: rep.TotalSentBytes,
		Attempts: rep.Attempts, Restarted: rep.Restarted, AlreadyCommitted: rep.AlreadyCommitted,
		Seconds: took.Seconds(), Status: statusOf(rep, err),
	}
	if err != nil {
		rec.Reason = oneLine(err)
		rec.Error = rec.Reason
		if errors.Is(err, transfer.ErrIdentity) {
			// The run's failure, not the file's: one line per run.
			s.identityOnce.Do(func() { s.printf("%s", s.identityLine(err)) })
		} else {
			s.printf("ferry: %s: %s%s\n", escapeName(f.local), s.describe(err), s.advice(err, rep))
		}
		_ = s.emit(rec) // the transfer's error is the one to report
		return rec, fmt.Errorf("%w: %w", errReported, err)
	}
	var b3 string
	if !rep.Unchanged {
		b3 = hex.EncodeToString(rep.Hash[:])
	}
	rec.BLAKE3 = &b3
	switch {
	case s.quiet:
	case rep.Unchanged && (s.single || s.verbose): // same size and mtime on the daemon: not read on either side
		s.printf("ferry: %s is already on the daemon as %s, unchanged (%s, same size and mtime)\n",
			escapeName(f.local), transfer.QuoteName(f.remote), human(rep.Size))
	case rep.AlreadyCommitted && (s.single || s.verbose): // a notice, printed with --json too, like the resume notice
		s.printf("ferry: %s is already on the daemon as %s, unchanged (%s, blake3 %s)\n",
			escapeName(f.local), transfer.QuoteName(f.remote), human(rep.Size), b3)
	case rep.AlreadyCommitted:
	case s.verbose, s.single && !s.json:
		rate := float64(rep.Size-rep.ResumedFrom) / max(rec.Seconds, 1e-9)
		s.printf("ferry: sent %s → %s: %s in %.1fs (%s/s) blake3 %s\n",
			escapeName(f.local), transfer.QuoteName(f.remote), human(rep.Size), rec.Seconds, human(int64(rate)), b3)
	}
	return rec, s.emit(rec)
}

// printf prints a line on stderr, over the bar's line if one is drawn
// (pb draws it again on its next tick).
func (s *sender) printf(format string, args ...any) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	if s.bars {
		fmt.Fprint(s.stderr, "\r\x1b[K")
	}
	fmt.Fprintf(s.stderr, format, args...)
}

// retrying reports a failed attempt that the engine is about to retry.
func (s *sender) retrying(e transfer.RetryEvent) {
	if !s.quiet {
		s.printf("ferry: %s: %s; retrying in %.1fs (retry %d of %d without progress)\n",
			escapeName(s.local(e.Name)), oneLine(e.Err), e.Wait.Seconds(), e.Failures, e.Retries)
	}
}

// local returns the local path of the file sent as remote.
func (s *sender) local(remote string) string {
	if l, ok := s.locals.Load(remote); ok {
		return l.(string)
	}
	return remote
}

// flushJSON writes the --json records still buffered.
func (s *sender) flushJSON() error {
	if s.jsonOut == nil {
		return nil
	}
	return s.jsonOut.Flush()
}

// emit writes rec to stdout as a --json line, if asked to. A record that
// cannot be written fails the run: it is the result.
func (s *sender) emit(rec record) error {
	if !s.json {
		return nil
	}
	rec.Path, rec.PathB64 = jsonName(rec.Path)
	rec.Remote, rec.RemoteB64 = jsonName(rec.Remote)
	b, _ := json.Marshal(rec) // a record of strings and numbers always encodes
	if _, err := fmt.Fprintf(s.stdout, "%s\n", b); err != nil {
		return fmt.Errorf("writing --json record: %w", err)
	}
	return nil
}

// jsonName returns name as a --json record shows it: unchanged with no
// base64 when it is valid UTF-8; otherwise with each invalid byte written
// as \xNN (and a backslash as \\, so that the form is unambiguous) and
// the raw bytes in standard base64, which json.Marshal would otherwise
// lose (it turns invalid bytes into U+FFFD).
func jsonName(name string) (shown, b64 string) {
	if utf8.ValidString(name) {
		return name, ""
	}
	var b strings.Builder
	for i := 0; i < len(name); {
		r, n := utf8.DecodeRuneInString(name[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", name[i])
		case r == '\\':
			b.WriteString("\\\\")
		default:
			b.WriteString(name[i : i+n])
		}
		i += n
	}
	return b.String(), base64.StdEncoding.EncodeToString([]byte(name))
}

// describe is the one-line reason a file failed.
func (s *sender) describe(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.Is(err, transfer.ErrSourceUnreadable):
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return "cannot be read: " + oneLine(pe.Err)
		}
		return "cannot be read: " + strings.TrimPrefix(oneLine(err), transfer.ErrSourceUnreadable.Error()+": ")
	}
	return oneLine(err)
}

// advice adds what to do about an error, for the one-line message. Resume
// advice appears only when the daemon holds a partial to resume.
func (s *sender) advice(err error, rep transfer.Report) string {
	partial := ""
	if rep.DurableOffset > 0 {
		partial = fmt.Sprintf("; the daemon keeps %s of %s, run the same command again to resume", human(rep.DurableOffset), human(rep.Size))
	}
	switch {
	case errors.Is(err, context.Canceled):
		return partial
	case errors.Is(err, transfer.ErrExists), errors.Is(err, transfer.ErrSourceUnreadable),
		errors.Is(err, transfer.ErrKeepsChanging):
		return ""
	case errors.Is(err, transfer.ErrIntegrity):
		return " (data was corrupted in transit or on the daemon's disk; check the link and the daemon's storage)"
	case errors.Is(err, transfer.ErrNotFerry):
		return fmt.Sprintf(" (is %s the address of a ferryd daemon?)", s.addr)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT) && strings.Contains(err.Error(), "connecting to"):
		return fmt.Sprintf(" (is ferryd running on %s?)%s", s.addr, partial)
	case exitCode(err) == exitFailed:
		return partial
	}
	return ""
}

// human formats a byte count in IEC units, as the progress bar does.
func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// readToken returns the secret of --token, or the first line of
// --token-file with surrounding white space trimmed; "" without either.
// Both, an unreadable file or an empty secret are usage errors.
func readToken(c *cli.Context) (string, error) {
	tok, file := c.String("token"), c.String("token-file")
	switch {
	case tok != "" && file != "":
		return "", fmt.Errorf("%w: give --token or --token-file, not both", errUsage)
	case file == "":
		return strings.TrimSpace(tok), nil
	}
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("%w: --token-file: %w", errUsage, err)
	}
	defer f.Close() //nolint:errcheck // read only
	line, err := bufio.NewReader(io.LimitReader(f, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("%w: --token-file: %w", errUsage, err)
	}
	tok = strings.TrimSpace(line)
	if tok == "" {
		return "", fmt.Errorf("%w: --token-file %s: the first line is empty", errUsage, file)
	}
	if len(tok) > transfer.MaxTokenLen {
		return "", fmt.Errorf("%w: --token-file %s: a secret is at most %d bytes", errUsage, file, transfer.MaxTokenLen)
	}
	return tok, nil
}
