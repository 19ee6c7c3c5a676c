package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDestNamingFileSaysSo: a --dest that names a committed file was
// refused with "statat f/f: not a directory" (issue 8, defect 13). The
// refusal now names the file that is in the way.
func TestDestNamingFileSaysSo(t *testing.T) {
	root := t.TempDir()
	d := startDaemon(t, root)
	src := filepath.Join(t.TempDir(), "f")
	writeRandom(t, src, 10, 7)
	wantCode(t, runFerry(t, sendArgs(d.addr, src)...), exitOK)

	for _, dest := range []string{"f", "f/g/h"} {
		r := runFerry(t, sendArgs(d.addr, "--dest", dest, src)...)
		wantCode(t, r, exitRefused)
		if !strings.Contains(r.stderr, `"f" is a file on the daemon, not a directory`) || strings.Contains(r.stderr, "statat") {
			t.Errorf("--dest %s: stderr %q, want it to say \"f\" is a file on the daemon", dest, r.stderr)
		}
	}
}

// TestRootParentsNotCreated: a missing --root was created with all its
// parents (issue 8, defect 13), so a typo grew a tree in the wrong place.
// ferryd now creates only the root itself and says what is missing.
func TestRootParentsNotCreated(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "missing", "inbox")
	// Before the fix ferryd created the parents and served: the context ends it.
	cmd := exec.CommandContext(testContext(t), bin.ferryd, "--listen", "127.0.0.1:0", "--root", root)
	cmd.Env = childEnv(t)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("ferryd with a root whose parent is missing: %v, want exit 1\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "parent directory does not exist") {
		t.Errorf("ferryd said %q, want one line saying the parent is missing", out)
	}
	if _, err := os.Stat(filepath.Join(base, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ferryd created the root's parent: %v", err)
	}

	// The root itself is still created when its parent exists.
	d := startDaemon(t, filepath.Join(base, "inbox"))
	if fi, err := os.Stat(filepath.Join(base, "inbox")); err != nil || !fi.IsDir() {
		t.Fatalf("root not created: %v", err)
	}
	_ = d
}
