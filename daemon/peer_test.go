package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// Tests with a hand-driven peer that writes raw frames, for what
// transfer.Client never sends.

// rawPeer is the sender end of a session driven frame by frame. Writes go
// through one goroutine in order, so that a daemon that stops reading
// cannot block the test; reads have a deadline.
type rawPeer struct {
	t      *testing.T
	conn   net.Conn
	r      *bufio.Reader
	writes chan []byte
}

func (s *testServer) raw(t *testing.T) *rawPeer {
	t.Helper()
	p := &rawPeer{t: t, conn: s.dial(t), writes: make(chan []byte, 64)}
	p.r = bufio.NewReader(p.conn)
	go func() {
		for b := range p.writes {
			if b == nil {
				time.Sleep(50 * time.Millisecond) // a pause, for slow peers
				continue
			}
			if _, err := p.conn.Write(b); err != nil {
				for range p.writes {
				}
				return
			}
		}
	}()
	t.Cleanup(func() { close(p.writes); p.conn.Close() })
	return p
}

func (p *rawPeer) write(b ...[]byte) {
	for _, x := range b {
		p.writes <- x
	}
}

func frame(typ transfer.FrameType, payload []byte) []byte {
	b := make([]byte, transfer.FrameHeaderSize, transfer.FrameHeaderSize+len(payload))
	b[0] = byte(typ)
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

func msgFrame(m transfer.Message) []byte {
	var b bytes.Buffer
	if err := transfer.WriteMessage(&b, m); err != nil {
		panic("bug: msgFrame: " + err.Error())
	}
	return b.Bytes()
}

// chunkFrame frames data at off in a file of size bytes with its chunk
// hash (transfer.ChunkHash); a chunk that is no aligned subtree gets a
// hash that cannot match.
func chunkFrame(off int64, data []byte, size int64) []byte {
	h, err := transfer.ChunkHash(data, off, size)
	if err != nil {
		h = transfer.Hash{2}
	}
	return frame(transfer.FrameChunk, transfer.EncodeChunk(&transfer.Chunk{Offset: off, Hash: h, Data: data}))
}

func badChunkFrame(off int64, data []byte) []byte {
	return frame(transfer.FrameChunk, transfer.EncodeChunk(&transfer.Chunk{Offset: off, Hash: transfer.Hash{1}, Data: data}))
}

func (p *rawPeer) read() (transfer.Message, error) {
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	return transfer.ReadMessage(p.r)
}

// expect reads the next message other than an Ack and checks its type.
func expect[M transfer.Message](p *rawPeer) M {
	p.t.Helper()
	for {
		m, err := p.read()
		if err != nil {
			p.t.Fatalf("reading: %v", err)
		}
		if _, ok := m.(*transfer.Ack); ok {
			continue
		}
		got, ok := m.(M)
		if !ok {
			p.t.Fatalf("got %#v, want a %T", m, got)
		}
		return got
	}
}

// expectRefusal reads up to a refusal with code, then the end of the
// session.
func (p *rawPeer) expectRefusal(code transfer.Code, msg string) *transfer.RemoteError {
	p.t.Helper()
	re := expect[*transfer.RemoteError](p)
	if re.Code != code {
		p.t.Fatalf("refused with code %d (%q), want %d", re.Code, re.Message, code)
	}
	if !strings.Contains(re.Message, msg) {
		p.t.Errorf("refusal %q does not say %q", re.Message, msg)
	}
	p.expectClosed()
	return re
}

// expectClosed reads until the daemon closes the session; Acks may still
// come (the daemon makes verified data durable on its way out).
func (p *rawPeer) expectClosed() {
	p.t.Helper()
	for {
		m, err := p.read()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			p.t.Fatalf("want the session closed, got %v", err)
		}
		if _, ok := m.(*transfer.Ack); !ok {
			p.t.Fatalf("want the session closed, got %#v", m)
		}
	}
}

func (p *rawPeer) hello() {
	p.t.Helper()
	p.write(msgFrame(&transfer.Hello{Major: transfer.ProtocolMajor, ChunkSize: testChunk, Agent: "raw"}))
	if h := expect[*transfer.Hello](p); h.ChunkSize != testChunk || h.Major != transfer.ProtocolMajor {
		p.t.Fatalf("daemon hello %+v", h)
	}
}

