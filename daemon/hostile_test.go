package daemon_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// Hostile input (issue 5, suite 4), in process, with a raw peer: the
// cases that TestBadPeers, TestRefusalsKeepTheSessionUsable, TestBusyName
// and TestIdleTimeout do not already cover. Each input gets the refusal it
// must get, nothing appears outside the root, and the daemon goes on
// serving. integration/hostile_table_test.go has the cases that need the
// real binaries: races with the file system and floods of connections.

// newHostileServer starts a Server whose root is base/root, beside an
// empty base/outside, and checks at cleanup that nothing was written
// outside the root.
func newHostileServer(t *testing.T, cfg daemon.Config) *testServer {
	t.Helper()
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered before the server's own cleanup, so it runs after the
	// server has shut down.
	t.Cleanup(func() {
		for dir, want := range map[string][]string{base: {"outside", "root"}, outside: nil} {
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
			}
			if strings.Join(got, "/") != strings.Join(want, "/") {
				t.Errorf("%s holds %q, want %q: written outside the root", dir, got, want)
			}
		}
	})
	return newServerAt(t, filepath.Join(base, "root"), cfg)
}

// sendWhole sends data under name on a session past its Hello, with raw
// frames, and expects it committed.
func (p *rawPeer) sendWhole(name string, data []byte) {
	p.t.Helper()
	p.write(msgFrame(offerFor(name, data)))
	if acc := expect[*transfer.Accept](p); acc.DurableOffset != 0 {
		p.t.Fatalf("%q accepted at %d, want 0", name, acc.DurableOffset)
	}
	p.write(msgFrame(&transfer.Data{ID: 1})) // protocol 2: a data run
	for off := 0; off < len(data); off += testChunk {
		p.write(chunkFrame(int64(off), data[off:min(off+testChunk, len(data))], int64(len(data))))
	}
	p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
	if cm := expect[*transfer.Committed](p); cm.Size != int64(len(data)) || cm.Hash != transfer.HashBytes(data) {
		p.t.Fatalf("%q committed as %+v", name, cm)
	}
}

// expectOpenRefusal reads a refusal with code and a message containing
// msg, and checks that the session goes on: a file sent on it under the
// name next commits.
func (s *testServer) expectOpenRefusal(p *rawPeer, code transfer.Code, msg, next string) {
	p.t.Helper()
	re := expect[*transfer.RemoteError](p)
	if re.Code != code || !strings.Contains(re.Message, msg) {
		p.t.Fatalf("refused with code %d %q, want code %d saying %q", re.Code, re.Message, code, msg)
	}
	data := randomData(testChunk+5, 90)
	p.sendWhole(next, data)
	s.checkFile(p.t, next, data)
}

// checkFile checks that name under the root holds data. It reads through
// an os.Root, as the daemon writes, so that names longer than PATH_MAX
// once joined to the root can be read.
func (s *testServer) checkFile(t *testing.T, name string, data []byte) {
	t.Helper()
	r, err := os.OpenRoot(s.root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := r.ReadFile(name)
	if err != nil || string(got) != string(data) {
		t.Fatalf("committed %q: %d bytes (want %d), %v", name, len(got), len(data), err)
	}
}

// nameOf builds a name of n components of length each, joined by "/".
func nameOf(n, length int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = strings.Repeat(string(rune('a'+i%26)), length)
	}
	return strings.Join(parts, "/")
}

