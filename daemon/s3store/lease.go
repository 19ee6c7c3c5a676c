package s3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// MaxClockSkew is how far apart the clocks of two daemons sharing a bucket
// may be. A lease's expiry is written by its holder's clock and judged by
// the taker's: a taker treats a lease as expired only when its own clock
// is past the expiry plus MaxClockSkew. The holder, for its part, gives up
// (closes Lost) when it has not renewed by a third of the TTL before the
// expiry by its own clock. So a holder stops writing at least
// TTL/3 + MaxClockSkew - (actual skew) before anyone may take its lease
// over, as long as the actual skew stays below MaxClockSkew + TTL/3;
// daemons are expected to run NTP, which keeps them within milliseconds.
// The lease protocol does not need synchronised clocks beyond that: no
// clock is compared with the gateway's.
const MaxClockSkew = 2 * time.Second

// Leaser is a daemon.Locker whose locks are lease objects in a bucket, so
// that daemons sharing the bucket hold a transfer one at a time (issue 13,
// docs/SCALE-OUT-LEASES.md). The lease of key is the object
// PREFIX/.ferry/leases/KEY.lease, a JSON record of its owner, its expiry
// and a random nonce. Every write of it is conditional:
//
//   - a free lease (no object) is taken with PutObject If-None-Match: *;
//   - a held lease is renewed every TTL/3 with PutObject If-Match: ETAG,
//     the ETag of the holder's own last write;
//   - an expired lease (see MaxClockSkew) is taken over with If-Match on
//     the ETag of the expired record read, so of several racers exactly
//     one wins and the others get ErrLocked;
//   - Unlock overwrites the record with an expired one, If-Match: ETAG.
//
// The nonce makes every record's content, hence its ETag (an MD5 on
// most gateways), unique, so an If-Match never matches a record written
// by someone else.
//
// The fields are read by Lock and by the renewals of its leases; do not
// change them while a lease is held. A Leaser is safe for concurrent use.
type Leaser struct {
	// Core is the S3 client; required.
	Core *minio.Core
	// Bucket holds the lease objects; required.
	Bucket string
	// Prefix is the key prefix of the store in Bucket, without a trailing
	// slash ("" for the whole bucket). Leases live under
	// PREFIX/.ferry/leases/.
	Prefix string
	// Owner names this daemon in lease records and in ErrLocked messages;
	// required. It must be unique to the process (host name, PID and a
	// random suffix, say): a lease's owner is only reported, never trusted,
	// so a restarted daemon waits for its old leases to expire like anyone.
	Owner string
	// TTL is how long a lease lasts without renewal; required (> 0). A
	// daemon that dies holds its transfers for up to TTL + MaxClockSkew.
	TTL time.Duration
	// Now is the clock; nil means time.Now. Tests move it to expire leases
	// without waiting.
	Now func() time.Time
}

var _ daemon.Locker = (*Leaser)(nil)

// record is the content of a lease object.
type record struct {
	Owner   string    `json:"owner"`
	Expires time.Time `json:"expires"`
	Nonce   string    `json:"nonce"`
}

// maxRecord bounds how much of a lease object is read.
const maxRecord = 64 << 10

// lockAttempts bounds how many races Lock loses (a conditional write
// answered 412 because another daemon wrote first) before it reports the
// lease as held.
const lockAttempts = 3

// errNoLease is returned by read when the lease object does not exist.
var errNoLease = errors.New("no lease object")

// Lock takes the lease of key (a transfer name: relative, clean, slash
// separated) for l.Owner and keeps renewing it every TTL/3 until Unlock,
// or until a renewal is refused or no renewal succeeds before TTL/3 short
// of the lease's expiry, which closes Lost. ctx bounds taking the lease
// only; renewals run on their own goroutine, which only Unlock stops: call
// it even after Lost.
//
// Lock returns an error wrapping daemon.ErrLocked, naming the holder and
// its expiry, when a live lease of any owner (this one included) exists or
// when it lost lockAttempts races for the lease; other errors come from the
// store and leave the lease as it was (or taken, then left to expire, if
// the answer to the write was lost).
func (l *Leaser) Lock(ctx context.Context, key string) (daemon.Lock, error) {
	if l.Core == nil || l.Bucket == "" || l.Owner == "" || l.TTL <= 0 {
		return nil, errors.New("taking lease: Leaser needs Core, Bucket, Owner and a positive TTL")
	}
	name, err := l.objectName(key)
	if err != nil {
		return nil, err
	}
	for range lockAttempts {
		cur, etag, err := l.read(ctx, name)
		rec := l.newRecord()
		switch {
		case errors.Is(err, errNoLease):
			etag, err = l.write(ctx, name, rec, "")
		case err != nil:
			return nil, fmt.Errorf("reading lease %s: %w", name, err)
		case l.live(cur):
			return nil, fmt.Errorf("taking lease of %s: %w (owner %s, expires %s)",
				key, daemon.ErrLocked, cur.Owner, cur.Expires.UTC().Format(time.RFC3339Nano))
		default: // expired, released or unreadable: take it over
			etag, err = l.write(ctx, name, rec, etag)
		}
		if err == nil {
			return l.hold(key, name, rec, etag), nil
		}
		if !isPrecondition(err) {
			return nil, fmt.Errorf("writing lease %s: %w", name, err)
		}
		// Another daemon wrote the lease between our read and our write.
	}
	return nil, fmt.Errorf("taking lease of %s: %w (lost %d races for it)", key, daemon.ErrLocked, lockAttempts)
}

