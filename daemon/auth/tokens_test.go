package auth

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSecret(t *testing.T) {
	a, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewSecret()
	if a == b || !strings.HasPrefix(a, SecretPrefix) || len(a) != len(SecretPrefix)+32 {
		t.Fatalf("secrets %q %q", a, b)
	}
}

func TestEncodeParse(t *testing.T) {
	now := time.Date(2026, 11, 30, 5, 20, 7, 0, time.UTC)
	tokens := []Token{
		{Name: "backup", Hash: HashSecret("a"), Created: now, Dest: "hosts/web1", MaxSize: 10, Quota: 20, Overwrite: true},
		{Name: "b-2.x", Hash: HashSecret("b"), Created: now},
	}
	got, err := Parse(Encode(tokens))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, tokens) {
		t.Fatalf("got %+v, want %+v", got, tokens)
	}
	if got, err := Parse([]byte(" \n")); err != nil || len(got) != 0 {
		t.Fatalf("empty file: %v %v", got, err)
	}
}

func TestParseRefuses(t *testing.T) {
	good := `{"version":1,"tokens":[{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","created":"2026-01-01T00:00:00Z"}]}`
	if _, err := Parse([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, in string }{
		{"not json", "backup abc"},
		{"version 2", strings.Replace(good, `"version":1`, `"version":2`, 1)},
		{"short hash", strings.Replace(good, strings.Repeat("ab", 32), "abcd", 1)},
		{"bad name", strings.Replace(good, `"name":"a"`, `"name":"-a"`, 1)},
		{"name with space", strings.Replace(good, `"name":"a"`, `"name":"a b"`, 1)},
		{"dest dotdot", strings.Replace(good, `"name":"a"`, `"name":"a","dest":"x/../.."`, 1)},
		{"dest absolute", strings.Replace(good, `"name":"a"`, `"name":"a","dest":"/etc"`, 1)},
		{"dest .ferry", strings.Replace(good, `"name":"a"`, `"name":"a","dest":".ferry/x"`, 1)},
		{"negative quota", strings.Replace(good, `"name":"a"`, `"name":"a","quota":-1`, 1)},
		{"repeated", `{"version":1,"tokens":[` + good[strings.Index(good, "[")+1:len(good)-2] + "," + good[strings.Index(good, "[")+1:]},
		{"trailing", good + "{}"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse([]byte(tt.in)); !errors.Is(err, ErrBadFile) {
				t.Fatalf("Parse(%s) = %v, want ErrBadFile", tt.in, err)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	tokens := []Token{{Name: "a", Hash: HashSecret("sa")}, {Name: "b", Hash: HashSecret("sb")}}
	if m := Match(tokens, "sb"); m == nil || m.Name != "b" {
		t.Fatalf("Match(sb) = %v", m)
	}
	if m := Match(tokens, "sc"); m != nil {
		t.Fatalf("Match(sc) = %v", m)
	}
	if m := Match(nil, ""); m != nil {
		t.Fatal("matched with no tokens")
	}
}

func TestAddRevokeLoad(t *testing.T) {
	name := filepath.Join(t.TempDir(), "sub", "tokens")
	now := time.Now()
	secret, err := Add(name, Token{Name: "backup", Dest: "hosts/web1", Quota: 100}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Add(name, Token{Name: "backup"}, now); err == nil {
		t.Fatal("added a token of a taken name")
	}
	fi, err := os.Stat(name)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", fi, err)
	}
	b, _ := os.ReadFile(name)
	if strings.Contains(string(b), secret) {
		t.Fatal("the token file holds the secret")
	}
	tokens, st, err := Load(name)
	if err != nil || len(tokens) != 1 || st.Size == 0 {
		t.Fatalf("Load: %v %v %v", tokens, st, err)
	}
	if m := Match(tokens, secret); m == nil || m.Dest != "hosts/web1" || m.Quota != 100 {
		t.Fatalf("Match: %+v", m)
	}
	if err := Revoke(name, "nope"); !errors.Is(err, ErrNoToken) {
		t.Fatalf("Revoke(nope) = %v", err)
	}
	if err := Revoke(name, "backup"); err != nil {
		t.Fatal(err)
	}
	if tokens, _, err := Load(name); err != nil || len(tokens) != 0 {
		t.Fatalf("after revoke: %v %v", tokens, err)
	}
	if tokens, st, err := Load(filepath.Join(t.TempDir(), "missing")); err != nil || tokens != nil || st != (Stamp{}) {
		t.Fatalf("missing file: %v %v %v", tokens, st, err)
	}
}

func TestLoadRefusesGroupReadable(t *testing.T) {
	name := filepath.Join(t.TempDir(), "tokens")
	if _, err := Add(name, Token{Name: "a"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620, 0o602} {
		if err := os.Chmod(name, mode); err != nil {
			t.Fatal(err)
		}
		if _, _, err := Load(name); !errors.Is(err, ErrInsecure) || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %#o: Load = %v, want ErrInsecure", mode, err)
		}
	}
	if err := os.Chmod(name, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(name); err != nil {
		t.Fatalf("mode 0400: %v", err)
	}
}

func TestCheckDest(t *testing.T) {
	for _, ok := range []string{"", "a", "hosts/web1", "a b/c"} {
		if err := CheckDest(ok); err != nil {
			t.Errorf("CheckDest(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"..", "../x", "a/..", "/a", "a//b", "a/", "./a", ".ferry", "a\\b", "a\x00", "a\nb"} {
		if err := CheckDest(bad); err == nil {
			t.Errorf("CheckDest(%q) = nil", bad)
		}
	}
}

func TestUsageRoundTrip(t *testing.T) {
	u := map[string]Usage{"abcd": {LastUsed: time.Unix(100, 0).UTC(), CommittedBytes: 7}}
	got, err := ParseUsage(EncodeUsage(u))
	if err != nil || !reflect.DeepEqual(got, u) {
		t.Fatalf("got %v %v", got, err)
	}
}
