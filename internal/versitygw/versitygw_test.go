package versitygw

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// TestStartRestart stores an object, restarts the gateway and reads the
// object back on the same endpoint; after Stop the endpoint refuses.
func TestStartRestart(t *testing.T) {
	s := Start(t)
	s.CreateBucket(t, "bkt")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := s.Client(t)
	want := []byte("kept across a restart")
	if _, err := c.PutObject(ctx, "bkt", "o", bytes.NewReader(want), int64(len(want)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("putting object: %v", err)
	}
	endpoint := s.Endpoint
	s.Restart()
	if s.Endpoint != endpoint {
		t.Fatalf("endpoint after restart = %s, want %s", s.Endpoint, endpoint)
	}
	obj, err := c.GetObject(ctx, "bkt", "o", minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("getting object: %v", err)
	}
	got, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("reading object after restart: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("object after restart = %q, want %q", got, want)
	}

	s.Stop()
	short, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if _, err := c.ListBuckets(short); err == nil {
		t.Fatal("gateway still answers after Stop")
	}
}

// recordingTB records Skip and Fatal instead of ending the test.
type recordingTB struct {
	testing.TB
	skipped, failed string
}

type stopped struct{}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Skip(args ...any) {
	r.skipped = sprint(args)
	panic(stopped{})
}
func (r *recordingTB) Fatal(args ...any) {
	r.failed = sprint(args)
	panic(stopped{})
}

func sprint(args []any) string {
	var b strings.Builder
	for _, a := range args {
		b.WriteString(a.(string))
	}
	return b.String()
}

// TestMissingBinary: without the binary Start skips, except under CI=true
// where it fails: CI must not skip the S3 tests silently.
func TestMissingBinary(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv("PATH", t.TempDir())
			t.Setenv("GOPATH", t.TempDir())
			t.Setenv("CI", ci)
			r := &recordingTB{TB: t}
			func() {
				defer func() {
					if p := recover(); p != nil {
						if _, ok := p.(stopped); !ok {
							panic(p)
						}
					}
				}()
				Start(r)
			}()
			got := r.skipped
			if ci == "true" {
				got = r.failed
			}
			if !strings.Contains(got, "go install github.com/versity/versitygw/cmd/versitygw@"+Version) {
				t.Fatalf("skipped %q, failed %q; want the install command in the %s message", r.skipped, r.failed,
					map[string]string{"": "skip", "true": "fatal"}[ci])
			}
		})
	}
}
