package config

import "time"

// The sleep ladder: an idle engine goes down its rungs, each after its own
// time since the last request, and the next request wakes it from
// whichever it is on (docs/scale-to-zero.md):
//
//	ready --engine.sleep_after--> asleep at vLLM's level 1 (weights in host memory)
//	      --engine.deep_sleep_after--> asleep at level 2 (weights discarded)
//	      --engine.idle_timeout--> stopped
//
// A rung at "0s" is left out. The rungs that are set must come in that
// order: a later rung with a shorter time would be reached first and the
// earlier one never, and which of the two the operator meant cannot be
// guessed.

// SleepMode reports whether the engine is started with vLLM's sleep mode
// (--enable-sleep-mode, with the development endpoints that serve
// /sleep): a sleep rung is set.
func (e Engine) SleepMode() bool { return e.SleepAfter > 0 || e.DeepSleepAfter > 0 }

// ladder checks that the rungs that are set come in order; sleep, deep and
// idle are the values as the file wrote them, e's the parsed ones.
func (c *checker) ladder(sleep, deep, idle string, e Engine) {
	rungs := []struct {
		key, raw string
		d        time.Duration
		what     string
	}{
		{"engine.sleep_after", sleep, e.SleepAfter, "sleep at level 1"},
		{"engine.deep_sleep_after", deep, e.DeepSleepAfter, "sleep at level 2"},
		{"engine.idle_timeout", idle, e.IdleTimeout, "be stopped"},
	}
	prev := -1
	for i, r := range rungs {
		if r.d <= 0 {
			continue
		}
		if prev >= 0 {
			p := rungs[prev]
			if r.d <= p.d {
				c.fail(p.key, p.raw, `must be shorter than %s = %q: the engine would %s before it could %s. `+
					`An idle engine goes ready, asleep at level 1 (engine.sleep_after), asleep at level 2 (engine.deep_sleep_after), stopped (engine.idle_timeout), `+
					`each rung after its own time since the last request; "0s" leaves a rung out`, r.key, r.raw, r.what, p.what)
			}
		}
		prev = i
	}
}
