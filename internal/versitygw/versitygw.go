// Package versitygw runs versitygw, a real S3 gateway, with its posix
// backend on loopback for tests (issue 13: "the real engine in tests").
//
// The binary is looked up on PATH, then in $(go env GOPATH)/bin. Install it
// with
//
//	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
//
// (.ci/run does this when it is missing). Without it, Start skips the test,
// except when CI is set (CI=true, as CI services set it), where a missing
// gateway fails the test: CI must run the S3 tests, not skip them.
package versitygw

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Version is the versitygw release the tests are written against.
const Version = "v1.8.0"

// Region is the region the gateway serves (versitygw's default).
const Region = "us-east-1"

// startTimeout bounds how long Start and Restart wait for the gateway to
// answer S3 requests. Building nothing, it starts in well under a second;
// the margin is for a loaded CI machine.
const startTimeout = 30 * time.Second

// portAttempts is how many free ports Start tries: the port is chosen by
// listening on 127.0.0.1:0 and closing, so another process may take it
// before versitygw binds it (versitygw cannot bind port 0 and report the
// port it got).
const portAttempts = 5

// Server is a running versitygw. Its fields are fixed for its life,
// across Restart. Methods are not safe for concurrent use.
type Server struct {
	// Endpoint is the gateway's host:port on 127.0.0.1 (no scheme; plain HTTP).
	Endpoint string
	// URL is Endpoint with its scheme: http://127.0.0.1:PORT.
	URL string
	// AccessKey and SecretKey are the root account's credentials.
	AccessKey, SecretKey string
	// Dir is the posix backend's directory: one subdirectory per bucket.
	Dir string

	t    testing.TB
	bin  string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  *syncBuffer
}

// Binary returns the path of the versitygw binary: on PATH, else in
// $(go env GOPATH)/bin. ok is false when neither has it.
func Binary() (path string, ok bool) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, true
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	for _, dir := range filepath.SplitList(gopath) {
		p := filepath.Join(dir, "bin", "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// Start launches versitygw on a free port of 127.0.0.1 with a posix
// backend in a new temporary directory, and returns once it answers S3
// requests. The process is killed on t.Cleanup. Start skips t when the
// binary is missing, or fails it when $CI is set; it fails t when the
// gateway does not start.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, ok := Binary()
	if !ok {
		msg := "versitygw not found on PATH or in $(go env GOPATH)/bin; install it with " +
			"go install github.com/versity/versitygw/cmd/versitygw@" + Version
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := &Server{
		AccessKey: "ferrytest",
		SecretKey: "ferrytest-secret-key",
		Dir:       t.TempDir(),
		t:         t,
		bin:       bin,
	}
	t.Cleanup(s.Stop)
	var err error
	for range portAttempts {
		var port int
		port, err = freePort()
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		s.Endpoint = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s.URL = "http://" + s.Endpoint
		if err = s.start(); err == nil {
			return s
		}
		s.Stop()
		if !errors.Is(err, errExited) {
			break
		}
		// Most likely another process took the port first: try another.
	}
	t.Fatalf("starting versitygw: %v", err)
	return nil
}

// errExited is returned by start when the gateway exits before it answers.
var errExited = errors.New("versitygw exited before answering")

// start runs the binary on s.Endpoint and waits until it answers.
func (s *Server) start() error {
	s.log = &syncBuffer{}
	cmd := exec.Command(s.bin, "--port", s.Endpoint, "--quiet", "posix", s.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("running %s: %w", s.bin, err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit is observed through done; Stop kills on purpose
		close(s.done)
	}()

	client := s.Client(s.t)
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.ListBuckets(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("%w on %s: %s", errExited, s.Endpoint, s.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw on %s not answering after %v (last error: %w): %s",
				s.Endpoint, startTimeout, err, s.log.String())
		}
	}
}

// Stop kills the gateway and waits for it to exit. The data directory
// stays, so Restart serves the same buckets and objects. Stopping a
// stopped server does nothing.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill() // fails only when it has already exited
	<-s.done
	s.cmd = nil
}

// Restart stops the gateway if it runs and starts it again on the same
// port and data directory, for tests of a store that survives a gateway
// restart. It fails the test when the gateway does not come back.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.start()
		if err == nil {
			return
		}
		s.Stop()
		// The old socket may linger a moment; anything else is fatal.
		if !errors.Is(err, errExited) || time.Now().After(deadline) {
			s.t.Fatalf("restarting versitygw: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Options returns minio-go client options for the gateway: its root
// credentials, path-style bucket names, plain HTTP. Change them (say,
// MaxRetries) and pass them to minio.New with s.Endpoint.
func (s *Server) Options() *minio.Options {
	return &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Secure:       false,
		Region:       Region,
		BucketLookup: minio.BucketLookupPath,
	}
}

// Client returns a minio-go client for the gateway with Options.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Endpoint, s.Options())
	if err != nil {
		t.Fatalf("creating S3 client: %v", err)
	}
	return c
}

// Core returns a minio-go Core client for the gateway.
func (s *Server) Core(t testing.TB) *minio.Core {
	t.Helper()
	return &minio.Core{Client: s.Client(t)}
}

// CreateBucket creates bucket name, failing t if it cannot.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{Region: Region}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// syncBuffer collects the gateway's output for error messages.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 64<<10 { // keep the start, where startup errors are
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(b.buf.String())
}
