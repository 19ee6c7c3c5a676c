package daemon

import (
	"context"
	"errors"
)

// Locker holds a transfer for one daemon (or one session) at a time.
type Locker interface {
	Lock(ctx context.Context, key string) (Lock, error)
}

// Lock is a held transfer. Lost is closed when the hold is lost; Unlock releases it.
type Lock interface {
	Lost() <-chan struct{}
	Unlock() error
}

// ErrLocked is returned by Locker.Lock when another holder has the key.
var ErrLocked = errors.New("transfer is held by another session")
