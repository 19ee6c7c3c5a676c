package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/transfer"
)

// defaultPort is ferryd's registered-by-habit port.
const defaultPort = "7219"

func sendCommand(ctx context.Context, stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "send",
		Usage:     "send files and directories to a ferryd daemon",
		ArgsUsage: "PATH...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", EnvVars: []string{"FERRY_TO"}, Usage: "daemon address HOST[:PORT] (default port 7219) or unix:/path"},
			&cli.StringFlag{Name: "dest", EnvVars: []string{"FERRY_DEST"}, Usage: "remote directory, relative to the daemon's root (default: the root)"},
			&cli.IntFlag{Name: "retries", Value: 10, EnvVars: []string{"FERRY_RETRIES"}, Usage: "reconnect-and-resume attempts in a row that make no progress, with exponential backoff"},
			&cli.DurationFlag{Name: "backoff", Value: 500 * time.Millisecond, EnvVars: []string{"FERRY_BACKOFF"}, Usage: "wait before the first retry; doubles each retry up to 30s, jitter included"},
			&cli.DurationFlag{Name: "timeout", Value: 60 * time.Second, EnvVars: []string{"FERRY_TIMEOUT"}, Usage: "bound on every wait for the daemon (connect, each write, any silence); above 0"},
			&cli.IntFlag{Name: "chunk-size", Value: transfer.DefaultChunkSize, EnvVars: []string{"FERRY_CHUNK_SIZE"}, Usage: "chunk size in bytes to propose, 4096..16777216 (the daemon may lower it)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, EnvVars: []string{"FERRY_QUIET"}, Usage: "print only errors"},
			&cli.BoolFlag{Name: "json", EnvVars: []string{"FERRY_JSON"}, Usage: "print one JSON object per file on stdout"},
		},
		Action: func(c *cli.Context) error {
			s, files, err := newSender(c, stdout, stderr)
			if err != nil {
				return err
			}
			return s.sendAll(ctx, files)
		},
	}
}

// sender sends files one after another through one transfer.Sender and
// reports each on stderr and, with --json, on stdout.
type sender struct {
	engine      *transfer.Sender
	addr        string // as the user typed it, for messages
	quiet, json bool
	stdout      io.Writer
	stderr      io.Writer
	bars        bool
	bar         *progressBar // of the file being sent
}

func newSender(c *cli.Context, stdout, stderr io.Writer) (*sender, []file, error) {
	if c.NArg() == 0 {
		return nil, nil, fmt.Errorf("%w: ferry send needs at least one PATH", errUsage)
	}
	network, addr, err := parseTo(c.String("to"))
	if err != nil {
		return nil, nil, err
	}
	if c.Int("retries") < 0 {
		return nil, nil, fmt.Errorf("%w: --retries must be 0 or more", errUsage)
	}
	if cs := c.Int("chunk-size"); cs < transfer.MinChunkSize || cs > transfer.MaxChunkSize {
		return nil, nil, fmt.Errorf("%w: --chunk-size %d is outside %d..%d", errUsage, cs, transfer.MinChunkSize, transfer.MaxChunkSize)
	}
	if c.Duration("timeout") <= 0 || c.Duration("backoff") < 0 {
		return nil, nil, fmt.Errorf("%w: --timeout must be above 0 and --backoff 0 or more", errUsage)
	}
	files, err := collect(c.Args().Slice(), c.String("dest"))
	if err != nil {
		return nil, nil, err
	}
	s := &sender{
		addr: addr, quiet: c.Bool("quiet"), json: c.Bool("json"),
		stdout: stdout, stderr: stderr,
	}
	s.engine = &transfer.Sender{
		Network: network, Addr: addr,
		ChunkSize: c.Int("chunk-size"), Agent: "ferry/" + version,
		Retries: c.Int("retries"), Backoff: c.Duration("backoff"), Timeout: c.Duration("timeout"),
		OnRetry: s.retrying,
	}
	if s.engine.Backoff == 0 {
		s.engine.Backoff = time.Nanosecond // --backoff 0: retry at once
	}
	s.bars = !s.quiet && isTerminal(stderr)
	return s, files, nil
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

// file is one local file and its name on the daemon.
type file struct {
	local  string
	remote string
}

// collect expands PATHs: a file is sent under dest by its base name, a
// directory as a tree under dest/its base name. Only regular files are
// sent; other types inside a directory are skipped with a notice.
func collect(paths []string, dest string) ([]file, error) {
	var files []file
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		base := filepath.Base(filepath.Clean(p))
		switch {
		case fi.Mode().IsRegular():
			files = append(files, file{local: p, remote: remoteName(dest, base)})
		case fi.IsDir():
			tree, err := walk(p, remoteName(dest, base))
			if err != nil {
				return nil, err
			}
			files = append(files, tree...)
		default:
			return nil, fmt.Errorf("%w: %s is not a regular file or directory", errUsage, p)
		}
	}
	return files, nil
}

