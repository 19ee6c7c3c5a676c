package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cheggaaa/pb/v3"
	"github.com/mattn/go-isatty"

	"github.com/ferry-dev/ferry/transfer"
)

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// barTemplate shows name, bytes, bar, percent, the rate of bytes sent in
// this attempt (resumed bytes excluded, so a resume does not look fast) and
// the ETA derived from it.
const barTemplate = `{{string . "name"}} {{counters . }} {{bar . "[" "=" ">" " " "]"}} {{percent . }} {{string . "rate"}} {{string . "eta"}}`

// progressBar draws one file's pb/v3 bar on stderr, one bar per attempt;
// with bars off it prints only the resume and restart notices.
type progressBar struct {
	s     *sender
	f     file
	bar   *pb.ProgressBar
	start time.Time
	began bool // the current attempt reported progress
}

func (s *sender) newBar(f file) *progressBar {
	return &progressBar{s: s, f: f}
}

func (b *progressBar) update(p transfer.Progress) {
	if !b.began {
		b.began = true
		b.start = time.Now()
		b.notice(p)
		// Files settle in any order and many are in flight: one bar at a
		// time, for a file big enough to watch.
		if b.s.bars && p.Size >= barMinSize && b.s.claimBar(b) {
			b.bar = pb.New64(p.Size).SetTemplateString(barTemplate).SetWriter(b.s.stderr).Set(pb.Bytes, true).
				Set("name", escapeName(b.f.remote)).SetRefreshRate(200 * time.Millisecond)
			b.bar.SetCurrent(p.ResumedFrom).Start()
		}
	}
	if b.bar == nil {
		return
	}
	b.bar.SetCurrent(p.Sent)
	elapsed := time.Since(b.start).Seconds()
	rate := float64(p.Sent-p.ResumedFrom) / max(elapsed, 1e-3)
	b.bar.Set("rate", human(int64(rate))+"/s")
	if rate > 0 {
		eta := time.Duration(float64(p.Size-p.Sent) / rate * float64(time.Second))
		b.bar.Set("eta", "ETA "+eta.Round(time.Second).String())
	}
}

func (b *progressBar) notice(p transfer.Progress) {
	if b.s.quiet {
		return
	}
	if p.Restarted {
		fmt.Fprintf(b.s.stderr, "ferry: %s changed since its partial was made; starting over\n", escapeName(b.f.local))
	}
	if p.ResumedFrom > 0 && p.ResumedFrom < p.Size {
		fmt.Fprintf(b.s.stderr, "ferry: resuming %s at %s of %s\n", escapeName(b.f.local), human(p.ResumedFrom), human(p.Size))
	}
}

// barMinSize is the smallest file that gets a progress bar.
const barMinSize = 4 << 20

// claimBar makes b the one bar on the terminal, unless another is.
func (s *sender) claimBar(b *progressBar) bool {
	s.barMu.Lock()
	defer s.barMu.Unlock()
	if s.activeBar != nil && s.activeBar != b {
		return false
	}
	s.activeBar = b
	return true
}

// finish ends the current attempt's bar; the next attempt draws a new one.
func (b *progressBar) finish(ok bool) {
	b.s.barMu.Lock()
	if b.s.activeBar == b {
		b.s.activeBar = nil
	}
	b.s.barMu.Unlock()
	if b.bar != nil && b.bar.IsStarted() {
		if ok {
			b.bar.SetCurrent(b.bar.Total())
		}
		b.bar.Finish()
	}
	b.bar, b.began = nil, false
}
