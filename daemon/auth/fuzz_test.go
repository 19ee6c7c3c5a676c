package auth

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzParseTokens checks that Parse never panics and that whatever it
// accepts re-encodes to a file that parses to the same tokens.
func FuzzParseTokens(f *testing.F) {
	now := time.Date(2026, 11, 30, 5, 20, 7, 0, time.UTC)
	f.Add(Encode([]Token{{Name: "backup", Hash: HashSecret("x"), Created: now, Dest: "hosts/web1", MaxSize: 1, Quota: 2, Overwrite: true}}))
	f.Add(Encode(nil))
	f.Add([]byte(""))
	f.Add([]byte(`{"version":1,"tokens":[{"name":"a","sha256":"` + strings.Repeat("0", 64) + `","created":"0001-01-01T00:00:00Z","dest":"../x"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tokens, err := Parse(b)
		if err != nil {
			return
		}
		again, err := Parse(Encode(tokens))
		if err != nil {
			t.Fatalf("re-encoded tokens do not parse: %v", err)
		}
		if len(tokens) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(again, tokens) {
			t.Fatalf("round trip: %+v, want %+v", again, tokens)
		}
		for _, tk := range tokens {
			if CheckDest(tk.Dest) != nil || CheckName(tk.Name) != nil {
				t.Fatalf("accepted an invalid token %+v", tk)
			}
		}
	})
}
