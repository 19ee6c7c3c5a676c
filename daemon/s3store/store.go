// Package s3store keeps partials and committed files in an S3-compatible
// bucket, so that several daemons behind one address share them: any
// daemon resumes any transfer from its durable offset (docs/SCALE-OUT.md).
//
// Object layout, under PREFIX/ (nothing when the prefix is empty):
//
//	NAME                           a committed file; metadata ferry-mode and
//	                               ferry-mtime-ns, tag ferry-blake3
//	.ferry/partials/KEY.state      a partial's state object (JSON): the state
//	                               record (daemon.EncodeState), the multipart
//	                               upload ID, the part size and the parts'
//	                               ETags up to the durable offset
//	.ferry/leases/KEY.lease        the transfer's lease (Leaser)
//
// A partial is a multipart upload of NAME plus its state object; its
// durable offset is the end of the last part whose upload completed and
// was recorded. A commit is CompleteMultipartUpload with If-None-Match: *,
// so that it never overwrites; a file of at most one part is one
// conditional PutObject. Directories are implicit in the keys.
package s3store

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/tags"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// Metadata and tag names of a committed object.
const (
	metaMode    = "Ferry-Mode"     // octal permission bits
	metaMtimeNs = "Ferry-Mtime-Ns" // the file's mtime, Unix nanoseconds
	tagBlake3   = "ferry-blake3"   // the whole file's BLAKE3, hex
)

// DefaultPartSize is the part size of a partial, in bytes, unless the
// file needs larger parts to fit S3's 10,000 parts.
const DefaultPartSize = 8 << 20

// minPartSize is S3's smallest part but the last.
const minPartSize = 5 << 20

// maxParts is S3's most parts of one upload.
const maxParts = 10000

// Store is a daemon.Store in a bucket. It is safe for concurrent use on
// distinct keys; daemons sharing a bucket hold a key one at a time
// through a Leaser.
type Store struct {
	core   *minio.Core
	bucket string
	prefix string // "" or ending in "/"
	// PartSize is the smallest part size in bytes (DefaultPartSize when
	// 0); it is rounded up to a multiple of the chunk size and to at
	// least 5 MiB. Set it before the store is used.
	PartSize int64
}

var _ daemon.Store = (*Store)(nil)

// New returns a store in bucket under prefix ("" for the whole bucket; a
// trailing slash is optional) through core. It does not check that the
// bucket exists: the first request fails if not.
func New(core *minio.Core, bucket, prefix string) *Store {
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &Store{core: core, bucket: bucket, prefix: prefix}
}

// ParseURL splits s3://BUCKET[/PREFIX] into its bucket and prefix.
func ParseURL(u string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(u, "s3://")
	if !ok || rest == "" || strings.HasPrefix(rest, "/") {
		return "", "", fmt.Errorf("store %q is not s3://BUCKET[/PREFIX]", u)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	return bucket, strings.Trim(prefix, "/"), nil
}

func (s *Store) object(name string) string { return s.prefix + name }
func (s *Store) stateObject(key string) string {
	return s.prefix + path.Join(transfer.ReservedDir, "partials", key+".state")
}

// ctx is the context of the store's requests: minio-go retries each
// request itself, with backoff, for about a minute at most.
func ctx() context.Context { return context.Background() }

// classify turns a minio-go error into the error the daemon package
// expects: ErrNotFound, transfer.ErrExists, transfer.ErrNoSpace, or the
// error as it is.
func classify(err error, name string) error {
	if err == nil {
		return nil
	}
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == minio.NoSuchKey || resp.StatusCode == http.StatusNotFound && resp.Code == "":
		return fmt.Errorf("%w: %s", daemon.ErrNotFound, transfer.QuoteName(name))
	case resp.StatusCode == http.StatusPreconditionFailed || resp.Code == "PreconditionFailed" ||
		resp.Code == "ConditionalRequestConflict":
		return fmt.Errorf("%w: %s", transfer.ErrExists, transfer.QuoteName(name))
	case resp.StatusCode == http.StatusInsufficientStorage || resp.Code == "XMinioStorageFull" ||
		resp.Code == "QuotaExceeded" || resp.Code == "EntityTooLarge":
		return fmt.Errorf("%w: %s: %v", transfer.ErrNoSpace, transfer.QuoteName(name), err)
	}
	return err
}

