package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
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
type proc struct {
	cmd    *exec.Cmd
	log    string
	stdout bytes.Buffer
	ended  time.Time // when Wait returned
}

// startProc starts name with args, its stderr appended to logPath.
func startProc(ctx context.Context, logPath, name string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() //nolint:errcheck // the child has its own copy and writes through it
	p := &proc{log: logPath}
	p.cmd = exec.CommandContext(ctx, name, args...)
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
	u := rusage(p.cmd.ProcessState)
	if err != nil {
		return u, fmt.Errorf("%s: %w%s", p.cmd.Args[0], err, p.logTail())
	}
	return u, nil
}

// stop ends a daemon with SIGTERM, as systemd would, and returns its usage;
// wait4 reports rusage only for a process that has ended. A daemon that has
// not exited after 30s is killed.
func (p *proc) stop() (usage, error) {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return usage{}, fmt.Errorf("stopping %s: %w", p.cmd.Args[0], err)
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
			return p, string(m[1]), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = p.cmd.Process.Kill() // then reaped; the timeout is the error
	_, _ = p.wait()
	return nil, "", fmt.Errorf("%s logged no msg=listening addr= within 10s%s", name, p.logTail())
}