// TestHostileNames offers names that must be refused, each on a fresh
// session, and names that look odd but are ordinary files, which must be
// committed under the root and nowhere else.
func TestHostileNames(t *testing.T) {
	srv := newHostileServer(t, daemon.Config{})
	refused := []struct {
		name string
		dest string
		code transfer.Code
		msg  string
	}{
		{"empty", "", transfer.CodeBadName, "empty"},
		{"DEL", "a\x7fb", transfer.CodeBadName, "U+007F"},
		{"C1 control (NEL)", "a\u0085b", transfer.CodeBadName, "U+0085"},
		{"NUL at the end", "a\x00", transfer.CodeBadName, "U+0000"},
		{"replacement character", "a\ufffdb", transfer.CodeBadName, "U+FFFD"},
		{"UTF-16 surrogate in CESU-8", "a\xed\xa0\x80", transfer.CodeBadName, "not valid UTF-8"},
		{"overlong NUL", "a\xc0\x80", transfer.CodeBadName, "not valid UTF-8"},
		{"backslashes climbing out", `..\..\etc\passwd`, transfer.CodeBadName, "backslash"},
		{"empty component", "a//b", transfer.CodeBadName, "empty or '.' component"},
		{"trailing slash", "a/", transfer.CodeBadName, "empty or '.' component"},
		{"dot component", "a/./b", transfer.CodeBadName, "empty or '.' component"},
		{"leading dot-slash", "./a", transfer.CodeBadName, "empty or '.' component"},
		{"dot-dot at the end", "a/..", transfer.CodeBadName, "'..' component"},
		{"reserved directory", ".ferry", transfer.CodeBadName, "reserved"},
		{"a partial's data file", ".ferry/partials/0123456789abcdef0123456789abcdef.data", transfer.CodeBadName, "reserved"},
		// The refusal message is cut at 1024 bytes, so the reason, after
		// the quoted name, does not reach the sender: only its start is
		// checked.
		{"4096 bytes with a 256-byte component", nameOf(15, 255) + "/" + strings.Repeat("z", 256), transfer.CodeBadName, "bad file name"},
	}
	for i, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			p := srv.raw(t)
			p.hello()
			p.write(msgFrame(&transfer.Offer{ID: 1, Size: 10, Mode: 0o600, Name: tt.dest}))
			srv.expectOpenRefusal(p, tt.code, tt.msg, fmt.Sprintf("after-refusal-%d", i))
		})
	}

	// Longer than MaxNameLen: the decoder refuses the frame before taking
	// the name; the session ends.
	t.Run("name of 4097 bytes", func(t *testing.T) {
		p := srv.raw(t)
		p.hello()
		p.write(msgFrame(&transfer.Offer{ID: 1, Size: 10, Mode: 0o600, Name: nameOf(17, 240) + "x"}))
		p.expectRefusal(transfer.CodeProtocol, "string of 4097 bytes above 4096")
	})

	accepted := []struct {
		name string
		dest string
	}{
		{"three dots", "..."},
		{"dot-dot prefix", "..a"},
		{"reserved name below the top", "a/.ferry/x"},
		{"non-ASCII", "ü/日本語.bin"},
		{"dash and star", "-rf *"},
		{"component of 255 bytes", strings.Repeat("y", 255)},
		{"name of exactly 4096 bytes", nameOf(17, 240)},
	}
	for i, tt := range accepted {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.dest) > transfer.MaxNameLen {
				t.Fatalf("bug: %d-byte name", len(tt.dest))
			}
			p := srv.raw(t)
			p.hello()
			data := randomData(2*testChunk+i, byte(100+i))
			p.sendWhole(tt.dest, data)
			srv.checkFile(t, tt.dest, data)
		})
	}
}

// hostileChunk is a chunk frame whose offset field is off, unchecked.
func hostileChunk(off uint64, data []byte) []byte {
	f := chunkFrame(0, data, int64(len(data)))
	binary.BigEndian.PutUint64(f[transfer.FrameHeaderSize:], off)
	return f
}

