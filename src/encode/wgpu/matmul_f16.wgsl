// The matrix product with f16 weights (B), f32 activations and f32 accumulation: after common.wgsl, before
// matmul.wgsl. Needs the adapter's `shader-f16`.

enable f16;

@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f16>;
@group(0) @binding(3) var<storage, read> C: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

fn load_b(i: u32) -> f32 { return f32(B[i]); }
