package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/internal/gendocs"
)

// TestBashCompletion runs ferryd's bash completion in bash: commands,
// their subcommands (`partials purge`, `token add|list|revoke`) and each
// one's flags (issue 12).
func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script := filepath.Join(t.TempDir(), "ferryd.bash")
	app := newApp(context.Background(), io.Discard, io.Discard, &runState{})
	if err := os.WriteFile(script, []byte(gendocs.Bash(app)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		words string // the command line; the last word is completed
		want  []string
		not   []string
	}{
		{"ferryd ''", []string{"partials", "token"}, nil},
		{"ferryd partials ''", []string{"purge"}, nil},
		{"ferryd partials --", []string{"--json", "--root"}, []string{"--older-than"}},
		{"ferryd partials purge --", []string{"--older-than", "--root"}, []string{"--json"}},
		{"ferryd token ''", []string{"add", "list", "revoke"}, nil},
		{"ferryd token a", []string{"add"}, []string{"list"}},
		{"ferryd token add --", []string{"--dest", "--max-size", "--quota", "--overwrite", "--tokens"}, []string{"--json"}},
		{"ferryd token add backup --o", []string{"--overwrite"}, nil},
		{"ferryd token list --", []string{"--json", "--tokens"}, []string{"--dest"}},
		{"ferryd token revoke --", []string{"--tokens"}, []string{"--dest"}},
		{"ferryd --allow", []string{"--allow-anonymous"}, nil},
	} {
		t.Run(tt.words, func(t *testing.T) {
			cmd := exec.Command("bash", "--norc", "--noprofile", "-c",
				`complete() { :; }; source "$1"; COMP_WORDS=(`+tt.words+`); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _ferryd; printf '%s\n' "${COMPREPLY[@]}"`,
				"bash", script)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			got := strings.Fields(string(out))
			for _, w := range tt.want {
				if !contains(got, w) {
					t.Errorf("completions %q lack %s", got, w)
				}
			}
			for _, w := range tt.not {
				if contains(got, w) {
					t.Errorf("completions %q offer %s", got, w)
				}
			}
		})
	}
}

// TestZshCompletion checks ferryd's zsh completion: `zsh -n` parses it
// (skipped without zsh), and it describes every subcommand.
func TestZshCompletion(t *testing.T) {
	app := newApp(context.Background(), io.Discard, io.Discard, &runState{})
	script := gendocs.Zsh(app)
	for _, want := range []string{"#compdef ferryd", "'partials:", "'token:", "'purge:", "'add:", "'list:", "'revoke:",
		"'--older-than=[", "'--overwrite[", "'--quota=[", "'--allow-anonymous["} {
		if !strings.Contains(script, want) {
			t.Errorf("the zsh completion lacks %s", want)
		}
	}
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Skip("no zsh: its syntax is not checked")
	}
	file := filepath.Join(t.TempDir(), "_ferryd")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("zsh", "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n _ferryd: %v\n%s", err, out)
	}
}

func contains(words []string, w string) bool {
	for _, x := range words {
		if x == w {
			return true
		}
	}
	return false
}