// Exists implements daemon.Store: an object at name, or objects under
// name/ (a directory); an object at a leading component of name is a bad
// name, as a file used as a directory.
func (s *Store) Exists(name string) (bool, error) {
	_, err := s.core.StatObject(ctx(), s.bucket, s.object(name), minio.StatObjectOptions{})
	err = classify(err, name)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, daemon.ErrNotFound) {
		return false, fmt.Errorf("looking up %s: %w", transfer.QuoteName(name), err)
	}
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		_, err := s.core.StatObject(ctx(), s.bucket, s.object(d), minio.StatObjectOptions{})
		if err = classify(err, d); err == nil {
			return false, fmt.Errorf("%w: %s: %s is a file on the daemon, not a directory; choose another --dest",
				transfer.ErrBadName, transfer.QuoteName(name), transfer.QuoteName(d))
		} else if !errors.Is(err, daemon.ErrNotFound) {
			return false, fmt.Errorf("looking up %s: %w", transfer.QuoteName(d), err)
		}
	}
	res, err := s.core.ListObjectsV2(s.bucket, s.object(name)+"/", "", "", "", 1)
	if err != nil {
		return false, fmt.Errorf("listing %s: %w", transfer.QuoteName(name), err)
	}
	return len(res.Contents) > 0, nil
}

// Stat implements daemon.Store; the mtime is the one the commit recorded.
func (s *Store) Stat(name string) (int64, time.Time, error) {
	info, err := s.core.StatObject(ctx(), s.bucket, s.object(name), minio.StatObjectOptions{})
	if err != nil {
		return 0, time.Time{}, classify(err, name)
	}
	return info.Size, mtimeOf(info), nil
}

func mtimeOf(info minio.ObjectInfo) time.Time {
	if ns, err := strconv.ParseInt(info.Metadata.Get("X-Amz-Meta-"+metaMtimeNs), 10, 64); err == nil {
		return time.Unix(0, ns)
	}
	return info.LastModified
}

// OpenCommitted implements daemon.Store: reads are ranged GETs.
func (s *Store) OpenCommitted(name string) (daemon.CommittedFile, error) {
	info, err := s.core.StatObject(ctx(), s.bucket, s.object(name), minio.StatObjectOptions{})
	if err != nil {
		return nil, classify(err, name)
	}
	return &object{s: s, name: name, info: info}, nil
}

// object is a committed object open for reading.
type object struct {
	s    *Store
	name string
	info minio.ObjectInfo
}

func (o *object) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.info.Size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), o.info.Size-off)
	if n == 0 {
		return 0, nil
	}
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, off+n-1); err != nil {
		return 0, err
	}
	// Only the version read at open: a replaced object fails the read.
	if err := opts.SetMatchETag(o.info.ETag); err != nil {
		return 0, err
	}
	rc, _, _, err := o.s.core.GetObject(ctx(), o.s.bucket, o.s.object(o.name), opts)
	if err != nil {
		return 0, classify(err, o.name)
	}
	defer rc.Close() //nolint:errcheck // read-only
	m, err := io.ReadFull(rc, p[:n])
	if err == nil && n < int64(len(p)) {
		err = io.EOF
	}
	return m, err
}

func (o *object) Close() error { return nil }

// StoredHash implements daemon.HashStorer from the object's ferry-blake3
// tag.
func (o *object) StoredHash(size, mtimeNs int64) (transfer.Hash, bool) {
	var h transfer.Hash
	if o.info.Size != size || mtimeOf(o.info).UnixNano() != mtimeNs {
		return h, false
	}
	t, err := o.s.core.GetObjectTagging(ctx(), o.s.bucket, o.s.object(o.name), minio.GetObjectTaggingOptions{})
	if err != nil {
		return h, false
	}
	v, ok := t.ToMap()[tagBlake3]
	if !ok {
		return h, false
	}
	b, err := hex.DecodeString(v)
	if err != nil || len(b) != len(h) {
		return h, false
	}
	copy(h[:], b)
	return h, true
}

// FinishCommit implements daemon.Store: a commit is one atomic request,
// so there is none to finish. A state object left by a finished commit
// whose Tidy failed is removed when the key is next opened.
func (s *Store) FinishCommit(key, name string) (bool, error) { return false, nil }

