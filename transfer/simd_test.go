package transfer

import (
	"testing"
	_ "unsafe" // for go:linkname

	"github.com/ferry-dev/ferry/internal/b3x"
)

// gutsHaveAVX512 and gutsHaveAVX2 are guts' CPU switches, which it exports
// no way to set. Clearing them makes guts take its AVX2 or its generic
// path on a CPU that has more, so that tests cover every path and
// benchmarks can measure a CPU without AVX-512. Tests and benchmarks only.
//
//go:linkname gutsHaveAVX512 lukechampine.com/blake3/guts.haveAVX512
var gutsHaveAVX512 bool

//go:linkname gutsHaveAVX2 lukechampine.com/blake3/guts.haveAVX2
var gutsHaveAVX2 bool

type gutsMode struct {
	name         string
	avx512, avx2 bool
	b3x          bool // internal/b3x's kernel for whole pieces (useB3X)
}

// gutsModes are the SIMD paths this CPU can run, fastest first:
// internal/b3x's AVX-512 kernel when it has it (named b3x-avx512, with
// guts' AVX-512 for the pieces that are not whole), guts' AVX-512 alone,
// AVX2 with AVX-512 switched off, when it has AVX2.
func gutsModes() []gutsMode {
	var modes []gutsMode
	if b3x.Available && gutsHaveAVX512 {
		modes = append(modes, gutsMode{"b3x-avx512", true, true, true})
	}
	if gutsHaveAVX512 {
		modes = append(modes, gutsMode{"avx512", true, true, false})
	}
	if gutsHaveAVX2 {
		modes = append(modes, gutsMode{"avx2", false, true, false})
	}
	return modes
}

// withSIMD runs f with the paths limited to m and restores them. Nothing
// else may hash meanwhile.
func withSIMD(m gutsMode, f func()) {
	avx512, avx2, useb3x := gutsHaveAVX512, gutsHaveAVX2, useB3X
	gutsHaveAVX512, gutsHaveAVX2, useB3X = m.avx512 && avx512, m.avx2 && avx2, m.b3x && useb3x
	defer func() { gutsHaveAVX512, gutsHaveAVX2, useB3X = avx512, avx2, useb3x }()
	f()
}

// TestChunkCVEverySIMDPath checks ChunkCV against refSubtreeCV on each
// path of guts this CPU has, and the generic one, at lengths that end in
// each lane of a 16 KiB piece.
func TestChunkCVEverySIMDPath(t *testing.T) {
	data := randomData(100<<10, 9)
	for _, m := range append(gutsModes(), gutsMode{name: "generic"}) {
		t.Run(m.name, func(t *testing.T) {
			withSIMD(m, func() {
				for _, n := range []int{1, 1024, 1500, 2048, 7<<10 + 1, 8 << 10, 9<<10 - 1, 15<<10 + 3, 16 << 10, 16<<10 + 1, 40<<10 + 7, 100 << 10} {
					got, err := ChunkCV(data[:n], 1<<20, false)
					if err != nil {
						t.Fatal(err)
					}
					if want := refSubtreeCV(data[:n], 1<<10, false); got != want {
						t.Errorf("%d bytes: %x, reference %x", n, got, want)
					}
				}
			})
		})
	}
}
