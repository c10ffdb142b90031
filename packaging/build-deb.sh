#!/bin/sh
# Builds dist/llmlab_<version>_amd64.deb (make deb). Reproducible: the same
# commit and SOURCE_DATE_EPOCH give the same bytes. Defaults:
#   SOURCE_DATE_EPOCH  the commit's time
#   VERSION            the tag on HEAD, else <last tag or 0>~git<UTC time
#                      of SOURCE_DATE_EPOCH>.<short hash>, which sorts in
#                      build order
#   DIST               dist (where the .deb goes)
# Prints the .deb's path.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
NFPM=${NFPM:-github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2}
DIST=${DIST:-dist}

hash=$(git rev-parse --short=12 HEAD)
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct HEAD)}"
export SOURCE_DATE_EPOCH
if [ -z "${VERSION:-}" ]; then
	if tag=$(git describe --tags --exact-match HEAD 2>/dev/null); then
		VERSION=${tag#v}
	else
		last=$(git describe --tags --abbrev=0 HEAD 2>/dev/null || echo 0)
		VERSION="${last#v}~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S).$hash"
	fi
fi
export VERSION

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
export STAGE

# The binaries: no build paths or IDs in them, the version linked in.
export CGO_ENABLED=${CGO_ENABLED:-1} CGO_CFLAGS="${CGO_CFLAGS:--O2 -Wno-deprecated-declarations}"
# PIE with RELRO, as Debian's hardening flags ask. Not -z now: go-nvml resolves
# NVML's symbols lazily, after dlopen, and an immediate binding fails at start.
ldflags="-s -w -buildid= -linkmode=external -extldflags=-Wl,-z,relro -X github.com/llmlab/llmlab/daemon/server.Version=$VERSION"
$GO build -buildmode=pie -trimpath -buildvcs=false -ldflags "$ldflags" -o "$STAGE/" ./cmd/llmlabd ./cmd/llmlab

# Manual pages and completion, generated from the flag definitions.
"$STAGE/llmlab" man "$STAGE"
gzip -9n "$STAGE/llmlab.1" "$STAGE/llmlabd.8"
"$STAGE/llmlab" completion bash > "$STAGE/completion.bash"

# The Debian changelog of a native package: one entry for this build.
date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
{
	printf 'llmlab (%s) unstable; urgency=medium\n\n' "$VERSION"
	printf '  * Built from commit %s; the history is in git.\n\n' "$hash"
	printf ' -- llmlab developers <llmlab@lists.llmlab.dev>  %s\n' "$date"
} | gzip -9n > "$STAGE/changelog.gz"

# copyright: llmlab's own, then each Go module linked into the binaries
# with its license text from the module cache.
{
	cat packaging/copyright
	$GO list -deps -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' ./cmd/llmlabd ./cmd/llmlab |
		sort -u | while read -r path version dir; do
			lic=$(ls "$dir" | grep -E -i -m1 '^(LICENSE|LICENCE|COPYING)(\.md|\.txt)?$' || true)
			[ -n "$lic" ] || { echo "build-deb: no license file in $path $version" >&2; exit 1; }
			printf '\nFiles: (compiled in) %s %s\n' "$path" "$version"
			if grep -q 'Apache License' "$dir/$lic" && grep -q 'Version 2.0' "$dir/$lic" && ! grep -q -i 'MIT License\|Redistribution and use' "$dir/$lic"; then
				printf 'License: Apache-2.0\n On Debian systems, the complete text of the Apache License, Version 2.0,\n can be found in /usr/share/common-licenses/Apache-2.0.\n'
				if [ -f "$dir/NOTICE" ]; then
					printf ' .\n Its NOTICE file:\n'
					sed -e 's/^[[:space:]]*$/./' -e 's/^/ /' "$dir/NOTICE"
				fi
			else
				printf 'License: see below\n'
				sed -e 's/^[[:space:]]*$/./' -e 's/^/ /' "$dir/$lic"
			fi
		done
} > "$STAGE/copyright"

# README.md's links name the pages under docs/; the package has them
# beside it, in /usr/share/doc/llmlab/.
sed -e 's|](docs/|](|g' README.md > "$STAGE/README.md"

mkdir -p "$DIST"
sed -e "s|\${STAGE}|$STAGE|g" -e "s|\${VERSION}|$VERSION|g" packaging/nfpm.yaml > "$STAGE/nfpm.yaml"
$GO run "$NFPM" package --packager deb --config "$STAGE/nfpm.yaml" --target "$DIST/" >&2
echo "$DIST/llmlab_${VERSION}_amd64.deb"
