package transfer

import (
	"bytes"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"
	"lukechampine.com/blake3/guts"
)

// Hash-only benchmarks of issue 10 (make bench-hash). They hash a buffer
// in memory, 256 MiB unless FERRY_HASH_BENCH_MIB says otherwise, and
// report ns/byte next to Go's MB/s.

var benchBuf = sync.OnceValue(func() []byte {
	mib := 256
	if s := os.Getenv("FERRY_HASH_BENCH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			panic("FERRY_HASH_BENCH_MIB: want a positive number of MiB, got " + s)
		}
		mib = n
	}
	return randomData(mib<<20, 10)
})

// runHashBench runs hash over the benchmark buffer b.N times and reports
// wall-clock ns/byte and, where the OS says, cpu-ns/byte: the CPU time the
// whole process used per byte, which on a shared machine varies less than
// the wall clock (and for the parallel hasher sums all workers).
func runHashBench(b *testing.B, hash func(data []byte) Hash) {
	data := benchBuf()
	want := blake3.Sum256(data)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	cpu0, cpuOK := processCPU()
	start := time.Now()
	for range b.N {
		if got := hash(data); got != want {
			b.Fatalf("hash %x, want %x", got, want)
		}
	}
	wall := time.Since(start)
	perByte := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) / float64(len(data)) }
	b.ReportMetric(perByte(wall), "ns/byte")
	if cpu1, ok := processCPU(); cpuOK && ok {
		b.ReportMetric(perByte(cpu1-cpu0), "cpu-ns/byte")
	}
}

// BenchmarkHashPasses compares, at 1 MiB chunks on one core, what each
// side does today, two zeebo/blake3 passes (BLAKE3 of every chunk, and a
// streaming hasher for the whole file), with one pass of chunk chaining
// values merged into the root.
func BenchmarkHashPasses(b *testing.B) {
	const c = DefaultChunkSize
	b.Run("zeebo-two-passes", func(b *testing.B) {
		runHashBench(b, func(data []byte) Hash {
			whole := blake3.New()
			for off := 0; off < len(data); off += c {
				chunk := data[off:min(off+c, len(data))]
				_ = blake3.Sum256(chunk)
				whole.Write(chunk)
			}
			var h Hash
			whole.Sum(h[:0])
			return h
		})
	})
	// For scale: one zeebo pass, what the tree would cost if zeebo/blake3
	// exported chaining values.
	b.Run("zeebo-stream-only", func(b *testing.B) {
		runHashBench(b, func(data []byte) Hash { return blake3.Sum256(data) })
	})
	for _, m := range gutsModes() {
		name := "guts-one-pass-" + m.name
		if m.b3x {
			name = "one-pass-" + m.name
		}
		b.Run(name, func(b *testing.B) {
			withSIMD(m, func() {
				runHashBench(b, func(data []byte) Hash { return treeHash(b, data, c) })
			})
		})
	}
}

// BenchmarkHashParallel is HashAt, reading from memory and hashing 1 MiB
// chunks on GOMAXPROCS workers: run with -cpu 1,2,4.
func BenchmarkHashParallel(b *testing.B) {
	for _, m := range gutsModes() {
		b.Run(m.name, func(b *testing.B) {
			withSIMD(m, func() {
				runHashBench(b, func(data []byte) Hash {
					h, err := HashAt(b.Context(), bytes.NewReader(data), int64(len(data)), DefaultChunkSize, 0)
					if err != nil {
						b.Fatal(err)
					}
					return h
				})
			})
		})
	}
}

// BenchmarkChunkSizes is the one-pass tree hash on one core at each chunk
// size from 16 KiB to 4 MiB. The 4 and 8 KiB rows call guts the same way
// on pieces smaller than its 16-lane buffer, which ChunkCV refuses: they
// show the work CompressBuffer wastes there.
func BenchmarkChunkSizes(b *testing.B) {
	for _, m := range gutsModes() {
		for c := 4 << 10; c <= 4<<20; c <<= 1 {
			b.Run(fmt.Sprintf("%s/%dKiB", m.name, c>>10), func(b *testing.B) {
				withSIMD(m, func() {
					if c >= MinTreeChunkSize {
						runHashBench(b, func(data []byte) Hash { return treeHash(b, data, c) })
						return
					}
					runHashBench(b, func(data []byte) Hash { return smallPieceHash(data, c) })
				})
			})
		}
	}
}

// smallPieceHash is treeHash for chunks of c < 16 KiB bytes, built from
// subtreeNode and MergeStack's merging, which ChunkCV and NewMergeStack
// guard.
func smallPieceHash(data []byte, c int) Hash {
	s := MergeStack{chunkShift: uint8(bits.TrailingZeros(uint(c)))}
	for off := 0; off < len(data); off += c {
		chunk := data[off:min(off+c, len(data))]
		cv := wordsCV(guts.ChainingValue(subtreeNode(chunk, uint64(off)/guts.ChunkSize)))
		if err := s.Push(cv, int64(len(chunk))); err != nil {
			panic(err)
		}
	}
	h, err := s.Sum(int64(len(data)))
	if err != nil {
		panic(err)
	}
	return h
}
