package daemon_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// TestMetricsOwnRegistry: servers with registries of their own run side
// by side; a second server on the same registry is an error, not a panic.
func TestMetricsOwnRegistry(t *testing.T) {
	t.Parallel()
	a, b := prometheus.NewRegistry(), prometheus.NewRegistry()
	newServer(t, daemon.Config{Metrics: a})
	newServer(t, daemon.Config{Metrics: b})
	store, _ := newStore(t)
	if _, err := daemon.NewServer(daemon.Config{Store: store, Metrics: a}); err == nil {
		t.Fatal("NewServer on a registry already holding a server's metrics: no error")
	}
	n, err := testutil.GatherAndCount(a)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no metrics registered")
	}
}

// TestMetricsPartialBytes: ferry_partial_bytes reads the data written to
// partials, and 0 once none is left.
func TestMetricsPartialBytes(t *testing.T) {
	t.Parallel()
	store, _ := newStore(t)
	reg := prometheus.NewRegistry()
	if _, err := daemon.NewServer(daemon.Config{Store: store, Metrics: reg}); err != nil {
		t.Fatal(err)
	}
	want := func(n int) {
		t.Helper()
		exp := "# HELP ferry_partial_bytes Bytes held by partials on disk (their data files' sizes), measured at scrape.\n" +
			"# TYPE ferry_partial_bytes gauge\nferry_partial_bytes " + strconv.Itoa(n) + "\n"
		if err := testutil.GatherAndCompare(reg, strings.NewReader(exp), "ferry_partial_bytes"); err != nil {
			t.Error(err)
		}
	}
	want(0)
	data := randomData(3*testChunk, 5)
	p, _, err := store.Open(testKey, &transfer.Offer{Size: int64(len(data)), Name: "f"}, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WriteAt(data[:2*testChunk], 0); err != nil {
		t.Fatal(err)
	}
	want(2 * testChunk)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
