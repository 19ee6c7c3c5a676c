package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// profile sends one file from a transfer.Client to a daemon.Server in this
// process over loopback TCP, under the CPU profiler. Sender and daemon
// share the process as they share the cores in the benchmark, so the
// profile shows where a transfer's CPU goes on both sides at once.
func profile(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	work, err := os.MkdirTemp(cfg.workParent, "ferrybench-profile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work) //nolint:errcheck // best effort: a scratch directory
	fmt.Fprintf(stderr, "ferrybench: writing %s source file in %s\n", cfg.profileSize.label, work)
	src, err := makeRandom(work, cfg.profileSize)
	if err != nil {
		return err
	}
	addr, fingerprint, stopServer, err := serveInProcess(filepath.Join(work, "root"), cfg.profDirect, cfg.profTLS)
	if err != nil {
		return err
	}
	defer stopServer()

	bg := settle(cfg.pause, cfg.quietWait, stderr)
	if cfg.memory[0] == memFresh {
		// -memory fresh: the run starts as the benchmark's fresh runs do.
		if err := freshen(work, 2*src.size.bytes); err != nil {
			return err
		}
	}
	prof, err := startCPUProfile(cfg.cpuProfile)
	if err != nil {
		return err
	}
	stopTrace, err := startTrace(cfg.execTrace)
	if err != nil {
		return err
	}
	before := selfCPU()
	start := time.Now()
	var hash transfer.Hash
	pprof.Do(ctx, pprof.Labels("side", "sender"), func(ctx context.Context) {
		hash, err = sendInProcess(ctx, addr, fingerprint, src.path)
	})
	wall := time.Since(start)
	cpu := selfCPU() - before
	pprof.StopCPUProfile()
	if terr := stopTrace(); err == nil {
		err = terr
	}
	if cerr := prof.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got := fmt.Sprintf("%x", hash[:]); got != src.blake3 {
		return fmt.Errorf("committed BLAKE3 %s, source %s", got, src.blake3)
	}
	fmt.Fprintf(stdout, "in-process transfer of %s (%s memory, direct I/O %t, TLS %t): %.3f s, %.1f MiB/s, %.2f CPU s (sender and daemon); other processes busy %.0f%% before it\n",
		src.size.label, cfg.memory[0], cfg.profDirect, cfg.profTLS, wall.Seconds(), float64(src.size.bytes)/mib/wall.Seconds(), cpu.Seconds(), 100*bg)
	fmt.Fprintf(stdout, "CPU profile: %s\nread it with: go tool pprof -top %s %s\n", cfg.cpuProfile, os.Args[0], cfg.cpuProfile)
	fmt.Fprintf(stdout, "one side's samples: add -tagfocus side=sender or -tagfocus side=daemon\n")
	return nil
}

// serveInProcess starts a daemon.Server on a loopback port with a DirStore
// in root, as ferryd does with default settings: direct is its --direct-io;
// with useTLS the listener serves TLS 1.3 with a generated key, as
// ferryd's TCP listeners do, and fingerprint is that key's. The server's
// goroutines carry the profiler label side=daemon.
func serveInProcess(root string, direct, useTLS bool) (addr, fingerprint string, stop func(), err error) {
	fsys, store, err := inProcessStore(root, direct)
	if err != nil {
		return "", "", nil, err
	}
	srv, err := daemon.NewServer(daemon.Config{Store: store, Logger: slog.New(slog.DiscardHandler), Agent: "ferrybench"})
	if err != nil {
		_ = fsys.Close() // the error above is the one to report
		return "", "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = fsys.Close() // the error above is the one to report
		return "", "", nil, err
	}
	addr = ln.Addr().String()
	if useTLS {
		// A fresh root of this process's own: no other daemon generates
		// a key in it, so the root's lock is not needed.
		cert, err := daemon.GeneratedCertificate(fsys)
		if err != nil {
			_ = ln.Close()   // the error above is the one to report
			_ = fsys.Close() // the error above is the one to report
			return "", "", nil, err
		}
		fingerprint = cert.Fingerprint()
		ln = daemon.NewTLSListener(ln, cert.ServerTLS())
	}
	done := make(chan error, 1)
	go pprof.Do(context.Background(), pprof.Labels("side", "daemon"), func(context.Context) { done <- srv.Serve(ln) })
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx) // the profile is taken; a slow drain changes nothing
		<-done                //nolint:errcheck // ErrServerClosed
		_ = fsys.Close()      // a directory handle; nothing to flush
	}
	return addr, fingerprint, stop, nil
}

// inProcessStore opens root as ferryd opens its root: a DirStore that
// writes full chunks with O_DIRECT when direct is set, as ferryd's default
// --direct-io does. A profile without it measures page-cache copies that
// ferryd does not make.
func inProcessStore(root string, direct bool) (*daemon.OSFS, *daemon.DirStore, error) {
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		return nil, nil, err
	}
	store, err := daemon.NewDirStore(fsys)
	if err != nil {
		_ = fsys.Close() // the error above is the one to report
		return nil, nil, err
	}
	store.DirectIO = direct
	return fsys, store, nil
}

// sendInProcess sends path to the daemon at addr as `ferry send` would:
// inside TLS, pinning fingerprint, unless fingerprint is empty.
func sendInProcess(ctx context.Context, addr, fingerprint, path string) (transfer.Hash, error) {
	if fingerprint != "" {
		s := &transfer.Sender{Addr: addr, Agent: "ferrybench", TLS: &transfer.TLSOptions{Fingerprint: fingerprint}}
		defer s.Close() //nolint:errcheck // Send has reported the result
		rep, err := s.Send(ctx, transfer.File{Name: filepath.Base(path), Path: path})
		return rep.Hash, err
	}
	res, err := sendPlain(ctx, addr, path)
	return res.Hash, err
}

// sendPlain sends path over a plaintext TCP session, as ferry did before
// TLS (ferryd serves plaintext only on Unix sockets).
func sendPlain(ctx context.Context, addr, path string) (transfer.Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return transfer.Result{}, err
	}
	defer f.Close() //nolint:errcheck // opened read-only
	src, err := transfer.FileSource(f)
	if err != nil {
		return transfer.Result{}, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return transfer.Result{}, err
	}
	c, err := transfer.Handshake(ctx, conn, transfer.ClientOptions{Agent: "ferrybench"})
	if err != nil {
		_ = conn.Close() // the handshake error is the one to report
		return transfer.Result{}, err
	}
	defer c.Close() //nolint:errcheck // Send has reported the result
	return c.Send(ctx, src, filepath.Base(path), transfer.SendOptions{})
}

// startTrace starts the execution tracer writing to path, if path is
// set, and returns the function that stops it and closes the file.
func startTrace(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := trace.Start(f); err != nil {
		_ = f.Close() // the error above is the one to report
		return nil, err
	}
	return func() error { trace.Stop(); return f.Close() }, nil
}

func startCPUProfile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close() // empty; removed below
		return nil, errors.Join(err, os.Remove(path))
	}
	return f, nil
}

// selfCPU returns the user+system CPU this process has used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
