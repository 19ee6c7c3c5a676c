package integration

import (
	"encoding/binary"
	"testing"

	"github.com/ferry-dev/ferry/internal/faultproxy"
)

// newProxy starts a fault proxy in front of a ferryd at upstream. It
// terminates TLS (faultproxy.NewTLS), so that its faults and counters act
// on ferry's frames as they did before TLS, and the test's senders trust
// its key (known hosts).
func newProxy(t *testing.T, upstream string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.NewTLS(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	trust(t, p.Addr(), p.Fingerprint())
	return p
}

// Frame layout of the wire protocol (docs/PROTOCOL.md): every frame is a
// type byte and a big-endian uint32 payload length; a chunk frame's
// payload is offset (8), length (4), BLAKE3 (32), then the data.
const (
	frameHeaderSize = 5
	frameChunk      = 5
	frameData       = 10
	chunkHashAt     = frameHeaderSize + 8 + 4 // where a chunk frame's hash starts
)

// wire is how one file's transfer lays out on the client→server stream,
// measured from an unfaulted probe transfer rather than assumed, so that
// cut and flip positions land where their names say.
type wire struct {
	size        int64 // of the file
	hello       int64 // bytes of the hello frame
	preamble    int64 // bytes before the first chunk frame: hello, offer and data run
	chunkHeader int64 // bytes of a chunk frame before its data
	trailer     int64 // bytes after the last chunk frame
	total       int64 // bytes of the whole session
}

// probeWire sends src to a scratch daemon through a recording proxy and
// reads the frame boundaries off the recorded stream. Tests then send the
// same src under the same name, so their offer frames have the same size.
func probeWire(t *testing.T, src string, size int64) wire {
	t.Helper()
	if size < chunkSize {
		t.Fatalf("probe needs at least one full chunk, got %d bytes", size)
	}
	d := startDaemon(t, t.TempDir())
	p := newProxy(t, d.addr)
	p.RecordHead(64 << 10)
	wantCode(t, runFerry(t, sendArgs(p.Addr(), src)...), exitOK)
	conns := p.Conns()
	if len(conns) != 1 {
		t.Fatalf("probe used %d connections, want 1", len(conns))
	}
	head := conns[0].Head
	frame := func(at int64) (typ byte, length int64) {
		if at+frameHeaderSize > int64(len(head)) {
			t.Fatalf("probe: frame at %d beyond the %d recorded bytes", at, len(head))
		}
		return head[at], int64(binary.BigEndian.Uint32(head[at+1:]))
	}
	w := wire{size: size, total: conns[0].Bytes[0]}
	_, l := frame(0)
	w.hello = frameHeaderSize + l
	_, l = frame(w.hello)
	w.preamble = w.hello + frameHeaderSize + l
	if typ, l := frame(w.preamble); typ == frameData { // protocol 2: the data run opens
		w.preamble += frameHeaderSize + l
	}
	typ, l := frame(w.preamble)
	if typ != frameChunk {
		t.Fatalf("probe: frame after hello and offer has type %d, want a chunk (%d)", typ, frameChunk)
	}
	w.chunkHeader = frameHeaderSize + l - chunkSize
	w.trailer = w.total - w.preamble - w.chunks(0)*w.chunkHeader - size
	if w.trailer <= 0 || w.trailer > 1024 {
		t.Fatalf("probe: implausible layout %+v", w)
	}
	return w
}

// chunks is how many chunk frames carry the file from offset from.
func (w wire) chunks(from int64) int64 {
	return (w.size - from + chunkSize - 1) / chunkSize
}

// chunkFrame is the offset of the i-th chunk frame (0-based) of a session
// that starts at offset 0.
func (w wire) chunkFrame(i int64) int64 {
	return w.preamble + i*(w.chunkHeader+chunkSize)
}

// durableAfter is the data a daemon holds in whole, verified chunks once
// the first n bytes of a session from offset 0 reached it.
func (w wire) durableAfter(n int64) int64 {
	off, durable := w.preamble, int64(0)
	for durable < w.size {
		l := min(chunkSize, w.size-durable)
		if off+w.chunkHeader+l > n {
			break
		}
		durable += l
		off += w.chunkHeader + l
	}
	return durable
}

// session is the bytes of a session that resumes at from and sends
// every chunk once.
func (w wire) session(from int64) int64 {
	return w.preamble + w.chunks(from)*w.chunkHeader + (w.size - from) + w.trailer
}