// stateDoc is a partial's state object.
type stateDoc struct {
	Version  int    `json:"version"`
	State    []byte `json:"state"` // daemon.EncodeState
	UploadID string `json:"upload_id,omitempty"`
	PartSize int64  `json:"part_size"`
	Parts    []part `json:"parts,omitempty"` // parts 1..len(Parts), covering [0, durable offset)
	// Pending is the part after Parts whose upload had not been answered
	// when the state object was written: State is the state at its end,
	// Prev the state at its start. On resume the part counts (and State
	// holds) only if the upload lists it whole; otherwise Prev holds.
	// Writing the state object while the gateway finishes the part keeps
	// the write off the transfer's path (docs/SCALE-OUT.md).
	Pending *pendingPart `json:"pending,omitempty"`
	Prev    []byte       `json:"prev,omitempty"` // daemon.EncodeState, with Pending
}

// pendingPart is a part whose upload had not been answered yet.
type pendingPart struct {
	Number int   `json:"n"`
	Size   int64 `json:"size"`
}

type part struct {
	Number int    `json:"n"`
	ETag   string `json:"etag"`
}

// maxStateDoc bounds a state object read back (10,000 parts' ETags).
const maxStateDoc = 4 << 20

// loadState reads key's state object; a missing or damaged one counts as
// none (found false). etag is the object's ETag, "" when there is none:
// the next write of the object is conditional on it (putState).
func (s *Store) loadState(key string) (doc *stateDoc, st *daemon.State, etag string, found bool, err error) {
	rc, info, _, err := s.core.GetObject(ctx(), s.bucket, s.stateObject(key), minio.GetObjectOptions{})
	if err != nil {
		if err = classify(err, key); errors.Is(err, daemon.ErrNotFound) {
			return nil, nil, "", false, nil
		}
		return nil, nil, "", false, fmt.Errorf("reading state object: %w", err)
	}
	defer rc.Close() //nolint:errcheck // read-only
	b, err := io.ReadAll(io.LimitReader(rc, maxStateDoc))
	if err != nil {
		if errors.Is(classify(err, key), daemon.ErrNotFound) {
			return nil, nil, "", false, nil
		}
		return nil, nil, "", false, fmt.Errorf("reading state object: %w", err)
	}
	etag = info.ETag
	doc = new(stateDoc)
	if json.Unmarshal(b, doc) != nil || doc.Version != 1 {
		return nil, nil, etag, false, nil
	}
	st, err = daemon.DecodeState(doc.State)
	if err != nil {
		return nil, nil, etag, false, nil
	}
	return doc, st, etag, true, nil
}

// errStateChanged says a state object was not written because it changed
// since this daemon last read or wrote it: another daemon took the
// transfer over (this one lost its lease) or discarded the partial.
var errStateChanged = errors.New("state object changed behind this daemon")

// putState writes key's state object, conditionally: over the version of
// ETag match, the one this daemon last read or wrote (If-Match), or only
// where there is none when match is "" (If-None-Match: *). A daemon that
// lost its lease thus never overwrites what the new holder wrote. It
// returns the new ETag, or an error wrapping errStateChanged when the
// object changed meanwhile.
func (s *Store) putState(key string, doc *stateDoc, match string) (string, error) {
	b, err := json.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("bug: encoding state object: %w", err)
	}
	opts := minio.PutObjectOptions{ContentType: "application/json"}
	if match == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(match)
	}
	info, err := s.core.PutObject(ctx(), s.bucket, s.stateObject(key), bytes.NewReader(b), int64(len(b)), "", "", opts)
	if err != nil {
		if resp := minio.ToErrorResponse(err); resp.StatusCode == http.StatusPreconditionFailed ||
			resp.Code == "PreconditionFailed" || resp.Code == "ConditionalRequestConflict" {
			return "", fmt.Errorf("writing state object: %w (another daemon holds the transfer); the sender retries", errStateChanged)
		}
		return "", fmt.Errorf("writing state object: %w", classify(err, key))
	}
	return info.ETag, nil
}

// discard removes key's state object and aborts its upload, if any.
func (s *Store) discard(key string, doc *stateDoc, st *daemon.State) error {
	if doc != nil && doc.UploadID != "" {
		err := s.core.AbortMultipartUpload(ctx(), s.bucket, s.object(st.Name), doc.UploadID)
		if err != nil && minio.ToErrorResponse(err).Code != "NoSuchUpload" {
			return fmt.Errorf("aborting upload: %w", err)
		}
	}
	err := s.core.RemoveObject(ctx(), s.bucket, s.stateObject(key), minio.RemoveObjectOptions{})
	if err != nil && !errors.Is(classify(err, key), daemon.ErrNotFound) {
		return fmt.Errorf("removing state object: %w", err)
	}
	return nil
}

