package daemon_test

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// TestPreallocate: with DirStore.Preallocate a new partial's blocks are
// reserved at once while its size stays 0 (the durable offset is the only
// length that counts), and an offer that says its source is sparse
// (OfferSparse) reserves nothing, so its holes stay holes.
func TestPreallocate(t *testing.T) {
	const size = 8 << 20
	for _, tt := range []struct {
		name  string
		flags transfer.OfferFlags
		want  bool
	}{{"dense", 0, true}, {"sparse", transfer.OfferSparse, false}} {
		t.Run(tt.name, func(t *testing.T) {
			s, root := newStore(t)
			s.Preallocate = true
			o := &transfer.Offer{Flags: tt.flags, Size: size, Mode: 0o600, Name: "f"}
			p, _, err := s.Open(testKey, o, testChunk, false)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			did, err := p.(daemon.Preallocator).Preallocate()
			if err != nil || did != tt.want {
				t.Fatalf("Preallocate() = %v, %v; want %v, nil", did, err, tt.want)
			}
			fi, err := os.Stat(filepath.Join(root, ".ferry", "partials", testKey+".data"))
			if err != nil {
				t.Fatal(err)
			}
			blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512
			if fi.Size() != 0 {
				t.Errorf("size %d after admission, want 0", fi.Size())
			}
			if got := blocks >= size; got != tt.want {
				t.Errorf("%d bytes of blocks reserved for a file of %d: preallocated %v, want %v", blocks, size, got, tt.want)
			}
		})
	}
}

// TestPreallocateTurnsReservationIntoBlocks: once a new dense partial's
// blocks are preallocated at admission, the daemon stops promising its
// bytes (free space counts them already); without that a half-full disk
// would refuse offers that fit, counting each preallocated file twice.
func TestPreallocateTurnsReservationIntoBlocks(t *testing.T) {
	const size = 8 << 20
	srv := newServerWrapped(t, t.TempDir(), daemon.Config{}, func(s daemon.Store) daemon.Store {
		s.(*daemon.DirStore).Preallocate = true
		return s
	})
	c := srv.dial(t)
	defer c.Close()
	r := bufio.NewReader(c)
	c.Write(msgFrame(&transfer.Hello{Major: transfer.ProtocolMajor, ChunkSize: testChunk, Agent: "prealloc"}))
	if _, err := transfer.ReadMessage(r); err != nil {
		t.Fatal(err)
	}
	c.Write(msgFrame(&transfer.Offer{ID: 1, Size: size, Mode: 0o600, Name: "big"}))
	m, err := transfer.ReadMessage(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(*transfer.Accept); !ok {
		t.Fatalf("answer %T %+v, want an Accept", m, m)
	}
	if n := srv.ReservedBytes(); n != 0 {
		t.Errorf("%d bytes still promised to a transfer whose blocks are preallocated", n)
	}
	var blocks int64
	err = filepath.WalkDir(filepath.Join(srv.root, ".ferry", "partials"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".data") {
			fi, err := os.Stat(p)
			if err != nil {
				return err
			}
			blocks += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return err
	})
	if err != nil || blocks < size {
		t.Errorf("%d bytes of blocks held by the partial (%v), want at least %d", blocks, err, size)
	}
}

// TestPreallocateGivenBackOnClose: an unfinished partial gives back the
// blocks it reserved past its data when it is closed (a sender that
// offers a large file and hangs up must not hold the disk until expiry),
// and keeps its data.
func TestPreallocateGivenBackOnClose(t *testing.T) {
	const size = 8 << 20
	s, root := newStore(t)
	s.Preallocate = true
	p, _, err := s.Open(testKey, &transfer.Offer{Size: size, Mode: 0o600, Name: "f"}, testChunk, false)
	if err != nil {
		t.Fatal(err)
	}
	if did, err := p.(daemon.Preallocator).Preallocate(); !did || err != nil {
		t.Fatalf("Preallocate() = %v, %v", did, err)
	}
	data := randomData(testChunk, 7)
	if err := p.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(root, ".ferry", "partials", testKey+".data"))
	if err != nil {
		t.Fatal(err)
	}
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks >= size/2 {
		t.Errorf("%d bytes of blocks held after Close by a partial with %d bytes of data", blocks, len(data))
	}
	if fi.Size() != int64(len(data)) {
		t.Errorf("size %d after Close, want its data's %d", fi.Size(), len(data))
	}
}