func (p *rawPeer) offer(name string, size int64) *transfer.Accept {
	p.t.Helper()
	p.write(msgFrame(&transfer.Offer{ID: 1, Size: size, Mode: 0o600, Name: name}))
	acc := expect[*transfer.Accept](p)
	p.write(msgFrame(&transfer.Data{ID: 1, Offset: acc.DurableOffset})) // protocol 2: a data run
	return acc
}

// offerFor is the offer transfer.Client makes for source(data).
func offerFor(name string, data []byte) *transfer.Offer {
	return &transfer.Offer{ID: 1, Size: int64(len(data)), Mode: 0o640, MtimeNs: testMtime.UnixNano(), Inode: 99,
		PrefixID: transfer.HashBytes(data[:min(len(data), transfer.IdentityPrefix)]), Name: name}
}

func offerPayload(size uint64, name string) []byte {
	p := transfer.EncodeMessage(&transfer.Offer{ID: 1, Size: 1, Mode: 0o600, Name: name})
	binary.BigEndian.PutUint64(p[8:], size)
	return p
}

// TestBadPeers drives sessions that send garbage, too much, too little or
// frames out of order. Each gets a refusal naming the problem and a closed
// session, while a transfer on another session of the same Server goes on
// and commits.
func TestBadPeers(t *testing.T) {
	srv := newServer(t, daemon.Config{IdleTimeout: 10 * time.Second, HandshakeTimeout: 200 * time.Millisecond})

	// A good transfer, paused halfway for the whole test.
	good := randomData(12*testChunk+3, 61)
	gate := newGateConn(srv.dial(t), 6*testChunk)
	gate.resume = true
	c := handshake(t, gate)
	goodDone := make(chan error, 1)
	var goodRes transfer.Result
	go func() {
		var err error
		goodRes, err = c.Send(context.Background(), source(good), "good", transfer.SendOptions{})
		goodDone <- err
	}()
	<-gate.stalled

	data := randomData(3*testChunk, 62)
	helloV1 := transfer.EncodeMessage(&transfer.Hello{Major: transfer.ProtocolMajor, ChunkSize: testChunk})
	withMajor := func(major uint16) []byte {
		p := append([]byte(nil), helloV1...)
		binary.BigEndian.PutUint16(p[4:], major)
		return p
	}
	tests := []struct {
		name string
		run  func(p *rawPeer)
		code transfer.Code
		msg  string
		// open: the refusal is the transfer's alone (protocol 2); the
		// session goes on.
		open bool
	}{
		{"garbage bytes", func(p *rawPeer) {
			p.write([]byte{0xff, 0xfe, 0x00, 0x13, 0x37, 0x42, 0x42, 0x42})
		}, transfer.CodeProtocol, "unknown frame type 255", false},
		{"HTTP request", func(p *rawPeer) {
			p.write([]byte("GET / HTTP/1.1\r\nHost: ferry\r\n\r\n"))
		}, transfer.CodeProtocol, "unknown frame type 71", false},
		{"TLS client hello", func(p *rawPeer) {
			p.write([]byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03})
		}, transfer.CodeProtocol, "unknown frame type 22", false},
		{"hello with bad magic", func(p *rawPeer) {
			p.write(frame(transfer.FrameHello, append([]byte("FTP!"), helloV1[4:]...)))
		}, transfer.CodeProtocol, "not a ferry peer", false},
		{"hello truncated inside its fields", func(p *rawPeer) {
			p.write(frame(transfer.FrameHello, helloV1[:6]))
		}, transfer.CodeProtocol, "too short", false},
		{"hello with trailing bytes", func(p *rawPeer) {
			p.write(frame(transfer.FrameHello, append(append([]byte(nil), helloV1...), 0, 1, 't', 0)))
		}, transfer.CodeProtocol, "trailing", false},
		{"hello of major version 1", func(p *rawPeer) {
			p.write(frame(transfer.FrameHello, withMajor(1)))
		}, transfer.CodeVersion, "peer speaks v1.0, this side v2", false},
		{"hello of major version 3", func(p *rawPeer) {
			p.write(frame(transfer.FrameHello, withMajor(3)))
		}, transfer.CodeVersion, "peer speaks v3.0, this side v2", false},
		{"hello of major version 3 in another layout", func(p *rawPeer) {
			p.write(frame(transfer.FrameHello, []byte{'F', 'R', 'R', 'Y', 0, 3, 0, 1}))
		}, transfer.CodeVersion, "peer speaks v3.1, this side v2", false},
		// Issue 10: a v1 sender (plain BLAKE3 chunk hashes, 4 KiB chunks
		// allowed) is turned away with a reason it can print.
		{"hello of a version 1 sender with 4 KiB chunks", func(p *rawPeer) {
			p.write(msgFrame(&transfer.Hello{Major: 1, ChunkSize: 4096, Agent: "ferry/0.9"}))
		}, transfer.CodeVersion, "peer speaks v1.0, this side v2", false},
		{"hello of major version 0", func(p *rawPeer) {
			p.write(frame(transfer.FrameHello, withMajor(0)))
		}, transfer.CodeVersion, "v0.0", false},
		{"hello with a chunk size below the minimum", func(p *rawPeer) {
			p.write(msgFrame(&transfer.Hello{Major: transfer.ProtocolMajor, ChunkSize: 512}))
		}, transfer.CodeProtocol, "chunk size 512", false},
		{"hello announcing 4 GiB", func(p *rawPeer) {
			p.write([]byte{byte(transfer.FrameHello), 0xff, 0xff, 0xff, 0xff}, make([]byte, 1024))
		}, transfer.CodeProtocol, "exceeds limit", false},
		{"hello cut mid-frame, then silence", func(p *rawPeer) {
			p.write(frame(transfer.FrameHello, helloV1)[:10])
		}, transfer.CodeTimeout, "no frame", false},
		{"offer before hello", func(p *rawPeer) {
			p.write(msgFrame(&transfer.Offer{ID: 1, Size: 1, Name: "x"}))
		}, transfer.CodeProtocol, "expected hello", false},
		{"second hello", func(p *rawPeer) {
			p.hello()
			p.write(frame(transfer.FrameHello, helloV1))
		}, transfer.CodeProtocol, "unexpected hello frame", false},
		{"chunk without offer", func(p *rawPeer) {
			p.hello()
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))))
		}, transfer.CodeProtocol, "chunk outside a data run", false},
		{"trailer without offer", func(p *rawPeer) {
			p.hello()
			p.write(msgFrame(&transfer.Trailer{ID: 1}))
		}, transfer.CodeProtocol, "outside its data run", false},
		{"control frame above 64 KiB", func(p *rawPeer) {
			p.hello()
			p.write(frame(transfer.FrameOffer, make([]byte, transfer.MaxControlPayload+1)))
		}, transfer.CodeProtocol, "exceeds limit", false},
		{"declared size 2^63-1", func(p *rawPeer) {
			p.hello()
			p.write(frame(transfer.FrameOffer, offerPayload(1<<63-1, "huge")))
		}, transfer.CodeProtocol, "above", false},
		{"declared size 2^62+1", func(p *rawPeer) {
			p.hello()
			p.write(frame(transfer.FrameOffer, offerPayload(transfer.MaxFileSize+1, "huge")))
		}, transfer.CodeProtocol, "above", false},
		{"offer with mode type bits", func(p *rawPeer) {
			p.hello()
			b := offerPayload(1, "m")
			binary.BigEndian.PutUint32(b[16:], 0o100644)
			p.write(frame(transfer.FrameOffer, b))
		}, transfer.CodeProtocol, "mode", false},
		{"chunk at the wrong offset", func(p *rawPeer) {
			p.hello()
			p.offer("wrong-offset", int64(len(data)))
			p.write(chunkFrame(testChunk, data[testChunk:2*testChunk], int64(len(data))))
		}, transfer.CodeProtocol, "expected 0", false},
		{"chunk skipping ahead", func(p *rawPeer) {
			p.hello()
			p.offer("skip", int64(len(data)))
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(2*testChunk, data[2*testChunk:], int64(len(data))))
		}, transfer.CodeProtocol, "expected 16384", false},
		{"chunk repeated", func(p *rawPeer) {
			p.hello()
			p.offer("repeat", int64(len(data)))
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(0, data[:testChunk], int64(len(data))))
		}, transfer.CodeProtocol, "expected 16384", false},
		{"chunk longer than the frame limit", func(p *rawPeer) {
			p.hello()
			p.offer("long-chunk", 1<<20)
			big := make([]byte, testChunk+1)
			p.write(chunkFrame(0, big, int64(len(data))))
		}, transfer.CodeProtocol, "exceeds limit", false},
		{"chunk whose length field disagrees with its frame", func(p *rawPeer) {
			p.hello()
			p.offer("disagree", int64(len(data)))
			f := chunkFrame(0, data[:100], int64(len(data)))
			binary.BigEndian.PutUint32(f[transfer.FrameHeaderSize+8:], 99)
			p.write(f)
		}, transfer.CodeProtocol, "declares 99 bytes", false},
		{"chunk past the declared size", func(p *rawPeer) {
			p.hello()
			p.offer("past-size", 100)
			p.write(chunkFrame(0, data[:200], int64(len(data))))
		}, transfer.CodeProtocol, "of a file of 100 bytes in 16384-byte chunks", false},
		{"empty chunk", func(p *rawPeer) {
			p.hello()
			p.offer("empty-chunk", 100)
			p.write(chunkFrame(0, nil, int64(len(data))))
		}, transfer.CodeProtocol, "chunk [0,+0) of a file of 100 bytes", false},
		{"trailer before all data", func(p *rawPeer) {
			p.hello()
			p.offer("early-trailer", int64(len(data)))
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
		}, transfer.CodeProtocol, "trailer at offset 16384 of 49152", false},
		{"trailer with another hash", func(p *rawPeer) {
			p.hello()
			p.offer("wrong-hash", int64(len(data)))
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(testChunk, data[testChunk:2*testChunk], int64(len(data))),
				chunkFrame(2*testChunk, data[2*testChunk:], int64(len(data))), msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.Hash{7}}))
		}, transfer.CodeIntegrity, "whole-file BLAKE3", true},
		{"ack from the sender", func(p *rawPeer) {
			p.hello()
			p.offer("ack", int64(len(data)))
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), msgFrame(&transfer.Ack{ID: 1, DurableOffset: 1}))
		}, transfer.CodeProtocol, "unexpected ack frame", false},
		{"offer in the middle of a transfer", func(p *rawPeer) {
			p.hello()
			p.offer("mid-offer", int64(len(data)))
			p.write(chunkFrame(0, data[:testChunk], int64(len(data))), msgFrame(&transfer.Offer{ID: 1, Size: 1, Name: "other"}))
		}, transfer.CodeProtocol, "which is open", false},
		{"unknown frame type during a transfer", func(p *rawPeer) {
			p.hello()
			p.offer("unknown-type", int64(len(data)))
			p.write(frame(42, nil))
		}, transfer.CodeProtocol, "unknown frame type 42", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := srv.raw(t)
			tt.run(p)
			if tt.open {
				srv.expectOpenRefusal(p, tt.code, tt.msg, "after-"+strings.ReplaceAll(tt.name, " ", "-"))
				return
			}
			p.expectRefusal(tt.code, tt.msg)
		})
	}

	// The good transfer was untouched by all of this.
	close(gate.open)
	if err := <-goodDone; err != nil {
		t.Fatalf("good transfer: %v", err)
	}
	srv.checkCommitted(t, "good", good, goodRes)
	if goodRes.ResumedFrom != 0 || goodRes.SentBytes != int64(len(good)) {
		t.Errorf("good transfer result %+v", goodRes)
	}
	for _, name := range []string{"wrong-hash", "early-trailer", "past-size"} {
		if _, err := os.Stat(filepath.Join(srv.root, name)); err == nil {
			t.Errorf("%s committed by a bad peer", name)
		}
	}
}

