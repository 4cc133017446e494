#!/usr/bin/env python3
"""Export ImageBind's towers to one ONNX file per modality, with a manifest and self-test vectors.

The towers are built by the official ImageBind code (PyPI ``imagebind-unofficial``, byte-identical to
facebookresearch/ImageBind at 53680b0), so the exported graphs are ImageBind's own modules, not a re-implementation.

Modes (exactly one):

  --checkpoint imagebind_huge.pth   the real weights (4.8 GB; bring your own, CC BY-NC-SA 4.0)
  --tiny [--seed N]                 ImageBind's architecture at reduced width/depth, seeded random weights; LayerNorm
                                    affine parameters, biases and the learnable text logit scale are perturbed so
                                    that no layer is an identity (this is what models/imagebind-tiny holds)
  --random [--seed N]               the full imagebind_huge architecture with seeded random weights (for benchmarks)

Each tower's ONNX graph takes ONE clip per batch row and returns ImageBind's embedding for it, exactly as
``ImageBindModel.forward`` computes it: preprocessor (stem, CLS token, positional embedding) -> trunk -> head ->
postprocessor (L2 normalisation, then the modality's logit scale). Inputs, batch first, dynamic batch:

  vision   [B, 3, 2, 224, 224] f32   a 2-frame clip; an image is the same frame twice (ImageBind's PadIm2Video)
  text     [B, 77] i64               CLIP BPE token ids
  audio    [B, 1, 128, 204] f32      one 2 s log-mel clip
  depth    [B, 1, 224, 224] f32      disparity
  thermal  [B, 1, 224, 224] f32
  imu      [B, 6, 2000] f32          acc xyz, gyro xyz

Multi-clip inputs (a video is 15 clips, an audio file 3) are embedded clip by clip and averaged by the caller,
as ImageBind's forward does (mean of the scaled per-clip embeddings, not re-normalised).

Self-test pairs: ``selftest/<modality>.input.npy`` is a tensor in the layout ImageBind's data loaders produce
(vision: images [B,3,224,224]; audio: [B,3,1,128,204]) and ``selftest/<modality>.output.npy`` is what
``ImageBindModel.forward`` returns for it. ``sensebind models verify`` runs them.

Usage:
  python tools/export_imagebind.py --tiny --seed 7 --out models/imagebind-tiny
  python tools/export_imagebind.py --random --modalities audio,depth --out scratch/huge-random
  python tools/export_imagebind.py --random --precision int8 --modalities audio --out scratch/huge-int8
  python tools/export_imagebind.py --checkpoint .checkpoints/imagebind_huge.pth --out models/imagebind-huge

See docs/models.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

MODALITIES = ["vision", "text", "audio", "depth", "thermal", "imu"]

# The imagebind_huge architecture (imagebind_model.py:479-490 plus the constructor defaults).
HUGE = {
    "vision": (1280, 32, 16),
    "text": (1024, 24, 16),
    "audio": (768, 12, 12),
    "depth": (384, 12, 8),
    "thermal": (768, 12, 12),
    "imu": (512, 6, 8),
}
# The bundled tiny models: (width, blocks, heads). The text token table (49408 x width) dominates the size.
TINY = {
    "vision": (64, 2, 4),
    "text": (64, 2, 4),
    "audio": (64, 2, 4),
    "depth": (48, 2, 4),
    "thermal": (64, 2, 4),
    "imu": (64, 2, 4),
}
OUT_EMBED_DIM = 1024

# Input layout of each tower's ONNX graph (per clip, without the batch dimension).
TOWER_INPUT = {
    "vision": ([3, 2, 224, 224], "f32"),
    "text": ([77], "i64"),
    "audio": ([1, 128, 204], "f32"),
    "depth": ([1, 224, 224], "f32"),
    "thermal": ([1, 224, 224], "f32"),
    "imu": ([6, 2000], "f32"),
}

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Preprocessing constants written into the manifest. vision/text/audio are ImageBind's (imagebind/data.py);
# depth/thermal/imu have no loader upstream: these are sensebind's documented defaults (docs/preprocessing.md).
PREPROCESS = {
    "vision": {
        "loader": "imagebind.data.load_and_transform_vision_data / load_and_transform_video_data",
        "image_size": 224,
        "image_resize": "pillow_bicubic_antialias",
        "image_crop": "center_round_half_even",
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "video_clip_secs": 2.0,
        "video_clips": 5,
        "video_frames_per_clip": 2,
        "video_resize": "bilinear_no_antialias",
        "video_spatial_crops": 3,
    },
    "text": {
        "loader": "imagebind.data.load_and_transform_text",
        "context_length": 77,
        "sot_token": 49406,
        "eot_token": 49407,
        "bpe": "bpe_simple_vocab_16e6.txt.gz",
    },
    "audio": {
        "loader": "imagebind.data.load_and_transform_audio_data",
        "sample_rate_hz": 16000,
        "clip_secs": 2.0,
        "clips": 3,
        "num_mel_bins": 128,
        "target_frames": 204,
        "frame_length_ms": 25.0,
        "frame_shift_ms": 10.0,
        "mean": -4.268,
        "std": 9.138,
    },
    "depth": {
        "loader": "sensebind default (no upstream loader)",
        "image_size": 224,
        "min_depth_m": 0.01,
        "max_depth_m": 50.0,
        "baseline_m": 0.075,
        "focal_px": 518.8579,
        "png_unit_m": 0.001,
        "mean": 0.0,
        "std": 1.0,
    },
    "thermal": {
        "loader": "sensebind default (no upstream loader)",
        "image_size": 224,
        "scaling": "auto",
        "fixed_min": 0.0,
        "fixed_max": 255.0,
        "low_percentile": 1.0,
        "high_percentile": 99.0,
        "mean": 0.0,
        "std": 1.0,
    },
    "imu": {
        "loader": "sensebind default (no upstream loader)",
        "samples": 2000,
        "window_secs": 5.0,
        "output_rate_hz": 400.0,
        "channels": ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"],
        "acc_unit": "m/s^2",
        "gyro_unit": "rad/s",
    },
}

SELFTEST_TEXTS = [
    "a dog barking",
    "the sound of glass breaking",
    "A person falling down the stairs.",
]


def patch_torchvision() -> None:
    """imagebind.data imports torchvision.transforms.functional_tensor, renamed to _functional_tensor."""
    import torchvision.transforms

    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
    except ImportError:
        import torchvision.transforms._functional_tensor as ft

        sys.modules["torchvision.transforms.functional_tensor"] = ft


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_model(mode: str, arch: dict, checkpoint: str | None):
    from imagebind.models.imagebind_model import ImageBindModel

    model = ImageBindModel(
        video_frames=2,
        kernel_size=(2, 14, 14),
        audio_kernel_size=16,
        audio_stride=10,
        out_embed_dim=OUT_EMBED_DIM,
        vision_embed_dim=arch["vision"][0],
        vision_num_blocks=arch["vision"][1],
        vision_num_heads=arch["vision"][2],
        text_embed_dim=arch["text"][0],
        text_num_blocks=arch["text"][1],
        text_num_heads=arch["text"][2],
        audio_embed_dim=arch["audio"][0],
        audio_num_blocks=arch["audio"][1],
        audio_num_heads=arch["audio"][2],
        depth_embed_dim=arch["depth"][0],
        depth_num_blocks=arch["depth"][1],
        depth_num_heads=arch["depth"][2],
        thermal_embed_dim=arch["thermal"][0],
        thermal_num_blocks=arch["thermal"][1],
        thermal_num_heads=arch["thermal"][2],
        imu_embed_dim=arch["imu"][0],
        imu_num_blocks=arch["imu"][1],
        imu_num_heads=arch["imu"][2],
        audio_drop_path=0.1,
        imu_drop_path=0.7,
    )
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SystemExit(
                f"{checkpoint}: does not match the imagebind_huge architecture: "
                f"missing {missing[:5]}..., unexpected {unexpected[:5]}..."
            )
    model.eval()
    return model


@torch.no_grad()
def perturb(model: nn.Module, gen: torch.Generator) -> None:
    """Make every affine parameter non-trivial: random init leaves LayerNorms at (1, 0) and biases at 0."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.add_(0.2 * torch.randn(module.weight.shape, generator=gen))
            module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=gen))
        elif isinstance(module, nn.MultiheadAttention):
            module.in_proj_bias.add_(0.05 * torch.randn(module.in_proj_bias.shape, generator=gen))
            module.out_proj.bias.add_(0.05 * torch.randn(module.out_proj.bias.shape, generator=gen))
        elif isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.add_(0.05 * torch.randn(module.bias.shape, generator=gen))
    # The text logit scale is ImageBind's only learnable scale (init 1/0.07); give it a value of its own.
    text_scale = model.modality_postprocessors["text"][1].log_logit_scale
    text_scale.copy_(torch.tensor(math.log(1 / 0.07)) + 0.3 * torch.randn([], generator=gen))
    # CLS tokens start at zero in some inits; positional embeddings are already random.
    for name, p in model.named_parameters():
        if name.endswith("cls_token"):
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


