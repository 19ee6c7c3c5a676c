package main

// The walk: how ferry send turns its PATH arguments into files to send.
//
// API, for send.go:
//
//	err := walkPaths(ctx, paths, dest, visit, warn)
//
// walkPaths checks every PATH first (a usage error, wrapping errUsage, for
// an empty PATH or one that names "/"), then streams the regular files
// below them to visit, one entry at a time, in a fixed order: PATHs in the
// order given, and within a directory its entries sorted by name (byte
// order), depth first. It never builds the whole list: memory is bounded
// by the depth of the tree times the size of its largest directory, and
// one descriptor is open per directory level. visit may take as long as
// it likes (send the file) or keep the entry for later: an entry needs
// nothing of the walk's to be opened.
//
// Everything that is not sent is reported to warn, one call each, and the
// walk goes on:
//   - an entry below a PATH that is not a regular file or directory
//     (symbolic link, named pipe, socket, device): err wraps errNotRegular;
//   - a directory met again below itself (a bind mount): err is errLoop;
//   - a PATH that does not exist (err wraps fs.ErrNotExist), or that is
//     of another type;
//   - a directory that cannot be opened or read (fs.ErrPermission, ...);
//   - an entry replaced while the walk looked at it: err wraps errNotSame.
//
// warn's err never repeats the path; print it as
//
//	fmt.Fprintf(stderr, "ferry: %s: %s\n", escapeName(path), escapeRemote(err.Error()))
//
// and decide the exit code from it: errNotRegular and errLoop are notices
// (ferry sends regular files only, by design; the looped directory was
// sent once), which leave it alone; anything else means something the
// user named was not sent: exit 1 (failed) at least.
//
// Each entry is opened with openEntry (open.go), never by e.Local: it
// opens every component below the PATH without following symlinks and
// refuses, with errNotSame, a file that is not the one the walk saw; the
// caller reports that for the file and goes on, exit 1.
//
// visit's error stops the walk and is returned as it is; a cancelled ctx
// stops it with context.Cause(ctx).
//
// Names. A PATH is resolved to an absolute, cleaned path first, lexically,
// against the working directory as the shell knows it ($PWD): ".", ".."
// and "dir/.." name the directory they lead to, and "link/.." is the
// directory holding link, as with cd in a shell. Its base name goes under
// DEST: a file is sent as DEST/name, a directory as a tree under
// DEST/name. A PATH that ends in a slash sends the directory's contents,
// as rsync does: "dir/" sends DEST/..., "dir" sends DEST/dir/.... The PATH
// itself is followed if it is a symlink (the user named it); below it,
// symlinks are skipped, or with --links (walker.links) sent as links when
// their target, resolved lexically from the link's directory, stays
// inside the PATH's tree. DEST is put in front as typed, not cleaned: the
// daemon judges names.
//
// Entries. walkPaths sends regular files only. walkEntries walks the same
// PATHs again, after the files have settled, and visits the directories
// (each after everything below it, so that its mtime is set last) and,
// with links, the symlinks kept: the tree entries that are not file data.
// It warns about nothing: the file walk did.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// entry is one regular file found by walkPaths.
type entry struct {
	// Local is the file's path for messages and --json "path": the PATH as
	// typed for a file, or the PATH joined (and cleaned) with the path
	// below it. Do not open it; use openEntry.
	Local string
	// Remote is the file's name on the daemon: slash-separated,
	// DEST/base-name-of-PATH[/path/below/it].
	Remote string
	// Dev and Ino identify the file the walk saw; openEntry refuses any
	// other.
	Dev, Ino uint64
	Size     int64 // bytes, when the walk saw it
	Mode     os.FileMode
	ModTime  time.Time

	// Kind is kindFile for walkPaths' entries; walkEntries' are
	// kindDir or kindSymlink, with the link's text in Target.
	Kind   entryKind
	Target string

	// top is the absolute, cleaned PATH the entry was found under; rel is
	// the slash-separated path below it, "" when the PATH is the file.
	top, rel string
}

