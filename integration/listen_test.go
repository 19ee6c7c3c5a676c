package integration

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestListenAddresses starts one ferryd on an IPv4, an IPv6 and a Unix
// socket listener (repeated --listen), checks that each logs its bound
// address, and sends a file through each, including `--to unix:/path`
// and a bracketed IPv6 --to.
func TestListenAddresses(t *testing.T) {
	root := t.TempDir()
	sock := filepath.Join(t.TempDir(), "ferryd.sock")
	d := startDaemon(t, root, "--listen", "[::1]:0", "--listen", "unix:"+sock)
	addrs := map[string]string{} // kind → address as ferry --to takes it
	for i, n := 0, 0; n < 3; n++ {
		i = d.log.wait(i, "msg=listening", "addr=")
		if i < 0 {
			t.Fatalf("%d listening lines, want 3", n)
		}
		m := listeningAddr.FindStringSubmatch(d.log.snapshot()[i])
		if m == nil {
			t.Fatalf("no addr= in %q", d.log.snapshot()[i])
		}
		switch a := m[1]; {
		case strings.HasPrefix(a, "[::1]:"):
			addrs["ipv6"] = a
		case strings.HasPrefix(a, "127.0.0.1:"):
			addrs["ipv4"] = a
		case a == sock:
			addrs["unix"] = "unix:" + a
		default:
			t.Fatalf("unexpected listening address %q", a)
		}
		i++
	}
	for kind, to := range addrs {
		t.Run(kind, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), kind+".bin")
			writeRandom(t, src, 1<<20+3, 5)
			r := runFerry(t, sendArgs(to, src)...)
			wantCode(t, r, exitOK)
			rec := onlyRecord(t, r)
			checkCommitted(t, rec, src, filepath.Join(root, kind+".bin"))
		})
	}
	if len(addrs) != 3 {
		t.Fatalf("listeners %v, want ipv4, ipv6 and unix", addrs)
	}
}
