package config

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// setKey rewrites key's line in section of a TOML text written like the
// shipped file (every key on its own line), or adds the line when the
// section does not write the key.
func setKey(t *testing.T, text, section, key, value string) string {
	t.Helper()
	lines := strings.Split(text, "\n")
	in, header := false, -1
	for i, l := range lines {
		if strings.HasPrefix(l, "[") {
			in = l == "["+section+"]"
			if in {
				header = i
			}
			continue
		}
		if in && regexp.MustCompile(`^`+key+`\s*=`).MatchString(l) {
			lines[i] = key + " = " + value
			return strings.Join(lines, "\n")
		}
	}
	if header < 0 {
		return text + "\n[" + section + "]\n" + key + " = " + value + "\n"
	}
	lines = append(lines[:header+1], append([]string{key + " = " + value}, lines[header+1:]...)...)
	return strings.Join(lines, "\n")
}

// A key the user did not set must never make one they did set invalid:
// each change of one key, made to the shipped file (which writes every
// key), to the conffile of the previous release (an upgrade keeps an
// edited one) and to an empty file (the built-in defaults), loads. The
// only refusals are the deliberate ones listed in refused, each with why.
func TestSingleKeyChangesLoad(t *testing.T) {
	shipped, err := os.ReadFile("../../etc/llmlab.toml")
	if err != nil {
		t.Fatal(err)
	}
	previous, err := os.ReadFile("testdata/ok-conffile-previous.toml")
	if err != nil {
		t.Fatal(err)
	}
	changes := []struct{ section, key, value string }{
		{"queue", "max_inflight", "4"}, // the example: max_batch was 16
		{"queue", "max_inflight", "1"},
		{"queue", "max_inflight", "1024"},
		{"queue", "max_batch", "8"},
		{"queue", "max_batch", "128"},
		{"queue", "batch_window", `"20ms"`},
		{"queue", "coalesce", "true"},
		{"queue", "concurrency", `"adaptive"`}, // read as "model", with a warning
		{"queue", "concurrency", `"fixed"`},
		{"queue", "concurrency", `"model"`},
		{"queue", "nominal_rps", "0"}, // obsolete, ignored
		{"queue", "min_inflight", "100"},
		{"queue", "min_inflight", "1"},
		{"queue", "target_latency", `"2s"`},
		{"queue", "max_wait", `"10s"`},
		{"queue", "batch_share", "1.0"},
		{"limits", "rate", "5"},
		{"limits", "rate", "0.5"},
		{"limits", "burst", "10"},
		{"limits", "global_rate", "100"},
		{"limits", "global_burst", "10"},
		{"limits", "max_tokens", "200000"},
		{"slo", "latency", `"0s"`},
		{"slo", "latency", `"1s"`},
		{"engine", "command", `["llmlab", "sim"]`},
		{"engine", "unit", `""`},
		{"engine", "unit", `"vllm.service"`},
		{"engine", "metrics_interval", `"0s"`},
		{"engine", "sleep_after", `"1m"`},
		{"engine", "sleep_after", `"30s"`},
		{"engine", "sleep_after", `"10m"`},
		{"engine", "deep_sleep_after", `"2m"`},
		{"engine", "deep_sleep_after", `"10m"`},
		{"engine", "idle_timeout", `"30m"`},
		{"engine", "idle_timeout", `"10s"`},
		{"engine", "idle_timeout", `"0s"`},
		{"engine", "ready_path", `"/api/ps"`},
		{"engine", "ready_match", `"tiny"`},
		{"gateway", "listen", `"0.0.0.0:8080"`},
		{"gateway", "allow_public_without_keys", "true"},
		{"gateway", "trusted_proxies", `["127.0.0.1", "::1"]`},
		{"auth", "keys_file", `"/etc/llmlab/keys"`},
		{"gpu", "memory_budget", `"4GiB"`},
		{"gpu", "enabled", "false"},
		{"metrics", "listen", `""`},
		{"metrics", "textfile", `""`},
		{"balancer", "agent_listen", `"0.0.0.0:9182"`},
		{"balancer", "balancers", "2"},
	}
	// Deliberate refusals of a one-key change: both keys say something
	// the other contradicts, and guessing which one the operator meant
	// would be worse than asking.
	refused := map[string]string{
		// Opening the API beyond loopback with no keys is refused unless
		// the operator says they accept it: a safety check, not a default.
		`gateway.listen = "0.0.0.0:8080"`: "listens beyond loopback without API keys",
		// So is trusting a proxy's X-Forwarded-For with no keys: the API
		// is then as public as the proxy makes it.
		`gateway.trusted_proxies = ["127.0.0.1", "::1"]`: "behind a reverse proxy, as public as the proxy makes it, and has no API keys",
		// The packaged file runs the engine as a unit; naming a command as
		// well leaves two engines to manage. The message names both keys.
		`engine.command = ["llmlab", "sim"] on unit`: "set engine.unit or engine.command, not both",
		// A sleep rung past the stop: the engine would be stopped before it
		// slept, and whether the operator meant the sleep (and a later
		// stop) or the stop cannot be guessed. The message names both keys.
		`engine.sleep_after = "10m"`:      `must be shorter than engine.idle_timeout = "5m"`,
		`engine.deep_sleep_after = "10m"`: `must be shorter than engine.idle_timeout = "5m"`,
	}
	bases := []struct {
		name string
		text string
		unit bool
	}{
		{"shipped", string(shipped), true},
		{"previous conffile", string(previous), true},
		{"built-in defaults", "", false},
	}
	for _, b := range bases {
		for _, c := range changes {
			name := c.section + "." + c.key + " = " + c.value
			t.Run(b.name+"/"+name, func(t *testing.T) {
				text := setKey(t, b.text, c.section, c.key, c.value)
				_, err := Parse("llmlab.toml", []byte(text))
				id := name
				if b.unit && c.key == "command" {
					id += " on unit"
				}
				if why, ok := refused[id]; ok {
					if err == nil || !strings.Contains(err.Error(), why) {
						t.Fatalf("err = %v, want the deliberate refusal %q", err, why)
					}
					return
				}
				if err != nil {
					t.Fatalf("changing only %s: %v", name, err)
				}
			})
		}
	}
}

