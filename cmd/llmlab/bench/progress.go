package bench

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/llmlab/llmlab/internal/progressline"
)

// plainProgressEvery is how often the progress is written as a plain line
// where stderr is not a terminal (--progress on into a log).
const plainProgressEvery = 5 * time.Second

// progress prints a live line on stderr: elapsed time, answers, the rate
// of answers and the p95 of the latest ones.
type progress struct {
	line  *progressline.Line
	mu    sync.Mutex
	start time.Time
	total time.Duration
	done  int
	ok    int
	last  []time.Duration
	shown time.Time
}

func newProgress(o Options, line *progressline.Line) *progress {
	return &progress{line: line, start: time.Now(), total: o.Warmup + o.Duration}
}

func (p *progress) add(s Sample) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	if s.Status == 200 && s.Error == "" {
		p.ok++
		p.last = append(p.last, s.Latency)
		if len(p.last) > 200 {
			p.last = p.last[len(p.last)-200:]
		}
	}
	if time.Since(p.shown) < 250*time.Millisecond {
		return
	}
	p.shown = time.Now()
	el := time.Since(p.start)
	sorted := append([]time.Duration(nil), p.last...)
	p95 := time.Duration(0)
	if len(sorted) > 0 {
		sortDurations(sorted)
		p95 = Percentile(sorted, 95)
	}
	width := 24
	filled := min(width, int(float64(width)*el.Seconds()/max(p.total.Seconds(), 0.001)))
	p.line.Show(fmt.Sprintf("[%s%s] %5.1fs  answered %d (ok %d)  %.1f req/s  p95 %s",
		strings.Repeat("=", filled), strings.Repeat(" ", width-filled), el.Seconds(), p.done, p.ok,
		float64(p.done)/max(el.Seconds(), 0.001), p95.Round(time.Millisecond)))
}
