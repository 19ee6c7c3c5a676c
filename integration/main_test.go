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
	if err := build(dir); err != nil {
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
	v, ok := homes.Load(t)
	if !ok {
		v = t.TempDir()
		homes.Store(t, v)
		t.Cleanup(func() { homes.Delete(t) })
	}
	dir := v.(string)
	return append(env, "XDG_CONFIG_HOME="+dir, "HOME="+dir)
}

// homes maps a test to the home directory of its processes.
var homes sync.Map

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
