package integration

import (
	"testing"

	"github.com/ferry-dev/ferry/internal/versitygw"
)

// gwServer is the real S3 gateway the tests run against.
type gwServer = versitygw.Server

// startGW starts versitygw on loopback for t (skipped when it is not
// installed, failed when CI is set).
func startGW(t testing.TB) *gwServer { return versitygw.Start(t) }
