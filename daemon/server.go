package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-dev/ferry/transfer"
)

// Config configures a Server. Store is required; zero values of the other
// fields take the documented defaults.
type Config struct {
	// Store keeps partials and committed files.
	Store Store
	// MaxChunkSize is the largest chunk size in bytes the daemon agrees to;
	// it bounds the memory of a session. Defaults to 4 MiB; clamped to
	// MinChunkSize..MaxChunkSize and rounded down to a power of two.
	MaxChunkSize int
	// SyncBytes is how many bytes may be written between fsyncs of a
	// partial. Defaults to 16 MiB.
	SyncBytes int64
	// SyncInterval is the longest time written data waits for an fsync
	// while chunks keep arriving. Defaults to 1s.
	SyncInterval time.Duration
	// IdleTimeout is how long a session may take to deliver one frame
	// before it is dropped. Defaults to 60s.
	IdleTimeout time.Duration
	// MaxSize is the largest file size in bytes accepted; 0 means no limit.
	MaxSize int64
	// MaxSessions bounds concurrent sessions past their Hello; further
	// sessions are refused as busy. Defaults to 64.
	MaxSessions int
	// MaxSessionsPerIP bounds the sessions past their Hello from one remote
	// IP address, so that one client cannot hold every session slot;
	// further sessions from that address are refused as busy. Sessions on
	// other networks than TCP (Unix sockets, pipes) are not counted.
	// Defaults to 16; negative means no per-address limit.
	MaxSessionsPerIP int
	// MinRate is the lowest rate, in bytes per second averaged over
	// MinRateWindow, at which a session holding a disk-space reservation
	// must deliver data. A slower session is dropped (CodeTimeout): its
	// verified data is made durable, so the transfer can resume, and its
	// reservation is released. Defaults to 4096; negative disables it.
	MinRate int64
	// MinRateWindow is the window MinRate is averaged over. Defaults to
	// 30s.
	MinRateWindow time.Duration
	// MaxPending bounds connections that have not completed their Hello,
	// so that idle or slow-loris clients cannot take the session slots of
	// real senders. Further connections are closed at once. Defaults to
	// 1024.
	MaxPending int
	// HandshakeTimeout is how long a connection may take to deliver its
	// Hello. Defaults to 10s.
	HandshakeTimeout time.Duration
	// MaxBadChunks is how many chunks failing verification one transfer
	// tolerates before it is refused. Defaults to 16.
	MaxBadChunks int
	// Logger receives one line per session end and per transfer. Defaults
	// to slog.Default().
	Logger *slog.Logger
	// Agent names the daemon in its Hello.
	Agent string
	// WrapConn, if set, wraps every connection ServeConn is given before
	// its session starts: ferryd throttles each session's reads with it
	// (--max-rate). The wrapper must keep deadlines and Close working.
	WrapConn func(net.Conn) net.Conn
	// MinFree is the free disk space in bytes an offer must leave once
	// every transfer in progress has written what it was promised; an offer
	// that would leave less is refused with CodeNoSpace at admission
	// (--min-free). 0, the default, only refuses what does not fit.
	MinFree int64
	// Metrics, if set, receives the server's Prometheus metrics (ferry_*;
	// README.md lists them). Give each Server its own registry: a second
	// Server registering on the same one fails NewServer. Nil records none.
	Metrics prometheus.Registerer
	// PartialTTL is how long a partial may stay untouched (neither its
	// data nor its state record written) before it is removed, in the
	// background, with one log line each; a partial a session uses is
	// never removed. It needs a Store that is a PartialKeeper. 0, the
	// default, disables expiry (ferryd's --partial-ttl defaults to 7 days).
	PartialTTL time.Duration
	// PurgeRequests, when set, makes the server carry out purge requests
	// (RequestPurge) found under ROOT/.ferry/requests, polled every
	// second. It needs a DirStore.
	PurgeRequests bool
	// Now returns the time partial ages are measured at. Defaults to
	// time.Now; tests inject a clock.
	Now func() time.Time
	// TokenFile is the token file (package auth) senders authenticate
	// against, read by NewServer (which fails on a file group or others
	// may access, auth.ErrInsecure) and polled every TokenPoll for
	// changes; a token removed from it ends its sessions. "", the
	// default, turns authentication off: every sender is anonymous and
	// may write anywhere under the root.
	TokenFile string
	// AllowAnonymous lets senders without a token in while the token file
	// holds no token (ferryd sets it when every listener is loopback or a
	// Unix socket, or with --allow-anonymous). Once the file holds a
	// token, every sender needs one.
	AllowAnonymous bool
	// TokenPoll is how often the token file is checked for changes (its
	// inode, size and mtime), and the tokens' usage written. Defaults to
	// 1s.
	TokenPoll time.Duration
	// Locker holds each transfer (partial key) for one session at a
	// time. Defaults to an in-process MemLocker; daemons sharing a store
	// need one that spans them (s3store's leases).
	Locker Locker
}

