// Compute kernels of the wgpu backend (src/encode/wgpu), after common.wgsl; matmul.wgsl follows. One bind group
// layout for every entry point: 0: parameters (a 256-byte slice of one uniform buffer), 1–3: inputs, 4: the output.
// Tensors are flat arrays of 32-bit words: f32, or i32 stored bit for bit (indices, token ids).
// Parameter words are documented per kernel; `plan.rs` writes them.

@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read> C: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

fn load_b(i: u32) -> f32 { return B[i]; }

// Strided tensors: the shape is words 4..9 (rank in word 1), strides at `sbase`..sbase+5.
// The offset of the i-th element (row-major over the shape) with those strides.
fn at(i: u32, sbase: u32, off: u32) -> u32 {
    var rem = i;
    var o = off;
    let r = p(1u);
    for (var d = 0u; d < r; d++) {
        let ax = r - 1u - d;
        let size = p(4u + ax);
        o += (rem % size) * p(sbase + ax);
        rem = rem / size;
    }
    return o;
}

// copy: words 0 n, 1 rank, 4..9 shape, 10..15 input strides, 22 input offset, 24..29 output strides,
// 30 output offset. Transposes, slices, broadcasts and concatenation.
@compute @workgroup_size(256)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = gid(wg, nwg, li);
    if (i >= p(0u)) { return; }
    O[at(i, 24u, p(30u))] = A[at(i, 10u, p(22u))];
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, under f32's resolution near 1).
fn erf_(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
        * exp(-a * a);
    return select(y, -y, x < 0.0);
}

fn unary(x: f32, op: u32) -> f32 {
    switch op {
        case 0u: { return erf_(x); }
        case 1u: { return 1.0 / x; }
        case 2u: { return sqrt(x); }
        case 3u: { return inverseSqrt(x); }
        case 4u: { return x * x; }
        case 5u: { return exp(x); }
        case 6u: { return abs(x); }
        case 7u: { return -x; }
        case 8u: { return tanh(x); }
        case 9u: { return 1.0 / (1.0 + exp(-x)); }
        case 10u: { return log(x); }
        case 11u: { return 0.5 * x * (1.0 + erf_(x * 0.70710678)); }
        case 12u: { return x / (1.0 + exp(-x)); }
        case 13u: { return 0.5 * x * (1.0 + tanh(0.7978845608 * (x + 0.044715 * x * x * x))); }
        default: { return x; }
    }
}

// unary: words 0 n, 1 rank, 2 op, 4..9 shape, 10..15 input strides, 22 input offset. Output contiguous.
@compute @workgroup_size(256)
fn map(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) li: u32) {
    let i = gid(wg, nwg, li);
    if (i >= p(0u)) { return; }
    O[i] = unary(A[at(i, 10u, p(22u))], p(2u));
}

// binary: words 0 n, 1 rank, 2 op, 4..9 output shape, 10..15 / 16..21 strides of a / b (0 where broadcast),
// 22 / 23 their offsets. Output contiguous.
@compute @workgroup_size(256)
fn zip(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) li: u32) {
    let i = gid(wg, nwg, li);
    if (i >= p(0u)) { return; }
    let a = A[at(i, 10u, p(22u))];
    let b = B[at(i, 16u, p(23u))];
    var y: f32;
    switch p(2u) {
        case 0u: { y = a + b; }
        case 1u: { y = a - b; }
        case 2u: { y = a * b; }
        case 3u: { y = a / b; }
        case 4u: { y = max(a, b); }
        case 5u: { y = min(a, b); }
        default: { y = pow(a, b); }
    }
    O[i] = y;
}

// Reductions over the middle axis of a contiguous [outer, len, inner] input, one thread per output:
// words 0 outer·inner, 2 op (0 sum, 1 max, 2 min, 3 argmax, 4 argmin, 5 mean of squares, 6 product),
// 3 1 when the input holds i32, 4 len, 5 inner. argmax/argmin write i32 (the first extreme).
@compute @workgroup_size(256)
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = gid(wg, nwg, li);
    if (i >= p(0u)) { return; }
    let len = p(4u);
    let inner = p(5u);
    let base = (i / inner) * len * inner + i % inner;
    let op = p(2u);
    let ints = p(3u) == 1u;
    var acc = select(0.0, 1.0, op == 6u);
    var best = 0u;
    for (var k = 0u; k < len; k++) {
        let raw = A[base + k * inner];
        let x = select(raw, f32(bitcast<i32>(raw)), ints);
        if (k == 0u && (op == 1u || op == 2u || op == 3u || op == 4u)) { acc = x; continue; }
        switch op {
            case 0u: { acc += x; }
            case 1u: { acc = max(acc, x); }
            case 2u: { acc = min(acc, x); }
            case 3u: { if (x > acc) { acc = x; best = k; } }
            case 4u: { if (x < acc) { acc = x; best = k; } }
            case 5u: { acc += x * x; }
            default: { acc *= x; }
        }
    }
    if (op == 3u || op == 4u) {
        O[i] = bitcast<f32>(i32(best));
    } else if (op == 5u) {
        O[i] = acc / f32(len);
    } else {
        O[i] = select(acc, bitcast<f32>(i32(acc)), ints);
    }
}

var<workgroup> red: array<f32, 256>;

