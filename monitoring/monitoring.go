// Package monitoring holds what the package ships for Prometheus and
// Grafana under /usr/share/llmlab/monitoring: the alert rules (with their
// promtool unit tests) and the Grafana dashboard, which `llmlab dashboard`
// also draws without Grafana.
package monitoring

import _ "embed"

// Dashboard is llmlab-dashboard.json, the Grafana dashboard.
//
//go:embed llmlab-dashboard.json
var Dashboard []byte
