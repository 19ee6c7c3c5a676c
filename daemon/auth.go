package daemon

import (
	"fmt"
	"path"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferry-dev/ferry/daemon/auth"
	"github.com/ferry-dev/ferry/transfer"
)

// Authentication and per-token limits (issue 11). The token file (package
// auth) is read at NewServer and polled for changes (inode, size, mtime)
// every TokenPoll; a token gone from it ends its sessions at once. What a
// token has committed and when it was last used are kept in memory and
// written to ROOT/.ferry/token-usage at most once per TokenPoll, without
// an fsync: best-effort, so that a session costs no fsync for them.

// usageFile holds the tokens' usage, relative to the root.
var usageFile = path.Join(transfer.ReservedDir, "token-usage")

// Bounds of the failed-authentication limiter: per remote address, a
// burst of authFailBurst failures, then one per authFailEvery; at most
// maxAuthLimiters addresses are tracked (beyond, the map starts afresh).
const (
	authFailBurst   = 10
	authFailEvery   = time.Second
	maxAuthLimiters = 4096
)

// authState is a Server's view of its token file. Safe for concurrent use.
type authState struct {
	file string

	mu       sync.Mutex
	tokens   []auth.Token
	stamp    auth.Stamp
	limiters map[string]*rate.Limiter   // failed authentications by remote address
	usage    map[string]auth.Usage      // by Token.ID
	dirty    bool                       // usage changed since it was written
	reserved map[string]map[string]held // token name → partial key → what the partial holds
}

// held is what one of a token's partials counts against its quota: the
// file's declared size, less the bytes of the committed file an --update
// replaces at its commit, never below zero (until the commit the replaced
// file is still on disk, so a smaller file frees nothing yet).
type held struct {
	size     int64 // the file's declared size in bytes
	replaces int64 // the bytes of the committed file it replaces taken off the token's committed bytes; 0: none
}

// charge returns the bytes the partial counts against its token's quota.
func (h held) charge() int64 { return max(h.size-h.replaces, 0) }

// Messages of the refusals a sender sees for its credential.
const (
	msgNoToken = "this daemon requires a token: pass --token-file FILE (or --token, FERRY_TOKEN) with a secret " +
		"from its operator, who creates one with `ferryd token add NAME`"
	msgNoTokens = "this daemon has no tokens and accepts no anonymous sender: its operator must create one " +
		"with `ferryd token add NAME` and give you its secret"
	msgBadToken = "token refused (unknown or revoked): check --token or --token-file, or ask the daemon's operator " +
		"for a new one (`ferryd token list` shows the tokens)"
)

// initAuth loads the token file, the usage file and the tokens' partials.
func (s *Server) initAuth() error {
	if s.cfg.TokenFile == "" {
		return nil
	}
	tokens, stamp, err := auth.Load(s.cfg.TokenFile)
	if err != nil {
		return err
	}
	a := &authState{file: s.cfg.TokenFile, tokens: tokens, stamp: stamp,
		limiters: make(map[string]*rate.Limiter), usage: map[string]auth.Usage{},
		reserved: make(map[string]map[string]held)}
	if fs := s.rootFS(); fs != nil {
		if b, err := readSmall(fs, usageFile); err == nil {
			if u, err := auth.ParseUsage(b); err == nil {
				a.usage = u
			} else {
				s.cfg.Logger.Warn("reading token usage; starting afresh", "err", err)
			}
		} else if !isNotExist(err) {
			s.cfg.Logger.Warn("reading token usage; starting afresh", "err", err)
		}
	}
	if k, ok := s.cfg.Store.(PartialKeeper); ok {
		parts, err := k.Partials()
		if err != nil {
			return fmt.Errorf("listing partials for the tokens' quotas: %w", err)
		}
		for _, p := range parts {
			if p.Token != "" {
				a.reserve(p.Token, p.Key, held{size: p.Size}) // what it replaces is judged again at its resume
			}
		}
	}
	s.auth = a
	s.wg.Add(1)
	go s.authLoop()
	return nil
}

// rootFS returns the file system of a DirStore's root, or nil.
func (s *Server) rootFS() FS {
	if ds, ok := s.cfg.Store.(*DirStore); ok {
		return ds.fs
	}
	return nil
}

// authLoop polls the token file and writes the usage file until the
// server shuts down, then writes the usage once more.
func (s *Server) authLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.TokenPoll)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			s.flushUsage()
			return
		case <-t.C:
		}
		s.reloadTokens(false)
		s.flushUsage()
	}
}

