package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// restartTail is how much of the sparse file the partial built by
// restartRead still lacks: the sender sends it after the resume.
const restartTail = 16 << 20

// restartRead measures what a restarted ferryd reads to resume a large
// partial (issue 10): it builds, as a daemon killed mid-transfer leaves it,
// the partial of a sparse file of cfg.restartSize bytes durable up to its
// last 16 MiB (data file and state record with the merge stack, 1 MiB
// chunks), starts bin/ferryd on that root, runs `ferry send` of the file,
// and reports the bytes ferryd read meanwhile (/proc/PID/io rchar and
// read_bytes), against the durable prefix it did not re-read.
func restartRead(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	work, err := os.MkdirTemp(cfg.workParent, "ferrybench-restart-")
	if err != nil {
		return err
	}
	if !cfg.keep {
		defer os.RemoveAll(work) //nolint:errcheck // best effort: a scratch directory
	}
	size := cfg.restartSize.bytes
	const cs = transfer.DefaultChunkSize
	if size <= restartTail || size%cs != 0 {
		return fmt.Errorf("-restart-size %s: want a multiple of 1 MiB above 16 MiB", cfg.restartSize.label)
	}
	srcPath := filepath.Join(work, "sparse-"+cfg.restartSize.label+".bin")
	if err := os.WriteFile(srcPath, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(srcPath, size); err != nil {
		return err
	}
	root := filepath.Join(work, "root")
	fmt.Fprintf(stderr, "ferrybench: building a %s partial of a sparse file in %s\n", cfg.restartSize.label, work)
	d := size - restartTail
	start := time.Now()
	want, err := buildPartial(ctx, root, srcPath, d)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "ferrybench: partial durable at %d built in %.1fs\n", d, time.Since(start).Seconds())

	logs := filepath.Join(work, "restart")
	fd, addr, err := startListener(ctx, logs+"-ferryd.log", filepath.Join(cfg.binDir, "ferryd"), "--listen", "127.0.0.1:0", "--root", root)
	if err != nil {
		return err
	}
	before, err := procIO(fd.cmd.Process.Pid)
	if err != nil {
		_, _ = fd.stop() // the /proc error is the one to report
		return err
	}
	start = time.Now()
	snd, err := startProc(ctx, logs+"-send.log", filepath.Join(cfg.binDir, "ferry"),
		"send", "--to", addr, "--fingerprint", fd.fingerprint, "--json", "--quiet", "--retries", "0", srcPath)
	if err != nil {
		_, _ = fd.stop() // the start error is the one to report
		return err
	}
	su, sendErr := snd.wait()
	wall := time.Since(start)
	after, ioErr := procIO(fd.cmd.Process.Pid)
	du, stopErr := fd.stop()
	if sendErr != nil || ioErr != nil || stopErr != nil {
		return fmt.Errorf("%w %w %w", sendErr, ioErr, stopErr)
	}
	var rec struct {
		ResumedFrom int64  `json:"resumed_from"`
		SentBytes   int64  `json:"sent_bytes"`
		BLAKE3      string `json:"blake3"`
		Status      string `json:"status"`
	}
	if err := json.Unmarshal(firstLine(snd.stdout.Bytes()), &rec); err != nil {
		return fmt.Errorf("reading ferry's --json record: %w", err)
	}
	if rec.BLAKE3 != hex.EncodeToString(want[:]) || rec.ResumedFrom != d {
		return fmt.Errorf("ferry record %+v: want resumed_from %d, blake3 %x", rec, d, want)
	}
	fmt.Fprintf(stdout, "restart on a %s sparse partial durable at %d bytes (1 MiB chunks):\n", cfg.restartSize.label, d)
	fmt.Fprintf(stdout, "  ferry send: resumed_from %d, sent %d bytes, %s, blake3 %s\n", rec.ResumedFrom, rec.SentBytes, rec.Status, rec.BLAKE3)
	rchar := after["rchar"] - before["rchar"]
	fmt.Fprintf(stdout, "  ferryd read during the resumed transfer: rchar %d bytes, read_bytes %d bytes (durable prefix %d bytes)\n",
		rchar, after["read_bytes"]-before["read_bytes"], d)
	// rchar counts socket reads too: what is left beyond the chunk data
	// received is the tail chunk, the state record and the frame headers.
	fmt.Fprintf(stdout, "  rchar beyond the %d chunk bytes received: %d bytes (the tail chunk is %d)\n",
		rec.SentBytes, rchar-rec.SentBytes, cs)
	fmt.Fprintf(stdout, "  wall %.2fs; CPU: sender %.2fs (re-hashes its own prefix), ferryd %.2fs\n",
		wall.Seconds(), su.cpu.Seconds(), du.cpu.Seconds())
	return nil
}