// TestGoBackN checks the daemon side of a rejected chunk: a Nack, frames
// in flight behind the bad chunk ignored (trailer included), then the
// resent chunks accepted.
func TestGoBackN(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	data := randomData(3*testChunk, 71)
	p := srv.raw(t)
	p.hello()
	p.offer("f", int64(len(data)))
	p.write(
		chunkFrame(0, data[:testChunk], int64(len(data))),
		badChunkFrame(testChunk, data[testChunk:2*testChunk]),
		chunkFrame(2*testChunk, data[2*testChunk:], int64(len(data))),        // in flight: ignored
		badChunkFrame(2*testChunk, data[2*testChunk:]),                       // in flight, bad: ignored, no Nack
		msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}),   // in flight: ignored
		msgFrame(&transfer.Data{ID: 1, Offset: testChunk}),                   // a new data run from the nacked chunk
		chunkFrame(testChunk, data[testChunk:2*testChunk], int64(len(data))), // the resend
		chunkFrame(2*testChunk, data[2*testChunk:], int64(len(data))),        // and on
		msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}),   // again
	)
	if n := expect[*transfer.Nack](p); n.Offset != testChunk {
		t.Fatalf("nack at %d, want %d", n.Offset, testChunk)
	}
	cm := expect[*transfer.Committed](p)
	if cm.Size != int64(len(data)) || cm.Hash != transfer.HashBytes(data) {
		t.Fatalf("committed %+v", cm)
	}
	got, err := os.ReadFile(filepath.Join(srv.root, "f"))
	if err != nil || string(got) != string(data) {
		t.Fatalf("committed file: %v", err)
	}
}

