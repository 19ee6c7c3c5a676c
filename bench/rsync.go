package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// rsyncInfo describes the installed rsync.
type rsyncInfo struct {
	path    string
	version string // first line of rsync --version
	fsync   bool   // supports --fsync (rsync ≥ 3.2.4)
}

// findRsync returns nil when rsync is not installed.
func findRsync() (*rsyncInfo, error) {
	path, err := exec.LookPath("rsync")
	if err != nil {
		return nil, nil
	}
	ver, err := exec.Command(path, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("rsync --version: %w", err)
	}
	help, _ := exec.Command(path, "--help").Output() // exits 0 on 3.x, not on older
	first, _, _ := strings.Cut(string(ver), "\n")
	return &rsyncInfo{path: path, version: strings.TrimSpace(first), fsync: strings.Contains(string(help), "--fsync")}, nil
}

// durability says how rsync's result is made durable, for the results.
func (r *rsyncInfo) durability() string {
	if r.fsync {
		return "rsync --fsync (receiver fsyncs the file before its rename)"
	}
	return "sync FILE after the client exits (this rsync has no --fsync), inside the clock"
}

// rsyncdConf is the daemon's configuration: one writable module, no
// chroot, running as the benchmark's own user.
const rsyncdConf = `use chroot = no
uid = %d
gid = %d
[bench]
	path = %s
	read only = no
`

// runRsync sends j's file with the rsync client to an rsync daemon started
// for this run.
func (b *bench) runRsync(ctx context.Context, j job) (sample, error) {
	if j.senders != 1 {
		return sample{}, errors.New("rsync runs one sender")
	}
	dir, logs, err := b.newRun("rsync")
	if err != nil {
		return sample{}, err
	}
	daemon, port, err := b.startRsyncd(ctx, dir, logs)
	if err != nil {
		return sample{}, err
	}
	dst := filepath.Join(dir, filepath.Base(j.src.path))
	args := []string{"--whole-file", j.src.path, fmt.Sprintf("rsync://127.0.0.1:%d/bench/", port)}
	if b.rsync.fsync {
		args = append([]string{"--fsync"}, args...)
	}
	b.settle()
	start := time.Now()
	client, err := startProc(ctx, logs+"-client.log", b.rsync.path, args...)
	var cu usage
	if err == nil {
		cu, err = client.wait()
	}
	end := time.Now()
	var su usage
	if err == nil && !b.rsync.fsync {
		su, err = syncFile(ctx, dst, logs)
		end = time.Now()
	}
	du, stopErr := daemon.stop()
	if err := errors.Join(err, stopErr); err != nil {
		return sample{}, err
	}
	if fi, err := os.Stat(dst); err != nil || fi.Size() != j.src.size.bytes {
		return sample{}, fmt.Errorf("rsync result %s: %w (want %d bytes)", dst, err, j.src.size.bytes)
	}
	s := sample{wall: end.Sub(start), sender: cu, receiver: du.add(su)}
	return s, os.RemoveAll(dir)
}

// startRsyncd starts an rsync daemon serving dir on a free loopback port
// and waits until it accepts connections.
func (b *bench) startRsyncd(ctx context.Context, dir, logs string) (*proc, int, error) {
	conf := logs + "-rsyncd.conf"
	text := fmt.Sprintf(rsyncdConf, os.Getuid(), os.Getgid(), dir)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, 0, err
	}
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	p, err := startProc(ctx, logs+"-rsyncd.log", b.rsync.path, "--daemon", "--no-detach",
		"--config="+conf, "--address=127.0.0.1", "--port="+strconv.Itoa(port), "--log-file="+logs+"-rsyncd.log")
	if err != nil {
		return nil, 0, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close() // a probe: it only had to connect
			return p, port, nil
		}
	}
	_ = p.cmd.Process.Kill() // then reaped; the timeout is the error
	_, _ = p.wait()
	return nil, 0, fmt.Errorf("rsync daemon not accepting on %s within 10s%s", addr, p.logTail())
}

// freePort returns a loopback port that was free a moment ago: rsync
// cannot listen on port 0 and report the port it got.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close() //nolint:errcheck // a listener holds no data
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// syncFile runs coreutils `sync FILE`, which fsyncs that one file.
func syncFile(ctx context.Context, path, logs string) (usage, error) {
	p, err := startProc(ctx, logs+"-sync.log", "sync", path)
	if err != nil {
		return usage{}, err
	}
	return p.wait()
}
