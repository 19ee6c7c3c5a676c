package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/auth"
	"github.com/ferry-dev/ferry/internal/bwlimit"
	"github.com/ferry-dev/ferry/internal/sizeflag"
	"github.com/ferry-dev/ferry/transfer"
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
	var st runState
	if err := newApp(ctx, stdout, stderr, &st).Run(permuteTokenArgs(args)); err != nil {
		if st.jsonLog != nil {
			st.jsonLog.Error("exiting", "err", err.Error())
		} else {
			fmt.Fprintf(stderr, "ferryd: %v\n", err)
		}
		if st.code == exitOK {
			st.code = exitFailure
		}
	}
	return st.code
}

// runState is what one run of the command line learns on the way.
type runState struct {
	code    int          // exit code chosen before the error returns
	jsonLog *slog.Logger // with --log-format json, the last error is a record too
}

// newApp returns ferryd's command line; the man page and the shell
// completions are generated from it too (docs_test.go, make man).
func newApp(ctx context.Context, stdout, stderr io.Writer, st *runState) *cli.App {
	return &cli.App{
		Name:      "ferryd",
		Usage:     "receive files over TCP, verified with BLAKE3, resumable after any interruption",
		UsageText: "ferryd [--listen ADDR]... [--root DIR] [options]",
		Description: "ferryd receives files that `ferry send` sends, verifies every chunk and the whole file with BLAKE3, " +
			"keeps partial uploads durably and resumes them after any interruption. It logs on stderr. " +
			"Every option also reads the FERRY_* environment variable shown with it. Sizes take units (512KiB, 10G). " +
			"SIGTERM or SIGINT drains: sessions make their data durable, then ferryd exits 0; a second signal exits at once. " +
			"TCP listeners speak TLS 1.3 only, with the key under ROOT/.ferry/tls (generated on first start) or --tls-cert/--tls-key; " +
			"the listening line shows the key's fingerprint=SHA256:…, and SIGHUP reloads the certificate. " +
			"Exit status: 0 after a drain, 1 on a failure to run, 2 on a usage error.",
		Version:   version,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags:     append(flags(), tlsFlags()...),
		Commands:  []*cli.Command{partialsCommand(stdout, st), tokenCommand(stdout, stderr, st), fingerprintCommand(stdout, st)},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			st.code = exitUsage
			return err
		},
		ExitErrHandler: func(*cli.Context, error) {}, // we choose the exit code (urfave/cli#610)
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				st.code = exitUsage
				return fmt.Errorf("unexpected argument %q", c.Args().First())
			}
			log, err := newLogger(c.String("log-level"), c.String("log-format"), stderr)
			if err != nil {
				st.code = exitUsage
				return err
			}
			if c.String("log-format") == "json" {
				st.jsonLog = log
			}
			return serve(ctx, c, log, &st.code)
		},
	}
}

func flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "listen", Value: cli.NewStringSlice("127.0.0.1:7219"), EnvVars: []string{"FERRY_LISTEN"},
			Usage: "address `ADDR` to listen on: HOST:PORT, [IPv6]:PORT, :0 for any port, or unix:/path (repeatable); with sockets from systemd (LISTEN_FDS), none unless set"},
		&cli.StringFlag{Name: "root", Value: "./ferry-inbox", EnvVars: []string{"FERRY_ROOT"},
			Usage: "directory `DIR` received files are written into (under systemd: $STATE_DIRECTORY)"},
		&cli.StringFlag{Name: "store", EnvVars: []string{"FERRY_STORE"},
			Usage: "keep partials and files in S3-compatible object storage at `s3://BUCKET[/PREFIX]` instead of --root, shared by every daemon given the same; credentials from the AWS environment variables, credential files or instance role (docs/SCALE-OUT.md)"},
		&cli.StringFlag{Name: "s3-endpoint", EnvVars: []string{"FERRY_S3_ENDPOINT"},
			Usage: "S3 endpoint `URL` for --store (http:// or https://; default AWS)"},
		&cli.StringFlag{Name: "s3-region", EnvVars: []string{"FERRY_S3_REGION"},
			Usage: "S3 `REGION` for --store (default: asked of the endpoint)"},
		&cli.DurationFlag{Name: "s3-lease-ttl", Value: 30 * time.Second, EnvVars: []string{"FERRY_S3_LEASE_TTL"},
			Usage: "how long a transfer's lease lasts without renewal with --store: a daemon that dies holds its transfers this long"},
		sizeflag.Flag("sync-bytes", 16<<20, "FERRY_SYNC_BYTES", "`SIZE` written between fsyncs of a partial"),
		&cli.DurationFlag{Name: "sync-interval", Value: time.Second, EnvVars: []string{"FERRY_SYNC_INTERVAL"},
			Usage: "longest time written data waits for an fsync"},
		&cli.DurationFlag{Name: "idle-timeout", Value: 60 * time.Second, EnvVars: []string{"FERRY_IDLE_TIMEOUT"},
			Usage: "drop a session that delivers no frame for this long"},
		sizeflag.Flag("max-size", 0, "FERRY_MAX_SIZE", "refuse files larger than `SIZE` (0: no limit)"),
		sizeflag.Flag("min-free", 0, "FERRY_MIN_FREE", "refuse an offer that would leave less than `SIZE` free on the root's file system, counting what transfers in progress may still write (0: only what does not fit)"),
		&cli.IntFlag{Name: "max-sessions", Value: 64, EnvVars: []string{"FERRY_MAX_SESSIONS"},
			Usage: "most sessions at once; more are refused as busy"},
		&cli.IntFlag{Name: "max-sessions-per-ip", Value: 16, EnvVars: []string{"FERRY_MAX_SESSIONS_PER_IP"},
			Usage: "most sessions at once from one IP address; more are refused as busy (0: no limit; Unix sockets are not counted)"},
		sizeflag.RateFlag("min-rate", 4096, "FERRY_MIN_RATE",
			"drop a session that holds disk space for a transfer but delivers less than `RATE` (bytes/s, e.g. 4KiB), averaged over --min-rate-window; its data stays resumable (0: off)"),
		&cli.DurationFlag{Name: "min-rate-window", Value: 30 * time.Second, EnvVars: []string{"FERRY_MIN_RATE_WINDOW"},
			Usage: "window --min-rate is averaged over"},
		&cli.IntFlag{Name: "max-pending", Value: 1024, EnvVars: []string{"FERRY_MAX_PENDING"},
			Usage: "most connections still waiting for their hello; more are closed at once"},
		&cli.DurationFlag{Name: "handshake-timeout", Value: 10 * time.Second, EnvVars: []string{"FERRY_HANDSHAKE_TIMEOUT"},
			Usage: "drop a connection that sends no hello for this long"},
		sizeflag.RateFlag("max-rate", 0, "FERRY_MAX_RATE",
			"receive at most `RATE` (bytes/s, e.g. 50MiB) on each session (0: no limit)"),
		sizeflag.Flag("max-chunk-size", 4<<20, "FERRY_MAX_CHUNK_SIZE", "largest chunk `SIZE` agreed with senders, rounded down to a power of two (bounds memory per session)"),
		&cli.DurationFlag{Name: "shutdown-timeout", Value: 30 * time.Second, EnvVars: []string{"FERRY_SHUTDOWN_TIMEOUT"},
			Usage: "how long SIGTERM waits for sessions to make their data durable"},
		&cli.BoolFlag{Name: "direct-io", Value: true, EnvVars: []string{"FERRY_DIRECT_IO"},
			Usage: "write received chunks with O_DIRECT, bypassing the page cache, where the file system allows it"},
		&cli.BoolFlag{Name: "preallocate", Value: true, EnvVars: []string{"FERRY_PREALLOCATE"},
			Usage: "reserve a new partial's blocks at admission (fallocate, where the file system supports it), so a transfer that was admitted cannot run out of space; never for a sparse file, whose holes stay holes"},
		&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"FERRY_METRICS_LISTEN"},
			Usage: "serve Prometheus metrics at http://`ADDR`/metrics (HOST:PORT; :0 for any port); none unless set"},
		&cli.DurationFlag{Name: "partial-ttl", Value: 7 * 24 * time.Hour, EnvVars: []string{"FERRY_PARTIAL_TTL"},
			Usage: "remove partials untouched this long, in the background, one log line each; a partial a session uses is kept (0: never)"},
		tokensFlag(),
		&cli.BoolFlag{Name: "allow-anonymous", EnvVars: []string{"FERRY_ALLOW_ANONYMOUS"},
			Usage: "accept senders without a token on a listener that is not loopback, while there are no tokens (unsafe on an open network)"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"FERRY_LOG_LEVEL"},
			Usage: "`LEVEL`: debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"FERRY_LOG_FORMAT"},
			Usage: "`FORMAT`: text (key=value lines, journal-friendly) or json (one JSON object per line)"},
	}
}

