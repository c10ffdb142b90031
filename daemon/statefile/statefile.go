// Package statefile keeps what llmlabd learns (the engine's start and wake
// times and the engine model) in its state directory, so that an exit on idle or a
// restart does not make it forget. The file is JSON, written atomically
// (a temporary file renamed over the old one).
package statefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// Name is the file's name inside the state directory.
const Name = "learned.json"

// State is what is kept.
type State struct {
	// EngineStartSeconds is the learned engine start time (0: none yet).
	EngineStartSeconds float64 `json:"engine_start_seconds,omitempty"`
	// EngineWakeSeconds are the learned wake-up times from vLLM's sleep
	// levels, by level ("1", "2"; a level never measured is absent).
	EngineWakeSeconds map[string]float64 `json:"engine_wake_seconds,omitempty"`
	// EngineModel is what the engine model learned (nil: nothing yet).
	EngineModel *enginemodel.State `json:"engine_model,omitempty"`
	// AdmissionLevel is the quantile admission predicts at (0: none yet).
	AdmissionLevel float64 `json:"admission_level,omitempty"`
	// Counters are the totals of the textfile's counters at the last exit,
	// by series ("name{label=value,...}").
	Counters map[string]float64 `json:"counters,omitempty"`
	Saved    time.Time          `json:"saved"`
}

// Load reads the state in dir; a missing file is an empty state.
func Load(dir string) (State, error) {
	var s State
	data, err := os.ReadFile(filepath.Join(dir, Name))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("reading learned state: %w", err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return State{}, fmt.Errorf("learned state %s: %w", filepath.Join(dir, Name), err)
	}
	negativeWake := false
	for _, v := range s.EngineWakeSeconds {
		negativeWake = negativeWake || v < 0
	}
	if s.EngineStartSeconds < 0 || s.AdmissionLevel < 0 || s.AdmissionLevel > 1 || negativeWake {
		return State{}, fmt.Errorf("learned state %s: negative values", filepath.Join(dir, Name))
	}
	return s, nil
}

// Save writes s to dir atomically.
func Save(dir string, s State) error {
	s.Saved = time.Now().UTC()
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, Name+".*")
	if err != nil {
		return fmt.Errorf("saving learned state: %w", err)
	}
	_, werr := tmp.Write(append(data, '\n'))
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("saving learned state: %w", errors.Join(werr, cerr))
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, Name)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("saving learned state: %w", err)
	}
	return nil
}
