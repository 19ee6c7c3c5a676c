package main

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// escapeName returns s, a local path or a remote name, as it may be shown
// in human output (stderr lines): every byte a terminal would act on or
// hide is written as a visible escape, so a name can neither move the
// cursor, set the clipboard (OSC 52), forge a line, nor reorder the text
// around it (bidi overrides).
//
// Escaped: a backslash as \\; tab, newline and carriage return as \t, \n,
// \r; other C0 controls and DEL as \xNN; each byte of invalid UTF-8 as
// \xNN; and every rune strconv.IsPrint rejects (C1 controls, format
// characters such as U+202E and U+200B, line and paragraph separators,
// spaces other than U+0020, unassigned code points) as \uNNNN or
// \UNNNNNNNN. Everything else is kept as is, so plain names, including
// non-ASCII letters, read unchanged. Since a backslash is escaped too, the
// escaped form is unambiguous: two names never escape alike.
//
// b3sum escapes only backslash, newline and carriage return; that rule,
// and b3sum's exact output, stay with ferry hash (b3sumLine).
func escapeName(s string) string {
	return escape(s, true)
}

// maxRemoteText is the most of a remote string, in bytes, escapeRemote
// shows: a refusal's message is at most 1024 bytes on the wire.
const maxRemoteText = 1024

// escapeRemote returns s, text received from the daemon (a refusal's
// message) or an error message that may hold such text, as one line safe
// to print: escaped as escapeName does, except that a backslash is kept
// (the daemon's messages quote names with backslash escapes already, and
// doubling them would only make them harder to read; a backslash alone
// makes no terminal act). Text past maxRemoteText bytes is cut, with a
// note of the length.
func escapeRemote(s string) string {
	if len(s) > maxRemoteText {
		n := maxRemoteText
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		return escape(s[:n], false) + fmt.Sprintf("… (%d bytes)", len(s))
	}
	return escape(s, false)
}

// escape escapes s as escapeName describes; backslash says whether a
// backslash is escaped too.
func escape(s string, backslash bool) string {
	if isPlain(s, backslash) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\' && backslash:
			b.WriteString(`\\`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r < 0x80 || strconv.IsPrint(r):
			b.WriteString(s[i : i+n])
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		i += n
	}
	return b.String()
}

// isPlain reports whether s needs no escape: printable ASCII only (and no
// backslash, if backslashes are escaped). The common case, kept cheap.
func isPlain(s string, backslash bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || (c == '\\' && backslash) {
			return false
		}
	}
	return true
}
