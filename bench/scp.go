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

// scpCipher is the cipher issue 10 compares against: the cheapest of
// OpenSSH's defaults on a CPU with AES-NI.
const scpCipher = "aes128-gcm@openssh.com"

// scpInfo describes the installed OpenSSH client and server, and the keys
// made for the benchmark's private sshd.
type scpInfo struct {
	scp, sshd string
	version   string // first line of ssh -V
	dir       string // host key, client key and authorized_keys
}

// findScp returns nil, and why, when scp, ssh, ssh-keygen or sshd is not
// installed or sshd cannot run here; otherwise it makes a host key and a
// client key in dir (created) for a private sshd, so that nothing of the
// user's own ssh setup is used or changed.
func findScp(ctx context.Context, dir string) (*scpInfo, string, error) {
	var paths [4]string
	for i, name := range []string{"scp", "ssh", "ssh-keygen", "sshd"} {
		p, err := exec.LookPath(name)
		if err != nil && name == "sshd" {
			p, err = exec.LookPath("/usr/sbin/sshd") // not on a user's PATH on Debian
		}
		if err != nil {
			return nil, name + " is not installed (apt-get install openssh-client openssh-server)", nil
		}
		if paths[i], err = filepath.Abs(p); err != nil { // sshd re-executes itself by its absolute path
			return nil, "", err
		}
	}
	if os.Getuid() == 0 {
		// sshd started as root insists on its privilege separation
		// directory, which its service unit would create.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, "sshd cannot run as root without /run/sshd: " + err.Error(), nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	for _, key := range []string{"host", "client"} {
		out, err := exec.CommandContext(ctx, paths[2], "-q", "-t", "ed25519", "-N", "", "-C", "ferrybench", "-f", filepath.Join(dir, key)).CombinedOutput()
		if err != nil {
			return nil, "", fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client.pub"))
	if err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, "", err
	}
	ver, _ := exec.CommandContext(ctx, paths[1], "-V").CombinedOutput() // prints to stderr, exits 0
	first, _, _ := strings.Cut(string(ver), "\n")
	return &scpInfo{scp: paths[0], sshd: paths[3], version: strings.TrimSpace(first), dir: dir}, "", nil
}

// durability says how scp's result is made durable, for the results: scp
// (SFTP or its legacy protocol) never fsyncs.
func (s *scpInfo) durability() string {
	return "sync FILE after scp exits (scp never fsyncs), inside the clock; cipher " + scpCipher
}

// sshdConfig is the private sshd's configuration: loopback only, the
// benchmark's own keys, public-key logins of the current user, SFTP served
// in-process (scp of OpenSSH 9 speaks SFTP).
const sshdConfig = `ListenAddress 127.0.0.1:%d
HostKey %s
AuthorizedKeysFile %s
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
`

// runScp sends j's file with `scp -c aes128-gcm@openssh.com` to a private
// sshd started for this run, then runs `sync FILE` inside the clock.
func (b *bench) runScp(ctx context.Context, j job) (sample, error) {
	if j.senders != 1 {
		return sample{}, errors.New("scp runs one sender")
	}
	dir, logs, err := b.newRun("scp")
	if err != nil {
		return sample{}, err
	}
	sshd, port, err := b.startSshd(ctx, logs)
	if err != nil {
		return sample{}, err
	}
	dst := filepath.Join(dir, filepath.Base(j.src.path))
	args := []string{"-q", "-B", "-F", "/dev/null", "-c", scpCipher, "-P", strconv.Itoa(port),
		"-i", filepath.Join(b.scp.dir, "client"), "-o", "IdentitiesOnly=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		j.src.path, "127.0.0.1:" + dst}
	b.settle()
	start := time.Now()
	client, err := startProc(ctx, logs+"-client.log", b.scp.scp, args...)
	var cu, su usage
	if err == nil {
		cu, err = client.wait()
	}
	if err == nil {
		su, err = syncFile(ctx, dst, logs)
	}
	end := time.Now()
	du, stopErr := stopSshd(sshd)
	if err := errors.Join(err, stopErr); err != nil {
		return sample{}, err
	}
	if fi, err := os.Stat(dst); err != nil || fi.Size() != j.src.size.bytes {
		return sample{}, fmt.Errorf("scp result %s: %w (want %d bytes)", dst, err, j.src.size.bytes)
	}
	s := sample{wall: end.Sub(start), sender: cu, receiver: du.add(su)}
	return s, os.RemoveAll(dir)
}

// startSshd starts the private sshd on a free loopback port and waits
// until it accepts connections. Its per-connection children are reaped by
// it, so their CPU is in the usage stopSshd returns.
func (b *bench) startSshd(ctx context.Context, logs string) (*proc, int, error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	conf := logs + "-sshd_config"
	text := fmt.Sprintf(sshdConfig, port, filepath.Join(b.scp.dir, "host"), filepath.Join(b.scp.dir, "authorized_keys"))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, 0, err
	}
	p, err := startProc(ctx, logs+"-sshd.log", b.scp.sshd, "-D", "-e", "-f", conf)
	if err != nil {
		return nil, 0, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close() // a probe: it only had to connect
			return p, port, nil
		}
		if p.cmd.ProcessState != nil {
			break
		}
	}
	_ = p.cmd.Process.Kill() // then reaped; the timeout is the error
	_, _ = p.wait()
	return nil, 0, fmt.Errorf("sshd not accepting on %s within 10s%s", addr, p.logTail())
}

// stopSshd stops sshd with SIGTERM; it exits with status 255 then, which
// is not a failure.
func stopSshd(p *proc) (usage, error) {
	u, err := p.stop()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 255 {
		err = nil
	}
	return u, err
}
