package daemon

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// PartialInfo describes one partial on disk, as `ferryd partials` lists it.
type PartialInfo struct {
	// Key names the partial's files: .ferry/partials/KEY.data and
	// KEY.state.
	Key string `json:"key"`
	// Name is the destination name from the state record; "" when the
	// partial has no valid state record (nothing of it is resumable).
	Name string `json:"name"`
	// Token is the name of the token the partial belongs to; "" for an
	// anonymous sender or without a state record.
	Token string `json:"token"`
	// Size is the declared file size in bytes (0 without a state record).
	Size int64 `json:"size"`
	// DurableOffset is how many leading bytes are verified and durable.
	DurableOffset int64 `json:"durable_offset"`
	// DataBytes is the data file's size in bytes on disk.
	DataBytes int64 `json:"data_bytes"`
	// Modified is the last change of the data file or the state record,
	// whichever is later; a partial's age is measured from it.
	Modified time.Time `json:"modified"`
	// Remote is the address of the last sender, "" when not recorded.
	Remote string `json:"remote"`
}

// ListPartials returns the partials under fs's root, sorted by key,
// reading only: it takes no lock and works while a daemon runs. A
// partial whose files vanish while it is read is left out. A missing
// partials directory is no partials.
func ListPartials(fs FS) ([]PartialInfo, error) {
	rd, ok := fs.(DirReader)
	if !ok {
		return nil, errors.New("listing partials: the file system cannot list directories")
	}
	names, err := rd.ReadDir(partialsDir)
	if isNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", partialsDir, err)
	}
	s := &DirStore{fs: fs}
	var out []PartialInfo
	for _, n := range names {
		key, ok := strings.CutSuffix(n, ".data")
		if !ok || !validKey(key) {
			continue
		}
		info, ok, err := s.partialInfo(key)
		if err != nil {
			return out, err
		}
		if !ok {
			continue // removed meanwhile (committed, expired)
		}
		out = append(out, info)
	}
	return out, nil
}

// partialInfo describes the partial under key; false when its data file
// does not exist.
func (s *DirStore) partialInfo(key string) (PartialInfo, bool, error) {
	dataPath, statePath, _ := s.paths(key)
	fi, err := s.fs.Lstat(dataPath)
	if isNotExist(err) {
		return PartialInfo{}, false, nil
	}
	if err != nil {
		return PartialInfo{}, false, fmt.Errorf("reading partial %s: %w", key, err)
	}
	info := PartialInfo{Key: key, DataBytes: fi.Size(), Modified: fi.ModTime()}
	if sfi, err := s.fs.Lstat(statePath); err == nil && sfi.ModTime().After(info.Modified) {
		info.Modified = sfi.ModTime()
	}
	st, found, err := s.loadState(key)
	if err != nil {
		return PartialInfo{}, false, fmt.Errorf("reading partial %s: %w", key, err)
	}
	if found {
		info.Name, info.Size, info.DurableOffset, info.Remote, info.Token = st.Name, st.Size, st.DurableOffset, st.Remote, st.Token
	}
	return info, true, nil
}

// Partial describes the partial under key; false when there is none.
func (s *DirStore) Partial(key string) (PartialInfo, bool, error) { return s.partialInfo(key) }

// RemovePartial removes the partial under key: its state record first,
// so that a crash in between leaves only a data file without a record,
// which nothing resumes and the next expiry removes; then its data file
// (unlinked, never truncated), then it fsyncs the partials' directory.
// The caller makes sure no session uses the partial: Server does through
// its sessions' holds, a tool by holding the root's lock (LockRoot).
func (s *DirStore) RemovePartial(key string) error {
	if !validKey(key) {
		return fmt.Errorf("removing partial: bad key %q", key)
	}
	_, _, tmpPath := s.paths(key)
	if err := s.fs.Remove(tmpPath); err != nil && !isNotExist(err) {
		return fmt.Errorf("removing state record being written: %w", err)
	}
	return s.discard(key)
}

// Partials lists the store's partials (ListPartials).
func (s *DirStore) Partials() ([]PartialInfo, error) { return ListPartials(s.fs) }

// PartialKeeper is implemented by a Store whose partials can be listed and
// removed, which partial expiry and purge requests need.
type PartialKeeper interface {
	// Partials lists every partial.
	Partials() ([]PartialInfo, error)
	// Partial describes the partial under key; false when there is none.
	Partial(key string) (PartialInfo, bool, error)
	// RemovePartial removes the partial under key, which no session uses.
	RemovePartial(key string) error
}

var _ PartialKeeper = (*DirStore)(nil)

// requestsDir holds purge requests from `ferryd partials purge` to a
// running daemon, relative to the root.
var requestsDir = path.Join(transfer.ReservedDir, "requests")

// RemoteRecorder is implemented by a Partial that records the address of
// the sender writing it; the session calls SetRemote after Store.Open,
// before any write, and the next Sync records it with the durable offset.
type RemoteRecorder interface {
	SetRemote(addr string)
}

// TokenRecorder is implemented by a Partial that records the name of the
// token that started it (State.Token); the session calls SetToken after
// Store.Open, before any write.
type TokenRecorder interface {
	SetToken(name string)
}

// truncateRemote cuts addr to MaxRemoteLen bytes.
func truncateRemote(addr string) string {
	if len(addr) > MaxRemoteLen {
		return addr[:MaxRemoteLen]
	}
	return addr
}
