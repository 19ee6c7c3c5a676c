package transfer

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxComponentLen is the longest path component, in bytes, a name may
// have: NAME_MAX on Linux and most other systems.
const MaxComponentLen = 255

// MaxNameDepth is the most components a name may have. It bounds the
// directories one transfer can make the daemon create (MaxNameDepth-1) and
// the work of resolving a name: a 4 KiB name of 2,048 one-byte components
// once made the daemon create and fsync 2,047 directories (issue 8).
const MaxNameDepth = 64

// ReservedDir is the top-level directory under the root where the daemon
// keeps partials. No transfer may name it.
const ReservedDir = ".ferry"

// ValidateName checks a destination name from the network: a non-empty,
// slash-separated path relative to the root, of valid UTF-8 with no control
// characters, of at most MaxNameDepth components that are not empty, ".",
// or "..", are at most MaxComponentLen bytes, and whose first component is
// not ReservedDir. The
// whole name is at most MaxNameLen bytes. It returns an error wrapping
// ErrBadName that names the problem. ValidateName does not look at the file
// system: symlinks are handled by resolving names under an os.Root.
func ValidateName(name string) error {
	if err := validateName(name); err != nil {
		// The reason first: a refusal carries at most 1024 bytes, and a
		// long name must not push it out.
		return fmt.Errorf("%w: %s: %s", ErrBadName, err, quoteShort(name))
	}
	return nil
}

// quoteShort quotes name for a message, cutting it to its first 200
// bytes (at a rune boundary) so that messages stay one readable line.
func quoteShort(name string) string {
	const keep = 200
	if len(name) <= keep {
		return QuoteName(name)
	}
	n := keep
	for n > 0 && !utf8.RuneStart(name[n]) {
		n--
	}
	return QuoteName(name[:n]) + fmt.Sprintf("… (%d bytes)", len(name))
}

func validateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("longer than %d bytes", MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("not valid UTF-8")
	case name[0] == '/':
		return fmt.Errorf("absolute")
	}
	for _, r := range name {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return fmt.Errorf("contains control character %U", r)
		}
		if r == '\\' {
			// Refused so that a name means the same on every system.
			return fmt.Errorf("contains a backslash")
		}
	}
	if n := strings.Count(name, "/") + 1; n > MaxNameDepth {
		return fmt.Errorf("%d components, more than %d", n, MaxNameDepth)
	}
	for i, c := range strings.Split(name, "/") {
		switch {
		case c == "" || c == ".":
			return fmt.Errorf("empty or '.' component")
		case c == "..":
			return fmt.Errorf("'..' component")
		case len(c) > MaxComponentLen:
			return fmt.Errorf("component longer than %d bytes", MaxComponentLen)
		case i == 0 && c == ReservedDir:
			return fmt.Errorf("%s is reserved for partials", ReservedDir)
		}
	}
	return nil
}

// QuoteName returns name escaped for a log line or terminal: Go-quoted, so
// control characters and invalid UTF-8 show as escapes, never raw.
func QuoteName(name string) string { return strconv.Quote(name) }
