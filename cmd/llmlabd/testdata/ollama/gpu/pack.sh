#!/bin/sh
# Packs, on this machine, what a GPU machine without network needs to serve
# Ollama on its card behind llmlabd (run.sh there), into DEST (default
# devbin/gpu, which git ignores; carry it with the device tool):
#   bin/llmlab.gz, bin/llmlabd.gz   built here with cgo (NVML), stripped
#   bin/mkmodel.gz                  the GGUF generator (qwen2.5-0.5b preset)
#   ollama.gz                       Ollama v0.17.4, as ../build.sh builds it, stripped
#   ollama-src.tar.gz               ggml's sources from Ollama's module
#                                   (CMakeLists.txt, CMakePresets.json,
#                                   ml/backend/ggml/ggml): run.sh builds the
#                                   CUDA backend from them there
# About 25 MiB in all (the device tool carries 64).
set -eu
cd "$(dirname "$0")/../../../../.."
DEST=${1:-devbin/gpu}
mkdir -p "$DEST/bin"
export CGO_CFLAGS="${CGO_CFLAGS:--O2 -g -Wno-deprecated-declarations}"
go build -ldflags "-s -w" -o "$DEST/bin/" ./cmd/llmlab ./cmd/llmlabd
(cd cmd/llmlabd/testdata/ollama/mkmodel && CGO_ENABLED=0 go build -ldflags "-s -w" -o "../../../../../$DEST/bin/mkmodel" .)
for f in llmlab llmlabd mkmodel; do gzip -f "$DEST/bin/$f"; done
DIR=$(cmd/llmlabd/testdata/ollama/build.sh)
strip -s -o "$DEST/ollama" "$DIR/bin/ollama" && gzip -f "$DEST/ollama"
MOD=$(GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' github.com/ollama/ollama@v0.17.4 2>/dev/null || echo "$(go env GOMODCACHE)/github.com/ollama/ollama@v0.17.4")
tar czf "$DEST/ollama-src.tar.gz" -C "$MOD" CMakeLists.txt CMakePresets.json ml/backend/ggml/ggml
cp cmd/llmlabd/testdata/ollama/gpu/run.sh cmd/llmlabd/testdata/ollama/gpu/engine.sh "$DEST/"
du -sh "$DEST"
