package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/daemon"
)

// version is set by the linker for releases.
var version = "dev"

// Exit codes of ferryd.
const (
	exitOK      = 0
	exitFailure = 1 // startup failed; systemd should not restart in a loop
	exitUsage   = 2
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	code := exitOK
	app := &cli.App{
		Name:      "ferryd",
		Usage:     "receive files over TCP, verified with BLAKE3, resumable after any interruption",
		Version:   version,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags:     flags(),
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			code = exitUsage
			return err
		},
		ExitErrHandler: func(*cli.Context, error) {}, // we choose the exit code (urfave/cli#610)
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				code = exitUsage
				return fmt.Errorf("unexpected argument %q", c.Args().First())
			}
			return serve(ctx, c, stderr, &code)
		},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintf(stderr, "ferryd: %v\n", err)
		if code == exitOK {
			code = exitFailure
		}
	}
	return code
}

func flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "listen", Value: cli.NewStringSlice("127.0.0.1:7219"), EnvVars: []string{"FERRY_LISTEN"},
			Usage: "address to listen on: HOST:PORT, [IPv6]:PORT, :0 for any port, or unix:/path (repeatable)"},
		&cli.StringFlag{Name: "root", Value: "./ferry-inbox", EnvVars: []string{"FERRY_ROOT"},
			Usage: "directory received files are written into (under systemd: $STATE_DIRECTORY)"},
		&cli.Int64Flag{Name: "sync-bytes", Value: 16 << 20, EnvVars: []string{"FERRY_SYNC_BYTES"},
			Usage: "bytes written between fsyncs of a partial"},
		&cli.DurationFlag{Name: "sync-interval", Value: time.Second, EnvVars: []string{"FERRY_SYNC_INTERVAL"},
			Usage: "longest time written data waits for an fsync"},
		&cli.DurationFlag{Name: "idle-timeout", Value: 60 * time.Second, EnvVars: []string{"FERRY_IDLE_TIMEOUT"},
			Usage: "drop a session that delivers no frame for this long"},
		&cli.Int64Flag{Name: "max-size", EnvVars: []string{"FERRY_MAX_SIZE"},
			Usage: "refuse files larger than this many bytes (0: no limit)"},
		&cli.IntFlag{Name: "max-sessions", Value: 64, EnvVars: []string{"FERRY_MAX_SESSIONS"},
			Usage: "most sessions at once; more are refused as busy"},
		&cli.IntFlag{Name: "max-sessions-per-ip", Value: 16, EnvVars: []string{"FERRY_MAX_SESSIONS_PER_IP"},
			Usage: "most sessions at once from one IP address; more are refused as busy (0: no limit; Unix sockets are not counted)"},
		&cli.Int64Flag{Name: "min-rate", Value: 4096, EnvVars: []string{"FERRY_MIN_RATE"},
			Usage: "drop a session that holds disk space for a transfer but delivers fewer bytes per second than this, averaged over --min-rate-window; its data stays resumable (0: off)"},
		&cli.DurationFlag{Name: "min-rate-window", Value: 30 * time.Second, EnvVars: []string{"FERRY_MIN_RATE_WINDOW"},
			Usage: "window --min-rate is averaged over"},
		&cli.IntFlag{Name: "max-pending", Value: 1024, EnvVars: []string{"FERRY_MAX_PENDING"},
			Usage: "most connections still waiting for their hello; more are closed at once"},
		&cli.DurationFlag{Name: "handshake-timeout", Value: 10 * time.Second, EnvVars: []string{"FERRY_HANDSHAKE_TIMEOUT"},
			Usage: "drop a connection that sends no hello for this long"},
		&cli.IntFlag{Name: "max-chunk-size", Value: 4 << 20, EnvVars: []string{"FERRY_MAX_CHUNK_SIZE"},
			Usage: "largest chunk size in bytes agreed with senders, rounded down to a power of two (bounds memory per session)"},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: 30 * time.Second, EnvVars: []string{"FERRY_SHUTDOWN_TIMEOUT"},
			Usage: "how long SIGTERM waits for sessions to make their data durable"},
		&cli.BoolFlag{Name: "direct-io", Value: true, EnvVars: []string{"FERRY_DIRECT_IO"},
			Usage: "write received chunks with O_DIRECT, bypassing the page cache, where the file system allows it"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"FERRY_LOG_LEVEL"},
			Usage: "debug, info, warn or error"},
	}
}

