package s3store_test

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
	"github.com/ferry-dev/ferry/daemon/s3store"
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

// TestSessionResumesAtPart: an in-process daemon on the S3 store (run
// under -race) is interrupted mid-part; the next attempt resumes at the
// last part boundary, and the object committed is the file.
func TestSessionResumesAtPart(t *testing.T) {
	gw := startGW(t)
	gw.CreateBucket(t, "session")
	store := s3store.New(gw.Core(t), "session", "")
	store.PartSize = 5 << 20
	srv, err := daemon.NewServer(daemon.Config{Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	const part = 5 << 20
	size := int64(3*part + 123457)
	data := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{9}).Read(data) // never fails
	mt := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	send := func(r io.ReaderAt) (transfer.Result, error) {
		c, d := net.Pipe()
		srv.ServeConn(d)
		defer c.Close()
		cl, err := transfer.Handshake(context.Background(), c, transfer.ClientOptions{ChunkSize: 1 << 20, Agent: "s3store-test"})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		return cl.Send(context.Background(), transfer.Source{R: r, Size: size, Mode: 0o600, ModTime: mt, Inode: 3}, "d/f", transfer.SendOptions{})
	}
	cut := int64(2*part + 3<<20)
	if _, err := send(&failingReader{r: bytes.NewReader(data), limit: cut}); err == nil {
		t.Fatal("send of a failing source succeeded")
	}
	var res transfer.Result
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err = send(bytes.NewReader(data))
		if !errors.Is(err, transfer.ErrBusy) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedFrom != 2*part {
		t.Errorf("resumed from %d after a cut at %d, want the part boundary %d", res.ResumedFrom, cut, 2*part)
	}
	f, err := store.OpenCommitted("d/f")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if n, err := f.ReadAt(got, 0); n != len(got) || err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("reading back: %d bytes, %v", n, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("committed object differs from the file")
	}
	if sz, mtime, err := store.Stat("d/f"); err != nil || sz != size || !mtime.Equal(mt) {
		t.Errorf("Stat = %d, %v, %v; want %d, %v", sz, mtime, err, size, mt)
	}
}
