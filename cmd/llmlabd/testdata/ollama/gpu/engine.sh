#!/bin/bash
# On a GPU machine, from the repository's root, with pack.sh's folder G
# beside it (bash G/engine.sh), after run.sh built the backend in the same
# machine (/tmp/obuild) or with its parts in G/cuda/: Ollama with ggml's
# CUDA backend serving a random-weight
# Qwen2.5-0.5B-shaped model, managed by llmlabd (exec backend, NVML on, a
# 4 GiB budget): start refused while the memory is taken, cold start split,
# the engine's memory, admission at 0.5-3x through llmlabd and direct, the
# release after a stop. PHASES="refuse bench contention" picks parts.
set -u
G=$(cd "$(dirname "$0")" && pwd)
R=$(pwd)
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }
CB=$(dirname "$(find /usr/local/cuda* /opt /usr/lib -name 'libcublas.so.1[0-9]*' 2>/dev/null | head -1)")
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=$CB:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
echo "cuBLAS from $CB"
PHASES=${PHASES:-refuse bench contention}
# FAST=1: shorter phases, for a call that built the backend first.
if [ "${FAST:-0}" = 1 ]; then CAPT=100 CAPD=6s ADMT=110 ADMD=8s ADMW=2s; else CAPT=120 CAPD=10s ADMT=240 ADMD=15s ADMW=4s; fi
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
E=/tmp/eng
rm -rf $E; mkdir -p $E/bin $E/lib/ollama/cuda_v13 /tmp/llmlab-state
gunzip -c $G/ollama.gz > $E/bin/ollama && chmod +x $E/bin/ollama
for f in llmlab llmlabd mkmodel; do gunzip -c $G/bin/$f.gz > $E/bin/$f && chmod +x $E/bin/$f; done
if [ -d /tmp/obuild/lib/ollama ] && ls /tmp/obuild/lib/ollama/libggml-cuda.so >/dev/null 2>&1; then
	L=/tmp/obuild/lib/ollama
else
	mkdir -p /tmp/libs && cat $G/cuda/ggml-cuda-sm90.tar.xz.part* | tar xJf - -C /tmp/libs && L=/tmp/libs
fi
cp -a $L/libggml-base.so* $E/lib/ollama/ && cp -a $L/libggml-cuda.so* $E/lib/ollama/cuda_v13/
ls -la $E/lib/ollama $E/lib/ollama/cuda_v13
ldd $E/lib/ollama/cuda_v13/libggml-cuda.so | grep -E "not found|cublas|cudart" 
echo "$(el) mkmodel"; $E/bin/mkmodel -preset qwen2.5-0.5b -o $E/qwen.gguf && ls -la $E/qwen.gguf; echo "$(el) model written"
NAME=qwen2.5-0.5b
cat > /tmp/llmlab.toml <<TOML
[gateway]
listen = "127.0.0.1:8080"
state_dir = "/tmp/llmlab-state"
[engine]
url = "http://127.0.0.1:11434"
models = ["$NAME"]
command = ["env", "OLLAMA_HOST=127.0.0.1:11434", "OLLAMA_NUM_PARALLEL=8", "LLMLAB_OLLAMA_DIR=$E", "LLMLAB_OLLAMA_MODEL=$E/qwen.gguf", "LLMLAB_OLLAMA_NAME=$NAME", "$R/cmd/llmlabd/testdata/ollama/serve.sh"]
ready_path = "/api/ps"
ready_match = "$NAME"
start_timeout = "120s"
idle_timeout = "10m"
[metrics]
listen = "127.0.0.1:9180"
textfile = ""
[gpu]
enabled = true
memory_budget = "4GiB"
[log]
format = "text"
access_log = false
TOML
$E/bin/llmlab gpu --budget 4GiB 2>&1 | head -20
$E/bin/llmlabd --config /tmp/llmlab.toml > $OUT/llmlabd.log 2>&1 &
DPID=$!
for i in $(seq 1 100); do curl -fsS 127.0.0.1:9180/healthz >/dev/null 2>&1 && break; sleep 0.1; done
ask() { # streamed request; prints status, time to first byte, total
	curl -sS -o /tmp/ans.txt -D /tmp/hdr.txt -w "status %{http_code} ttfb %{time_starttransfer} total %{time_total}\n" \
		127.0.0.1:8080/v1/completions -H 'content-type: application/json' \
		-d "{\"model\":\"$NAME\",\"prompt\":\"$(printf 'tell me about the river %.0s' $(seq 1 40))\",\"max_tokens\":200,\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
}
metric() { curl -fsS 127.0.0.1:9180/metrics | grep -E "$1" | grep -v '^#'; }
if [[ $PHASES == *refuse* ]]; then
	echo "== $(el) start refused while the memory is taken"
	python3 -c "
import torch,time,sys
free,total=torch.cuda.mem_get_info()
x=torch.empty(free-(2<<30),dtype=torch.uint8,device='cuda')
print('hog holds %.1f GiB, leaves %.1f GiB free'%(x.numel()/2**30,(free-x.numel())/2**30),flush=True)
open('/tmp/hog.ready','w').close()
time.sleep(600)" &
	HOG=$!
	for i in $(seq 1 300); do [ -f /tmp/hog.ready ] && break; sleep 0.1; done
	ask; head -c 600 /tmp/ans.txt; echo; grep -i retry-after /tmp/hdr.txt
	metric 'llmlab_engine_start_refusals_total'
	kill $HOG; wait $HOG 2>/dev/null; sleep 1