// TestHostileLies sends lengths, offsets and frames that lie, each on a
// fresh session, while a good transfer on another session waits halfway;
// it commits at the end.
func TestHostileLies(t *testing.T) {
	srv := newHostileServer(t, daemon.Config{IdleTimeout: 10 * time.Second})

	good := randomData(10*testChunk+7, 91)
	gate := newGateConn(srv.dial(t), 5*testChunk)
	gate.resume = true
	c := handshake(t, gate)
	goodDone := make(chan error, 1)
	var goodRes transfer.Result
	go func() {
		var err error
		goodRes, err = c.Send(t.Context(), source(good), "good", transfer.SendOptions{})
		goodDone <- err
	}()
	<-gate.stalled

	data := randomData(3*testChunk, 92)
	size := int64(len(data))
	hello := transfer.EncodeMessage(&transfer.Hello{Major: transfer.ProtocolMajor, ChunkSize: testChunk})
	helloChunk := func(n uint32) []byte {
		b := append([]byte(nil), hello...)
		binary.BigEndian.PutUint32(b[8:], n)
		return frame(transfer.FrameHello, b)
	}
	closed := []struct {
		name string
		run  func(p *rawPeer)
		code transfer.Code
		msg  string
	}{
		{"hello with a chunk size above the maximum", func(p *rawPeer) {
			p.write(helloChunk(transfer.MaxChunkSize + 1))
		}, transfer.CodeProtocol, "chunk size 16777217 is not a power of two from 16384 to 16777216"},
		{"hello with a chunk size of 2^32-1", func(p *rawPeer) {
			p.write(helloChunk(math.MaxUint32))
		}, transfer.CodeProtocol, "chunk size 4294967295 is not a power of two"},
		// Issue 10: chunks are BLAKE3 subtrees only at power-of-two sizes.
		{"hello with a chunk size that is not a power of two", func(p *rawPeer) {
			p.write(helloChunk(3 * transfer.MinChunkSize))
		}, transfer.CodeProtocol, "chunk size 49152 is not a power of two"},
		{"hello with a chunk size below 16 KiB", func(p *rawPeer) {
			p.write(helloChunk(8 << 10))
		}, transfer.CodeProtocol, "chunk size 8192 is not a power of two from 16384"},
		{"empty offer frame", func(p *rawPeer) {
			p.hello()
			p.write(frame(transfer.FrameOffer, nil))
		}, transfer.CodeProtocol, "too short"},
		{"offer whose name runs past the frame", func(p *rawPeer) {
			p.hello()
			b := offerPayload(10, "name")
			p.write(frame(transfer.FrameOffer, b[:len(b)-1]))
		}, transfer.CodeProtocol, "too short"},
		{"offer whose name length says 65535", func(p *rawPeer) {
			p.hello()
			b := offerPayload(10, "name")
			binary.BigEndian.PutUint16(b[68:], math.MaxUint16)
			p.write(frame(transfer.FrameOffer, b))
		}, transfer.CodeProtocol, "string of 65535 bytes above 4096"},
		{"chunk at a negative offset", func(p *rawPeer) {
			p.hello()
			p.offer("negative", size)
			p.write(hostileChunk(1<<63, data[:testChunk]))
		}, transfer.CodeProtocol, "beyond"},
		{"chunk at offset -1", func(p *rawPeer) {
			p.hello()
			p.offer("minus-one", size)
			p.write(hostileChunk(math.MaxUint64, data[:testChunk]))
		}, transfer.CodeProtocol, "beyond"},
		{"chunk at offset 2^62", func(p *rawPeer) {
			p.hello()
			p.offer("at-max", size)
			p.write(hostileChunk(transfer.MaxFileSize, data[:1]))
		}, transfer.CodeProtocol, "beyond"},
		{"chunk ending past 2^62", func(p *rawPeer) {
			p.hello()
			p.offer("past-max", size)
			p.write(hostileChunk(transfer.MaxFileSize-10, data[:testChunk]))
		}, transfer.CodeProtocol, "beyond"},
		{"chunk overlapping the one before", func(p *rawPeer) {
			p.hello()
			p.offer("overlap", size)
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(testChunk/2, data[testChunk/2:testChunk/2+testChunk], int64(len(data))))
		}, transfer.CodeProtocol, "chunk at offset 8192, expected 16384"},
		{"chunk frame shorter than a chunk header", func(p *rawPeer) {
			p.hello()
			p.offer("short-frame", size)
			p.write(frame(transfer.FrameChunk, make([]byte, 10)))
		}, transfer.CodeProtocol, "chunk frame of 10 bytes"},
		{"chunk frame announcing 4 GiB", func(p *rawPeer) {
			p.hello()
			p.offer("four-gib", size)
			p.write([]byte{byte(transfer.FrameChunk), 0xff, 0xff, 0xff, 0xff})
		}, transfer.CodeProtocol, "exceeds limit"},
		{"chunk whose length field says 2^32-1", func(p *rawPeer) {
			p.hello()
			p.offer("length-lies", size)
			f := chunkFrame(0, data[:testChunk], int64(len(data)))
			binary.BigEndian.PutUint32(f[transfer.FrameHeaderSize+8:], math.MaxUint32)
			p.write(f)
		}, transfer.CodeProtocol, "declares 4294967295 bytes"},
		{"trailer of 31 bytes", func(p *rawPeer) {
			p.hello()
			p.offer("short-trailer", size)
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(testChunk, data[testChunk:2*testChunk], int64(len(data))),
				chunkFrame(2*testChunk, data[2*testChunk:], int64(len(data))), frame(transfer.FrameTrailer, append(binary.BigEndian.AppendUint32(nil, 1), make([]byte, 31)...)))
		}, transfer.CodeProtocol, "too short"},
		{"trailer of 33 bytes", func(p *rawPeer) {
			p.hello()
			p.offer("long-trailer", size)
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(testChunk, data[testChunk:2*testChunk], int64(len(data))),
				chunkFrame(2*testChunk, data[2*testChunk:], int64(len(data))), frame(transfer.FrameTrailer, append(binary.BigEndian.AppendUint32(nil, 1), make([]byte, 33)...)))
		}, transfer.CodeProtocol, "trailing"},
		{"nack from the sender", func(p *rawPeer) {
			p.hello()
			p.offer("nack", size)
			p.write(msgFrame(&transfer.Nack{ID: 1, Offset: 0}))
		}, transfer.CodeProtocol, "unexpected nack frame"},
		{"chunk after a refused offer", func(p *rawPeer) {
			p.hello()
			p.write(msgFrame(&transfer.Offer{ID: 1, Size: size, Name: "../refused"}))
			if re := expect[*transfer.RemoteError](p); re.Code != transfer.CodeBadName {
				p.t.Fatalf("refusal %+v", re)
			}
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))))
		}, transfer.CodeProtocol, "chunk outside a data run"},
		{"chunk after the commit", func(p *rawPeer) {
			p.hello()
			p.sendWhole("done-chunk", data)
			p.write(chunkFrame(size, data[:1], int64(len(data))))
		}, transfer.CodeProtocol, "chunk outside a data run"},
		{"trailer after the commit", func(p *rawPeer) {
			p.hello()
			p.sendWhole("done-trailer", data)
			p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
		}, transfer.CodeProtocol, "outside its data run"},
	}
	for _, tt := range closed {
		t.Run(tt.name, func(t *testing.T) {
			p := srv.raw(t)
			tt.run(p)
			p.expectRefusal(tt.code, tt.msg)
		})
	}

	t.Run("declared size 2^62", func(t *testing.T) {
		p := srv.raw(t)
		p.hello()
		p.write(msgFrame(&transfer.Offer{ID: 1, Size: transfer.MaxFileSize, Mode: 0o600, Name: "exabytes"}))
		srv.expectOpenRefusal(p, transfer.CodeNoSpace, "bytes needed", "after-exabytes")
	})
	t.Run("declared size 0", func(t *testing.T) {
		p := srv.raw(t)
		p.hello()
		p.sendWhole("empty", nil)
		if fi, err := os.Stat(filepath.Join(srv.root, "empty")); err != nil || fi.Size() != 0 {
			t.Fatalf("empty file: %v", err)
		}
	})

	close(gate.open)
	if err := <-goodDone; err != nil {
		t.Fatalf("good transfer: %v", err)
	}
	srv.checkCommitted(t, "good", good, goodRes)
	for _, name := range []string{"negative", "minus-one", "at-max", "past-max", "overlap", "short-trailer", "long-trailer", "exabytes", "refused"} {
		if _, err := os.Lstat(filepath.Join(srv.root, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a hostile transfer (%v)", name, err)
		}
	}
}

