package daemon_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/transfer"
)

// The session reads frames on a reader goroutine ahead of the loop that
// verifies chunks, which hands them to a writer goroutine (receive.go,
// frameReader). These tests send whole data runs at once, so that every
// stage holds chunks when something goes wrong, and check that the
// pipeline keeps the order of DESIGN.md: nothing after a bad chunk is
// written or acknowledged durable, a cut keeps exactly the verified
// prefix, and the idle timeout runs only while the daemon waits for the
// sender.

// partialData returns the contents of the only partial's data file under
// root.
func partialData(t *testing.T, root string) []byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(root, ".ferry", "partials", "*.data"))
	if err != nil || len(names) != 1 {
		t.Fatalf("partial data files %q, %v; want one", names, err)
	}
	b, err := os.ReadFile(names[0])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// resumeOffer offers data under name on a new session until the daemon
// accepts it (the session before may still hold the name) and returns the
// durable offset it resumes at.
func resumeOffer(t *testing.T, srv *testServer, name string, data []byte) int64 {
	t.Helper()
	p, acc := offerUntilAccepted(t, srv, name, data)
	if acc.Flags&transfer.AcceptRestarted != 0 {
		t.Fatalf("accept %+v: restarted, want a resume", acc)
	}
	p.conn.Close()
	return acc.DurableOffset
}

// offerUntilAccepted offers data under name on new sessions, again while
// the daemon answers busy (a session before may still be letting go of
// the name, which no answer tells), for up to 5 s, and returns the session
// that got the Accept with it.
func offerUntilAccepted(t *testing.T, srv *testServer, name string, data []byte) (*rawPeer, *transfer.Accept) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p := srv.raw(t)
		p.hello()
		p.write(msgFrame(offerFor(name, data)))
		m, err := p.read()
		if err != nil {
			t.Fatal(err)
		}
		if acc, ok := m.(*transfer.Accept); ok {
			return p, acc
		}
		if re, ok := m.(*transfer.RemoteError); !ok || re.Code != transfer.CodeBusy || time.Now().After(deadline) {
			t.Fatalf("offer to resume: %#v", m)
		}
		time.Sleep(5 * time.Millisecond) // polling: busy is the only answer until the name is free
	}
}

