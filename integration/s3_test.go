package integration

import (
	"context"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/zeebo/blake3"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

// s3Part is the S3 store's default part size: the most a daemon that
// dies may have received and not made durable.
const s3Part = 8 << 20

// startS3Daemon starts ferryd on gw's bucket, with credentials from the
// environment as a deployment would give them.
// The daemons of one test share a bucket and, as behind a real load
// balancer, one TLS key: --store has no root to generate one in.
func startS3Daemon(t *testing.T, gw *gwServer, bucket string, flags ...string) *daemon {
	t.Helper()
	certFile, keyFile := s3TLSFiles(t)
	return startDaemonEnv(t, []string{"AWS_ACCESS_KEY_ID=" + gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + gw.SecretKey},
		append([]string{"--listen", "127.0.0.1:0", "--store", "s3://" + bucket + "/inbox", "--s3-endpoint", gw.URL, "--s3-region", "us-east-1",
			"--s3-lease-ttl", leaseTTL, "--tls-cert", certFile, "--tls-key", keyFile}, flags...)...)
}

// s3Certs holds each test's shared certificate files, by test.
var s3Certs sync.Map // *testing.T → [2]string

// s3TLSFiles returns the certificate and key files every daemon of t
// serves, made on first use.
func s3TLSFiles(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	if f, ok := s3Certs.Load(t); ok {
		files := f.([2]string)
		return files[0], files[1]
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCertFiles(t, newTestCert(t, false, nil), certFile, keyFile)
	s3Certs.Store(t, [2]string{certFile, keyFile})
	t.Cleanup(func() { s3Certs.Delete(t) })
	return certFile, keyFile
}

// leaseTTL is the daemons' lease TTL here: short, so that a dead daemon's
// transfers are taken over within seconds.
const leaseTTL = "2s"

// objectBLAKE3 returns the BLAKE3 of the object at key, read back.
func objectBLAKE3(t *testing.T, gw *gwServer, bucket, key string) string {
	t.Helper()
	obj, err := gw.Client(t).GetObject(context.Background(), bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	h := blake3.New()
	if _, err := io.Copy(h, obj); err != nil {
		t.Fatalf("reading %s back: %v", key, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileBLAKE3(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := blake3.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestS3DaemonKilledOtherResumes: two ferryd on one bucket behind a TCP
// proxy; a 256 MiB send through it; ferryd A is killed with SIGKILL
// midway and the proxy switched to B. The sender's own retries resume on
// B from A's durable offset, resending at most one part (the durable
// window of protocol 2.3 keeps the sender within one part of the offset
// A acknowledged, whatever the sockets hold), and the committed object is
// the source.
func TestS3DaemonKilledOtherResumes(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	gw := startGW(t)
	gw.CreateBucket(t, "shared")
	// --sync-bytes off the part size: the store's parts decide when a
	// sync is due, not the flag.
	a, b := startS3Daemon(t, gw, "shared", "--sync-bytes", "5MiB"), startS3Daemon(t, gw, "shared", "--sync-bytes", "5MiB")
	const size = 256 << 20
	src := filepath.Join(t.TempDir(), "big.bin")
	writeRandom(t, src, size, 131)
	proxy := newProxy(t, a.addr)
	proxy.Throttle(64 << 20)
	sender := startFerry(t, sendArgs(proxy.Addr(), "--retries", "50", src)...)
	if err := proxy.WaitBytes(ctx, 100<<20); err != nil {
		t.Fatal(err)
	}
	a.kill()
	reached := proxy.Total(faultproxy.ClientToServer)
	proxy.SetUpstream(b.addr)
	proxy.Throttle(0)
	r := sender.wait()
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	if rec.ResumedFrom > reached {
		t.Errorf("resumed from %d after %d bytes reached A", rec.ResumedFrom, reached)
	}
	t.Logf("A killed after %d bytes; resumed on B from %d; bytes resent %d (part %d)", reached, rec.ResumedFrom, rec.TotalSentBytes-rec.Size, s3Part)
	wantOnePartResent(t, rec, reached)
	wantObject(t, gw, "shared", "inbox/big.bin", src, rec)
}

// wantOnePartResent checks a send resumed after ferryd A was killed, of
// which arrived bytes had reached A: it resumed at a part boundary past
// zero, A lost at most one part (and the chunks in flight) past it, and
// the sender resent at most one part.
func wantOnePartResent(t *testing.T, rec record, arrived int64) {
	t.Helper()
	if rec.ResumedFrom <= 0 || rec.ResumedFrom%s3Part != 0 {
		t.Errorf("resumed from %d, want a part boundary (%d) past zero", rec.ResumedFrom, s3Part)
	}
	if lost := arrived - rec.ResumedFrom; lost > s3Part+4*chunkSize {
		t.Errorf("%d bytes had reached A but B resumed from %d: more than one part (%d) and the chunks in flight lost",
			arrived, rec.ResumedFrom, s3Part)
	}
	if resent := rec.TotalSentBytes - rec.Size; resent > s3Part {
		t.Errorf("resent %d bytes, want at most one part (%d)", resent, s3Part)
	}
}

// wantObject checks that the object key in bucket is src, by BLAKE3, as
// the sender's record says.
func wantObject(t *testing.T, gw *gwServer, bucket, key, src string, rec record) {
	t.Helper()
	want := fileBLAKE3(t, src)
	if got := objectBLAKE3(t, gw, bucket, key); got != want || rec.BLAKE3 != want {
		t.Errorf("committed object BLAKE3 %s (sender's %s), source's %s", got, rec.BLAKE3, want)
	}
}

// TestS3KilledUnthrottledLosesOnePart: as TestS3DaemonKilledOtherResumes
// but at full speed, where the gateway is the bottleneck and the daemon
// is always behind: ferryd A is killed while it receives, and what A had
// received past the offset B resumes from (A's durable offset) is at most
// one part and the chunks being written and read (the chunkWriter waits
// for each part's record before it writes the next). All the sender
// resends, including what was in the socket buffers and the proxy, is at
// most one part: it never has more than one part past the durable offset
// A acknowledged (Accept.Window, protocol 2.3). The test logs the split.
func TestS3KilledUnthrottledLosesOnePart(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	gw := startGW(t)
	gw.CreateBucket(t, "fast")
	a := startS3Daemon(t, gw, "fast", "--metrics-listen", "127.0.0.1:0")
	b := startS3Daemon(t, gw, "fast")
	metrics := loggedAddr(a.waitLine(0, "metrics listening"))
	const size = 192 << 20
	src := filepath.Join(t.TempDir(), "fast.bin")
	writeRandom(t, src, size, 141)
	proxy := newProxy(t, a.addr)
	sender := startFerry(t, sendArgs(proxy.Addr(), "--retries", "50", "--backoff", "100ms", src)...)
	if err := proxy.WaitBytes(ctx, 100<<20); err != nil { // mid-part: 12.5 parts
		t.Fatal(err)
	}
	// Read before the kill: A's durable offset can only grow after it.
	received := int64(parseMetrics(t, scrape(t, metrics))["ferry_received_bytes_total"])
	a.kill()
	reached := proxy.Total(faultproxy.ClientToServer)
	proxy.SetUpstream(b.addr)
	proxy.CloseConns()
	r := sender.wait()
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	resent := rec.TotalSentBytes - rec.Size
	t.Logf("A killed after %d bytes through the proxy, %d received by A; B resumed from %d; resent %d: "+
		"%d received by A and not durable, %d in socket buffers and the proxy",
		reached, received, rec.ResumedFrom, resent, received-rec.ResumedFrom, rec.ResumedFrom+resent-received)
	wantOnePartResent(t, rec, received)
	wantObject(t, gw, "fast", "inbox/fast.bin", src, rec)
}

// TestS3RacingSendersOneCommits: two senders of different content race
// on one name through two daemons on one bucket: one commits, the other
// is refused as existing (exit 3), and the object is the winner's.
func TestS3RacingSendersOneCommits(t *testing.T) {
	slow(t)
	gw := startGW(t)
	gw.CreateBucket(t, "race")
	a, b := startS3Daemon(t, gw, "race"), startS3Daemon(t, gw, "race")
	dir1, dir2 := t.TempDir(), t.TempDir()
	src1, src2 := filepath.Join(dir1, "same.bin"), filepath.Join(dir2, "same.bin")
	writeRandom(t, src1, 40<<20, 1)
	writeRandom(t, src2, 40<<20, 2)
	p1 := startFerry(t, sendArgs(a.addr, src1)...)
	p2 := startFerry(t, sendArgs(b.addr, src2)...)
	r1, r2 := p1.wait(), p2.wait()
	if r1.code+r2.code != exitRefused || r1.code != exitOK && r2.code != exitOK {
		t.Fatalf("exit codes %d and %d, want one 0 and one %d\n%s\n%s", r1.code, r2.code, exitRefused, r1, r2)
	}
	winner := src1
	if r2.code == exitOK {
		winner = src2
	}
	if got, want := objectBLAKE3(t, gw, "race", "inbox/same.bin"), fileBLAKE3(t, winner); got != want {
		t.Errorf("object BLAKE3 %s, the committed sender's %s", got, want)
	}
}

// TestS3GatewayRestartMidTransfer: the gateway stopped and restarted
// mid-transfer; the sender retries and the transfer completes whole.
func TestS3GatewayRestartMidTransfer(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	gw := startGW(t)
	gw.CreateBucket(t, "restart")
	d := startS3Daemon(t, gw, "restart")
	src := filepath.Join(t.TempDir(), "f.bin")
	writeRandom(t, src, 64<<20, 7)
	proxy := newProxy(t, d.addr)
	proxy.Throttle(32 << 20)
	sender := startFerry(t, sendArgs(proxy.Addr(), "--retries", "50", src)...)
	if err := proxy.WaitBytes(ctx, 24<<20); err != nil {
		t.Fatal(err)
	}
	from := d.mark()
	gw.Stop()
	// Down until the daemon gives up on it (minio-go's own retries spent)
	// and fails the transfer: the sender's retry is what completes it.
	d.waitLine(from, "refused")
	gw.Restart()
	proxy.Throttle(0)
	r := sender.wait()
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	if rec.Attempts < 2 {
		t.Errorf("%d attempts, want a retry after the gateway came back", rec.Attempts)
	}
	wantObject(t, gw, "restart", "inbox/f.bin", src, rec)
}

// TestS3LiveLeaseNeverTaken: while ferryd A receives a transfer (for
// longer than the lease TTL, so its lease is renewed), a sender of the
// same name through ferryd B is refused as busy every time, and A's
// transfer commits in one attempt.
func TestS3LiveLeaseNeverTaken(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	gw := startGW(t)
	gw.CreateBucket(t, "live")
	a, b := startS3Daemon(t, gw, "live"), startS3Daemon(t, gw, "live")
	src := filepath.Join(t.TempDir(), "held.bin")
	writeRandom(t, src, 24<<20, 5)
	proxy := newProxy(t, a.addr)
	proxy.Throttle(4 << 20) // about 6 s: three TTLs
	first := startFerry(t, sendArgs(proxy.Addr(), src)...)
	for _, at := range []int64{4 << 20, 16 << 20} { // within the first TTL, and after renewals
		if err := proxy.WaitBytes(ctx, at); err != nil {
			t.Fatal(err)
		}
		from := b.mark()
		r := runFerry(t, sendArgs(b.addr, "--retries", "0", src)...)
		if r.code == exitOK {
			t.Fatalf("second sender committed through B while A held the lease\n%s", r)
		}
		b.waitLine(from, "refused", "being received by another session")
	}
	r := first.wait()
	wantCode(t, r, exitOK)
	if rec := onlyRecord(t, r); rec.Attempts != 1 {
		t.Errorf("A's sender needed %d attempts: its lease was taken", rec.Attempts)
	}
}

// TestS3ExpiredLeaseTakenOver: ferryd A is killed mid-transfer; a sender
// through ferryd B is refused as busy while A's lease lives, then B takes
// the expired lease over and resumes from A's durable offset.
func TestS3ExpiredLeaseTakenOver(t *testing.T) {
	slow(t)
	ctx := testContext(t)
	gw := startGW(t)
	gw.CreateBucket(t, "expired")
	a, b := startS3Daemon(t, gw, "expired"), startS3Daemon(t, gw, "expired")
	src := filepath.Join(t.TempDir(), "orphan.bin")
	writeRandom(t, src, 48<<20, 6)
	proxy := newProxy(t, a.addr)
	proxy.Throttle(16 << 20)
	first := startFerry(t, sendArgs(proxy.Addr(), "--retries", "0", src)...)
	if err := proxy.WaitBytes(ctx, 30<<20); err != nil {
		t.Fatal(err)
	}
	a.kill()
	first.wait()
	from := b.mark()
	r := runFerry(t, sendArgs(b.addr, "--retries", "50", "--backoff", "200ms", src)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	if rec.ResumedFrom <= 0 || rec.ResumedFrom%s3Part != 0 {
		t.Errorf("resumed from %d, want A's durable offset, a part boundary past zero", rec.ResumedFrom)
	}
	if rec.Attempts < 2 || len(b.lines(from, "refused", "being received by another session")) == 0 {
		t.Errorf("%d attempts: B took A's lease over before it expired", rec.Attempts)
	}
	if got, want := objectBLAKE3(t, gw, "expired", "inbox/orphan.bin"), fileBLAKE3(t, src); got != want {
		t.Errorf("object BLAKE3 %s, source's %s", got, want)
	}
}

// TestS3StoreNeedsCertificate: --store has no root to keep a generated
// key in, and the daemons sharing a bucket must present one key, so
// ferryd refuses to start without --tls-cert and --tls-key (exit 2).
func TestS3StoreNeedsCertificate(t *testing.T) {
	r := runFerryd(t, "--listen", "127.0.0.1:0", "--store", "s3://bucket/inbox", "--s3-endpoint", "http://127.0.0.1:1", "--s3-region", "us-east-1")
	if r.code != exitUsage {
		t.Fatalf("ferryd exited %d, want 2\n%s", r.code, r)
	}
	oneLine(t, "--store without a certificate", r.stderr, "--store needs --tls-cert and --tls-key")
}
