package s3store_test

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/ferry-dev/ferry/daemon/s3store"
	"github.com/ferry-dev/ferry/transfer"
)

// payloadRecorder records the X-Amz-Content-Sha256 header of every PUT
// that carries an object's data (a part, or a whole small file).
type payloadRecorder struct {
	mu   sync.Mutex
	seen map[string]string // "part" or "object" -> the last header value
	next http.RoundTripper
}

func (r *payloadRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPut && strings.Contains(req.URL.Path, "/payload/") {
		kind := "object"
		if req.URL.Query().Get("partNumber") != "" {
			kind = "part"
		}
		r.mu.Lock()
		r.seen[kind] = req.Header.Get("X-Amz-Content-Sha256")
		r.mu.Unlock()
	}
	return r.next.RoundTrip(req)
}

// TestDataPayloadUnsigned: over plain http the store uploads parts and
// small files with UNSIGNED-PAYLOAD, not minio-go's default streaming
// signature, which SHA-256es every byte on both sides of the request.
func TestDataPayloadUnsigned(t *testing.T) {
	gw := startGW(t)
	gw.CreateBucket(t, "unsigned")
	rec := &payloadRecorder{seen: make(map[string]string), next: http.DefaultTransport}
	opts := gw.Options()
	opts.Transport = rec
	client, err := minio.New(gw.Endpoint, opts)
	if err != nil {
		t.Fatal(err)
	}
	store := s3store.New(&minio.Core{Client: client}, "unsigned", "")
	store.PartSize = 5 << 20
	const chunk = 1 << 20
	for _, size := range []int64{3 << 20, 11 << 20} { // one part: PutObject; three parts
		data := make([]byte, size)
		_, _ = rand.NewChaCha8([32]byte{byte(size)}).Read(data) // never fails
		name := "payload/" + map[bool]string{true: "small", false: "large"}[size < 5<<20]
		o := &transfer.Offer{Name: name, Size: size, Mode: 0o644, MtimeNs: time.Now().UnixNano()}
		p, _, err := store.Open("k-"+name[8:], o, chunk, false)
		if err != nil {
			t.Fatal(err)
		}
		for off := int64(0); off < size; off += chunk {
			if err := p.WriteAt(data[off:min(off+chunk, size)], off); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		got, err := client.GetObject(t.Context(), "unsigned", name, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := b.ReadFrom(got); err != nil || !bytes.Equal(b.Bytes(), data) {
			t.Fatalf("%s read back: %v, equal %v", name, err, bytes.Equal(b.Bytes(), data))
		}
	}
	for _, kind := range []string{"part", "object"} {
		if v := rec.seen[kind]; v != "UNSIGNED-PAYLOAD" {
			t.Errorf("%s upload X-Amz-Content-Sha256 %q, want UNSIGNED-PAYLOAD", kind, v)
		}
	}
}
