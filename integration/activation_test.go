package integration

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSocketActivation hands ferryd a listening socket as systemd does
// (fd 3, LISTEN_FDS=1, LISTEN_PID its own pid, which only a shell that
// then execs ferryd knows) and sends a file through it (issue 12). With
// a socket from systemd, ferryd opens no --listen default; an explicit
// --listen still opens.
func TestSocketActivation(t *testing.T) {
	tests := []struct {
		name    string
		network string
		listen  []string // extra ferryd flags
		want    int      // listening lines
	}{
		{"tcp", "tcp", nil, 1},
		{"unix", "unix", nil, 1},
		{"tcp and --listen", "tcp", []string{"--listen", "127.0.0.1:0"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if tt.network == "unix" {
				addr = filepath.Join(t.TempDir(), "ferryd.sock")
			}
			ln, err := net.Listen(tt.network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			f, err := ln.(interface{ File() (*os.File, error) }).File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			root := t.TempDir()
			cmd := exec.Command("sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin.ferryd, "--root", root}, tt.listen...)...)
			cmd.Env = append(childEnv(t), "LISTEN_FDS=1", "LISTEN_FDNAMES=ferryd.socket")
			cmd.ExtraFiles = []*os.File{f} // fd 3
			d := startDaemonCmd(t, cmd)
			line := d.waitLine(0, "msg=listening", "from=systemd")
			to := loggedAddr(line)
			if tt.network == "unix" {
				if to != addr {
					t.Fatalf("listening line %q, want addr=%s", line, addr)
				}
				to = "unix:" + to
			} else if to != ln.Addr().String() {
				t.Fatalf("listening line %q, want addr=%s", line, ln.Addr())
			} else if loggedFingerprint.FindString(line) == "" {
				t.Errorf("listening line %q of a TCP socket from systemd has no fingerprint: it must serve TLS", line)
			}
			src := filepath.Join(t.TempDir(), "f.bin")
			writeRandom(t, src, 300<<10, 3)
			r := runFerry(t, sendArgs(to, src)...)
			wantCode(t, r, exitOK)
			checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "f.bin"))
			if got := d.lines(0, "msg=listening"); len(got) != tt.want {
				t.Errorf("%d listening lines, want %d: %q", len(got), tt.want, got)
			}
			if code := d.term(); code != 0 {
				t.Errorf("ferryd exited %d after SIGTERM", code)
			}
		})
	}
}

// TestSocketActivationNotAListener: a descriptor from systemd that is no
// listening socket (a socket unit with ListenDatagram=, say) is refused
// with exit 2, which the shipped unit does not restart.
func TestSocketActivationNotAListener(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "not-a-socket")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.CommandContext(testContext(t), "sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, bin.ferryd, "--root", t.TempDir())
	cmd.Env = append(childEnv(t), "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != exitUsage {
		t.Fatalf("ferryd with a file as fd 3 exited %d (%v), want %d:\n%s", code, err, exitUsage, out)
	}
}
