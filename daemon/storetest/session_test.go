package storetest_test

import (
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/storetest"
)

// TestSessionOnPartsStore: a daemon on a store of whole parts resumes an
// interrupted transfer at the last part boundary the store reached, and
// never from further than it acknowledged.
func TestSessionOnPartsStore(t *testing.T) {
	const part = 4 * storetest.ChunkSize
	backing := storetest.NewMemBacking()
	storetest.ResumeAtPart(t, storetest.NewMemStore(backing, part),
		func() daemon.Store { return storetest.NewMemStore(backing, part) }, part, storetest.ChunkSize)
}
