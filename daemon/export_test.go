package daemon

import "github.com/ferry-dev/ferry/transfer"

// ReservedBytes returns the disk space in bytes promised to transfers in
// progress.
func (s *Server) ReservedBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reserved
}

// StackOf returns the merge stack of the chunks of data, the first
// len(data) bytes of a file of size bytes cut in chunkSize chunks: what a
// partial durable at len(data) records. len(data) is a multiple of
// chunkSize or size. It panics on bad arguments.
func StackOf(data []byte, size int64, chunkSize int) *transfer.MergeStack {
	s, err := transfer.NewMergeStack(chunkSize)
	if err != nil {
		panic("bug: " + err.Error())
	}
	for off := 0; off < len(data); off += chunkSize {
		c := data[off:min(off+chunkSize, len(data))]
		h, err := transfer.ChunkHash(c, int64(off), size)
		if err == nil {
			err = s.Push(transfer.CV(h), int64(len(c)))
		}
		if err != nil {
			panic("bug: " + err.Error())
		}
	}
	return s
}

// LinkedAt reports whether the partial under key is linked at name.
func (s *DirStore) LinkedAt(key, name string) bool { return s.linkedAt(key, name) }
