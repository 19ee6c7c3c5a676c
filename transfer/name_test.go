package transfer

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	// A name of exactly MaxNameLen bytes: 20 components of 200 bytes and
	// slashes, then a last short component.
	maxName := strings.Repeat(long(200)+"/", 20)
	maxName += long(MaxNameLen - len(maxName))
	tests := []struct {
		name  string
		in    string
		valid bool
		why   string // substring of the error for invalid names
	}{
		{"plain", "file.bin", true, ""},
		{"nested", "backups/2024/db.tar.zst", true, ""},
		{"dots inside names", "a..b/.hidden/..x/x..", true, ""},
		{"spaces and punctuation", "my file (1) #2 ~$%.txt", true, ""},
		{"unicode", "Fähre/日本語/файл-🚢.txt", true, ""},
		{"combining marks", "e\u0301/n\u0303", true, ""},
		{"reserved name below the top level", "x/.ferry/y", true, ""},
		{"reserved prefix only", ".ferryboat", true, ""},
		{"255-byte component", long(255), true, ""},
		{"255-byte multi-byte component", strings.Repeat("é", 127) + "x", true, ""},
		{"exactly MaxNameLen", maxName, true, ""},
		{"MaxNameDepth components", strings.Repeat("a/", MaxNameDepth-1) + "f", true, ""},

		{"empty", "", false, "empty"},
		{"parent", "..", false, "'..'"},
		{"parent first", "../x", false, "'..'"},
		{"parent last", "x/..", false, "'..'"},
		{"parent climbing", "a/../../x", false, "'..'"},
		{"absolute", "/etc/x", false, "absolute"},
		{"root", "/", false, "absolute"},
		{"dot", ".", false, "'.' component"},
		{"dot first", "./x", false, "'.' component"},
		{"dot inside", "a/./b", false, "'.' component"},
		{"empty component", "a//b", false, "empty"},
		{"trailing slash", "a/", false, "empty"},
		{"NUL", "a\x00b", false, "control"},
		{"newline", "a\nb", false, "control"},
		{"carriage return", "a\rb", false, "control"},
		{"tab", "a\tb", false, "control"},
		{"escape (terminal injection)", "a\x1b[31mred", false, "control"},
		{"DEL", "a\x7fb", false, "control"},
		{"C1 control", "a\u0085b", false, "control"},
		{"invalid UTF-8", "a\xffb", false, "UTF-8"},
		{"truncated UTF-8", "caf\xc3", false, "UTF-8"},
		{"overlong encoding of slash", "a\xc0\xafb", false, "UTF-8"},
		{"encoded surrogate", "a\xed\xa0\x80b", false, "UTF-8"},
		{"replacement character", "a\uFFFDb", false, "U+FFFD"},
		{"backslash", `a\b`, false, "backslash"},
		{"windows parent", `..\x`, false, "backslash"},
		{"256-byte component", long(256), false, "component longer"},
		{"256-byte component deeper", "a/" + long(256) + "/b", false, "component longer"},
		{"256-byte multi-byte component", strings.Repeat("é", 128), false, "component longer"},
		{"longer than MaxNameLen", maxName + "x", false, "longer than 4096"},
		{"very long", strings.Repeat("a/", 5000), false, "longer than 4096"},
		{"one component more than MaxNameDepth", strings.Repeat("a/", MaxNameDepth) + "f", false, "65 components, more than 64"},
		{"2048 components in 4 KiB", strings.Repeat("a/", 2047) + "f", false, "2048 components, more than 64"},
		{"reserved directory", ".ferry", false, "reserved"},
		{"inside the reserved directory", ".ferry/x", false, "reserved"},
		{"partials", ".ferry/partials/0123456789abcdef.data", false, "reserved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateName(tt.in)
			if tt.valid {
				if err != nil {
					t.Fatalf("ValidateName(%q): %v", tt.in, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateName(%q) accepted it", tt.in)
			}
			if !errors.Is(err, ErrBadName) {
				t.Errorf("error %v does not wrap ErrBadName", err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("error %q does not say %q", err, tt.why)
			}
			if strings.ContainsAny(err.Error(), "\x00\n\r\x1b\x7f") {
				t.Errorf("error %q carries raw control characters", err)
			}
		})
	}
}

func TestQuoteName(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "a/b", `"a/b"`},
		{"control characters escaped", "a\x1b[31m\n", `"a\x1b[31m\n"`},
		{"invalid UTF-8 escaped", "\xff", `"\xff"`},
		{"printable unicode kept", "Fähre", `"Fähre"`},
		{"bidi override escaped", "a\u202eb", `"a\u202eb"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := QuoteName(tt.in); got != tt.want {
				t.Fatalf("QuoteName(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}
