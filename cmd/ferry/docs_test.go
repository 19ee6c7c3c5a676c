package main

import (
	"context"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/internal/gendocs"
)

var update = flag.Bool("update", false, "rewrite the man page and completions (make man)")

// docs renders ferry's man page and completions, by path in the repository.
func docs(t *testing.T) map[string]string {
	t.Helper()
	app := newApp(context.Background(), strings.NewReader(""), io.Discard, io.Discard)
	man, err := gendocs.Man(app, 1)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"docs/man/ferry.1":           man,
		"dist/completion/ferry.bash": gendocs.Bash(app),
		"dist/completion/_ferry":     gendocs.Zsh(app),
	}
}

// TestDocsCurrent: the checked-in man page and completions are what the
// flags render (issue 12); `make man` rewrites them.
func TestDocsCurrent(t *testing.T) {
	stale, err := gendocs.Stale("../..", docs(t), *update)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range stale {
		t.Errorf("%s is out of date: run make man", path)
	}
}

// TestBashCompletion runs the generated bash completion: a command, then
// the flags of send.
func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script := filepath.Join(t.TempDir(), "ferry.bash")
	if err := os.WriteFile(script, []byte(docs(t)["dist/completion/ferry.bash"]), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		words string
		want  string
	}{
		{"ferry se", "send"},
		{"ferry send --chunk", "--chunk-size"},
		{"ferry send --to x --bw", "--bwlimit"},
		{"ferry --ver", "--version"},
	} {
		cmd := exec.Command("bash", "-c", `source "$0"; COMP_WORDS=($1); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _ferry; echo "${COMPREPLY[*]}"`, script, tt.words)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != tt.want {
			t.Errorf("completing %q: %q (%v), want %q", tt.words, out, err, tt.want)
		}
	}
}

// TestZshCompletionParses: `zsh -n` parses ferry's zsh completion
// (skipped without zsh).
func TestZshCompletionParses(t *testing.T) {
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Skip("no zsh")
	}
	file := filepath.Join(t.TempDir(), "_ferry")
	if err := os.WriteFile(file, []byte(docs(t)["dist/completion/_ferry"]), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("zsh", "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n _ferry: %v\n%s", err, out)
	}
}
