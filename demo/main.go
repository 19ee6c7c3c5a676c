// Command demo is what `make demo` runs: it sends a file through a
// throttling fault proxy to a ferryd it started, kills that ferryd with
// SIGKILL halfway, starts it again on the same root, lets the sender
// reconnect and resume on its own, and shows that the committed file's
// BLAKE3 is the source's. It builds nothing: the Makefile passes the
// paths of bin/ferry and bin/ferryd.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

const (
	defaultSize = 256 << 20
	// sendTime is how long the throttled send should take: long enough
	// to watch, short enough to wait for.
	sendTime = 8 * time.Second
	// minSize is the smallest file the crash can land in the middle of.
	minSize = 1 << 20
	// stepTimeout bounds every wait of the demo on a process.
	stepTimeout = 2 * time.Minute
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "demo: FAILED: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	ferry, ferryd, file string
}

func parseFlags() (config, error) {
	var c config
	flag.StringVar(&c.ferry, "ferry", "bin/ferry", "path of the ferry binary")
	flag.StringVar(&c.ferryd, "ferryd", "bin/ferryd", "path of the ferryd binary")
	flag.StringVar(&c.file, "file", os.Getenv("FILE"), "file to send (default: 256 MiB of fresh random data)")
	flag.Parse()
	for _, p := range []string{c.ferry, c.ferryd} {
		if _, err := os.Stat(p); err != nil {
			return c, fmt.Errorf("%w (run `make build` first)", err)
		}
	}
	return c, nil
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo: "+format+"\n", args...)
}

func run(ctx context.Context) error {
	cfg, err := parseFlags()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "ferry-demo-")
	if err != nil {
		return err
	}
	defer func() {
		_ = os.RemoveAll(tmp) // best effort: a scratch directory
		say("removed %s", tmp)
	}()
	src, err := source(cfg.file, tmp)
	if err != nil {
		return err
	}
	root := filepath.Join(tmp, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return err
	}
	if err := sendThroughCrash(ctx, cfg, src, root); err != nil {
		return err
	}
	return compare(cfg.ferry, src, filepath.Join(root, filepath.Base(src)))
}

// source returns the file to send: the one given, or fresh random data.
func source(file, tmp string) (string, error) {
	if file != "" {
		fi, err := os.Stat(file)
		if err != nil {
			return "", err
		}
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("%s is not a regular file", file)
		}
		say("sending %s (%s)", file, human(fi.Size()))
		return file, nil
	}
	src := filepath.Join(tmp, "random.bin")
	say("writing %s of random data to %s", human(defaultSize), src)
	f, err := os.Create(src)
	if err != nil {
		return "", err
	}
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rand.Uint32())
	}
	if _, err := io.CopyN(f, rand.NewChaCha8(seed), defaultSize); err != nil {
		_ = f.Close() // the copy error is the one to report
		return "", err
	}
	return src, f.Close()
}

// sendThroughCrash runs the sender through a throttled proxy, kills
// ferryd once half the file has passed, and restarts it on the same root.
func sendThroughCrash(ctx context.Context, cfg config, src, root string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	d, err := startDaemon(ctx, cfg.ferryd, root)
	if err != nil {
		return err
	}
	defer d.stop()
	say("ferryd (pid %d) listening on %s, root %s, key %s", d.cmd.Process.Pid, d.addr, root, d.fingerprint)

	proxy, err := faultproxy.New(d.addr)
	if err != nil {
		return err
	}
	defer proxy.Close() //nolint:errcheck // the demo is over
	if fi.Size() < minSize {
		return fmt.Errorf("%s has %s; the demo needs at least %s to crash ferryd mid-transfer", src, human(fi.Size()), human(minSize))
	}
	rate := fi.Size() * int64(time.Second) / int64(sendTime)
	proxy.Throttle(rate)
	say("fault proxy on %s → %s, throttled to %s/s so the send takes about %v", proxy.Addr(), d.addr, human(rate), sendTime)

	// The proxy relays TLS untouched: the sender sees ferryd's key, and
	// pins it rather than trusting a random port on first use.
	args := []string{"send", "--to", proxy.Addr(), "--fingerprint", d.fingerprint, "--retries", "20", "--backoff", "200ms", "--json", src}
	say("running: %s %s", cfg.ferry, strings.Join(args, " "))
	sender := exec.CommandContext(ctx, cfg.ferry, args...)
	var stdout strings.Builder
	sender.Stdout, sender.Stderr = &stdout, os.Stderr // progress and messages straight to the user
	if err := sender.Start(); err != nil {
		return err
	}
	senderDone := make(chan error, 1)
	go func() { senderDone <- sender.Wait() }()

	d, err = crashHalfway(ctx, cfg.ferryd, root, d, proxy, fi.Size(), senderDone)
	if err != nil {
		_ = sender.Process.Kill() // then reaped; the crash error is the one to report
		<-senderDone              //nolint:errcheck // reaped; the crash error is the one to report
		return err
	}
	defer d.stop()

	var werr error
	select {
	case werr = <-senderDone:
	case <-time.After(stepTimeout):
		_ = sender.Process.Kill() // the timeout is the error
		return fmt.Errorf("sender still running after %v", stepTimeout)
	}
	return report(werr, stdout.String())
}