// entryKind says what an entry is.
type entryKind uint8

const (
	kindFile entryKind = iota
	kindDir
	kindSymlink
)

// errNotRegular is what warn's err wraps for an entry below a PATH that
// is neither a regular file nor a directory: skipped by design. A PATH
// itself of such a type gets an error that does not wrap it, since the
// user named a file that is not sent.
var errNotRegular = errors.New("not a regular file or directory; skipped")

// walkPaths streams the regular files under paths to visit; see the
// comment at the top of this file. It returns a usage error before
// visiting anything if a PATH has no name to send it under, visit's
// error, or context.Cause(ctx) when ctx is cancelled; problems with single
// files and directories go to warn, and the walk continues.
func walkPaths(ctx context.Context, paths []string, dest string, visit func(entry) error, warn func(path string, err error)) error {
	return walkMode(ctx, paths, dest, false, false, visit, warn)
}

// walkEntries visits the directories under paths, each after what it
// holds, and with links the symlinks that stay inside their PATH's tree;
// see the comment at the top of this file.
func walkEntries(ctx context.Context, paths []string, dest string, links bool, visit func(entry) error) error {
	return walkMode(ctx, paths, dest, links, true, visit, func(string, error) {})
}

// walkFiles is walkPaths, told whether --links keeps symlinks (which are
// then not reported to warn).
func walkFiles(ctx context.Context, paths []string, dest string, links bool, visit func(entry) error, warn func(path string, err error)) error {
	return walkMode(ctx, paths, dest, links, false, visit, warn)
}

func walkMode(ctx context.Context, paths []string, dest string, links, entries bool, visit func(entry) error, warn func(path string, err error)) error {
	tops := make([]string, len(paths))
	for i, p := range paths {
		top, err := resolvePath(p)
		if err != nil {
			return err
		}
		tops[i] = top
	}
	w := walker{ctx: ctx, visit: visit, warn: warn, links: links, entries: entries}
	for i, p := range paths {
		remote := destJoin(dest, filepath.Base(tops[i]))
		contents := strings.HasSuffix(p, "/")
		if contents {
			remote = strings.TrimRight(dest, "/")
			if remote == "" && strings.HasPrefix(dest, "/") {
				remote = "/"
			}
		}
		if err := w.walkTop(p, tops[i], remote, contents); err != nil {
			return err
		}
	}
	return nil
}

// remoteJoin names the entry name of a directory named remote ("" for
// the contents of a PATH sent to the root).
func remoteJoin(remote, name string) string {
	switch remote {
	case "":
		return name
	case "/":
		return "/" + name
	}
	return remote + "/" + name
}

// linkInside reports whether a symlink at rel (slash-separated, below its
// PATH) holding target stays inside the PATH's tree, resolved lexically
// from the link's directory: not absolute, and no ".." climbing above the
// PATH.
func linkInside(rel, target string) bool {
	if target == "" || strings.HasPrefix(target, "/") {
		return false
	}
	to := path.Join(path.Dir(rel), target)
	return to != ".." && !strings.HasPrefix(to, "../")
}

// resolvePath returns PATH p made absolute and cleaned, or a usage error if
// it is empty or names "/", which has no base name to send it under.
func resolvePath(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: an empty PATH names nothing to send", errUsage)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%w: resolving PATH %s: %v", errUsage, escapeName(p), err)
	}
	if abs == string(filepath.Separator) {
		return "", fmt.Errorf("%w: PATH %s is the file system root, which has no name to send it under; name the directories below it", errUsage, escapeName(p))
	}
	return abs, nil
}

