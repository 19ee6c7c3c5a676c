package main

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// TestEscape is the regression test of issue 8, defect 9: a daemon's
// refusal passed ESC and BEL through to the terminal (an OSC 52 clipboard
// write and a forged "sent … blake3" line were shown), and local names with
// newlines or control characters were printed raw.
func TestEscape(t *testing.T) {
	tests := []struct {
		name, in   string
		wantName   string // escapeName
		wantRemote string // escapeRemote; "" means the same as wantName
	}{
		{name: "plain", in: "backups/2024 report.tar", wantName: "backups/2024 report.tar"},
		{name: "non-ASCII letters kept", in: "données/résumé-日本.txt", wantName: "données/résumé-日本.txt"},
		{name: "ESC colour", in: "a\x1b[31mred", wantName: `a\x1b[31mred`},
		{name: "BEL", in: "ding\a", wantName: `ding\x07`},
		{name: "OSC 52 clipboard write", in: "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\a", wantName: `\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07`},
		{name: "forged line", in: "x\r\nferry: sent /etc/passwd → p: 1 B in 0.1s (1 B/s) blake3 00",
			wantName: `x\r\nferry: sent /etc/passwd → p: 1 B in 0.1s (1 B/s) blake3 00`},
		{name: "carriage return", in: "ok\rEVIL", wantName: `ok\rEVIL`},
		{name: "newline", in: "a\nb", wantName: `a\nb`},
		{name: "tab", in: "a\tb", wantName: `a\tb`},
		{name: "NUL and DEL", in: "a\x00b\x7f", wantName: `a\x00b\x7f`},
		{name: "C1 control (CSI)", in: "a\u009b31mb", wantName: `a\u009b31mb`},
		{name: "invalid UTF-8", in: "\xff\xfe/ok\xc0\xaf", wantName: `\xff\xfe/ok\xc0\xaf`},
		{name: "truncated UTF-8", in: "é"[:1], wantName: `\xc3`},
		{name: "bidi override", in: "invoice\u202Efdp.exe", wantName: `invoice\u202efdp.exe`},
		{name: "bidi isolate", in: "a\u2066b\u2069", wantName: `a\u2066b\u2069`},
		{name: "zero-width space", in: "pay\u200bpal", wantName: `pay\u200bpal`},
		{name: "line separator", in: "a\u2028b", wantName: `a\u2028b`},
		{name: "tag character outside the BMP", in: "a\U000E0001b", wantName: `a\U000e0001b`},
		{name: "emoji kept", in: "ok-😀", wantName: "ok-😀"},
		{name: "backslash", in: `C:\dir\x1b`, wantName: `C:\\dir\\x1b`, wantRemote: `C:\dir\x1b`},
		{name: "daemon's quoted name", in: `refused: bad file name: contains control character U+001B: "a\x1b"`,
			wantName:   `refused: bad file name: contains control character U+001B: "a\\x1b"`,
			wantRemote: `refused: bad file name: contains control character U+001B: "a\x1b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := escapeName(tt.in); got != tt.wantName {
				t.Errorf("escapeName(%q)\n got %s\nwant %s", tt.in, got, tt.wantName)
			}
			want := tt.wantRemote
			if want == "" {
				want = tt.wantName
			}
			if got := escapeRemote(tt.in); got != want {
				t.Errorf("escapeRemote(%q)\n got %s\nwant %s", tt.in, got, want)
			}
			for _, got := range []string{escapeName(tt.in), escapeRemote(tt.in)} {
				if !safe(got) {
					t.Errorf("escaped %q is not safe to print: %q", tt.in, got)
				}
			}
		})
	}
}

// safe reports whether s is one line of valid UTF-8 holding only runes a
// terminal shows as they are.
func safe(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029' {
			return false
		}
	}
	return true
}

// TestEscapeNameUnambiguous: names that differ escape differently.
func TestEscapeNameUnambiguous(t *testing.T) {
	pairs := [][2]string{
		{"a\x1b", `a\x1b`},
		{"a\n", `a\n`},
		{"\xff", `\xff`},
		{"\u202e", `\u202e`},
	}
	for _, p := range pairs {
		if escapeName(p[0]) == escapeName(p[1]) {
			t.Errorf("%q and %q both escape to %s", p[0], p[1], escapeName(p[0]))
		}
	}
}

func TestEscapeRemoteCutsLongText(t *testing.T) {
	long := strings.Repeat("é", 2000) // 4000 bytes
	got := escapeRemote(long)
	if !strings.HasPrefix(got, strings.Repeat("é", maxRemoteText/2)) || !strings.HasSuffix(got, "… (4000 bytes)") || !utf8.ValidString(got) {
		t.Errorf("escapeRemote of 4000 bytes = %q…%q", got[:20], got[len(got)-30:])
	}
	if n := len(escapeRemote(strings.Repeat("\x1b", 5000))); n > 4*maxRemoteText+20 {
		t.Errorf("escapeRemote of 5000 ESC is %d bytes long", n)
	}
}
