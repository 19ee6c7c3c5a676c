package daemon_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

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
