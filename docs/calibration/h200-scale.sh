#!/bin/sh
# h200-scale.sh BIN OUT [RATES]: the simulator's measured h200 profile with
# a 4 GiB memory budget (--gpu-memory-utilization 4/140 of the card), one
# copy behind llmlabd and one alone, at rising open-loop load measured in
# turn (llmlab bench --sides): llmlab's goodput against the engine's own at
# H200 scale. Needs many cores (hundreds of requests a second, each
# streaming 200 tokens): docs/calibration.md ran it on the GPU machine's 16.
# MAX_INFLIGHT sets llmlabd's queue.max_inflight (448).
set -eu
bin=$1 out=$2 rates=${3:-100,200,300,350,400}
mkdir -p "$out"
util=$(awk 'BEGIN{printf "%.5f", 4/140}')
pids=
trap 'kill $pids 2>/dev/null || true' EXIT
for port in 18001 18002; do
	"$bin/llmlab" sim --profile h200 --startup-delay 0 --gpu-memory-utilization "$util" --port $port >"$out/sim-$port.log" 2>&1 &
	pids="$pids $!"
done
cat >"$out/llmlabd.toml" <<CONF
[gateway]
listen = "127.0.0.1:18080"
max_connections = 16384
[engine]
url = "http://127.0.0.1:18001"
[queue]
max_inflight = ${MAX_INFLIGHT:-448}
max_queued = 4096
[metrics]
listen = "127.0.0.1:19180"
textfile = ""
[gpu]
enabled = false
[log]
access_log = false
CONF
"$bin/llmlabd" --config "$out/llmlabd.toml" >"$out/llmlabd.log" 2>&1 &
pids="$pids $!"
sleep 2
"$bin/llmlab" sim --show-profile --profile h200 --gpu-memory-utilization "$util" | tee "$out/profile.txt"
"$bin/llmlab" bench --sides "llmlab=http://127.0.0.1:18080,engine=http://127.0.0.1:18002" \
	--sides-metrics "llmlab=http://127.0.0.1:18001/metrics,engine=http://127.0.0.1:18002/metrics" \
	--rates "$rates" --duration 20s --warmup 5s --timeout 30s --results "$out/bench" --progress off