// crashHalfway waits for half of size to pass the proxy, kills d with
// SIGKILL, starts a new ferryd on the same root and points the proxy at
// it. It returns the new daemon.
func crashHalfway(ctx context.Context, ferryd, root string, d *daemon, proxy *faultproxy.Proxy, size int64, senderDone <-chan error) (*daemon, error) {
	half := size / 2
	waitCtx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	halfway := make(chan error, 1)
	go func() { halfway <- proxy.WaitBytes(waitCtx, half) }()
	select {
	case err := <-halfway:
		if err != nil {
			return nil, fmt.Errorf("waiting for half the file to pass: %w", err)
		}
	case err := <-senderDone:
		return nil, fmt.Errorf("sender ended before half the file had passed: %w", err)
	}
	say("%s of %s through the proxy: killing ferryd with SIGKILL", human(proxy.Total(faultproxy.ClientToServer)), human(size))
	d.kill()
	d2, err := startDaemon(ctx, ferryd, root)
	if err != nil {
		return nil, err
	}
	proxy.SetUpstream(d2.addr)
	say("ferryd restarted on %s with the same root; proxy now forwards there; the sender reconnects by itself", d2.addr)
	return d2, nil
}

// report narrates the sender's outcome from its --json record.
func report(waitErr error, stdout string) error {
	var rec struct {
		Size        int64  `json:"size"`
		ResumedFrom int64  `json:"resumed_from"`
		SentBytes   int64  `json:"sent_bytes"`
		Total       int64  `json:"total_sent_bytes"`
		Attempts    int    `json:"attempts"`
		Status      string `json:"status"`
		Error       string `json:"error"`
	}
	// The file's record is the first line; a summary object follows it.
	first, _, _ := strings.Cut(strings.TrimSpace(stdout), "\n")
	if err := json.Unmarshal([]byte(first), &rec); err != nil {
		return fmt.Errorf("sender exited (%w) without a --json record: %q", waitErr, stdout)
	}
	if waitErr != nil || rec.Status != "committed" {
		return fmt.Errorf("sender: %w: %s", waitErr, rec.Error)
	}
	say("sender committed after %d attempts: last one resumed at %s and sent %s (%s over all attempts, file %s)",
		rec.Attempts, human(rec.ResumedFrom), human(rec.SentBytes), human(rec.Total), human(rec.Size))
	if rec.Attempts < 2 {
		return errors.New("the sender never had to reconnect: the crash came too late")
	}
	return nil
}

// compare prints both files' BLAKE3 by ferry hash, and by b3sum when it
// is installed, and fails unless every hash is the same.
func compare(ferry, src, dst string) error {
	tools := [][]string{{ferry, "hash"}} // b3sum's own name, then its arguments
	if b3, err := exec.LookPath("b3sum"); err == nil {
		tools = append(tools, []string{b3})
	} else {
		say("b3sum not installed (apt-get install b3sum): comparing with ferry hash only")
	}
	var first string
	match := true
	for _, tool := range tools {
		for _, p := range []string{src, dst} {
			out, err := exec.Command(tool[0], append(tool[1:], p)...).Output()
			if err != nil {
				return fmt.Errorf("%s %s: %w", filepath.Base(tool[0]), p, err)
			}
			h, _, _ := strings.Cut(strings.TrimPrefix(string(out), `\`), " ")
			name := strings.Join(append([]string{filepath.Base(tool[0])}, tool[1:]...), " ")
			say("%-10s %-9s %s  %s", name, label(p == src), h, p)
			if first == "" {
				first = h
			}
			match = match && h == first
		}
	}
	if !match {
		return errors.New("MISMATCH: the committed file is not the source")
	}
	say("MATCH: the committed file is bit-identical to the source")
	return nil
}

func label(isSource bool) string {
	if isSource {
		return "source"
	}
	return "committed"
}

// daemon is a running ferryd whose stderr a goroutine drains and keeps.
type daemon struct {
	cmd    *exec.Cmd
	addr   string
	exited chan struct{}

	fingerprint string // of its TLS key, from the listening line; the sender pins it
}

var (
	addrRE        = regexp.MustCompile(`\baddr=(\S+)`)
	fingerprintRE = regexp.MustCompile(`\bfingerprint=(SHA256:\S+)`)
)

// startDaemon starts ferryd on a kernel-chosen loopback port and waits
// for its msg=listening line.
func startDaemon(ctx context.Context, ferryd, root string) (*daemon, error) {
	cmd := exec.Command(ferryd, "--listen", "127.0.0.1:0", "--root", root)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{cmd: cmd, exited: make(chan struct{})}
	addrc := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := addrRE.FindStringSubmatch(sc.Text()); m != nil && strings.Contains(sc.Text(), "msg=listening") {
				var fp string
				if f := fingerprintRE.FindStringSubmatch(sc.Text()); f != nil {
					fp = f[1]
				}
				select {
				case addrc <- [2]string{m[1], fp}:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr) // drain, so that ferryd never blocks on its log
		_ = cmd.Wait()                     // killed or stopped by the demo; d.exited says it ended
		close(d.exited)
	}()
	select {
	case l := <-addrc:
		d.addr, d.fingerprint = l[0], l[1]
		return d, nil
	case <-d.exited:
		return nil, errors.New("ferryd exited before it listened")
	case <-ctx.Done():
	case <-time.After(stepTimeout):
	}
	d.kill()
	return nil, errors.New("ferryd did not log msg=listening")
}

func (d *daemon) kill() {
	_ = d.cmd.Process.Signal(syscall.SIGKILL) // fails only if it has exited
	<-d.exited
}

// stop ends ferryd gracefully, as its operator would.
func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM) // fails only if it has exited
	select {
	case <-d.exited:
	case <-time.After(stepTimeout):
		d.kill()
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
