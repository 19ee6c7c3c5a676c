package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ferry-dev/ferry/daemon/s3store"
	"github.com/ferry-dev/ferry/internal/faultproxy"
	"github.com/ferry-dev/ferry/internal/versitygw"
)

// The S3 benchmark of issue 13 (`ferrybench s3`, `make bench-s3`): a file
// through ferryd into versitygw on loopback against a direct multipart
// upload of the same file with minio-go, in the same part size, round by
// round; ferryd's peak RSS; and the bytes resent after ferryd is killed
// mid-file and the sender's retries land on a second ferryd. With
// -memory fresh, each run (the direct upload's and ferry's) starts right
// after a ballast file of twice the file's bytes is written and deleted,
// as the main benchmark's fresh state: a direct upload run first after
// one ballast is faster than anything after it, which alone once made a
// round's ratio 1.27-1.36.

// s3Result is what `ferrybench s3` writes.
type s3Result struct {
	Size        int64     `json:"size"`
	PartSize    int64     `json:"part_size"`
	Memory      string    `json:"memory"` // settled or fresh: the state each run starts in
	Rounds      []s3Round `json:"rounds"`
	MedianRatio float64   `json:"median_ratio"` // ferry wall / direct wall
	IdleRSS     int64     `json:"ferryd_idle_rss"`
	Kill        *s3Kill   `json:"kill,omitempty"`
}

type s3Round struct {
	DirectSeconds    float64 `json:"direct_seconds"`
	DirectCPUSeconds float64 `json:"direct_cpu_seconds"` // the uploader, this process
	DirectGWCPU      float64 `json:"direct_gateway_cpu_seconds"`
	FerrySeconds     float64 `json:"ferry_seconds"`
	FerryCPUSeconds  float64 `json:"ferry_cpu_seconds"` // ferry + ferryd
	SenderCPUSeconds float64 `json:"sender_cpu_seconds"`
	FerrydCPUSeconds float64 `json:"ferryd_cpu_seconds"`
	FerryGWCPU       float64 `json:"ferry_gateway_cpu_seconds"` // versitygw during the ferry send
	FerrydPeakRSS    int64   `json:"ferryd_peak_rss"`
	Ratio            float64 `json:"ratio"`
}

type s3Kill struct {
	KilledAfter int64 `json:"killed_after"` // bytes through the proxy when ferryd A was killed
	// ReceivedByA is A's ferry_received_bytes_total read just before the
	// kill: ReceivedByA - ResumedFrom is what A had received and not made
	// durable, SentAtKill - ReceivedByA what sat in the socket buffers and
	// the proxy.
	ReceivedByA int64 `json:"received_by_a"`
	SentAtKill  int64 `json:"sent_at_kill"` // the sender's offset at the kill: ResumedFrom + Resent
	ResumedFrom int64 `json:"resumed_from"`
	Resent      int64 `json:"resent"` // total_sent_bytes - size
	Attempts    int   `json:"attempts"`
}

