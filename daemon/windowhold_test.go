package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// TestWindowSlowWalkHeld: while the window waits for the walk's next file
// (a slow disk, a large directory being read) the daemon has nothing to
// say, and the sender's reads must not time out meanwhile. The walk here
// takes three read timeouts between files.
func TestWindowSlowWalkHeld(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	const timeout = 100 * time.Millisecond
	c := handshakeOpts(t, srv.dial(t), transfer.ClientOptions{ChunkSize: testChunk, Agent: "ferry-test", Timeout: timeout})
	defer c.Close()
	js, data := jobs(3, 1000, "slow")
	next := feed(js)
	first := true
	slow := func() (*transfer.Job, bool) {
		if !first {
			time.Sleep(3 * timeout) // the walk, not a wait for the daemon
		}
		first = false
		return next()
	}
	unsettled, _, err := c.SendAll(context.Background(), slow, func(j *transfer.Job, err error) {
		if err != nil {
			t.Errorf("%s: %v", j.Name, err)
		}
	}, transfer.WindowOptions{})
	if err != nil || len(unsettled) != 0 {
		t.Fatalf("SendAll: %v, %d unsettled", err, len(unsettled))
	}
	for i, j := range js {
		srv.checkCommitted(t, j.Name, data[i], j.Last)
	}
}