// partSize returns the part size of a file of size bytes in chunks of
// chunkSize: PartSize (or DefaultPartSize), at least 5 MiB, a multiple of
// chunkSize, doubled until the file fits in maxParts parts.
func (s *Store) partSize(size int64, chunkSize int) int64 {
	p := s.PartSize
	if p <= 0 {
		p = DefaultPartSize
	}
	p = max(p, minPartSize)
	cs := int64(chunkSize)
	p = (p + cs - 1) / cs * cs
	for size/p >= maxParts {
		p *= 2
	}
	return p
}

// Open implements daemon.Store. A partial recorded in chunks larger than
// chunkSize starts over: re-cutting its merge stack would need its tail
// chunk, which an unfinished upload cannot give back.
func (s *Store) Open(key string, o *transfer.Offer, chunkSize int, restart bool) (daemon.Partial, bool, error) {
	if err := transfer.CheckChunkSize(chunkSize); err != nil {
		return nil, false, fmt.Errorf("bug: %w", err)
	}
	doc, st, etag, found, err := s.loadState(key)
	if err != nil {
		return nil, false, err
	}
	if found && !restart && st.SameSource(o) && st.Stack.ChunkSize() <= chunkSize && doc.PartSize > 0 {
		rst, ok, err := s.resolve(doc, st)
		if err != nil {
			return nil, false, err // says nothing about the partial: keep it
		}
		if ok {
			p := s.newPartial(key, *rst, doc, etag)
			p.replace = o.Flags&transfer.OfferUpdate != 0
			return p, false, nil
		}
	}
	if found {
		if err := s.discard(key, doc, st); err != nil {
			return nil, false, fmt.Errorf("discarding partial: %w", err)
		}
		etag = "" // removed
	}
	stack, err := transfer.NewMergeStack(chunkSize)
	if err != nil {
		return nil, false, err
	}
	nst := daemon.State{Name: o.Name, Size: o.Size, Mode: o.Mode, MtimeNs: o.MtimeNs, Inode: o.Inode, PrefixID: o.PrefixID, Stack: *stack}
	p := s.newPartial(key, nst, &stateDoc{Version: 1, PartSize: s.partSize(o.Size, chunkSize)}, etag)
	p.replace = o.Flags&transfer.OfferUpdate != 0
	return p, found, nil
}

// resolve returns the state a partial resumes from: st, or doc.Prev when
// doc's pending part is not listed whole (its upload was never
// answered), with doc.Parts completed by the pending part when it is. ok
// is false when the partial cannot resume: its upload is gone, a part it
// records is missing or another, or its state is off a part boundary.
func (s *Store) resolve(doc *stateDoc, st *daemon.State) (*daemon.State, bool, error) {
	have := make(map[int]minio.ObjectPart)
	if doc.UploadID != "" {
		marker := 0
		for {
			res, err := s.core.ListObjectParts(ctx(), s.bucket, s.object(st.Name), doc.UploadID, marker, 1000)
			if err != nil {
				if minio.ToErrorResponse(err).Code == "NoSuchUpload" {
					return nil, false, nil
				}
				return nil, false, fmt.Errorf("listing parts: %w", err)
			}
			for _, p := range res.ObjectParts {
				have[p.PartNumber] = p
			}
			if !res.IsTruncated {
				break
			}
			marker = res.NextPartNumberMarker
		}
	}
	for _, p := range doc.Parts {
		if lp, ok := have[p.Number]; !ok || strings.Trim(lp.ETag, `"`) != strings.Trim(p.ETag, `"`) {
			return nil, false, nil
		}
	}
	if pp := doc.Pending; pp != nil {
		if lp, ok := have[pp.Number]; ok && pp.Number == len(doc.Parts)+1 && lp.Size == pp.Size {
			doc.Parts = append(doc.Parts, part{Number: pp.Number, ETag: strings.Trim(lp.ETag, `"`)})
		} else {
			prev, err := daemon.DecodeState(doc.Prev)
			if err != nil || prev.Stack.ChunkSize() != st.Stack.ChunkSize() || !prev.SameSource(&transfer.Offer{Name: st.Name, Size: st.Size, Mode: st.Mode,
				MtimeNs: st.MtimeNs, Inode: st.Inode, PrefixID: st.PrefixID}) {
				return nil, false, nil
			}
			st = prev
		}
		doc.Pending, doc.Prev = nil, nil
	}
	if st.DurableOffset%doc.PartSize != 0 || int64(len(doc.Parts)) != st.DurableOffset/doc.PartSize {
		return nil, false, nil
	}
	return st, true, nil
}

