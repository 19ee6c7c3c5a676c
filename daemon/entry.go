package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ferry-dev/ferry/transfer"
)

// Tree entries (protocol 2.2): directories with their mode and mtime, and
// symbolic links. docs/PROTOCOL.md ("Entry") describes the message.

// EntryStore is implemented by a Store that keeps what a tree holds
// besides regular files. A store without it refuses every Entry.
type EntryStore interface {
	// MakeDir creates the directory name (and its missing parents) if it
	// does not exist, then sets its permission bits and mtime. The error
	// wraps transfer.ErrExists when name is something other than a
	// directory, transfer.ErrBadName when a directory on the way is a
	// symbolic link.
	MakeDir(name string, mode os.FileMode, mtime time.Time) error
	// MakeSymlink creates name as a symbolic link holding target, a
	// relative path that must stay under the root lexically. A link
	// already there with the same target is accepted. The error wraps
	// transfer.ErrBadName for a target that leaves the root or names the
	// daemon's own directory, transfer.ErrExists when name is taken.
	MakeSymlink(name, target string) error
	// CheckNoSymlink returns an error wrapping transfer.ErrBadName when a
	// directory on the way to name (not name itself) is a symbolic link:
	// nothing is ever written through a link, even one that stays in the
	// root.
	CheckNoSymlink(name string) error
}

var _ EntryStore = (*DirStore)(nil)

// CheckNoSymlink implements EntryStore: one Lstat per leading component,
// up to the first that does not exist.
func (s *DirStore) CheckNoSymlink(name string) error {
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		fi, err := s.fs.Lstat(name[:i])
		if isNotExist(err) {
			return nil
		}
		if err != nil {
			return nil // Exists and the commit report it with the right words
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: %s goes through the symbolic link %s; the daemon never writes through a link",
				transfer.ErrBadName, transfer.QuoteName(name), transfer.QuoteName(name[:i]))
		}
	}
	return nil
}

// MakeDir implements EntryStore. The mode and mtime are not fsynced: a
// power loss may leave the directory with the daemon's own, until the
// next run sets them again; a directory it created is (its parent is
// fsynced).
func (s *DirStore) MakeDir(name string, mode os.FileMode, mtime time.Time) error {
	tfs, ok := s.fs.(TreeFS)
	if !ok {
		return fmt.Errorf("%w: this daemon's storage keeps no directory modes", transfer.ErrBadName)
	}
	if err := s.CheckNoSymlink(name); err != nil {
		return err
	}
	fi, err := s.fs.Lstat(name)
	switch {
	case isNotExist(err):
		if err := mkdirs(s.fs, name, 0o755); err != nil {
			return fmt.Errorf("creating directory: %w", err)
		}
	case err != nil:
		return fmt.Errorf("looking at directory: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("%w: %s exists on the daemon and is not a directory", transfer.ErrExists, transfer.QuoteName(name))
	}
	if err := tfs.Chmod(name, mode&os.ModePerm); err != nil {
		return fmt.Errorf("setting directory mode: %w", err)
	}
	if err := s.fs.Chtimes(name, mtime, mtime); err != nil {
		return fmt.Errorf("setting directory mtime: %w", err)
	}
	return nil
}

// MakeSymlink implements EntryStore. The new link's directory is fsynced.
func (s *DirStore) MakeSymlink(name, target string) error {
	tfs, ok := s.fs.(TreeFS)
	if !ok {
		return fmt.Errorf("%w: this daemon's storage keeps no symbolic links", transfer.ErrBadName)
	}
	if err := CheckLinkTarget(name, target); err != nil {
		return err
	}
	if err := s.CheckNoSymlink(name); err != nil {
		return err
	}
	dir := parentDir(name)
	if err := mkdirs(s.fs, dir, 0o755); err != nil {
		return fmt.Errorf("creating directory: %w", err)
	}
	err := tfs.Symlink(target, name)
	if errors.Is(err, fs.ErrExist) {
		if old, rerr := tfs.Readlink(name); rerr == nil && old == target {
			return nil // made by an earlier run
		}
		return fmt.Errorf("%w: %s exists on the daemon", transfer.ErrExists, transfer.QuoteName(name))
	}
	if err != nil {
		return fmt.Errorf("creating symbolic link: %w", err)
	}
	if err := s.fs.SyncDir(dir); err != nil {
		return fmt.Errorf("syncing directory: %w", err)
	}
	return nil
}

// CheckLinkTarget returns an error wrapping transfer.ErrBadName unless
// target, the text of a symbolic link at name, is relative, at most
// transfer.MaxNameLen bytes of valid UTF-8 without control characters,
// and, resolved lexically from name's directory, names something under
// the root other than the daemon's own directory (transfer.ReservedDir).
func CheckLinkTarget(name, target string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: symbolic link %s: its target %s %s", transfer.ErrBadName,
			transfer.QuoteName(name), transfer.QuoteName(target), why)
	}
	switch {
	case target == "":
		return bad("is empty")
	case len(target) > transfer.MaxNameLen:
		return bad(fmt.Sprintf("is longer than %d bytes", transfer.MaxNameLen))
	case !utf8.ValidString(target):
		return bad("is not valid UTF-8")
	case strings.HasPrefix(target, "/"):
		return bad("is absolute")
	case strings.ContainsFunc(target, func(r rune) bool { return unicode.IsControl(r) || r == '\\' }):
		return bad("holds a control character or a backslash")
	}
	to := path.Join(path.Dir(name), target)
	if to == ".." || strings.HasPrefix(to, "../") {
		return bad("leads out of the root")
	}
	if to == "." || to == transfer.ReservedDir || strings.HasPrefix(to, transfer.ReservedDir+"/") {
		return bad("names the root or the daemon's own directory")
	}
	return nil
}

