package daemon

import (
	"os"
	"strings"
	"sync"
	"time"
)

// dirCacheSize is how many directory handles an OSFS keeps open, and
// dirCacheAge how long it uses one before it resolves the directory's
// name again.
const (
	dirCacheSize = 16
	dirCacheAge  = 100 * time.Millisecond
)

// dirCache keeps directories under an OSFS's root open, so that the
// quick check of a tree's files (Lstat of each name, several times per
// offer) resolves each directory's path once, not once per call (issue 9:
// a re-sent tree of 20,000 files cost 13 opens and closes per file).
//
// Safety is os.Root's: a handle is opened with os.Root.OpenRoot, which
// never leaves the root through a symlink or "..", and names are looked
// up in it with os.Root.Lstat of one component, which follows no symlink
// (fstatat with AT_SYMLINK_NOFOLLOW). A directory swapped for a symlink
// after its handle was opened is not followed either: the handle still
// names the directory it opened, which was inside the root. What the
// cache adds is staleness, bounded by dirCacheAge: for that long a name
// is looked up in the directory its path named when the handle was
// opened. The daemon itself never removes or renames a directory; Remove
// and Rename forget any handle of their names anyway. OpenFile, Remove,
// Chtimes and Link use the same handles (a group commit opened, timed,
// linked and removed each partial through three or more directory
// opens): os.Root's calls of one component in a handle resolve a symlink
// only inside that directory, which is stricter than in the root, and
// Link's linkat follows none.
type dirCache struct {
	mu      sync.Mutex
	entries []*cachedDir
	closed  bool
	// missing holds directories found missing, with when, for as long as
	// a handle is used (dirCacheAge): a new tree's quick checks look up
	// every file under directories that do not exist yet. Mkdir, Symlink
	// and Rename of a name forget it.
	missing map[string]time.Time
}

// isMissing reports whether dir was found missing less than dirCacheAge
// ago.
func (c *dirCache) isMissing(dir string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.missing[dir]
	if ok && time.Since(at) >= dirCacheAge {
		delete(c.missing, dir)
		return false
	}
	return ok
}

// noteMissing records that dir does not exist.
func (c *dirCache) noteMissing(dir string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.missing == nil || len(c.missing) >= 4*dirCacheSize {
		c.missing = make(map[string]time.Time)
	}
	c.missing[dir] = time.Now()
}

// cachedDir is one open directory. users counts the calls using it; the
// last one out closes a handle that was evicted meanwhile.
type cachedDir struct {
	name    string
	root    *os.Root
	opened  time.Time
	users   int
	evicted bool

	// file is the directory opened as a file, for *at() calls that
	// os.Root does not offer (linkat between two directories); opened
	// at the first use.
	fileOnce sync.Once
	file     *os.File
	fileErr  error
}

// dirFile returns the directory open as a file, opening it at the first
// call. The caller holds the handle (get) while it uses it.
func (d *cachedDir) dirFile() (*os.File, error) {
	d.fileOnce.Do(func() { d.file, d.fileErr = d.root.Open(".") })
	return d.file, d.fileErr
}

// close closes the handle; no caller holds it.
func (d *cachedDir) close() {
	_ = d.root.Close() // read-only directory handle
	if d.file != nil {
		_ = d.file.Close() // read-only directory handle
	}
}

// get returns the handle of dir (a slash-separated path below root,
// cleaned, not "."), opening it if needed, or nil if dir cannot be opened
// as a directory under root. The caller gives it back with put.
func (c *dirCache) get(root *os.Root, dir string) *cachedDir {
	now := time.Now()
	c.mu.Lock()
	for i, d := range c.entries {
		if d.name != dir {
			continue
		}
		if now.Sub(d.opened) < dirCacheAge {
			d.users++
			c.mu.Unlock()
			return d
		}
		c.evictLocked(i)
		break
	}
	c.mu.Unlock()
	r, err := root.OpenRoot(dir)
	if err != nil {
		return nil
	}
	d := &cachedDir{name: dir, root: r, opened: now, users: 1}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		d.evicted = true // closed by put
		return d
	}
	if len(c.entries) >= dirCacheSize {
		c.evictLocked(0) // the oldest
	}
	c.entries = append(c.entries, d)
	return d
}

// put gives back a handle get returned.
func (c *dirCache) put(d *cachedDir) {
	c.mu.Lock()
	d.users--
	last := d.users == 0 && d.evicted
	c.mu.Unlock()
	if last {
		d.close()
	}
}

// evictLocked drops entry i, closing it unless it is in use. Called with
// mu held.
func (c *dirCache) evictLocked(i int) {
	d := c.entries[i]
	c.entries = append(c.entries[:i], c.entries[i+1:]...)
	d.evicted = true
	if d.users == 0 {
		d.close()
	}
}

// forget drops the handles of name and of the directories below it, and
// name's record as missing.
func (c *dirCache) forget(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.missing, name)
	for i := 0; i < len(c.entries); {
		if d := c.entries[i].name; d == name || strings.HasPrefix(d, name+"/") {
			c.evictLocked(i)
			continue
		}
		i++
	}
}

// close drops every handle; get opens none for the cache after it.
func (c *dirCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for len(c.entries) > 0 {
		c.evictLocked(0)
	}
}