// destJoin puts base under dest exactly as typed: the daemon, not the
// sender, judges names, so nothing is cleaned away here; only trailing
// slashes of dest are dropped.
func destJoin(dest, base string) string {
	d := dest
	for len(d) > 1 && strings.HasSuffix(d, "/") {
		d = d[:len(d)-1]
	}
	switch d {
	case "":
		return base
	case "/":
		return "/" + base
	}
	return d + "/" + base
}

type walker struct {
	ctx       context.Context
	links     bool // --links: symlinks inside the tree are entries, not warnings
	entries   bool // walkEntries: visit directories and links, warn nothing
	visit     func(entry) error
	warn      func(path string, err error)
	ancestors []fileID // of the directory being walked, from the PATH down
}

// fileID identifies a file: device and inode numbers.
type fileID struct{ dev, ino uint64 }

// errLoop is what warn's err is for a directory that contains itself
// (through a bind mount): it is walked once.
var errLoop = errors.New("a directory inside itself (a bind mount?); skipped the second time")

// walkTop sends PATH p, resolved to top, under the name remote (a
// directory's contents only, under remote, when contents is set). The
// PATH itself is followed if it is a symlink: the user named it.
func (w *walker) walkTop(p, top, remote string, contents bool) error {
	if err := context.Cause(w.ctx); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := statRetry(func() error { return unix.Stat(top, &st) }); err != nil {
		w.warn(p, err)
		return nil
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if w.entries {
			return nil
		}
		return w.visit(newEntry(p, remote, top, "", &st))
	case unix.S_IFDIR:
		fd, err := openRetry(func() (int, error) {
			return unix.Open(top, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		})
		if err != nil {
			w.warn(p, fmt.Errorf("opening directory: %w", err))
			return nil
		}
		d := os.NewFile(uintptr(fd), p)
		defer d.Close() //nolint:errcheck // read-only directory handle
		var now unix.Stat_t
		if err := unix.Fstat(fd, &now); err != nil {
			w.warn(p, fmt.Errorf("reading directory metadata: %w", err))
			return nil
		}
		if now.Dev != st.Dev || now.Ino != st.Ino {
			w.warn(p, errNotSame)
			return nil
		}
		if err := w.walkDir(d, fd, p, top, "", remote, &now); err != nil || !w.entries || contents {
			return err
		}
		return w.visitDir(p, remote, top, "", &now)
	}
	if w.entries {
		return nil
	}
	// Not errNotRegular: the user named this file, and it is not sent.
	w.warn(p, fmt.Errorf("%s, not a regular file or directory; not sent", kindOf(uint32(st.Mode))))
	return nil
}

// walkDir visits the directory open as d (whose descriptor is fd), found
// at local (for messages) and rel below top, named remote on the daemon.
func (w *walker) walkDir(d *os.File, fd int, local, top, rel, remote string, st *unix.Stat_t) error {
	// A bind mount can make a directory its own descendant; symlinks,
	// which are not followed, cannot.
	id := fileID{uint64(st.Dev), st.Ino}
	if slices.Contains(w.ancestors, id) {
		w.warn(local, errLoop)
		return nil
	}
	w.ancestors = append(w.ancestors, id)
	defer func() { w.ancestors = w.ancestors[:len(w.ancestors)-1] }()
	names, err := d.Readdirnames(-1)
	if err != nil {
		// Some names may have come back: send those, and say the
		// directory was not read whole.
		w.warn(local, fmt.Errorf("reading directory: %w", err))
	}
	slices.Sort(names)
	for _, name := range names {
		if err := context.Cause(w.ctx); err != nil {
			return err
		}
		if err := w.walkEntry(fd, name, filepath.Join(local, name), top, pathJoin(rel, name), remoteJoin(remote, name)); err != nil {
			return err
		}
	}
	return nil
}

// walkEntry visits name in the directory open as dirfd, without following
// it if it is a symlink.
func (w *walker) walkEntry(dirfd int, name, local, top, rel, remote string) error {
	var st unix.Stat_t
	if err := statRetry(func() error { return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) }); err != nil {
		// Most likely removed since the directory was listed.
		w.warn(local, fmt.Errorf("cannot be read: %w", err))
		return nil
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if w.entries {
			return nil
		}
		return w.visit(newEntry(local, remote, top, rel, &st))
	case unix.S_IFLNK:
		return w.walkLink(dirfd, name, local, top, rel, remote, &st)
	case unix.S_IFDIR:
		fd, err := openRetry(func() (int, error) {
			return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		})
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				err = errNotSame // swapped for a symlink or a file since the fstatat
			} else {
				err = fmt.Errorf("opening directory: %w", err)
			}
			w.warn(local, err)
			return nil
		}
		d := os.NewFile(uintptr(fd), local)
		defer d.Close() //nolint:errcheck // read-only directory handle
		var now unix.Stat_t
		if err := unix.Fstat(fd, &now); err != nil {
			w.warn(local, fmt.Errorf("reading directory metadata: %w", err))
			return nil
		}
		if now.Dev != st.Dev || now.Ino != st.Ino {
			w.warn(local, errNotSame)
			return nil
		}
		if err := w.walkDir(d, fd, local, top, rel, remote, &now); err != nil || !w.entries {
			return err
		}
		return w.visitDir(local, remote, top, rel, &now)
	}
	w.warn(local, fmt.Errorf("%s, %w", kindOf(uint32(st.Mode)), errNotRegular))
	return nil
}

