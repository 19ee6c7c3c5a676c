package transfer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// fakeDaemon runs script as the daemon end of a pipe and returns the
// sender end. The script's error, if any, fails the test at cleanup.
func fakeDaemon(t *testing.T, script func(r *bufio.Reader, w io.Writer) error) net.Conn {
	t.Helper()
	c, d := net.Pipe()
	done := make(chan error, 1)
	go func() {
		defer d.Close()
		done <- script(bufio.NewReader(d), d)
	}()
	t.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, io.EOF) {
			t.Errorf("fake daemon: %v", err)
		}
	})
	return c
}

// answerHello reads the sender's Hello and answers with m.
func answerHello(m Message) func(r *bufio.Reader, w io.Writer) error {
	return func(r *bufio.Reader, w io.Writer) error {
		if _, err := ReadMessage(r); err != nil {
			return err
		}
		return WriteMessage(w, m)
	}
}

func TestHandshake(t *testing.T) {
	tests := []struct {
		name      string
		opts      ClientOptions
		daemon    func(r *bufio.Reader, w io.Writer) error
		wantChunk int
		wantErr   error
		msg       string
	}{
		{"daemon keeps the proposed size", ClientOptions{ChunkSize: 64 << 10},
			answerHello(&Hello{Major: ProtocolMajor, ChunkSize: 64 << 10}), 64 << 10, nil, ""},
		{"daemon lowers the size", ClientOptions{},
			answerHello(&Hello{Major: ProtocolMajor, Minor: 3, ChunkSize: MinChunkSize}), MinChunkSize, nil, ""},
		{"daemon raises the size", ClientOptions{ChunkSize: MinChunkSize},
			answerHello(&Hello{Major: ProtocolMajor, ChunkSize: 2 * MinChunkSize}), 0, ErrProtocol, "above proposed"},
		{"daemon chooses a size that is not a power of two", ClientOptions{},
			answerHello(&Hello{Major: ProtocolMajor, ChunkSize: 3 * MinChunkSize}), 0, ErrProtocol, "not a power of two"},
		{"daemon of another major version", ClientOptions{},
			answerHello(&Hello{Major: 3, ChunkSize: MinChunkSize}), 0, ErrVersion, "v3.0"},
		{"daemon of version 1", ClientOptions{},
			answerHello(&Hello{Major: 1, ChunkSize: 4096}), 0, ErrVersion, "v1.0"},
		{"daemon refuses", ClientOptions{},
			answerHello(&RemoteError{Code: CodeBusy, Message: "too many sessions"}), 0, ErrBusy, "too many sessions"},
		{"daemon refuses the version", ClientOptions{},
			answerHello(&RemoteError{Code: CodeVersion, Message: "peer speaks v1.0, this side v2"}), 0, ErrVersion, "this side v2"},
		{"daemon answers with an ack", ClientOptions{},
			answerHello(&Ack{ID: 1}), 0, ErrProtocol, "expected hello"},
		{"daemon speaks HTTP", ClientOptions{}, func(r *bufio.Reader, w io.Writer) error {
			ReadMessage(r)
			_, err := io.WriteString(w, "HTTP/1.1 400 Bad Request\r\n\r\n")
			return err
		}, 0, ErrProtocol, "unknown frame type"},
		{"daemon hangs up", ClientOptions{}, func(r *bufio.Reader, w io.Writer) error {
			_, err := ReadMessage(r)
			return err
		}, 0, io.EOF, "reading daemon hello"},
		{"chunk size below the minimum", ClientOptions{ChunkSize: MinChunkSize / 2}, nil, 0, ErrInvalidConfig, "not a power of two from"},
		{"chunk size above the maximum", ClientOptions{ChunkSize: 2 * MaxChunkSize}, nil, 0, ErrInvalidConfig, "not a power of two from"},
		{"chunk size not a power of two", ClientOptions{ChunkSize: 3 * MinChunkSize}, nil, 0, ErrInvalidConfig, "not a power of two"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var conn io.ReadWriteCloser = nopConn{}
			if tt.daemon != nil {
				conn = fakeDaemon(t, tt.daemon)
			}
			c, err := Handshake(context.Background(), conn, tt.opts)
			if tt.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.ChunkSize() != tt.wantChunk {
					t.Fatalf("ChunkSize = %d, want %d", c.ChunkSize(), tt.wantChunk)
				}
				return
			}
			if err == nil {
				t.Fatal("handshake succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", err, tt.msg)
			}
			if errors.Is(err, ErrVersion) && Retryable(err) {
				t.Errorf("version error %v is retryable", err)
			}
		})
	}
}

