package s3store_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/s3store"
	"github.com/ferry-dev/ferry/daemon/storetest"
)

// TestConformance runs the store conformance suite on versitygw: one
// bucket per subtest, 5 MiB parts.
func TestConformance(t *testing.T) {
	gw := startGW(t)
	core := gw.Core(t)
	var mu sync.Mutex
	buckets := make(map[*testing.T]string)
	storetest.Run(t, func(t *testing.T) daemon.Store {
		mu.Lock()
		defer mu.Unlock()
		b, ok := buckets[t]
		if !ok {
			b = fmt.Sprintf("conf-%d", len(buckets))
			gw.CreateBucket(t, b)
			buckets[t] = b
		}
		s := s3store.New(core, b, "some/prefix")
		s.PartSize = 5 << 20
		return s
	})
}
