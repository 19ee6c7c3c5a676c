package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// TestOfferOfCommittedFile covers a name that is already committed: the
// same file again (a sender that never heard Committed, or a send run
// twice) is confirmed by hash without a byte of data, while anything else
// is refused as exists and the committed file stays as it was.
func TestOfferOfCommittedFile(t *testing.T) {
	data := randomData(5*testChunk+123, 61)
	tests := []struct {
		name    string
		again   func() ([]byte, transfer.Source) // the second offer's data and source
		wantErr error
	}{
		{"same file is confirmed", func() ([]byte, transfer.Source) { return data, source(data) }, nil},
		{"empty file is confirmed", nil, nil},
		{"same size and mtime, other content", func() ([]byte, transfer.Source) {
			other := randomData(len(data), 62)
			return other, source(other)
		}, transfer.ErrExists},
		{"same size and mtime, only the prefix differs", func() ([]byte, transfer.Source) {
			other := bytes.Clone(data)
			other[10] ^= 1 // the tail chunk still matches: only the whole-file hash can tell
			return other, source(other)
		}, transfer.ErrExists},
		{"other size", func() ([]byte, transfer.Source) {
			other := data[:len(data)-1]
			return other, source(other)
		}, transfer.ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, again := data, tt.again
			if again == nil {
				first = nil
				again = func() ([]byte, transfer.Source) { return nil, source(nil) }
			}
			srv := newServer(t, daemon.Config{})
			// One session for both sends: a second session could find
			// the name still held by the first for a moment (busy).
			c := srv.connect(t)
			if _, err := c.Send(context.Background(), source(first), "f", transfer.SendOptions{}); err != nil {
				t.Fatal(err)
			}
			second, src := again()
			res, err := c.Send(context.Background(), src, "f", transfer.SendOptions{})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("second send: %v, want %v", err, tt.wantErr)
			}
			if err == nil {
				srv.checkCommitted(t, "f", second, res)
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
}
