// --apply: the best point written into the operator's llmlab.toml.

package tune

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/daemon/config"
)

// settings are the llmlab.toml keys a point sets, by section.
func settings(p Point, budget uint64) map[string][][2]string {
	conc, limit := p.limit()
	gpu := [][2]string{{"memory_fraction", strconv.FormatFloat(p.GPUMemoryUtilization, 'g', -1, 64)}, {"memory_budget", `""`}}
	if budget > 0 {
		gpu = [][2]string{{"memory_budget", strconv.Quote(strconv.FormatUint(uint64(p.GPUMemoryUtilization*float64(budget)), 10))}}
	}
	return map[string][][2]string{
		"engine": {{"max_num_seqs", strconv.Itoa(p.MaxNumSeqs)}, {"max_num_batched_tokens", strconv.Itoa(p.MaxNumBatchedTokens)},
			{"max_model_len", strconv.Itoa(p.MaxModelLen)}},
		"queue": {{"concurrency", strconv.Quote(conc)}, {"max_inflight", strconv.Itoa(limit)}, {"batch_window", strconv.Quote(p.BatchWindow.String())}},
		"gpu":   gpu,
	}
}

var sectionOrder = []string{"engine", "queue", "gpu"}

func bestSnippet(r Result, budget uint64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# llmlab tune-engine's best point: %.2f req/s within the SLO on %s.\n", r.Sustainable, r.Engine)
	s := settings(r.Point, budget)
	for _, sec := range sectionOrder {
		fmt.Fprintf(&b, "[%s]\n", sec)
		for _, kv := range s[sec] {
			fmt.Fprintf(&b, "%s = %s\n", kv[0], kv[1])
		}
	}
	return b.String()
}

// apply writes the best point into the operator's files, keeping backups.
func (o EngineOptions) apply(best Result) error {
	path := o.ApplyConfig
	if path == "" {
		return errors.New("--apply: name the llmlab.toml to write (--apply-config, or --config)")
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--apply: %w", err)
	}
	updated := SetKeys(string(old), settings(best.Point, o.budget), sectionOrder)
	if _, err := config.Parse(path, []byte(updated)); err != nil {
		return fmt.Errorf("--apply: the updated %s would not load, left unchanged: %w", path, err)
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	if err := writeWithBackup(path, stamp, old, []byte(updated)); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "applied to %s (backup %s.%s): %s\n", path, path, stamp, best.Key())
	if o.EngineEnv == "" {
		return nil
	}
	env, err := os.ReadFile(o.EngineEnv)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(o.Out, "%s does not exist: no engine flags there to override llmlabd's\n", o.EngineEnv)
		return nil
	}
	if err != nil {
		return err
	}
	cleaned, removed := DropEngineFlags(string(env))
	if len(removed) == 0 {
		fmt.Fprintf(o.Out, "%s sets none of %s: left unchanged\n", o.EngineEnv, strings.Join(tunedFlags, ", "))
		return nil
	}
	if err := writeWithBackup(o.EngineEnv, stamp, env, []byte(cleaned)); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "took %s out of %s's LLMLAB_VLLM_ARGS, where they would override llmlabd's (backup %s.%s)\n",
		strings.Join(removed, " "), o.EngineEnv, o.EngineEnv, stamp)
	return nil
}

func writeWithBackup(path, stamp string, old, updated []byte) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+"."+stamp, old, info.Mode().Perm()); err != nil {
		return fmt.Errorf("backing up %s: %w", path, err)
	}
	tmp := path + ".tune-tmp"
	if err := os.WriteFile(tmp, updated, info.Mode().Perm()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