// objectName returns the name of key's lease object.
func (l *Leaser) objectName(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || path.Clean(key) != key || key == ".." || strings.HasPrefix(key, "../") {
		return "", fmt.Errorf("taking lease: key %q is not a clean relative name", key)
	}
	return path.Join(strings.Trim(l.Prefix, "/"), transfer.ReservedDir, "leases", key+".lease"), nil
}

func (l *Leaser) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// live reports whether rec holds its lease by this daemon's clock, allowing
// for MaxClockSkew.
func (l *Leaser) live(rec record) bool {
	return !l.now().After(rec.Expires.Add(MaxClockSkew))
}

// newRecord returns a record for l.Owner expiring TTL from now. The time is
// taken before the write, so the holder's idea of its expiry is never later
// than the one stored.
func (l *Leaser) newRecord() record {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:]) // crypto/rand.Read never fails (Go 1.24+)
	return record{Owner: l.Owner, Expires: l.now().Add(l.TTL), Nonce: hex.EncodeToString(nonce[:])}
}

// read returns the lease object's record and ETag, or errNoLease. A record
// that does not decode comes back zero, that is expired, with its ETag, so
// that a damaged lease can be taken over rather than block its transfer
// for ever.
func (l *Leaser) read(ctx context.Context, name string) (record, string, error) {
	body, info, _, err := l.Core.GetObject(ctx, l.Bucket, name, minio.GetObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
			return record{}, "", errNoLease
		}
		return record{}, "", err
	}
	defer body.Close() //nolint:errcheck // read-only body; the read's error is the one that matters
	b, err := io.ReadAll(io.LimitReader(body, maxRecord))
	if err != nil {
		return record{}, "", fmt.Errorf("reading lease body: %w", err)
	}
	var rec record
	if json.Unmarshal(b, &rec) != nil {
		rec = record{}
	}
	return rec, info.ETag, nil
}

// write puts rec as the lease object on condition: If-None-Match: * when
// ifMatch is "", else If-Match: ifMatch. It returns the new ETag. When the
// store answers 412 it reads the object back: if it holds rec's nonce, an
// earlier try of this very request (minio-go retries on network errors)
// took effect, and write succeeds.
func (l *Leaser) write(ctx context.Context, name string, rec record, ifMatch string) (string, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return "", fmt.Errorf("bug: encoding lease record: %w", err)
	}
	opts := minio.PutObjectOptions{ContentType: "application/json"}
	if ifMatch == "" {
		opts.SetMatchETagExcept("*") // If-None-Match: *
	} else {
		opts.SetMatchETag(ifMatch) // If-Match: "ETAG"
	}
	info, err := l.Core.PutObject(ctx, l.Bucket, name, bytes.NewReader(b), int64(len(b)), "", "", opts)
	if err == nil {
		if info.ETag == "" {
			// Without an ETag the next If-Match could not name this record.
			return "", errors.New("writing lease: the store returned no ETag; it cannot hold leases")
		}
		return info.ETag, nil
	}
	if isPrecondition(err) {
		if cur, etag, rerr := l.read(ctx, name); rerr == nil && cur.Nonce == rec.Nonce {
			return etag, nil
		}
	}
	return "", err
}

// isPrecondition reports whether err is the store refusing a conditional
// write: 412 Precondition Failed; 409 ConditionalRequestConflict, which
// S3 answers when two conditional writes of one key overlap; or 404
// NoSuchKey, which versitygw v1.8.0 (like S3) answers to If-Match on an
// object that does not exist (the lease was deleted behind our back).
func isPrecondition(err error) bool {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return false
	}
	return resp.StatusCode == http.StatusPreconditionFailed || resp.Code == "PreconditionFailed" ||
		(resp.StatusCode == http.StatusConflict && resp.Code == "ConditionalRequestConflict") ||
		resp.Code == minio.NoSuchKey
}

