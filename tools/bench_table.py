#!/usr/bin/env python3
"""Summarise JSON lines from tools/bench_cpu.sh (several rounds) into a markdown table.

For each (model, tower, backend, threads, batch) it reports the median over rounds of the per-round p50 latency,
and the ratio of ONNX Runtime's latency to each backend's (>1 means faster than ONNX Runtime).

Usage: python tools/bench_table.py scratch/bench.jsonl
"""

import json
import statistics
import sys
from collections import defaultdict


def main() -> int:
    rows = defaultdict(list)
    meta = []
    for line in open(sys.argv[1]):
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if "backend" not in d:
            meta.append(d)
            continue
        model = d["model"].split("@")[0]
        rows[(model, d["modality"], d["backend"], d["threads"], d["batch"])].append(d["p50_ms"])
    for m in meta:
        if "sgemm_gflops" in m or "gflop_per_clip" in m or "machine" in m:
            print("<!--", json.dumps(m), "-->")
    print("| model | tower | backend | threads | batch | rounds | p50 ms (median of rounds) | clips/s | vs ORT |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[3], k[4], k[2])):
        model, tower, backend, threads, batch = key
        med = statistics.median(rows[key])
        ort = rows.get((model, tower, "onnxruntime-py", threads, batch))
        ratio = statistics.median(ort) / med if ort else float("nan")
        print(
            f"| {model} | {tower} | {backend} | {threads} | {batch} | {len(rows[key])} | {med:.1f} | "
            f"{batch * 1000 / med:.2f} | {ratio:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
