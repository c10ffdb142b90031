#!/bin/sh
# Runs Ollama as an engine llmlabd can start and stop (engine.command),
# serving the random-weight model "llmlab-tiny" from build.sh's folder
# (or LLMLAB_OLLAMA_MODEL as LLMLAB_OLLAMA_NAME):
# starts `ollama serve` on $OLLAMA_HOST (default 127.0.0.1:11434) with its
# own model store, registers the model, loads it and keeps it loaded, then
# waits for the server. llmlabd knows it is ready when GET /api/ps lists the
# model (engine.ready_path = "/api/ps", engine.ready_match = "llmlab-tiny").
# On stderr it says when each part of the start ended: the server
# answering, the model registered, the weights loaded.
#
#   OLLAMA_NUM_PARALLEL  slots (default 4)
#   LLMLAB_OLLAMA_DIR    build.sh's folder (default: run build.sh)
#   LLMLAB_ENGINE_CPUS   CPUs to pin the engine to (taskset -c), e.g. "1"
#   LLMLAB_OLLAMA_MODEL  another model to serve instead of build.sh's: a
#                        .gguf (served with num_ctx 1024, as llmlab-tiny
#                        is), e.g. the one `$DIR/bin/mkmodel -preset
#                        qwen2.5-0.5b -o /tmp/qwen.gguf` writes, or a
#                        Modelfile whose FROM is an absolute path
#   LLMLAB_OLLAMA_NAME   the name it is served as (default llmlab-tiny;
#                        engine.ready_match and the requests' model follow)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${LLMLAB_OLLAMA_DIR:-$("$HERE/build.sh")}
NAME=${LLMLAB_OLLAMA_NAME:-llmlab-tiny}
MODEL=${LLMLAB_OLLAMA_MODEL:-}
if [ -n "$MODEL" ]; then
	[ -f "$MODEL" ] || { echo "serve.sh: no file $MODEL" >&2; exit 1; }
	MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")
fi
export OLLAMA_HOST=${OLLAMA_HOST:-127.0.0.1:11434}
export OLLAMA_NUM_PARALLEL=${OLLAMA_NUM_PARALLEL:-4}
export OLLAMA_KEEP_ALIVE=-1
export OLLAMA_MAX_LOADED_MODELS=1
T0=$(date +%s.%N)
since() { echo "$(date +%s.%N) $T0" | awk '{printf "%.2f", $1 - $2}'; }
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
echo "serve.sh: ollama answering after $(since) s" >&2
{
	case $MODEL in
	"") cat "$DIR/Modelfile" ;;
	*.gguf) printf 'FROM %s\nPARAMETER num_ctx 1024\n' "$MODEL" ;;
	*) cat "$MODEL" ;;
	esac
	echo "PARAMETER num_thread $THREADS"
} > "$STORE/Modelfile"
"$DIR/bin/ollama" create "$NAME" -f "$STORE/Modelfile" >/dev/null 2>&1
echo "serve.sh: model $NAME registered after $(since) s" >&2
# An empty generate request loads the model; keep_alive -1 keeps it.
curl -fsS "http://$OLLAMA_HOST/api/generate" -d "{\"model\":\"$NAME\",\"keep_alive\":-1}" >/dev/null
echo "serve.sh: weights loaded after $(since) s" >&2
wait $PID
