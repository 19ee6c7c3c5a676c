package storetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// failingReader fails every read past limit, as a sender whose disk fails
// mid-file.
type failingReader struct {
	r     io.ReaderAt
	limit int64
}

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.limit {
		return 0, errors.New("source gone")
	}
	return f.r.ReadAt(p, off)
}

// ResumeAtPart runs a real session (in process, over net.Pipe) on store,
// a store that makes whole parts of part bytes durable, in chunks of
// chunkSize bytes. The first attempt is cut in the middle of its third
// part; the second must resume at the part boundary before the cut,
// never further than the store acknowledged, and the file committed as
// "d/f" must be the source, read back from reopen() (the store as another
// daemon would open it). The daemon syncs only where the store can: its
// SyncBytes is out of reach, so every sync comes from a part boundary.
func ResumeAtPart(t *testing.T, store daemon.Store, reopen func() daemon.Store, part int64, chunkSize int) {
	t.Helper()
	srv, err := daemon.NewServer(daemon.Config{Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), SyncBytes: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	size := 3*part + 3*int64(chunkSize) + 17
	data := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{9}).Read(data) // never fails
	mt := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	send := func(r io.ReaderAt) (transfer.Result, error) {
		c, d := net.Pipe()
		srv.ServeConn(d)
		defer c.Close() //nolint:errcheck // a pipe
		cl, err := transfer.Handshake(context.Background(), c, transfer.ClientOptions{ChunkSize: chunkSize, Agent: "storetest"})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close() //nolint:errcheck // the send's error is the one checked
		return cl.Send(context.Background(), transfer.Source{R: r, Size: size, Mode: 0o600, ModTime: mt, Inode: 3}, "d/f", transfer.SendOptions{})
	}
	cut := 2*part + part/2
	if _, err := send(&failingReader{r: bytes.NewReader(data), limit: cut}); err == nil {
		t.Fatal("send of a failing source succeeded")
	}
	var res transfer.Result
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A cut session's transfer is released once the daemon sees
		// the cut, which no answer tells the sender.
		res, err = send(bytes.NewReader(data))
		if !errors.Is(err, transfer.ErrBusy) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedFrom != 2*part {
		t.Errorf("resumed from %d after a cut at %d, want the part boundary %d", res.ResumedFrom, cut, 2*part)
	}
	again := reopen()
	f, err := again.OpenCommitted("d/f")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if n, err := f.ReadAt(got, 0); n != len(got) || err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("reading back: %d bytes, %v", n, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("committed file differs from the source")
	}
	if sz, mtime, err := again.Stat("d/f"); err != nil || sz != size || !mtime.Equal(mt) {
		t.Errorf("Stat = %d, %v, %v; want %d, %v", sz, mtime, err, size, mt)
	}
}
