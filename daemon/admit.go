package daemon

import (
	"fmt"
	"net"
	"path"

	"github.com/ferry-dev/ferry/transfer"
)

// Admission: the checks a session and each of its offers pass before a
// byte of data is accepted, and the slots and disk space they hold. Every
// slot and reservation taken here is given back on every exit path
// (issue 8: a reservation leaked when the Accept could not be sent).

// MaxNewDirs is the most directories one transfer may make the daemon
// create for its name's missing parents. An offer that needs more is
// refused with CodeBadName before anything is created.
const MaxNewDirs = 32

// dirCost is the disk space in bytes a new directory is counted as in a
// transfer's reservation: one block.
const dirCost = 4096

// remoteIP returns the IP address a session is counted under for
// MaxSessionsPerIP, or "" for a connection that is not TCP (a Unix
// socket, a pipe), which is not counted.
func remoteIP(conn net.Conn) string {
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return ""
}

// admit moves ss from pending to active once its Hello is read. It
// returns a CodeBusy refusal when MaxSessions sessions are active, or
// MaxSessionsPerIP from the session's remote address.
func (s *Server) admit(ss *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active >= s.cfg.MaxSessions {
		return &transfer.RemoteError{Code: transfer.CodeBusy,
			Message: fmt.Sprintf("daemon has %d sessions, its limit; retry later", s.cfg.MaxSessions)}
	}
	if limit := s.cfg.MaxSessionsPerIP; ss.ip != "" && limit > 0 && s.perIP[ss.ip] >= limit {
		return &transfer.RemoteError{Code: transfer.CodeBusy,
			Message: fmt.Sprintf("daemon has %d sessions from %s, its limit per address; retry later", limit, ss.ip)}
	}
	s.pending--
	s.active++
	if ss.ip != "" {
		s.perIP[ss.ip]++
	}
	ss.admitted = true
	return nil
}

// leave gives back the slots of a session that ended.
func (s *Server) leave(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, ss)
	if !ss.admitted {
		s.pending--
		return
	}
	s.active--
	if ss.ip != "" {
		if s.perIP[ss.ip]--; s.perIP[ss.ip] <= 0 {
			delete(s.perIP, ss.ip)
		}
	}
}

// reservation is disk space promised to one transfer: for its data still
// to come, and extra space (its new directories). The transfer consumes
// the data part as its chunks come to occupy disk and releases the rest
// when it ends, however it ends. Safe for concurrent use.
type reservation struct {
	srv   *Server
	data  int64 // bytes promised for data still to come; guarded by srv.mu
	extra int64 // other bytes promised until release; guarded by srv.mu
}

// reserve promises data+extra bytes of disk to a transfer, or returns nil
// when the free space, less what is promised to other transfers, is
// smaller.
func (s *Server) reserve(data, extra int64) *reservation {
	ds, ok := s.cfg.Store.(interface{ FreeSpace() int64 })
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok {
		// MinFree stays free after every promise is kept (--min-free).
		if free := ds.FreeSpace(); free >= 0 && free-s.reserved-s.cfg.MinFree < data+extra {
			return nil
		}
	}
	s.reserved += data + extra
	return &reservation{srv: s, data: data, extra: extra}
}

// consume stops promising n bytes of data that now occupy disk (free
// space reflects them).
func (r *reservation) consume(n int64) {
	r.srv.mu.Lock()
	n = min(n, r.data)
	r.data -= n
	r.srv.reserved -= n
	r.srv.mu.Unlock()
}

// release gives back what is still promised. It may be called more than
// once.
func (r *reservation) release() {
	r.srv.mu.Lock()
	r.srv.reserved -= r.data + r.extra
	r.data, r.extra = 0, 0
	r.srv.mu.Unlock()
}

