package transfer

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFileSourceChanged(t *testing.T) {
	tests := []struct {
		name   string
		modify func(t *testing.T, path string)
		want   bool
	}{
		{"untouched", func(*testing.T, string) {}, false},
		{"appended", func(t *testing.T, p string) {
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("more"))
			f.Close()
		}, true},
		{"rewritten in place, same size", func(t *testing.T, p string) {
			if err := os.WriteFile(p, []byte("HELLO"), 0o600); err != nil {
				t.Fatal(err)
			}
			later := time.Now().Add(time.Hour) // coarse clocks may not move the mtime by themselves
			os.Chtimes(p, later, later)
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f")
			if err := os.WriteFile(p, []byte("hello"), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			src, err := FileSource(f)
			if err != nil {
				t.Fatal(err)
			}
			tt.modify(t, p)
			got, err := src.Changed()
			if err != nil || got != tt.want {
				t.Fatalf("Changed() = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}
