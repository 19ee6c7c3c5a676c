package integration

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// update rewrites golden files from the output of this run (restic's
// -update): go test ./integration -run Golden -update
var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// seconds matches the fields of --json records that differ from run to
// run: a file's seconds, the summary's seconds and rate.
var seconds = regexp.MustCompile(`"(seconds|rate)":[0-9.eE+-]+`)

// normalizeJSON makes ferry's --json output comparable across runs: the
// elapsed seconds and the rate become 0 and the local source directory becomes $SRC.
func normalizeJSON(out, srcDir string) string {
	out = seconds.ReplaceAllString(out, `"$1":0`)
	return strings.ReplaceAll(out, srcDir, "$SRC")
}

// TestJSONRecordsGolden pins ferry send --json: a fresh tree (committed),
// the same tree again (already committed, nothing sent), and another file
// under a taken name (refused), each record as it is printed.
func TestJSONRecordsGolden(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	srcDir := t.TempDir()
	tree := filepath.Join(srcDir, "tree")
	other := filepath.Join(srcDir, "other")
	for _, dir := range []string{tree, other} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "a.txt"), []byte("alpha\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, filepath.Join(tree, "b.bin"), 2<<20+5, 11)
	if err := os.WriteFile(filepath.Join(other, "a.txt"), []byte("another alpha\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runs := []struct {
		name string
		args []string
	}{
		{"fresh tree", []string{"send", "--to", d.addr, "--json", tree}},
		{"same tree again", []string{"send", "--to", d.addr, "--json", tree}},
		{"same tree again, --checksum", []string{"send", "--to", d.addr, "--json", "--checksum", tree}},
		{"taken name", []string{"send", "--to", d.addr, "--json", "--dest", "tree", filepath.Join(other, "a.txt")}},
	}
	var got strings.Builder
	for _, r := range runs {
		res := runFerry(t, r.args...)
		fmt.Fprintf(&got, "# %s: exit %d\n%s", r.name, res.code, normalizeJSON(res.stdout, srcDir))
	}
	golden := filepath.Join("testdata", "send_json.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got.String() != string(want) {
		t.Errorf("--json output differs from %s (run with -update if the change is intended)\ngot:\n%s\nwant:\n%s", golden, got.String(), want)
	}
}