// ReloadTokens reads the token file again now, as the poll does when the
// file changed, and ends the sessions of tokens no longer in it.
func (s *Server) ReloadTokens() { s.reloadTokens(true) }

func (s *Server) reloadTokens(force bool) {
	a := s.auth
	if a == nil {
		return
	}
	stamp, err := auth.Stat(a.file)
	if err != nil {
		s.cfg.Logger.Error("reading token file; keeping its tokens", "file", a.file, "err", err)
		return
	}
	a.mu.Lock()
	same := stamp == a.stamp
	a.mu.Unlock()
	if same && !force {
		return
	}
	tokens, stamp, err := auth.Load(a.file)
	if err != nil {
		s.cfg.Logger.Error("reading token file; keeping its tokens", "file", a.file, "err", err)
		return
	}
	a.mu.Lock()
	a.tokens, a.stamp = tokens, stamp
	a.mu.Unlock()
	s.cfg.Logger.Info("tokens loaded", "file", a.file, "tokens", len(tokens))
	s.mu.Lock()
	var gone []*session
	for ss := range s.sessions {
		if tok := ss.tok.Load(); tok != nil && !stillValid(tokens, tok) {
			gone = append(gone, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range gone {
		ss.drop(revokedError(ss.tok.Load()))
	}
}

// revokedError ends a session whose token was revoked.
func revokedError(tok *auth.Token) error {
	return fmt.Errorf("%w: token %s was revoked; the verified data of its transfers is kept; "+
		"ask the daemon's operator for a new token", transfer.ErrUnauthorized, tok.Name)
}

// checkToken returns revokedError unless the token file still holds tok.
func (s *Server) checkToken(tok *auth.Token) error {
	a := s.auth
	if a == nil {
		return nil
	}
	a.mu.Lock()
	tokens := a.tokens
	a.mu.Unlock()
	if !stillValid(tokens, tok) {
		return revokedError(tok)
	}
	return nil
}

// stillValid reports whether tokens still hold tok (same name, same secret).
func stillValid(tokens []auth.Token, tok *auth.Token) bool {
	t := auth.Find(tokens, tok.Name)
	return t != nil && t.Hash == tok.Hash
}

// flushUsage writes the usage file if it changed.
func (s *Server) flushUsage() {
	a, fs := s.auth, s.rootFS()
	if a == nil || fs == nil {
		return
	}
	a.mu.Lock()
	if !a.dirty {
		a.mu.Unlock()
		return
	}
	b := auth.EncodeUsage(a.usage)
	a.dirty = false
	a.mu.Unlock()
	if err := writeFileAtomic(fs, usageFile, b, nil); err != nil {
		s.cfg.Logger.Warn("writing token usage", "err", err)
		a.mu.Lock()
		a.dirty = true
		a.mu.Unlock()
	}
}

// authenticate judges a session's credential: it returns the session's
// token, nil for an anonymous sender that may come in, or the refusal
// (ErrUnauthorized) to send.
func (s *Server) authenticate(ss *session, secret string) (*auth.Token, error) {
	a := s.auth
	if a == nil {
		return nil, nil // no token file: no authentication
	}
	a.mu.Lock()
	tokens := a.tokens
	a.mu.Unlock()
	if secret == "" && len(tokens) == 0 && s.cfg.AllowAnonymous {
		return nil, nil
	}
	addr := ss.ip
	if addr == "" {
		addr = "local"
	}
	fail := func(reason, msg string) (*auth.Token, error) {
		s.met.authFailed()
		a.mu.Lock()
		l := a.limiter(addr)
		l.Allow() // counts this failure
		a.mu.Unlock()
		ss.log.Warn("authentication failed", "reason", reason)
		return nil, &transfer.RemoteError{Code: transfer.CodeUnauthorized, Message: msg}
	}
	a.mu.Lock()
	limited := a.limiter(addr).Tokens() < 1
	a.mu.Unlock()
	if limited {
		return fail("too many failures from the address", fmt.Sprintf(
			"too many failed authentications from %s; wait a minute, then retry with a valid token", addr))
	}
	switch {
	case secret == "" && len(tokens) == 0:
		return fail("no token, and the daemon has none", msgNoTokens)
	case secret == "":
		return fail("no token", msgNoToken)
	}
	tok := auth.Match(tokens, secret)
	if tok == nil {
		return fail("unknown or revoked token", msgBadToken)
	}
	t := *tok
	a.mu.Lock()
	u := a.usage[t.ID()]
	u.LastUsed = time.Now().UTC().Truncate(time.Second)
	a.usage[t.ID()] = u
	a.dirty = true
	a.mu.Unlock()
	return &t, nil
}

// limiter returns addr's failed-authentication limiter. Called with a.mu held.
func (a *authState) limiter(addr string) *rate.Limiter {
	l, ok := a.limiters[addr]
	if !ok {
		if len(a.limiters) >= maxAuthLimiters {
			clear(a.limiters) // bounded memory; a flood from many addresses starts afresh
		}
		l = rate.NewLimiter(rate.Every(authFailEvery), authFailBurst)
		a.limiters[addr] = l
	}
	return l
}

// reserve records the partial under key of the token named name. Called
// with a.mu held, or before the state is shared.
func (a *authState) reserve(name, key string, h held) {
	m := a.reserved[name]
	if m == nil {
		m = make(map[string]held)
		a.reserved[name] = m
	}
	m[key] = h
}

// checkQuota refuses an offer of size bytes under key when the token's
// committed bytes, what its other partials hold and size exceed its
// Quota; otherwise it records the partial as the token's. replaces is the
// size in bytes of the committed file the offer replaces (--update), 0
// for none: it is taken off the committed bytes, so that replacing a file
// of S bytes with one of S' counts S'-S. The daemon does not record which
// token committed which file, so it takes off at most the token's
// committed bytes. The refusal is a RemoteError of CodeNoSpace.
func (s *Server) checkQuota(tok *auth.Token, key string, size, replaces int64) error {
	a := s.auth
	if a == nil || tok == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	used := a.usage[tok.ID()].CommittedBytes
	credit := min(replaces, used) // what the commit will take off the committed bytes
	if tok.Quota > 0 {
		for k, h := range a.reserved[tok.Name] {
			if k != key {
				used += h.charge()
			}
		}
		if used-credit+size > tok.Quota {
			offered := fmt.Sprintf("%d offered", size)
			if replaces > 0 {
				offered = fmt.Sprintf("%d offered to replace a file of %d (%d more)", size, replaces, size-credit)
			}
			return &transfer.RemoteError{Code: transfer.CodeNoSpace, Message: fmt.Sprintf(
				"token %s's quota: %d bytes committed or held by its partials, and %s, exceed its quota of %d bytes; "+
					"remove files or partials, or ask the daemon's operator for a larger --quota",
				tok.Name, used, offered, tok.Quota)}
		}
	}
	a.reserve(tok.Name, key, held{size: size, replaces: credit})
	return nil
}

// committedBy counts a committed file of size bytes, whose partial was
// under key, against the token: less the file it replaced, if its offer
// said it would replace one (checkQuota), down to nothing.
func (s *Server) committedBy(tok *auth.Token, key string, size int64) {
	a := s.auth
	if a == nil || tok == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.reserved[tok.Name][key]
	delete(a.reserved[tok.Name], key)
	u := a.usage[tok.ID()]
	u.CommittedBytes += size - min(h.replaces, u.CommittedBytes)
	a.usage[tok.ID()] = u
	a.dirty = true
}

// partialRemoved forgets a partial removed by expiry or a purge.
func (s *Server) partialRemoved(p PartialInfo) {
	a := s.auth
	if a == nil || p.Token == "" {
		return
	}
	a.mu.Lock()
	delete(a.reserved[p.Token], p.Key)
	a.mu.Unlock()
}

// ReadTokenUsage reads the usage the daemon recorded under fs's root
// (ROOT/.ferry/token-usage), by Token.ID; none when it has recorded none.
func ReadTokenUsage(fs FS) (map[string]auth.Usage, error) {
	b, err := readSmall(fs, usageFile)
	if isNotExist(err) {
		return map[string]auth.Usage{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading token usage: %w", err)
	}
	return auth.ParseUsage(b)
}

// errNoOverwrite refuses an --update of a token without Overwrite.
func errNoOverwrite(tok *auth.Token, name string) error {
	return fmt.Errorf("%w: %s is already on the daemon with other content, and token %s may not replace files; "+
		"choose another --dest, or ask the daemon's operator for a token with --overwrite",
		transfer.ErrExists, transfer.QuoteName(name), tok.Name)
}

// mayOverwrite reports whether the session may replace committed files:
// anonymous senders may where anonymous senders are let in (no tokens),
// tokens only with Overwrite.
func (ss *session) mayOverwrite() bool {
	tok := ss.tok.Load()
	return tok == nil || tok.Overwrite
}
