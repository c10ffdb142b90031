// Package fleet holds the tests of a fleet of llmlab hosts behind a real
// load balancer: the shipped balancer configurations (etc/balancer/)
// checked with HAProxy's and nginx's own syntax checks, and (build tag
// fleettest, as root: make test-fleet) two llmlab hosts in network
// namespaces behind Debian's HAProxy. docs/scaling.md has the design and
// the figures. It sits under cmd/llmlabd, whose binary it tests (built
// from its parent folder, with llmlab from ../../llmlab); it is a test
// package of its own so that neither its build tag nor its root-only
// namespaces touch cmd/llmlabd's tests.
package fleet
