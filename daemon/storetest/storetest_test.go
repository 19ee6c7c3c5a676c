package storetest_test

import (
	"sync"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/storetest"
)

// perTest returns a NewStore that keeps one backing per subtest.
func perTest[B any](fresh func(t *testing.T) B, open func(t *testing.T, b B) daemon.Store) storetest.NewStore {
	var mu sync.Mutex
	backings := make(map[*testing.T]B)
	return func(t *testing.T) daemon.Store {
		mu.Lock()
		b, ok := backings[t]
		if !ok {
			b = fresh(t)
			backings[t] = b
		}
		mu.Unlock()
		return open(t, b)
	}
}

func TestDirStore(t *testing.T) {
	storetest.Run(t, perTest(func(t *testing.T) string { return t.TempDir() }, func(t *testing.T, root string) daemon.Store {
		fsys, err := daemon.OpenOSFS(root)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fsys.Close() })
		s, err := daemon.NewDirStore(fsys)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}))
}

func TestMemStore(t *testing.T) {
	storetest.Run(t, perTest(func(*testing.T) *storetest.MemBacking { return storetest.NewMemBacking() },
		func(_ *testing.T, b *storetest.MemBacking) daemon.Store { return storetest.NewMemStore(b, 0) }))
}

func TestMemStoreInParts(t *testing.T) {
	storetest.Run(t, perTest(func(*testing.T) *storetest.MemBacking { return storetest.NewMemBacking() },
		func(_ *testing.T, b *storetest.MemBacking) daemon.Store {
			return storetest.NewMemStore(b, 5*storetest.ChunkSize+1)
		}))
}

func TestMemLocker(t *testing.T) {
	var mu sync.Mutex
	lockers := make(map[*testing.T]*daemon.MemLocker)
	storetest.RunLocker(t, func(t *testing.T) daemon.Locker {
		mu.Lock()
		defer mu.Unlock()
		if lockers[t] == nil {
			lockers[t] = &daemon.MemLocker{}
		}
		return lockers[t]
	})
}
