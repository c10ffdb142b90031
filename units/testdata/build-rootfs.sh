#!/bin/sh
# Builds the Debian rootfs that the real-systemd tests boot with
# systemd-nspawn, once per machine: the result is cached under
# /var/cache/llmlab-test, keyed by the package list, and reused.
set -eu
PKGS="systemd,systemd-sysv,dbus,libpam-systemd,polkitd,procps,curl,ca-certificates,iproute2,sudo"
KEY=$(printf '%s' "bookworm $PKGS" | sha256sum | cut -c1-12)
CACHE=/var/cache/llmlab-test
ROOT="$CACHE/rootfs-$KEY"
if [ -f "$ROOT/.complete" ]; then
	echo "$ROOT"
	exit 0
fi
# The mirror comes from the host's apt sources, never from this file.
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
mkdir -p "$CACHE"
rm -rf "$ROOT.tmp"
debootstrap --variant=minbase --include="$PKGS" bookworm "$ROOT.tmp" "$MIRROR" >&2
: > "$ROOT.tmp/etc/apt/sources.list"
rm -rf "$ROOT.tmp"/var/lib/apt/lists/* "$ROOT.tmp"/var/cache/apt/archives/*.deb
touch "$ROOT.tmp/.complete"
rm -rf "$ROOT"
mv "$ROOT.tmp" "$ROOT"
echo "$ROOT"