func (c *Config) setDefaults() {
	if c.MaxChunkSize == 0 {
		c.MaxChunkSize = 4 << 20
	}
	c.MaxChunkSize = min(max(c.MaxChunkSize, transfer.MinChunkSize), transfer.MaxChunkSize)
	c.MaxChunkSize = 1 << (bits.Len(uint(c.MaxChunkSize)) - 1) // chunk sizes are powers of two
	if c.SyncBytes <= 0 {
		c.SyncBytes = 16 << 20
	}
	if c.SyncInterval <= 0 {
		c.SyncInterval = time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 64
	}
	if c.MaxSessionsPerIP == 0 {
		c.MaxSessionsPerIP = 16
	}
	if c.MinRate == 0 {
		c.MinRate = 4096
	}
	if c.MinRateWindow <= 0 {
		c.MinRateWindow = 30 * time.Second
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 1024
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.MaxBadChunks <= 0 {
		c.MaxBadChunks = 16
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.TokenPoll <= 0 {
		c.TokenPoll = time.Second
	}
	if c.Locker == nil {
		c.Locker = &MemLocker{}
	}
	if c.Agent == "" {
		c.Agent = "ferryd"
	}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("daemon: server closed")

// Server receives transfers on any number of listeners, like net/http's
// Server: Serve per listener, Shutdown to drain. Safe for concurrent use.
type Server struct {
	expiryMu sync.Mutex // serialises ExpirePartials passes
	cfg      Config
	ctx      context.Context
	cancel   context.CancelCauseFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	pending   int                // sessions in sessions that have not completed their Hello
	active    int                // sessions past their Hello
	perIP     map[string]int     // sessions past their Hello by remote IP (TCP only)
	holders   map[string]*holder // partial key → the session using it
	reserved  int64              // bytes promised to transfers in progress
	pools     map[int]*transfer.BufferPool
	wg        sync.WaitGroup
	met       *metrics   // nil without Config.Metrics
	auth      *authState // nil without Config.TokenFile
}

// NewServer returns a Server for cfg. It fails when Store is nil, the
// metrics cannot be registered on Config.Metrics (already registered), or
// the token file cannot be read or is accessible by group or others
// (wrapping auth.ErrInsecure).
func NewServer(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("daemon: Config.Store is nil")
	}
	cfg.setDefaults()
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &Server{
		cfg: cfg, ctx: ctx, cancel: cancel,
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
		holders:   make(map[string]*holder),
		perIP:     make(map[string]int),
		pools:     make(map[int]*transfer.BufferPool),
	}
	met, err := newMetrics(s, cfg.Metrics)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	s.met = met
	if err := s.initAuth(); err != nil {
		cancel(nil)
		return nil, err
	}
	s.startExpiry()
	return s, nil
}

// Serve accepts sessions on ln until Shutdown, then returns ErrServerClosed.
// It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close() // ErrServerClosed says all there is to say
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer ln.Close() //nolint:errcheck // Shutdown may have closed it already
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				// Back off on EMFILE and the like, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.cfg.Logger.Warn("accept failed", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accepting: %w", err)
		}
		delay = 0
		s.ServeConn(conn)
	}
}

// ServeConn runs one session on conn in a new goroutine, closing conn when
// it ends. When MaxPending connections are already waiting for their
// Hello, conn is closed at once.
func (s *Server) ServeConn(conn net.Conn) {
	if s.cfg.WrapConn != nil {
		conn = s.cfg.WrapConn(conn)
	}
	ss := newSession(s, conn)
	s.mu.Lock()
	full := s.pending >= s.cfg.MaxPending
	closed := s.closed
	if !full && !closed {
		s.sessions[ss] = struct{}{}
		s.pending++
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if full || closed {
		go ss.refuseAndClose(full)
		return
	}
	go func() {
		defer s.wg.Done()
		ss.run()
		s.leave(ss)
	}()
}

// Shutdown stops accepting, tells every session to make its data durable
// and end, and waits for them until ctx ends. Partials stay on disk for a
// later resume.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		_ = ln.Close() // stops Accept; a listener holds no data to lose
	}
	s.cancel(transfer.ErrShuttingDown)
	for ss := range s.sessions {
		ss.interrupt()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// holder is the session (or expirer) holding a partial key, and its lock;
// lock is nil while Locker.Lock runs.
type holder struct {
	ss   *session
	lock Lock
}

// hold marks key as used by ss through Config.Locker. It returns an error
// wrapping ErrLocked when another session (or daemon) has it, and the
// Locker's error when it cannot tell.
func (s *Server) hold(key string, ss *session) error {
	s.mu.Lock()
	if h, ok := s.holders[key]; ok {
		s.mu.Unlock()
		if h.ss != ss {
			return ErrLocked
		}
		return nil
	}
	h := &holder{ss: ss}
	s.holders[key] = h
	s.mu.Unlock()
	// Outside the mutex: a lease is a round trip to the store.
	lock, err := s.cfg.Locker.Lock(s.ctx, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		delete(s.holders, key)
		return err
	}
	h.lock = lock
	return nil
}

// lost returns the channel closed when the lock on key, held by a
// session, is lost; nil (never ready) when key is not held.
func (s *Server) lost(key string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h, ok := s.holders[key]; ok && h.lock != nil {
		return h.lock.Lost()
	}
	return nil
}

func (s *Server) release(key string) {
	s.mu.Lock()
	h := s.holders[key]
	delete(s.holders, key)
	s.mu.Unlock()
	if h != nil && h.lock != nil {
		if err := h.lock.Unlock(); err != nil {
			s.cfg.Logger.Warn("releasing transfer lock", "key", key, "err", err)
		}
	}
}

// pool returns the shared pool of chunk frame buffers of size bytes.
// Sessions negotiate few distinct chunk sizes, so the map stays small.
func (s *Server) pool(size int) *transfer.BufferPool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[size]
	if !ok {
		p = transfer.NewBufferPool(size)
		s.pools[size] = p
	}
	return p
}