fi
echo "== $(el) cold start: stopped to first token"
curl -fsS 127.0.0.1:9180/status | python3 -c "import json,sys; s=json.load(sys.stdin); print('engine', s.get('engine',{}).get('state'))" 2>/dev/null
CS=$(date +%s.%N); ask; cat /tmp/hdr.txt | grep -i "x-llmlab"; grep -o '"usage":{[^}]*}' /tmp/ans.txt | tail -1
grep -E "serve.sh|engine (ready|started)|ready after|start took|GPU memory" $OUT/llmlabd.log | head -20
echo "== $(el) the engine's memory"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
metric 'llmlab_gpu_process_memory_bytes|llmlab_gpu_memory_used|llmlab_gpu_contention|process_sm_util'
for i in 1 2 3; do ask; done
if [[ $PHASES == *bench* ]]; then
	echo "== $(el) capacity, direct"
	timeout $CAPT $E/bin/llmlab bench --target http://127.0.0.1:11434 --model $NAME --find-max --rate 2 --max-rate 64 --precision 0.1 --duration $CAPD --warmup 2s --progress off --results "" > $OUT/cap.txt 2>&1
	tail -5 $OUT/cap.txt
	C=$(sed -n 's/^sustainable rate within the SLO.*: \([0-9.]*\) req\/s$/\1/p' $OUT/cap.txt)
	echo "capacity C=$C"
	RATES=$(python3 -c "c=float('${C:-20}'); print(','.join('%.2f'%(c*x) for x in (0.5,1,2,3)))")
	echo "== $(el) admission at $RATES: llmlabd and direct"
	timeout $ADMT $E/bin/llmlab bench --sides llmlabd=http://127.0.0.1:8080,direct=http://127.0.0.1:11434 --sides-metrics llmlabd=http://127.0.0.1:9180/metrics \
		--model $NAME --rates $RATES --duration $ADMD --warmup $ADMW --drain-timeout 20s --progress off --results "" > $OUT/adm.txt 2>&1
	tail -25 $OUT/adm.txt
	metric 'llmlab_gpu_contention|llmlab_inflight_limit'
fi
if [[ $PHASES == *contention* ]]; then
	C=${C:-${CAP:-20}}
	echo "== $(el) contention: a matmul loop beside the engine, load ${C} req/s (1x alone)"
	python3 -c "
import torch,time
a=torch.randn(8192,8192,dtype=torch.float16,device='cuda'); b=torch.randn(8192,8192,dtype=torch.float16,device='cuda')
open('/tmp/burn.ready','w').close()
t=time.time()
while time.time()-t<400:
    for _ in range(20): c=a@b
    torch.cuda.synchronize()" &
	BURN=$!
	for i in $(seq 1 300); do [ -f /tmp/burn.ready ] && break; sleep 0.1; done; sleep 3
	metric 'llmlab_gpu_contention|process_sm_util'
	grep -E "other work on the GPU" $OUT/llmlabd.log | tail -2
	timeout 80 $E/bin/llmlab bench --sides aware=http://127.0.0.1:8080,direct=http://127.0.0.1:11434 --sides-metrics aware=http://127.0.0.1:9180/metrics \
		--model $NAME --rates $C --duration 20s --warmup 4s --drain-timeout 20s --progress off --results "" > $OUT/cont-aware.txt 2>&1
	tail -4 $OUT/cont-aware.txt; metric 'llmlab_gpu_contention|llmlab_inflight_limit'
	sed -i 's/^enabled = true/enabled = true\ncontention = false/' /tmp/llmlab.toml; kill -HUP $DPID; sleep 2
	metric 'llmlab_gpu_contention'
	timeout 45 $E/bin/llmlab bench --target http://127.0.0.1:8080 --model $NAME --rate $C --duration 20s --warmup 4s --drain-timeout 20s --progress off --results "" > $OUT/cont-blind.txt 2>&1
	tail -4 $OUT/cont-blind.txt; metric 'llmlab_inflight_limit'
	sed -i '/^contention = false/d' /tmp/llmlab.toml; kill -HUP $DPID
	kill $BURN; wait $BURN 2>/dev/null
	sleep 3; metric 'llmlab_gpu_contention'; grep -E "GPU to itself" $OUT/llmlabd.log | tail -1
fi
echo "== $(el) stop and release (reload with idle_timeout 2s)"
sed -i 's/idle_timeout = "10m"/idle_timeout = "2s"/' /tmp/llmlab.toml; kill -HUP $DPID
for i in $(seq 1 300); do grep -q "GPU memory released\|memory not released" $OUT/llmlabd.log && break; sleep 0.1; done
grep -E "stopping|stopped|GPU memory" $OUT/llmlabd.log | tail -5
metric 'llmlab_gpu_release_seconds_(sum|count)|llmlab_gpu_memory_used'
nvidia-smi --query-compute-apps=pid,used_memory --format=csv
kill $DPID; wait $DPID
echo "$(el) done"