// admit checks an offer before anything is opened for it: its name, its
// size, and how many directories its commit would create. It returns that
// number.
func (ss *session) admit(o *transfer.Offer) (newDirs int, err error) {
	if err := transfer.ValidateName(o.Name); err != nil {
		return 0, err
	}
	if err := ss.checkNoSymlink(o.Name); err != nil {
		return 0, err
	}
	if limit := ss.srv.cfg.MaxSize; limit > 0 && o.Size > limit {
		return 0, fmt.Errorf("%w: %d bytes above the daemon's limit of %d", transfer.ErrTooLarge, o.Size, limit)
	}
	if tok := ss.tok.Load(); tok != nil && tok.MaxSize > 0 && o.Size > tok.MaxSize {
		return 0, fmt.Errorf("%w: %s is %d bytes, above token %s's limit of %d (its --max-size)",
			transfer.ErrTooLarge, transfer.QuoteName(o.Name), o.Size, tok.Name, tok.MaxSize)
	}
	// From the name's parent up to the first directory that exists: one
	// lookup when the parent exists, at most MaxNameDepth-1.
	for dir := path.Dir(o.Name); dir != "."; dir = path.Dir(dir) {
		ok, err := ss.srv.cfg.Store.Exists(dir)
		if err != nil {
			return 0, err
		}
		if ok {
			break
		}
		if newDirs++; newDirs > MaxNewDirs {
			return 0, fmt.Errorf("%w: needs more than %d new directories, the daemon's limit for one file: %s",
				transfer.ErrBadName, MaxNewDirs, transfer.QuoteName(o.Name))
		}
	}
	return newDirs, nil
}

// checkExists refuses an offer whose name is taken by something that is
// not this very file. It reports exists=true when a committed file of the
// offer's size holds the name: likely this file, committed by an earlier
// session whose Committed never reached the sender (a crash or cut right
// after the commit), a send run again, or the same content touched on the
// sender. sameMtime says its mtime matches too (rsync's quick check: taken
// as unchanged without reading it); otherwise confirmCommitted proves it by
// hash instead of refusing. replaces is the size in bytes of the committed
// file an --update offer (OfferUpdate) is to replace at its commit, 0 when
// it replaces none: the token's quota counts only what the new file adds.
func (ss *session) checkExists(o *transfer.Offer) (exists, sameMtime bool, replaces int64, err error) {
	store := ss.srv.cfg.Store
	// Stat first: a re-sent tree's names are taken by regular files, and
	// one lookup answers for them.
	size, mtime, err := store.Stat(o.Name)
	if err != nil {
		// Free, or not a regular file: Exists tells which, and refuses a
		// name that cannot be resolved inside the root.
		taken, err := store.Exists(o.Name)
		if err != nil || !taken {
			return false, false, 0, err
		}
		return false, false, 0, existsError(o.Name) // not a regular file: never replaced
	}
	if o.Flags&transfer.OfferRestart != 0 {
		if o.Flags&transfer.OfferUpdate != 0 {
			if !ss.mayOverwrite() {
				return false, false, 0, errNoOverwrite(ss.tok.Load(), o.Name)
			}
			return false, false, size, nil // replaced, as below
		}
		return false, false, 0, existsError(o.Name) // the sender's file differs from the committed one
	}
	same := size == o.Size && mtime.UnixNano() == o.MtimeNs
	if o.Flags&transfer.OfferUpdate != 0 && !same {
		// --update: received as a new file, renamed over the old one
		// at its commit (Partial.Commit).
		if !ss.mayOverwrite() {
			return false, false, 0, errNoOverwrite(ss.tok.Load(), o.Name)
		}
		return false, false, size, nil
	}
	if size != o.Size {
		return false, false, 0, existsError(o.Name)
	}
	return true, same, 0, nil
}

// existsError refuses a name that a committed file of other content holds.
func existsError(name string) error {
	return fmt.Errorf("%w: %s is already on the daemon with other content; choose another --dest, remove it, or send with --update",
		transfer.ErrExists, transfer.QuoteName(name))
}

// maxPlainDirs bounds the directories a session remembers as checked by
// checkNoSymlink.
const maxPlainDirs = 4096

// checkNoSymlink refuses a name whose way goes through a symbolic link
// (EntryStore.CheckNoSymlink), remembering the directories it checked so
// that the files of one directory cost one check.
func (ss *session) checkNoSymlink(name string) error {
	es, ok := ss.srv.cfg.Store.(EntryStore)
	dir := path.Dir(name)
	if !ok || dir == "." || ss.plainDirs[dir] {
		return nil
	}
	if err := es.CheckNoSymlink(name); err != nil {
		return err
	}
	if ss.plainDirs == nil || len(ss.plainDirs) >= maxPlainDirs {
		ss.plainDirs = make(map[string]bool)
	}
	ss.plainDirs[dir] = true
	return nil
}
