package main

import (
	"context"
	"flag"
	"io"
	"testing"

	"github.com/ferry-dev/ferry/internal/gendocs"
)

var update = flag.Bool("update", false, "rewrite the man page and completions (make man)")

// TestDocsCurrent: the checked-in man page and completions are what the
// flags render (issue 12); `make man` rewrites them.
func TestDocsCurrent(t *testing.T) {
	app := newApp(context.Background(), io.Discard, io.Discard, &runState{})
	man, err := gendocs.Man(app, 8)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := gendocs.Stale("../..", map[string]string{
		"docs/man/ferryd.8":           man,
		"dist/completion/ferryd.bash": gendocs.Bash(app),
		"dist/completion/_ferryd":     gendocs.Zsh(app),
	}, *update)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range stale {
		t.Errorf("%s is out of date: run make man", path)
	}
}
