#!/usr/bin/env bash
# CPU encoder figures for docs/BENCHMARKS.md: sensebind on every backend (tract, ONNX Runtime) beside ONNX Runtime's
# own Python API and PyTorch, same towers, same machine, one run. Needs the Python environment of
# tools/requirements.txt and a release build. sensebind's ONNX Runtime backend loads the very library the Python
# package uses, so the two differ only in what sits around the engine.
#
#   tools/export_imagebind.py --random --seed 1 --modalities audio,depth,imu --selftest-batch 1 --out scratch/huge
#   PEERS=onnxruntime tools/bench_cpu.sh scratch/huge audio,depth,imu > scratch/bench.jsonl
#   python3 tools/bench_table.py scratch/bench.jsonl
#
# ORT_SPINNING=1 lets ONNX Runtime's threads spin on both sides (ONNX Runtime's default; sensebind's is off).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?model directory}
modalities=${2:-audio,depth}
secs=${SECS:-10}
PY=${PYTHON:-python3}
bin=${SENSEBIND:-target/release/sensebind}
spin=${ORT_SPINNING:-0}
capi=$("$PY" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
lib=$(find "$capi" -name 'libonnxruntime.so.*' -print -quit)

echo "{\"machine\": \"$(lscpu | sed -n 's/^Model name: *//p') x$(nproc)\", \"date\": \"$(date -Is)\", \"onnxruntime\": \"$lib\", \"spinning\": $spin}"
mods=()
IFS=, read -ra ms <<<"$modalities"
for m in "${ms[@]}"; do mods+=(--modality "$m"); done
spin_flag=()
[[ "$spin" == 1 ]] && spin_flag=(--ort-spinning)
"$bin" bench --model "$dir" "${mods[@]}" --batch 1,4 --threads 1,2 --secs "$secs" --json \
  --backend tract,onnxruntime --ort-library "$lib" "${spin_flag[@]}"
"$PY" tools/bench_peers.py --model-dir "$dir" --modalities "$modalities" --batches 1,4 --threads 1,2 --secs "$secs" \
  --ort-spinning "$spin" --peers "${PEERS:-onnxruntime,pytorch}"
