package storetest_test

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
	"github.com/ferry-dev/ferry/daemon/storetest"
	"github.com/ferry-dev/ferry/transfer"
)

// failingReader fails every read at or past limit, as a sender whose
// disk fails mid-file.
type failingReader struct {
	r     io.ReaderAt
	limit int64
}

var errSourceGone = errors.New("source gone")

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.limit {
		return 0, errSourceGone
	}
	return f.r.ReadAt(p, off)
}

// TestSessionOnPartsStore: a daemon on a store of whole parts resumes an
// interrupted transfer at the last part boundary the store reached, and
// never from further than it acknowledged.
func TestSessionOnPartsStore(t *testing.T) {
	const cs = storetest.ChunkSize
	const part = 4 * cs
	backing := storetest.NewMemBacking()
	srv, err := daemon.NewServer(daemon.Config{Store: storetest.NewMemStore(backing, part),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), SyncBytes: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	size := int64(10*part + 3*cs + 17)
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	mt := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	send := func(r io.ReaderAt) (transfer.Result, error) {
		c, d := net.Pipe()
		srv.ServeConn(d)
		defer c.Close()
		cl, err := transfer.Handshake(context.Background(), c, transfer.ClientOptions{ChunkSize: cs, Agent: "storetest"})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		return cl.Send(context.Background(), transfer.Source{R: r, Size: size, Mode: 0o600, ModTime: mt, Inode: 3}, "f", transfer.SendOptions{})
	}
	cut := int64(6*part + 2*cs) // mid-part
	if _, err := send(&failingReader{r: bytes.NewReader(data), limit: cut}); err == nil {
		t.Fatal("send of a failing source succeeded")
	}
	var res transfer.Result
	deadline := time.Now().Add(5 * time.Second)
	for {
		res, err = send(bytes.NewReader(data))
		if !errors.Is(err, transfer.ErrBusy) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedFrom%part != 0 || res.ResumedFrom == 0 || res.ResumedFrom > cut || cut-res.ResumedFrom > part {
		t.Fatalf("resumed from %d after a cut at %d; want the part boundary before it (parts of %d)", res.ResumedFrom, cut, part)
	}
	s := storetest.NewMemStore(backing, part)
	f, err := s.OpenCommitted("f")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("committed bytes differ")
	}
}
