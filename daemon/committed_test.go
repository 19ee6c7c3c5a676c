package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// TestOfferOfCommittedFile covers a name that is already committed: the
// same file again (a sender that never heard Committed, or a send run
// twice) is confirmed without a byte of data, while anything else is
// refused as exists and the committed file stays as it was. With
// --checksum (OfferChecksum) the confirmation is by hash; by default it is
// rsync's quick check, size and mtime, and a file of the same size and
// mtime but other content is taken as unchanged, as rsync does.
func TestOfferOfCommittedFile(t *testing.T) {
	data := randomData(5*testChunk+123, 61)
	tests := []struct {
		name         string
		again        func() ([]byte, transfer.Source) // the second offer's data and source
		wantErr      error
		quickWantErr error // without Checksum
	}{
		{"same file is confirmed", func() ([]byte, transfer.Source) { return data, source(data) }, nil, nil},
		{"empty file is confirmed", nil, nil, nil},
		{"same size and mtime, other content", func() ([]byte, transfer.Source) {
			other := randomData(len(data), 62)
			return other, source(other)
		}, transfer.ErrExists, nil},
		{"same size and mtime, only the prefix differs", func() ([]byte, transfer.Source) {
			other := bytes.Clone(data)
			other[10] ^= 1 // the tail chunk still matches: only the whole-file hash can tell
			return other, source(other)
		}, transfer.ErrExists, nil},
		{"other size", func() ([]byte, transfer.Source) {
			other := data[:len(data)-1]
			return other, source(other)
		}, transfer.ErrExists, transfer.ErrExists},
	}
	for _, checksum := range []bool{false, true} {
		for _, tt := range tests {
			name := tt.name
			wantErr := tt.wantErr
			if checksum {
				name += ", checksum"
			} else {
				name += ", quick check"
				wantErr = tt.quickWantErr
			}
			testOfferOfCommittedFile(t, name, data, tt.again, checksum, wantErr)
		}
	}
}

func testOfferOfCommittedFile(t *testing.T, name string, data []byte, again func() ([]byte, transfer.Source),
	checksum bool, wantErr error) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		first := data
		if again == nil {
			first = nil
			again = func() ([]byte, transfer.Source) { return nil, source(nil) }
		}
		srv := newServer(t, daemon.Config{})
		// One session for both sends: a second session could find
		// the name still held by the first for a moment (busy).
		c := handshakeOpts(t, srv.dial(t), transfer.ClientOptions{ChunkSize: testChunk, Checksum: checksum})
		if _, err := c.Send(context.Background(), source(first), "f", transfer.SendOptions{}); err != nil {
			t.Fatal(err)
		}
		second, src := again()
		res, err := c.Send(context.Background(), src, "f", transfer.SendOptions{})
		if !errors.Is(err, wantErr) {
			t.Fatalf("second send: %v, want %v", err, wantErr)
		}
		if err == nil {
			if res.Unchanged != !checksum || !res.AlreadyCommitted {
				t.Errorf("already committed %v, unchanged %v; want true and %v", res.AlreadyCommitted, res.Unchanged, !checksum)
			}
			srv.checkCommitted(t, "f", first, res)
			if res.ResumedFrom != int64(len(second)) || res.SentBytes != 0 {
				t.Errorf("confirmed with resumed_from %d, sent %d bytes; want %d and 0", res.ResumedFrom, res.SentBytes, len(second))
			}
		}
		got, rerr := os.ReadFile(filepath.Join(srv.root, "f"))
		if rerr != nil || !bytes.Equal(got, first) {
			t.Fatalf("committed file changed: %v", rerr)
		}
	})
}

// TestSourceModifiedWhileSent: a source that reports a change before the
// trailer is never committed (that would be a mix of old and new bytes);
// the next attempt, offering the new identity, starts over and commits.
func TestSourceModifiedWhileSent(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	data := randomData(4*testChunk+5, 71)
	src := source(data)
	src.Changed = func() (bool, error) { return true, nil }
	c := srv.connect(t)
	_, err := c.Send(context.Background(), src, "f", transfer.SendOptions{})
	c.Close() // as ferry does with a session a failed transfer left unusable
	if !errors.Is(err, transfer.ErrSourceChanged) || !transfer.Retryable(err) {
		t.Fatalf("send of a changing source: %v, want retryable ErrSourceChanged", err)
	}
	if _, err := os.Stat(filepath.Join(srv.root, "f")); !os.IsNotExist(err) {
		t.Fatalf("a source modified while sent was committed (%v)", err)
	}
	now := randomData(len(data), 72)
	src = source(now)
	src.ModTime = src.ModTime.Add(time.Second)
	res := srv.sendRetryBusy(t, src, "f")
	if res.ResumedFrom != 0 {
		t.Errorf("new content resumed at %d, want a start over", res.ResumedFrom)
	}
	srv.checkCommittedFrom(t, "f", src, now, res)
}
