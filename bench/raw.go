package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// rawBuf is the read and write size of the raw copy, in bytes.
const rawBuf = 1 << 20

// rawReport is what raw-recv prints on stdout when it has fsynced.
type rawReport struct {
	Bytes             int64 `json:"bytes"`
	FirstByteUnixNano int64 `json:"first_byte_unix_nano"`
}

// runRaw copies j's file through raw-send and raw-recv children.
func (b *bench) runRaw(ctx context.Context, j job) (sample, error) {
	if j.senders != 1 {
		return sample{}, errors.New("raw runs one sender")
	}
	dir, logs, err := b.newRun("raw")
	if err != nil {
		return sample{}, err
	}
	recv, addr, err := startListener(ctx, logs+"-recv.log", b.self,
		"raw-recv", "-listen", "127.0.0.1:0", "-out", filepath.Join(dir, "raw.out"))
	if err != nil {
		return sample{}, err
	}
	b.settle()
	start := time.Now()
	send, err := startProc(ctx, logs+"-send.log", b.self,
		"raw-send", "-to", addr, "-repeat", strconv.Itoa(max(j.repeat, 1)), j.src.path)
	var su usage
	if err == nil {
		su, err = send.wait()
	}
	if err != nil {
		_ = recv.cmd.Process.Kill() // it would wait for a connection forever
		_, _ = recv.wait()          // reaps it; the sender's error is the one to report
		return sample{}, err
	}
	ru, err := recv.wait()
	if err != nil {
		return sample{}, err
	}
	var rep rawReport
	if err := json.Unmarshal(recv.stdout.Bytes(), &rep); err != nil {
		return sample{}, fmt.Errorf("raw-recv report %q: %w", recv.stdout.String(), err)
	}
	if rep.Bytes != j.bytes() {
		return sample{}, fmt.Errorf("raw-recv got %d bytes, sent %d", rep.Bytes, j.bytes())
	}
	s := sample{
		wall:       later(send.ended, recv.ended).Sub(start),
		sender:     su,
		receiver:   ru,
		firstChunk: time.Unix(0, rep.FirstByteUnixNano).Sub(start),
	}
	return s, os.RemoveAll(dir)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// rawSend is the hidden mode `ferrybench raw-send -to ADDR [-repeat N]
// FILE`: read the file with 1 MiB reads and write each read to one TCP
// connection, N times over.
func rawSend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("raw-send", flag.ContinueOnError)
	to := fs.String("to", "", "receiver address")
	repeat := fs.Int("repeat", 1, "send the file this many times")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *to == "" || *repeat < 1 {
		return errors.New("usage: raw-send -to ADDR [-repeat N] FILE")
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close() //nolint:errcheck // opened read-only
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", *to)
	if err != nil {
		return err
	}
	defer conn.Close() //nolint:errcheck // CloseWrite below reports the end of the data
	buf := make([]byte, rawBuf)
	for range *repeat {
		if err := sendFile(conn, f, buf); err != nil {
			return err
		}
	}
	return conn.(*net.TCPConn).CloseWrite()
}

// sendFile writes f from its start to conn through buf. A plain loop on
// purpose: io.Copy would hand the file to sendfile(2) and skip user space,
// which no verifying sender can do.
func sendFile(conn net.Conn, f *os.File, buf []byte) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				return fmt.Errorf("writing: %w", werr)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading: %w", err)
		}
	}
}

// rawRecv is the hidden mode `ferrybench raw-recv -listen ADDR -out FILE`:
// accept one connection, write everything it carries to FILE with 1 MiB
// reads, fsync, and print a rawReport on stdout.
func rawRecv(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("raw-recv", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	out := fs.String("out", "", "file to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		return errors.New("usage: raw-recv -listen ADDR -out FILE")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	defer ln.Close() //nolint:errcheck // a listener holds no data
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	defer f.Close() //nolint:errcheck // closed and checked below; this covers early returns
	fmt.Fprintf(stderr, "msg=listening addr=%s\n", ln.Addr())
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	defer conn.Close() //nolint:errcheck // everything was read
	rep, err := receive(conn, f)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(rep)
}

// receive copies conn to f until EOF, noting when the first bytes came.
// Like rawSend, a plain loop: io.Copy would splice(2) socket to file.
func receive(conn net.Conn, f *os.File) (rawReport, error) {
	var rep rawReport
	buf := make([]byte, rawBuf)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if rep.FirstByteUnixNano == 0 {
				rep.FirstByteUnixNano = time.Now().UnixNano()
			}
			if _, werr := f.Write(buf[:n]); werr != nil {
				return rep, fmt.Errorf("writing: %w", werr)
			}
			rep.Bytes += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return rep, nil
		}
		if err != nil {
			return rep, fmt.Errorf("reading: %w", err)
		}
	}
}
