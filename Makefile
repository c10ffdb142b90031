# llmlab: `make demo` runs the main job, `make test` runs every test.
GO        ?= go
BIN       := bin
# Each fuzz target runs for FUZZEXECS executions, not for a time: Go 1.26's
# time budget can fail a healthy target at its deadline (golang/go#75804).
# internal/fuzzrun fails a target whose executions stop growing for
# FUZZSTALL (a hang, or minimizing that never ends: golang/go#48820).
FUZZEXECS ?= 200000
FUZZSTALL ?= 20s
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# go-nvml is cgo; its header marks many functions deprecated, which is noise.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.PHONY: all build demo deb test test-quick test-system test-engines test-fleet lint fuzz vulncheck bench-overhead bench-engines bench-fleet clean

all: build

## build: the binaries, in bin/
build:
	$(GO) build -o $(BIN)/ ./cmd/...

## demo: two engine simulators, llmlabd in front of one, rising load against both, a results table (under a minute)
demo: build
	$(BIN)/llmlab demo

## deb: dist/llmlab_<version>_amd64.deb, reproducibly (VERSION, SOURCE_DATE_EPOCH and DIST override the defaults)
deb:
	sh packaging/build-deb.sh

## test: lint, every unit and integration test with the race detector (the alert rules and /metrics checked with Debian's promtool, fetched once by internal/promtool/promtool.sh), a short fuzz of each parser, llmlabd in front of a real engine (Ollama), and (as root) the real-systemd tests and the fleet test
test: lint
	LLMLAB_PROMTOOL=$$(sh internal/promtool/promtool.sh) $(GO) test -race -count=1 ./...
	$(MAKE) fuzz
	$(MAKE) test-engines
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) test-system test-fleet; else echo "make test: not root, so the real-systemd tests (make test-system) and the fleet test (make test-fleet) did not run"; fi

## test-system: boot a Debian rootfs with systemd-nspawn and test the units, socket activation and scale to zero in it (root; needs systemd-container and debootstrap)
test-system:
	$(GO) test -tags systemtest -count=1 -timeout 30m -v ./units/

## test-fleet: two llmlab hosts in network namespaces behind Debian's HAProxy, each waking its own simulated engine (root; needs haproxy, iproute2, curl; about 2 minutes)
test-fleet:
	$(GO) test -tags fleettest -count=1 -timeout 10m -v -run TestFleet ./cmd/llmlabd/fleet/

## bench-fleet: the fleet's measured version recorded in docs/scaling.md: each host's peak, twice that through HAProxy with the agent and with plain round-robin, a host killed (root; about 15 minutes)
bench-fleet:
	$(GO) test -tags fleettest -count=1 -timeout 40m -v -run TestFleet ./cmd/llmlabd/fleet/ -args -bench

## test-engines: llmlabd in front of Ollama, built once from the Go module proxy with a random-weight model (cmd/llmlabd/testdata/ollama/build.sh: cached; needs g++, nlohmann-json3-dev, libstb-dev, curl)
test-engines:
	dir=$$(sh cmd/llmlabd/testdata/ollama/build.sh) && LLMLAB_OLLAMA_DIR=$$dir $(GO) test -tags realengine -count=1 -run RealEngine -v ./cmd/llmlabd/

## test-quick: the unit and integration tests, no race detector, no fuzzing
test-quick:
	LLMLAB_PROMTOOL=$$(sh internal/promtool/promtool.sh) $(GO) test -count=1 ./...

## lint: gofmt, go vet and staticcheck must be clean
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags realengine ./cmd/llmlabd/
	$(GO) vet -tags fleettest ./cmd/llmlabd/fleet/
	cd cmd/llmlabd/testdata/ollama/mkmodel && $(GO) vet .
	$(GO) run $(STATICCHECK) ./...

## fuzz: each fuzz target for FUZZEXECS executions; fails when one finds a bug or stalls for FUZZSTALL
fuzz:
	$(GO) run ./internal/fuzzrun -execs $(FUZZEXECS) -stall $(FUZZSTALL) \
	  ./daemon/config:FuzzParse ./daemon/gateway:FuzzValidate ./daemon/gateway:FuzzClientAddr ./daemon/enginemetrics:FuzzParse

## vulncheck: govulncheck against Go's vulnerability database, built from the golang.org/x/vulndb module (needs the Go module proxy; not part of make test)
vulncheck:
	sh packaging/vulncheck.sh

## bench-engines: Ollama alone, through llmlabd with fixed limits and with the model's, side by side at 0.5x-3x its peak, and the knee of each (about 40 minutes; results/engines-*; docs/benchmarks.md)
bench-engines: build
	sh cmd/llmlabd/testdata/ollama/bench-engines.sh

## bench-overhead: llmlabd's overhead against nginx, a bare Go reverse proxy and direct access (needs nginx-light)
bench-overhead: build
	$(BIN)/llmlab overhead

clean:
	rm -rf $(BIN) dist
