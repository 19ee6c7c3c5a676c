package main

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/s3store"
)

// openedStore is the store the flags name, with what goes with it.
type openedStore struct {
	store  daemon.Store
	locker daemon.Locker // nil: the server's in-process one
	where  string        // the root or the s3:// URL, for log lines
	fsys   *daemon.OSFS  // the root of a directory store (its TLS key lives there); nil for S3
	close  func()        // releases the root's lock
}

// openStore opens the store the flags name: --store s3://… or the
// directory store on --root.
func openStore(c *cli.Context, log *slog.Logger, code *int) (*openedStore, error) {
	if u := c.String("store"); u != "" {
		if c.IsSet("root") {
			*code = exitUsage
			return nil, fmt.Errorf("--store %s and --root: give one", u)
		}
		return openS3Store(c, u, log, code)
	}
	if c.IsSet("s3-endpoint") || c.IsSet("s3-region") {
		*code = exitUsage
		return nil, fmt.Errorf("--s3-endpoint and --s3-region need --store s3://BUCKET")
	}
	root := rootDir(c)
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		return nil, fmt.Errorf("opening root: %w", err)
	}
	// One daemon per root, before anything under it is touched.
	lock, err := daemon.LockRoot(fsys)
	if err != nil {
		_ = fsys.Close() // the lock error is the one to report
		return nil, err
	}
	closeAll := func() {
		_ = lock.Close() // released on exit either way
		_ = fsys.Close() // a directory handle; nothing to flush
	}
	store, err := daemon.NewDirStore(fsys)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("opening root %s: %w", root, err)
	}
	if sq, ok := store.Sync.(*daemon.SyncFSWhenQuiet); ok {
		sq.Log = log // its one warning goes where ferryd's lines go
	}
	store.DirectIO = c.Bool("direct-io")
	store.Preallocate = c.Bool("preallocate")
	finished, discarded, err := store.FinishCommits()
	for _, name := range finished {
		log.Info("interrupted commit finished", "name", name)
	}
	if discarded > 0 {
		log.Info("partials linked elsewhere discarded", "count", discarded)
	}
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("finishing interrupted commits in %s: %w", root, err)
	}
	return &openedStore{store: store, where: fsys.Name(), fsys: fsys, close: closeAll}, nil
}

// openS3Store opens --store s3://BUCKET[/PREFIX] on --s3-endpoint, with
// credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or
// AWS_ACCESS_KEY/AWS_SECRET_KEY), then the AWS credential file
// (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE), then the instance role.
func openS3Store(c *cli.Context, u string, log *slog.Logger, code *int) (*openedStore, error) {
	bucket, prefix, err := s3store.ParseURL(u)
	if err != nil {
		*code = exitUsage
		return nil, err
	}
	host, secure := "s3.amazonaws.com", true
	lookup := minio.BucketLookupAuto
	if e := c.String("s3-endpoint"); e != "" {
		eu, err := url.Parse(e)
		if err != nil || eu.Host == "" || eu.Scheme != "http" && eu.Scheme != "https" || eu.Path != "" && eu.Path != "/" {
			*code = exitUsage
			return nil, fmt.Errorf("--s3-endpoint %q: want http://HOST[:PORT] or https://HOST[:PORT]", e)
		}
		host, secure, lookup = eu.Host, eu.Scheme == "https", minio.BucketLookupPath
	}
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}, &credentials.IAM{},
	})
	client, err := minio.New(host, &minio.Options{Creds: creds, Secure: secure, Region: c.String("s3-region"), BucketLookup: lookup})
	if err != nil {
		*code = exitUsage
		return nil, fmt.Errorf("--s3-endpoint: %w", err)
	}
	core := &minio.Core{Client: client}
	where := "s3://" + bucket + "/" + prefix
	ttl := c.Duration("s3-lease-ttl")
	if ttl <= 0 {
		*code = exitUsage
		return nil, fmt.Errorf("--s3-lease-ttl %v: want a positive duration", ttl)
	}
	return &openedStore{store: s3store.New(core, bucket, prefix), locker: s3Locker(core, bucket, prefix, ttl, log), where: where, close: func() {}}, nil
}

// rootDir is the directory store's root: --root, else under systemd the
// first of $STATE_DIRECTORY (StateDirectory= may list several), else
// --root's default. It is "" with --store, which has no local root.
func rootDir(c *cli.Context) string {
	if c.String("store") != "" {
		return ""
	}
	if !c.IsSet("root") && os.Getenv("STATE_DIRECTORY") != "" {
		return strings.Split(os.Getenv("STATE_DIRECTORY"), ":")[0]
	}
	return c.String("root")
}
