package s3store_test

import (
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/s3store"
	"github.com/ferry-dev/ferry/daemon/storetest"
)

// TestSessionResumesAtPart: an in-process daemon on the S3 store (run
// under -race) is interrupted mid-part; the next attempt resumes at the
// last part boundary, and the object committed is the file.
func TestSessionResumesAtPart(t *testing.T) {
	gw := startGW(t)
	gw.CreateBucket(t, "session")
	const part = 5 << 20
	open := func() daemon.Store {
		store := s3store.New(gw.Core(t), "session", "")
		store.PartSize = part
		return store
	}
	storetest.ResumeAtPart(t, open(), open, part, 1<<20)
}
