package knownhosts

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ferry-dev/ferry/transfer"
)

const (
	fpA = "SHA256:sCA28qmfq89jRt0rytFzqzVN3z88p0Haq/Rwxq5SyqI"
	fpB = "SHA256:oN/QBQj1EErSOo0gAF8a3fSblRBpHhkempMwjrsnxEM"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Entry
		wantErr string
	}{
		{"empty", "", nil, ""},
		{"comments and blanks", "# ferry\n\n   \n\t# x\n", nil, ""},
		{"one", "127.0.0.1:7219 " + fpA + "\n", []Entry{{"127.0.0.1:7219", fpA}}, ""},
		{"host lower-cased, tabs, no final newline", "Collector.Example:7219\t\t" + fpA, []Entry{{"collector.example:7219", fpA}}, ""},
		{"IPv6", "[::1]:7219 " + fpB + "\n", []Entry{{"[::1]:7219", fpB}}, ""},
		{"padding accepted", "h:1 " + fpA + "=\n", []Entry{{"h:1", fpA}}, ""},
		{"no port", "host " + fpA + "\n", nil, "line 1"},
		{"no fingerprint", "h:1\n", nil, "line 1"},
		{"three fields", "h:1 " + fpA + " extra\n", nil, "line 1"},
		{"md5 fingerprint", "# c\nh:1 MD5:aa\n", nil, "line 2"},
		{"short fingerprint", "h:1 SHA256:abc\n", nil, "line 1"},
		{"over-long line", "h:1 " + strings.Repeat("x", maxLine+1) + "\n", nil, "reading"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse: err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("entry %d: got %v, want %v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestAddLookup(t *testing.T) {
	f := &File{Path: filepath.Join(t.TempDir(), "ferry", "known_hosts")}
	if fps, err := f.Lookup("127.0.0.1:7219"); err != nil || len(fps) != 0 {
		t.Fatalf("Lookup in a missing file: %v, %v", fps, err)
	}
	if err := f.Add("127.0.0.1:7219", fpA); err != nil {
		t.Fatal(err)
	}
	if err := f.Add("127.0.0.1:7219", fpA); err != nil { // again: no second line
		t.Fatal(err)
	}
	if err := f.Add("127.0.0.1:7219", fpB); !errors.Is(err, transfer.ErrIdentity) {
		t.Errorf("Add of another key for a known address: %v, want ErrIdentity", err)
	}
	fps, err := f.Lookup("127.0.0.1:7219")
	if err != nil || len(fps) != 1 || fps[0] != fpA {
		t.Errorf("Lookup: %v, %v; want [%s]", fps, err, fpA)
	}
	fi, err := os.Stat(f.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestAddConcurrent: senders meeting new daemons at once each record
// theirs, and the file stays well formed.
func TestAddConcurrent(t *testing.T) {
	f := &File{Path: filepath.Join(t.TempDir(), "known_hosts")}
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			if err := f.Add("h:"+string(rune('0'+i%10))+string(rune('0'+i/10)), fpA); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	b, err := os.ReadFile(f.Path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(strings.NewReader(string(b)))
	if err != nil || len(got) != 32 {
		t.Fatalf("after 32 concurrent Adds: %d entries, %v:\n%s", len(got), err, b)
	}
}

// FuzzParseKnownHosts: Parse never panics, and whatever it accepts
// formats to lines it parses again to the same entries.
func FuzzParseKnownHosts(f *testing.F) {
	for _, s := range []string{"", "# c\n", "127.0.0.1:7219 " + fpA + "\n", "[::1]:1\t" + fpB, "h " + fpA, "h:1 SHA256:\n", "H:1 " + fpA + "==\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		entries, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		var b strings.Builder
		for _, e := range entries {
			b.WriteString(e.String() + "\n")
		}
		again, err := Parse(strings.NewReader(b.String()))
		if err != nil {
			t.Fatalf("re-parsing %q: %v", b.String(), err)
		}
		if len(again) != len(entries) {
			t.Fatalf("re-parse: %d entries, want %d", len(again), len(entries))
		}
		for i := range again {
			if again[i] != entries[i] {
				t.Fatalf("re-parse entry %d: %v, want %v", i, again[i], entries[i])
			}
		}
	})
}