// TestPipelinedBadChunk sends a whole data run with a corrupt chunk in
// the middle, syncing at every chunk: the chunk is nacked, no Ack goes
// past it, neither it nor any of the good chunks read behind it is
// written, and after a cut the transfer resumes exactly at it.
func TestPipelinedBadChunk(t *testing.T) {
	srv := newServer(t, daemon.Config{SyncBytes: testChunk})
	const chunks = 40
	data := randomData(chunks*testChunk+5, 77)
	size := int64(len(data))
	const bad = 17 * testChunk

	p := srv.raw(t)
	p.hello()
	p.write(msgFrame(offerFor("f", data)))
	if acc := expect[*transfer.Accept](p); acc.DurableOffset != 0 {
		t.Fatalf("accepted at %d", acc.DurableOffset)
	}
	frames := [][]byte{msgFrame(&transfer.Data{ID: 1})}
	for off := int64(0); off < size; off += testChunk {
		end := min(off+testChunk, size)
		if off == bad {
			frames = append(frames, badChunkFrame(off, data[off:end]))
			continue
		}
		frames = append(frames, chunkFrame(off, data[off:end], size))
	}
	frames = append(frames, msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
	p.write(frames...)
	for {
		m, err := p.read()
		if err != nil {
			t.Fatalf("waiting for the nack: %v", err)
		}
		if a, ok := m.(*transfer.Ack); ok {
			if a.DurableOffset > bad {
				t.Fatalf("ack of %d, past the bad chunk at %d", a.DurableOffset, bad)
			}
			continue
		}
		n, ok := m.(*transfer.Nack)
		if !ok || n.Offset != bad {
			t.Fatalf("got %#v, want a nack at %d", m, bad)
		}
		break
	}
	// The daemon ignored the trailer: it waits for the run from the bad
	// chunk. A run from there cut short by a trailer is a protocol error;
	// the refusal comes after the transfer was dropped, its writer
	// drained, so the partial's data file is final, and is looked at
	// before a resume (which truncates it at the durable offset).
	p.write(msgFrame(&transfer.Data{ID: 1, Offset: bad}), msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
	p.expectRefusal(transfer.CodeProtocol, "trailer at offset")
	stored := partialData(t, srv.root)
	for off := int64(bad); off < int64(len(stored)) && off < size; off += testChunk {
		end := min(off+testChunk, size, int64(len(stored)))
		if bytes.Equal(stored[off:end], data[off:end]) {
			t.Fatalf("chunk at %d, the bad chunk at %d or one behind it, was written", off, bad)
		}
	}
	if got := resumeOffer(t, srv, "f", data); got != bad {
		t.Fatalf("resumed at %d, want the bad chunk's offset %d", got, bad)
	}
	res := srv.sendRetryBusy(t, source(data), "f")
	srv.checkCommitted(t, "f", data, res)
	if res.ResumedFrom != bad {
		t.Errorf("resumed from %d, want %d", res.ResumedFrom, bad)
	}
}

// TestPipelinedCut cuts the session in the middle of a chunk frame after
// a run of chunks sent at once, with no sync due on the way: every chunk
// read before the cut was verified and is made durable on the way out, so
// the transfer resumes exactly after the last whole one.
func TestPipelinedCut(t *testing.T) {
	srv := newServer(t, daemon.Config{})
	const whole = 23
	data := randomData(40*testChunk, 78)
	size := int64(len(data))

	p := srv.raw(t)
	p.hello()
	p.write(msgFrame(offerFor("f", data)))
	expect[*transfer.Accept](p)
	frames := [][]byte{msgFrame(&transfer.Data{ID: 1})}
	for i := range int64(whole) {
		off := i * testChunk
		frames = append(frames, chunkFrame(off, data[off:off+testChunk], size))
	}
	next := chunkFrame(whole*testChunk, data[whole*testChunk:(whole+1)*testChunk], size)
	frames = append(frames, next[:len(next)/2])
	// Written here rather than through p.write: a net.Pipe write returns
	// once the daemon has read every byte, so the cut below comes after
	// the daemon read the half frame.
	if _, err := p.conn.Write(bytes.Join(frames, nil)); err != nil {
		t.Fatal(err)
	}
	p.conn.Close()
	if got := resumeOffer(t, srv, "f", data); got != whole*testChunk {
		t.Fatalf("resumed at %d, want %d: the chunks read before the cut", got, whole*testChunk)
	}
	if stored := partialData(t, srv.root); !bytes.Equal(stored[:whole*testChunk], data[:whole*testChunk]) {
		t.Fatal("the durable prefix differs from the data sent")
	}
	res := srv.sendRetryBusy(t, source(data), "f")
	srv.checkCommitted(t, "f", data, res)
	if res.ResumedFrom != whole*testChunk {
		t.Errorf("resumed from %d, want %d", res.ResumedFrom, whole*testChunk)
	}
}

// slowOpenStore takes delay to open a partial.
type slowOpenStore struct {
	daemon.Store
	delay time.Duration
}

func (s *slowOpenStore) Open(key string, o *transfer.Offer, chunkSize int, restart bool) (daemon.Partial, bool, error) {
	time.Sleep(s.delay)
	return s.Store.Open(key, o, chunkSize, restart)
}

// TestSlowOfferNotIdle: while the daemon takes longer than the idle
// timeout over an offer, the sender waits for its answer and sends
// nothing. The reader must not be reading the next frame meanwhile: its
// idle timeout would end the session for the daemon's own slowness.
func TestSlowOfferNotIdle(t *testing.T) {
	const idle = 200 * time.Millisecond
	srv := newServerWrapped(t, t.TempDir(), daemon.Config{IdleTimeout: idle}, func(s daemon.Store) daemon.Store {
		return &slowOpenStore{Store: s, delay: 3 * idle}
	})
	data := randomData(3*testChunk+1, 79)
	p := srv.raw(t)
	p.hello()
	p.write(msgFrame(offerFor("f", data)))
	m, err := p.read()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(*transfer.Accept); !ok {
		t.Fatalf("got %#v, want an accept", m)
	}
	p.write(msgFrame(&transfer.Data{ID: 1}))
	for off := 0; off < len(data); off += testChunk {
		p.write(chunkFrame(int64(off), data[off:min(off+testChunk, len(data))], int64(len(data))))
	}
	p.write(msgFrame(&transfer.Trailer{ID: 1, Hash: transfer.HashBytes(data)}))
	for {
		m, err := p.read()
		if err != nil {
			t.Fatal(err)
		}
		if re, ok := m.(*transfer.RemoteError); ok {
			t.Fatalf("refused: %s", re.Message)
		}
		if _, ok := m.(*transfer.Committed); ok {
			break
		}
	}
	srv.checkFile(t, "f", data)
}
