package transfer

import (
	"io"

	"github.com/zeebo/blake3"
)

// catchUpBuf is HashReader's read size in bytes.
const catchUpBuf = 1 << 20

// HashReader returns the BLAKE3 of everything r yields, as b3sum computes
// it, with zeebo/blake3: `ferry hash` and plain digests use it. Chunk
// hashes and the whole-file hash of a transfer are built from chaining
// values with lukechampine.com/blake3/guts instead (ChunkCV, MergeStack).
func HashReader(r io.Reader) (Hash, error) {
	h := blake3.New()
	if _, err := io.CopyBuffer(h, r, make([]byte, catchUpBuf)); err != nil {
		return Hash{}, err
	}
	var out Hash
	h.Sum(out[:0])
	return out, nil
}
