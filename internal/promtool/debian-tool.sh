#!/bin/sh
# debian-tool.sh PACKAGE BINARY: prints the path of BINARY from Debian's
# PACKAGE (prometheus, prometheus-node-exporter), fetched once with
# apt-get download and unpacked with dpkg -x under /var/cache/llmlab-test
# (or $LLMLAB_CACHE). The tests run the real tools this way without
# installing the packages, which would start their services (Prometheus on
# 9090, node_exporter on 9100) on this machine.
set -eu
pkg=$1 bin=$2
CACHE=${LLMLAB_CACHE:-/var/cache/llmlab-test}
for p in "$CACHE/$pkg"-[0-9]*/usr/bin/"$bin"; do
	if [ -x "$p" ]; then echo "$p"; exit 0; fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && apt-get download "$pkg" >&2 )
deb=$(ls "$tmp/${pkg}"_*.deb)
ver=$(dpkg-deb -f "$deb" Version)
dest="$CACHE/$pkg-$ver"
mkdir -p "$CACHE"
unpack=$(mktemp -d "$CACHE/.$pkg.XXXXXX")
dpkg -x "$deb" "$unpack"
mv -T "$unpack" "$dest" 2>/dev/null || rm -rf "$unpack" # another run got there first
echo "$dest/usr/bin/$bin"
