#!/usr/bin/env python3
"""Peer figures for docs/BENCHMARKS.md: the same ImageBind towers in ONNX Runtime (Python) and PyTorch (CPU).

Runs each tower of an exported model directory (see export_imagebind.py) at the given batch sizes and thread
counts and prints JSON lines with the same fields as `sensebind bench --json` (p50/p95 ms per call, clips/s), so
the two can be tabulated side by side from one run (tools/bench_cpu.sh does that).

PyTorch runs ImageBind's own modules (rebuilt from the manifest's architecture; the weights are random, which
does not change the cost). Also prints the machine's measured sgemm peak (numpy/OpenBLAS) and each tower's
analytic FLOPs per clip, for the roofline column.

On a GPU (`--device cuda`, used by tools/gpu-check), the peers are `pytorch` (f32) and `pytorch-f16` (the tower
and its float input in half precision), both eager on CUDA and synchronised around each call; the peak printed
is cuBLAS's measured f32 and f16 GEMM rate on that card.

Usage: python tools/bench_peers.py --model-dir scratch/huge --modalities audio,depth --batches 1,4 --threads 1,2
       python tools/bench_peers.py --model-dir scratch/huge --device cuda --peers pytorch,pytorch-f16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def tokens_per_clip(modality: str) -> tuple[int, bool]:
    """(tokens including CLS, add_bias_kv) per modality at ImageBind's input sizes."""
    return {
        "vision": (257, False),
        "text": (77, False),
        "audio": (229, True),
        "depth": (197, True),
        "thermal": (197, True),
        "imu": (251, True),
    }[modality]


def flops_per_clip(modality: str, width: int, blocks: int, out_dim: int = 1024) -> float:
    """Analytic FLOPs (1 MAC = 2 FLOP): transformer blocks + stem + head; norms/softmax/GELU ignored (<1%)."""
    n, bias_kv = tokens_per_clip(modality)
    nk = n + 1 if bias_kv else n
    per_block = 24 * n * width**2 + 4 * n * nk * width
    stem = {
        "vision": 2 * 256 * (3 * 2 * 14 * 14) * width,
        "text": 0,
        "audio": 2 * 228 * (16 * 16) * width,
        "depth": 2 * 196 * (16 * 16) * width,
        "thermal": 2 * 196 * (16 * 16) * width,
        "imu": 2 * 250 * 48 * width,
    }[modality]
    head = 2 * width * out_dim
    return blocks * per_block + stem + head


def sgemm_peak(threads: int) -> float:
    """Measured GFLOP/s of a 1024^3 float32 matmul with numpy's BLAS at `threads` threads."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    a = np.random.rand(1024, 1024).astype(np.float32)
    b = np.random.rand(1024, 1024).astype(np.float32)

    def run():
        a @ b
        best = float("inf")
        for _ in range(10):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        return 2 * 1024**3 / best / 1e9

    if threadpool_limits:
        with threadpool_limits(limits=threads):
            return run()
    return run()


def gemm_peak_cuda(dtype) -> float:
    """Measured GFLOP/s of a 4096^3 matmul with cuBLAS in `dtype`: the card's practical peak."""
    import torch

    a = torch.rand(4096, 4096, device="cuda", dtype=dtype)
    b = torch.rand(4096, 4096, device="cuda", dtype=dtype)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * 4096**3 / best / 1e9


def measure(fn, secs: float, min_iters: int, sync=None) -> list[float]:
    fn()  # warm-up
    if sync:
        sync()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_iters or (time.perf_counter() - start < secs and len(samples) < 200):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - t) * 1e3)
    return sorted(samples)


def pct(sorted_ms: list[float], q: float) -> float:
    import math

    rank = max(1, min(len(sorted_ms), math.ceil(q * len(sorted_ms))))
    return sorted_ms[rank - 1]


def row(peer, model, modality, threads, batch, samples):
    p50 = pct(samples, 0.5)
    return {
        "modality": modality,
        "model": model,
        "backend": peer,
        "threads": threads,
        "batch": batch,
        "iters": len(samples),
        "p50_ms": round(p50, 3),
        "p95_ms": round(pct(samples, 0.95), 3),
        "clips_per_s": round(batch * 1e3 / p50, 3),
    }


