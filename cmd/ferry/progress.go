package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cheggaaa/pb/v3"
	"github.com/mattn/go-isatty"
	"github.com/mattn/go-runewidth"
	"golang.org/x/sys/unix"

	"github.com/ferry-dev/ferry/transfer"
)

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// barTemplate is the run's one bar: files settled / found ("+" while the
// walk still finds more), bytes, the bar, the rate of bytes sent in this
// run (resumed and unchanged bytes excluded, so they do not look fast),
// the ETA derived from it, and the name of the file last heard from, cut
// to the room left on the line (the "fname" element).
const barTemplate = `{{string . "files"}} {{counters . }} {{bar . "[" "=" ">" " " "]"}} {{percent . "%.0f%%"}} {{string . "rate"}} {{string . "eta"}} {{fname . }}`

func init() {
	pb.RegisterElement("fname", pb.ElementFunc(func(s *pb.State, _ ...string) string {
		name, _ := s.Get("name").(string)
		if !s.IsAdaptiveWidth() {
			return name
		}
		return fitName(name, s.AdaptiveElWidth())
	}), true)
}

// fitName cuts name to width terminal cells, keeping its end (the base
// name tells most) behind a "…", and pads it with spaces to width.
func fitName(name string, width int) string {
	if width <= 0 {
		return ""
	}
	if w := runewidth.StringWidth(name); w <= width {
		return name + strings.Repeat(" ", width-w)
	}
	if width == 1 {
		return "…"
	}
	r := []rune(name)
	w := 0
	i := len(r)
	for i > 0 && w+runewidth.RuneWidth(r[i-1]) <= width-1 {
		i--
		w += runewidth.RuneWidth(r[i])
	}
	return "…" + string(r[i:]) + strings.Repeat(" ", width-1-w)
}

// overall is the progress of a whole run: the files the walk found and
// the ones settled, bytes, rate, and the one bar drawn on stderr when it
// is a terminal (nil bar otherwise). Its methods are safe for concurrent
// use.
type overall struct {
	mu      sync.Mutex
	bar     *pb.ProgressBar
	start   time.Time
	walking bool // the walk may find more files

	found, settled int   // files
	total          int64 // bytes of the files found, as the walk saw them
	settledBytes   int64 // bytes of the files settled
	inflight       int64 // bytes up to which unsettled files are sent
	sent           int64 // bytes sent in this run, resumed bytes excluded
	name           string
	width          func() int // the terminal's width in cells, 0 if unknown; nil: fixed
}

// newOverall returns a run's progress; with w non-nil it draws a bar on
// w, width terminal cells wide (0: the width of the terminal w is, asked
// again at every update so that a resize is followed, else pb's guess).
func newOverall(w io.Writer, width int) *overall {
	o := &overall{start: time.Now(), walking: true}
	if f, ok := w.(*os.File); ok && width == 0 {
		o.width = func() int {
			ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
			if err != nil {
				return 0
			}
			return int(ws.Col)
		}
	}
	if w != nil {
		o.bar = pb.New64(0).SetTemplateString(barTemplate).SetWriter(w).Set(pb.Bytes, true).
			Set(pb.Terminal, true).Set(pb.ReturnSymbol, "\r").Set(pb.Color, false).SetRefreshRate(200 * time.Millisecond).SetWidth(width)
		o.redraw()
	}
	return o
}

// found counts a file the walk found, of size bytes.
func (o *overall) foundFile(size int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.found++
	o.total += size
	o.redraw()
}

// notSent counts a file the walk found and reported without sending it
// (skipped, or failed before it could be sent): found and settled at once.
func (o *overall) notSent() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.found++
	o.settled++
	o.redraw()
}

// walkDone says the walk found every file.
func (o *overall) walkDone() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.walking = false
	o.redraw()
}

// settle counts a file settled, whatever its outcome: size is what the
// walk saw (as given to foundFile), *last what its progress reached (see
// progress).
func (o *overall) settle(size int64, last *int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.settled++
	o.settledBytes += size
	o.inflight -= *last
	*last = 0
	o.redraw()
}

// progress moves a file's sent offset from *last to p.Sent and makes it
// the file shown. *last belongs to o.mu: the engine reports progress and
// settles files from goroutines of its own.
func (o *overall) progress(name string, last *int64, p transfer.Progress) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.inflight += p.Sent - *last
	if fresh := p.Sent - max(*last, p.ResumedFrom); fresh > 0 {
		o.sent += fresh
	}
	*last = p.Sent
	o.name = name
	o.redraw()
}

// redraw updates the bar's values; pb draws them on its own tick. The
// caller holds o.mu.
func (o *overall) redraw() {
	if o.bar == nil {
		return
	}
	plus := ""
	if o.walking {
		plus = "+"
	}
	if o.width != nil {
		o.bar.SetWidth(o.width())
	}
	o.bar.Set("files", fmt.Sprintf("%d/%d%s files", o.settled, o.found, plus))
	o.bar.SetTotal(max(o.total, 1))
	o.bar.SetCurrent(min(o.settledBytes+o.inflight, o.total))
	rate := float64(o.sent) / max(time.Since(o.start).Seconds(), 1e-3)
	o.bar.Set("rate", human(int64(rate))+"/s")
	eta := ""
	if left := o.total - o.settledBytes - o.inflight; rate > 0 && left > 0 {
		eta = "ETA " + time.Duration(float64(left)/rate*float64(time.Second)).Round(time.Second).String()
		if o.walking {
			eta += "+"
		}
	}
	o.bar.Set("eta", eta)
	o.bar.Set("name", o.name)
}

// startBar starts drawing the bar, if there is one.
func (o *overall) startBar() {
	if o.bar != nil {
		o.bar.Start()
	}
}

// finish draws the bar's last state and ends its line.
func (o *overall) finish() {
	if o.bar == nil {
		return
	}
	o.mu.Lock()
	o.walking = false
	o.name = ""
	o.redraw()
	o.mu.Unlock()
	if o.bar.IsStarted() {
		o.bar.Finish()
	}
}

// fileProgress follows one file's progress for the overall bar and prints
// its resume and restart notices.
type fileProgress struct {
	s     *sender
	f     file
	began bool  // progress was reported
	last  int64 // the sent offset last reported; overall's, under its mutex
}

func (s *sender) newFileProgress(f file) *fileProgress {
	return &fileProgress{s: s, f: f}
}

func (b *fileProgress) update(p transfer.Progress) {
	if !b.began {
		b.began = true
		b.notice(p)
	}
	b.s.overall.progress(escapeName(b.f.remote), &b.last, p)
}

func (b *fileProgress) notice(p transfer.Progress) {
	if b.s.quiet {
		return
	}
	if p.Restarted {
		b.s.printf("ferry: %s changed since its partial was made; starting over\n", escapeName(b.f.local))
	}
	if p.ResumedFrom > 0 && p.ResumedFrom < p.Size {
		b.s.printf("ferry: resuming %s at %s of %s\n", escapeName(b.f.local), human(p.ResumedFrom), human(p.Size))
	}
}

// finish counts the file settled.
func (b *fileProgress) finish() {
	b.s.overall.settle(b.f.entry.Size, &b.last)
}