// TestHostileResume lies about where a resumed transfer goes on. A
// partial made durable by a first session is offered again with the same
// identity; the new session's chunks and trailer do not follow the
// durable offset it was given. Each is refused, and the partial is still
// resumed intact afterwards.
func TestHostileResume(t *testing.T) {
	srv := newHostileServer(t, daemon.Config{SyncBytes: testChunk})
	data := randomData(5*testChunk+9, 93)
	const durable = 2 * testChunk

	p := srv.raw(t)
	p.hello()
	p.write(msgFrame(offerFor("r", data)))
	expect[*transfer.Accept](p)
	p.write(msgFrame(&transfer.Data{ID: 1}), chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(testChunk, data[testChunk:durable], int64(len(data))))
	for {
		m, err := p.read()
		if err != nil {
			t.Fatalf("waiting for the ack of %d: %v", durable, err)
		}
		if a, ok := m.(*transfer.Ack); ok && a.DurableOffset == durable {
			break
		}
	}
	p.conn.Close()

	// resumed opens a session that resumes "r" at the durable offset; the
	// first session may still be letting go of the name.
	resumed := func(t *testing.T) *rawPeer {
		t.Helper()
		p, acc := offerUntilAccepted(t, srv, "r", data)
		if acc.DurableOffset != durable || acc.Flags&transfer.AcceptRestarted != 0 {
			t.Fatalf("accept %+v, want a resume at %d", acc, durable)
		}
		return p
	}
	tests := []struct {
		name string
		send func(p *rawPeer)
		msg  string
	}{
		{"data run rewinds into the durable data", func(p *rawPeer) {
			p.write(msgFrame(&transfer.Data{ID: 1, Offset: 0}))
		}, "data run of transfer 1 at offset 0, expected 32768"},
		{"first chunk rewinds into the durable data", func(p *rawPeer) {
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))))
		}, "chunk at offset 0, expected 32768"},
		{"first chunk starts one byte early", func(p *rawPeer) {
			p.write(chunkFrame(durable-1, data[durable-1:durable-1+testChunk], int64(len(data))))
		}, "chunk at offset 32767, expected 32768"},
		{"first chunk skips ahead", func(p *rawPeer) {
			p.write(chunkFrame(durable+testChunk, data[durable+testChunk:durable+2*testChunk], int64(len(data))))
		}, "chunk at offset 49152, expected 32768"},
		{"trailer right after the resume", func(p *rawPeer) {
			p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
		}, "trailer at offset 32768 of 81929"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := resumed(t)
			if !strings.HasPrefix(tt.name, "data run") {
				p.write(msgFrame(&transfer.Data{ID: 1, Offset: durable})) // protocol 2: the run opens at the durable offset
			}
			tt.send(p)
			p.expectRefusal(transfer.CodeProtocol, tt.msg)
		})
	}

	res := srv.sendRetryBusy(t, source(data), "r")
	srv.checkCommitted(t, "r", data, res)
	if res.ResumedFrom != durable || res.Restarted {
		t.Errorf("after the hostile resumes: resumed from %d (restarted %v), want %d", res.ResumedFrom, res.Restarted, durable)
	}
	srv.checkNoPartials(t)
}
