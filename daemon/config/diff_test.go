package config

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Every key of Config declares what its change needs (its reload tag),
// and Config's keys are the file's (raw's, less the deprecated ones that
// do nothing): a key added or renamed without saying how a reload treats
// it fails here, rather than silently changing what a reload does.
func TestEveryKeyDeclaresItsReload(t *testing.T) {
	var keys []string
	ct := reflect.TypeFor[Config]()
	for i := range ct.NumField() {
		sec := ct.Field(i)
		if sec.Type.Kind() != reflect.Struct {
			continue
		}
		secName, ok := sec.Tag.Lookup("toml")
		if !ok {
			t.Errorf("Config.%s has no toml tag", sec.Name)
		}
		for j := range sec.Type.NumField() {
			f := sec.Type.Field(j)
			name, ok := f.Tag.Lookup("toml")
			if !ok {
				t.Errorf("Config.%s.%s has no toml tag", sec.Name, f.Name)
				continue
			}
			key := secName + "." + name
			keys = append(keys, key)
			tag, ok := f.Tag.Lookup("reload")
			if _, known := needTags[tag]; !ok || !known {
				t.Errorf("%s (Config.%s.%s): reload tag %q, want \"none\", \"daemon\" or \"engine\"", key, sec.Name, f.Name, tag)
			}
		}
	}

	var file []string
	rt := reflect.TypeFor[raw]()
	for i := range rt.NumField() {
		sec := rt.Field(i)
		for j := range sec.Type.NumField() {
			f := sec.Type.Field(j)
			if f.Tag.Get("deprecated") == "" {
				file = append(file, sec.Tag.Get("toml")+"."+f.Tag.Get("toml"))
			}
		}
	}
	slices.Sort(keys)
	slices.Sort(file)
	if diff := cmp.Diff(file, keys); diff != "" {
		t.Errorf("Config's keys are not the file's (-file +Config):\n%s", diff)
	}
	for _, k := range schema() {
		if !k.declared {
			t.Errorf("schema(): %s is not declared", k.name)
		}
	}
}

// What each key's change needs, as llmlabd's reload treats it: only
// these keys need a restart of llmlabd or of the engine; every other key
// is applied by the reload to the running part that reads it. Changing
// this table changes what a reload does (docs/architecture.md, "What a
// reload does with each key").
func TestReloadNeeds(t *testing.T) {
	want := map[string]Need{
		"gateway.listen":          NeedDaemonRestart,
		"gateway.state_dir":       NeedDaemonRestart,
		"engine.url":              NeedDaemonRestart,
		"engine.metrics_interval": NeedDaemonRestart,
		"queue.concurrency":       NeedDaemonRestart,
		"metrics.listen":          NeedDaemonRestart,
		"log.level":               NeedDaemonRestart,
		"log.format":              NeedDaemonRestart,
		"gpu.enabled":             NeedDaemonRestart,
		"gpu.device":              NeedDaemonRestart,
		"gpu.poll_interval":       NeedDaemonRestart,
		"gpu.release_timeout":     NeedDaemonRestart,
		"balancer.agent_listen":   NeedDaemonRestart,

		"engine.command":                NeedEngineRestart,
		"engine.unit":                   NeedEngineRestart,
		"engine.max_num_seqs":           NeedEngineRestart,
		"engine.max_num_batched_tokens": NeedEngineRestart,
		"engine.max_model_len":          NeedEngineRestart,
		"engine.scheduling_policy":      NeedEngineRestart,
		"engine.sleep_after":            NeedSleepMode,
		"engine.deep_sleep_after":       NeedSleepMode,
		"engine.runtime_env":            NeedEngineRestart,
		"limits.max_tokens":             NeedEngineRestart,
		"gpu.memory_budget":             NeedEngineRestart,
		"gpu.memory_fraction":           NeedEngineRestart,
	}
	got := map[string]Need{}
	for _, k := range schema() {
		if k.needs != NeedNothing {
			got[k.name] = k.needs
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the keys a reload does not simply apply (-want +got):\n%s", diff)
	}
}

// Diff's changes are typed: the key, both values and what the change
// needs; String is the reload's log text.
func TestDiff(t *testing.T) {
	a, b := Default(), Default()
	b.Queue.MaxInflight = 4
	b.Log.Level = "debug"
	b.GPU.MemoryFraction = 0.5
	b.Engine.StopGrace = time.Second
	got := Diff(a, b)
	want := []Change{
		{Key: "engine.stop_grace", Old: 10 * time.Second, New: time.Second, Needs: NeedNothing},
		{Key: "queue.max_inflight", Old: 256, New: 4, Needs: NeedNothing},
		{Key: "log.level", Old: "info", New: "debug", Needs: NeedDaemonRestart},
		{Key: "gpu.memory_fraction", Old: 0.9, New: 0.5, Needs: NeedEngineRestart},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Diff mismatch (-want +got):\n%s", diff)
	}
	strs := make([]string, len(got))
	for i, c := range got {
		strs[i] = c.String()
	}
	wantStrs := []string{"engine.stop_grace: 10s -> 1s", "queue.max_inflight: 256 -> 4", "log.level: info -> debug", "gpu.memory_fraction: 0.9 -> 0.5"}
	if diff := cmp.Diff(wantStrs, strs); diff != "" {
		t.Errorf("Change.String mismatch (-want +got):\n%s", diff)
	}
	if d := Diff(a, Default()); len(d) != 0 {
		t.Errorf("Diff(defaults, defaults) = %v, want none", d)
	}
}
