package server

import (
	"errors"
	"log/slog"
	"maps"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/daemon/gateway"
	"github.com/llmlab/llmlab/daemon/statefile"
	"github.com/llmlab/llmlab/daemon/supervisor"
	"github.com/llmlab/llmlab/daemon/textfile"
)

// learned keeps what the daemon learns (the engine model, admission's
// level, the engine's start time, the textfile's counter totals) in the
// state directory, and writes node_exporter's textfile. The serve loop's
// goroutine alone uses it once serving has begun.
type learned struct {
	log *slog.Logger
	// dir is the state directory ("": nothing is kept).
	dir string
	gw  *gateway.Gateway
	sup *supervisor.Supervisor // nil when the engine is managed elsewhere
	// tf writes path, node_exporter's file (nil: metrics.textfile is "").
	tf   *textfile.Writer
	path string
	// saved is what the state file holds; its counters are the totals at
	// the last exit.
	saved statefile.State
	// failing names the files that cannot be written now: a file that
	// cannot be written (a full or read-only disk) is logged once, and
	// again once it can be written, not at every attempt.
	failing map[string]bool
}

// restoreLearned loads what an earlier run learned in dir and applies it
// to gw and sup.
func restoreLearned(log *slog.Logger, dir string, gw *gateway.Gateway, sup *supervisor.Supervisor) *learned {
	l := &learned{log: log, dir: dir, gw: gw, sup: sup, failing: map[string]bool{}}
	if dir == "" {
		return l
	}
	s, err := statefile.Load(dir)
	if err != nil {
		log.Warn("ignoring learned state", "err", err)
		return l
	}
	gw.RestoreLevel(s.AdmissionLevel)
	if s.EngineModel != nil {
		if err := gw.Model().Restore(*s.EngineModel); err != nil {
			log.Warn("ignoring the learned engine model", "dir", dir, "err", err)
		}
	}
	if sup != nil {
		sup.SetLearnedStart(time.Duration(s.EngineStartSeconds * float64(time.Second)))
		for level, secs := range s.EngineWakeSeconds {
			if l, err := strconv.Atoi(level); err == nil {
				sup.SetLearnedWake(l, time.Duration(secs*float64(time.Second)))
			}
		}
	}
	if s.EngineModel != nil || s.EngineStartSeconds > 0 {
		ms := gw.Model().Status()
		log.Info("restored learned state", "dir", dir, "engine_model_observed", ms.Observed, "engine_start_seconds", s.EngineStartSeconds)
	}
	l.saved = l.current()
	l.saved.Counters = s.Counters
	return l
}

// current is what the daemon knows now, without the counters.
func (l *learned) current() statefile.State {
	var s statefile.State
	if m := l.gw.Model().State(); m.Observed > 0 {
		s.EngineModel = &m
		s.AdmissionLevel = l.gw.Level()
	}
	if l.sup != nil {
		s.EngineStartSeconds = l.sup.LearnedStart().Seconds()
		for level := 1; level <= 2; level++ {
			if d, ok := l.sup.MeasuredWake(level); ok {
				if s.EngineWakeSeconds == nil {
					s.EngineWakeSeconds = map[string]float64{}
				}
				s.EngineWakeSeconds[strconv.Itoa(level)] = d.Seconds()
			}
		}
	}
	return s
}

// observedRequests is how many requests the learned engine model has seen.
func observedRequests(s statefile.State) int {
	if s.EngineModel == nil {
		return 0
	}
	return s.EngineModel.Observed
}

// save writes the state file when the engine model has seen more
// requests, or the engine's start or wake times changed, since the last
// write.
func (l *learned) save() {
	if l.dir == "" {
		return
	}
	now := l.current()
	if observedRequests(now) == observedRequests(l.saved) && now.EngineStartSeconds == l.saved.EngineStartSeconds &&
		maps.Equal(now.EngineWakeSeconds, l.saved.EngineWakeSeconds) {
		return
	}
	now.Counters = l.saved.Counters
	err := statefile.Save(l.dir, now)
	l.noteWrite("state file", err, "state_dir", l.dir)
	if err != nil {
		return
	}
	l.saved = now
}

// setTextfile makes path node_exporter's file, with src's series ("":
// none). At a reload that moves it, the file written at the old path is
// removed, so that node_exporter does not read two llmlabds; the new one
// is written at the next writeTextfile.
func (l *learned) setTextfile(path string, src prometheus.Gatherer) {
	if path == l.path {
		return
	}
	if l.path != "" {
		if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.log.Warn("cannot remove the textfile at its old path", "path", l.path, "err", err)
		}
		delete(l.failing, "textfile")
	}
	l.tf, l.path = nil, path
	if path != "" {
		l.tf = textfile.New(path, src, l.saved.Counters)
	}
}

// writeTextfile writes node_exporter's file; at exit (up false) it also
// keeps the counters' totals in the state file for the next run.
func (l *learned) writeTextfile(up bool) {
	if l.tf == nil {
		return
	}
	l.noteWrite("textfile", l.tf.Write(up), "path", l.path)
	if !up && l.dir != "" {
		totals, err := l.tf.Totals()
		if err == nil {
			l.saved.Counters = totals
			now := l.current()
			now.Counters = totals
			l.noteWrite("state file", statefile.Save(l.dir, now), "state_dir", l.dir)
		}
	}
}

// noteWrite logs a failed write of what the first time, and its first
// success after that.
func (l *learned) noteWrite(what string, err error, attrs ...any) {
	switch {
	case err != nil && !l.failing[what]:
		l.failing[what] = true
		l.log.Warn("cannot write the "+what+"; llmlabd keeps serving and retries", append(attrs, "err", err)...)
	case err == nil && l.failing[what]:
		l.failing[what] = false
		l.log.Info("the "+what+" is written again", attrs...)
	}
}