func s3Bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ferrybench s3", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizeFlag := fs.String("size", "1G", "file `SIZE`")
	rounds := fs.Int("rounds", 3, "rounds; each runs the direct upload, then ferry")
	binDir := fs.String("bin", "bin", "directory holding ferry and ferryd")
	gwBin := fs.String("versitygw", "", "versitygw binary (default: on PATH, else in $(go env GOPATH)/bin)")
	workParent := fs.String("dir", "", "directory for the work directory (default $TMPDIR)")
	out := fs.String("out", filepath.Join("bench", "results-s3.json"), "results JSON; empty skips")
	kill := fs.Bool("kill", true, "also measure the bytes resent after a daemon kill")
	memory := fs.String("memory", memSettled, "memory `STATE` each run starts in: settled (after sync and the pause), or fresh (then right after a ballast file of twice the file's bytes was written and deleted), as in the main benchmark")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *memory != memSettled && *memory != memFresh {
		return fmt.Errorf("-memory %q: want %s or %s", *memory, memSettled, memFresh)
	}
	sz, err := parseSize(*sizeFlag)
	if err != nil {
		return err
	}
	if *gwBin == "" {
		var ok bool
		if *gwBin, ok = versitygw.Binary(); !ok {
			return errors.New("versitygw not found on PATH or in $(go env GOPATH)/bin; install it with go install github.com/versity/versitygw/cmd/versitygw@" + versitygw.Version)
		}
	}
	work, err := os.MkdirTemp(*workParent, "ferrybench-s3-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work) //nolint:errcheck // best effort
	src, err := makeRandom(work, sz)
	if err != nil {
		return err
	}
	const access, secret = "ferrybench", "ferrybench-secret"
	for k, v := range map[string]string{"ROOT_ACCESS_KEY": access, "ROOT_SECRET_KEY": secret,
		"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret} {
		if err := os.Setenv(k, v); err != nil {
			return err
		}
	}
	gwDir := filepath.Join(work, "gw")
	if err := os.Mkdir(gwDir, 0o755); err != nil {
		return err
	}
	endpoint, err := freeAddr()
	if err != nil {
		return err
	}
	gw, err := startProc(ctx, filepath.Join(work, "versitygw.log"), *gwBin, "--port", endpoint, "--quiet", "posix", gwDir)
	if err != nil {
		return fmt.Errorf("starting versitygw: %w", err)
	}
	defer gw.stop() //nolint:errcheck // the benchmark's result is reported
	client, err := minio.New(endpoint, &minio.Options{Creds: credentials.NewStaticV4(access, secret, ""),
		Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		return err
	}
	core := &minio.Core{Client: client}
	if err := waitGateway(ctx, client); err != nil {
		return err
	}
	const bucket = "bench"
	if err := client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		return err
	}
	ferry, ferryd := filepath.Join(*binDir, "ferry"), filepath.Join(*binDir, "ferryd")
	url := "http://" + endpoint
	res := s3Result{Size: sz.bytes, PartSize: s3store.DefaultPartSize, Memory: *memory}
	// prepare puts the machine in the chosen memory state before each
	// run, the direct upload's and ferry's alike, so that neither starts
	// in a state the other's run left.
	prepare := func() {
		settle(3*time.Second, time.Minute, stderr)
		if *memory == memFresh {
			if err := freshen(work, 2*sz.bytes); err != nil {
				fmt.Fprintf(stderr, "ferrybench: warning: run not in the fresh memory state: %v\n", err)
			}
		}
	}
	gwCPU := func() time.Duration { return childCPU(gw.cmd.Process.Pid) }
	tlsArgs, err := s3TLS(ctx, work, ferryd)
	if err != nil {
		return err
	}
	if res.IdleRSS, err = idleRSS(ctx, work, ferryd, bucket, url, tlsArgs); err != nil {
		return err
	}
	for r := range *rounds {
		var rd s3Round
		prepare()
		g0 := gwCPU()
		d, cpu, err := directUpload(ctx, core, bucket, fmt.Sprintf("direct-%d", r), src.path, res.PartSize)
		if err != nil {
			return fmt.Errorf("direct upload: %w", err)
		}
		rd.DirectSeconds, rd.DirectCPUSeconds, rd.DirectGWCPU = d.Seconds(), cpu.Seconds(), (gwCPU() - g0).Seconds()
		_ = client.RemoveObject(ctx, bucket, fmt.Sprintf("direct-%d", r), minio.RemoveObjectOptions{})
		prepare()
		logs := filepath.Join(work, fmt.Sprintf("round-%d", r))
		dp, addr, err := startListener(ctx, logs+"-ferryd.log", ferryd, append([]string{"--listen", "127.0.0.1:0",
			"--store", fmt.Sprintf("s3://%s/ferry-%d", bucket, r), "--s3-endpoint", url}, tlsArgs...)...)
		if err != nil {
			return err
		}
		g0 = gwCPU()
		start := time.Now()
		sp, err := startProc(ctx, logs+"-ferry.log", ferry, "send", "--to", addr, "--fingerprint", dp.fingerprint, "--json", src.path)
		if err != nil {
			return err
		}
		su, sendErr := sp.wait()
		end := time.Now()
		rd.FerryGWCPU = (gwCPU() - g0).Seconds()
		du, stopErr := dp.stop()
		if err := errors.Join(sendErr, stopErr); err != nil {
			return err
		}
		if err := checkRecord(sp.stdout.Bytes(), src); err != nil {
			return err
		}
		rd.FerrySeconds, rd.FerryCPUSeconds = end.Sub(start).Seconds(), (su.cpu + du.cpu).Seconds()
		rd.SenderCPUSeconds, rd.FerrydCPUSeconds = su.cpu.Seconds(), du.cpu.Seconds()
		rd.FerrydPeakRSS = du.maxRSS
		rd.Ratio = rd.FerrySeconds / rd.DirectSeconds
		res.Rounds = append(res.Rounds, rd)
		fmt.Fprintf(stdout, "round %d: direct %.2fs (cpu %.2fs, gateway %.2fs)  ferry %.2fs (cpu %.2fs = ferry %.2fs + ferryd %.2fs, gateway %.2fs)  ratio %.2f  ferryd peak RSS %d MiB\n",
			r+1, rd.DirectSeconds, rd.DirectCPUSeconds, rd.DirectGWCPU, rd.FerrySeconds, rd.FerryCPUSeconds,
			rd.SenderCPUSeconds, rd.FerrydCPUSeconds, rd.FerryGWCPU, rd.Ratio, rd.FerrydPeakRSS/mib)
		_ = client.RemoveObject(ctx, bucket, fmt.Sprintf("ferry-%d/%s", r, filepath.Base(src.path)), minio.RemoveObjectOptions{})
	}
	ratios := make([]float64, 0, len(res.Rounds))
	for _, rd := range res.Rounds {
		ratios = append(ratios, rd.Ratio)
	}
	slices.Sort(ratios)
	if len(ratios) > 0 {
		res.MedianRatio = ratios[len(ratios)/2]
	}
	fmt.Fprintf(stdout, "median ratio ferry/direct %.2f (target ≤ 1.25); ferryd idle RSS %d MiB, part %d MiB\n",
		res.MedianRatio, res.IdleRSS/mib, res.PartSize/mib)
	if *kill {
		k, err := killRun(ctx, work, ferry, ferryd, bucket, url, src, tlsArgs)
		if err != nil {
			return fmt.Errorf("kill run: %w", err)
		}
		res.Kill = k
		fmt.Fprintf(stdout, "kill: ferryd A killed after %d bytes through the proxy, %d received by A; sender at %d; "+
			"resumed on B from %d; resent %d bytes (part %d): %d received by A and not durable, %d in socket buffers and the proxy\n",
			k.KilledAfter, k.ReceivedByA, k.SentAtKill, k.ResumedFrom, k.Resent, res.PartSize,
			k.ReceivedByA-k.ResumedFrom, k.SentAtKill-k.ReceivedByA)
	}
	if *out == "" {
		return nil
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(*out, append(b, '\n'), 0o644)
}

// freeAddr returns a 127.0.0.1 address with a port that was free a
// moment ago (versitygw cannot listen on port 0 and tell).
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

func waitGateway(ctx context.Context, c *minio.Client) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.ListBuckets(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw not answering: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// idleRSS returns the peak RSS of a ferryd on the bucket that served
// nothing: the constant the per-session part comes on top of.
func idleRSS(ctx context.Context, work, ferryd, bucket, url string, tlsArgs []string) (int64, error) {
	p, _, err := startListener(ctx, filepath.Join(work, "idle-ferryd.log"), ferryd, append([]string{"--listen", "127.0.0.1:0",
		"--store", "s3://" + bucket + "/idle", "--s3-endpoint", url}, tlsArgs...)...)
	if err != nil {
		return 0, err
	}
	u, err := p.stop()
	return u.maxRSS, err
}

// directUpload uploads path as key in parts of partSize, one after
// another, with the part options ferryd uses (an unsigned payload: no
// SHA-256 of the data on either side), and returns the wall time and
// this process's CPU time.
func directUpload(ctx context.Context, core *minio.Core, bucket, key, path string, partSize int64) (time.Duration, time.Duration, error) {
	cpu0 := selfCPU()
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close() //nolint:errcheck // read-only
	id, err := core.NewMultipartUpload(ctx, bucket, key, minio.PutObjectOptions{})
	if err != nil {
		return 0, 0, err
	}
	buf := make([]byte, partSize)
	var parts []minio.CompletePart
	for n := 1; ; n++ {
		m, err := io.ReadFull(f, buf)
		if m > 0 {
			info, perr := core.PutObjectPart(ctx, bucket, key, id, n, bytes.NewReader(buf[:m]), int64(m),
				minio.PutObjectPartOptions{DisableContentSha256: true})
			if perr != nil {
				return 0, 0, perr
			}
			parts = append(parts, minio.CompletePart{PartNumber: n, ETag: info.ETag})
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return 0, 0, err
		}
	}
	if _, err := core.CompleteMultipartUpload(ctx, bucket, key, id, parts, minio.PutObjectOptions{}); err != nil {
		return 0, 0, err
	}
	return time.Since(start), selfCPU() - cpu0, nil
}

// killRun sends src to ferryd A through a proxy, kills A with SIGKILL
// halfway, points the proxy at ferryd B, and reads from the sender's
// record how much it resent.
func killRun(ctx context.Context, work, ferry, ferryd, bucket, url string, src source, tlsArgs []string) (*s3Kill, error) {
	start := func(name string, more ...string) (*proc, string, error) {
		return startListener(ctx, filepath.Join(work, "kill-"+name+".log"), ferryd, append(append([]string{"--listen", "127.0.0.1:0",
			"--store", "s3://" + bucket + "/kill", "--s3-endpoint", url}, tlsArgs...), more...)...)
	}
	metricsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	a, aAddr, err := start("a", "--metrics-listen", metricsAddr)
	if err != nil {
		return nil, err
	}
	defer a.cmd.Process.Kill() //nolint:errcheck // killed below; this is for early returns
	b, bAddr, err := start("b")
	if err != nil {
		return nil, err
	}
	defer b.stop() //nolint:errcheck // the measurement is the sender's record
	proxy, err := faultproxy.New(aAddr)
	if err != nil {
		return nil, err
	}
	defer proxy.Close() //nolint:errcheck // loopback
	sp, err := startProc(ctx, filepath.Join(work, "kill-ferry.log"), ferry, "send", "--to", proxy.Addr(), "--fingerprint", a.fingerprint, "--json",
		"--retries", "100", "--backoff", "50ms", src.path)
	if err != nil {
		return nil, err
	}
	if err := proxy.WaitBytes(ctx, src.size.bytes/2); err != nil {
		return nil, err
	}
	received, err := receivedBytes(ctx, metricsAddr)
	if err != nil {
		return nil, err
	}
	if err := a.cmd.Process.Kill(); err != nil { // the wrapper; its child dies with it (Pdeathsig)
		return nil, err
	}
	_, _ = a.wait()
	k := &s3Kill{KilledAfter: proxy.Total(faultproxy.ClientToServer), ReceivedByA: received}
	proxy.SetUpstream(bAddr)
	proxy.CloseConns()
	if _, err := sp.wait(); err != nil {
		return nil, err
	}
	if err := checkRecord(sp.stdout.Bytes(), src); err != nil {
		return nil, err
	}
	var rec struct {
		Size           int64 `json:"size"`
		ResumedFrom    int64 `json:"resumed_from"`
		TotalSentBytes int64 `json:"total_sent_bytes"`
		Attempts       int   `json:"attempts"`
	}
	line, _, _ := strings.Cut(strings.TrimSpace(sp.stdout.String()), "\n")
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		return nil, fmt.Errorf("reading the sender's record: %w", err)
	}
	k.ResumedFrom, k.Resent, k.Attempts = rec.ResumedFrom, rec.TotalSentBytes-rec.Size, rec.Attempts
	k.SentAtKill = k.ResumedFrom + k.Resent
	return k, nil
}

// receivedBytes reads ferry_received_bytes_total from a ferryd's /metrics
// at addr.
func receivedBytes(ctx context.Context, addr string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("reading metrics: %w", err)
	}
	defer resp.Body.Close() //nolint:errcheck // read-only
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("reading metrics: %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ferry_received_bytes_total "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f), err
		}
	}
	return 0, errors.New("no ferry_received_bytes_total in the metrics")
}

