package daemon

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-dev/ferry/transfer"
)

// Transfer outcomes, the values of ferry_transfers_total's outcome label.
const (
	outcomeCommitted   = "committed"   // committed in this session
	outcomeUnchanged   = "unchanged"   // already committed: confirmed by hash, nothing written
	outcomeRefused     = "refused"     // refused by the daemon's rules (exists, bad name, busy…)
	outcomeFailed      = "failed"      // failed on the daemon: storage, integrity, no space
	outcomeInterrupted = "interrupted" // open when its session ended; its partial stays for a resume
	outcomeExpired     = "expired"     // a partial removed unresumed (partial expiry)
)

// codeNames are the reason label values of refused and failed transfers:
// one per refusal code, so that the label's cardinality is bounded.
var codeNames = map[transfer.Code]string{
	transfer.CodeVersion: "version", transfer.CodeProtocol: "protocol", transfer.CodeBadName: "bad_name",
	transfer.CodeExists: "exists", transfer.CodeTooLarge: "too_large", transfer.CodeNoSpace: "no_space",
	transfer.CodeBusy: "busy", transfer.CodeIntegrity: "integrity", transfer.CodeInternal: "internal",
	transfer.CodeShuttingDown: "shutting_down", transfer.CodeUnauthorized: "unauthorized", transfer.CodeTimeout: "timeout",
}

// metrics are a Server's Prometheus metrics. A nil *metrics (no
// Config.Metrics) records nothing, so every method may be called on it.
type metrics struct {
	receivedBytes      prometheus.Counter
	transfers          *prometheus.CounterVec
	chunkVerifyFailed  prometheus.Counter
	fsyncSeconds       *prometheus.HistogramVec
	authFailures       prometheus.Counter
	partialBytesErrors prometheus.Counter
}

// newMetrics creates s's metrics and registers them, with gauges that
// read s at scrape time, on reg. It returns nil when reg is nil.
func newMetrics(s *Server, reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		receivedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_received_bytes_total",
			Help: "Chunk data bytes read from senders, verified or not."}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_transfers_total",
			Help: "Transfers ended, by outcome (committed, unchanged, refused, failed, interrupted, expired) and, for refused and failed, the refusal code's name as reason."},
			[]string{"outcome", "reason"}),
		chunkVerifyFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_chunk_verify_failures_total",
			Help: "Chunks whose BLAKE3 hash did not match their data; each was asked for again and never written."}),
		fsyncSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ferry_fsync_seconds",
			Help: "Time to make data durable, in seconds: op=partial is one partial's fsync with its state record, op=commit one group commit.",
			// 0.1 ms to 10 s, two buckets a decade.
			Buckets: prometheus.ExponentialBucketsRange(0.0001, 10, 11)},
			[]string{"op"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_auth_failures_total",
			Help: "Sessions refused because their credential was missing or refused."}),
		partialBytesErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_partial_bytes_errors_total",
			Help: "Scrapes at which the bytes held by partials could not be measured (ferry_partial_bytes then reads -1)."}),
	}
	// Every outcome is exported from the start, at 0.
	for _, o := range []string{outcomeCommitted, outcomeUnchanged, outcomeInterrupted, outcomeExpired} {
		m.transfers.WithLabelValues(o, "")
	}
	for _, op := range []string{"partial", "commit"} {
		m.fsyncSeconds.WithLabelValues(op)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	cs := []prometheus.Collector{
		m.receivedBytes, m.transfers, m.chunkVerifyFailed, m.fsyncSeconds, m.authFailures, m.partialBytesErrors,
		gauge("ferry_sessions_active", "Sessions past their hello.", func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			return float64(s.active)
		}),
		gauge("ferry_transfers_active", "Transfers offered and not yet ended, over all sessions.", func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			var n int64
			for ss := range s.sessions {
				n += ss.inFlight.Load()
			}
			return float64(n)
		}),
		gauge("ferry_reserved_bytes", "Disk space in bytes promised to transfers in progress for data still to come and their new directories.", func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			return float64(s.reserved)
		}),
	}
	if ps, ok := s.cfg.Store.(interface{ PartialBytes() (int64, error) }); ok {
		cs = append(cs, gauge("ferry_partial_bytes", "Bytes held by partials on disk (their data files' sizes), measured at scrape.", func() float64 {
			n, err := ps.PartialBytes()
			if err != nil {
				m.partialBytesErrors.Inc()
				s.cfg.Logger.Warn("measuring partials", "err", err)
				return -1
			}
			return float64(n)
		}))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// received counts n chunk data bytes read.
func (m *metrics) received(n int64) {
	if m != nil {
		m.receivedBytes.Add(float64(n))
	}
}

// authFailed counts a session refused for its credential.
func (m *metrics) authFailed() {
	if m != nil {
		m.authFailures.Inc()
	}
}

// chunkRejected counts a chunk that failed verification.
func (m *metrics) chunkRejected() {
	if m != nil {
		m.chunkVerifyFailed.Inc()
	}
}

// ended counts a transfer that ended with outcome.
func (m *metrics) ended(outcome string) {
	if m != nil {
		m.transfers.WithLabelValues(outcome, "").Inc()
	}
}

// refused counts a transfer refused with code: as failed for the codes
// that say the daemon failed (internal, integrity, no space), as refused
// otherwise.
func (m *metrics) refused(code transfer.Code) {
	if m == nil {
		return
	}
	outcome := outcomeRefused
	switch code {
	case transfer.CodeInternal, transfer.CodeIntegrity, transfer.CodeNoSpace:
		outcome = outcomeFailed
	}
	reason, ok := codeNames[code]
	if !ok {
		reason = "unknown"
	}
	m.transfers.WithLabelValues(outcome, reason).Inc()
}

// synced observes how long making data durable took since start; op is
// "partial" or "commit".
func (m *metrics) synced(op string, start time.Time) {
	if m != nil {
		m.fsyncSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	}
}
