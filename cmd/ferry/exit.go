package main

import (
	"context"
	"errors"

	"github.com/ferry-dev/ferry/transfer"
)

// Exit codes of ferry; the table is part of the README.
const (
	exitOK        = 0   // every file committed
	exitFailed    = 1   // failed after retries: network or I/O
	exitUsage     = 2   // bad flags or arguments
	exitRefused   = 3   // refused by the daemon: name, exists, size, space, credential
	exitIntegrity = 4   // an integrity failure that retries did not fix
	exitIdentity  = 5   // the daemon's key did not match the pinned or known fingerprint
	exitInterrupt = 130 // interrupted by SIGINT or SIGTERM, as shells expect
)

// errUsage marks errors in how ferry was called.
var errUsage = errors.New("usage")

// exitCode maps an error to ferry's exit code, like restic's main().
func exitCode(err error) int {
	var re *transfer.RemoteError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, context.Canceled):
		return exitInterrupt
	case errors.Is(err, transfer.ErrIdentity):
		return exitIdentity
	case errors.Is(err, errUsage), errors.Is(err, transfer.ErrInvalidConfig):
		return exitUsage
	case errors.Is(err, transfer.ErrIntegrity):
		return exitIntegrity
	case errors.As(err, &re) && !transfer.Retryable(re):
		return exitRefused
	case errors.Is(err, transfer.ErrVersion), errors.Is(err, transfer.ErrBadName):
		// Found on this side, before the daemon could refuse: still a
		// refusal of the request, not a failure worth retrying.
		return exitRefused
	}
	return exitFailed
}
