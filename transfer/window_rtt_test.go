package transfer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"testing"
	"time"
)

// TestWindowNoRoundTripPerFile (issue 9): a re-sent tree's offers all go
// on the wire without the sender waiting for any answer. The daemon here
// answers nothing until it has read the offers of every file (of a tree
// smaller than the window), then settles them all as unchanged: a sender
// that waited for an answer per file, or per batch of files, would never
// finish (the test fails after its timeout instead). It also counts the
// writes that carried the offers: many go in one.
func TestWindowNoRoundTripPerFile(t *testing.T) {
	const files = 500
	writes := 0
	conn := fakeDaemon(t, func(hr *bufio.Reader, w io.Writer) error {
		if _, err := ReadMessage(hr); err != nil {
			return err
		}
		// Reads as large as any write: each read of the pipe takes one
		// write of the sender.
		r := bufio.NewReaderSize(writeCounter{hr, &writes}, 1<<20)
		if err := WriteMessage(w, &Hello{Major: ProtocolMajor, Minor: ProtocolMinor, ChunkSize: MinChunkSize}); err != nil {
			return err
		}
		var offers []*Offer
		for len(offers) < files {
			m, err := ReadMessage(r)
			if err != nil {
				return fmt.Errorf("after %d offers: %w", len(offers), err)
			}
			o, ok := m.(*Offer)
			if !ok {
				return fmt.Errorf("after %d offers: %T, want an offer", len(offers), m)
			}
			offers = append(offers, o)
		}
		for _, o := range offers {
			if err := WriteMessage(w, &Committed{ID: o.ID, Flags: CommittedAlready | CommittedUnchanged, Size: o.Size}); err != nil {
				return err
			}
		}
		_, err := ReadMessage(r) // until the sender hangs up
		return err
	})
	c, err := Handshake(context.Background(), conn, ClientOptions{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var jobs []*Job
	for i := range files {
		jobs = append(jobs, &Job{Name: fmt.Sprintf("tree/f%04d", i), Src: memSource([]byte("small file"))})
	}
	next := 0
	settled := 0
	unsettled, _, err := c.SendAll(context.Background(), func() (*Job, bool) {
		if next == len(jobs) {
			return nil, false
		}
		next++
		return jobs[next-1], true
	}, func(j *Job, err error) {
		settled++
		if err != nil || !j.Last.Unchanged {
			t.Errorf("%s: %v, unchanged %v", j.Name, err, j.Last.Unchanged)
		}
	}, WindowOptions{})
	if err != nil || len(unsettled) != 0 || settled != files {
		t.Fatalf("SendAll: %v, %d unsettled, %d settled of %d", err, len(unsettled), settled, files)
	}
	t.Logf("%d offers in %d writes", files, writes)
	if writes > files/10 {
		t.Errorf("%d offers took %d writes; want them batched (at most %d)", files, writes, files/10)
	}
}

// writeCounter counts the reads that returned data.
type writeCounter struct {
	r io.Reader
	n *int
}

func (c writeCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		*c.n++
	}
	return n, err
}
