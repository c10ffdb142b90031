// Package monitoring holds what the package ships for Prometheus and
// Grafana under /usr/share/llmlab/monitoring: the alert rules (with their
// promtool unit tests) and the Grafana dashboard, which `llmlab dashboard`
// also draws without Grafana. It is a Go package inside etc/ because an
// embed directive reads only files in the embedding package's folder or below,
// and the shipped files belong with the rest of the shipped configuration;
// like units/ and packaging/, the folder holds the tests of its files.
package monitoring

import _ "embed"

// Dashboard is llmlab-dashboard.json, the Grafana dashboard.
//
//go:embed llmlab-dashboard.json
var Dashboard []byte
