package daemon

import (
	"context"
	"errors"
	"sync"
)

// Locker holds a transfer for one daemon (or one session) at a time.
// Implementations are safe for concurrent use. The in-process MemLocker
// serves one daemon; a store shared by several daemons (s3store) brings
// a Locker whose locks are leases on the store.
type Locker interface {
	// Lock takes the lock on key (a partial key) without waiting. It
	// returns an error wrapping ErrLocked when another holder has it, and
	// any other error when it cannot tell (the lock service is down).
	Lock(ctx context.Context, key string) (Lock, error)
}

// Lock is a held lock on one key.
type Lock interface {
	// Lost returns a channel closed when the lock is no longer held
	// (a lease that could not be renewed, or was taken over): the holder
	// stops writing at the next chunk boundary. It is never closed by
	// Unlock.
	Lost() <-chan struct{}
	// Unlock releases the lock. It is called once.
	Unlock() error
}

// ErrLocked is wrapped by Locker.Lock's error when another holder has
// the key.
var ErrLocked = errors.New("transfer is held by another session")

// MemLocker is the in-process Locker: keys held by this process only.
// The zero value is ready to use.
type MemLocker struct {
	mu   sync.Mutex
	held map[string]struct{}
}

var _ Locker = (*MemLocker)(nil)

// Lock implements Locker; it never fails but with ErrLocked.
func (l *MemLocker) Lock(_ context.Context, key string) (Lock, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.held[key]; ok {
		return nil, ErrLocked
	}
	if l.held == nil {
		l.held = make(map[string]struct{})
	}
	l.held[key] = struct{}{}
	return &memLock{l: l, key: key}, nil
}

// memLock is a MemLocker's lock; it is never lost.
type memLock struct {
	l    *MemLocker
	key  string
	once sync.Once
}

// never is a channel that is never closed: an in-process lock is not lost.
var never = make(chan struct{})

func (m *memLock) Lost() <-chan struct{} { return never }

func (m *memLock) Unlock() error {
	m.once.Do(func() {
		m.l.mu.Lock()
		delete(m.l.held, m.key)
		m.l.mu.Unlock()
	})
	return nil
}
