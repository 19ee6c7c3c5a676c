package auth

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
	"unicode/utf8"
)

// FileVersion is the version of the token file format Encode writes and
// Parse reads.
const FileVersion = 1

// SecretPrefix starts every secret NewSecret makes, so that a leaked
// secret is recognisable (secret scanners, logs).
const SecretPrefix = "ferry_"

// secretBytes is the entropy of a secret: 160 bits.
const secretBytes = 20

// MaxNameLen is the longest token name in bytes.
const MaxNameLen = 64

// MaxSecretLen is the longest secret a sender may present, in bytes.
const MaxSecretLen = 256

// Token is one token: its name, the SHA-256 of its secret, and its
// permissions. The zero values of the limits mean no limit.
type Token struct {
	// Name names the token in logs, `ferryd token list` and partials:
	// 1 to MaxNameLen bytes of ASCII letters, digits, '.', '_' and '-',
	// not starting with '.' or '-'.
	Name string
	// Hash is the SHA-256 of the secret (HashSecret).
	Hash [sha256.Size]byte
	// Created is when the token was added (UTC, second precision).
	Created time.Time
	// Dest confines the token to ROOT/Dest: the names it sends are
	// relative to it. "" means the whole root. Otherwise a clean,
	// relative, slash-separated path (CheckDest).
	Dest string
	// MaxSize is the largest file in bytes the token may send; 0: no
	// limit but the daemon's.
	MaxSize int64
	// Quota bounds the bytes the token's committed files and partials
	// hold; 0: no quota.
	Quota int64
	// Overwrite lets the token replace a committed file (ferry send
	// --update).
	Overwrite bool
}

// ID is a short public identifier of the token's secret (the first 16
// hex digits of its hash): usage is recorded under it, so that a token
// revoked and added again under the same name starts afresh.
func (t *Token) ID() string { return hex.EncodeToString(t.Hash[:8]) }

// ErrBadFile is returned by Parse for a token file that does not decode
// or holds an invalid token.
var ErrBadFile = errors.New("bad token file")

// fileJSON and tokenJSON are the file's JSON layout.
type fileJSON struct {
	Version int         `json:"version"`
	Tokens  []tokenJSON `json:"tokens"`
}

type tokenJSON struct {
	Name      string    `json:"name"`
	SHA256    string    `json:"sha256"`
	Created   time.Time `json:"created"`
	Dest      string    `json:"dest,omitempty"`
	MaxSize   int64     `json:"max_size"`
	Quota     int64     `json:"quota"`
	Overwrite bool      `json:"overwrite"`
}

// Parse decodes a token file. An empty file (or one of white space only)
// holds no tokens. It returns an error wrapping ErrBadFile for anything
// else that is not a version 1 file of valid tokens with distinct names
// and distinct hashes.
func Parse(b []byte) ([]Token, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, nil
	}
	var f fileJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrBadFile)
	}
	if f.Version != FileVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadFile, f.Version, FileVersion)
	}
	out := make([]Token, 0, len(f.Tokens))
	names := make(map[string]bool, len(f.Tokens))
	hashes := make(map[[sha256.Size]byte]bool, len(f.Tokens))
	for i, tj := range f.Tokens {
		t := Token{Name: tj.Name, Created: tj.Created.UTC().Truncate(time.Second), Dest: tj.Dest,
			MaxSize: tj.MaxSize, Quota: tj.Quota, Overwrite: tj.Overwrite}
		h, err := hex.DecodeString(tj.SHA256)
		if err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("%w: token %d: sha256 is not 64 hex digits", ErrBadFile, i+1)
		}
		copy(t.Hash[:], h)
		if err := t.check(); err != nil {
			return nil, fmt.Errorf("%w: token %d: %v", ErrBadFile, i+1, err)
		}
		if names[t.Name] || hashes[t.Hash] {
			return nil, fmt.Errorf("%w: token %d: name or hash repeated", ErrBadFile, i+1)
		}
		names[t.Name], hashes[t.Hash] = true, true
		out = append(out, t)
	}
	return out, nil
}

