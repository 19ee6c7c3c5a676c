package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts
// it at cleanup. Mounting needs root (CI runs as root); in CI a failure to
// mount fails the test, elsewhere it skips, so that the suite never passes
// in CI without this test having run.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := "mounting a " + size + " tmpfs (needs root): " + strings.TrimSpace(string(out)) + ": " + err.Error()
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fillDisk writes zeros into path until the file system is full.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			return
		}
	}
}

// TestDiskFullMidTransfer runs the real ferryd on a small tmpfs and fills
// that file system while a transfer is under way: the sender is refused
// with "no space" (exit 3), the daemon stays up and keeps answering, and
// once space is freed the same send resumes from the durable offset to a
// bit-identical file.
func TestDiskFullMidTransfer(t *testing.T) {
	ctx := testContext(t)
	fs := mountTmpfs(t, "24m")
	root := filepath.Join(fs, "root")
	// Frequent fsyncs, so that some data is durable before the disk fills.
	// Without preallocation, as on a file system without fallocate or
	// for a resumed or sparse file: with it the admitted transfer holds
	// its blocks and the filler cannot take them (TestDiskFullAfterAdmission).
	d := startDaemon(t, root, "--sync-bytes", "1048576", "--preallocate=false")
	p := newProxy(t, d.addr)
	p.Throttle(16 << 20)
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 16<<20, 3)
	f := startFerry(t, sendArgs(p.Addr(), "--retries", "0", src)...)
	if err := p.WaitBytes(ctx, 6<<20); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(fs, "filler")
	fillDisk(t, filler)
	r := f.wait()
	wantCode(t, r, exitRefused)
	if rec := onlyRecord(t, r); !strings.Contains(rec.Error, "no space") {
		t.Errorf("error %q does not say no space", rec.Error)
	}
	if !d.alive() {
		t.Fatal("ferryd exited on a full disk")
	}
	// Still serving: a new session is answered (and refused for space).
	tiny := filepath.Join(t.TempDir(), "tiny.bin")
	writeRandom(t, tiny, 100, 4)
	wantCode(t, runFerry(t, sendArgs(d.addr, tiny)...), exitRefused)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	r = runFerry(t, sendArgs(d.addr, src)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	checkCommitted(t, rec, src, filepath.Join(root, "data.bin"))
	// Above 0: with an fsync per MiB, data made durable before the disk
	// filled must survive the ENOSPC, not be discarded with the partial.
	if rec.ResumedFrom == 0 || rec.ResumedFrom > 6<<20 || rec.SentBytes != rec.Size-rec.ResumedFrom {
		t.Errorf("resumed from %d and sent %d bytes of %d; want a resume within what reached the daemon, sending only the rest",
			rec.ResumedFrom, rec.SentBytes, rec.Size)
	}
	t.Logf("disk filled after ≥6 MiB: resumed from %d bytes, sent %d", rec.ResumedFrom, rec.SentBytes)
}

// TestDiskFullAfterAdmission: with preallocation (ferryd's default) a
// transfer that was admitted holds its blocks, so filling the file system
// while it runs does not stop it: it commits, bit-identical. Its state
// records, which need a new block each, cannot be written meanwhile; the
// transfer goes on with the durable offset of the last one (an fsync per
// MiB, so that many are attempted on the full disk).
func TestDiskFullAfterAdmission(t *testing.T) {
	ctx := testContext(t)
	fs := mountTmpfs(t, "24m")
	root := filepath.Join(fs, "root")
	d := startDaemon(t, root, "--sync-bytes", "1048576")
	p := newProxy(t, d.addr)
	p.Throttle(16 << 20)
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 16<<20, 5)
	f := startFerry(t, sendArgs(p.Addr(), "--retries", "0", src)...)
	if err := p.WaitBytes(ctx, 6<<20); err != nil {
		t.Fatal(err)
	}
	fillDisk(t, filepath.Join(fs, "filler"))
	r := f.wait()
	wantCode(t, r, exitOK)
	checkCommitted(t, onlyRecord(t, r), src, filepath.Join(root, "data.bin"))
}
