package main

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a strings.Builder safe for the batcher's timer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLineBatcherWritesPromptly: --json records are batched, yet each
// reaches stdout without waiting for the next record or the end of the
// run, and many records go out in one write.
func TestLineBatcherWritesPromptly(t *testing.T) {
	var out syncBuffer
	b := newLineBatcher(&out)
	for range 100 {
		if _, err := b.Write([]byte("{\"status\":\"unchanged\"}\n")); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "\n") < 100 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 100 records written without a Flush", strings.Count(out.String(), "\n"))
		}
		time.Sleep(time.Millisecond)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestLineBatcherKeepsError: a failed write of buffered records is
// reported by Flush and every later Write, so the run fails.
func TestLineBatcherKeepsError(t *testing.T) {
	b := newLineBatcher(failWriter{})
	if _, err := b.Write([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err == nil {
		t.Fatal("Flush: nil error, want the write's")
	}
	if _, err := b.Write([]byte("{}\n")); err == nil {
		t.Fatal("Write after a failed flush: nil error")
	}
}
