package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestJSONRecordWriteFailure: ferry send --json dropped the error of
// writing its record, so a run whose stdout was full lost its result and
// still exited 0. It now fails the run with a message.
func TestJSONRecordWriteFailure(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	d := startDaemon(t, t.TempDir())
	src := filepath.Join(t.TempDir(), "f.bin")
	writeRandom(t, src, 1000, 1)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.ferry, sendArgs(d.addr, src)...)
	cmd.Env = childEnv(t)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = full, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailed {
		t.Fatalf("ferry send with a full stdout: %v, want exit %d; stderr:\n%s", err, exitFailed, stderr.String())
	}
	if !strings.Contains(stderr.String(), "writing --json record") {
		t.Errorf("stderr does not say the record was lost:\n%s", stderr.String())
	}
}
