package s3store_test

// A throwaway versitygw harness until internal/versitygw (built on the
// s3lease branch) is merged. Then this file becomes
//
//	type gwServer = versitygw.Server
//
//	func startGW(t testing.TB) *gwServer { return versitygw.Start(t) }
//
// (the same fields and methods: Endpoint, URL, AccessKey, SecretKey,
// Client, Core, CreateBucket, Stop, Restart).

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

type gwServer struct {
	Endpoint, URL, AccessKey, SecretKey, Dir string
	t                                        testing.TB
	bin                                      string
	cmd                                      *exec.Cmd
	done                                     chan struct{}
}

func startGW(t testing.TB) *gwServer {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		home, _ := os.UserHomeDir()
		bin = filepath.Join(home, "go", "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("versitygw not installed")
			}
			t.Skip("versitygw not installed: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s := &gwServer{Endpoint: "127.0.0.1:" + strconv.Itoa(port), AccessKey: "ferrytest", SecretKey: "ferrytest-secret-key",
		Dir: t.TempDir(), t: t, bin: bin}
	s.URL = "http://" + s.Endpoint
	t.Cleanup(s.Stop)
	s.start()
	return s
}

func (s *gwServer) start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, "--port", s.Endpoint, "--quiet", "posix", s.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
	c := s.Client(s.t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.ListBuckets(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("versitygw not answering: %v", err)
		}
		select {
		case <-s.done:
			s.t.Fatalf("versitygw exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *gwServer) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func (s *gwServer) Restart() { s.Stop(); s.start() }

func (s *gwServer) Client(t testing.TB) *minio.Client {
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (s *gwServer) Core(t testing.TB) *minio.Core { return &minio.Core{Client: s.Client(t)} }

func (s *gwServer) CreateBucket(t testing.TB, name string) {
	if err := s.Client(t).MakeBucket(context.Background(), name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatal(err)
	}
}
