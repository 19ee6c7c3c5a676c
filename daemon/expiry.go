package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ferry-dev/ferry/transfer"
)

// PurgeRequest says which partials to remove: those named (by destination
// name or key), or all when Names is empty, and of those only the ones
// untouched for at least OlderThan.
type PurgeRequest struct {
	Names     []string      `json:"names,omitempty"`
	OlderThan time.Duration `json:"older_than_ns"`
}

// PurgeResult says what a purge did.
type PurgeResult struct {
	Removed  []PartialInfo `json:"removed"`
	InUse    []PartialInfo `json:"in_use"`    // used by a session: kept
	NotFound []string      `json:"not_found"` // requested names that matched no partial
	Errors   []string      `json:"errors"`    // removals that failed, one line each
}

// Purge removes the partials req selects from k, as of now. inUse, when
// not nil, takes the partial's key for the removal and reports false if a
// session has it (the partial is then kept and listed in InUse); done
// gives the key back. Without inUse the caller holds the root's lock.
func Purge(k PartialKeeper, req PurgeRequest, now time.Time, take func(key string) bool, done func(key string)) PurgeResult {
	var res PurgeResult
	parts, err := k.Partials()
	if err != nil {
		res.Errors = append(res.Errors, err.Error())
		return res
	}
	matched := make(map[string]bool)
	for _, p := range parts {
		if len(req.Names) > 0 {
			i := slices.IndexFunc(req.Names, func(n string) bool { return n == p.Name || n == p.Key })
			if i < 0 {
				continue
			}
			matched[req.Names[i]] = true
		}
		if now.Sub(p.Modified) < req.OlderThan {
			continue
		}
		if take != nil {
			if !take(p.Key) {
				res.InUse = append(res.InUse, p)
				continue
			}
		}
		err := k.RemovePartial(p.Key)
		if done != nil {
			done(p.Key)
		}
		if err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("%s (%s): %v", p.Key, p.Name, err))
			continue
		}
		res.Removed = append(res.Removed, p)
	}
	for _, n := range req.Names {
		if !matched[n] {
			res.NotFound = append(res.NotFound, n)
		}
	}
	return res
}

// expirer stands for partial expiry in Server.holders while it removes a
// partial, so that no session can take it meanwhile.
var expirer = &session{}

// expiryLoop removes partials untouched for PartialTTL and answers purge
// requests, until the server shuts down.
func (s *Server) expiryLoop(k PartialKeeper, fs FS) {
	defer s.wg.Done()
	every := time.Second
	var lastScan time.Time
	scanEvery := min(max(s.cfg.PartialTTL/8, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if s.cfg.PurgeRequests {
			s.answerRequests(k, fs)
		}
		if s.cfg.PartialTTL > 0 && time.Since(lastScan) >= scanEvery {
			s.ExpirePartials(k)
			lastScan = time.Now()
		}
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// startExpiry starts expiryLoop when the configuration asks for expiry or
// purge requests and the store can do them; Shutdown joins it.
func (s *Server) startExpiry() {
	k, ok := s.cfg.Store.(PartialKeeper)
	if !ok || s.cfg.PartialTTL <= 0 && !s.cfg.PurgeRequests {
		return
	}
	var fs FS
	if ds, ok := s.cfg.Store.(*DirStore); ok {
		fs = ds.fs
	}
	if fs == nil {
		s.cfg.PurgeRequests = false
	}
	s.wg.Add(1)
	go s.expiryLoop(k, fs)
}

// take marks key as used by expiry or a purge; false if a session has it.
func (s *Server) take(key string) bool { return s.hold(key, expirer) == nil }

// ExpirePartials removes every partial of k untouched for at least
// PartialTTL (by Config.Now), unless a session uses it, logging one line
// for each: msg="partial expired" with its name, key, size, durable
// offset and age. It returns how many it removed.
func (s *Server) ExpirePartials(k PartialKeeper) int {
	// One pass at a time: the background loop and a caller's pass would
	// otherwise both remove, log and count one partial.
	s.expiryMu.Lock()
	defer s.expiryMu.Unlock()
	now := s.cfg.Now()
	res := Purge(k, PurgeRequest{OlderThan: s.cfg.PartialTTL}, now, func(key string) bool {
		if !s.take(key) {
			return false
		}
		// Look again under the hold: a session may have written it
		// since the listing.
		p, ok, err := k.Partial(key)
		if err != nil || !ok || now.Sub(p.Modified) < s.cfg.PartialTTL {
			s.release(key)
			return false
		}
		return true
	}, s.release)
	for _, p := range res.Removed {
		s.partialRemoved(p)
		s.met.ended(outcomeExpired)
		s.cfg.Logger.Info("partial expired", "name", p.Name, "key", p.Key, "size", p.Size,
			"durable_offset", p.DurableOffset, "age", now.Sub(p.Modified).Round(time.Second).String())
	}
	for _, e := range res.Errors {
		s.cfg.Logger.Warn("expiring partial", "err", e)
	}
	return len(res.Removed)
}

// Purge request files under ROOT/.ferry/requests: the tool writes
// ID.purge (JSON PurgeRequest, by temp file and rename); the daemon
// answers with ID.done (JSON PurgeResult, likewise) and removes ID.purge.
const (
	requestSuffix = ".purge"
	answerSuffix  = ".done"
	staleRequest  = time.Minute // age of an unread answer or temp file the daemon removes
)

// answerRequests carries out every pending purge request.
func (s *Server) answerRequests(k PartialKeeper, fs FS) {
	rd, ok := fs.(DirReader)
	if !ok {
		return
	}
	names, err := rd.ReadDir(requestsDir)
	if err != nil {
		return // none yet
	}
	for _, n := range names {
		id, ok := strings.CutSuffix(n, requestSuffix)
		if !ok {
			// An answer no tool read (it was killed), or a temp file
			// left by a crash: gone after a minute.
			if fi, err := fs.Lstat(path.Join(requestsDir, n)); err == nil && time.Since(fi.ModTime()) > staleRequest {
				_ = fs.Remove(path.Join(requestsDir, n)) // best effort; tried again next second
			}
			continue
		}
		reqPath := path.Join(requestsDir, n)
		var req PurgeRequest
		var res PurgeResult
		if b, err := readSmall(fs, reqPath); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("reading purge request: %v", err))
		} else if err := json.Unmarshal(b, &req); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("decoding purge request: %v", err))
		} else {
			res = Purge(k, req, s.cfg.Now(), s.take, s.release)
		}
		for _, p := range res.Removed {
			s.partialRemoved(p)
			s.cfg.Logger.Info("partial purged", "name", p.Name, "key", p.Key, "size", p.Size,
				"durable_offset", p.DurableOffset)
		}
		b, _ := json.Marshal(res) //nolint:errchkjson // plain strings and numbers
		if err := writeFileAtomic(fs, path.Join(requestsDir, id+answerSuffix), b, nil); err != nil {
			s.cfg.Logger.Warn("answering purge request", "err", err)
		}
		if err := fs.Remove(reqPath); err != nil && !isNotExist(err) {
			s.cfg.Logger.Warn("removing purge request", "err", err)
		}
	}
}