func (s *Store) newPartial(key string, st daemon.State, doc *stateDoc, etag string) *partial {
	p := &partial{s: s, key: key, st: st, uploadID: doc.UploadID, partSize: doc.PartSize, stateETag: etag,
		parts: append([]part(nil), doc.Parts...), bufStart: st.DurableOffset}
	return p
}

// partial is a Store's partial. Only a file of at most one part is held
// in memory; larger files stream their parts.
type partial struct {
	s        *Store
	key      string
	partSize int64

	mu       sync.Mutex
	st       daemon.State // durable state
	uploadID string       // "" until the first part is uploaded
	parts    []part       // uploaded parts, in order: [0, bufStart) but the handed-over one
	buf      []byte       // a file of one part: [0, len(buf)), for PutObject
	bufStart int64        // the end of the parts uploaded or handed over
	// handed is the part whose bytes were all handed to its upload, whose
	// answer (an ETag for parts) is not collected yet; nil when none.
	// collecting serializes its collection.
	handed     *handedPart
	collecting sync.Mutex
	// The part being streamed: pw feeds its upload, which reports on
	// partDone; streamed of its partLen bytes were written.
	pw       *io.PipeWriter
	partDone chan partResult
	partLen  int64
	partNum  int
	streamed int64
	hash     transfer.Hash
	hashed   bool
	closed   bool
	// stateETag is the ETag of the state object as this partial last read
	// or wrote it ("" when there is none): its next write is conditional
	// on it (putState).
	stateETag string
	// replace says the commit replaces an object at the name (the
	// sender's --update) instead of refusing to overwrite it.
	replace bool
}

func (p *partial) State() daemon.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// SyncAlign implements daemon.SyncAligner.
func (p *partial) SyncAlign() int64 { return p.partSize }

// SetHash gives the partial its verified whole-file BLAKE3, which the
// commit records as the object's ferry-blake3 tag.
func (p *partial) SetHash(h transfer.Hash) { p.hash, p.hashed = h, true }

// WriteAt implements daemon.Partial: chunks arrive in order from the
// durable offset. A file of at most one part is buffered for the commit's
// PutObject. A larger one streams each part to the gateway as its chunks
// arrive (UploadPart on a pipe), so that no part is held in memory and the
// upload overlaps the transfer; the chunk that completes a part hands it
// over (handOver), and the part boundary's Sync waits for the gateway's
// answer.
func (p *partial) WriteAt(b []byte, off int64) error {
	p.mu.Lock()
	end := p.bufStart + int64(len(p.buf)) + p.streamed
	single := p.st.Size <= p.partSize
	p.mu.Unlock()
	if off != end {
		return fmt.Errorf("bug: write at offset %d, partial data ends at %d", off, end)
	}
	if single {
		p.mu.Lock()
		if p.buf == nil {
			p.buf = make([]byte, 0, p.st.Size)
		}
		p.buf = append(p.buf, b...)
		p.mu.Unlock()
		return nil
	}
	for len(b) > 0 {
		if p.pw == nil {
			if err := p.startPart(); err != nil {
				return err
			}
		}
		n := min(int64(len(b)), p.partLen-p.streamed)
		if _, err := p.pw.Write(b[:n]); err != nil {
			return p.endPart(fmt.Errorf("uploading part: %w", err))
		}
		p.mu.Lock()
		p.streamed += n
		full := p.streamed == p.partLen
		p.mu.Unlock()
		b = b[n:]
		if full {
			if err := p.handOver(); err != nil {
				return err
			}
		}
	}
	return nil
}

