package auth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Usage is what the daemon records about one token as it is used: when it
// last authenticated a session and how many bytes of files it committed
// (for its Quota). The daemon keeps these in ROOT/.ferry/token-usage,
// keyed by Token.ID, rewritten at most once a second and without an fsync:
// best-effort, so a crash may lose the last second of it.
type Usage struct {
	LastUsed       time.Time `json:"last_used,omitzero"`
	CommittedBytes int64     `json:"committed_bytes"`
}

type usageJSON struct {
	Version int              `json:"version"`
	Tokens  map[string]Usage `json:"tokens"`
}

// ParseUsage decodes a usage file; an empty one records nothing.
func ParseUsage(b []byte) (map[string]Usage, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return map[string]Usage{}, nil
	}
	var u usageJSON
	if err := json.Unmarshal(b, &u); err != nil {
		return nil, fmt.Errorf("decoding token usage: %w", err)
	}
	if u.Version != 1 {
		return nil, fmt.Errorf("decoding token usage: version %d, want 1", u.Version)
	}
	if u.Tokens == nil {
		u.Tokens = map[string]Usage{}
	}
	return u.Tokens, nil
}

// EncodeUsage returns the usage file for u.
func EncodeUsage(u map[string]Usage) []byte {
	b, err := json.Marshal(usageJSON{Version: 1, Tokens: u})
	if err != nil {
		panic("bug: encoding token usage: " + err.Error())
	}
	return append(b, '\n')
}
