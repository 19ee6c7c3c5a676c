package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedCertificate: the key is made once, 0600, and kept: a
// second start, a lost certificate and ReadGeneratedCertificate all give
// the same fingerprint; a key readable by others is refused.
func TestGeneratedCertificate(t *testing.T) {
	dir := t.TempDir()
	fsys, err := OpenOSFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	if _, err := ReadGeneratedCertificate(fsys); !os.IsNotExist(err) {
		t.Fatalf("ReadGeneratedCertificate before any: %v, want not exist", err)
	}
	c1, err := GeneratedCertificate(fsys)
	if err != nil {
		t.Fatal(err)
	}
	fp := c1.Fingerprint()
	if !strings.HasPrefix(fp, "SHA256:") || len(fp) != len("SHA256:")+43 {
		t.Fatalf("fingerprint %q", fp)
	}
	for _, f := range []string{tlsKeyFile, tlsCertFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", f, fi, err)
		}
	}
	c2, err := GeneratedCertificate(fsys)
	if err != nil || c2.Fingerprint() != fp {
		t.Fatalf("second start: %v, %v; want %s", c2, err, fp)
	}
	if err := os.Remove(filepath.Join(dir, tlsCertFile)); err != nil {
		t.Fatal(err)
	}
	c3, err := GeneratedCertificate(fsys)
	if err != nil || c3.Fingerprint() != fp {
		t.Fatalf("after losing cert.pem: %v; want the same key's %s", err, fp)
	}
	c4, err := ReadGeneratedCertificate(fsys)
	if err != nil || c4.Fingerprint() != fp {
		t.Fatalf("ReadGeneratedCertificate: %v", err)
	}
	if err := os.Chmod(filepath.Join(dir, tlsKeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := GeneratedCertificate(fsys); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key: %v, want a refusal saying chmod 600", err)
	}
}