// partOptions are the options of every part upload. The payload is not
// hashed for the request's signature (UNSIGNED-PAYLOAD): over plain
// http, minio-go would otherwise SHA-256 every byte for a streaming
// signature (the largest CPU cost of the S3 path, more than BLAKE3) and
// the gateway would SHA-256 it again to check. Over https minio-go signs
// no payload either; the TLS record MAC guards the bytes there. Over
// plain http the gateway checks the request's signature, not the
// payload: use https on a network that is not trusted.
var partOptions = minio.PutObjectPartOptions{DisableContentSha256: true}

// handedPart is a part whose bytes were all handed to its upload.
type handedPart struct {
	done   chan partResult
	number int
	length int64
}

// partResult is the outcome of a part's upload.
type partResult struct {
	etag string
	err  error
}

// startPart starts the upload of the next part on a pipe, starting the
// multipart upload first if needed.
func (p *partial) startPart() error {
	p.mu.Lock()
	name, id, start := p.st.Name, p.uploadID, p.bufStart
	length := min(p.partSize, p.st.Size-start)
	p.mu.Unlock()
	if id == "" {
		var err error
		id, err = p.s.core.NewMultipartUpload(ctx(), p.s.bucket, p.s.object(name), p.objectOptions())
		if err != nil {
			return fmt.Errorf("starting upload: %w", classify(err, name))
		}
		p.mu.Lock()
		p.uploadID = id
		p.mu.Unlock()
	}
	n := int(start/p.partSize) + 1
	pr, pw := io.Pipe()
	done := make(chan partResult, 1)
	go func() {
		info, err := p.s.core.PutObjectPart(ctx(), p.s.bucket, p.s.object(name), id, n, pr, length, partOptions)
		if err == nil {
			err = io.ErrClosedPipe // a writer still writing has nowhere to go
		} else {
			err = fmt.Errorf("uploading part %d: %w", n, classify(err, name))
		}
		pr.CloseWithError(err)
		if errors.Is(err, io.ErrClosedPipe) {
			err = nil
		}
		done <- partResult{etag: info.ETag, err: err}
	}()
	p.mu.Lock()
	p.pw, p.partDone, p.partLen, p.partNum = pw, done, length, n
	p.mu.Unlock()
	return nil
}

// handOver ends the part being streamed after its last byte: its upload
// goes on, and collect (the part boundary's Sync, the next handOver, the
// commit) waits for its answer. The upload of the next part, if the file
// has one, starts at once: its request waits for its first byte at the
// gateway while this part is answered and recorded, instead of starting
// after (the sender waits at each part boundary, Accept.Window). It
// returns the error of the part handed over before, if that failed.
func (p *partial) handOver() error {
	if err := p.collect(); err != nil { // one part handed over at a time
		return err
	}
	_ = p.pw.Close() // the reader sees EOF; closing a pipe does not fail
	p.mu.Lock()
	p.handed = &handedPart{done: p.partDone, number: p.partNum, length: p.partLen}
	p.bufStart += p.partLen
	p.pw, p.partDone, p.streamed = nil, nil, 0
	more := p.bufStart < p.st.Size
	p.mu.Unlock()
	if more {
		_ = p.startPart() // cannot fail with the upload started; WriteAt starts it otherwise
	}
	return nil
}

// collect waits for the answer of the part handed over, if any, and
// records it. A part that failed is taken back: the partial's data ends
// before it.
func (p *partial) collect() error {
	p.collecting.Lock()
	defer p.collecting.Unlock()
	p.mu.Lock()
	h := p.handed
	p.mu.Unlock()
	if h == nil {
		return nil
	}
	res := <-h.done
	p.mu.Lock()
	defer p.mu.Unlock()
	p.handed = nil
	if res.err != nil {
		p.bufStart -= h.length
		return res.err
	}
	p.parts = append(p.parts, part{Number: h.number, ETag: res.etag})
	return nil
}

// endPart abandons the part being streamed after a failed write or when
// the transfer stops (cause): its upload fails, and endPart returns the
// upload's error, or cause.
func (p *partial) endPart(cause error) error {
	p.pw.CloseWithError(cause)
	res := <-p.partDone
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pw, p.partDone, p.streamed = nil, nil, 0
	if res.err != nil {
		return res.err
	}
	return cause
}

// objectOptions returns the options of the committed object: its mode
// and mtime as metadata.
func (p *partial) objectOptions() minio.PutObjectOptions {
	return minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		// A single-part file's payload is unsigned, as a part's
		// (partOptions).
		DisableContentSha256: true,
		UserMetadata: map[string]string{
			metaMode:    strconv.FormatUint(uint64(p.st.Mode), 8),
			metaMtimeNs: strconv.FormatInt(p.st.MtimeNs, 10),
		},
	}
}

