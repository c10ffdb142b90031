#!/bin/sh
# Builds the real third-party engine llmlab measures itself against:
# Ollama from the Go module proxy, and a random-weight llama model for it
# (mkmodel/), once per machine. Both are cached, keyed by Ollama's version
# and by this folder's sources, under $LLMLAB_CACHE (default
# /var/cache/llmlab-test when writable, else ~/.cache/llmlab). Prints the
# folder that holds bin/ollama, llmlab-tiny.gguf and Modelfile.
#
# Needs cgo with gcc and g++, and Debian's nlohmann-json3-dev and
# libstb-dev; the module zip drops llama.cpp's vendored miniaudio, which
# include/miniaudio/miniaudio.h stands in for. 7-20 minutes on 2 cores the
# first time.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=v0.17.4
if [ -z "${LLMLAB_CACHE:-}" ]; then
	if mkdir -p /var/cache/llmlab-test 2>/dev/null && [ -w /var/cache/llmlab-test ]; then
		LLMLAB_CACHE=/var/cache/llmlab-test
	else
		LLMLAB_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/llmlab
	fi
fi
# Ollama's binary is keyed by its version and the header that stands in
# for miniaudio; the model by mkmodel's sources, so that a change to the
# model does not rebuild Ollama.
BINKEY=$(sha256sum < "$HERE/include/miniaudio/miniaudio.h" | cut -c1-12)
BIN="$LLMLAB_CACHE/ollama-bin-$VERSION-$BINKEY"
KEY=$(cat "$HERE/include/miniaudio/miniaudio.h" "$HERE"/mkmodel/*.go "$HERE/mkmodel/go.sum" | sha256sum | cut -c1-12)
OUT="$LLMLAB_CACHE/ollama-$VERSION-$KEY"
if [ -f "$OUT/.complete" ]; then
	echo "$OUT"
	exit 0
fi
if [ ! -f "$BIN/.complete" ]; then
	# An Ollama of this version built before the keys were split is the
	# same binary: take it rather than build it again.
	for old in "$LLMLAB_CACHE/ollama-$VERSION"-*/bin/ollama; do
		if [ -x "$old" ] && [ -f "$(dirname "$(dirname "$old")")/.complete" ]; then
			mkdir -p "$BIN.tmp/bin" && cp "$old" "$BIN.tmp/bin/ollama" && touch "$BIN.tmp/.complete" &&
				rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
			break
		fi
	done
fi
if [ ! -f "$BIN/.complete" ]; then
	missing=""
	for c in gcc g++; do command -v $c >/dev/null || missing="$missing $c"; done
	[ -f /usr/include/nlohmann/json.hpp ] || missing="$missing nlohmann-json3-dev"
	[ -f /usr/include/stb/stb_image.h ] || missing="$missing libstb-dev"
	if [ -n "$missing" ]; then
		echo "cmd/llmlabd/testdata/ollama/build.sh: building Ollama needs:$missing (apt-get install$missing)" >&2
		exit 1
	fi
	mkdir -p "$BIN.tmp/bin"
	echo "cmd/llmlabd/testdata/ollama/build.sh: building Ollama $VERSION into $BIN (7-20 minutes the first time)" >&2
	CGO_ENABLED=1 CGO_CPPFLAGS="-I$HERE/include" GOBIN="$BIN.tmp/bin" GOFLAGS=-mod=mod \
		go install "github.com/ollama/ollama@$VERSION" >&2
	touch "$BIN.tmp/.complete"
	rm -rf "$BIN"
	mv "$BIN.tmp" "$BIN"
fi
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/bin"
cp "$BIN/bin/ollama" "$OUT.tmp/bin/ollama"
(cd "$HERE/mkmodel" && CGO_ENABLED=0 go build -o "$OUT.tmp/bin/mkmodel" .) >&2
"$OUT.tmp/bin/mkmodel" -o "$OUT.tmp/llmlab-tiny.gguf"
# Ollama's context is per slot times its slots; 1024 holds a 200-token
# prompt and a 200-token answer with room to spare.
printf 'FROM %s\nPARAMETER num_ctx 1024\n' "$OUT/llmlab-tiny.gguf" > "$OUT.tmp/Modelfile"
touch "$OUT.tmp/.complete"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$OUT"