// nopConn fails the test by panicking if Handshake touches it.
type nopConn struct{}

func (nopConn) Read([]byte) (int, error)  { panic("bug: read") }
func (nopConn) Write([]byte) (int, error) { panic("bug: write") }
func (nopConn) Close() error              { return nil }

func TestHandshakeSendsHello(t *testing.T) {
	got := make(chan Message, 1)
	conn := fakeDaemon(t, func(r *bufio.Reader, w io.Writer) error {
		m, err := ReadMessage(r)
		got <- m
		if err != nil {
			return err
		}
		return WriteMessage(w, &Hello{Major: ProtocolMajor, ChunkSize: DefaultChunkSize})
	})
	if _, err := Handshake(context.Background(), conn, ClientOptions{Agent: "test/1"}); err != nil {
		t.Fatal(err)
	}
	want := &Hello{Major: ProtocolMajor, Minor: ProtocolMinor, ChunkSize: DefaultChunkSize, Agent: "test/1"}
	if m := <-got; *m.(*Hello) != *want {
		t.Fatalf("sender's hello %+v, want %+v", m, want)
	}
}

func TestHandshakeCancelled(t *testing.T) {
	conn := fakeDaemon(t, func(r *bufio.Reader, w io.Writer) error {
		_, err := ReadMessage(r)
		if err != nil {
			return err
		}
		_, err = ReadMessage(r) // silent until the sender hangs up
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := Handshake(ctx, conn, ClientOptions{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want context.DeadlineExceeded", err)
	}
}

// memSource is a Source over a byte slice.
func memSource(data []byte) Source {
	return Source{R: bytes.NewReader(data), Size: int64(len(data)), Mode: 0o640, ModTime: time.Unix(1700000000, 5), Inode: 7}
}

// TestSendAgainstScriptedDaemon checks the sender's side of the transfer
// exchange against a daemon that misbehaves in one way each.
func TestSendAgainstScriptedDaemon(t *testing.T) {
	data := randomData(3*MinChunkSize+100, 9)
	whole := HashBytes(data)
	// receive reads the offer, accepts at 0, reads chunks and the trailer,
	// then lets end decide the reply. With hold, it then reads on until
	// the sender hangs up, so that the sender reacts to what end sent and
	// not to the end of the session.
	receive := func(hold bool, end func(w io.Writer, o *Offer) error) func(r *bufio.Reader, w io.Writer) error {
		return func(r *bufio.Reader, w io.Writer) error {
			if err := answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w); err != nil {
				return err
			}
			m, err := ReadMessage(r)
			if err != nil {
				return err
			}
			o := m.(*Offer)
			if err := WriteMessage(w, &Accept{ID: o.ID, ChunkSize: MinChunkSize}); err != nil {
				return err
			}
			buf := make([]byte, ChunkHeaderSize+MinChunkSize)
			for {
				h, err := ReadFrameHeader(r, MinChunkSize)
				if err != nil {
					return err
				}
				if h.Type == FrameData {
					if _, err := ReadControl(r, h, nil); err != nil {
						return err
					}
					continue
				}
				if h.Type == FrameTrailer {
					if _, err := ReadControl(r, h, nil); err != nil {
						return err
					}
					if err := end(w, o); err != nil || !hold {
						return err
					}
					_, err := io.Copy(io.Discard, r)
					return err
				}
				var c Chunk
				if err := ReadChunk(r, h, buf, &c); err != nil {
					return err
				}
			}
		}
	}
	tests := []struct {
		name    string
		daemon  func(r *bufio.Reader, w io.Writer) error
		wantErr error
		msg     string
		// fileOnly: the failure is the file's alone (protocol 2): the
		// session stays usable.
		fileOnly bool
	}{
		{"commits", receive(false, func(w io.Writer, o *Offer) error {
			return WriteMessage(w, &Committed{ID: o.ID, Size: o.Size, Hash: whole})
		}), nil, "", false},
		{"commits another hash", receive(true, func(w io.Writer, o *Offer) error {
			return WriteMessage(w, &Committed{ID: o.ID, Size: o.Size, Hash: Hash{1}})
		}), ErrIntegrity, "daemon committed", true},
		{"commits another size", receive(true, func(w io.Writer, o *Offer) error {
			return WriteMessage(w, &Committed{ID: o.ID, Size: o.Size - 1, Hash: whole})
		}), ErrIntegrity, "daemon committed", true},
		{"refuses at the trailer", receive(true, func(w io.Writer, o *Offer) error {
			return WriteMessage(w, &RemoteError{ID: o.ID, Code: CodeIntegrity, Message: "whole-file hash"})
		}), ErrIntegrity, "whole-file hash", true},
		{"acks backwards", receive(true, func(w io.Writer, o *Offer) error {
			if err := WriteMessage(w, &Ack{ID: o.ID, DurableOffset: 2 * MinChunkSize}); err != nil {
				return err
			}
			return WriteMessage(w, &Ack{ID: o.ID, DurableOffset: MinChunkSize})
		}), ErrProtocol, "ack of durable offset", false},
		{"acks beyond the file", receive(true, func(w io.Writer, o *Offer) error {
			return WriteMessage(w, &Ack{ID: o.ID, DurableOffset: o.Size + 1})
		}), ErrProtocol, "ack of durable offset", false},
		{"nacks beyond the file", receive(true, func(w io.Writer, o *Offer) error {
			return WriteMessage(w, &Nack{ID: o.ID, Offset: o.Size})
		}), ErrProtocol, "nack at offset", false},
		{"nacks inside a chunk", receive(true, func(w io.Writer, o *Offer) error {
			return WriteMessage(w, &Nack{ID: o.ID, Offset: MinChunkSize + 1})
		}), ErrProtocol, "nack at offset", false},
		{"sends a hello mid-transfer", receive(true, func(w io.Writer, o *Offer) error {
			return WriteMessage(w, &Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})
		}), ErrProtocol, "unexpected hello", false},
		{"hangs up before committing", receive(false, func(w io.Writer, o *Offer) error {
			return nil
		}), io.ErrUnexpectedEOF, "daemon closed the session", false},
		{"accepts beyond the size", func(r *bufio.Reader, w io.Writer) error {
			answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w)
			ReadMessage(r)
			return WriteMessage(w, &Accept{ID: 1, ChunkSize: MinChunkSize, DurableOffset: 3*MinChunkSize + 101, TailOffset: 3 * MinChunkSize, TailLength: 101})
		}, ErrProtocol, "beyond size", false},
		{"answers the offer with a nack", func(r *bufio.Reader, w io.Writer) error {
			answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w)
			ReadMessage(r)
			return WriteMessage(w, &Nack{ID: 1})
		}, ErrProtocol, "sent no data", false},
		{"accepts a restart at a non-zero offset", func(r *bufio.Reader, w io.Writer) error {
			answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w)
			ReadMessage(r)
			WriteMessage(w, &Accept{ID: 1, ChunkSize: MinChunkSize, DurableOffset: MinChunkSize, TailLength: MinChunkSize, TailHash: Hash{1}})
			ReadMessage(r)
			return WriteMessage(w, &Accept{ID: 1, ChunkSize: MinChunkSize, DurableOffset: MinChunkSize, TailLength: MinChunkSize, TailHash: Hash{1}})
		}, ErrProtocol, "restart accepted at offset", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := fakeDaemon(t, tt.daemon)
			c, err := Handshake(context.Background(), conn, ClientOptions{ChunkSize: MinChunkSize})
			if err != nil {
				t.Fatal(err)
			}
			res, err := c.Send(context.Background(), memSource(data), "f", SendOptions{})
			c.Close()
			if tt.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				if res.Hash != whole || res.Size != int64(len(data)) || res.SentBytes != int64(len(data)) {
					t.Fatalf("result %+v", res)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want %v saying %q", err, tt.wantErr, tt.msg)
			}
			if tt.fileOnly {
				if !c.Usable() {
					t.Fatalf("a failure of the file alone broke the session")
				}
				return
			}
			if _, err2 := c.Send(context.Background(), memSource(data), "g", SendOptions{}); err2 == nil ||
				!strings.Contains(err2.Error(), "session unusable") {
				t.Fatalf("second Send on a broken session: %v", err2)
			}
		})
	}
}

