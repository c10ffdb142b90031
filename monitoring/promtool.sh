#!/bin/sh
# Prints the path of Debian's promtool (from the prometheus package),
# fetched once with apt-get download and unpacked with dpkg -x under
# /var/cache/llmlab-test (or $LLMLAB_CACHE), so that the tests check the
# alert rules and /metrics with the real tool without installing the
# package (which would start a Prometheus server on this machine).
set -eu
if [ -n "${LLMLAB_PROMTOOL:-}" ]; then echo "$LLMLAB_PROMTOOL"; exit 0; fi
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
CACHE=${LLMLAB_CACHE:-/var/cache/llmlab-test}
for p in "$CACHE"/prometheus-*/usr/bin/promtool; do
	if [ -x "$p" ]; then echo "$p"; exit 0; fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && apt-get download prometheus >&2 )
deb=$(ls "$tmp"/prometheus_*.deb)
ver=$(dpkg-deb -f "$deb" Version)
dest="$CACHE/prometheus-$ver"
mkdir -p "$CACHE"
unpack=$(mktemp -d "$CACHE/.prometheus.XXXXXX")
dpkg -x "$deb" "$unpack"
mv -T "$unpack" "$dest" 2>/dev/null || rm -rf "$unpack" # another run got there first
echo "$dest/usr/bin/promtool"
