package s3store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/storetest"
	"github.com/ferry-dev/ferry/internal/versitygw"
)

const bucket = "leases"

// gateway starts versitygw with bucket created.
func gateway(t *testing.T) *versitygw.Server {
	t.Helper()
	s := versitygw.Start(t)
	s.CreateBucket(t, bucket)
	return s
}

// leaser returns a Leaser on s for owner whose clock runs ahead of the
// real one by ahead.
func leaser(t *testing.T, s *versitygw.Server, owner string, ttl, ahead time.Duration) *Leaser {
	t.Helper()
	return &Leaser{
		Core: s.Core(t), Bucket: bucket, Prefix: "store", Owner: owner, TTL: ttl,
		Now: func() time.Time { return time.Now().Add(ahead) },
	}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustLock(t *testing.T, l *Leaser, key string) daemon.Lock {
	t.Helper()
	lk, err := l.Lock(testContext(t), key)
	if err != nil {
		t.Fatalf("%s taking %s: %v", l.Owner, key, err)
	}
	t.Cleanup(func() { _ = lk.Unlock() })
	return lk
}

func isLost(lk daemon.Lock) bool {
	select {
	case <-lk.Lost():
		return true
	default:
		return false
	}
}

func waitLost(t *testing.T, lk daemon.Lock, within time.Duration) {
	t.Helper()
	select {
	case <-lk.Lost():
	case <-time.After(within):
		t.Fatalf("Lost not closed within %v", within)
	}
}

func readRecord(t *testing.T, s *versitygw.Server, name string) record {
	t.Helper()
	body, _, _, err := s.Core(t).GetObject(testContext(t), bucket, name, minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("getting %s: %v", name, err)
	}
	defer body.Close() //nolint:errcheck // test read
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("reading %s: %v", name, err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("decoding %s: %v (%q)", name, err, b)
	}
	return rec
}

// TestGatewayConditionalWrites checks that versitygw honours the two
// conditions the leases rely on, as minio-go v7.4.1 sends them:
// SetMatchETagExcept("*") (If-None-Match: *) and SetMatchETag(etag)
// (If-Match: "etag") on PutObject. If-Match on a missing object is
// answered 404 NoSuchKey, which isPrecondition counts as a refusal.
func TestGatewayConditionalWrites(t *testing.T) {
	s := gateway(t)
	core := s.Core(t)
	ctx := testContext(t)
	put := func(body string, set func(*minio.PutObjectOptions)) (string, error) {
		var opts minio.PutObjectOptions
		set(&opts)
		info, err := core.PutObject(ctx, bucket, "o", strings.NewReader(body), int64(len(body)), "", "", opts)
		return info.ETag, err
	}
	ifNoneMatch := func(o *minio.PutObjectOptions) { o.SetMatchETagExcept("*") }
	ifMatch := func(etag string) func(*minio.PutObjectOptions) {
		return func(o *minio.PutObjectOptions) { o.SetMatchETag(etag) }
	}

	if _, err := put("x", ifMatch("0123456789abcdef0123456789abcdef")); !isPrecondition(err) {
		t.Errorf("If-Match on a missing object: %v, want 412 or 404", err)
	}
	etag1, err := put("one", ifNoneMatch)
	if err != nil {
		t.Fatalf("If-None-Match: * on a missing object: %v", err)
	}
	if _, err := put("two", ifNoneMatch); !isPrecondition(err) {
		t.Errorf("If-None-Match: * on an existing object: %v, want 412", err)
	}
	if _, err := put("two", ifMatch("0123456789abcdef0123456789abcdef")); !isPrecondition(err) {
		t.Errorf("If-Match with a wrong ETag: %v, want 412", err)
	}
	etag2, err := put("two", ifMatch(etag1))
	if err != nil {
		t.Fatalf("If-Match with the current ETag: %v", err)
	}
	if _, err := put("three", ifMatch(etag1)); !isPrecondition(err) {
		t.Errorf("If-Match with a replaced ETag: %v, want 412", err)
	}
	body, _, _, err := core.GetObject(ctx, bucket, "o", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close() //nolint:errcheck // test read
	if b, _ := io.ReadAll(body); string(b) != "two" {
		t.Errorf("object = %q after the refused writes, want %q (etag %s)", b, "two", etag2)
	}
}

// TestLeaseFree: a free lease is taken, its object names the owner and an
// expiry TTL ahead.
func TestLeaseFree(t *testing.T) {
	s := gateway(t)
	a := leaser(t, s, "a", time.Minute, 0)
	before := time.Now()
	lk := mustLock(t, a, "dir/file")
	rec := readRecord(t, s, "store/.ferry/leases/dir/file.lease")
	if rec.Owner != "a" || rec.Expires.Before(before.Add(time.Minute)) || rec.Expires.After(time.Now().Add(time.Minute)) {
		t.Errorf("lease record = %+v, want owner a expiring a minute from %v", rec, before)
	}
	if isLost(lk) {
		t.Error("Lost closed on a fresh lease")
	}
}

// TestLeaseHeldWhileRenewed: for 2.5 TTLs, a second daemon whose clock is
// MaxClockSkew ahead (the most the protocol allows) is refused with
// ErrLocked naming the holder, because the holder renews.
func TestLeaseHeldWhileRenewed(t *testing.T) {
	s := gateway(t)
	const ttl = time.Second
	a := leaser(t, s, "daemon-a", ttl, 0)
	b := leaser(t, s, "daemon-b", ttl, MaxClockSkew)
	lk := mustLock(t, a, "f")
	end := time.Now().Add(5 * ttl / 2)
	for time.Now().Before(end) {
		got, err := b.Lock(testContext(t), "f")
		if err == nil {
			_ = got.Unlock()
			t.Fatalf("b took a lease that a renews")
		}
		if !errors.Is(err, daemon.ErrLocked) || !strings.Contains(err.Error(), "owner daemon-a") {
			t.Fatalf("b: %v, want ErrLocked naming daemon-a", err)
		}
		time.Sleep(ttl / 10)
	}
	if isLost(lk) {
		t.Error("a lost its lease while renewing it")
	}
}

// TestLeaseOwnLiveRefused: a live lease is refused to its own owner too:
// one transfer, one session.
func TestLeaseOwnLiveRefused(t *testing.T) {
	s := gateway(t)
	a := leaser(t, s, "a", time.Minute, 0)
	mustLock(t, a, "f")
	if _, err := a.Lock(testContext(t), "f"); !errors.Is(err, daemon.ErrLocked) {
		t.Fatalf("second Lock by the same owner: %v, want ErrLocked", err)
	}
}

// TestLeaseExpiredTakenOver: a lease past its expiry plus MaxClockSkew by
// the taker's clock is taken over; the old holder's next renewal is refused
// and closes its Lost.
func TestLeaseExpiredTakenOver(t *testing.T) {
	s := gateway(t)
	const ttl = 1500 * time.Millisecond
	a := leaser(t, s, "a", ttl, 0)
	// a's clock stands still, so a never gives up for lack of time: only
	// the refusal of its renewal can close its Lost.
	t0 := time.Now()
	a.Now = func() time.Time { return t0 }
	b := leaser(t, s, "b", ttl, ttl+MaxClockSkew+time.Second)
	lkA := mustLock(t, a, "f")
	mustLock(t, b, "f")
	if rec := readRecord(t, s, "store/.ferry/leases/f.lease"); rec.Owner != "b" {
		t.Fatalf("lease owner after the takeover = %q, want b", rec.Owner)
	}
	waitLost(t, lkA, 3*ttl)
	if rec := readRecord(t, s, "store/.ferry/leases/f.lease"); rec.Owner != "b" {
		t.Fatalf("lease owner after a's refused renewal = %q, want b", rec.Owner)
	}
}

// TestLeaseRace: several daemons race for a free lease, then for an
// expired one; each time exactly one wins and the others get ErrLocked.
func TestLeaseRace(t *testing.T) {
	s := gateway(t)
	const racers = 6
	for round := range 4 {
		key := fmt.Sprintf("f%d", round)
		ahead := time.Duration(0)
		if round%2 == 1 {
			// An expired lease: its holder's clock is an hour behind, so
			// it never renews and every racer sees it expired.
			dead := leaser(t, s, "dead", time.Minute, -time.Hour)
			mustLock(t, dead, key)
		}
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			wins []string
		)
		for i := range racers {
			l := leaser(t, s, fmt.Sprintf("racer-%d", i), time.Minute, ahead)
			wg.Go(func() {
				lk, err := l.Lock(testContext(t), key)
				switch {
				case err == nil:
					mu.Lock()
					wins = append(wins, l.Owner)
					mu.Unlock()
					t.Cleanup(func() { _ = lk.Unlock() })
				case !errors.Is(err, daemon.ErrLocked):
					t.Errorf("%s: %v, want nil or ErrLocked", l.Owner, err)
				}
			})
		}
		wg.Wait()
		if len(wins) != 1 {
			t.Fatalf("round %d (%s lease): winners %v, want exactly one", round, map[bool]string{false: "free", true: "expired"}[round%2 == 1], wins)
		}
		if rec := readRecord(t, s, "store/.ferry/leases/"+key+".lease"); rec.Owner != wins[0] {
			t.Fatalf("round %d: lease owner %q, winner %q", round, rec.Owner, wins[0])
		}
	}
}

// TestLeaseUnlock: Unlock frees the lease for another daemon at once,
// leaves Lost open (the daemon.Lock contract), and is idempotent.
func TestLeaseUnlock(t *testing.T) {
	s := gateway(t)
	a := leaser(t, s, "a", time.Minute, 0)
	b := leaser(t, s, "b", time.Minute, 0)
	lk, err := a.Lock(testContext(t), "f")
	if err != nil {
		t.Fatal(err)
	}
	if err := lk.Unlock(); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if isLost(lk) {
		t.Error("Lost closed by Unlock")
	}
	if err := lk.Unlock(); err != nil {
		t.Errorf("second Unlock: %v", err)
	}
	mustLock(t, b, "f")
}

// TestLeaseUnlockAfterTakeover: Unlock of a lease taken over by another
// daemon leaves the new holder's lease alone.
func TestLeaseUnlockAfterTakeover(t *testing.T) {
	s := gateway(t)
	a := leaser(t, s, "a", time.Minute, 0)
	b := leaser(t, s, "b", time.Minute, time.Minute+MaxClockSkew+time.Second)
	lkA, err := a.Lock(testContext(t), "f")
	if err != nil {
		t.Fatal(err)
	}
	mustLock(t, b, "f")
	if err := lkA.Unlock(); err != nil {
		t.Fatalf("Unlock of a lease taken over: %v, want nil", err)
	}
	if rec := readRecord(t, s, "store/.ferry/leases/f.lease"); rec.Owner != "b" || !rec.Expires.After(time.Now()) {
		t.Fatalf("lease after a's Unlock = %+v, want b's live lease", rec)
	}
}

// TestLeaseGatewayRestart: a gateway outage that ends before TTL/3 short
// of the expiry keeps the lease (failed renewals are retried); a longer one
// closes Lost, and the lease is still refused to others until it expires.
func TestLeaseGatewayRestart(t *testing.T) {
	s := gateway(t)
	// From a renewal that fails (TTL/3 after the last one) the holder
	// retries every TTL/12 until TTL/3 short of the expiry: the gateway,
	// another process, has about TTL/4 to restart. Under load a restart
	// takes up to a second or so, and the first answers after it hundreds
	// of milliseconds: 12 s leaves 3 s for the restart.
	const ttl = 12 * time.Second
	// Without minio-go's own retries, a renewal during the outage fails
	// at once and the Leaser's retries are the ones tested.
	opts := s.Options()
	opts.MaxRetries = 1
	fail := &failedPut{failed: make(chan struct{})}
	tr, err := minio.DefaultTransport(false)
	if err != nil {
		t.Fatal(err)
	}
	fail.next = tr
	opts.Transport = fail
	client, err := minio.New(s.Endpoint, opts)
	if err != nil {
		t.Fatal(err)
	}
	a := leaser(t, s, "a", ttl, 0)
	a.Core = &minio.Core{Client: client}
	b := leaser(t, s, "b", ttl, 0)
	lk := mustLock(t, a, "f")
	// The gateway stops until a renewal has failed against it; then its
	// retries must succeed once it is back.
	fail.armed.Store(true)
	s.Stop()
	select {
	case <-fail.failed:
	case <-time.After(2 * ttl):
		t.Fatalf("no renewal tried within %v of the gateway stopping", 2*ttl)
	}
	failed := time.Now()
	s.Restart()
	took := time.Since(failed)
	t.Logf("gateway back %v after the failed renewal", took)
	if took > ttl/4 {
		t.Fatalf("the gateway took %v to restart; the test needs it back within %v of the failed renewal", took, ttl/4)
	}
	waitRenewal(t, s, "store/.ferry/leases/f.lease", 2*ttl)
	if isLost(lk) {
		t.Fatal("Lost closed by a short gateway outage")
	}
	if _, err := b.Lock(testContext(t), "f"); !errors.Is(err, daemon.ErrLocked) {
		t.Fatalf("b after the restart: %v, want ErrLocked", err)
	}

	s.Stop()
	waitLost(t, lk, 2*ttl)
	s.Restart()
	if _, err := b.Lock(testContext(t), "f"); !errors.Is(err, daemon.ErrLocked) {
		t.Fatalf("b while a's lost lease has not expired: %v, want ErrLocked", err)
	}
}

// failedPut is an http.RoundTripper that, once armed, closes failed when a
// PUT does not reach the gateway: a renewal that met an outage.
type failedPut struct {
	next   http.RoundTripper
	armed  atomic.Bool
	once   sync.Once
	failed chan struct{}
}

func (f *failedPut) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.next.RoundTrip(req)
	if err != nil && req.Method == http.MethodPut && f.armed.Load() {
		f.once.Do(func() { close(f.failed) })
	}
	return resp, err
}