// The sum (max when `is_max`) of `x` over the workgroup, in every thread.
fn wg_reduce(x: f32, li: u32, is_max: bool) -> f32 {
    red[li] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            red[li] = select(red[li] + red[li + s], max(red[li], red[li + s]), is_max);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Softmax and RMS normalisation over rows of a contiguous [rows, len] input, one workgroup per row:
// words 0 rows, 2 op (0 softmax, 1 rms norm), 4 len, 6 epsilon (f32 bits).
@compute @workgroup_size(256)
fn rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wg.y * nwg.x + wg.x;
    if (row >= p(0u)) { return; }
    let len = p(4u);
    let base = row * len;
    if (p(2u) == 0u) {
        var m = -3.4028235e38;
        for (var k = li; k < len; k += WG) { m = max(m, A[base + k]); }
        m = wg_reduce(m, li, true);
        var s = 0.0;
        for (var k = li; k < len; k += WG) { s += exp(A[base + k] - m); }
        s = wg_reduce(s, li, false);
        for (var k = li; k < len; k += WG) { O[base + k] = exp(A[base + k] - m) / s; }
    } else {
        var s = 0.0;
        for (var k = li; k < len; k += WG) { let x = A[base + k]; s += x * x; }
        s = wg_reduce(s, li, false);
        let scale = inverseSqrt(s / f32(len) + pf(6u));
        for (var k = li; k < len; k += WG) { O[base + k] = A[base + k] * scale; }
    }
}

// The same over the middle axis of [outer, len, inner] when inner > 1, one thread per (outer, inner).
@compute @workgroup_size(256)
fn rows_strided(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let i = gid(wg, nwg, li);
    if (i >= p(0u)) { return; }
    let len = p(4u);
    let inner = p(5u);
    let base = (i / inner) * len * inner + i % inner;
    if (p(2u) == 0u) {
        var m = -3.4028235e38;
        for (var k = 0u; k < len; k++) { m = max(m, A[base + k * inner]); }
        var s = 0.0;
        for (var k = 0u; k < len; k++) { s += exp(A[base + k * inner] - m); }
        for (var k = 0u; k < len; k++) { O[base + k * inner] = exp(A[base + k * inner] - m) / s; }
    } else {
        var s = 0.0;
        for (var k = 0u; k < len; k++) { let x = A[base + k * inner]; s += x * x; }
        let scale = inverseSqrt(s / f32(len) + pf(6u));
        for (var k = 0u; k < len; k++) { O[base + k * inner] = A[base + k * inner] * scale; }
    }
}

// Direct convolution, NC(D)(H)W, groups of 1: words 0 outputs, 1 Cin, 2 Cout, 3 1 with a bias (C), 4..6 input
// D H W, 7..9 output D H W, 10..12 kernel, 13..15 strides, 16..18 padding before, 19..21 dilations.
// A input [N, Cin, D, H, W], B kernel [Cout, Cin, kd, kh, kw], C bias [Cout].
@compute @workgroup_size(256)
fn conv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = gid(wg, nwg, li);
    if (i >= p(0u)) { return; }
    let ow = i % p(9u);
    let oh = (i / p(9u)) % p(8u);
    let od = (i / (p(9u) * p(8u))) % p(7u);
    let co = (i / (p(9u) * p(8u) * p(7u))) % p(2u);
    let n = i / (p(9u) * p(8u) * p(7u) * p(2u));
    let cin = p(1u);
    let id_ = p(4u);
    let ih_ = p(5u);
    let iw_ = p(6u);
    let kd = p(10u);
    let kh = p(11u);
    let kw = p(12u);
    var acc = select(0.0, C[co], p(3u) == 1u);
    for (var ci = 0u; ci < cin; ci++) {
        let ibase = (n * cin + ci) * id_ * ih_ * iw_;
        let kbase = (co * cin + ci) * kd * kh * kw;
        for (var z = 0u; z < kd; z++) {
            let zi = i32(od * p(13u) + z * p(19u)) - i32(p(16u));
            if (zi < 0 || zi >= i32(id_)) { continue; }
            for (var y = 0u; y < kh; y++) {
                let yi = i32(oh * p(14u) + y * p(20u)) - i32(p(17u));
                if (yi < 0 || yi >= i32(ih_)) { continue; }
                for (var x = 0u; x < kw; x++) {
                    let xi = i32(ow * p(15u) + x * p(21u)) - i32(p(18u));
                    if (xi < 0 || xi >= i32(iw_)) { continue; }
                    acc = fma(A[ibase + (u32(zi) * ih_ + u32(yi)) * iw_ + u32(xi)],
                              B[kbase + (z * kh + y) * kw + x], acc);
                }
            }
        }
    }
    O[i] = acc;
}

// Gather along an axis of a contiguous [outer, len, inner] input with i32 indices B (q of them, negative from the
// end, clamped): words 0 outputs, 4 outer, 5 len, 6 inner, 7 q. Output [outer, q, inner].
@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = gid(wg, nwg, li);
    if (i >= p(0u)) { return; }
    let len = p(5u);
    let inner = p(6u);
    let q = p(7u);
    let j = i % inner;
    let t = (i / inner) % q;
    let o = i / (inner * q);
    var idx = bitcast<i32>(B[t]);
    if (idx < 0) { idx += i32(len); }
    let k = u32(clamp(idx, 0, i32(len) - 1));
    O[i] = A[(o * len + k) * inner + j];
}

// GatherND without batch dimensions: B holds q tuples of r i32 indices into the first r axes of A (contiguous,
// their strides in words 8..13, their sizes in 14..19): words 0 outputs, 4 q, 5 r, 6 inner.
@compute @workgroup_size(256)
fn gather_nd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let i = gid(wg, nwg, li);
    if (i >= p(0u)) { return; }
    let r = p(5u);
    let inner = p(6u);
    let t = i / inner;
    var o = i % inner;
    for (var k = 0u; k < r; k++) {
        let size = i32(p(14u + k));
        var idx = bitcast<i32>(B[t * r + k]);
        if (idx < 0) { idx += size; }
        o += u32(clamp(idx, 0, size - 1)) * p(8u + k);
    }
    O[i] = A[o];
}
