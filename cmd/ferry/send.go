package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
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
			&cli.DurationFlag{Name: "backoff", Value: 500 * time.Millisecond, EnvVars: []string{"FERRY_BACKOFF"}, Usage: "wait before the first retry; doubles each retry up to 30s"},
			&cli.DurationFlag{Name: "timeout", Value: 60 * time.Second, EnvVars: []string{"FERRY_TIMEOUT"}, Usage: "give up on a connection that accepts no data for this long"},
			&cli.IntFlag{Name: "chunk-size", Value: transfer.DefaultChunkSize, EnvVars: []string{"FERRY_CHUNK_SIZE"}, Usage: "chunk size in bytes to propose (the daemon may lower it)"},
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

// sender sends files one after another, over one session while it lasts.
type sender struct {
	network, addr string
	retries       int
	backoff       time.Duration
	timeout       time.Duration
	chunkSize     int
	quiet, json   bool
	stdout        io.Writer
	stderr        io.Writer
	bars          bool
	client        *transfer.Client
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
	files, err := collect(c.Args().Slice(), c.String("dest"))
	if err != nil {
		return nil, nil, err
	}
	s := &sender{
		network: network, addr: addr,
		retries: c.Int("retries"), backoff: c.Duration("backoff"), timeout: c.Duration("timeout"),
		chunkSize: c.Int("chunk-size"), quiet: c.Bool("quiet"), json: c.Bool("json"),
		stdout: stdout, stderr: stderr,
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
	Path           string  `json:"path"`
	Remote         string  `json:"remote"`
	Size           int64   `json:"size"`
	ResumedFrom    int64   `json:"resumed_from"`
	SentBytes      int64   `json:"sent_bytes"`
	TotalSentBytes int64   `json:"total_sent_bytes"`
	Attempts       int     `json:"attempts"`
	Restarted      bool    `json:"restarted"`
	BLAKE3         string  `json:"blake3,omitempty"`
	Seconds        float64 `json:"seconds"`
	Status         string  `json:"status"`
	Error          string  `json:"error,omitempty"`
}

// sendAll sends every file. A refusal skips to the next file; a failure
// that retries could not fix stops the run. The exit code is the worst
// seen.
func (s *sender) sendAll(ctx context.Context, files []file) error {
	defer s.closeClient()
	var worst error
	for _, f := range files {
		err := s.sendFile(ctx, f)
		if err == nil {
			continue
		}
		if worst == nil || exitCode(err) > exitCode(worst) {
			worst = err
		}
		if exitCode(err) != exitRefused {
			break
		}
	}
	return worst
}

func (s *sender) sendFile(ctx context.Context, f file) error {
	start := time.Now()
	rec := record{Path: f.local, Remote: f.remote}
	res, err := s.sendWithRetries(ctx, f, &rec)
	rec.Seconds = time.Since(start).Seconds()
	if err != nil {
		rec.Status, rec.Error = "failed", oneLine(err)
		fmt.Fprintf(s.stderr, "ferry: %s: %s%s\n", f.local, oneLine(err), advice(err))
		_ = s.emit(rec) // the transfer's error is the one to report
		return fmt.Errorf("%w: %w", errReported, err)
	}
	rec.Status, rec.BLAKE3 = "committed", hex.EncodeToString(res.Hash[:])
	rec.ResumedFrom, rec.SentBytes, rec.Restarted = res.ResumedFrom, res.SentBytes, rec.Restarted || res.Restarted
	if !s.quiet && !s.json {
		rate := float64(res.Size-res.ResumedFrom) / max(rec.Seconds, 1e-9)
		fmt.Fprintf(s.stderr, "ferry: sent %s → %s: %s in %.1fs (%s/s) blake3 %s\n",
			f.local, transfer.QuoteName(f.remote), human(res.Size), rec.Seconds, human(int64(rate)), rec.BLAKE3)
	}
	return s.emit(rec)
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

// sendWithRetries opens the file and sends it, reconnecting and resuming
// from the daemon's durable offset after each retryable failure.
func (s *sender) sendWithRetries(ctx context.Context, f file, rec *record) (transfer.Result, error) {
	fh, err := os.Open(f.local)
	if err != nil {
		return transfer.Result{}, err
	}
	defer fh.Close() //nolint:errcheck // opened read-only
	src, err := transfer.FileSource(fh)
	if err != nil {
		return transfer.Result{}, err
	}
	rec.Size = src.Size
	// failures counts attempts in a row that made nothing more durable:
	// --retries bounds it, and the backoff grows with it. An attempt that
	// moved the durable offset resets it, so a long transfer over a link
	// that drops now and then never runs out of retries while it advances.
	failures := 0
	for {
		rec.Attempts++
		res, err := s.attempt(ctx, src, f)
		rec.TotalSentBytes += res.SentBytes
		rec.Restarted = rec.Restarted || res.Restarted
		if err == nil {
			return res, nil
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("interrupted; the daemon keeps the partial, run the same command to resume: %w", context.Cause(ctx))
		}
		failures++
		if res.DurableOffset > res.ResumedFrom {
			failures = 1
		}
		if !transfer.Retryable(err) || failures > s.retries {
			if rec.Attempts > 1 {
				err = fmt.Errorf("%w (after %d attempts)", err, rec.Attempts)
			}
			return res, err
		}
		wait := backoff(s.backoff, failures, rand.Float64)
		if !s.quiet {
			fmt.Fprintf(s.stderr, "ferry: %s: %s; retrying in %.1fs (retry %d of %d without progress)\n",
				f.local, oneLine(err), wait.Seconds(), failures, s.retries)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
}

// attempt sends src once, connecting first if there is no session.
func (s *sender) attempt(ctx context.Context, src transfer.Source, f file) (transfer.Result, error) {
	if s.client == nil {
		if err := s.connect(ctx); err != nil {
			return transfer.Result{}, err
		}
	}
	bar := s.newBar(f, src.Size)
	res, err := s.client.Send(ctx, src, f.remote, transfer.SendOptions{Progress: bar.update})
	bar.finish(err == nil)
	if !s.client.Usable() {
		s.closeClient() // the transfer failed past its offer; start a new session
	}
	return res, err
}

func (s *sender) connect(ctx context.Context) error {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, s.network, s.addr)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", s.addr, err)
	}
	c, err := transfer.Handshake(ctx, &deadlineConn{Conn: conn, timeout: s.timeout},
		transfer.ClientOptions{ChunkSize: s.chunkSize, Agent: "ferry/" + version})
	if err != nil {
		_ = conn.Close() // the handshake's error is the one to report
		return fmt.Errorf("handshake with %s: %w", s.addr, err)
	}
	s.client = c
	return nil
}

func (s *sender) closeClient() {
	if s.client != nil {
		_ = s.client.Close() // every result is in; the session holds nothing more
		s.client = nil
	}
}

// deadlineConn bounds every write, so a link that stops accepting data
// fails the attempt (and the retry loop reconnects) instead of hanging.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if c.timeout > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}

// advice adds what to do about an error, for the one-line message.
func advice(err error) string {
	switch {
	case errors.Is(err, transfer.ErrExists):
		return ""
	case errors.Is(err, transfer.ErrIntegrity):
		return " (data was corrupted in transit or on the daemon's disk; check the link and the daemon's storage)"
	case exitCode(err) == exitFailed:
		return " (run the same command again to resume)"
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
