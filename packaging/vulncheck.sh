#!/bin/sh
# vulncheck.sh: govulncheck over llmlab's module, with Go's vulnerability
# database built locally from the golang.org/x/vulndb module on the Go
# module proxy (this machine reaches no other copy of the database). It
# prints govulncheck's report and exits with its status; `make vulncheck`
# runs it, `make test` does not: a machine without the proxy cannot build
# the database, and a finding in the Go toolchain is fixed by a newer Go,
# not by this code. docs/reliability.md records the last result.
set -eu
VULNDB=${VULNDB:-golang.org/x/vulndb@v0.0.0-20261105234957-e22db6528018}
GOVULNCHECK=${GOVULNCHECK:-golang.org/x/vuln/cmd/govulncheck@v1.9.0}
CACHE=${LLMLAB_CACHE:-/var/cache/llmlab-test}
db="$CACHE/vulndb-${VULNDB##*@}"
if [ ! -f "$db/index/db.json" ]; then
	src=$(go mod download -json "$VULNDB" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
	mkdir -p "$CACHE"
	rm -rf "$db.tmp"
	(cd "$src" && go run ./cmd/indexdb -vulns "$src/data/osv" -out "$db.tmp") >&2
	rm -rf "$db"
	mv "$db.tmp" "$db"
fi
echo "vulncheck: database $VULNDB, $(go version)" >&2
exec go run "$GOVULNCHECK" -db "file://$db" ./...
