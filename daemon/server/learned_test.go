package server

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
	"github.com/llmlab/llmlab/daemon/statefile"
)

// observe teaches d's engine model one answered request.
func observe(d *daemon) {
	d.gw.Model().Observe(enginemodel.Observation{Shape: enginemodel.Shape{MaxTokens: 200}, Concurrency: 1,
		OutputTokens: 200, Total: 2 * time.Second})
}

// What the engine model learned is written to the state file, and only
// when it has learned more since the last write.
func TestLearnedStateIsSaved(t *testing.T) {
	dir := t.TempDir()
	d, logs, _ := newTestDaemon(t, testConfig(`gateway.state_dir = "`+dir+`"`))
	observe(d)
	d.learned.save()
	s, err := statefile.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.EngineModel == nil || s.EngineModel.Observed != 1 || s.AdmissionLevel != d.gw.Level() {
		t.Fatalf("the state file holds %+v, want the engine model with 1 observed request and level %g", s, d.gw.Level())
	}
	saved := s.Saved

	d.learned.save() // nothing new learned: not written again
	if s, _ := statefile.Load(dir); !s.Saved.Equal(saved) {
		t.Errorf("the state file was written again with nothing new learned (saved %s, then %s)", saved, s.Saved)
	}
	if w := logs.Lines("cannot write"); len(w) > 0 {
		t.Errorf("warnings: %q", w)
	}

	// A daemon started later restores it.
	d2, logs2, _ := newTestDaemon(t, testConfig(`gateway.state_dir = "`+dir+`"`))
	if got := d2.gw.Model().State().Observed; got != 1 {
		t.Errorf("a new daemon's engine model has %d observed requests, want the saved 1", got)
	}
	if len(logs2.Lines("restored learned state")) != 1 {
		t.Errorf("the restore is not logged:\n%s", logs2)
	}
}

// A state file that cannot be written is logged once, naming the file,
// and llmlabd keeps what it learned to write once it can; that it can
// again is logged too.
func TestLearnedStateWriteFailureIsLogged(t *testing.T) {
	// A state directory below a regular file cannot be written, even by
	// root.
	blocker := filepath.Join(t.TempDir(), "blocker")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(blocker, "state")
	d, logs, _ := newTestDaemon(t, testConfig(`gateway.state_dir = "`+dir+`"`))
	observe(d)
	d.learned.save()
	warned := logs.Lines("cannot write the state file; llmlabd keeps serving and retries")
	if len(warned) != 1 || !strings.Contains(warned[0], filepath.Join(dir, statefile.Name)) || !strings.Contains(warned[0], "state_dir="+dir) {
		t.Fatalf("warnings %q, want one naming %s", warned, filepath.Join(dir, statefile.Name))
	}
	observe(d)
	d.learned.save()
	if n := len(logs.Lines("cannot write the state file")); n != 1 {
		t.Errorf("a failing state file was logged %d times, want once", n)
	}

	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d.learned.save()
	if s, err := statefile.Load(dir); err != nil || s.EngineModel == nil || s.EngineModel.Observed != 2 {
		t.Fatalf("the state file, once writable: %+v, %v; want the 2 observed requests", s, err)
	}
	if len(logs.Lines("the state file is written again")) != 1 {
		t.Errorf("the recovery is not logged:\n%s", logs)
	}
}

// The textfile says llmlabd is up while it serves; at exit it says it is
// down, and the counters' totals go to the state file for the next run,
// which carries them on.
func TestTextfileAtExitKeepsTheCounters(t *testing.T) {
	dir := t.TempDir()
	prom := filepath.Join(dir, "llmlab.prom")
	conf := testConfig(`gateway.state_dir = "`+dir+`"`, `metrics.textfile = "`+prom+`"`)
	d, logs, _ := newTestDaemon(t, conf)
	api := httptest.NewServer(d.gw.Handler())
	defer api.Close()
	resp, err := http.Post(api.URL+"/v1/completions", "application/json", strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a malformed request: %s, want 400", resp.Status)
	}

	d.learned.writeTextfile(true)
	if text, _ := os.ReadFile(prom); !strings.Contains(string(text), "llmlab_up 1") {
		t.Fatalf("the textfile while serving:\n%s", text)
	}
	d.learned.writeTextfile(false)
	if text, _ := os.ReadFile(prom); !strings.Contains(string(text), "llmlab_up 0") {
		t.Fatalf("the textfile at exit:\n%s", text)
	}
	s, err := statefile.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for k, v := range s.Counters {
		if strings.HasPrefix(k, "llmlab_requests_total{") {
			total += v
		}
	}
	if total != 1 {
		t.Errorf("the state file keeps %g requests (%v), want the 1 answered", total, s.Counters)
	}
	if w := logs.Lines("cannot write"); len(w) > 0 {
		t.Errorf("warnings: %q", w)
	}

	// The next run starts its counters from those totals.
	d2, _, _ := newTestDaemon(t, conf)
	totals, err := d2.learned.tf.Totals()
	if err != nil || totals[`llmlab_requests_total{code=400,outcome=invalid,route=completions}`] != 1 {
		t.Errorf("the next run's counter totals: %v, %v; want the 400 answered before", totals, err)
	}
}

// The wake-up times learned from each sleep level are kept with the start
// time, so that the first wake after llmlabd's own restart (an exit on
// idle) is admitted against a measured time, not the assumed one.
func TestLearnedWakeIsSaved(t *testing.T) {
	dir := t.TempDir()
	conf := testConfig(`gateway.state_dir = "`+dir+`"`, `engine.command = ["true"]`, `engine.sleep_after = "1m"`)
	d, _, _ := newTestDaemon(t, conf)
	d.sup.SetLearnedWake(2, 1300*time.Millisecond)
	d.learned.save()
	s, err := statefile.Load(dir)
	if err != nil || len(s.EngineWakeSeconds) != 1 || s.EngineWakeSeconds["2"] != 1.3 {
		t.Fatalf("the state file holds wake times %v (%v), want level 2's 1.3 s alone", s.EngineWakeSeconds, err)
	}
	d2, _, _ := newTestDaemon(t, conf)
	if got, ok := d2.sup.MeasuredWake(2); !ok || got != 1300*time.Millisecond {
		t.Errorf("a new daemon's level-2 wake: %s (measured %v), want the kept 1.3s", got, ok)
	}
	if _, ok := d2.sup.MeasuredWake(1); ok {
		t.Error("a new daemon's level-1 wake counts as measured, though none was kept")
	}
}
