package statefile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if s, err := Load(dir); err != nil || s.EngineStartSeconds != 0 {
		t.Fatalf("Load(empty dir) = %+v, %v; want an empty state", s, err)
	}
	model := &enginemodel.State{Observed: 3, Spread: 1.5, Ratios: []float64{1, 1.5}}
	if err := Save(dir, State{EngineStartSeconds: 12.5, EngineModel: model}); err != nil {
		t.Fatal(err)
	}
	s, err := Load(dir)
	if err != nil || s.EngineStartSeconds != 12.5 || s.EngineModel == nil || s.EngineModel.Observed != 3 ||
		s.EngineModel.Spread != 1.5 || len(s.EngineModel.Ratios) != 2 || s.Saved.IsZero() {
		t.Fatalf("Load = %+v, %v", s, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d files in the state directory, want just %s (no temporary files left)", len(entries), Name)
	}
}

func TestCorruptFileIsAnError(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, Name), []byte("{not json"), 0o644)
	_, err := Load(dir)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, Name)) {
		t.Fatalf("Load of a corrupt file: %v; want an error naming %s", err, filepath.Join(dir, Name))
	}
}

// A file written before the adaptive law was deleted still loads: its
// adaptive_limit is ignored, what else it kept is read.
func TestOldFileWithAdaptiveLimit(t *testing.T) {
	dir := t.TempDir()
	old := `{"engine_start_seconds": 7.5, "adaptive_limit": 24, "admission_level": 0.9, "saved": "2025-01-02T03:04:05Z"}`
	if err := os.WriteFile(filepath.Join(dir, Name), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load(dir)
	if err != nil || s.EngineStartSeconds != 7.5 || s.AdmissionLevel != 0.9 || s.Saved.IsZero() {
		t.Fatalf("Load of a file with adaptive_limit = %+v, %v; want its other values", s, err)
	}
}

// Wake-up times by sleep level round-trip; a negative one is refused like
// a negative start time.
func TestWakeTimes(t *testing.T) {
	dir := t.TempDir()
	if err := Save(dir, State{EngineWakeSeconds: map[string]float64{"1": 0.3, "2": 1.25}}); err != nil {
		t.Fatal(err)
	}
	if s, err := Load(dir); err != nil || s.EngineWakeSeconds["1"] != 0.3 || s.EngineWakeSeconds["2"] != 1.25 {
		t.Fatalf("Load = %+v, %v", s, err)
	}
	os.WriteFile(filepath.Join(dir, Name), []byte(`{"engine_wake_seconds": {"2": -1}}`), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("Load of a negative wake time: %v, want refused", err)
	}
}
