#!/bin/bash
# On a GPU machine without network, from the repository's root, with
# pack.sh's folder G beside it (bash G/run.sh, within one 10-minute call):
# ggml's CUDA backend builds on the CPUs (for CUDA_ARCH, default 90: H100,
# H200) while the GPU runs the split-KV calibration
# (docs/calibration/measure.py --split-kv); then, while time is left,
# Ollama serves a random-weight Qwen2.5-0.5B on the card behind llmlabd
# (engine.sh, short phases). Results under $OUT: splitkv.json, llmlabd.log,
# cap.txt, adm.txt (DEADLINE: seconds the whole call may take, default 585), and the built backend (ggml-cuda-sm90.tar.xz.part*) for
# a later call (engine.sh finds it in G/cuda/).
set -u
G=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1
T0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv
(
	mkdir -p /tmp/osrc && tar xzf $G/ollama-src.tar.gz -C /tmp/osrc &&
	cmake -S /tmp/osrc -B /tmp/obuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90} -DCMAKE_DISABLE_FIND_PACKAGE_Vulkan=ON >/tmp/cmake.log 2>&1 &&
	cmake --build /tmp/obuild --target ggml-cuda ggml-base -j 15 >>/tmp/cmake.log 2>&1 && echo BUILD-OK >>/tmp/cmake.log || echo BUILD-FAILED >>/tmp/cmake.log
	echo "build took $(( $(date +%s) - T0 )) s" >>/tmp/cmake.log
) &
BPID=$!
(cd docs/calibration && timeout 150 python3 measure.py $OUT/splitkv.json --split-kv > /tmp/splitkv.log 2>&1; echo "split-KV calibration rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "check" /tmp/splitkv.log | tail -3)
for i in $(seq 1 200); do kill -0 $BPID 2>/dev/null || break; [ $(( $(date +%s) - T0 )) -gt $(( ${DEADLINE:-585} - 185 )) ] && break; sleep 2; done
tail -5 /tmp/cmake.log; tail -3 /tmp/splitkv.log
grep -q BUILD-OK /tmp/cmake.log || exit 0
(cd /tmp/obuild/lib/ollama && tar cJf /tmp/ggml-cuda-sm90.tar.xz . && split -b 15M /tmp/ggml-cuda-sm90.tar.xz $OUT/ggml-cuda-sm90.tar.xz.part) &
LEFT=$(( ${DEADLINE:-585} - ($(date +%s) - T0) ))
echo "$LEFT s left for Ollama on the card"
[ $LEFT -gt 120 ] || exit 0
if [ $LEFT -gt 330 ]; then P="refuse bench"; else P="refuse"; fi
PHASES="$P" FAST=1 timeout $LEFT bash $G/engine.sh
wait
