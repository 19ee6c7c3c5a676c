package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferry-dev/ferry/transfer"
)

const mib = 1 << 20

// size is a file size as typed on the command line and in bytes; the
// label names the file in the table and the JSON.
type size struct {
	label string
	bytes int64
}

// parseSize reads "100M", "1G", "4096" (bytes) or "0". Units are binary:
// K = 1024.
func parseSize(s string) (size, error) {
	s = strings.TrimSpace(s)
	num, mult := s, int64(1)
	if s != "" {
		if i := strings.IndexByte("KMGT", strings.ToUpper(s)[len(s)-1]); i >= 0 {
			num, mult = s[:len(s)-1], int64(1)<<(10*(i+1))
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return size{}, fmt.Errorf("bad size %q: want a number of bytes with an optional K, M, G or T", s)
	}
	return size{label: s, bytes: n * mult}, nil
}

func parseSizes(list string) ([]size, error) {
	var out []size
	for _, f := range strings.Split(list, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		s, err := parseSize(f)
		if err != nil {
			return nil, err
		}
		if s.bytes == 0 {
			return nil, fmt.Errorf("size %q is zero", f)
		}
		out = append(out, s)
	}
	return out, nil
}

// source is a file to send and the BLAKE3 the daemon must commit.
type source struct {
	path   string
	size   size
	blake3 string
}

// makeRandom writes n pseudo-random bytes (seeded by n, so a file of one
// size is the same in every run) to dir and fsyncs them, so that no
// writeback of the source competes with the first run.
func makeRandom(dir string, sz size) (source, error) {
	path := filepath.Join(dir, "src-"+sz.label+".bin")
	f, err := os.Create(path)
	if err != nil {
		return source{}, err
	}
	rng := rand.NewChaCha8([32]byte{0: 'f', 1: 'e', 2: 'r', 3: 'r', 4: 'y', 8: byte(sz.bytes >> 20)})
	_, err = io.CopyBuffer(f, io.LimitReader(rng, sz.bytes), make([]byte, mib))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return source{}, fmt.Errorf("writing %s: %w", path, err)
	}
	h, err := hashFile(path)
	return source{path: path, size: sz, blake3: h}, err
}

// makeSparse creates a file of n bytes with no data blocks: reading it
// costs no disk, so its run shows first chunk and memory, not the disk.
func makeSparse(dir string, sz size) (source, error) {
	path := filepath.Join(dir, "sparse-"+sz.label+".bin")
	f, err := os.Create(path)
	if err != nil {
		return source{}, err
	}
	err = f.Truncate(sz.bytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return source{}, fmt.Errorf("creating %s: %w", path, err)
	}
	h, err := transfer.HashReader(io.LimitReader(zeros{}, sz.bytes))
	return source{path: path, size: sz, blake3: hex.EncodeToString(h[:])}, err
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close() //nolint:errcheck // opened read-only
	h, err := transfer.HashReader(f)
	if err != nil {
		return "", fmt.Errorf("hashing %s: %w", path, err)
	}
	return hex.EncodeToString(h[:]), nil
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
