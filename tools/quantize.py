#!/usr/bin/env python3
"""Quantise an exported tower to int8 for CPU-only devices: ONNX Runtime's dynamic quantisation.

  python tools/quantize.py IN.onnx OUT.onnx [--per-channel] [--no-preprocess]
  python tools/quantize.py --model-dir IN_DIR OUT_DIR [--modalities audio,depth,...]

The second form copies a model directory and quantises its towers (all, or `--modalities`), rewriting the manifest:
each quantised tower gets its new `sha256` and `precision = "int8"`; its self-test pair stays PyTorch's f32 output,
which `sensebind models verify` compares by cosine for int8 towers (at least 0.99 per row).

What changes: the weights of every MatMul/Gemm whose second input is a constant (the linear layers: qkv, attention
projection, MLP, the stem's patch projection when it is a MatMul, the head) become int8 with an f32 scale; at run
time each such product quantises its activation input dynamically (DynamicQuantizeLinear, uint8) and runs
MatMulInteger, then rescales to f32. What stays f32: everything else — LayerNormalization, Softmax, GELU, the
attention products of activations with activations (Q·Kᵀ, A·V), convolutions, the final normalisation and scale.

The quantised graph uses standard ONNX operators only (DynamicQuantizeLinear, MatMulInteger, Cast, Mul), so both
ONNX Runtime and tract load it; ONNX Runtime has fast int8 kernels (VNNI/AVX-512 on x86, dot-product on Arm), tract
much less so (docs/BENCHMARKS.md "int8").

`tools/export_imagebind.py --precision int8` calls `quantize()` for every tower it writes and records
`precision = "int8"` in the manifest. Needs `onnxruntime`, `onnx`, `numpy` (tools/requirements.txt).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import onnx


def quantize(src: Path, dst: Path, per_channel: bool = False, preprocess: bool = True) -> None:
    """Writes `src`'s int8 version to `dst` (MatMul/Gemm weights only; see the module docs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model_in = src
    with tempfile.TemporaryDirectory() as tmp:
        if preprocess:
            # Shape inference and graph clean-up first, as ONNX Runtime recommends before quantising: it lets the
            # quantiser see every constant weight (e.g. a transposed initialiser folded into the MatMul).
            from onnxruntime.quantization.shape_inference import quant_pre_process

            model_in = Path(tmp) / "pre.onnx"
            # A tower above protobuf's 2 GB limit (vision) keeps its weights in a `.data` file; the cleaned-up copy
            # must then be written the same way, beside it, or the quantiser cannot load it.
            external = has_external_data(src)
            quant_pre_process(
                str(src),
                str(model_in),
                skip_symbolic_shape=True,
                save_as_external_data=external,
                all_tensors_to_one_file=True,
                external_data_location="pre.onnx.data",
            )
        quantize_dynamic(
            str(model_in),
            str(dst),
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    onnx.checker.check_model(str(dst))


def has_external_data(path: Path) -> bool:
    """Whether the graph keeps any initialiser in an external data file."""
    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def int8_manifest(text: str, towers: dict[str, str]) -> str:
    """The manifest `text` with each tower of `towers` (modality -> new sha256) marked int8: `sha256` replaced,
    `precision = "int8"` added, the f32 `selftest_tolerance` and external data entries dropped (the int8 graph is
    one file). Line-based: the manifest is the exporter's, one `key = value` per line."""
    out, section = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]")
        tower = section[len("towers."):] if section and section.startswith("towers.") else None
        key = stripped.split("=", 1)[0].strip() if "=" in stripped and not stripped.startswith("#") else None
        if tower in towers:
            if key in ("selftest_tolerance", "external_data", "external_data_sha256", "precision"):
                continue
            if key == "sha256":
                out.append(f'sha256 = "{towers[tower]}"')
                out.append('precision = "int8"')
                continue
        out.append(line)
    return "\n".join(out) + "\n"


def quantize_dir(src: Path, dst: Path, modalities: list[str] | None = None, per_channel: bool = False) -> list[str]:
    """Copies the model directory `src` to `dst` (they may be the same) with its towers (or `modalities`) int8."""
    import tomllib

    manifest = tomllib.loads((src / "manifest.toml").read_text())
    chosen = modalities or list(manifest["towers"])
    for m in chosen:
        if m not in manifest["towers"]:
            raise SystemExit(f"quantize.py: {src}/manifest.toml has no {m} tower")
    if src.resolve() != dst.resolve():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    done = {}
    for m in chosen:
        tower = manifest["towers"][m]
        if tower.get("precision", "f32") != "f32":
            raise SystemExit(f"quantize.py: the {m} tower is already {tower['precision']}")
        onnx_in = src / tower["file"]
        with tempfile.TemporaryDirectory(dir=dst) as tmp:
            out = Path(tmp) / "int8.onnx"
            quantize(onnx_in, out, per_channel=per_channel)
            data = tower.get("external_data")
            if data and (dst / data).exists():
                (dst / data).unlink()
            shutil.move(str(out), dst / tower["file"])
        done[m] = sha256_file(dst / tower["file"])
    manifest_path = dst / "manifest.toml"
    manifest_path.write_text(int8_manifest(manifest_path.read_text(), done))
    return chosen


def summary(path: Path) -> str:
    m = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    keys = ["MatMul", "MatMulInteger", "Gemm", "DynamicQuantizeLinear", "LayerNormalization", "Softmax"]
    return ", ".join(f"{k} {ops[k]}" for k in keys if k in ops)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path, help="an f32 tower (.onnx), or with --model-dir a model directory")
    ap.add_argument("output", type=Path, help="where to write the int8 tower (.onnx) or model directory")
    ap.add_argument("--model-dir", action="store_true", help="INPUT and OUTPUT are model directories")
    ap.add_argument("--modalities", default="", help="--model-dir: comma-separated towers to quantise (default all)")
    ap.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    ap.add_argument("--no-preprocess", action="store_true", help="skip ONNX Runtime's pre-quantisation clean-up")
    args = ap.parse_args()
    if args.model_dir:
        chosen = [m.strip() for m in args.modalities.split(",") if m.strip()] or None
        done = quantize_dir(args.input, args.output, chosen, per_channel=args.per_channel)
        print(f"{args.output}: {', '.join(done)} int8")
        return 0
    if not args.input.is_file():
        print(f"quantize.py: {args.input}: no such file", file=sys.stderr)
        return 2
    quantize(args.input, args.output, per_channel=args.per_channel, preprocess=not args.no_preprocess)
    before, after = os.path.getsize(args.input), os.path.getsize(args.output)
    print(f"{args.input} ({before / 1e6:.1f} MB; {summary(args.input)})")
    print(f"-> {args.output} ({after / 1e6:.1f} MB; {summary(args.output)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
