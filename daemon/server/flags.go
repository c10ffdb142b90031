package server

import (
	"flag"

	"github.com/llmlab/llmlab/daemon/config"
)

// Version is the release, set at link time (-X); "dev" otherwise.
var Version = "dev"

// RegisterFlags defines llmlabd's command-line flags on fs, storing them in
// o. The manual page llmlabd(8) is generated from these definitions.
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.ConfigPath, "config", config.DefaultPath, "configuration file (TOML)")
	fs.StringVar(&o.Listen, "listen", "", "API address when not socket-activated (overrides gateway.listen)")
	fs.StringVar(&o.EngineURL, "engine-url", "", "engine base URL (overrides engine.url)")
	fs.StringVar(&o.MetricsListen, "metrics-listen", "", "metrics address (overrides metrics.listen)")
	fs.Bool("version", false, "print the version and exit")
}