// visitDir visits the directory described by st as an entry (walkEntries).
func (w *walker) visitDir(local, remote, top, rel string, st *unix.Stat_t) error {
	e := newEntry(local, remote, top, rel, st)
	e.Kind = kindDir
	return w.visit(e)
}

// errLinkSkipped is what warn's err wraps for a symlink without --links.
var errLinkSkipped = fmt.Errorf("%w (--links sends those that stay inside the tree)", errNotRegular)

// walkLink handles the symlink name in the directory open as dirfd: with
// --links one whose target stays inside the tree is visited by
// walkEntries; any other is reported to warn by walkPaths.
func (w *walker) walkLink(dirfd int, name, local, top, rel, remote string, st *unix.Stat_t) error {
	if !w.links {
		if !w.entries {
			w.warn(local, fmt.Errorf("a symbolic link, %w", errLinkSkipped))
		}
		return nil
	}
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		if !w.entries {
			w.warn(local, fmt.Errorf("reading symbolic link: %w", err))
		}
		return nil
	}
	target := string(buf[:n])
	if !linkInside(rel, target) {
		if !w.entries {
			w.warn(local, fmt.Errorf("a symbolic link to %s, outside the sent tree, %w", escapeName(target), errNotRegular))
		}
		return nil
	}
	if !w.entries {
		return nil
	}
	e := newEntry(local, remote, top, rel, st)
	e.Kind, e.Target = kindSymlink, target
	return w.visit(e)
}

func newEntry(local, remote, top, rel string, st *unix.Stat_t) entry {
	return entry{
		Local: local, Remote: remote,
		Dev: uint64(st.Dev), Ino: st.Ino,
		Size: st.Size, Mode: fileMode(uint32(st.Mode)),
		ModTime: time.Unix(st.Mtim.Unix()),
		top:     top, rel: rel,
	}
}

// pathJoin joins slash-separated rel and a directory entry's name.
func pathJoin(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

// fileMode converts a stat mode to an os.FileMode, as os.Stat does.
func fileMode(m uint32) os.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		mode |= fs.ModeSocket
	case unix.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		mode |= fs.ModeDevice
	}
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// kindOf names the type of a file that is not sent.
func kindOf(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a named pipe"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("a file of type %#o", m&unix.S_IFMT)
}

// statRetry and openRetry retry a call interrupted by a signal (EINTR),
// which the raw unix calls pass on where the os package would retry.
func statRetry(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func openRetry(f func() (int, error)) (int, error) {
	for {
		fd, err := f()
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}
