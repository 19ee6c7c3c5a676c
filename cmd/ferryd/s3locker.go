package main

import (
	"log/slog"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/ferry-dev/ferry/daemon"
)

// s3Locker returns the Locker of the daemons sharing a bucket. Until the
// lease (s3store.Leaser, built on its own branch) is merged, it is the
// in-process lock, which holds a transfer for one session of this daemon
// only: the conditional commit still never overwrites, but two daemons
// may write one partial. With the lease merged this becomes
//
//	return &s3store.Leaser{Core: core, Bucket: bucket, Prefix: prefix, Owner: leaseOwner(), TTL: ttl}
//
// with leaseOwner the host name, PID and a random suffix.
func s3Locker(_ *minio.Core, _, _ string, _ time.Duration, log *slog.Logger) daemon.Locker {
	log.Warn("no leases yet: run one daemon per bucket")
	return &daemon.MemLocker{}
}
