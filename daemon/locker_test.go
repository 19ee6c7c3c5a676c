package daemon_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// fakeLocker is a Locker another daemon shares: keys in busy are held
// elsewhere; down makes every Lock fail as a lock service that cannot be
// reached does; locks it hands out can be lost through lose.
type fakeLocker struct {
	mu    sync.Mutex
	busy  map[string]bool
	down  bool
	locks []*fakeLock
	loseN int // lose each lock at once when > 0
}

type fakeLock struct {
	lost     chan struct{}
	unlocked bool
}

func (l *fakeLock) Lost() <-chan struct{} { return l.lost }
func (l *fakeLock) Unlock() error         { l.unlocked = true; return nil }

func (f *fakeLocker) Lock(_ context.Context, key string) (daemon.Lock, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errors.New("lease store unreachable")
	}
	if f.busy[key] {
		return nil, daemon.ErrLocked
	}
	l := &fakeLock{lost: make(chan struct{})}
	if f.loseN > 0 {
		close(l.lost)
	}
	f.locks = append(f.locks, l)
	return l, nil
}

// TestLockerHeldElsewhereIsBusy: a transfer whose lock another daemon
// holds is refused as busy (retryable), and one whose lock cannot be
// taken as an internal error (retryable), never written.
func TestLockerHeldElsewhereIsBusy(t *testing.T) {
	data := randomData(3*testChunk, 41)
	lk := &fakeLocker{busy: map[string]bool{partialKeyOf("held"): true}}
	srv := newServer(t, daemon.Config{Locker: lk})
	c := srv.connect(t)
	_, err := c.Send(context.Background(), source(data), "held", transfer.SendOptions{})
	if !errors.Is(err, transfer.ErrBusy) || !transfer.Retryable(err) {
		t.Fatalf("send of a name held elsewhere: %v, want a retryable ErrBusy", err)
	}
	res, err := c.Send(context.Background(), source(data), "free", transfer.SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srv.checkCommitted(t, "free", data, res)
	lk.mu.Lock()
	for i, l := range lk.locks {
		if !l.unlocked {
			t.Errorf("lock %d not released after its commit", i)
		}
	}
	lk.down = true
	lk.mu.Unlock()
	_, err = c.Send(context.Background(), source(data), "down", transfer.SendOptions{})
	if !errors.Is(err, transfer.ErrInternal) || !transfer.Retryable(err) {
		t.Fatalf("send with the lock service down: %v, want a retryable internal error", err)
	}
}

// TestLockLostStopsWriting: a transfer whose lock is lost (a lease taken
// over) stops at the next chunk and commits nothing.
func TestLockLostStopsWriting(t *testing.T) {
	data := randomData(8*testChunk, 42)
	srv := newServer(t, daemon.Config{Locker: &fakeLocker{loseN: 1}})
	c := srv.connect(t)
	_, err := c.Send(context.Background(), source(data), "lost", transfer.SendOptions{})
	if err == nil || !errors.Is(err, transfer.ErrInternal) {
		t.Fatalf("send after the lock was lost: %v, want an internal error", err)
	}
	if _, err := os.Lstat(filepath.Join(srv.root, "lost")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after a lost lock: %v, want nothing committed", err)
	}
}