// serve runs the daemon until a signal; it sets *code for usage errors.
func serve(ctx context.Context, c *cli.Context, stderr io.Writer, code *int) error {
	log, err := newLogger(c.String("log-level"), stderr)
	if err != nil {
		*code = exitUsage
		return err
	}
	root := c.String("root")
	if !c.IsSet("root") && os.Getenv("STATE_DIRECTORY") != "" {
		// systemd's StateDirectory= may list several; the first is ours.
		root = strings.Split(os.Getenv("STATE_DIRECTORY"), ":")[0]
	}
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		return fmt.Errorf("opening root: %w", err)
	}
	defer fsys.Close() //nolint:errcheck // a directory handle; nothing to flush
	// One daemon per root, before anything under it is touched.
	lock, err := daemon.LockRoot(fsys)
	if err != nil {
		return err
	}
	defer lock.Close() //nolint:errcheck // released on exit either way
	store, err := daemon.NewDirStore(fsys)
	if err != nil {
		return fmt.Errorf("opening root %s: %w", root, err)
	}
	store.DirectIO = c.Bool("direct-io")
	finished, discarded, err := store.FinishCommits()
	for _, name := range finished {
		log.Info("interrupted commit finished", "name", name)
	}
	if discarded > 0 {
		log.Info("partials linked elsewhere discarded", "count", discarded)
	}
	if err != nil {
		return fmt.Errorf("finishing interrupted commits in %s: %w", root, err)
	}
	srv, err := daemon.NewServer(daemon.Config{
		Store: store, Logger: log, Agent: "ferryd/" + version,
		MaxChunkSize: c.Int("max-chunk-size"), SyncBytes: c.Int64("sync-bytes"), SyncInterval: c.Duration("sync-interval"),
		IdleTimeout: c.Duration("idle-timeout"), MaxSize: c.Int64("max-size"), MaxSessions: c.Int("max-sessions"),
		MaxSessionsPerIP: orNegative(c.Int("max-sessions-per-ip")),
		MinRate:          orNegative(c.Int64("min-rate")), MinRateWindow: c.Duration("min-rate-window"),
		MaxPending: c.Int("max-pending"), HandshakeTimeout: c.Duration("handshake-timeout"),
	})
	if err != nil {
		return err
	}
	lns, err := listenAll(c.StringSlice("listen"))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		log.Info("listening", "addr", ln.Addr().String(), "root", fsys.Name())
		go func() { errc <- srv.Serve(ln) }()
	}
	if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
		log.Warn("notifying systemd", "state", "ready", "err", err)
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	}
	return drain(srv, log, c.Duration("shutdown-timeout"))
}

// orNegative maps a flag's 0, which turns a limit off, to the -1 that
// does so in daemon.Config (where 0 takes the default).
func orNegative[T int | int64](v T) T {
	if v == 0 {
		return -1
	}
	return v
}

// drain shuts down gracefully; a second signal exits at once (tusd, caddy).
func drain(srv *daemon.Server, log *slog.Logger, timeout time.Duration) error {
	log.Info("shutting down", "timeout", timeout)
	if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyStopping); err != nil {
		log.Warn("notifying systemd", "state", "stopping", "err", err)
	}
	again := make(chan os.Signal, 1)
	signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(again)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case <-again:
			log.Warn("second signal: exiting without waiting for sessions")
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: sessions still running: %w", err)
	}
	log.Info("stopped")
	return nil
}

// listenAll opens every listen address; tcp by default, unix:/path for a
// Unix socket.
func listenAll(addrs []string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, a := range addrs {
		network, addr := "tcp", a
		if p, ok := strings.CutPrefix(a, "unix:"); ok {
			network, addr = "unix", p
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			for _, l := range lns {
				_ = l.Close() // the listen error is the one to report
			}
			return nil, fmt.Errorf("listening on %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