class Tower(nn.Module):
    """One modality of ImageBindModel.forward, for a batch of single clips."""

    def __init__(self, model: nn.Module, modality: str):
        super().__init__()
        self.pre = model.modality_preprocessors[modality]
        self.trunk = model.modality_trunks[modality]
        self.head = model.modality_heads[modality]
        self.post = model.modality_postprocessors[modality]
        self.modality = modality

    def forward(self, x):
        value = self.pre(**{self.modality: x})
        tokens = self.trunk(**value["trunk"])
        emb = self.head(tokens, **value["head"])
        return self.post(emb)


def scale_of(model: nn.Module, modality: str) -> float:
    post = model.modality_postprocessors[modality]
    if modality == "vision":
        return 1.0
    lls = post[1]
    return float(torch.clip(lls.log_logit_scale.detach().exp(), max=lls.max_logit_scale))


def selftest_input(modality: str, batch: int, gen: torch.Generator, tokenizer) -> torch.Tensor:
    """A tensor in the layout of ImageBind's loaders (what `sensebind embed` takes as .npy)."""
    if modality == "vision":
        # Images after Normalize: roughly N(0,1) per channel, clipped to the reachable range.
        return torch.randn([batch, 3, 224, 224], generator=gen).clamp(-1.79, 2.14)
    if modality == "text":
        texts = (SELFTEST_TEXTS * batch)[:batch]
        return torch.stack([tokenizer(t) for t in texts]).to(torch.int64)
    if modality == "audio":
        # 3 clips of normalised log-mel; the last 6 frames are the zero padding ImageBind adds to 198 frames.
        x = torch.randn([batch, 3, 1, 128, 204], generator=gen) * 0.5
        x[..., 198:] = (0.0 + 4.268) / 9.138
        return x
    if modality in ("depth", "thermal"):
        return torch.rand([batch, 1, 224, 224], generator=gen) * 2.0
    if modality == "imu":
        t = torch.linspace(0, 5, 2000)
        x = torch.randn([batch, 6, 2000], generator=gen) * 0.3
        x[:, 2] += 9.81  # gravity on z
        x[:, :3] += torch.sin(2 * math.pi * 1.8 * t)  # a walking cadence
        return x
    raise ValueError(modality)