// TestSendOffer checks what the sender puts in its offer.
func TestSendOffer(t *testing.T) {
	tests := []struct {
		name string
		size int
	}{
		{"empty file", 0},
		{"shorter than the identity prefix", 1000},
		{"longer than the identity prefix", IdentityPrefix + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := randomData(tt.size, 4)
			got := make(chan *Offer, 1)
			conn := fakeDaemon(t, func(r *bufio.Reader, w io.Writer) error {
				answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w)
				m, err := ReadMessage(r)
				if err != nil {
					return err
				}
				o := m.(*Offer)
				got <- o
				return WriteMessage(w, &RemoteError{ID: o.ID, Code: CodeExists})
			})
			c, err := Handshake(context.Background(), conn, ClientOptions{ChunkSize: MinChunkSize})
			if err != nil {
				t.Fatal(err)
			}
			src := memSource(data)
			src.Mode = 0o755 | os.ModeSetuid | os.ModeSticky // only the permission bits go out
			if _, err := c.Send(context.Background(), src, "d/f", SendOptions{}); !errors.Is(err, ErrExists) {
				t.Fatalf("error %v, want ErrExists", err)
			}
			o := <-got
			// The first offer of a session goes without data, whatever
			// its size: a re-run sends none (see Client.confirming).
			want := Offer{ID: 1, Size: int64(tt.size), Mode: 0o755, MtimeNs: src.ModTime.UnixNano(), Inode: 7,
				PrefixID: HashBytes(data[:min(tt.size, IdentityPrefix)]), Name: "d/f"}
			if *o != want {
				t.Fatalf("offer %+v, want %+v", o, want)
			}
		})
	}
}

