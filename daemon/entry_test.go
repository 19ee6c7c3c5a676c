package daemon_test

import (
	"errors"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// TestCheckLinkTarget: the daemon judges a symlink's target itself, for a
// sender that does not: only relative targets that stay under the root,
// outside .ferry, are made.
func TestCheckLinkTarget(t *testing.T) {
	tests := []struct {
		name, link, target string
		ok                 bool
	}{
		{"sibling", "t/l", "a.txt", true},
		{"up inside", "t/sub/l", "../a.txt", true},
		{"dir", "t/l", "sub/deep", true},
		{"to its tree's top", "t/sub/l", "..", true},
		{"absolute", "t/l", "/etc/passwd", false},
		{"climbs out", "t/l", "../../etc", false},
		{"climbs out from the top", "l", "../x", false},
		{"climbs to the root's parent", "t/l", "../..", false},
		{"the root", "t/l", "..", false},
		{"daemon's directory", "t/l", "../.ferry/partials", false},
		{"empty", "t/l", "", false},
		{"control character", "t/l", "a\nb", false},
		{"not UTF-8", "t/l", "a\xff", false},
		{"backslash", "t/l", `a\b`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := daemon.CheckLinkTarget(tt.link, tt.target)
			if tt.ok != (err == nil) || err != nil && !errors.Is(err, transfer.ErrBadName) {
				t.Errorf("CheckLinkTarget(%q, %q) = %v, want ok %v", tt.link, tt.target, err, tt.ok)
			}
		})
	}
}
