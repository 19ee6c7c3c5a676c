package daemon_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

func zeroFrame(off int64, n int, size int64) []byte {
	h, err := transfer.ZeroChunkHash(off, n, size)
	if err != nil {
		panic("bug: " + err.Error())
	}
	return msgFrame(&transfer.ZeroChunk{Offset: off, Length: uint32(n), Hash: h})
}

// TestZeroChunks (protocol 2.2): a ZeroChunk stands for a hole. One whose
// hash is not that of zeros at its offset is nacked like a bad chunk;
// the right ones are verified by the daemon, not written, and the file
// commits with the whole-file hash of its bytes, holes included, and no
// blocks for them. A ZeroChunk outside a data run is a protocol error.
func TestZeroChunks(t *testing.T) {
	srv := newServer(t, daemon.Config{SyncBytes: testChunk})
	size := int64(64*testChunk + 100)
	data := make([]byte, size)
	copy(data, randomData(testChunk, 9))
	p := srv.raw(t)
	p.hello()
	p.offer("sparse", size)
	p.write(chunkFrame(0, data[:testChunk], size),
		msgFrame(&transfer.ZeroChunk{Offset: testChunk, Length: testChunk, Hash: transfer.Hash{1}}))
	if n := expect[*transfer.Nack](p); n.Offset != testChunk {
		t.Fatalf("nack at %d, want %d", n.Offset, testChunk)
	}
	p.write(msgFrame(&transfer.Data{ID: 1, Offset: testChunk}))
	for off := int64(testChunk); off < size; off += testChunk {
		p.write(zeroFrame(off, int(min(testChunk, size-off)), size))
	}
	p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
	cm := expect[*transfer.Committed](p)
	if cm.Hash != transfer.HashBytes(data) || cm.Size != size {
		t.Fatalf("committed %+v", cm)
	}
	path := filepath.Join(srv.root, "sparse")
	got, err := os.ReadFile(path)
	if err != nil || string(got) != string(data) {
		t.Fatalf("committed file: %d bytes, %v", len(got), err)
	}
	fi, _ := os.Stat(path)
	if a := fi.Sys().(*syscall.Stat_t).Blocks * 512; a > 8*testChunk {
		t.Errorf("the committed file occupies %d bytes of blocks for %d bytes of data", a, testChunk)
	}

	q := srv.raw(t)
	q.hello()
	q.write(zeroFrame(0, testChunk, testChunk))
	q.expectRefusal(transfer.CodeProtocol, "zero chunk outside a data run")
}
