package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Tokens (issue 11): authentication, per-token permissions and resume
// bound to the token, on the real binaries.

// addToken runs `ferryd token add NAME FLAGS... --root ROOT` and returns
// a file holding the secret it printed, for ferry send --token-file.
func addToken(t *testing.T, root, name string, flags ...string) string {
	t.Helper()
	r := runFerryd(t, append(append([]string{"token", "add", name}, flags...), "--root", root)...)
	if r.code != exitOK {
		t.Fatalf("ferryd token add %s: %s", name, r)
	}
	secret := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(secret, "ferry_") || strings.Contains(secret, "\n") {
		t.Fatalf("token add printed %q, want the secret alone", r.stdout)
	}
	file := filepath.Join(t.TempDir(), name+".token")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// revokeToken revokes name and waits until the daemon has read the
// token file again.
func revokeToken(t *testing.T, d *daemon, root, name string) {
	t.Helper()
	from := d.mark()
	if r := runFerryd(t, "token", "revoke", name, "--root", root); r.code != exitOK {
		t.Fatalf("ferryd token revoke %s: %s", name, r)
	}
	d.waitLine(from, "tokens loaded")
}

// oneLine fails the test unless s is one non-empty line containing every
// substring.
func oneLine(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) != 1 || lines[0] == "" || !containsAll(lines[0], subs) {
		t.Errorf("%s: want one line with %q, got %q", what, subs, s)
	}
}

