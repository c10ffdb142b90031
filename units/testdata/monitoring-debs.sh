#!/bin/sh
# monitoring-debs.sh ROOTFS: prints a directory holding Debian's prometheus
# and prometheus-node-exporter packages and every dependency the rootfs
# lacks, for the system test to install with dpkg in the container. apt
# resolves them against the rootfs's own dpkg status; the result is cached
# under /var/cache/llmlab-test, keyed by the rootfs, and reused.
set -eu
ROOT=$1
PKGS="prometheus prometheus-node-exporter"
CACHE=/var/cache/llmlab-test
DIR="$CACHE/monitoring-debs-$(basename "$ROOT")"
if [ -f "$DIR/.complete" ]; then
	echo "$DIR"
	exit 0
fi
rm -rf "$DIR.tmp"
mkdir -p "$DIR.tmp/partial"
get() {
	apt-get install -y -qq --download-only --no-install-recommends \
		-o Dir::State::status="$ROOT/var/lib/dpkg/status" \
		-o Dir::Cache::archives="$DIR.tmp" $PKGS >&2
}
# A fresh machine may have no package lists yet.
get || { apt-get update -qq >&2 && get; }
rm -rf "$DIR.tmp/partial" "$DIR.tmp/lock"
ls "$DIR.tmp"/prometheus_*.deb "$DIR.tmp"/prometheus-node-exporter_*.deb >/dev/null
touch "$DIR.tmp/.complete"
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
echo "$DIR"
