package auth

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInsecure is returned by Load for a token file that group or others
// may read or write.
var ErrInsecure = errors.New("token file is accessible by group or others")

// Stamp identifies one version of a token file on disk for a change
// poll: a rename or a rewrite changes its inode, size or mtime. The zero
// Stamp stands for a missing file.
type Stamp struct {
	Ino   uint64
	Size  int64
	Mtime time.Time
}

// Stat returns the Stamp of the file at name, the zero Stamp when it does
// not exist.
func Stat(name string) (Stamp, error) {
	fi, err := os.Stat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return Stamp{}, nil
	}
	if err != nil {
		return Stamp{}, err
	}
	st := Stamp{Size: fi.Size(), Mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*unix.Stat_t); ok {
		st.Ino = sys.Ino
	}
	return st, nil
}

// Load reads the token file at name. A missing file holds no tokens. It
// returns an error wrapping ErrInsecure, naming the file and the chmod
// that fixes it, when the file's mode lets group or others read or write
// it, and one wrapping ErrBadFile when it does not parse.
func Load(name string) ([]Token, Stamp, error) {
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, Stamp{}, nil
	}
	if err != nil {
		return nil, Stamp{}, fmt.Errorf("reading token file: %w", err)
	}
	defer f.Close() //nolint:errcheck // read only
	fi, err := f.Stat()
	if err != nil {
		return nil, Stamp{}, fmt.Errorf("reading token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, Stamp{}, fmt.Errorf("reading token file %s: not a regular file", name)
	}
	if perm := fi.Mode().Perm(); perm&0o066 != 0 {
		return nil, Stamp{}, fmt.Errorf("%w: %s has mode %#o; run chmod 600 %s", ErrInsecure, name, perm, name)
	}
	st := Stamp{Size: fi.Size(), Mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*unix.Stat_t); ok {
		st.Ino = sys.Ino
	}
	b, err := readAll(f, 16<<20)
	if err != nil {
		return nil, Stamp{}, fmt.Errorf("reading token file %s: %w", name, err)
	}
	tokens, err := Parse(b)
	if err != nil {
		return nil, Stamp{}, fmt.Errorf("reading token file %s: %w", name, err)
	}
	return tokens, st, nil
}

// readAll reads f, at most limit bytes.
func readAll(f *os.File, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, err
}

// Update changes the token file at name: under an exclusive flock on
// name+".lock", it loads the file (missing: no tokens), calls change with
// its tokens, and writes what change returns atomically (a temporary file
// of mode 0600 in the same directory, fsynced, renamed over name, then
// the directory fsynced). Missing parent directories are created 0700.
// Run as root, the file is given to the owner of its directory.
// It returns change's error, Load's, or the error writing the file; the
// file is unchanged on any error.
func Update(name string, change func([]Token) ([]Token, error)) error {
	dir := filepath.Dir(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the token file's directory: %w", err)
	}
	lock, err := os.OpenFile(name+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening the token file's lock: %w", err)
	}
	defer lock.Close() //nolint:errcheck // closing releases the lock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking the token file: %w", err)
	}
	tokens, _, err := Load(name)
	if err != nil {
		return err
	}
	tokens, err = change(tokens)
	if err != nil {
		return err
	}
	return writeAtomic(name, Encode(tokens))
}

// writeAtomic replaces name with b: temp file, fsync, rename, fsync dir.
func writeAtomic(name string, b []byte) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()      // the write's error is the one to report
			_ = os.Remove(tmp) // likewise
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	// Run by root (an operator's shell) on the directory of a daemon that
	// runs as another user (systemd's DynamicUser), the file goes to the
	// directory's owner, so that the daemon can read it.
	if os.Geteuid() == 0 {
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err == nil && st.Uid != 0 {
			_ = f.Chown(int(st.Uid), int(st.Gid)) // best effort: the daemon then says it cannot read the file
		}
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing the token file's directory: %w", err)
	}
	defer d.Close() //nolint:errcheck // read only
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing the token file's directory: %w", err)
	}
	return nil
}

// Add adds a token with a new secret to the file at name (Update) and
// returns the secret, which is stored nowhere. t's Hash and Created are
// set here. It fails when a token of t's name exists (revoke it first)
// or t is invalid.
func Add(name string, t Token, now time.Time) (string, error) {
	secret, err := NewSecret()
	if err != nil {
		return "", err
	}
	t.Hash = HashSecret(secret)
	t.Created = now.UTC().Truncate(time.Second)
	if err := t.check(); err != nil {
		return "", err
	}
	err = Update(name, func(tokens []Token) ([]Token, error) {
		if Find(tokens, t.Name) != nil {
			return nil, fmt.Errorf("token %s exists; revoke it first (ferryd token revoke %s)", t.Name, t.Name)
		}
		return append(tokens, t), nil
	})
	if err != nil {
		return "", err
	}
	return secret, nil
}

// ErrNoToken is returned by Revoke for a name the file does not hold.
var ErrNoToken = errors.New("no such token")

// Revoke removes the token named tokenName from the file at name
// (Update). It returns an error wrapping ErrNoToken when there is none.
func Revoke(name, tokenName string) error {
	return Update(name, func(tokens []Token) ([]Token, error) {
		out := tokens[:0]
		for _, t := range tokens {
			if t.Name != tokenName {
				out = append(out, t)
			}
		}
		if len(out) == len(tokens) {
			return nil, fmt.Errorf("%w %s in %s (ferryd token list shows them)", ErrNoToken, tokenName, strings.TrimSpace(name))
		}
		return out, nil
	})
}
