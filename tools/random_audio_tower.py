#!/usr/bin/env python3
"""ImageBind's audio tower at full size with seeded random weights, built with onnx.helper and numpy (no PyTorch).

  python tools/random_audio_tower.py --out scratch/audio-huge [--seed 1]

For benchmarks on machines without the exporter's PyTorch environment (tools/export_imagebind.py --random needs
torch and the ImageBind code). The graph has the structure and size of imagebind_huge's audio tower as the exporter
writes it, layer for layer:

  [B,1,128,204] -> Conv2d(1->768, k16, s10, no bias) -> 228 patches -> LayerNorm -> CLS + positional embedding
  (229 tokens) -> 12 pre-norm blocks (LayerNorm -> multi-head attention, 12 heads, with the learned bias_k/bias_v
  token appended to keys and values -> residual; LayerNorm -> Linear 768->3072 -> exact GELU -> Linear 3072->768 ->
  residual) -> LayerNorm -> CLS token -> Linear 768->1024 (no bias) -> L2 normalise -> x20 (the audio logit scale)

Linear layers are MatMul with a constant [in, out] weight plus Add, as torch.onnx exports them. Weights follow
ImageBind's initialisation (truncated normal, std 0.02, for linear layers, tokens and positions; PyTorch's default for
the stem convolution; LayerNorm 1 and 0, biases 0). Random weights have no outlier channels, so int8 accuracy
measured on them is an upper bound for real weights (docs/BENCHMARKS.md "int8").

Writes OUT/audio.onnx and OUT/manifest.toml (one tower, no self-test pair), which `sensebind bench --model OUT`
and `tools/quantize.py --model-dir` read.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH, BLOCKS, HEADS, EMBED, SCALE = 768, 12, 12, 1024, 20.0
MELS, FRAMES, KERNEL, STRIDE = 128, 204, 16, 10


class Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def trunc(self, *shape: int, std: float = 0.02) -> np.ndarray:
        x = self.rng.standard_normal(shape).astype(np.float32) * std
        return np.clip(x, -2 * std, 2 * std)

    def op(self, op_type: str, inputs: list[str], base: str | None = None, **attrs) -> str:
        out = self.name(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x: str, n_in: int, n_out: int, bias: bool = True) -> str:
        y = self.op("MatMul", [x, self.const("w", self.trunc(n_in, n_out))])
        return self.op("Add", [y, self.const("b", np.zeros(n_out, np.float32))]) if bias else y

    def layer_norm(self, x: str, n: int) -> str:
        scale = self.const("ln_w", np.ones(n, np.float32))
        bias = self.const("ln_b", np.zeros(n, np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-6)

    def shape_const(self, *dims: int) -> str:
        return self.const("shape", np.array(dims, np.int64))

    def attention(self, x: str, batch: str) -> str:
        """x [B, T, W] -> [B, T, W]: torch.nn.MultiheadAttention(add_bias_kv=True), 12 heads."""
        dh = WIDTH // HEADS
        qkv = self.linear(x, WIDTH, 3 * WIDTH)
        q, k, v = (self.name(n) for n in ("q", "k", "v"))
        self.nodes.append(
            helper.make_node("Split", [qkv, self.const("split", np.array([WIDTH] * 3, np.int64))], [q, k, v], axis=2)
        )
        # The learned bias_k / bias_v token appended to keys and values (one per batch row).
        kv_shape = self.op("Concat", [batch, self.shape_const(1, WIDTH)], axis=0)
        k = self.op("Concat", [k, self.op("Expand", [self.const("bias_k", self.trunc(1, 1, WIDTH)), kv_shape])], axis=1)
        v = self.op("Concat", [v, self.op("Expand", [self.const("bias_v", self.trunc(1, 1, WIDTH)), kv_shape])], axis=1)
        heads = self.shape_const(0, -1, HEADS, dh)
        q = self.op("Transpose", [self.op("Reshape", [q, heads])], perm=[0, 2, 1, 3])
        k = self.op("Transpose", [self.op("Reshape", [k, heads])], perm=[0, 2, 3, 1])
        v = self.op("Transpose", [self.op("Reshape", [v, heads])], perm=[0, 2, 1, 3])
        q = self.op("Mul", [q, self.const("scale", np.array(1.0 / math.sqrt(dh), np.float32))])
        a = self.op("Softmax", [self.op("MatMul", [q, k])], axis=-1)
        o = self.op("Transpose", [self.op("MatMul", [a, v])], perm=[0, 2, 1, 3])
        o = self.op("Reshape", [o, self.shape_const(0, -1, WIDTH)])
        return self.linear(o, WIDTH, WIDTH)

    def gelu(self, x: str) -> str:
        s = self.op("Div", [x, self.const("sqrt2", np.array(math.sqrt(2.0), np.float32))])
        s = self.op("Add", [self.op("Erf", [s]), self.const("one", np.array(1.0, np.float32))])
        return self.op("Mul", [self.op("Mul", [x, s]), self.const("half", np.array(0.5, np.float32))])


def build(seed: int) -> onnx.ModelProto:
    b = Builder(seed)
    bound = 1.0 / math.sqrt(KERNEL * KERNEL)  # PyTorch's default Conv2d init (kaiming uniform, a=sqrt(5))
    conv_w = b.rng.uniform(-bound, bound, (WIDTH, 1, KERNEL, KERNEL)).astype(np.float32)
    x = b.op("Conv", ["audio", b.const("stem", conv_w)], kernel_shape=[KERNEL, KERNEL], strides=[STRIDE, STRIDE])
    batch = b.op("Slice", [b.op("Shape", ["audio"]), b.const("s0", np.array([0], np.int64)),
                           b.const("s1", np.array([1], np.int64))])
    x = b.op("Transpose", [b.op("Reshape", [x, b.shape_const(0, WIDTH, -1)])], perm=[0, 2, 1])
    x = b.layer_norm(x, WIDTH)
    cls_shape = b.op("Concat", [batch, b.shape_const(1, WIDTH)], axis=0)
    cls = b.op("Expand", [b.const("cls", b.trunc(1, 1, WIDTH)), cls_shape])
    x = b.op("Concat", [cls, x], axis=1)
    patches = ((MELS - KERNEL) // STRIDE + 1) * ((FRAMES - KERNEL) // STRIDE + 1)
    x = b.op("Add", [x, b.const("pos", b.trunc(1, patches + 1, WIDTH))])
    for _ in range(BLOCKS):
        x = b.op("Add", [x, b.attention(b.layer_norm(x, WIDTH), batch)])
        h = b.linear(b.gelu(b.linear(b.layer_norm(x, WIDTH), WIDTH, 4 * WIDTH)), 4 * WIDTH, WIDTH)
        x = b.op("Add", [x, h])
    x = b.layer_norm(x, WIDTH)
    x = b.op("Gather", [x, b.const("cls_index", np.array(0, np.int64))], axis=1)
    x = b.linear(x, WIDTH, EMBED, bias=False)
    norm = b.op("ReduceL2", [x, b.const("axes", np.array([-1], np.int64))], keepdims=1)
    norm = b.op("Clip", [norm, b.const("eps", np.array(1e-12, np.float32))])
    x = b.op("Div", [x, norm])
    b.nodes.append(helper.make_node("Mul", [x, b.const("logit", np.array(SCALE, np.float32))], ["embedding"]))
    graph = helper.make_graph(
        b.nodes,
        "imagebind_audio_random",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 1, MELS, FRAMES])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBED])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output model directory")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "audio.onnx"
    onnx.save_model(build(args.seed), str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = f"""# Generated by tools/random_audio_tower.py (random weights, for benchmarks).
schema = 1
name = "{args.out.resolve().name}"
source = "random"
seed = {args.seed}
embed_dim = {EMBED}
opset = 18
exporter = "tools/random_audio_tower.py"
imagebind = "imagebind_huge audio tower layout (no ImageBind code)"
torch = "none"
bpe = "bpe_simple_vocab_16e6.txt.gz"
bpe_sha256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

[towers.audio]
file = "audio.onnx"
sha256 = "{sha}"
input_name = "audio"
input_shape = [1, {MELS}, {FRAMES}]
input_dtype = "f32"
output_name = "embedding"
output_dim = {EMBED}
scale = {SCALE}
width = {WIDTH}
blocks = {BLOCKS}
heads = {HEADS}
"""
    (args.out / "manifest.toml").write_text(manifest)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) and {args.out / 'manifest.toml'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