func TestDaemonLimitsBadChunks(t *testing.T) {
	srv := newServer(t, daemon.Config{MaxBadChunks: 2})
	data := randomData(testChunk, 72)
	p := srv.raw(t)
	p.hello()
	p.offer("f", int64(len(data)))
	for range 2 {
		p.write(badChunkFrame(0, data))
		if n := expect[*transfer.Nack](p); n.Offset != 0 {
			t.Fatalf("nack at %d", n.Offset)
		}
		p.write(msgFrame(&transfer.Data{ID: 1})) // protocol 2: the resend is a new data run
	}
	p.write(badChunkFrame(0, data))
	// The transfer is refused; the session goes on (protocol 2).
	srv.expectOpenRefusal(p, transfer.CodeIntegrity, "3 chunks failed verification", "next")
}

func TestIdleTimeout(t *testing.T) {
	const idle = 150 * time.Millisecond
	data := randomData(4*testChunk, 81)
	tests := []struct {
		name    string
		run     func(p *rawPeer)
		durable int64 // where a sender resumes afterwards; -1: not checked
	}{
		{"silent from the start", func(p *rawPeer) {}, -1},
		{"silent after hello", func(p *rawPeer) { p.hello() }, -1},
		{"silent after the offer", func(p *rawPeer) { p.hello(); p.offer("f", int64(len(data))) }, -1},
		{"silent mid-transfer", func(p *rawPeer) {
			p.hello()
			p.write(msgFrame(offerFor("f", data)))
			expect[*transfer.Accept](p)
			p.write(msgFrame(&transfer.Data{ID: 1}), chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(testChunk, data[testChunk:2*testChunk], int64(len(data))))
		}, 2 * testChunk},
		{"chunk cut mid-frame", func(p *rawPeer) {
			p.hello()
			p.write(msgFrame(offerFor("f", data)))
			expect[*transfer.Accept](p)
			p.write(msgFrame(&transfer.Data{ID: 1}), chunkFrame(0, data[:testChunk], int64(len(data))), chunkFrame(testChunk, data[testChunk:2*testChunk], int64(len(data)))[:1000])
		}, testChunk},
		{"hello trickled byte by byte (slow loris)", func(p *rawPeer) {
			for _, b := range msgFrame(&transfer.Hello{Major: transfer.ProtocolMajor, ChunkSize: testChunk}) {
				p.write([]byte{b}, nil)
			}
		}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, daemon.Config{IdleTimeout: idle})
			p := srv.raw(t)
			start := time.Now()
			tt.run(p)
			p.expectRefusal(transfer.CodeTimeout, "idle timeout")
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("dropped after %v", d)
			}
			if tt.durable < 0 {
				return
			}
			// The verified chunks are durable: a sender resumes after them.
			res := srv.sendRetryBusy(t, source(data), "f")
			srv.checkCommitted(t, "f", data, res)
			if res.ResumedFrom != tt.durable {
				t.Errorf("resumed from %d, want %d", res.ResumedFrom, tt.durable)
			}
		})
	}
}
