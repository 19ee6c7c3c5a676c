package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// sendRecord is the part of `ferry send --json` output the benchmark checks.
type sendRecord struct {
	Size   int64  `json:"size"`
	BLAKE3 string `json:"blake3"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// runFerry sends j's file from j.senders `ferry send` processes at once to
// one fresh ferryd, each under its own --dest: over loopback TCP, inside
// TLS 1.3 as every TCP session of ferry, or with unix over a Unix socket
// in plaintext, as ferryd serves Unix sockets (the tool ferry-unix: what
// ferry costs without TLS, against the same raw TCP copy).
func (b *bench) runFerry(ctx context.Context, j job, unix bool) (sample, error) {
	dir, logs, err := b.newRun("ferry")
	if err != nil {
		return sample{}, err
	}
	listen := "127.0.0.1:0"
	if unix {
		listen = "unix:" + filepath.Join(dir, "ferryd.sock")
	}
	daemon, addr, err := startListener(ctx, logs+"-ferryd.log", b.ferryd, b.ferrydArgs(dir, listen)...)
	if err != nil {
		return sample{}, err
	}
	to := addr
	if unix {
		to = "unix:" + addr
	}
	var rl *relay
	if j.relay {
		if rl, err = startRelay(addr); err != nil {
			_, _ = daemon.stop() // the relay error is the one to report
			return sample{}, err
		}
		to = rl.Addr()
	}
	b.settle()
	start := time.Now()
	su, end, sendErr := b.ferrySenders(ctx, j, to, daemon.fingerprint, logs)
	du, stopErr := daemon.stop()
	s := sample{wall: end.Sub(start), sender: su, receiver: du}
	if rl != nil {
		if err := rl.Close(); err != nil {
			fmt.Fprintf(b.stderr, "ferrybench: warning: %v\n", err)
		}
		if first := rl.FirstChunk(); !first.IsZero() {
			s.firstChunk = first.Sub(start)
		}
		s.handshake = rl.Handshake()
	}
	if err := errors.Join(sendErr, stopErr); err != nil {
		return sample{}, err
	}
	return s, os.RemoveAll(dir)
}

// ferrydArgs returns ferryd's arguments for a run in root, listening on
// listen.
func (b *bench) ferrydArgs(root, listen string) []string {
	args := []string{"--listen", listen, "--root", root}
	if b.cfg.syncBytes > 0 {
		args = append(args, "--sync-bytes", strconv.FormatInt(b.cfg.syncBytes, 10))
	}
	if b.cfg.syncInterval > 0 {
		args = append(args, "--sync-interval", b.cfg.syncInterval.String())
	}
	return args
}

// ferrySenders starts j.senders senders together and waits for all. It
// returns their summed usage and when the last one exited.
func (b *bench) ferrySenders(ctx context.Context, j job, to, fingerprint, logs string) (usage, time.Time, error) {
	procs := make([]*proc, 0, j.senders)
	var errs []error
	for i := range j.senders {
		// --retries 0: a failure must fail the run, not hide in a resume.
		args := []string{"send", "--to", to}
		if fingerprint != "" { // none on a Unix socket, which is plaintext
			args = append(args, "--fingerprint", fingerprint)
		}
		args = append(args, "--dest", fmt.Sprintf("s%d", i), "--json", "--quiet", "--retries", "0", j.src.path)
		p, err := startProc(ctx, fmt.Sprintf("%s-send%d.log", logs, i), b.ferry, args...)
		if err != nil {
			errs = append(errs, err)
			break
		}
		procs = append(procs, p)
	}
	var (
		mu    sync.Mutex
		total usage
		last  time.Time
		wg    sync.WaitGroup
	)
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := p.wait()
			if err == nil {
				err = checkRecord(p.stdout.Bytes(), j.src)
			}
			mu.Lock()
			defer mu.Unlock()
			total = total.add(u)
			last = later(last, p.ended)
			errs = append(errs, err)
		}()
	}
	wg.Wait()
	return total, last, errors.Join(errs...)
}

// checkRecord checks that the daemon committed exactly the source.
func checkRecord(out []byte, src source) error {
	var rec sendRecord
	if err := json.Unmarshal(firstLine(out), &rec); err != nil { // a summary object follows
		return fmt.Errorf("ferry send --json output %q: %w", out, err)
	}
	if rec.Status != "committed" || rec.Size != src.size.bytes || rec.BLAKE3 != src.blake3 {
		return fmt.Errorf("ferry send: %s %d bytes blake3 %s (%s), want %d bytes blake3 %s",
			rec.Status, rec.Size, rec.BLAKE3, rec.Error, src.size.bytes, src.blake3)
	}
	return nil
}
