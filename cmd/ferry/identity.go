package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/internal/knownhosts"
	"github.com/ferry-dev/ferry/transfer"
)

// identityFlags are the flags that say how the daemon's key is checked.
func identityFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "fingerprint", EnvVars: []string{"FERRY_FINGERPRINT"},
			Usage: "accept only a daemon whose key has this fingerprint `SHA256:…` (as `ferryd fingerprint` prints it); default: trust on first use, then the known-hosts file"},
		&cli.StringFlag{Name: "known-hosts", EnvVars: []string{"FERRY_KNOWN_HOSTS"},
			Usage: "`FILE` of daemon fingerprints trusted on first use (default: $XDG_CONFIG_HOME/ferry/known_hosts, else ~/.config/ferry/known_hosts)"},
	}
}

// defaultKnownHosts is the known-hosts file when --known-hosts is not
// given; "" when there is no configuration directory.
func defaultKnownHosts() string {
	dir, err := os.UserConfigDir() // $XDG_CONFIG_HOME, else $HOME/.config
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "ferry", "known_hosts")
}

// tlsOptions returns how the sender checks the daemon: the pin, and the
// known-hosts file (s.knownHosts) with its first-use notice.
func (s *sender) tlsOptions(c *cli.Context) (*transfer.TLSOptions, error) {
	opts := &transfer.TLSOptions{}
	if fp := c.String("fingerprint"); fp != "" {
		canon, err := transfer.ParseFingerprint(fp)
		if err != nil {
			return nil, fmt.Errorf("%w: --fingerprint: %w", errUsage, err)
		}
		opts.Fingerprint = canon
	}
	s.knownHosts = c.String("known-hosts")
	if s.knownHosts == "" {
		s.knownHosts = defaultKnownHosts()
	}
	if s.knownHosts != "" {
		opts.KnownHosts = &knownhosts.File{Path: s.knownHosts}
		opts.OnFirstUse = func(addr, fp string) {
			if !s.quiet {
				s.printf("ferry: first connection to %s: trusting its key %s from now on (added to %s; compare with `ferryd fingerprint` on the daemon)\n",
					addr, fp, s.knownHosts)
			}
		}
	}
	return opts, nil
}

// identityLine is the one line that reports a daemon whose key did not
// match, with how to accept a legitimate change.
func (s *sender) identityLine(err error) string {
	var ie *transfer.IdentityError
	if !errors.As(err, &ie) {
		return "ferry: " + oneLine(err) + "\n"
	}
	var how string
	switch ie.Source {
	case "known hosts":
		line := ie.Addr
		if n, err := knownhosts.NormalizeAddr(ie.Addr); err == nil {
			line = n // as the file spells it
		}
		how = fmt.Sprintf("; if its key changed legitimately (check `ferryd fingerprint` on the daemon), remove the line for %s from %s or pass --fingerprint %s",
			line, s.knownHosts, ie.Got)
	case "pinned":
		how = fmt.Sprintf("; if its key changed legitimately (check `ferryd fingerprint` on the daemon), pass --fingerprint %s", ie.Got)
	default:
		how = "; pass --fingerprint with what `ferryd fingerprint` prints on the daemon, or --known-hosts FILE"
	}
	return "ferry: " + oneLine(ie) + how + "\n"
}