// slowReaderAt delays every read that starts before offset before, like
// a source whose first part sits on a slow disk.
type slowReaderAt struct {
	r      io.ReaderAt
	before int64
	delay  time.Duration
}

func (s slowReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < s.before {
		time.Sleep(s.delay)
	}
	return s.r.ReadAt(p, off)
}

// TestSendWaitsForItsOwnPrefixHash resumes at a durable offset whose
// prefix the sender re-hashes from a slow source for longer than its
// timeout. Waiting for its own hash before the trailer is not the daemon
// being silent: the send must not fail with a deadline error (it did, at
// random under -race, once the prefix hash ran on HashChunks).
func TestSendWaitsForItsOwnPrefixHash(t *testing.T) {
	data := randomData(8*MinChunkSize, 12)
	size := int64(len(data))
	resumeAt := int64(6 * MinChunkSize)
	conn := fakeDaemon(t, func(r *bufio.Reader, w io.Writer) error {
		if err := answerHello(&Hello{Major: ProtocolMajor, ChunkSize: MinChunkSize})(r, w); err != nil {
			return err
		}
		if _, err := ReadMessage(r); err != nil {
			return err
		}
		acc := &Accept{ID: 1, ChunkSize: MinChunkSize, DurableOffset: resumeAt, TailOffset: resumeAt - MinChunkSize, TailLength: MinChunkSize,
			TailHash: mustChunkHash(data[resumeAt-MinChunkSize:resumeAt], resumeAt-MinChunkSize, size)}
		if err := WriteMessage(w, acc); err != nil {
			return err
		}
		if _, err := receiveChunks(r); err != nil {
			return err
		}
		return WriteMessage(w, &Committed{ID: 1, Size: size, Hash: HashBytes(data)})
	})
	c, err := Handshake(context.Background(), conn, ClientOptions{ChunkSize: MinChunkSize, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := memSource(data)
	// The prefix before the tail chunk hashes for at least 500ms, on any
	// number of cores; the tail check and the chunks sent are quick.
	src.R = slowReaderAt{r: src.R, before: resumeAt - MinChunkSize, delay: 500 * time.Millisecond}
	res, err := c.Send(context.Background(), src, "f", SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Hash != HashBytes(data) || res.ResumedFrom != resumeAt || res.SentBytes != size-resumeAt {
		t.Fatalf("result %+v", res)
	}
}
