package main

import (
	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/dashboard"
	"github.com/llmlab/llmlab/cmd/llmlab/demo"
	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/overhead"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/cmd/llmlab/smoke"
	"github.com/llmlab/llmlab/cmd/llmlab/status"
	"github.com/llmlab/llmlab/cmd/llmlab/tune"
	"github.com/llmlab/llmlab/etc/monitoring"
)

// commands is the table of what an operator runs, in the order of the
// usage text, the manual page and the completion. A command with a
// package of its own under cmd/llmlab exports its Command there; a thin
// one is a file of package main named for it (checkconfigcmd.go, ...).
func commands() []command.Command {
	return []command.Command{
		checkConfigCommand(),
		status.Command(),
		smoke.Command(),
		dashboard.Command(monitoring.Dashboard),
		demo.Command(),
		bench.Command(),
		sim.Command(),
		fakeEngineCommand(),
		overhead.Command(),
		tune.Command(),
		tune.EngineCommand(),
		tune.AdmissionCommand(),
		gpuCommand(),
		manCommand(),
		completionCommand(),
	}
}

// helpers are the commands only a benchmark runs, as the children it
// measures (llmlab overhead): callable, but left out of the usage text,
// the manual page and the completion, which list what an operator runs.
func helpers() []command.Command {
	return []command.Command{
		reverseProxyCommand(),
	}
}
