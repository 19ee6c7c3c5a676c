// Package knownhosts reads and appends the sender's known-hosts file: the
// fingerprint each ferryd presented the first time the sender met it
// (trust on first use, as ssh's known_hosts).
//
// The file is text, one entry per line:
//
//	HOST:PORT SHA256:BASE64
//
// HOST:PORT is the daemon's address as the sender dialled it (the host in
// lower case, an IPv6 address in brackets), then one or more spaces or
// tabs, then the fingerprint of the daemon's key as ferryd logs it
// (transfer.Fingerprint). Blank lines and lines whose first non-blank
// character is '#' are ignored. An address may appear more than once; any
// of its fingerprints matches (two senders meeting a daemon at once may
// both record it).
package knownhosts

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ferry-dev/ferry/transfer"
)

// Entry is one line of a known-hosts file.
type Entry struct {
	Addr        string // HOST:PORT, host in lower case
	Fingerprint string // SHA256:…, canonical (transfer.ParseFingerprint)
}

// String formats e as a line of the file, without the newline.
func (e Entry) String() string { return e.Addr + " " + e.Fingerprint }

// maxLine bounds a line of the file, in bytes; longer lines are an error.
const maxLine = 4096

// Parse reads a known-hosts file. It returns an error naming the line
// number for a line that is not a comment, blank, or ADDR FINGERPRINT
// with a valid HOST:PORT and fingerprint.
func Parse(r io.Reader) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxLine)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want HOST:PORT SHA256:FINGERPRINT", n)
		}
		addr, err := NormalizeAddr(fields[0])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		fp, err := transfer.ParseFingerprint(fields[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, Entry{Addr: addr, Fingerprint: fp})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	return out, nil
}

// NormalizeAddr checks that addr is HOST:PORT and returns it with the host
// in lower case, as the file keeps it.
func NormalizeAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" || strings.ContainsAny(host, " \t#") || !utf8Printable(addr) {
		return "", fmt.Errorf("address %q: want HOST:PORT", addr)
	}
	return net.JoinHostPort(strings.ToLower(host), port), nil
}

// utf8Printable reports whether s holds no control characters.
func utf8Printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return false
		}
	}
	return true
}

// File is a known-hosts file on disk; it implements transfer.KnownHosts.
// It is safe for concurrent use, by several processes too: Add takes an
// exclusive flock on the file and appends one line with one write.
type File struct {
	Path string
}

var _ transfer.KnownHosts = (*File)(nil)

// Lookup returns the fingerprints recorded for addr, oldest first; none
// when addr is unknown or the file does not exist.
func (f *File) Lookup(addr string) ([]string, error) {
	key, err := NormalizeAddr(addr)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return matching(b, key, f.Path)
}

func matching(b []byte, key, path string) ([]string, error) {
	entries, err := Parse(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var fps []string
	for _, e := range entries {
		if e.Addr == key {
			fps = append(fps, e.Fingerprint)
		}
	}
	return fps, nil
}

// Add records fingerprint for addr: it creates the file (0600) and its
// directory (0700) if missing, and appends a line under an exclusive lock,
// unless another process recorded a fingerprint for addr meanwhile: then
// it returns an error wrapping transfer.ErrIdentity if that one differs,
// and nil if it is the same.
func (f *File) Add(addr, fingerprint string) error {
	key, err := NormalizeAddr(addr)
	if err != nil {
		return err
	}
	if fingerprint, err = transfer.ParseFingerprint(fingerprint); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o700); err != nil {
		return fmt.Errorf("creating the directory of %s: %w", f.Path, err)
	}
	fh, err := os.OpenFile(f.Path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close() //nolint:errcheck // closed after an explicit Sync below
	if err := syscall.Flock(int(fh.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", f.Path, err)
	}
	b, err := io.ReadAll(fh)
	if err != nil {
		return fmt.Errorf("reading %s: %w", f.Path, err)
	}
	fps, err := matching(b, key, f.Path)
	if err != nil {
		return err
	}
	for _, fp := range fps {
		if fp == fingerprint {
			return nil
		}
	}
	if len(fps) > 0 {
		return &transfer.IdentityError{Addr: key, Want: fps[len(fps)-1], Got: fingerprint, Source: "known hosts"}
	}
	line := Entry{Addr: key, Fingerprint: fingerprint}.String() + "\n"
	if len(b) > 0 && b[len(b)-1] != '\n' {
		line = "\n" + line // a hand-edited file without a final newline
	}
	if _, err := fh.WriteString(line); err != nil {
		return fmt.Errorf("writing %s: %w", f.Path, err)
	}
	if err := fh.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", f.Path, err)
	}
	return fh.Close()
}
