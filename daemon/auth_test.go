package daemon_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/auth"
	"github.com/ferry-dev/ferry/transfer"
)

// newAuthServer starts a server whose token file holds the tokens given,
// each with the secret "secret-NAME".
func newAuthServer(t *testing.T, anonymous bool, tokens ...auth.Token) (*testServer, string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "tokens")
	for i := range tokens {
		tokens[i].Hash = auth.HashSecret("secret-" + tokens[i].Name)
		tokens[i].Created = time.Unix(0, 0).UTC()
	}
	if err := os.WriteFile(file, auth.Encode(tokens), 0o600); err != nil {
		t.Fatal(err)
	}
	return newServer(t, daemon.Config{TokenFile: file, AllowAnonymous: anonymous, TokenPoll: 10 * time.Millisecond}), file
}

func handshakeErr(s *testServer, t *testing.T, token string) error {
	t.Helper()
	c, err := transfer.Handshake(context.Background(), s.dial(t), transfer.ClientOptions{ChunkSize: testChunk, Token: token})
	if err == nil {
		c.Close()
	}
	return err
}

func TestAuthenticate(t *testing.T) {
	s, _ := newAuthServer(t, true, auth.Token{Name: "a"})
	for _, tt := range []struct {
		name, token string
		ok          bool
	}{
		{"valid token", "secret-a", true},
		{"no token", "", false},
		{"wrong token", "secret-b", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := handshakeErr(s, t, tt.token)
			if tt.ok != (err == nil) || err != nil && !errors.Is(err, transfer.ErrUnauthorized) {
				t.Fatalf("Handshake = %v, want ok %v or ErrUnauthorized", err, tt.ok)
			}
		})
	}
}

func TestAnonymousOnlyWithoutTokens(t *testing.T) {
	s, _ := newAuthServer(t, true)
	if err := handshakeErr(s, t, ""); err != nil {
		t.Fatalf("anonymous refused with no tokens and AllowAnonymous: %v", err)
	}
	if err := handshakeErr(s, t, "secret-x"); !errors.Is(err, transfer.ErrUnauthorized) {
		t.Fatalf("an unknown token was let in: %v", err)
	}
	s, _ = newAuthServer(t, false)
	if err := handshakeErr(s, t, ""); !errors.Is(err, transfer.ErrUnauthorized) || !strings.Contains(err.Error(), "ferryd token add") {
		t.Fatalf("anonymous let in without AllowAnonymous: %v", err)
	}
}

// TestAuthFailuresLimited: after a burst of failures from one address,
// even the right token is refused for a while.
func TestAuthFailuresLimited(t *testing.T) {
	s, _ := newAuthServer(t, false, auth.Token{Name: "a"})
	for range 10 {
		if err := handshakeErr(s, t, "wrong"); !errors.Is(err, transfer.ErrUnauthorized) {
			t.Fatalf("wrong token: %v", err)
		}
	}
	err := handshakeErr(s, t, "secret-a")
	if !errors.Is(err, transfer.ErrUnauthorized) || !strings.Contains(err.Error(), "too many failed authentications") {
		t.Fatalf("after 10 failures: %v, want a refusal for too many failures", err)
	}
}

// TestRevokeEndsSession: a token removed from the file ends its open
// session (ErrUnauthorized on the next wait), and other tokens' sessions
// go on.
func TestRevokeEndsSession(t *testing.T) {
	s, file := newAuthServer(t, false, auth.Token{Name: "a"}, auth.Token{Name: "b"})
	ca, err := transfer.Handshake(context.Background(), s.dial(t), transfer.ClientOptions{ChunkSize: testChunk, Token: "secret-a"})
	if err != nil {
		t.Fatal(err)
	}
	cb, err := transfer.Handshake(context.Background(), s.dial(t), transfer.ClientOptions{ChunkSize: testChunk, Token: "secret-b"})
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.Revoke(file, "a"); err != nil {
		t.Fatal(err)
	}
	s.ReloadTokens()
	data := randomData(3*testChunk, 1)
	if _, err := ca.Send(context.Background(), source(data), "a.bin", transfer.SendOptions{}); !errors.Is(err, transfer.ErrUnauthorized) {
		t.Fatalf("send on a revoked token's session: %v, want ErrUnauthorized", err)
	}
	res, err := cb.Send(context.Background(), source(data), "b.bin", transfer.SendOptions{})
	if err != nil {
		t.Fatalf("send on another token's session: %v", err)
	}
	s.checkCommitted(t, "b.bin", data, res)
}

// TestTokenPrefixJoin: a token with a prefix writes below it, another
// without one at the root.
func TestTokenPrefixJoin(t *testing.T) {
	s, _ := newAuthServer(t, false, auth.Token{Name: "a", Dest: "pa"}, auth.Token{Name: "b"})
	data := randomData(2*testChunk, 2)
	for _, tok := range []string{"a", "b"} {
		c, err := transfer.Handshake(context.Background(), s.dial(t), transfer.ClientOptions{ChunkSize: testChunk, Token: "secret-" + tok})
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.Send(context.Background(), source(data), "f.bin", transfer.SendOptions{})
		if err != nil {
			t.Fatal(err)
		}
		name := "f.bin"
		if tok == "a" {
			name = "pa/f.bin"
		}
		s.checkCommitted(t, name, data, res)
	}
}

// TestTokenPrefixEntries: directories and symbolic links a token sends
// are confined to its prefix as its files are; a link may not lead out of
// the prefix either (a review found entries joined no prefix: a confined
// token could chmod any directory of the root).
func TestTokenPrefixEntries(t *testing.T) {
	s, _ := newAuthServer(t, false, auth.Token{Name: "a", Dest: "pa"})
	if err := os.Mkdir(filepath.Join(s.root, "other"), 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := transfer.Handshake(context.Background(), s.dial(t), transfer.ClientOptions{ChunkSize: testChunk, Token: "secret-a"})
	if err != nil {
		t.Fatal(err)
	}
	errs, err := c.SendEntries(context.Background(), []*transfer.Entry{
		{Kind: transfer.EntryDir, Mode: 0o700, Name: "other"},
		{Kind: transfer.EntrySymlink, Name: "l", Target: "other"},
		{Kind: transfer.EntrySymlink, Name: "out", Target: "../other"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], transfer.ErrBadName) {
		t.Fatalf("entries: %v, want made, made, refused as a bad name", errs)
	}
	if fi, err := os.Stat(filepath.Join(s.root, "other")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the root's own directory: %v %v, want untouched (0755)", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(s.root, "pa", "other")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("pa/other: %v %v, want made with mode 0700", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(s.root, "out")); err == nil {
		t.Error("a link was made at the root")
	}
	if _, err := os.Lstat(filepath.Join(s.root, "pa", "out")); err == nil {
		t.Error("pa/out, a link out of the prefix, was made")
	}
}
