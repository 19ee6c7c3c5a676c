package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/daemon"
)

// tlsFlags are the flags that choose the certificate of TCP listeners.
func tlsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "tls-cert", EnvVars: []string{"FERRY_TLS_CERT"},
			Usage: "serve the certificate chain in PEM file `FILE` on TCP listeners (with --tls-key; reloaded on SIGHUP); default: a key and self-signed certificate generated under ROOT/.ferry/tls"},
		&cli.StringFlag{Name: "tls-key", EnvVars: []string{"FERRY_TLS_KEY"},
			Usage: "private key of --tls-cert, in PEM file `FILE`"},
	}
}

// errStoreNeedsCert refuses --store without --tls-cert: there is no root
// to keep a generated key in, and every daemon behind one address must
// present the same key anyway.
var errStoreNeedsCert = errors.New("--store needs --tls-cert and --tls-key: the daemons sharing a bucket must present one key, so that senders' pins and known hosts match any of them")

// serverCertificate returns the certificate TCP listeners serve: the
// operator's (--tls-cert, --tls-key) or the root's generated one, made
// on first use. The caller holds the root's lock.
func serverCertificate(c *cli.Context, fsys *daemon.OSFS, code *int) (*daemon.Certificate, error) {
	certFile, keyFile := c.String("tls-cert"), c.String("tls-key")
	if (certFile == "") != (keyFile == "") {
		*code = exitUsage
		return nil, errors.New("--tls-cert and --tls-key go together: give both, or neither to use the generated key")
	}
	if certFile != "" {
		return daemon.CertificateFiles(certFile, keyFile)
	}
	if fsys == nil {
		*code = exitUsage
		return nil, errStoreNeedsCert
	}
	return daemon.GeneratedCertificate(fsys)
}

// isTCP reports whether ln listens on TCP (and so serves TLS).
func isTCP(ln net.Listener) bool {
	_, ok := ln.Addr().(*net.TCPAddr)
	return ok
}

// withTLS wraps every TCP listener of lns in TLS; Unix sockets stay
// plaintext (the file system guards them).
func withTLS(lns []net.Listener, cfg *tls.Config) []net.Listener {
	out := make([]net.Listener, len(lns))
	for i, ln := range lns {
		out[i] = ln
		if isTCP(ln) {
			out[i] = daemon.NewTLSListener(ln, cfg)
		}
	}
	return out
}

// listeningAttrs are the attributes of a listener's "listening" line: the
// fingerprint for a TCP listener.
func listeningAttrs(ln net.Listener, cert *daemon.Certificate) []any {
	if _, ok := ln.Addr().(*net.TCPAddr); ok {
		return []any{"fingerprint", cert.Fingerprint()}
	}
	return nil
}

// reloadOnHangup reloads cert on every SIGHUP until stop is called, one
// log line each.
func reloadOnHangup(cert *daemon.Certificate, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				if err := cert.Reload(); err != nil {
					log.Error("reloading TLS certificate; keeping the current one", "err", err.Error(), "fingerprint", cert.Fingerprint())
					continue
				}
				log.Info("TLS certificate reloaded", "fingerprint", cert.Fingerprint())
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}

// fingerprintCommand is `ferryd fingerprint`.
func fingerprintCommand(stdout io.Writer, st *runState) *cli.Command {
	return &cli.Command{
		Name:      "fingerprint",
		Usage:     "print the fingerprint of the key ferryd serves on TCP, as its listening line shows it, and exit",
		UsageText: "ferryd fingerprint [--root DIR] [--tls-cert FILE --tls-key FILE]",
		Description: "Prints SHA256: and the unpadded base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, " +
			"the form ssh-keygen -l uses, for senders to pin with --fingerprint. Without --tls-cert it reads the key " +
			"under ROOT/.ferry/tls and, when there is none yet, generates it as ferryd's first start would " +
			"(taking the root's lock), so the fingerprint can be handed out before the daemon first runs.",
		Flags: append([]cli.Flag{&cli.StringFlag{Name: "root", Value: "./ferry-inbox", EnvVars: []string{"FERRY_ROOT"},
			Usage: "directory `DIR` ferryd receives into"}}, tlsFlags()...),
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			st.code = exitUsage
			return err
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				st.code = exitUsage
				return fmt.Errorf("unexpected argument %q", c.Args().First())
			}
			cert, err := fingerprintOf(c, &st.code)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(stdout, cert.Fingerprint())
			return err
		},
	}
}

// fingerprintOf loads, or generates under the root's lock, the certificate
// a daemon started with c's flags would serve.
func fingerprintOf(c *cli.Context, code *int) (*daemon.Certificate, error) {
	if c.String("tls-cert") != "" || c.String("tls-key") != "" {
		return serverCertificate(c, nil, code)
	}
	fsys, err := daemon.OpenOSFS(c.String("root"))
	if err != nil {
		return nil, fmt.Errorf("opening root: %w", err)
	}
	defer fsys.Close() //nolint:errcheck // a directory handle
	cert, err := daemon.ReadGeneratedCertificate(fsys)
	if !errors.Is(err, fs.ErrNotExist) {
		return cert, err
	}
	lock, err := daemon.LockRoot(fsys)
	if err != nil {
		return nil, err
	}
	defer lock.Close() //nolint:errcheck // released on exit either way
	return daemon.GeneratedCertificate(fsys)
}