// readSmall reads a file of at most 1 MiB.
func readSmall(fs FS, name string) ([]byte, error) {
	f, err := fs.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // opened read-only
	b := make([]byte, 1<<20)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:n], nil
}

// writeFileAtomic writes name by a temp file and a rename, so that a
// reader never sees it half written; prepare, if not nil, is called with
// the temp file's name before the rename.
func writeFileAtomic(fs FS, name string, b []byte, prepare func(name string)) error {
	tmp := name + ".tmp"
	f, err := fs.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && prepare != nil {
		prepare(tmp)
	}
	if err == nil {
		err = fs.Rename(tmp, name)
	}
	if err != nil {
		_ = fs.Remove(tmp) // the write error is the one to report
	}
	return err
}

// ErrNoAnswer is returned by RequestPurge when no daemon answered in time.
var ErrNoAnswer = errors.New("no answer from ferryd")

// RequestPurge asks the daemon running on fs's root to carry out req and
// waits up to timeout for its answer. Without an answer it withdraws the
// request and returns an error wrapping ErrNoAnswer. Run by root, it gives
// the request to the owner of ROOT/.ferry (the daemon's user, such as
// systemd's DynamicUser), so that the daemon can read and remove it.
func RequestPurge(fs *OSFS, req PurgeRequest, timeout time.Duration) (PurgeResult, error) {
	var res PurgeResult
	if err := mkdirs(fs, requestsDir, 0o700); err != nil {
		return res, fmt.Errorf("creating %s: %w", requestsDir, err)
	}
	giveToDaemon := func(name string) {}
	if fi, err := fs.Lstat(transfer.ReservedDir); err == nil && os.Geteuid() == 0 {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			giveToDaemon = func(name string) {
				_ = fs.root.Lchown(name, int(st.Uid), int(st.Gid)) // best effort: without it the request times out
			}
		}
	}
	giveToDaemon(requestsDir)
	var idb [8]byte
	_, _ = rand.Read(idb[:]) // never fails (crypto/rand)
	id := hex.EncodeToString(idb[:])
	b, err := json.Marshal(req)
	if err != nil {
		return res, fmt.Errorf("encoding purge request: %w", err)
	}
	reqPath, ansPath := path.Join(requestsDir, id+requestSuffix), path.Join(requestsDir, id+answerSuffix)
	if err := writeFileAtomic(fs, reqPath, b, giveToDaemon); err != nil {
		return res, fmt.Errorf("writing purge request: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		b, err := readSmall(fs, ansPath)
		if err == nil {
			_ = fs.Remove(ansPath) // read; a leftover answer is harmless
			if err := json.Unmarshal(b, &res); err != nil {
				return res, fmt.Errorf("decoding ferryd's answer: %w", err)
			}
			return res, nil
		}
		if !isNotExist(err) {
			return res, fmt.Errorf("reading ferryd's answer: %w", err)
		}
		if time.Now().After(deadline) {
			if err := fs.Remove(reqPath); isNotExist(err) {
				continue // taken meanwhile: the answer is coming
			}
			return res, fmt.Errorf("%w within %v: is it running on this root and recent enough to take purge requests?", ErrNoAnswer, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
