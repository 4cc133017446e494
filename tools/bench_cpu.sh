#!/usr/bin/env bash
# CPU encoder figures for docs/BENCHMARKS.md: sensebind (tract) beside ONNX Runtime (Python) and PyTorch, same
# towers, same machine, one run. Needs the Python environment of tools/requirements.txt and a release build.
#
#   tools/export_imagebind.py --random --seed 1 --modalities audio,depth --selftest-batch 1 --out scratch/huge
#   tools/bench_cpu.sh scratch/huge audio,depth > scratch/bench.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?model directory}
modalities=${2:-audio,depth}
secs=${SECS:-10}
PY=${PYTHON:-python3}
bin=${SENSEBIND:-target/release/sensebind}

echo "{\"machine\": \"$(lscpu | sed -n 's/^Model name: *//p') x$(nproc)\", \"date\": \"$(date -Is)\"}"
mods=()
IFS=, read -ra ms <<<"$modalities"
for m in "${ms[@]}"; do mods+=(--modality "$m"); done
"$bin" bench --model "$dir" "${mods[@]}" --batch 1,4 --threads 1,2 --secs "$secs" --json
"$PY" tools/bench_peers.py --model-dir "$dir" --modalities "$modalities" --batches 1,4 --threads 1,2 --secs "$secs" \
  --peers "${PEERS:-onnxruntime,pytorch}"