// Sync implements daemon.Partial: at a part boundary whose parts are all
// uploaded it records them in the state object; anywhere else it keeps
// the durable offset it had. A sync at offset 0 starts the partial over.
func (p *partial) Sync(stack *transfer.MergeStack) (int64, error) {
	d := stack.Offset()
	p.mu.Lock()
	st := p.st
	if d == 0 {
		p.mu.Unlock()
		return p.reset(stack)
	}
	if d%p.partSize != 0 || d > p.bufStart || d <= st.DurableOffset {
		p.mu.Unlock()
		return st.DurableOffset, nil
	}
	h := p.handed
	if h == nil || d != p.bufStart || d-h.length != st.DurableOffset {
		// The parts up to d are all answered (or will be, one at a
		// time): record them once they are.
		p.mu.Unlock()
		if err := p.collect(); err != nil {
			return st.DurableOffset, err
		}
		return p.record(st, stack, nil)
	}
	p.mu.Unlock()
	// The part ending at d is still being answered: its state object is
	// written meanwhile, with the part as pending, so that the write
	// costs the transfer nothing. Only once both are done is d durable.
	prev, err := daemon.EncodeState(&st)
	if err != nil {
		return st.DurableOffset, err
	}
	put := make(chan error, 1)
	go func() {
		_, err := p.record(st, stack, &pendingState{part: pendingPart{Number: h.number, Size: h.length}, prev: prev})
		put <- err
	}()
	cerr := p.collect()
	perr := <-put
	if err := errors.Join(cerr, perr); err != nil {
		return p.State().DurableOffset, err
	}
	st.DurableOffset, st.Stack = d, *stack
	p.mu.Lock()
	p.st = st
	p.mu.Unlock()
	return d, nil
}

// pendingState is what a state object says of a part still being
// answered: the part, and the state at its start.
type pendingState struct {
	part pendingPart
	prev []byte
}

// record writes the state object for durable offset stack.Offset(), with
// the parts before it (and pend, the last of them, still being
// answered); without pend it then makes st, at that offset, the durable
// state and returns the offset.
func (p *partial) record(st daemon.State, stack *transfer.MergeStack, pend *pendingState) (int64, error) {
	d := stack.Offset()
	n := d / p.partSize
	doc := &stateDoc{Version: 1, PartSize: p.partSize}
	p.mu.Lock()
	doc.UploadID = p.uploadID
	if pend != nil {
		n--
		doc.Pending, doc.Prev = &pend.part, pend.prev
	}
	if int64(len(p.parts)) < n {
		p.mu.Unlock()
		return st.DurableOffset, fmt.Errorf("bug: recording offset %d with %d parts uploaded", d, len(p.parts))
	}
	doc.Parts = append([]part(nil), p.parts[:n]...)
	p.mu.Unlock()
	old := st.DurableOffset
	st.DurableOffset, st.Stack = d, *stack
	rec, err := daemon.EncodeState(&st)
	if err != nil {
		return old, err
	}
	doc.State = rec
	p.mu.Lock()
	match := p.stateETag
	p.mu.Unlock()
	etag, err := p.s.putState(p.key, doc, match)
	if err != nil {
		return old, err
	}
	p.mu.Lock()
	p.stateETag = etag
	p.mu.Unlock()
	if pend == nil {
		p.mu.Lock()
		p.st = st
		p.mu.Unlock()
	}
	return d, nil
}

