#!/bin/sh
# The admission benchmark (llmlab tune-admission) in front of a real
# engine nobody here wrote: Ollama with SLOTS parallel slots on one CPU,
# the random-weight model of build.sh. The shipped llmlabd (only the
# engine's URL, its model and the objective set) side by side with fixed
# in-flight limits and a bare proxy that answers 429 past N in flight, at
# 1x, 2x and 3x the engine's own sustainable rate; a step from idle; and
# find-max through the shipped llmlabd. Results: $OUT/admission.json.
#
#   SLOTS=4        OLLAMA_NUM_PARALLEL
#   SLO=2s         the objective (this engine answers 200+200 tokens in
#                  about half a second with its slots busy)
#   FIXED="4 8 12" PROXY="4 6 8 10 12"   the peers' limits
#   ARGS           more llmlab tune-admission flags, e.g. "--stream=false"
set -eu
cd "$(dirname "$0")/../../../.."
SLOTS=${SLOTS:-4}
SLO=${SLO:-2s}
FIXED=${FIXED:-4 8 12}
PROXY=${PROXY:-4 6 8 10 12}
ENGINE_CPU=${ENGINE_CPU:-1}
LOAD_CPUS=$(seq 0 $(($(nproc) - 1)) | grep -vx "$ENGINE_CPU" | paste -sd, -)
DIR=$(cmd/llmlabd/testdata/ollama/build.sh)
go build -o bin/ ./cmd/...
OUT=${OUT:-results/admission-ollama-$SLOTS-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OLLAMA_HOST=127.0.0.1:11502 OLLAMA_NUM_PARALLEL=$SLOTS LLMLAB_OLLAMA_DIR=$DIR LLMLAB_ENGINE_CPUS=$ENGINE_CPU \
	cmd/llmlabd/testdata/ollama/serve.sh > "$OUT/ollama.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
i=0
until curl -fsS http://127.0.0.1:11502/api/ps 2>/dev/null | grep -q llmlab-tiny; do
	i=$((i + 1)); [ $i -lt 1200 ] || { echo "bench-admission: Ollama did not get ready" >&2; exit 1; }
	sleep 0.1
done
# shellcheck disable=SC2086
taskset -c "$LOAD_CPUS" bin/llmlab tune-admission --engine http://127.0.0.1:11502 --model llmlab-tiny --slo-p95 "$SLO" \
	--fixed "$(echo $FIXED | tr ' ' ,)" --proxy "$(echo $PROXY | tr ' ' ,)" --results "$OUT" ${ARGS:-} | tee "$OUT/table.md"