// childCPU returns the CPU time (user + system) of the child of pid, the
// process a rusage-exec wrapper runs, from /proc; 0 if unknown. The child
// is listed under the wrapper's thread that started it, not necessarily
// its main thread.
func childCPU(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var f []string
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err == nil {
			f = append(f, strings.Fields(string(b))...)
		}
	}
	if len(f) == 0 {
		return 0
	}
	st, err := os.ReadFile("/proc/" + f[0] + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 14th and 15th of the whole line, in clock ticks.
	_, rest, ok := strings.Cut(string(st), ") ")
	fs := strings.Fields(rest)
	if !ok || len(fs) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(fs[11], 10, 64)
	stt, _ := strconv.ParseInt(fs[12], 10, 64)
	return time.Duration(ut+stt) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on
// Linux for every architecture Go supports).
const clockTicks = 100

// s3TLS returns the --tls-cert and --tls-key flags every ferryd of the
// run serves: --store has no root to generate a key in, and the daemons
// sharing a bucket present one key. ferryd makes it, as `ferryd
// fingerprint` does for a root.
func s3TLS(ctx context.Context, work, ferryd string) ([]string, error) {
	dir := filepath.Join(work, "tls-root")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, ferryd, "fingerprint", "--root", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ferryd fingerprint: %w: %s", err, out)
	}
	tlsDir := filepath.Join(dir, ".ferry", "tls")
	return []string{"--tls-cert", filepath.Join(tlsDir, "cert.pem"), "--tls-key", filepath.Join(tlsDir, "key.pem")}, nil
}