// check reports an invalid token.
func (t *Token) check() error {
	if err := CheckName(t.Name); err != nil {
		return err
	}
	if err := CheckDest(t.Dest); err != nil {
		return err
	}
	if t.MaxSize < 0 || t.Quota < 0 {
		return fmt.Errorf("token %s: negative limit", t.Name)
	}
	if t.Created.Year() < 1 || t.Created.Year() > 9999 {
		return fmt.Errorf("token %s: creation time out of range", t.Name)
	}
	return nil
}

// Encode returns the token file holding tokens, which Parse reads back
// as they are (creation times are kept to the second, in UTC).
func Encode(tokens []Token) []byte {
	f := fileJSON{Version: FileVersion, Tokens: make([]tokenJSON, 0, len(tokens))}
	for _, t := range tokens {
		f.Tokens = append(f.Tokens, tokenJSON{Name: t.Name, SHA256: hex.EncodeToString(t.Hash[:]),
			Created: t.Created.UTC().Truncate(time.Second), Dest: t.Dest, MaxSize: t.MaxSize, Quota: t.Quota, Overwrite: t.Overwrite})
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		panic("bug: encoding tokens: " + err.Error()) // plain strings, numbers and times always encode
	}
	return append(b, '\n')
}

// CheckName reports whether name is a valid token name (see Token.Name).
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("token name %q: want 1 to %d characters", name, MaxNameLen)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' ||
			(r == '.' || r == '-') && i > 0
		if !ok {
			return fmt.Errorf("token name %q: use letters, digits, '.', '_' and '-' (not first)", name)
		}
	}
	return nil
}

// CheckDest reports whether dest is a valid token prefix: "" or a clean,
// relative, slash-separated path without ".." or "." components, empty
// components, control characters or a backslash, whose first component is
// not ".ferry". The daemon further resolves it under the root without
// following symlinks out of it.
func CheckDest(dest string) error {
	if dest == "" {
		return nil
	}
	if len(dest) > 1024 || !utf8.ValidString(dest) || strings.ContainsAny(dest, "\\\x00") || path.IsAbs(dest) {
		return fmt.Errorf("prefix %q: want a relative path below the root", dest)
	}
	for _, r := range dest {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || r == utf8.RuneError {
			return fmt.Errorf("prefix %q: control character", dest)
		}
	}
	for c := range strings.SplitSeq(dest, "/") {
		if c == "" || c == "." || c == ".." || len(c) > 255 {
			return fmt.Errorf("prefix %q: want a relative path below the root, without empty, . or .. components", dest)
		}
	}
	if first, _, _ := strings.Cut(dest, "/"); first == ".ferry" {
		return fmt.Errorf("prefix %q: .ferry is the daemon's own directory", dest)
	}
	return nil
}

// NewSecret returns a new secret of 160 random bits from crypto/rand:
// SecretPrefix and 32 lowercase base32 digits.
func NewSecret() (string, error) {
	var b [secretBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return SecretPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])), nil
}

// HashSecret returns the SHA-256 of secret, as the token file stores it.
func HashSecret(secret string) [sha256.Size]byte { return sha256.Sum256([]byte(secret)) }

// Match returns the token whose hash is secret's, or nil. It compares
// secret's hash with every token's in constant time (crypto/subtle) and
// looks at all of them, whichever matches.
func Match(tokens []Token, secret string) *Token {
	h := HashSecret(secret)
	var found *Token
	for i := range tokens {
		if subtle.ConstantTimeCompare(h[:], tokens[i].Hash[:]) == 1 {
			found = &tokens[i]
		}
	}
	return found
}

// Find returns the token named name, or nil.
func Find(tokens []Token, name string) *Token {
	for i := range tokens {
		if tokens[i].Name == name {
			return &tokens[i]
		}
	}
	return nil
}