// waitRenewal waits up to within until the ETag of lease object name
// changes.
func waitRenewal(t *testing.T, s *versitygw.Server, name string, within time.Duration) {
	t.Helper()
	core := s.Core(t)
	etag := ""
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		info, err := core.StatObject(testContext(t), bucket, name, minio.StatObjectOptions{})
		if err == nil {
			if etag != "" && info.ETag != etag {
				return
			}
			etag = info.ETag
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not renewed within %v", name, within)
}

// TestLeaseDamagedRecordTakenOver: a lease object that does not decode
// counts as expired, rather than blocking its transfer for ever.
func TestLeaseDamagedRecordTakenOver(t *testing.T) {
	s := gateway(t)
	garbage := []byte("not json")
	if _, err := s.Client(t).PutObject(testContext(t), bucket, "store/.ferry/leases/f.lease", bytes.NewReader(garbage), int64(len(garbage)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	mustLock(t, leaser(t, s, "a", time.Minute, 0), "f")
}

// TestLeaseKeys: lease objects live under PREFIX/.ferry/leases/; keys that
// are not clean relative names are refused.
func TestLeaseKeys(t *testing.T) {
	for _, tt := range []struct {
		prefix, key, want string
	}{
		{"", "a", ".ferry/leases/a.lease"},
		{"p/q/", "a/b", "p/q/.ferry/leases/a/b.lease"},
		{"/p", "a", "p/.ferry/leases/a.lease"},
		{"p", "", ""},
		{"p", "/a", ""},
		{"p", "../a", ""},
		{"p", "a/../b", ""},
		{"p", "a/", ""},
	} {
		l := &Leaser{Prefix: tt.prefix}
		got, err := l.objectName(tt.key)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("prefix %q key %q: %q, %v; want %q", tt.prefix, tt.key, got, err, tt.want)
		}
	}
}

// putRecord writes rec as lease object name unconditionally, as a write
// of ours whose answer was lost would have, and returns its ETag.
func putRecord(t *testing.T, s *versitygw.Server, name string, rec record) string {
	t.Helper()
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Client(t).PutObject(testContext(t), bucket, name, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return info.ETag
}

// TestLeaseWriteLandedEarlier: a conditional write refused because an
// earlier try of the same write (same nonce) landed counts as done, with
// the stored ETag; one refused for a record of someone else does not.
func TestLeaseWriteLandedEarlier(t *testing.T) {
	s := gateway(t)
	a := leaser(t, s, "a", time.Minute, 0)
	const name = "store/.ferry/leases/f.lease"
	rec := a.newRecord()
	stored := putRecord(t, s, name, rec)
	etag, err := a.write(testContext(t), name, rec, "0123456789abcdef0123456789abcdef")
	if err != nil || etag != stored {
		t.Fatalf("write after its earlier try landed: %q, %v; want %q, nil", etag, err, stored)
	}
	if _, err := a.write(testContext(t), name, a.newRecord(), "0123456789abcdef0123456789abcdef"); !isPrecondition(err) {
		t.Fatalf("write refused for another record: %v, want 412", err)
	}
}

// TestLeaseUnlockAfterCutRenewal: when Unlock cuts a renewal short whose
// write landed, Unlock releases that record, not only the one before it.
func TestLeaseUnlockAfterCutRenewal(t *testing.T) {
	s := gateway(t)
	a := leaser(t, s, "a", time.Hour, 0) // no renewal runs during the test
	const name = "store/.ferry/leases/f.lease"
	lk, err := a.Lock(testContext(t), "f")
	if err != nil {
		t.Fatal(err)
	}
	landed := a.newRecord()
	putRecord(t, s, name, landed)
	lk.(*lease).pending = landed.Nonce
	if err := lk.Unlock(); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if rec := readRecord(t, s, name); !rec.Expires.IsZero() {
		t.Fatalf("lease after Unlock = %+v, want released (zero expiry)", rec)
	}
}

// dropResponse is an http.RoundTripper that, once armed, lets the next PUT
// reach the gateway and then reports a network error instead of its
// answer: a write that landed with its answer lost.
type dropResponse struct {
	next    http.RoundTripper
	mu      sync.Mutex
	armed   bool
	dropped chan struct{}
}

func (d *dropResponse) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := d.next.RoundTrip(req)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil && d.armed && req.Method == http.MethodPut {
		d.armed = false
		_ = resp.Body.Close()
		close(d.dropped)
		return nil, errors.New("connection reset (dropped by the test)")
	}
	return resp, err
}

// TestLeaseRenewalAnswerLost: a renewal that landed but whose answer was
// lost is recognised on the retry (its 412 shows our own record), so the
// lease is kept rather than reported lost.
func TestLeaseRenewalAnswerLost(t *testing.T) {
	s := gateway(t)
	// The retry after the lost answer comes TTL/12 later and must land,
	// with the 412 and the read back that follows it, before TTL/3 short
	// of the expiry: about TTL/4 for two answers of the gateway (another
	// process), which take hundreds of milliseconds each under load. 6 s
	// leaves 1.5 s (3 s left 0.75 s).
	const ttl = 6 * time.Second
	opts := s.Options()
	opts.MaxRetries = 1 // the Leaser's retry, not minio-go's, is tested
	drop := &dropResponse{dropped: make(chan struct{})}
	tr, err := minio.DefaultTransport(false)
	if err != nil {
		t.Fatal(err)
	}
	drop.next = tr
	opts.Transport = drop
	client, err := minio.New(s.Endpoint, opts)
	if err != nil {
		t.Fatal(err)
	}
	a := leaser(t, s, "a", ttl, 0)
	a.Core = &minio.Core{Client: client}
	lk := mustLock(t, a, "f")
	drop.mu.Lock()
	drop.armed = true
	drop.mu.Unlock()
	select {
	case <-drop.dropped:
	case <-time.After(3 * ttl):
		t.Fatal("no renewal within 3 TTLs")
	}
	waitRenewal(t, s, "store/.ferry/leases/f.lease", 2*ttl)
	if isLost(lk) {
		t.Fatal("Lost closed by a renewal whose answer was lost")
	}
}

// TestLeaserConformance runs the Locker conformance suite on leases in a
// real gateway: each Locker is another daemon (owner) on one bucket.
func TestLeaserConformance(t *testing.T) {
	s := gateway(t)
	var n atomic.Int32
	storetest.RunLocker(t, func(t *testing.T) daemon.Locker {
		return leaser(t, s, fmt.Sprintf("daemon-%d", n.Add(1)), 10*time.Second, 0)
	})
}
