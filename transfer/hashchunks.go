package transfer

import (
	"context"
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"sync"
)

// chunkPools holds one BufferPool per chunk size CheckChunkSize allows,
// indexed by log2(size) - 14, so that files one after another reuse the
// same chunk buffers.
var chunkPools = func() (p [11]*BufferPool) {
	for i := range p {
		p[i] = NewBufferPool(MinTreeChunkSize << i)
	}
	return p
}()

func chunkPool(chunkSize int) *BufferPool {
	return chunkPools[bits.TrailingZeros(uint(chunkSize))-bits.TrailingZeros(MinTreeChunkSize)]
}

// hashJob is one chunk on its way through HashChunks.
type hashJob struct {
	off  int64
	n    int64
	buf  *[]byte
	cv   CV
	err  error
	done chan struct{} // closed when buf, cv and err are set
}

// HashChunks reads the chunks of r that cover [from, size), chunkSize bytes
// each (the last one shorter), hashes each with ChunkCV on up to workers
// goroutines at once, and calls yield with each chunk's offset, data and
// chaining value in offset order, on the caller's goroutine. size is the
// file's size in bytes; for a file of one chunk, the value yielded is its
// root hash (ChunkCV with root set), as MergeStack.Push expects. workers ≤ 0
// means runtime.GOMAXPROCS(0). Hashing runs at most workers+1 chunks ahead
// of yield, with buffers from a pool: data is valid only until yield
// returns, so copy it to keep it.
//
// chunkSize must pass CheckChunkSize and from must be a multiple of it with
// 0 ≤ from ≤ size ≤ MaxFileSize. HashChunks returns the first error of
// yield, of reading r ("reading chunk at offset N: …"; a short file is
// io.ErrUnexpectedEOF), or of ctx (its cause), and joins every goroutine it
// started before it returns.
func HashChunks(ctx context.Context, r io.ReaderAt, from, size int64, chunkSize, workers int,
	yield func(offset int64, data []byte, cv CV) error) error {
	return hashRange(ctx, r, from, size, size, chunkSize, workers, yield)
}

// hashRange is HashChunks over the chunks that cover [from, end) of a file
// of size bytes: end is size, or a multiple of chunkSize below it (a
// prefix, whose chunks are never the file's root).
func hashRange(ctx context.Context, r io.ReaderAt, from, end, size int64, chunkSize, workers int,
	yield func(offset int64, data []byte, cv CV) error) error {
	if err := CheckChunkSize(chunkSize); err != nil {
		return err
	}
	c := int64(chunkSize)
	if from < 0 || (from%c != 0 && from != size) || from > end || end > size || (end < size && end%c != 0) || size > MaxFileSize {
		return fmt.Errorf("bug: hashing chunks from offset %d to %d of %d in %d-byte chunks", from, end, size, c)
	}
	if from == end {
		return context.Cause(ctx)
	}
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = int(min(int64(workers), (end-from+c-1)/c))
	root := from == 0 && size <= c
	pool := chunkPool(chunkSize)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan *hashJob)
	order := make(chan *hashJob, workers) // bounds how far hashing runs ahead
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(order)
		defer close(jobs)
		for off := from; off < end; off += c {
			j := &hashJob{off: off, n: min(c, end-off), done: make(chan struct{})}
			select {
			case order <- j:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				j.err = context.Cause(ctx)
				close(j.done)
				return
			}
		}
	})
	for range workers {
		wg.Go(func() {
			for j := range jobs {
				j.run(ctx, r, pool, root)
				close(j.done)
			}
		})
	}

	err := func() error {
		next := from
		for j := range order {
			<-j.done // every job in order is run by a worker or failed by the producer
			if j.err != nil {
				if j.buf != nil {
					pool.Put(j.buf)
				}
				return j.err
			}
			err := yield(j.off, (*j.buf)[:j.n], j.cv)
			pool.Put(j.buf)
			if err != nil {
				return err
			}
			next += j.n
		}
		if next != end {
			return context.Cause(ctx) // the producer stopped early
		}
		return nil
	}()
	cancel(err)
	for j := range order {
		<-j.done
		if j.buf != nil {
			pool.Put(j.buf)
		}
	}
	wg.Wait()
	return err
}

// run reads and hashes j, unless ctx is already done.
func (j *hashJob) run(ctx context.Context, r io.ReaderAt, pool *BufferPool, root bool) {
	if err := ctx.Err(); err != nil {
		j.err = context.Cause(ctx)
		return
	}
	j.buf = pool.Get()
	data := (*j.buf)[:j.n]
	n, err := r.ReadAt(data, j.off)
	if n < len(data) && (err == nil || err == io.EOF) {
		err = io.ErrUnexpectedEOF
	} else if n == len(data) && err == io.EOF {
		err = nil // io.ReaderAt allows EOF with a full read at the end
	}
	if err != nil {
		j.err = fmt.Errorf("reading chunk at offset %d: %w", j.off, err)
		return
	}
	j.cv, j.err = ChunkCV(data, j.off, root)
}

// HashWorkers returns how many goroutines a transfer hashes chunks of
// chunkSize bytes on: GOMAXPROCS, at most 8, and at most as many as keep
// the chunk buffers in flight (HashWorkers+1) near 64 MiB, at least 1.
// Hashing runs at several GB/s on each, far ahead of most links.
func HashWorkers(chunkSize int) int {
	return max(1, min(runtime.GOMAXPROCS(0), 8, (64<<20)/max(chunkSize, 1)))
}

// SendHashWorkers returns how many goroutines a sender hashes the chunks
// it sends on: half of HashWorkers, at least 1. The sender's main
// goroutine writes to the socket while they hash, and on loopback the
// daemon's reads and verification share the same cores; one worker on 2
// cores already hashes several GB/s, faster than the daemon verifies,
// so a second only takes a core from the daemon (issue 10's bench).
func SendHashWorkers(chunkSize int) int {
	return max(1, HashWorkers(chunkSize)/2)
}

// HashAt returns the BLAKE3 hash, the value b3sum prints, of the first size
// bytes of r, built from chunk chaining values of chunkSize bytes hashed on
// workers goroutines (HashChunks) and merged with a MergeStack. Errors are
// HashChunks'.
func HashAt(ctx context.Context, r io.ReaderAt, size int64, chunkSize, workers int) (Hash, error) {
	s, err := NewMergeStack(chunkSize)
	if err != nil {
		return Hash{}, err
	}
	err = HashChunks(ctx, r, 0, size, chunkSize, workers, func(_ int64, data []byte, cv CV) error {
		return s.Push(cv, int64(len(data)))
	})
	if err != nil {
		return Hash{}, err
	}
	return s.Sum(size)
}