func walk(dir, remoteDir string) ([]file, error) {
	var files []file
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		files = append(files, file{local: p, remote: path.Join(remoteDir, filepath.ToSlash(rel))})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	return files, nil
}

// remoteName puts base under dest exactly as typed: the daemon, not the
// sender, judges names, so nothing is cleaned away here.
func remoteName(dest, base string) string {
	d := dest
	for len(d) > 1 && strings.HasSuffix(d, "/") {
		d = d[:len(d)-1]
	}
	switch d {
	case "":
		return base
	case "/":
		return "/" + base
	}
	return d + "/" + base
}

// record is the --json object for one file.
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
	BLAKE3           string  `json:"blake3,omitempty"`
	Seconds          float64 `json:"seconds"`
	Status           string  `json:"status"`
	Error            string  `json:"error,omitempty"`
}

// sendAll sends every file. A refusal, or a failure of the file itself
// (unreadable, keeps changing), skips to the next file; a failure that
// retries could not fix stops the run, as the next file would meet it
// too. The exit code is the worst seen.
func (s *sender) sendAll(ctx context.Context, files []file) error {
	defer s.engine.Close() //nolint:errcheck // every result is in; the session holds nothing more
	var worst error
	for _, f := range files {
		err := s.sendFile(ctx, f)
		if err == nil {
			continue
		}
		if worst == nil || exitCode(err) > exitCode(worst) {
			worst = err
		}
		if exitCode(err) != exitRefused && !perFile(err) {
			break
		}
	}
	return worst
}

// perFile reports whether err concerns one file only, so the run goes on.
func perFile(err error) bool {
	return errors.Is(err, transfer.ErrSourceUnreadable) || errors.Is(err, transfer.ErrKeepsChanging) ||
		errors.Is(err, transfer.ErrSourceChanged)
}

func (s *sender) sendFile(ctx context.Context, f file) error {
	start := time.Now()
	s.bar = s.newBar(f)
	rep, err := s.engine.Send(ctx, transfer.File{Name: f.remote, Path: f.local, Progress: s.bar.update})
	s.bar.finish(err == nil)
	rec := record{
		Path: f.local, Remote: f.remote, Size: rep.Size,
		ResumedFrom: rep.ResumedFrom, SentBytes: rep.SentBytes, TotalSentBytes: rep.TotalSentBytes,
		Attempts: rep.Attempts, Restarted: rep.Restarted, AlreadyCommitted: rep.AlreadyCommitted,
		Seconds: time.Since(start).Seconds(),
	}
	if err != nil {
		rec.Status, rec.Error = "failed", oneLine(err)
		fmt.Fprintf(s.stderr, "ferry: %s: %s%s\n", f.local, s.describe(err), s.advice(err, rep))
		_ = s.emit(rec) // the transfer's error is the one to report
		return fmt.Errorf("%w: %w", errReported, err)
	}
	rec.Status, rec.BLAKE3 = "committed", hex.EncodeToString(rep.Hash[:])
	switch {
	case s.quiet:
	case rep.AlreadyCommitted: // a notice, printed with --json too, like the resume notice
		fmt.Fprintf(s.stderr, "ferry: %s is already on the daemon as %s, unchanged (%s, blake3 %s)\n",
			f.local, transfer.QuoteName(f.remote), human(rep.Size), rec.BLAKE3)
	case s.json:
	default:
		rate := float64(rep.Size-rep.ResumedFrom) / max(rec.Seconds, 1e-9)
		fmt.Fprintf(s.stderr, "ferry: sent %s → %s: %s in %.1fs (%s/s) blake3 %s\n",
			f.local, transfer.QuoteName(f.remote), human(rep.Size), rec.Seconds, human(int64(rate)), rec.BLAKE3)
	}
	return s.emit(rec)
}

// retrying reports a failed attempt that the engine is about to retry.
func (s *sender) retrying(e transfer.RetryEvent) {
	s.bar.finish(false)
	if !s.quiet {
		fmt.Fprintf(s.stderr, "ferry: %s: %s; retrying in %.1fs (retry %d of %d without progress)\n",
			s.bar.f.local, oneLine(e.Err), e.Wait.Seconds(), e.Failures, e.Retries)
	}
}

// emit writes rec to stdout as a --json line, if asked to. A record that
// cannot be written fails the run: it is the result.
func (s *sender) emit(rec record) error {
	if !s.json {
		return nil
	}
	b, _ := json.Marshal(rec) // a record of strings and numbers always encodes
	if _, err := fmt.Fprintf(s.stdout, "%s\n", b); err != nil {
		return fmt.Errorf("writing --json record: %w", err)
	}
	return nil
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