// TestTokenRefusals: with a token configured, a sender without a token,
// with a wrong one, and with a revoked one is refused with exit 3 and one
// line saying what to do; each failure is counted in
// ferry_auth_failures_total and logged with the address, never the secret.
func TestTokenRefusals(t *testing.T) {
	root := t.TempDir()
	good := addToken(t, root, "backup")
	d := startDaemon(t, root, "--metrics-listen", "127.0.0.1:0")
	maddr := loggedAddr(d.waitLine(0, "metrics listening"))
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 100<<10, 1)
	wrong := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrong, []byte("ferry_notthesecret\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	r := runFerry(t, "send", "--to", d.addr, src)
	wantCode(t, r, exitRefused)
	oneLine(t, "no token", r.stderr, "requires a token", "--token-file")

	r = runFerry(t, "send", "--to", d.addr, "--token-file", wrong, src)
	wantCode(t, r, exitRefused)
	oneLine(t, "wrong token", r.stderr, "token refused")

	r = runFerry(t, "send", "--to", d.addr, "--token-file", good, src)
	wantCode(t, r, exitOK)
	sameFile(t, src, filepath.Join(root, "data.bin"))
	d.waitLine(0, "msg=\"transfer started\"", "token=backup", "name=data.bin")
	d.waitLine(0, "msg=committed", "token=backup", "name=data.bin")

	revokeToken(t, d, root, "backup")
	r = runFerry(t, "send", "--to", d.addr, "--token-file", good, "--dest", "again", src)
	wantCode(t, r, exitRefused)
	oneLine(t, "revoked token", r.stderr, "token refused")

	fails := d.lines(0, "authentication failed")
	if len(fails) != 3 {
		t.Errorf("%d authentication failures logged, want 3", len(fails))
	}
	secret, _ := os.ReadFile(good)
	for _, l := range d.log.snapshot() {
		if strings.Contains(l, strings.TrimSpace(string(secret))) || strings.Contains(l, "notthesecret") {
			t.Errorf("a secret was logged: %s", l)
		}
	}
	for _, l := range fails {
		if !strings.Contains(l, "remote=127.0.0.1:") {
			t.Errorf("failure logged without the address: %s", l)
		}
	}
	if m := string(scrape(t, maddr)); !strings.Contains(m, "\nferry_auth_failures_total 3\n") {
		t.Errorf("ferry_auth_failures_total is not 3:\n%s", grepLines(m, "auth"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestTokenRevokedMidSession revokes a token while its large send crawls
// through a throttled proxy: the sender exits 3 saying the token was
// revoked, and the partial keeps its verified data, under the token.
func TestTokenRevokedMidSession(t *testing.T) {
	slow(t)
	root := t.TempDir()
	tok := addToken(t, root, "backup")
	d := startDaemon(t, root, "--sync-bytes", "256KiB")
	p := newProxy(t, d.addr)
	p.Throttle(512 << 10)
	src := filepath.Join(t.TempDir(), "big.bin")
	writeRandom(t, src, 32<<20, 2)
	f := startFerry(t, "send", "--to", p.Addr(), "--token-file", tok, "--backoff", "50ms", src)
	if err := p.WaitBytes(testContext(t), 1<<20); err != nil {
		t.Fatal(err)
	}
	revokeToken(t, d, root, "backup")
	r := f.wait()
	wantCode(t, r, exitRefused)
	oneLine(t, "revoked mid-session", r.stderr, "revoked")
	parts := listPartials(t, root)
	if len(parts) != 1 || parts[0].Token != "backup" || parts[0].Name != "big.bin" || parts[0].DurableOffset == 0 {
		t.Fatalf("partials after the revocation: %+v, want big.bin of token backup with durable data", parts)
	}
}

// TestTokenPrefix: a token confined to hosts/web1 writes below it, its
// --dest is relative to it, and --dest ../x cannot leave it.
func TestTokenPrefix(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	tok := addToken(t, root, "web1", "--dest", "hosts/web1")
	d := startDaemon(t, root)
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 70<<10, 3)
	wantCode(t, runFerry(t, "send", "--to", d.addr, "--token-file", tok, src), exitOK)
	sameFile(t, src, filepath.Join(root, "hosts", "web1", "data.bin"))
	wantCode(t, runFerry(t, "send", "--to", d.addr, "--token-file", tok, "--dest", "sub/dir", src), exitOK)
	sameFile(t, src, filepath.Join(root, "hosts", "web1", "sub", "dir", "data.bin"))
	for _, dest := range []string{"../x", "../../x", "sub/../../x", "/etc"} {
		r := runFerry(t, "send", "--to", d.addr, "--token-file", tok, "--dest", dest, src)
		if r.code != exitRefused && r.code != exitUsage {
			t.Errorf("--dest %s: exit %d, want 3 (or 2)\n%s", dest, r.code, r)
		}
	}
	for _, p := range []string{filepath.Join(root, "x"), filepath.Join(root, "hosts", "x"), filepath.Join(filepath.Dir(root), "x"), filepath.Join(root, "data.bin")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s exists: a confined token wrote outside its prefix", p)
		}
	}
}

// TestTokenLimits: --max-size and --quota refuse at admission with exit
// 3 and a reason; the quota counts committed bytes across a restart.
func TestTokenLimits(t *testing.T) {
	root := t.TempDir()
	small := addToken(t, root, "small", "--max-size", "64KiB")
	quota := addToken(t, root, "quota", "--quota", "300KiB", "--dest", "q")
	d := startDaemon(t, root)
	dir := t.TempDir()
	src := filepath.Join(dir, "a.bin")
	writeRandom(t, src, 100<<10, 4)

	r := runFerry(t, "send", "--to", d.addr, "--token-file", small, src)
	wantCode(t, r, exitRefused)
	oneLine(t, "max-size", r.stderr, "above token small's limit", "--max-size")
	if _, err := os.Stat(filepath.Join(root, "a.bin")); !os.IsNotExist(err) {
		t.Error("a file above the token's max size was written")
	}

	wantCode(t, runFerry(t, "send", "--to", d.addr, "--token-file", quota, src), exitOK)
	b := filepath.Join(dir, "b.bin")
	writeRandom(t, b, 150<<10, 5)
	wantCode(t, runFerry(t, "send", "--to", d.addr, "--token-file", quota, b), exitOK)
	c := filepath.Join(dir, "c.bin")
	writeRandom(t, c, 60<<10, 6)
	r = runFerry(t, "send", "--to", d.addr, "--token-file", quota, c)
	wantCode(t, r, exitRefused)
	oneLine(t, "quota", r.stderr, "quota")
	if code := d.term(); code != 0 {
		t.Fatalf("ferryd exited %d", code)
	}
	d = startDaemon(t, root)
	r = runFerry(t, "send", "--to", d.addr, "--token-file", quota, c)
	wantCode(t, r, exitRefused)
	oneLine(t, "quota after a restart", r.stderr, "quota")
	list := runFerryd(t, "token", "list", "--root", root, "--json")
	var toks []struct {
		Name           string  `json:"name"`
		Quota          int64   `json:"quota"`
		CommittedBytes int64   `json:"committed_bytes"`
		LastUsed       *string `json:"last_used"`
	}
	if err := json.Unmarshal([]byte(list.stdout), &toks); err != nil {
		t.Fatalf("token list --json: %v\n%s", err, list)
	}
	if len(toks) != 2 || toks[1].Name != "quota" || toks[1].CommittedBytes != 250<<10 || toks[1].LastUsed == nil {
		t.Errorf("token list: %+v, want quota with 256000 committed bytes and a last use", toks)
	}
	if strings.Contains(list.stdout, "ferry_") {
		t.Error("token list shows a secret")
	}
}

// TestTokenQuotaUpdate: a file a token replaces with --update counts
// only what it adds to the token's quota (its size less the replaced
// file's): a token at its quota replaces a file with one of the same
// size, and one larger than its room is refused with exit 3. The totals
// after each commit, after an interrupted replacement and after a refused
// one are what the files hold.
func TestTokenQuotaUpdate(t *testing.T) {
	root := t.TempDir()
	quota := addToken(t, root, "quota", "--quota", "300KiB", "--overwrite")
	d := startDaemon(t, root)
	dir := t.TempDir()
	a, b, c, e := filepath.Join(dir, "a.bin"), filepath.Join(dir, "b.bin"), filepath.Join(dir, "c.bin"), filepath.Join(dir, "e.bin")
	send := func(extra ...string) result {
		t.Helper()
		return runFerry(t, append([]string{"send", "--to", d.addr, "--token-file", quota}, extra...)...)
	}

	writeRandom(t, a, 200<<10, 20)
	wantCode(t, send(a), exitOK)
	writeRandom(t, a, 200<<10, 21) // 200 KiB committed: replacing it with 200 KiB adds nothing
	wantCode(t, send("--update", a), exitOK)
	sameFile(t, a, filepath.Join(root, "a.bin"))

	// A replacement cut short leaves its partial, which adds nothing
	// either, and the committed total as it was.
	writeRandom(t, a, 200<<10, 22)
	p := newProxy(t, d.addr)
	p.CutAfter(100 << 10)
	from := d.mark()
	wantCode(t, runFerry(t, "send", "--to", p.Addr(), "--token-file", quota, "--retries", "0", "--update", a), exitFailed)
	d.waitLine(from, "transfer interrupted", "token=quota")

	writeRandom(t, b, 100<<10, 25) // 200 + 100: at the quota
	wantCode(t, send(b), exitOK)

	writeRandom(t, a, 250<<10, 23) // 300 - 200 + 250
	r := send("--update", a)
	wantCode(t, r, exitRefused)
	oneLine(t, "quota of a larger replacement", r.stderr, "token quota's quota", "offered to replace a file of 204800 (51200 more)",
		"exceed its quota of 307200 bytes", "--quota")

	writeRandom(t, a, 150<<10, 24) // 300 - 200 + 150
	wantCode(t, send("--update", a), exitOK)
	sameFile(t, a, filepath.Join(root, "a.bin"))
	writeRandom(t, c, 50<<10, 26) // 250 + 50: at the quota again
	wantCode(t, send(c), exitOK)
	writeRandom(t, e, 1, 27)
	r = send(e)
	wantCode(t, r, exitRefused)
	oneLine(t, "quota", r.stderr, "307200 bytes committed or held by its partials, and 1 offered")

	if code := d.term(); code != 0 {
		t.Fatalf("ferryd exited %d", code)
	}
	list := runFerryd(t, "token", "list", "--root", root, "--json")
	var toks []struct {
		Name           string `json:"name"`
		CommittedBytes int64  `json:"committed_bytes"`
	}
	if err := json.Unmarshal([]byte(list.stdout), &toks); err != nil {
		t.Fatalf("token list --json: %v\n%s", err, list)
	}
	if len(toks) != 1 || toks[0].CommittedBytes != 300<<10 {
		t.Errorf("token list: %+v, want 307200 committed bytes (a.bin 150 KiB, b.bin 100 KiB, c.bin 50 KiB)", toks)
	}
}

// TestTokenUpdateNeedsOverwrite: only a token with --overwrite may
// replace a committed file with --update.
func TestTokenUpdateNeedsOverwrite(t *testing.T) {
	root := t.TempDir()
	plain := addToken(t, root, "plain")
	over := addToken(t, root, "over", "--overwrite")
	d := startDaemon(t, root)
	src := filepath.Join(t.TempDir(), "data.bin")
	writeRandom(t, src, 80<<10, 7)
	wantCode(t, runFerry(t, "send", "--to", d.addr, "--token-file", plain, src), exitOK)
	old, _ := os.ReadFile(src)
	writeRandom(t, src, 90<<10, 8)
	r := runFerry(t, "send", "--to", d.addr, "--token-file", plain, "--update", src)
	wantCode(t, r, exitRefused)
	oneLine(t, "update without --overwrite", r.stderr, "may not replace files", "--overwrite")
	if got, _ := os.ReadFile(filepath.Join(root, "data.bin")); !bytes.Equal(got, old) {
		t.Fatal("a token without --overwrite replaced a committed file")
	}
	wantCode(t, runFerry(t, "send", "--to", d.addr, "--token-file", over, "--update", src), exitOK)
	sameFile(t, src, filepath.Join(root, "data.bin"))
}

// TestTokenResumeBound: a partial started by token a is not resumed by
// token b, which starts its own transfer from 0; a later resumes its own.
func TestTokenResumeBound(t *testing.T) {
	slow(t)
	root := t.TempDir()
	a := addToken(t, root, "a")
	b := addToken(t, root, "b")
	d := startDaemon(t, root, "--sync-bytes", "256KiB")
	src := filepath.Join(t.TempDir(), "big.bin")
	size := int64(8 << 20)
	writeRandom(t, src, size, 9)

	p := newProxy(t, d.addr)
	p.CutAfter(4 << 20)
	wantCode(t, runFerry(t, "send", "--to", p.Addr(), "--token-file", a, "--retries", "0", "--chunk-size", "256KiB", src), exitFailed)
	d.waitLine(0, "transfer interrupted", "token=a")
	parts := listPartials(t, root)
	if len(parts) != 1 || parts[0].Token != "a" || parts[0].DurableOffset == 0 {
		t.Fatalf("partials after a's cut: %+v", parts)
	}
	durableA := parts[0].DurableOffset

	from := d.mark()
	p2 := newProxy(t, d.addr)
	p2.CutAfter(1 << 20)
	wantCode(t, runFerry(t, "send", "--to", p2.Addr(), "--token-file", b, "--retries", "0", "--chunk-size", "256KiB", src), exitFailed)
	if l := d.waitLine(from, "transfer started", "token=b"); !strings.Contains(l, "resumed_from=0") {
		t.Errorf("b did not start its own transfer: %s", l)
	}
	parts = listPartials(t, root)
	if len(parts) != 2 {
		t.Fatalf("partials after b's cut: %+v, want a's and b's", parts)
	}
	for _, p := range parts {
		if p.Token == "a" && p.DurableOffset != durableA {
			t.Errorf("b's send changed a's partial: durable offset %d, was %d", p.DurableOffset, durableA)
		}
	}

	r := runFerry(t, sendArgs(d.addr, "--token-file", a, src)...)
	wantCode(t, r, exitOK)
	rec := onlyRecord(t, r)
	if rec.ResumedFrom != durableA {
		t.Errorf("a resumed from %d, want its durable offset %d", rec.ResumedFrom, durableA)
	}
	checkCommitted(t, rec, src, filepath.Join(root, "big.bin"))
}

// TestTokenFileGroupReadable: ferryd refuses to start (exit 2, one line)
// with a token file group or others may read.
func TestTokenFileGroupReadable(t *testing.T) {
	root := t.TempDir()
	addToken(t, root, "backup")
	file := filepath.Join(root, ".ferry", "tokens")
	if err := os.Chmod(file, 0o640); err != nil {
		t.Fatal(err)
	}
	r := runFerryd(t, "--root", root, "--listen", "127.0.0.1:0")
	if r.code != exitUsage {
		t.Fatalf("ferryd exited %d, want 2\n%s", r.code, r)
	}
	oneLine(t, "group-readable token file", r.stderr, "chmod 600")
}

// TestPublicListenerNeedsTokens: a listener that is not loopback without
// tokens makes ferryd refuse to start (exit 2, one line saying how to add
// a token), unless --allow-anonymous; with a token it starts.
func TestPublicListenerNeedsTokens(t *testing.T) {
	root := t.TempDir()
	r := runFerryd(t, "--root", root, "--listen", "0.0.0.0:0")
	if r.code != exitUsage {
		t.Fatalf("ferryd exited %d, want 2\n%s", r.code, r)
	}
	oneLine(t, "public listener without tokens", r.stderr, "not loopback", "ferryd token add NAME")
	d := startDaemonEnv(t, nil, "--root", root, "--listen", "0.0.0.0:0", "--allow-anonymous")
	if code := d.term(); code != 0 {
		t.Errorf("ferryd --allow-anonymous exited %d", code)
	}
	d = startDaemonEnv(t, []string{"FERRY_ALLOW_ANONYMOUS=1"}, "--root", root, "--listen", "0.0.0.0:0")
	if code := d.term(); code != 0 {
		t.Errorf("ferryd with FERRY_ALLOW_ANONYMOUS exited %d", code)
	}
	addToken(t, root, "backup")
	d = startDaemonEnv(t, nil, "--root", root, "--listen", "0.0.0.0:0")
	if code := d.term(); code != 0 {
		t.Errorf("ferryd with a token exited %d", code)
	}
}
