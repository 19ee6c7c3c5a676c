package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// bin holds the paths of the binaries TestMain built.
var bin struct {
	ferry, ferryd string
}

// waitTimeout bounds every wait on a process or log line. Generous: the
// suite shares 2 cores with the race detector, and a hang must still end.
const waitTimeout = 90 * time.Second

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := 1
	homesDir = filepath.Join(dir, "homes")
	if err := os.Mkdir(homesDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// build compiles both binaries once, without -race: the processes under
// test need not be instrumented, and building them plain keeps the suite
// within its time on 2 cores.
func build(dir string) error {
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator),
		"github.com/ferry-dev/ferry/cmd/ferry", "github.com/ferry-dev/ferry/cmd/ferryd")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building ferry and ferryd: %w\n%s", err, out)
	}
	bin.ferry, bin.ferryd = filepath.Join(dir, "ferry"), filepath.Join(dir, "ferryd")
	return nil
}

// childEnv is the environment of every process started here: ours without
// FERRY_* (a developer's FERRY_TO must not steer a test) and without
// NOTIFY_SOCKET (a test run under systemd must not notify it), with
// XDG_CONFIG_HOME and HOME in a directory of t's own, so that the
// known-hosts file a sender writes is t's and never the user's (ports
// are reused by other daemons with other keys).
func childEnv(t testing.TB) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FERRY_") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") &&
			!strings.HasPrefix(kv, "XDG_CONFIG_HOME=") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	dir := home(t)
	return append(env, "XDG_CONFIG_HOME="+dir, "HOME="+dir)
}

// home returns the home and configuration directory of the processes of
// t's top-level test (its subtests share it: a daemon started by a test
// serves its subtests), created on first use under homesDir.
func home(t testing.TB) string {
	top, _, _ := strings.Cut(t.Name(), "/")
	homesMu.Lock()
	defer homesMu.Unlock()
	if dir, ok := homes[top]; ok {
		return dir
	}
	dir, err := os.MkdirTemp(homesDir, "home-")
	if err != nil {
		t.Fatal(err)
	}
	homes[top] = dir
	return dir
}

// trust records fingerprint as the key of the daemon (or proxy) at addr in
// the known-hosts file of t's senders, as a user who checked it would, so
// that they print no first-use notice.
func trust(t testing.TB, addr, fingerprint string) {
	t.Helper()
	path := filepath.Join(home(t), "ferry", "known_hosts")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(addr + " " + fingerprint + "\n"); err != nil {
		t.Fatal(err)
	}
}

var (
	homesDir string                // made by TestMain, removed at its end
	homesMu  sync.Mutex            // guards homes
	homes    = map[string]string{} // top-level test name → its home
)

// testContext is cancelled when t ends or after waitTimeout.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func slow(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow: skipped under -short")
	}
}