def tower_input_from_loader(modality: str, x: torch.Tensor) -> torch.Tensor:
    """First clip of each batch row, in the tower's per-clip layout (for tracing)."""
    if modality == "vision":
        return x.unsqueeze(2).repeat(1, 1, 2, 1, 1)
    if modality == "audio":
        return x[:, 0]
    return x


def export_tower(model, modality: str, example: torch.Tensor, path: Path, opset: int) -> None:
    tower = Tower(model, modality).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            tower,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[modality],
            output_names=["sensebind_output"],
            dynamic_shapes={"x": {0: batch}},
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    rename_output(proto, "sensebind_output", "embedding")
    strip_stack_traces(proto)
    # protobuf cannot serialise (or even size) a message over 2 GiB, so measure the weights instead: the real
    # vision tower (632 M parameters, 2.5 GB) must go to external data.
    size = sum(len(t.raw_data) + 4 * len(t.float_data) for t in proto.graph.initializer)
    if size > 1_900_000_000:
        import onnx

        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        import onnx

        onnx.save_model(proto, str(path))


def strip_stack_traces(proto) -> None:
    """Drops the exporter's per-node Python stack traces: they hold local paths and line numbers of this script,
    which would change the file (and its checksum) on every edit or machine without changing the model."""
    nodes = list(proto.graph.node)
    for fn in proto.functions:
        nodes.extend(fn.node)
    for node in nodes:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def rename_output(proto, old: str, new: str) -> None:
    """Names the graph output `new`; torch may already use `new` inside (text: the token embedding lookup)."""
    graph = proto.graph
    internal = new + "_internal"

    def swap(names, a, b):
        for i, name in enumerate(names):
            if name == a:
                names[i] = b

    for node in graph.node:
        swap(node.input, new, internal)
        swap(node.output, new, internal)
    for vi in graph.value_info:
        if vi.name == new:
            vi.name = internal
    for node in graph.node:
        swap(node.input, old, new)
        swap(node.output, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new


def check_with_onnxruntime(path: Path, modality: str, x: np.ndarray, expected: np.ndarray) -> float:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.max(np.abs(got - expected)))


