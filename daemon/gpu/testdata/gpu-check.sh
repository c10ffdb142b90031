#!/bin/bash
# llmlab's real-GPU check (docs/gpu.md), run on the lent GPU machine with
# the binaries built here:
#   bash daemon/gpu/testdata/gpu-check.sh   (bin/llmlab and bin/llmlabd carried)
set -u
B=${B:-bin}
T=daemon/gpu/testdata
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT

echo "== the card"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
echo "== device nodes (for llmlab.service's DeviceAllow=)"
ls -l /dev/nvidia* 2>&1 | head
grep -i nvidia /proc/devices

echo "== 1. NVML as llmlabd reads it, and the 4 GiB budget's arithmetic"
$B/llmlab gpu --budget 4GiB

echo "== 2. while PyTorch allocates (its share of a 4 GiB budget) and computes; then the release wait"
$B/llmlab gpu --budget 4GiB --watch 1s --run-for 8s -- python3 $T/torch_load.py compute 30

echo "== 3. start admission when another process holds half of the card"
python3 $T/torch_load.py hold 0.5 & HOLD=$!
for _ in $(seq 60); do $B/llmlab gpu --json | grep -q '"pid"' && break; sleep 0.5; done
$B/llmlab gpu
echo "-- the default share (0.9 of the card) does not fit:"
$B/llmlab gpu -- sleep 1; echo "exit status $?"
echo "-- a 4 GiB budget does:"
$B/llmlab gpu --budget 4GiB --run-for 1s -- sleep 30; echo "exit status $?"
kill $HOLD; wait $HOLD 2>/dev/null

echo "== 4. llmlabd: a cold start, then scale to zero; the GPU memory is back when it reports stopped"
cat > "$W/llmlab.toml" <<EOT
[gateway]
listen = "127.0.0.1:18080"
[engine]
url = "http://127.0.0.1:18000"
models = ["Qwen/Qwen2.5-0.5B-Instruct"]
command = ["python3", "$PWD/$T/torch_engine.py", "18000"]
idle_timeout = "3s"
expected_start_time = "10s"
max_cold_start_wait = "120s"
runtime_env = "$W/engine.env"
[metrics]
listen = "127.0.0.1:19180"
textfile = ""
[log]
format = "text"
[gpu]
poll_interval = "250ms"
memory_budget = "4GiB"
EOT
$B/llmlabd --config "$W/llmlab.toml" > "$W/llmlabd.log" 2>&1 & D=$!
sleep 1
echo "-- idle, before any request:"; $B/llmlab gpu
t0=$(date +%s.%N)
curl -s -o /dev/null -w "first request: HTTP %{http_code} in %{time_total}s\n" http://127.0.0.1:18080/v1/completions \
  -H 'Content-Type: application/json' -d '{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":16}'
echo "-- serving:"; $B/llmlab gpu
cat "$W/engine.env"
curl -s http://127.0.0.1:18000/metrics
for _ in $(seq 120); do
  s=$(curl -s http://127.0.0.1:18080/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["engine"]["state"])')
  [ "$s" = stopped ] && break; sleep 0.25
done
echo "-- reported stopped (state $s); NVML right then:"; $B/llmlab gpu
curl -s http://127.0.0.1:19180/metrics | grep -E '^llmlab_(gpu_(up|memory_used|release)|engine_start_refusals)' | grep -v _bucket
kill $D; wait $D
grep -E 'engine start admitted|GPU memory released|engine ready|engine idle|GPU readings' "$W/llmlabd.log"
