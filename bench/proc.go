package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// usage is what a process, and the children it reaped, cost.
type usage struct {
	cpu    time.Duration // user + system
	maxRSS int64         // peak resident set of the largest process, bytes
}

// add sums CPU and keeps the larger peak: for processes that ran side by
// side, the peak of any one of them.
func (u usage) add(v usage) usage {
	return usage{cpu: u.cpu + v.cpu, maxRSS: max(u.maxRSS, v.maxRSS)}
}

// proc is a child process. Its stderr goes to a log file rather than a
// pipe, so that a chatty child (or a grandchild that inherits the
// descriptor, as rsync's do) never blocks on a full pipe nor holds up Wait;
// its stdout is collected in memory.
//
// The child runs under `ferrybench rusage-exec` (see rusageExec), which
// reports the child's own usage: the rusage wait4 returns for a direct
// child of this process would count this process's peak RSS as the
// child's, since Linux carries the peak of the memory a child was cloned
// with over its exec (and Go clones with CLONE_VM, sharing ours).
type proc struct {
	cmd       *exec.Cmd
	log       string
	usageFile string // where the wrapper writes the child's usage
	stdout    bytes.Buffer
	ended     time.Time // when Wait returned
	// fingerprint is, for a ferryd started by startListener on TCP, the
	// key it logged on its listening line; senders pin it.
	fingerprint string
}

// startProc starts name with args, its stderr appended to logPath.
func startProc(ctx context.Context, logPath, name string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() //nolint:errcheck // the child has its own copy and writes through it
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &proc{log: logPath, usageFile: logPath + ".usage"}
	_ = os.Remove(p.usageFile) // a stale one from an earlier run; usually absent
	p.cmd = exec.CommandContext(ctx, self, append([]string{rusageExecCmd, p.usageFile, name}, args...)...)
	p.cmd.Cancel = func() error { return p.cmd.Process.Signal(syscall.SIGTERM) } // forwarded to the child
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = logf
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// wait waits for the process and returns its usage. A non-zero exit is an
// error carrying the end of its log.
func (p *proc) wait() (usage, error) {
	err := p.cmd.Wait()
	p.ended = time.Now()
	u, uerr := readUsage(p.usageFile)
	if uerr != nil {
		u = rusage(p.cmd.ProcessState) // the wrapper died first; an upper bound
	}
	if err != nil {
		return u, fmt.Errorf("%s: %w%s", p.name(), err, p.logTail())
	}
	return u, nil
}

// name is the program the wrapper runs.
func (p *proc) name() string { return p.cmd.Args[2] }

// stop ends a daemon with SIGTERM, as systemd would, and returns its usage;
// wait4 reports rusage only for a process that has ended. A daemon that has
// not exited after 30s is killed.
func (p *proc) stop() (usage, error) {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return usage{}, fmt.Errorf("stopping %s: %w", p.name(), err)
	}
	t := time.AfterFunc(30*time.Second, func() { _ = p.cmd.Process.Kill() })
	defer t.Stop()
	u, err := p.wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM {
		err = nil // rsync's daemon dies of the signal rather than exiting
	}
	return u, err
}

func rusage(ps *os.ProcessState) usage {
	if ps == nil {
		return usage{}
	}
	u := usage{cpu: ps.UserTime() + ps.SystemTime()}
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		u.maxRSS = ru.Maxrss << 10 // KiB on Linux
	}
	return u
}

// logTail returns the last lines of the process's log for an error message.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return "\n\t" + strings.Join(lines[max(0, len(lines)-5):], "\n\t")
}

var listeningAddr = regexp.MustCompile(`msg=listening.* addr=(\S+)`)

// listeningFingerprint finds the TCP listener's key on its listening line.
var listeningFingerprint = regexp.MustCompile(`msg=listening.* fingerprint=(SHA256:\S+)`)

// startListener starts a daemon that logs msg=listening addr=HOST:PORT on
// stderr (ferryd, raw-recv) and returns it with that address. logPath must
// be new, or an old address would be found.
func startListener(ctx context.Context, logPath, name string, args ...string) (*proc, string, error) {
	p, err := startProc(ctx, logPath, name, args...)
	if err != nil {
		return nil, "", err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(logPath)
		if m := listeningAddr.FindSubmatch(b); m != nil {
			if f := listeningFingerprint.FindSubmatch(b); f != nil {
				p.fingerprint = string(f[1])
			}
			return p, string(m[1]), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = p.cmd.Process.Kill() // then reaped; the timeout is the error
	_, _ = p.wait()
	return nil, "", fmt.Errorf("%s logged no msg=listening addr= within 10s%s", name, p.logTail())
}

// rusageExecCmd is the hidden subcommand that runs every child.
const rusageExecCmd = "rusage-exec"

// rusageExec is `ferrybench rusage-exec USAGEFILE NAME ARGS...`: it runs
// NAME with this process's stdin, stdout and stderr, forwards SIGTERM and
// SIGINT to it, writes its CPU nanoseconds and peak RSS bytes to USAGEFILE
// when it ends, and then ends the same way (exit code, or the same
// signal). The child's peak RSS includes at most this small process's
// own. The child is killed if this process dies first.
func rusageExec(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ferrybench rusage-exec USAGEFILE NAME [ARG...]")
		return 2
	}
	runtime.LockOSThread() // Pdeathsig follows the thread that started the child
	cmd := exec.Command(args[1], args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "ferrybench: %v\n", err)
		return 127
	}
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s) // it may have exited already
		}
	}()
	_ = cmd.Wait() // the status is in ProcessState
	u := rusage(cmd.ProcessState)
	text := fmt.Sprintf("%d %d\n", u.cpu.Nanoseconds(), u.maxRSS)
	if err := os.WriteFile(args[0], []byte(text), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "ferrybench: %v\n", err)
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		signal.Reset(ws.Signal())
		_ = syscall.Kill(os.Getpid(), ws.Signal()) // end as the child did
		time.Sleep(time.Second)                    // the signal is delivered meanwhile
	}
	return cmd.ProcessState.ExitCode()
}

// readUsage reads what rusageExec wrote.
func readUsage(path string) (usage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return usage{}, err
	}
	var cpu, rss int64
	if _, err := fmt.Sscanf(string(b), "%d %d", &cpu, &rss); err != nil {
		return usage{}, fmt.Errorf("reading %s: %w", path, err)
	}
	return usage{cpu: time.Duration(cpu), maxRSS: rss}, nil
}
