package layers

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ferry-dev/ferry"

// deps returns the non-standard packages pkg and its tests import,
// transitively.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-test", "-json=ImportPath,Standard", pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	var all []string
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath string
			Standard   bool
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		path, _, _ := strings.Cut(p.ImportPath, " ") // "pkg [pkg.test]" is pkg built for its tests
		if !p.Standard && path != pkg && path != pkg+".test" {
			all = append(all, path)
		}
	}
	return all
}

func TestLayers(t *testing.T) {
	tests := []struct {
		name    string
		pkg     string
		allowed func(dep string) bool
	}{
		{"transfer imports only the stdlib and BLAKE3", module + "/transfer", func(d string) bool {
			return strings.HasPrefix(d, "github.com/zeebo/blake3") || strings.HasPrefix(d, "lukechampine.com/blake3") || strings.HasPrefix(d, "github.com/klauspost/cpuid") ||
				strings.HasPrefix(d, "golang.org/x/sys") || d == module+"/internal/b3x"
		}},
		{"daemon imports no CLI, UI or cmd package", module + "/daemon", func(d string) bool {
			return !strings.HasPrefix(d, module+"/cmd") && !strings.Contains(d, "urfave/cli") &&
				!strings.Contains(d, "cheggaaa/pb") && !strings.HasPrefix(d, module+"/integration")
		}},
		{"integration imports no ferry package but the fault proxy and the S3 gateway harness", module + "/integration", func(d string) bool {
			return !strings.HasPrefix(d, module) || d == module+"/internal/faultproxy" || d == module+"/internal/versitygw"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, d := range deps(t, tt.pkg) {
				if !tt.allowed(d) {
					t.Errorf("%s imports %s", tt.pkg, d)
				}
			}
		})
	}
}
