#!/bin/sh
# Prints the path of promtool: $LLMLAB_PROMTOOL, one on PATH, or Debian's,
# unpacked from the prometheus package by debian-tool.sh.
set -eu
if [ -n "${LLMLAB_PROMTOOL:-}" ]; then echo "$LLMLAB_PROMTOOL"; exit 0; fi
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
exec sh "$(dirname "$0")/debian-tool.sh" prometheus promtool
