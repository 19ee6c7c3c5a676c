package daemon_test

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// lockedBuffer is a log sink safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fakeClock is an injectable Config.Now.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// interruptedPartial leaves a partial of name under key, durable at one
// chunk of five: what an interrupted transfer leaves.
func interruptedPartial(t *testing.T, s *daemon.DirStore, key, name string) {
	t.Helper()
	data := randomData(5*testChunk, byte(len(name)))
	o := &transfer.Offer{Size: int64(len(data)), Mode: 0o600, MtimeNs: 5, Inode: 6,
		PrefixID: transfer.HashBytes(data[:transfer.IdentityPrefix]), Name: name}
	p, _, err := s.Open(key, o, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	p.(daemon.RemoteRecorder).SetRemote("192.0.2.1:4000")
	if err := p.WriteAt(data[:testChunk], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sync(daemon.StackOf(data[:testChunk], int64(len(data)), testChunk)); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

const otherKey = "fedcba9876543210fedcba9876543210"

// TestExpirePartials: with an injected clock, a partial untouched for the
// TTL is removed and logged, one younger is kept, and one a session holds
// is never removed however old.
func TestExpirePartials(t *testing.T) {
	store, root := newStore(t)
	interruptedPartial(t, store, testKey, "dir/old")
	interruptedPartial(t, store, otherKey, "busy")
	clock := &fakeClock{}
	clock.ns.Store(time.Now().UnixNano())
	var logs lockedBuffer
	reg := prometheus.NewRegistry()
	// The server gets the store without its PartialKeeper methods, so
	// that it starts no background expiry loop: that loop's first pass
	// could otherwise run after the clock is advanced and remove the old
	// partial before the test's own pass. The passes below are the
	// test's, on the store itself.
	srv, err := daemon.NewServer(daemon.Config{Store: struct{ daemon.Store }{store}, PartialTTL: time.Hour, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(t.Context()) //nolint:errcheck // no sessions
	release := srv.HoldKey(otherKey)

	if n := srv.ExpirePartials(store); n != 0 {
		t.Fatalf("expired %d partials younger than the TTL", n)
	}
	clock.Advance(2 * time.Hour)
	if n := srv.ExpirePartials(store); n != 1 {
		t.Fatalf("expired %d partials, want 1 (the one in use kept)", n)
	}
	parts, err := store.Partials()
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 1 || parts[0].Key != otherKey {
		t.Fatalf("left %+v, want only the partial in use", parts)
	}
	for _, ext := range []string{".data", ".state"} {
		if _, err := os.Stat(filepath.Join(root, ".ferry", "partials", testKey+ext)); !os.IsNotExist(err) {
			t.Errorf("%s of the expired partial: %v", ext, err)
		}
	}
	want := `msg="partial expired" name=dir/old key=` + testKey + ` size=81920 durable_offset=16384 age=2h0m0s`
	if !strings.Contains(logs.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, logs.String())
	}
	if got := expiredCount(t, reg); got != 1 {
		t.Errorf("ferry_transfers_total{outcome=\"expired\"} = %v, want 1", got)
	}
	release()
	if n := srv.ExpirePartials(store); n != 1 {
		t.Fatalf("after release expired %d, want 1", n)
	}
}

// TestListPartials lists what an interrupted transfer leaves, and an
// orphan data file without its state record.
func TestListPartials(t *testing.T) {
	store, root := newStore(t)
	interruptedPartial(t, store, testKey, "a/b")
	if err := os.WriteFile(filepath.Join(root, ".ferry", "partials", otherKey+".data"), []byte("xyz"), 0o600); err != nil {
		t.Fatal(err)
	}
	parts, err := store.Partials()
	if err != nil {
		t.Fatal(err)
	}
	if len(parts) != 2 {
		t.Fatalf("got %+v", parts)
	}
	a, o := parts[0], parts[1]
	if a.Key != testKey || a.Name != "a/b" || a.Size != 5*testChunk || a.DurableOffset != testChunk || a.DataBytes != testChunk ||
		a.Remote != "192.0.2.1:4000" {
		t.Errorf("partial: %+v", a)
	}
	if o.Key != otherKey || o.Name != "" || o.DataBytes != 3 {
		t.Errorf("orphan: %+v", o)
	}
	if age := time.Since(a.Modified); age < 0 || age > time.Minute {
		t.Errorf("age %v", age)
	}
}

// TestPurgeRequest: a tool's purge request reaches a running server,
// which removes the named partial and keeps the one a session uses.
func TestPurgeRequest(t *testing.T) {
	store, root := newStore(t)
	interruptedPartial(t, store, testKey, "gone")
	interruptedPartial(t, store, otherKey, "busy")
	srv, err := daemon.NewServer(daemon.Config{Store: store, PurgeRequests: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(t.Context()) //nolint:errcheck // no sessions
	defer srv.HoldKey(otherKey)()
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	res, err := daemon.RequestPurge(fsys, daemon.PurgeRequest{Names: []string{"gone", "busy", "nothing"}}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 1 || res.Removed[0].Name != "gone" || len(res.InUse) != 1 || res.InUse[0].Name != "busy" ||
		len(res.NotFound) != 1 || res.NotFound[0] != "nothing" || len(res.Errors) != 0 {
		t.Fatalf("result %+v", res)
	}
	parts, err := store.Partials()
	if err != nil || len(parts) != 1 || parts[0].Name != "busy" {
		t.Fatalf("left %+v, %v", parts, err)
	}
}

// TestRequestPurgeNoDaemon: without a daemon to answer, the request is
// withdrawn and the error says so.
func TestRequestPurgeNoDaemon(t *testing.T) {
	_, root := newStore(t)
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	_, err = daemon.RequestPurge(fsys, daemon.PurgeRequest{}, 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no answer from ferryd") {
		t.Fatalf("err %v", err)
	}
	left, _ := os.ReadDir(filepath.Join(root, ".ferry", "requests"))
	if len(left) != 0 {
		t.Errorf("left %v", left)
	}
}

// expiredCount returns ferry_transfers_total{outcome="expired"} from reg.
func expiredCount(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ferry_transfers_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == "expired" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