// serve runs the daemon until a signal; it sets *code for usage errors.
func serve(ctx context.Context, c *cli.Context, log *slog.Logger, code *int) error {
	if c.String("store") != "" && c.String("tls-cert") == "" {
		*code = exitUsage // before the store logs anything
		return errStoreNeedsCert
	}
	st, err := openStore(c, log, code)
	if err != nil {
		return err
	}
	defer st.close()
	cert, err := serverCertificate(c, st.fsys, code)
	if err != nil {
		return err
	}
	if c.Duration("partial-ttl") < 0 {
		*code = exitUsage
		return fmt.Errorf("--partial-ttl %v: want a duration of 0 (never) or more", c.Duration("partial-ttl"))
	}
	wrap, err := maxRate(c)
	if err != nil {
		*code = exitUsage
		return err
	}
	var reg *prometheus.Registry
	var metricsReg prometheus.Registerer // a nil *Registry would not be a nil interface
	if c.String("metrics-listen") != "" {
		reg = newMetricsRegistry()
		metricsReg = reg
	}
	inherited, err := systemdListeners()
	if err != nil {
		*code = exitUsage // the socket unit is wrong; restarting cannot fix it
		return err
	}
	var lns []net.Listener
	if len(inherited) == 0 || c.IsSet("listen") {
		if lns, err = listenAll(c.StringSlice("listen")); err != nil {
			closeAll(inherited)
			return err
		}
	}
	root := rootDir(c) // "" with --store: then only --tokens names a token file
	tokens := tokenFile(c, root)
	anonymous, err := checkAuth(tokens, append(append([]net.Listener(nil), inherited...), lns...), c.Bool("allow-anonymous"), root)
	if err != nil {
		closeAll(inherited)
		closeAll(lns)
		*code = exitUsage
		return err
	}
	srv, err := daemon.NewServer(daemon.Config{
		WrapConn: wrap, Metrics: metricsReg,
		Store: st.store, Locker: st.locker, Logger: log, Agent: "ferryd/" + version,
		MaxChunkSize: int(min(sizeflag.Get(c, "max-chunk-size"), math.MaxInt32)), SyncBytes: sizeflag.Get(c, "sync-bytes"),
		SyncInterval: c.Duration("sync-interval"),
		IdleTimeout:  c.Duration("idle-timeout"), MaxSize: sizeflag.Get(c, "max-size"), MinFree: sizeflag.Get(c, "min-free"), MaxSessions: c.Int("max-sessions"),
		MaxSessionsPerIP: orNegative(c.Int("max-sessions-per-ip")),
		MinRate:          orNegative(sizeflag.Get(c, "min-rate")), MinRateWindow: c.Duration("min-rate-window"),
		MaxPending: c.Int("max-pending"), HandshakeTimeout: c.Duration("handshake-timeout"),
		PartialTTL: c.Duration("partial-ttl"), PurgeRequests: true,
		TokenFile: tokens, AllowAnonymous: anonymous,
	})
	if err != nil {
		closeAll(inherited)
		closeAll(lns)
		return err
	}
	inherited, lns = withTLS(inherited, cert.ServerTLS()), withTLS(lns, cert.ServerTLS())
	defer reloadOnHangup(cert, log)()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, len(inherited)+len(lns)+1)
	var ms *metricsServer
	if reg != nil {
		if ms, err = listenMetrics(c.String("metrics-listen"), reg, log); err != nil {
			closeAll(inherited)
			closeAll(lns)
			return err
		}
		defer ms.close()
	}
	for _, ln := range inherited {
		log.Info("listening", append([]any{"addr", ln.Addr().String(), "root", st.where, "from", "systemd"}, listeningAttrs(ln, cert)...)...)
		go func() { errc <- srv.Serve(ln) }()
	}
	for _, ln := range lns {
		log.Info("listening", append([]any{"addr", ln.Addr().String(), "root", st.where}, listeningAttrs(ln, cert)...)...)
		go func() { errc <- srv.Serve(ln) }()
	}
	if ms != nil {
		// After the listening lines: whoever waits for the first of
		// those reads the session address.
		go func() {
			if err := ms.serve(); err != nil {
				errc <- err
			}
		}()
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

// maxRate returns the connection wrapper that throttles each session's
// reads to --max-rate, with a burst of one chunk; nil when there is no
// limit. A rate that could not deliver a chunk within --idle-timeout, or
// that is below --min-rate, would make the daemon drop its own throttled
// sessions: a usage error.
func maxRate(c *cli.Context) (func(net.Conn) net.Conn, error) {
	rate := sizeflag.Get(c, "max-rate")
	if rate == 0 {
		return nil, nil
	}
	chunk, minRate, idle := sizeflag.Get(c, "max-chunk-size"), sizeflag.Get(c, "min-rate"), c.Duration("idle-timeout")
	burst := int(min(max(chunk, transfer.MinChunkSize), transfer.MaxChunkSize))
	if float64(rate)*idle.Seconds() < float64(burst) {
		return nil, fmt.Errorf("--max-rate %s cannot deliver a %s chunk (--max-chunk-size) within --idle-timeout %v; raise it",
			sizeflag.Format(rate), sizeflag.Format(int64(burst)), idle)
	}
	if rate < minRate {
		return nil, fmt.Errorf("--max-rate %s is below --min-rate %s: every throttled transfer would be dropped",
			sizeflag.Format(rate), sizeflag.Format(minRate))
	}
	return func(conn net.Conn) net.Conn {
		return bwlimit.Reads(conn, bwlimit.NewLimiter(rate, burst)) // per session
	}, nil
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
	log.Info("shutting down", "timeout", timeout.String()) // "30s", in JSON too
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
			closeAll(lns)
			return nil, fmt.Errorf("listening on %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// systemdListeners returns the listening sockets systemd passed to this
// process (socket activation: LISTEN_FDS, and LISTEN_PID naming this
// process), in order; none without them. It unsets those variables. A
// passed descriptor that is not a listening stream socket (a datagram
// socket, a file) is an error: the socket unit needs ListenStream=.
func systemdListeners() ([]net.Listener, error) {
	var lns []net.Listener
	for _, f := range activation.Files(true) {
		ln, err := net.FileListener(f)
		_ = f.Close() // the listener holds its own descriptor
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("using socket %s from systemd (LISTEN_FDS): %w; ferryd.socket needs ListenStream= lines", f.Name(), err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, l := range lns {
		_ = l.Close() // the error that made us close them is the one to report
	}
}

// newLogger returns the daemon's logger: slog's text handler
// (msg=listening addr=…, one line per record) or, for format "json", its
// JSON handler (one object per line with time, level, msg and the
// attributes). A bad level or format is a usage error.
func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// checkAuth refuses an unsafe configuration before ferryd serves: a token
// file that group or others may access (as rsync refuses such a secrets
// file) or that does not parse, and a listener that is not loopback or a
// Unix socket while there are no tokens, unless allowAnonymous. It
// reports whether senders without a token may come in while there are
// none: when every listener is local, or with allowAnonymous.
func checkAuth(file string, lns []net.Listener, allowAnonymous bool, root string) (bool, error) {
	tokens, _, err := auth.Load(file)
	if err != nil {
		return false, err
	}
	local := true
	var open string
	for _, ln := range lns {
		if !isLocal(ln.Addr()) {
			local, open = false, ln.Addr().String()
			break
		}
	}
	if !local && len(tokens) == 0 && !allowAnonymous {
		where := "--root " + root
		if root == "" {
			where = "--tokens FILE" // --store: the token file is named, not found under a root
		}
		return false, fmt.Errorf("listening on %s, which is not loopback, with no tokens: anyone who reaches it could write into the root; "+
			"add one with `ferryd token add NAME %s` (or pass --allow-anonymous)", open, where)
	}
	return local || allowAnonymous, nil
}

// isLocal reports whether a listener's address is a Unix socket or a
// loopback address.
func isLocal(a net.Addr) bool {
	switch a := a.(type) {
	case *net.UnixAddr:
		return true
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	}
	return false
}