// entry makes the directory or symbolic link e asks for and answers it:
// Committed (size 0) or RefuseTransfer; the session goes on.
func (ss *session) entry(e *transfer.Entry) error {
	if _, open := ss.transfers[e.ID]; open {
		return fmt.Errorf("%w: entry with the ID of open transfer %d", transfer.ErrProtocol, e.ID)
	}
	ss.lastID = max(ss.lastID, e.ID)
	err := transfer.ValidateName(e.Name)
	if err == nil && e.Kind == transfer.EntrySymlink {
		// Checked on the sender's name first: a token's link must not
		// lead out of its prefix, as its files cannot.
		err = CheckLinkTarget(e.Name, e.Target)
	}
	name := ss.scoped(e.Name)
	log := ss.log.With("name", name)
	es, ok := ss.srv.cfg.Store.(EntryStore)
	if err == nil && !ok {
		err = fmt.Errorf("%w: this daemon's storage keeps no directories or symbolic links", transfer.ErrBadName)
	}
	what := "directory"
	if err == nil {
		switch e.Kind {
		case transfer.EntryDir:
			err = es.MakeDir(name, os.FileMode(e.Mode)&os.ModePerm, time.Unix(0, e.MtimeNs))
		case transfer.EntrySymlink:
			what = "symbolic link"
			err = es.MakeSymlink(name, e.Target)
		}
	}
	if err != nil {
		if !errors.Is(err, transfer.ErrBadName) && !errors.Is(err, transfer.ErrExists) {
			err = storageError("making "+what, err)
		}
		ss.refuseTransfer(&rxTransfer{id: e.ID, log: log}, err)
		return nil
	}
	if e.Kind == transfer.EntrySymlink {
		log.Info("symbolic link made", "target", e.Target)
	} else {
		log.Debug("directory made", "mode", fmt.Sprintf("%#o", e.Mode&0o777))
	}
	_ = ss.send(&transfer.Committed{ID: e.ID}) // a failed write ends the session
	return nil
}

// scoped returns name, as the sender gave it, as a name under the root:
// below the prefix of the session's token when it has one. A name that
// is not valid is returned as it is, for admission to refuse. Both are
// valid relative names (no "..", no empty component), so the joined name
// is one below the prefix; admission checks its length and depth again,
// and os.Root resolves it inside the root.
func (ss *session) scoped(name string) string {
	if tok := ss.tok.Load(); tok != nil && tok.Dest != "" && transfer.ValidateName(name) == nil {
		return tok.Dest + "/" + name
	}
	return name
}
