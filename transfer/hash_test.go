package transfer

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func randomData(n int, seed uint64) []byte {
	var s [32]byte
	s[0] = byte(seed)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// TestHashBytesIsB3sum pins the hash to what b3sum prints.
func TestHashBytesIsB3sum(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
		{"abc", "abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := HashBytes([]byte(tt.in))
			if got := fmt.Sprintf("%x", h); got != tt.want {
				t.Fatalf("HashBytes(%q) = %s, want %s", tt.in, got, tt.want)
			}
			h2, err := HashReader(strings.NewReader(tt.in))
			if err != nil || h2 != h {
				t.Fatalf("HashReader = %x, %v", h2, err)
			}
		})
	}
}
