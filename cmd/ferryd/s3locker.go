package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/s3store"
)

// s3Locker returns the Locker of the daemons sharing a bucket: leases
// (s3store.Leaser) under PREFIX/.ferry/leases/, each lasting ttl without
// renewal (docs/SCALE-OUT.md).
func s3Locker(core *minio.Core, bucket, prefix string, ttl time.Duration, log *slog.Logger) daemon.Locker {
	owner := leaseOwner()
	log.Info("leases", "owner", owner, "ttl", ttl)
	return &s3store.Leaser{Core: core, Bucket: bucket, Prefix: prefix, Owner: owner, TTL: ttl}
}

// leaseOwner names this daemon in its lease records: host name, PID and
// a random suffix, so that a restarted daemon (same host, maybe the same
// PID in a container) is another owner and never mistakes an old lease
// for its own. Only shown to operators; never trusted.
func leaseOwner() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24)
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}
