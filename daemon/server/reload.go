package server

import (
	"log/slog"
	"strings"

	"github.com/llmlab/llmlab/daemon/config"
)

// reload re-reads the configuration (SIGHUP); a bad one is refused and the
// running one kept, as is one that would leave an API listener beyond
// loopback without API keys. What each changed key needs is declared with
// the key (config.Need, docs/architecture.md):
//
//  1. A key read only when llmlabd starts is logged as needing a restart:
//     the part that read it (a listener, the logger, the engine's metrics
//     scraper, the state directory) keeps the old value, though the running
//     configuration, and /status, show the new one.
//  2. The new configuration is swapped in, and every part takes its share
//     at once: the gateway (limits, queue, keys), the GPU share, the
//     supervisor (its delays, start timeout and readiness probe), the
//     textfile's path; what is read from the running configuration when
//     used (the profiler, the engine's stop grace, the connection cap) is
//     the new value from then on.
//  3. A key the engine reads at its start drains the engine and starts it
//     again, once, with the new configuration (swapped in by then); so does
//     a sleep rung's change that turns vLLM's sleep mode on or off.
func (d *daemon) reload() {
	o := d.o
	o.Explicit = true
	cfg, keys, err := LoadConfig(o)
	if err == nil {
		err = checkPublic(d.lns.api, cfg, keys, d.log)
	}
	if err != nil {
		d.log.Error("reload refused; keeping the running configuration", "err", err)
		return
	}
	warnDeprecated(d.log, cfg)
	old := d.st.cfgNow()
	changes := config.Diff(old, cfg)
	engineChanged := false
	texts := make([]string, len(changes))
	for i, c := range changes {
		texts[i] = c.String()
		switch c.Needs {
		case config.NeedDaemonRestart:
			d.log.Warn("setting needs a restart to take effect", "change", texts[i])
		case config.NeedEngineRestart:
			engineChanged = true
		case config.NeedSleepMode:
			// A rung's new time applies at once (the supervisor's
			// SetConfig below); sleep mode itself is the engine's from
			// its start.
			if old.Engine.SleepMode() != cfg.Engine.SleepMode() {
				engineChanged = true
			}
		}
	}
	// The engine's environment is read from the running configuration at
	// its next start: swap it in before that start is asked for.
	d.st.setCfg(cfg)
	if d.adm != nil {
		d.adm.SetShare(cfg.GPU.MemoryBudget, cfg.GPU.MemoryFraction)
	}
	d.gw.Reload(gatewayConfig(cfg), keys)
	d.learned.setTextfile(cfg.Metrics.Textfile, d.reg)
	d.learned.writeTextfile(true)
	if d.sup != nil {
		// Before a restart is asked for: the new engine starts with them.
		d.sup.SetConfig(d.supervisorConfig(cfg))
	}
	if engineChanged {
		switch b := d.engineBackend(cfg); {
		case d.sup != nil && b != nil:
			d.sup.Restart(b) // drained, then restarted once; arrivals wait as in a cold start
		case d.sup == nil && b == nil:
			// An engine managed elsewhere: llmlabd starts nothing, and
			// the gateway has taken its part.
		default:
			d.log.Warn("switching between a managed and an external engine needs a restart")
		}
	}
	d.log.Info("reloaded", "changes", strings.Join(texts, "; "), "api_keys", keys.Len())
}

// warnDeprecated logs the keys cfg's file sets that no longer do anything,
// and the values adjusted to fit another.
func warnDeprecated(log *slog.Logger, cfg *config.Config) {
	for _, d := range cfg.Deprecated {
		log.Warn("deprecated setting", "config", cfg.Path, "setting", d)
	}
	for _, n := range cfg.Notes {
		log.Info("setting adjusted", "config", cfg.Path, "setting", n)
	}
}