// buildPartial leaves under root the partial that ferryd holds after
// receiving the first d bytes of the file at srcPath, sent by `ferry send
// srcPath` in 1 MiB chunks, and returns the whole file's BLAKE3. The data
// file is sparse, as the source is.
func buildPartial(ctx context.Context, root, srcPath string, d int64) (transfer.Hash, error) {
	f, err := os.Open(srcPath)
	if err != nil {
		return transfer.Hash{}, err
	}
	defer f.Close() //nolint:errcheck // opened read-only
	src, err := transfer.FileSource(f)
	if err != nil {
		return transfer.Hash{}, err
	}
	prefix := make([]byte, min(src.Size, transfer.IdentityPrefix))
	if _, err := f.ReadAt(prefix, 0); err != nil {
		return transfer.Hash{}, err
	}
	name := filepath.Base(srcPath)
	offer := &transfer.Offer{Size: src.Size, Mode: uint32(src.Mode.Perm()), MtimeNs: src.ModTime.UnixNano(),
		Inode: src.Inode, PrefixID: transfer.HashBytes(prefix), Name: name}
	whole, err := transfer.NewMergeStack(transfer.DefaultChunkSize)
	if err != nil {
		return transfer.Hash{}, err
	}
	var atD transfer.MergeStack
	err = transfer.HashChunks(ctx, f, 0, src.Size, transfer.DefaultChunkSize, 0, func(off int64, data []byte, cv transfer.CV) error {
		if off == d {
			atD = *whole
		}
		return whole.Push(cv, int64(len(data)))
	})
	if err != nil {
		return transfer.Hash{}, err
	}
	sum, err := whole.Sum(src.Size)
	if err != nil {
		return transfer.Hash{}, err
	}

	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		return transfer.Hash{}, err
	}
	defer fsys.Close() //nolint:errcheck // the partial is closed and synced below
	store, err := daemon.NewDirStore(fsys)
	if err != nil {
		return transfer.Hash{}, err
	}
	// The key as docs/PROTOCOL.md ("Resume") derives it, with no credential.
	k := transfer.HashBytes([]byte("ferry partial v1\x00\x00" + name))
	key := hex.EncodeToString(k[:16])
	p, _, err := store.Open(key, offer, transfer.DefaultChunkSize, false)
	if err != nil {
		return transfer.Hash{}, err
	}
	if err := os.Truncate(filepath.Join(root, transfer.ReservedDir, "partials", key+".data"), d); err != nil {
		_ = p.Close() // the truncate error is the one to report
		return transfer.Hash{}, err
	}
	_, err = p.Sync(&atD)
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	return sum, err
}

// procIO returns the counters of /proc/PID/io (rchar, read_bytes, …).
func procIO(pid int) (map[string]int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // opened read-only
	m := make(map[string]int64)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			m[k] = n
		}
	}
	return m, sc.Err()
}

func firstLine(b []byte) []byte {
	line, _, _ := strings.Cut(string(b), "\n")
	return []byte(line)
}
