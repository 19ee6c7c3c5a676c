package gendocs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFirstClause(t *testing.T) {
	for in, want := range map[string]string{
		"FORMAT: text (key=value lines) or json (one object per line)": "FORMAT: text or json",
		"wait before the first retry; doubles each retry":              "wait before the first retry",
		"send at most RATE (bytes/s, e.g. 50MiB) for the whole run":    "send at most RATE for the whole run",
		"plain": "plain",
	} {
		if got := firstClause(in); got != want {
			t.Errorf("firstClause(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStale(t *testing.T) {
	root := t.TempDir()
	want := map[string]string{"docs/a.1": "new\n"}
	if stale, err := Stale(root, want, false); err != nil || len(stale) != 1 {
		t.Fatalf("missing file: stale %v, %v", stale, err)
	}
	if _, err := Stale(root, want, true); err != nil {
		t.Fatal(err)
	}
	if stale, err := Stale(root, want, false); err != nil || len(stale) != 0 {
		t.Fatalf("after update: stale %v, %v", stale, err)
	}
	os.WriteFile(filepath.Join(root, "docs", "a.1"), []byte("old\n"), 0o644)
	if stale, _ := Stale(root, want, false); len(stale) != 1 || stale[0] != "docs/a.1" {
		t.Fatalf("changed file: stale %v", stale)
	}
}
