package daemon_test

// Issue 10 end to end: chunk hashes are BLAKE3 subtree chaining values,
// the whole-file hash is merged from them, and a restarted daemon resumes
// from the merge stack in its state record without reading the prefix.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// b3sum returns what b3sum prints for the file at path, or, where b3sum is
// not installed, transfer.HashBytes of its bytes (pinned to b3sum by
// transfer's TestHashBytesIsB3sum).
func b3sum(t *testing.T, path string) transfer.Hash {
	t.Helper()
	var h transfer.Hash
	if bin, err := exec.LookPath("b3sum"); err == nil {
		out, err := exec.Command(bin, "--no-names", path).Output()
		if err != nil {
			t.Fatalf("b3sum %s: %v", path, err)
		}
		b, err := hex.DecodeString(strings.TrimSpace(string(out)))
		if err != nil || len(b) != len(h) {
			t.Fatalf("b3sum printed %q", out)
		}
		copy(h[:], b)
		return h
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return transfer.HashBytes(data)
}

// TestEndToEndHashIsB3sum sends files through transfer.Client and an
// in-process daemon joined by net.Pipe, at several chunk sizes, and wants
// the hash both sides agreed on to be what b3sum prints for the committed
// file: sizes around one chunk, where the chunk hash is the root itself,
// and across many chunks, where the root is merged from chaining values.
func TestEndToEndHashIsB3sum(t *testing.T) {
	chunkSizes := []int{transfer.MinChunkSize, 64 << 10, 1 << 20}
	for _, cs := range chunkSizes {
		sizes := []int{0, 1, 1024, cs - 1, cs, cs + 1, 3*cs + 12345, 8 * cs}
		if cs == 1<<20 {
			sizes = []int{0, cs - 1, cs, cs + 1, 3*cs + 12345} // keep the run short
		}
		for _, size := range sizes {
			t.Run(fmt.Sprintf("%d-byte chunks, %d bytes", cs, size), func(t *testing.T) {
				srv := newServer(t, daemon.Config{})
				c, err := transfer.Handshake(context.Background(), srv.dial(t), transfer.ClientOptions{ChunkSize: cs})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if c.ChunkSize() != cs {
					t.Fatalf("chunk size %d, want %d", c.ChunkSize(), cs)
				}
				data := randomData(size, byte(size))
				res, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{})
				if err != nil {
					t.Fatal(err)
				}
				srv.checkCommitted(t, "f", data, res)
				if want := b3sum(t, filepath.Join(srv.root, "f")); res.Hash != want {
					t.Fatalf("hash %x, b3sum %x", res.Hash, want)
				}
			})
		}
	}
}

// countingFS counts the bytes read back from partial data files.
type countingFS struct {
	daemon.FS
	read atomic.Int64
}

func (f *countingFS) OpenFile(name string, flag int, perm os.FileMode) (daemon.File, error) {
	file, err := f.FS.OpenFile(name, flag, perm)
	if err != nil || !strings.HasSuffix(name, ".data") {
		return file, err
	}
	return &countingFile{File: file, read: &f.read}, nil
}

type countingFile struct {
	daemon.File
	read *atomic.Int64
}

func (f *countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	f.read.Add(int64(n))
	return n, err
}

// newCountingServer starts a daemon on root whose store counts the bytes
// it reads from partial data files.
func newCountingServer(t *testing.T, root string, cfg daemon.Config) (*testServer, *countingFS) {
	t.Helper()
	var cfs *countingFS
	srv := newServerOn(t, root, cfg, func(fs daemon.FS) daemon.FS {
		cfs = &countingFS{FS: fs}
		return cfs
	}, nil)
	return srv, cfs
}