def example(modality: str, shape: list[int], dtype: str, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0x5EED)
    if dtype == "i64":
        x = np.zeros([batch, *shape], dtype=np.int64)
        x[:, 0] = 49406
        x[:, 1:13] = rng.integers(256, 40256, size=(batch, 12))
        x[:, 13] = 49407
        return x
    return (rng.random([batch, *shape], dtype=np.float32) * 2 - 1).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--modalities", default="audio,depth")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--secs", type=float, default=5.0)
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--ort-spinning", type=int, default=0, help="1: let ONNX Runtime threads spin (its default)")
    ap.add_argument("--peers", default="onnxruntime,pytorch", help="onnxruntime, pytorch, pytorch-f16 (cuda only)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where PyTorch runs")
    args = ap.parse_args()

    model_dir = Path(args.model_dir)
    manifest = tomllib.loads((model_dir / "manifest.toml").read_text())
    model_name = manifest["name"]
    batches = [int(b) for b in args.batches.split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    peers = args.peers.split(",")

    if args.device == "cuda":
        import torch

        print(
            json.dumps(
                {
                    "gpu": torch.cuda.get_device_name(0),
                    "cublas_f32_gflops": round(gemm_peak_cuda(torch.float32), 1),
                    "cublas_f16_gflops": round(gemm_peak_cuda(torch.float16), 1),
                }
            ),
            flush=True,
        )
    else:
        for t in threads_list:
            print(json.dumps({"sgemm_gflops": round(sgemm_peak(t), 1), "threads": t}), flush=True)

    for modality in args.modalities.split(","):
        tower = manifest["towers"][modality]
        flops = flops_per_clip(modality, tower["width"], tower["blocks"])
        print(json.dumps({"modality": modality, "gflop_per_clip": round(flops / 1e9, 3)}), flush=True)
        if "onnxruntime" in peers:
            import onnxruntime as ort

            for t in threads_list:
                so = ort.SessionOptions()
                so.intra_op_num_threads = t
                so.inter_op_num_threads = 1
                so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # Same as sensebind's [models.onnxruntime] intra_op_spinning (off by default; ORT's default is on).
                so.add_session_config_entry("session.intra_op.allow_spinning", "1" if args.ort_spinning else "0")
                sess = ort.InferenceSession(str(model_dir / tower["file"]), so, providers=["CPUExecutionProvider"])
                name = sess.get_inputs()[0].name
                for b in batches:
                    x = example(modality, tower["input_shape"], tower["input_dtype"], b)
                    s = measure(lambda: sess.run(None, {name: x}), args.secs, args.min_iters)
                    print(json.dumps(row("onnxruntime-py", model_name, modality, t, b, s)), flush=True)
        torch_peers = [p for p in peers if p in ("pytorch", "pytorch-f16")]
        if torch_peers:
            import torch

            import export_imagebind as ex

            ex.patch_torchvision()
            arch = dict(ex.HUGE)
            for m, tw in manifest["towers"].items():
                arch[m] = (tw["width"], tw["blocks"], tw["heads"])
            model = ex.build_model("random", arch, None)
            tower_mod = ex.Tower(model, modality).eval().to(args.device)
            sync = torch.cuda.synchronize if args.device == "cuda" else None
            for peer in torch_peers:
                half = peer == "pytorch-f16"
                if half and args.device != "cuda":
                    continue
                m = tower_mod.half() if half else tower_mod.float()
                for t in threads_list:
                    torch.set_num_threads(t)
                    for b in batches:
                        x = torch.from_numpy(example(modality, tower["input_shape"], tower["input_dtype"], b))
                        x = x.to(args.device)
                        if half and x.is_floating_point():
                            x = x.half()
                        with torch.inference_mode():
                            s = measure(lambda: m(x), args.secs, args.min_iters, sync)
                        r = row(peer, model_name, modality, t, b, s)
                        r["device"] = args.device
                        r["gflop_per_s"] = round(flops * b / (r["p50_ms"] / 1e3) / 1e9, 1)
                        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
