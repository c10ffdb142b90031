#!/bin/sh
# Runs Ollama as an engine llmlabd can start and stop (engine.command),
# serving the random-weight model "llmlab-tiny" from build.sh's folder:
# starts `ollama serve` on $OLLAMA_HOST (default 127.0.0.1:11434) with its
# own model store, registers the model, loads it and keeps it loaded, then
# waits for the server. llmlabd knows it is ready when GET /api/ps lists the
# model (engine.ready_path = "/api/ps", engine.ready_match = "llmlab-tiny").
#
#   OLLAMA_NUM_PARALLEL  slots (default 4)
#   LLMLAB_OLLAMA_DIR    build.sh's folder (default: run build.sh)
#   LLMLAB_ENGINE_CPUS   CPUs to pin the engine to (taskset -c), e.g. "1"
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${LLMLAB_OLLAMA_DIR:-$("$HERE/build.sh")}
export OLLAMA_HOST=${OLLAMA_HOST:-127.0.0.1:11434}
export OLLAMA_NUM_PARALLEL=${OLLAMA_NUM_PARALLEL:-4}
export OLLAMA_KEEP_ALIVE=-1
export OLLAMA_MAX_LOADED_MODELS=1
STORE=$(mktemp -d "${TMPDIR:-/tmp}/llmlab-ollama.XXXXXX")
export OLLAMA_MODELS="$STORE"
PIN=""
[ -n "${LLMLAB_ENGINE_CPUS:-}" ] && PIN="taskset -c $LLMLAB_ENGINE_CPUS"
# One compute thread per CPU it may use: ggml's threads wait for each other
# by spinning, so two threads pinned to one CPU run 100 times slower.
THREADS=$($PIN nproc)
$PIN "$DIR/bin/ollama" serve &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$STORE"' EXIT
trap 'exit 143' TERM INT
i=0
until curl -fsS "http://$OLLAMA_HOST/api/version" >/dev/null 2>&1; do
	i=$((i + 1))
	if [ $i -gt 200 ] || ! kill -0 $PID 2>/dev/null; then
		echo "serve.sh: ollama did not start on $OLLAMA_HOST" >&2
		exit 1
	fi
	sleep 0.05
done
{ cat "$DIR/Modelfile"; echo "PARAMETER num_thread $THREADS"; } > "$STORE/Modelfile"
"$DIR/bin/ollama" create llmlab-tiny -f "$STORE/Modelfile" >/dev/null 2>&1
# An empty generate request loads the model; keep_alive -1 keeps it.
curl -fsS "http://$OLLAMA_HOST/api/generate" -d '{"model":"llmlab-tiny","keep_alive":-1}' >/dev/null
wait $PID