// reset starts the partial over at offset 0 (a whole-file hash that did
// not match): the upload is aborted and the state object removed.
func (p *partial) reset(stack *transfer.MergeStack) (int64, error) {
	if p.pw != nil {
		_ = p.endPart(errPartAbandoned) // not reached: a reset follows a complete file
	}
	_ = p.collect() // the upload is aborted below either way
	p.mu.Lock()
	st := p.st
	doc := &stateDoc{UploadID: p.uploadID}
	p.mu.Unlock()
	if err := p.s.discard(p.key, doc, &st); err != nil {
		return st.DurableOffset, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.DurableOffset, p.st.Stack = 0, *stack
	p.uploadID, p.parts, p.buf, p.bufStart, p.stateETag = "", nil, p.buf[:0], 0, "" // the state object is removed
	return 0, nil
}

func (p *partial) Commit() error {
	if err := p.s.CommitGroup([]daemon.Partial{p})[0]; err != nil {
		return err
	}
	if err := p.s.Tidy([]daemon.Partial{p}); err != nil {
		return &daemon.LeftoverError{Err: err}
	}
	return nil
}

// commit puts the file in place without overwriting: one conditional
// PutObject for a file of at most one part, else the last part and a
// conditional CompleteMultipartUpload. Then the BLAKE3 tag.
func (p *partial) commit() error {
	if err := p.collect(); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	p.mu.Lock()
	size, name, id, end := p.st.Size, p.st.Name, p.uploadID, p.bufStart+int64(len(p.buf))+p.streamed
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return errors.New("bug: committing a closed partial")
	}
	if end != size {
		return fmt.Errorf("bug: committing %d of %d bytes", end, size)
	}
	opts := p.objectOptions()
	if !p.replace {
		opts.SetMatchETagExcept("*") // If-None-Match: *: never overwrite
	}
	if p.hashed {
		opts.UserTags = map[string]string{tagBlake3: hex.EncodeToString(p.hash[:])}
	}
	obj := p.s.object(name)
	if size <= p.partSize {
		_, err := p.s.core.PutObject(ctx(), p.s.bucket, obj, bytes.NewReader(p.buf), int64(len(p.buf)), "", "", opts)
		if err != nil {
			return fmt.Errorf("committing: %w", classify(err, name))
		}
		return nil
	}
	p.mu.Lock()
	parts := make([]minio.CompletePart, len(p.parts))
	for i, pt := range p.parts {
		parts[i] = minio.CompletePart{PartNumber: pt.Number, ETag: pt.ETag}
	}
	p.mu.Unlock()
	copts := minio.PutObjectOptions{}
	if !p.replace {
		copts.SetMatchETagExcept("*")
	}
	if _, err := p.s.core.CompleteMultipartUpload(ctx(), p.s.bucket, obj, id, parts, copts); err != nil {
		err = classify(err, name)
		if errors.Is(err, transfer.ErrExists) {
			// The name was taken meanwhile: this upload can never commit.
			_ = p.s.discard(p.key, &stateDoc{UploadID: id}, &p.st) // best effort; expiry removes what is left
		}
		return fmt.Errorf("committing: %w", err)
	}
	if p.hashed {
		t, err := tags.NewTags(map[string]string{tagBlake3: hex.EncodeToString(p.hash[:])}, true)
		if err == nil {
			// The hash only spares a re-read when the file is offered
			// again: a failure here leaves the file committed.
			_ = p.s.core.PutObjectTagging(ctx(), p.s.bucket, obj, t, minio.PutObjectTaggingOptions{})
		}
	}
	return nil
}

// CommitGroup implements daemon.Store. Every object is its own atomic
// commit; they run concurrently, a few at a time.
func (s *Store) CommitGroup(ps []daemon.Partial) []error {
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, pp := range ps {
		p, ok := pp.(*partial)
		if !ok || p.s != s {
			errs[i] = errors.New("bug: committing a partial of another store")
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = p.commit()
		}()
	}
	wg.Wait()
	return errs
}

// Tidy implements daemon.Store: the state objects of committed files go.
func (s *Store) Tidy(ps []daemon.Partial) error {
	var first error
	for _, pp := range ps {
		p, ok := pp.(*partial)
		if !ok {
			continue
		}
		_ = p.Close()
		err := s.core.RemoveObject(ctx(), s.bucket, s.stateObject(p.key), minio.RemoveObjectOptions{})
		if err != nil && !errors.Is(classify(err, p.key), daemon.ErrNotFound) && first == nil {
			first = fmt.Errorf("removing state object: %w", err)
		}
	}
	return first
}

// Close implements daemon.Partial: the buffer, not yet a part, is
// dropped; the partial stays at its durable offset in the bucket.
func (p *partial) Close() error {
	if p.pw != nil {
		_ = p.endPart(errPartAbandoned) // the part was never durable
	}
	_ = p.collect() // a part handed over is answered (and kept, if listed) whatever its Sync did
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.buf = nil
	return nil
}

// errPartAbandoned ends the upload of a part the transfer gave up on.
var errPartAbandoned = errors.New("part abandoned: the transfer stopped")