// Derived values follow the key they derive from.
func TestDerivedValues(t *testing.T) {
	c, err := Parse("x.toml", []byte("[queue]\nconcurrency = \"model\"\nmax_inflight = 2\nmin_inflight = 4\n[limits]\nrate = 2.5\nglobal_rate = 40\nglobal_burst = 7\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Queue.MinInflight != 2 {
		t.Errorf("min_inflight = %d, want max_inflight's 2", c.Queue.MinInflight)
	}
	if len(c.Notes) != 1 || !strings.Contains(c.Notes[0], "queue.min_inflight = 4") {
		t.Errorf("notes = %q, want one naming queue.min_inflight", c.Notes)
	}
	if c.Limits.Burst != 3 || c.Limits.GlobalBurst != 7 {
		t.Errorf("bursts = %d, %d; want 3 (one second of 2.5/s) and the written 7", c.Limits.Burst, c.Limits.GlobalBurst)
	}
}

// Show lists every key once, says which the file wrote, and what a
// derived value comes to.
func TestShow(t *testing.T) {
	s, err := Show("x.toml", []byte("[queue]\nmax_inflight = 4\n[limits]\nrate = 2.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Setting{}
	for _, x := range s {
		if _, dup := got[x.Key]; dup {
			t.Errorf("%s listed twice", x.Key)
		}
		got[x.Key] = x
	}
	for key, want := range map[string]Setting{
		"queue.max_inflight": {Key: "queue.max_inflight", Value: "4", FromFile: true, Default: "256"},
		"queue.max_queued":   {Key: "queue.max_queued", Value: "256", Default: "256"},
		"queue.max_batch":    {Key: "queue.max_batch", Value: "0", Default: "0", Derived: "the in-flight limit"},
		"limits.burst":       {Key: "limits.burst", Value: "0", Default: "0", Derived: "3"},
		"limits.rate":        {Key: "limits.rate", Value: "2.5", FromFile: true, Default: "0.0"},
		"engine.models":      {Key: "engine.models", Value: `["Qwen/Qwen2.5-0.5B-Instruct"]`, Default: `["Qwen/Qwen2.5-0.5B-Instruct"]`},
	} {
		if got[key] != want {
			t.Errorf("%s: got %+v, want %+v", key, got[key], want)
		}
	}
	if _, ok := got["limits.max_best_of"]; ok {
		t.Error("a deprecated key the file does not set is listed")
	}
	if _, ok := got["queue.nominal_rps"]; ok {
		t.Error("an obsolete key the file does not set is listed")
	}
	if d := got["queue.target_latency"].Derived; d != "slo.latency (5s; docs/admission.md)" {
		t.Errorf("queue.target_latency in effect: %q, want the objective's", d)
	}
	// A file written for the deleted adaptive law shows the mode in effect.
	s, err = Show("old.toml", []byte("[queue]\nconcurrency = \"adaptive\"\nnominal_rps = 8\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range s {
		if x.Key == "queue.concurrency" && (x.Value != `"adaptive"` || x.Derived != `"model"`) {
			t.Errorf("queue.concurrency: %+v, want \"adaptive\" written and \"model\" in effect", x)
		}
		if x.Key == "queue.nominal_rps" && x.Value != "8.0" {
			t.Errorf("queue.nominal_rps: %+v, want listed as written", x)
		}
	}
	if _, err := Show("bad.toml", []byte("[queue]\nmax_inflight = 0\n")); err == nil || !strings.Contains(err.Error(), "queue.max_inflight") {
		t.Errorf("Show of a bad file: err = %v, want the key named", err)
	}
}
