package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cheggaaa/pb/v3"

	"github.com/ferry-dev/ferry/transfer"
)

func TestFitName(t *testing.T) {
	tests := []struct {
		name  string
		width int
		want  string
	}{
		{"short.txt", 12, "short.txt   "},
		{"exactly", 7, "exactly"},
		{"dir/sub/file.txt", 10, "…/file.txt"},
		{"dir/sub/file.txt", 1, "…"},
		{"dir/sub/file.txt", 0, ""},
		{"目录/文件", 7, "…/文件 "}, // wide runes: 2 cells each; the padding keeps the width
	}
	for _, tt := range tests {
		if got := fitName(tt.name, tt.width); got != tt.want {
			t.Errorf("fitName(%q, %d) = %q, want %q", tt.name, tt.width, got, tt.want)
		}
	}
}

// TestOverallBar renders the run's bar into a buffer at a forced width:
// the file name is cut to fit, "+" shows while the walk still counts, and
// the last line holds the final counts.
func TestOverallBar(t *testing.T) {
	const width = 100
	var out bytes.Buffer
	o := newOverall(&out, width)
	o.bar.SetRefreshRate(time.Hour) // draws only at start and finish
	long := "tree/" + strings.Repeat("deep/", 30) + "the-file.bin"
	o.foundFile(1000)
	o.foundFile(3000)
	var lastA, lastB int64
	o.progress(long, &lastA, transfer.Progress{Size: 1000, Sent: 500})

	line := o.bar.String()
	if n := pb.CellCount(line); n > width || n < width-2 { // pb may leave a cell or two of its share
		t.Errorf("bar is %d cells wide, want %d: %q", n, width, line)
	}
	if !strings.Contains(line, "0/2+ files") {
		t.Errorf("bar while walking lacks %q: %q", "0/2+ files", line)
	}
	if !strings.Contains(line, "…") || !strings.HasSuffix(strings.TrimRight(line, " "), "/the-file.bin") || strings.Contains(line, long) {
		t.Errorf("bar does not show the name cut to fit, keeping its end: %q", line)
	}

	o.notSent() // a named pipe, say: counted with the files
	o.walkDone()
	o.settle(1000, &lastA)
	if line := o.bar.String(); !strings.Contains(line, "2/3 files") || strings.Contains(line, "+ files") {
		t.Errorf("bar after the walk ended: %q, want \"2/3 files\" without \"+\"", line)
	}

	o.startBar()
	o.progress("tree/b", &lastB, transfer.Progress{Size: 3000, Sent: 3000})
	o.settle(3000, &lastB)
	o.finish()
	s := out.String()
	if !strings.HasSuffix(s, "\n") {
		t.Fatalf("finished bar does not end its line: %q", s)
	}
	final := s[strings.LastIndex(s, "\r")+1:]
	for _, want := range []string{"3/3 files", "100%", "3.91 KiB / 3.91 KiB"} {
		if !strings.Contains(final, want) {
			t.Errorf("final bar line lacks %q: %q", want, final)
		}
	}
	if strings.Contains(final, "ETA") || strings.Contains(final, "tree/") {
		t.Errorf("final bar line still shows an ETA or a file: %q", final)
	}
}

func TestStatusOf(t *testing.T) {
	tests := []struct {
		name string
		rep  transfer.Report
		err  error
		want string
	}{
		{"committed", transfer.Report{}, nil, statusCommitted},
		{"already there", transfer.Report{AlreadyCommitted: true}, nil, statusUnchanged},
		{"exists", transfer.Report{}, fmt.Errorf("sending: %w", &transfer.RemoteError{Code: transfer.CodeExists, Message: "x"}), statusRefused},
		{"bad name found here", transfer.Report{}, fmt.Errorf("%w: long", transfer.ErrBadName), statusRefused},
		{"busy after retries", transfer.Report{}, &transfer.RemoteError{Code: transfer.CodeBusy, Message: "x"}, statusFailed},
		{"integrity", transfer.Report{}, transfer.ErrIntegrity, statusFailed},
		{"unreadable", transfer.Report{}, transfer.ErrSourceUnreadable, statusFailed},
	}
	for _, tt := range tests {
		if got := statusOf(tt.rep, tt.err); got != tt.want {
			t.Errorf("%s: statusOf = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestSummaryCounts(t *testing.T) {
	var sum summary
	for _, rec := range []record{
		{Status: statusCommitted, Size: 100, TotalSentBytes: 100},
		{Status: statusCommitted, Size: 50, TotalSentBytes: 80}, // resent after a retry
		{Status: statusUnchanged, Size: 1000},
		{Status: statusSkipped},
		{Status: statusRefused, Size: 7, TotalSentBytes: 7},
		{Status: statusFailed, Size: 3},
	} {
		sum.add(rec)
	}
	sum.end(2 * time.Second)
	want := summary{Summary: true, Committed: 2, Unchanged: 1, Skipped: 1, Refused: 1, Failed: 1,
		Files: 6, Bytes: 1160, SentBytes: 187, Seconds: 2, Rate: 93.5}
	if sum != want {
		t.Errorf("summary = %+v\nwant      %+v", sum, want)
	}
	one := summary{Files: 1, Failed: 1}
	if line := one.line(); !strings.HasPrefix(line, "ferry: 1 file: ") {
		t.Errorf("summary line of one file %q", line)
	}
	line := sum.line()
	if line != "ferry: 6 files: 2 committed, 1 unchanged, 1 skipped, 1 refused, 1 failed; 187 B of 1.1 KiB sent in 2.0s (93 B/s)\n" {
		t.Errorf("summary line %q", line)
	}
}
