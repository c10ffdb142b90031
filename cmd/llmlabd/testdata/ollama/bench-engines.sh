#!/bin/sh
# make bench-engines: llmlab measured in front of a real engine nobody here
# wrote. Ollama (4 slots, on one CPU, the random-weight model of build.sh)
# alone, through llmlabd with fixed in-flight limits, and through llmlabd
# with the limit chosen from its engine model (the shipped default), side
# by side at 0.5x to 3x the engine's own peak, every phase
# drained; then the highest rate within the SLO through each (the knee).
# ENGINE=sim:t4 (or sim:gtx1650) runs the same comparison against the
# simulator instead (SLO 5s by default).
#
# The engine is pinned to CPU $ENGINE_CPU, the load generator and llmlabd
# to the others (taskset), and the engine's time waiting for a CPU is
# reported from the kernel's schedstat, so that a starved engine shows.
#
#   SLO=2s       the p95 objective (scaled to this engine, which answers a
#                200+200-token request in about 0.55 s with 4 slots busy)
#   SLOTS=4      OLLAMA_NUM_PARALLEL
#   MODEL_MAX    the model side's max_inflight (64; 256, vLLM's default
#                --max-num-seqs, for the simulator)
#   FIXED="4 8 12"  the fixed in-flight limits measured beside the model's
#   TARGETS="0s"    the model side's queue.target_latency, one side each
#                   ("0s": its default, the SLO)
#   MULTS="0.5 1 1.5 2 3"  the offered rates, times the engine's peak
#   BENCH_ARGS   more llmlab bench flags, e.g. "--stream=false"
#   DURATION=30s WARMUP=5s per phase; KNEE=1 also runs find-max through
#   each side, or those named in KNEE_SIDES (KNEE=0 skips it)
set -eu
cd "$(dirname "$0")/../../../.."
ENGINE_KIND=${ENGINE:-ollama}
case $ENGINE_KIND in
ollama) SLO=${SLO:-2s} MODEL_MAX=${MODEL_MAX:-64} ;;
sim:*) SLO=${SLO:-5s} MODEL_MAX=${MODEL_MAX:-256} ;;
*) echo "bench-engines: ENGINE=ollama or sim:PROFILE" >&2; exit 2 ;;
esac
SLOTS=${SLOTS:-4}
FIXED=${FIXED:-4 8 12}
TARGETS=${TARGETS:-0s}
MULTS=${MULTS:-0.5 1 1.5 2 3}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
KNEE=${KNEE:-1}
ENGINE_CPU=${ENGINE_CPU:-1}
NCPU=$(nproc)
[ "$NCPU" -ge 2 ] || { echo "bench-engines: needs at least 2 CPUs (the engine and the load apart)" >&2; exit 1; }
LOAD_CPUS=$(seq 0 $((NCPU - 1)) | grep -vx "$ENGINE_CPU" | paste -sd, -)
[ "$ENGINE_KIND" = ollama ] && DIR=$(cmd/llmlabd/testdata/ollama/build.sh)
go build -o bin/ ./cmd/...
OUT=${OUT:-results/engines-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

ENGINE=http://127.0.0.1:11501
if [ "$ENGINE_KIND" = ollama ]; then
	MODEL=llmlab-tiny READY_PATH=/api/ps READY_MATCH=llmlab-tiny
	OLLAMA_HOST=127.0.0.1:11501 OLLAMA_NUM_PARALLEL=$SLOTS LLMLAB_OLLAMA_DIR=$DIR LLMLAB_ENGINE_CPUS=$ENGINE_CPU \
		cmd/llmlabd/testdata/ollama/serve.sh > "$OUT/ollama.log" 2>&1 &
else
	MODEL=Qwen/Qwen2.5-0.5B-Instruct READY_PATH=/health READY_MATCH=
	taskset -c "$ENGINE_CPU" bin/llmlab sim --profile "${ENGINE_KIND#sim:}" --startup-delay 0 --port 11501 > "$OUT/sim.log" 2>&1 &
fi
PIDS="$PIDS $!"
i=0
ready() {
	if [ -n "$READY_MATCH" ]; then curl -fsS "$ENGINE$READY_PATH" 2>/dev/null | grep -q "$READY_MATCH"; else curl -fsS -o /dev/null "$ENGINE$READY_PATH" 2>/dev/null; fi
}
until ready; do
	i=$((i + 1)); [ $i -lt 600 ] || { echo "bench-engines: the engine did not get ready" >&2; exit 1; }
	sleep 0.1
done

# llmlabd in front of the running engine (not managed: always on).
n=0
daemon() { # label concurrency max_inflight [target_latency]
	n=$((n + 1))
	cat > "$OUT/$1.toml" <<CONF
[gateway]
listen = "127.0.0.1:$((18100 + n))"
exit_idle_timeout = "0s"
[engine]
url = "$ENGINE"
models = ["$MODEL"]
ready_path = "$READY_PATH"
ready_match = "$READY_MATCH"
[queue]
concurrency = "$2"
max_inflight = $3
min_inflight = 1
target_latency = "${4:-0s}"
[metrics]
listen = "127.0.0.1:$((19100 + n))"
textfile = ""
[gpu]
enabled = false
[log]
access_log = false
[slo]
latency = "$SLO"
CONF
	taskset -c "$LOAD_CPUS" bin/llmlabd --config "$OUT/$1.toml" > "$OUT/$1.log" 2>&1 &
	PIDS="$PIDS $!"
	until curl -fsS "http://127.0.0.1:$((19100 + n))/healthz" >/dev/null 2>&1; do sleep 0.05; done
	SIDES="$SIDES,$1=http://127.0.0.1:$((18100 + n))"
	# Drained by llmlabd's own gauges; the simulator's by its own (which
	# also checks that it kept to its cost model).
	if [ "$ENGINE_KIND" = ollama ]; then
		METRICS="$METRICS,$1=http://127.0.0.1:$((19100 + n))/metrics"
	else
		METRICS="$METRICS,$1=$ENGINE/metrics"
	fi
	LABELS="$LABELS $1"
}
SIDES="engine=$ENGINE"
METRICS=""
LABELS="engine"
for f in $FIXED; do daemon "fixed$f" fixed "$f"; done
for tl in $TARGETS; do
	if [ "$tl" = 0s ]; then daemon model model "$MODEL_MAX"; else daemon "model-$tl" model "$MODEL_MAX" "$tl"; fi
done

# Every second, the model's limit (of the last side started).
( while :; do
	printf '%s %s\n' "$(date +%s.%N)" "$(curl -fsS "http://127.0.0.1:$((19100 + n))/metrics" 2>/dev/null | awk '$1 == "llmlab_inflight_limit" { print $2 }')"
	sleep 1
  done > "$OUT/model-limit.txt" ) &
PIDS="$PIDS $!"

# The engine's time waiting for a CPU (schedstat's second field, in ns),
# summed over Ollama's threads.
rundelay() {
	pat="bin/llmlab sim"
	[ "$ENGINE_KIND" = ollama ] && pat="$DIR/bin/ollama"
	for p in $(pgrep -f "$pat"); do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{ s += $2 } END { print s + 0 }'
}
bench() { taskset -c "$LOAD_CPUS" bin/llmlab bench --model "$MODEL" --slo-p95 "$SLO" --duration "$DURATION" --warmup "$WARMUP" --progress off ${BENCH_ARGS:-} "$@"; }

d0=$(rundelay); t0=$(date +%s)
echo "== the engine's peak (find-max, engine alone)" | tee "$OUT/summary.txt"
bench --target "$ENGINE" --find-max --rate 1 --results "$OUT/findmax-engine" | tee -a "$OUT/summary.txt"
PEAK=$(awk -F, 'NR > 1 && $9 > m { m = $9 } END { printf "%.2f", m }' "$OUT/findmax-engine/results.csv")
echo "engine peak goodput: $PEAK req/s" | tee -a "$OUT/summary.txt"
RATES=$(for m in $MULTS; do awk -v m="$m" -v p="$PEAK" 'BEGIN { printf "%.2f,", m * p }'; done | sed 's/,$//')
echo "== side by side at $RATES req/s ($MULTS x the peak)" | tee -a "$OUT/summary.txt"
bench --sides "$SIDES" --sides-metrics "${METRICS#,}" --rates "$RATES" --results "$OUT/sides" | tee -a "$OUT/summary.txt" || true
if [ "$KNEE" = 1 ]; then
	for l in ${KNEE_SIDES:-$LABELS}; do
		u=$(echo "$SIDES" | tr , '\n' | sed -n "s|^$l=||p")
		echo "== the knee through $l (find-max)" | tee -a "$OUT/summary.txt"
		m=$(echo "$METRICS" | tr , '\n' | sed -n "s|^$l=||p")
		bench --target "$u" ${m:+--target-engine-metrics "$m"} --find-max --rate "$(awk -v p="$PEAK" 'BEGIN { printf "%.2f", p / 2 }')" --results "$OUT/findmax-$l" | grep -E '^sustainable' | sed "s/^/$l: /" | tee -a "$OUT/summary.txt"
	done
fi
d1=$(rundelay); t1=$(date +%s)
awk -v d="$(awk -v a="$d0" -v b="$d1" 'BEGIN { printf "%.0f", b - a }')" -v t="$((t1 - t0))" 'BEGIN { printf "the engine waited for a CPU %.2f%% of the run (%.1f s of %d s)\n", 100 * d / 1e9 / t, d / 1e9, t }' | tee -a "$OUT/summary.txt"
echo "results: $OUT"