// makeDurable sends the chunks of data in [0, d) to srv frame by frame,
// in a file offered as transfer.Client offers source(data), waits until
// the daemon acknowledges d as durable, and shuts srv down: the partial
// is left at exactly d, as a killed daemon would leave it.
func makeDurable(t *testing.T, srv *testServer, name string, data []byte, d int64) {
	t.Helper()
	p := srv.raw(t)
	p.hello()
	p.write(msgFrame(offerFor(name, data)))
	if acc := expect[*transfer.Accept](p); acc.DurableOffset != 0 {
		t.Fatalf("fresh partial accepted at %d", acc.DurableOffset)
	}
	size := int64(len(data))
	p.write(msgFrame(&transfer.Data{ID: 1})) // protocol 2: a data run
	for off := int64(0); off < d; off += testChunk {
		p.write(chunkFrame(off, data[off:min(off+testChunk, size)], size))
	}
	// A transfer whose data all came syncs only when it ends without its
	// trailer (group commit, issue 9): wait for the acks before the
	// last chunk, and let the session's end make the rest durable.
	wait := d
	if d == size {
		wait = (size - 1) / testChunk * testChunk
	}
	for durable := int64(0); durable < wait; {
		m, err := p.read()
		if err != nil {
			t.Fatalf("waiting for durable offset %d: %v", d, err)
		}
		a, ok := m.(*transfer.Ack)
		if !ok {
			t.Fatalf("got %#v, want acks up to %d", m, d)
		}
		durable = a.DurableOffset
	}
	p.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestResumeAtEveryChunkBoundaryAfterRestart leaves a multi-chunk partial
// durable at every chunk boundary (and at its end), restarts the daemon
// on the same root so that the state record is all it has, and resumes
// with transfer.Client: the transfer resumes at that boundary, the root
// both sides agree on is b3sum's, and the restarted daemon reads nothing
// of the partial but its tail chunk (no re-read of the prefix; DESIGN.md,
// "The durable state keeps the merge stack").
func TestResumeAtEveryChunkBoundaryAfterRestart(t *testing.T) {
	data := randomData(9*testChunk+100, 77)
	size := int64(len(data))
	want := transfer.HashBytes(data)
	var boundaries []int64
	for d := int64(testChunk); d < size; d += testChunk {
		boundaries = append(boundaries, d)
	}
	boundaries = append(boundaries, size)
	for _, d := range boundaries {
		t.Run(fmt.Sprintf("durable %d", d), func(t *testing.T) {
			root := t.TempDir()
			makeDurable(t, newServerAt(t, root, daemon.Config{SyncBytes: 1}), "f", data, d)

			srv, cfs := newCountingServer(t, root, daemon.Config{})
			res, err := srv.connect(t).Send(context.Background(), source(data), "f", transfer.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			srv.checkCommitted(t, "f", data, res)
			if res.ResumedFrom != d {
				t.Fatalf("resumed from %d, want %d", res.ResumedFrom, d)
			}
			if res.Hash != want || b3sum(t, filepath.Join(root, "f")) != want {
				t.Fatalf("root %x, want b3sum's %x", res.Hash, want)
			}
			tail := d - (d-1)/testChunk*testChunk
			if n := cfs.read.Load(); n != tail {
				t.Fatalf("the restarted daemon read %d bytes of the partial, want only its %d-byte tail chunk", n, tail)
			}
		})
	}
}

// TestChunkReplayedAtAnotherOffsetIsNacked replays a chunk, with the hash
// the sender computed for it, at another offset of the same file. A chunk
// hash is the chaining value of the chunk's subtree at its position, so
// the daemon rejects it there (Nack) and writes nothing; the right chunk
// is then accepted and the file commits whole.
func TestChunkReplayedAtAnotherOffsetIsNacked(t *testing.T) {
	data := randomData(4*testChunk, 78)
	size := int64(len(data))
	chunk := func(off int64) []byte { return data[off : off+testChunk] }
	hashAt := func(off int64) transfer.Hash {
		h, err := transfer.ChunkHash(chunk(off), off, size)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	replay := func(from, at int64) []byte {
		return frame(transfer.FrameChunk, transfer.EncodeChunk(&transfer.Chunk{Offset: at, Hash: hashAt(from), Data: chunk(from)}))
	}
	srv := newServer(t, daemon.Config{})
	p := srv.raw(t)
	p.hello()
	p.write(msgFrame(offerFor("f", data)))
	expect[*transfer.Accept](p)
	p.write(msgFrame(&transfer.Data{ID: 1}), chunkFrame(0, chunk(0), size), replay(0, testChunk))
	if n := expect[*transfer.Nack](p); n.Offset != testChunk {
		t.Fatalf("nack at %d, want %d", n.Offset, testChunk)
	}
	p.write(replay(2*testChunk, testChunk)) // a later chunk, moved back
	if n := expect[*transfer.Nack](p); n.Offset != testChunk {
		t.Fatalf("nack at %d, want %d", n.Offset, testChunk)
	}
	// Protocol 2: the resend is a new data run from the nacked chunk.
	p.write(msgFrame(&transfer.Data{ID: 1, Offset: testChunk}))
	for off := int64(testChunk); off < size; off += testChunk {
		p.write(chunkFrame(off, chunk(off), size))
	}
	p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
	for {
		m, err := p.read()
		if err != nil {
			t.Fatal(err)
		}
		if cm, ok := m.(*transfer.Committed); ok {
			if cm.Hash != transfer.HashBytes(data) || cm.Size != size {
				t.Fatalf("committed %+v", cm)
			}
			break
		}
		if _, ok := m.(*transfer.Ack); !ok {
			t.Fatalf("got %#v, want acks then Committed", m)
		}
	}
	got, err := os.ReadFile(filepath.Join(srv.root, "f"))
	if err != nil || string(got) != string(data) {
		t.Fatalf("committed file differs (%v)", err)
	}
}

// TestResumeAcrossChunkSizes resumes a partial in a session of another
// chunk size. A partial made in smaller chunks keeps them (its merge
// stack cannot be re-cut into larger ones without reading the prefix):
// the Accept says so and the sender follows. One made in larger chunks is
// re-cut from its tail chunk. Either way only the tail chunk is read and
// the root is b3sum's.
func TestResumeAcrossChunkSizes(t *testing.T) {
	data := randomData(20*testChunk+300, 79)
	tests := []struct {
		name          string
		first, second int
		wantChunk     uint32
	}{
		{"smaller partial, larger session", testChunk, 4 * testChunk, testChunk},
		{"larger partial, smaller session", 4 * testChunk, testChunk, testChunk},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			srv := newServerAt(t, root, daemon.Config{SyncBytes: 1})
			conn := &cutConn{Conn: srv.dial(t), after: 9 * testChunk}
			c, err := transfer.Handshake(context.Background(), conn, transfer.ClientOptions{ChunkSize: tt.first})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{}); err == nil {
				t.Fatal("first attempt survived the cut")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}

			srv2, cfs := newCountingServer(t, root, daemon.Config{})
			p := srv2.raw(t)
			p.write(msgFrame(&transfer.Hello{Major: transfer.ProtocolMajor, ChunkSize: uint32(tt.second), Agent: "raw"}))
			expect[*transfer.Hello](p)
			p.write(msgFrame(offerFor("f", data)))
			acc := expect[*transfer.Accept](p)
			if acc.ChunkSize != tt.wantChunk || acc.DurableOffset < 4*testChunk {
				t.Fatalf("accept %+v, want chunk size %d and the durable prefix kept", acc, tt.wantChunk)
			}
			if n := cfs.read.Load(); n != int64(tt.first) {
				t.Fatalf("read %d bytes of the partial, want only its %d-byte tail chunk", n, tt.first)
			}
			p.conn.Close()

			c2, err := transfer.Handshake(context.Background(), srv2.dial(t), transfer.ClientOptions{ChunkSize: tt.second})
			if err != nil {
				t.Fatal(err)
			}
			res, err := srv2.sendRetry(t, c2, data)
			if err != nil {
				t.Fatal(err)
			}
			srv2.checkCommitted(t, "f", data, res)
			if res.ResumedFrom != acc.DurableOffset || res.Hash != b3sum(t, filepath.Join(root, "f")) {
				t.Fatalf("resumed from %d (accepted at %d), hash %x", res.ResumedFrom, acc.DurableOffset, res.Hash)
			}
		})
	}
}

// sendRetry sends source(data) as "f" on c, retrying for up to 5 s while
// the name is still held by a session the test cut, which the daemon
// notices when its read fails.
func (s *testServer) sendRetry(t *testing.T, c *transfer.Client, data []byte) (transfer.Result, error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		res, err := c.Send(context.Background(), source(data), "f", transfer.SendOptions{})
		if !errors.Is(err, transfer.ErrBusy) || time.Now().After(deadline) {
			return res, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