// hold starts renewing a lease just written and returns it.
func (l *Leaser) hold(key, name string, rec record, etag string) *lease {
	ctx, cancel := context.WithCancel(context.Background())
	h := &lease{
		l: l, key: key, name: name,
		etag: etag, expires: rec.Expires,
		lost: make(chan struct{}), stop: cancel, done: make(chan struct{}),
	}
	go h.renew(ctx)
	return h
}

// lease is a held lease: a daemon.Lock.
type lease struct {
	l         *Leaser
	key, name string

	// Owned by renew until done is closed, then by Unlock.
	etag    string    // ETag of the last record written
	expires time.Time // its expiry, by this daemon's clock
	pending string    // nonce of a renewal whose outcome is unknown

	lost     chan struct{}
	loseOnce sync.Once
	stop     context.CancelFunc
	done     chan struct{} // closed when renew returns

	unlockOnce sync.Once
	unlockErr  error
}

// Lost is closed when the lease is lost: a renewal was refused because
// another daemon took the lease over, or no renewal succeeded by TTL/3
// before the lease's expiry. It is never closed by Unlock (the
// daemon.Lock contract). A session stops writing at its next chunk
// boundary once Lost is closed.
func (h *lease) Lost() <-chan struct{} { return h.lost }

func (h *lease) lose() { h.loseOnce.Do(func() { close(h.lost) }) }

// renew rewrites the lease every TTL/3 until ctx ends or the lease is lost.
// A failed renewal is retried every TTL/12 until TTL/3 before the expiry;
// a refused one (412) loses the lease at once.
func (h *lease) renew(ctx context.Context) {
	defer close(h.done)
	ttl := h.l.TTL
	timer := time.NewTimer(ttl / 3)
	defer timer.Stop()
	// rec is the renewal being tried. A failed try may have landed with
	// its answer lost; its retries send the same record (same nonce), so
	// that write recognises it in the 412 that follows. The retried
	// record's expiry is its first try's: earlier, so on the safe side.
	var rec record
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		giveUp := h.expires.Add(-ttl / 3)
		left := giveUp.Sub(h.l.now())
		if left <= 0 {
			h.lose()
			return
		}
		if rec.Nonce == "" {
			rec = h.l.newRecord()
			h.pending = rec.Nonce
		}
		wctx, cancel := context.WithTimeout(ctx, left)
		etag, err := h.l.write(wctx, h.name, rec, h.etag)
		cancel()
		switch {
		case err == nil:
			h.etag, h.expires, h.pending = etag, rec.Expires, ""
			rec = record{}
			timer.Reset(ttl / 3)
		case isPrecondition(err):
			h.pending = ""
			h.lose()
			return
		default:
			timer.Reset(max(ttl/12, time.Millisecond))
		}
	}
}

// Unlock stops renewing and releases the lease by overwriting its record
// with an expired one (If-Match on the last ETag written), so the next
// daemon takes it at once instead of after the TTL. minio-go v7.4.1 cannot
// send If-Match on DeleteObject, and an unconditional delete could remove
// a lease another daemon has taken over meanwhile; so the released record
// stays. It returns nil when the lease is released or
// already belongs to another daemon, and an error when the store could not
// be reached, in which case the lease expires after the TTL. Calls after
// the first return the first's result.
func (h *lease) Unlock() error {
	h.unlockOnce.Do(func() {
		h.stop()
		<-h.done
		ctx, cancel := context.WithTimeout(context.Background(), max(h.l.TTL, 10*time.Second))
		defer cancel()
		released := record{Owner: h.l.Owner, Nonce: h.l.newRecord().Nonce} // zero Expires: expired
		_, err := h.l.write(ctx, h.name, released, h.etag)
		if isPrecondition(err) && h.pending != "" {
			// A renewal cut short by Unlock may have landed: if so its
			// record, not the last one known, is the one to release.
			if cur, etag, rerr := h.l.read(ctx, h.name); rerr == nil && cur.Nonce == h.pending {
				_, err = h.l.write(ctx, h.name, released, etag)
			}
		}
		switch {
		case err == nil, isPrecondition(err): // released, or taken over by another daemon
		default:
			h.unlockErr = fmt.Errorf("releasing lease of %s (it expires within %v): %w", h.key, h.l.TTL, err)
		}
	})
	return h.unlockErr
}
