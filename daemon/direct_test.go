package daemon

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/ferry-dev/ferry/transfer"
)

func TestAlignedAt(t *testing.T) {
	buf := make([]byte, 3*DirectAlign)
	for _, skip := range []int{0, 1, transfer.ChunkHeaderSize, DirectAlign - 1, DirectAlign} {
		for shift := range 64 {
			b := buf[shift:]
			at := alignedAt(b, skip)
			if at < 0 || at >= DirectAlign {
				t.Fatalf("skip %d shift %d: index %d outside [0,%d)", skip, shift, at, DirectAlign)
			}
			addr := uintptr(unsafe.Pointer(&b[at+skip]))
			if addr%DirectAlign != 0 {
				t.Fatalf("skip %d shift %d: &b[%d] = %#x not aligned", skip, shift, at+skip, addr)
			}
		}
	}
}

func TestDirectAligned(t *testing.T) {
	buf := make([]byte, 3*DirectAlign)
	at := alignedAt(buf, 0)
	ok := buf[at : at+DirectAlign]
	tests := []struct {
		name string
		b    []byte
		off  int64
		want bool
	}{
		{"aligned", ok, 0, true},
		{"aligned at a later offset", ok, 5 * DirectAlign, true},
		{"empty", ok[:0], 0, false},
		{"offset off by one", ok, 1, false},
		{"short length", ok[:DirectAlign-1], 0, false},
		{"unaligned memory", buf[at+1 : at+1+DirectAlign], 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := directAligned(tt.b, tt.off); got != tt.want {
				t.Errorf("directAligned = %v, want %v", got, tt.want)
			}
		})
	}
}

// countingFile counts writes through a direct handle.
type countingFile struct {
	File
	writes int
}

func (c *countingFile) WriteAt(b []byte, off int64) (int, error) {
	c.writes++
	return c.File.WriteAt(b, off)
}

// TestDirectIOWritesFullChunksDirect sends aligned chunks and a short last
// chunk through a DirStore with DirectIO on the real file system: full
// chunks must go through the direct handle, the last one through the page
// cache, and the committed bytes must be exactly the source's.
func TestDirectIOWritesFullChunksDirect(t *testing.T) {
	dir := t.TempDir()
	fsys, err := OpenOSFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	s, err := NewDirStore(fsys)
	if err != nil {
		t.Fatal(err)
	}
	s.DirectIO = true
	const chunk = 64 << 10
	data := make([]byte, 3*chunk+1000)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	o := &transfer.Offer{Name: "out/file.bin", Size: int64(len(data)), Mode: 0o640, PrefixID: transfer.HashBytes(data[:transfer.IdentityPrefix])}
	p, _, err := s.Open("0123456789abcdef0123456789abcdef", o, chunk, false)
	if err != nil {
		t.Fatal(err)
	}
	dp := p.(*dirPartial)
	if dp.direct == nil {
		t.Skip("this file system refuses O_DIRECT; the fallback is covered by TestDirectIOFallsBackOnEINVAL")
	}
	counter := &countingFile{File: dp.direct}
	dp.direct = counter
	buf := make([]byte, chunk+DirectAlign)
	aligned := buf[alignedAt(buf, 0):][:chunk]
	var off int64
	for off < int64(len(data)) {
		n := min(int64(chunk), int64(len(data))-off)
		b := aligned[:n]
		copy(b, data[off:])
		if err := p.WriteAt(b, off); err != nil {
			t.Fatalf("WriteAt %d: %v", off, err)
		}
		off += n
	}
	if counter.writes != 3 {
		t.Errorf("%d writes went direct, want the 3 full chunks", counter.writes)
	}
	if _, err := p.Sync(StackOf(data, int64(len(data)), chunk)); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out", "file.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("committed bytes differ from the source")
	}
}

// einvalFile refuses every write as a file system without O_DIRECT does.
type einvalFile struct{ File }

func (einvalFile) WriteAt([]byte, int64) (int, error) { return 0, syscall.EINVAL }
func (einvalFile) Close() error                       { return nil }

func TestDirectIOFallsBackOnEINVAL(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &dirPartial{f: f, direct: einvalFile{}}
	buf := make([]byte, 2*DirectAlign)
	b := buf[alignedAt(buf, 0):][:DirectAlign]
	b[0] = 'x'
	if err := p.WriteAt(b, 0); err != nil {
		t.Fatalf("WriteAt after EINVAL: %v", err)
	}
	if p.direct != nil {
		t.Error("direct handle kept after EINVAL")
	}
	got := make([]byte, 1)
	if _, err := f.ReadAt(got, 0); err != nil || got[0] != 'x' {
		t.Fatalf("data not written through the page cache: %q %v", got, err)
	}
}