def quantize_in_place(path: Path, x: np.ndarray, expected: np.ndarray) -> float:
    """Replaces the f32 tower at `path` by its int8 version (tools/quantize.py) and returns the smallest per-row
    cosine of its output on `x` to PyTorch's `expected`."""
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quantize import quantize

    tmp = path.with_suffix(".int8.onnx")
    quantize(path, tmp)
    data = path.parent / (path.name + ".data")
    if data.exists():
        data.unlink()
    tmp.replace(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    cos = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
    return float(cos.min())


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        return r if ("." in r or "e" in r or "inf" in r or "nan" in r) else r + ".0"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--checkpoint", help="path to imagebind_huge.pth (real weights)")
    mode.add_argument("--tiny", action="store_true", help="reduced width/depth, seeded random weights")
    mode.add_argument("--random", action="store_true", help="full-size architecture, seeded random weights")
    ap.add_argument("--out", required=True, help="output model directory")
    ap.add_argument("--seed", type=int, default=0, help="seed for --tiny/--random weights and self-test inputs")
    ap.add_argument("--modalities", default=",".join(MODALITIES), help="comma-separated subset")
    ap.add_argument(
        "--arch",
        default="",
        help="override tower sizes, e.g. 'depth=96x3x4,imu=32x1x2' (width x blocks x heads)",
    )
    ap.add_argument("--name", help="model name in the manifest (default: the output folder's name)")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--selftest-batch", type=int, default=2)
    ap.add_argument("--no-selftest", action="store_true", help="skip self-test vectors (large real models)")
    ap.add_argument("--bare", action="store_true", help="write only the .onnx files (no manifest, no vocabulary)")
    ap.add_argument(
        "--precision",
        choices=["f32", "int8"],
        default="f32",
        help="int8: quantise every tower with tools/quantize.py (MatMul/Gemm weights, dynamic) and mark it in the "
        "manifest; the self-test pair stays PyTorch's f32 output (models verify compares int8 towers by cosine)",
    )
    args = ap.parse_args()

    patch_torchvision()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    for m in modalities:
        if m not in MODALITIES:
            ap.error(f"unknown modality {m!r}; expected some of {MODALITIES}")

    arch = dict(TINY if args.tiny else HUGE)
    for item in filter(None, args.arch.split(",")):
        key, _, dims = item.partition("=")
        w, b, h = (int(v) for v in dims.split("x"))
        if key not in MODALITIES or w % h:
            ap.error(f"bad --arch entry {item!r}")
        arch[key] = (w, b, h)

    source = "checkpoint" if args.checkpoint else ("tiny" if args.tiny else "random")
    model = build_model(source, arch, args.checkpoint)
    if args.tiny:
        perturb(model, gen)

    from imagebind.models.multimodal_preprocessors import SimpleTokenizer
    import imagebind

    bpe_src = Path(imagebind.__file__).parent / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    tokenizer = SimpleTokenizer(bpe_path=str(bpe_src))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.bare:
        (out / "selftest").mkdir(exist_ok=True)
        shutil.copyfile(bpe_src, out / "bpe_simple_vocab_16e6.txt.gz")

    towers = {}
    for m in modalities:
        x_loader = selftest_input(m, args.selftest_batch, gen, tokenizer)
        with torch.no_grad():
            y_ref = model({m: x_loader})[m]
            x_tower = tower_input_from_loader(m, x_loader)
            y_tower = Tower(model, m)(x_tower)
        onnx_path = out / f"{m}.onnx"
        # Trace with at least 2 rows: a batch of 1 would let the exporter specialise the batch dimension to 1.
        x_trace = x_tower if x_tower.shape[0] >= 2 else torch.cat([x_tower, x_tower])
        export_tower(model, m, x_trace, onnx_path, args.opset)
        err = check_with_onnxruntime(onnx_path, m, x_tower.numpy(), y_tower.numpy())
        print(f"{m}: exported {onnx_path} ({onnx_path.stat().st_size} bytes); onnxruntime max-abs vs torch {err:.2e}")
        if err > 1e-4:
            raise SystemExit(f"{m}: the exported graph disagrees with PyTorch (max-abs {err:.2e})")
        if args.precision == "int8":
            cos = quantize_in_place(onnx_path, x_tower.numpy(), y_tower.numpy())
            print(f"{m}: quantised to int8 ({onnx_path.stat().st_size} bytes); cosine to f32 {cos:.5f}")
            if cos < 0.99:
                raise SystemExit(f"{m}: the int8 tower is too far from f32 (cosine {cos:.4f} < 0.99)")
        entry = {
            "file": onnx_path.name,
            "sha256": sha256_file(onnx_path),
            "input_name": m,
            "input_shape": TOWER_INPUT[m][0],
            "input_dtype": TOWER_INPUT[m][1],
            "output_name": "embedding",
            "output_dim": OUT_EMBED_DIM,
            "scale": scale_of(model, m),
            "width": arch[m][0],
            "blocks": arch[m][1],
            "heads": arch[m][2],
        }
        if args.precision == "int8":
            entry["precision"] = "int8"
        data_file = out / (onnx_path.name + ".data")
        if data_file.exists():
            entry["external_data"] = data_file.name
            entry["external_data_sha256"] = sha256_file(data_file)
        if not args.bare and not args.no_selftest:
            np.save(out / "selftest" / f"{m}.input.npy", x_loader.numpy())
            np.save(out / "selftest" / f"{m}.output.npy", y_ref.numpy().astype(np.float32))
            entry["selftest_input"] = f"selftest/{m}.input.npy"
            entry["selftest_output"] = f"selftest/{m}.output.npy"
            if args.precision == "f32":
                entry["selftest_tolerance"] = 1e-5
        towers[m] = entry

    if args.bare:
        return 0

    import imagebind as ib_pkg

    try:
        from importlib.metadata import version

        ib_version = version("imagebind-unofficial")
    except Exception:  # noqa: BLE001
        ib_version = getattr(ib_pkg, "__version__", "unknown")

    lines = [
        "# Generated by tools/export_imagebind.py; do not edit by hand (checksums cover the files).",
        "schema = 1",
        f"name = {toml_value(args.name or out.resolve().name)}",
        f"source = {toml_value(source)}",
        f"seed = {args.seed}" if source != "checkpoint" else "",
        f"embed_dim = {OUT_EMBED_DIM}",
        f"opset = {args.opset}",
        f"exporter = {toml_value('tools/export_imagebind.py')}",
        f"imagebind = {toml_value('imagebind-unofficial ' + ib_version)}",
        f"torch = {toml_value(torch.__version__)}",
        f"bpe = {toml_value('bpe_simple_vocab_16e6.txt.gz')}",
        f"bpe_sha256 = {toml_value(sha256_file(out / 'bpe_simple_vocab_16e6.txt.gz'))}",
        "",
    ]
    for m in modalities:
        lines.append(f"[towers.{m}]")
        for k, v in towers[m].items():
            lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
        lines.append(f"[towers.{m}.preprocess]")
        for k, v in PREPROCESS[m].items():
            lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
    (out / "manifest.toml").write_text("\n".join(line for line in lines if line is not None) + "\n")
    print(f"wrote {out / 'manifest.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
