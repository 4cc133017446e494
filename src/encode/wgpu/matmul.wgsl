// The matrix product of both modules: B is read through `load_b`, f32 or f16 weights.

// Batched matrix product C = A·B with arbitrary strides (transposes are free):
// words 0 M, 1 N, 2 K, 3 batches, 4..7 batch sizes (4 axes, row-major), 8..11 / 12..15 / 16..19 batch strides of
// A / B / C, 20 A m-stride, 21 A k-stride, 22 B k-stride, 23 B n-stride, 24 C m-stride, 25 C n-stride,
// 26 / 27 / 28 offsets of A / B / C. 64×64 tiles, 16×16 threads of 4×4 outputs each; workgroups (N/64, M/64, batches).
var<workgroup> ta: array<array<f32, 64>, 16>;
var<workgroup> tb: array<array<f32, 64>, 16>;

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let M = p(0u);
    let N = p(1u);
    let K = p(2u);
    var rem = wg.z;
    var oa = p(26u);
    var ob = p(27u);
    var oc = p(28u);
    for (var d = 0u; d < 4u; d++) {
        let ax = 3u - d;
        let c = rem % p(4u + ax);
        rem = rem / p(4u + ax);
        oa += c * p(8u + ax);
        ob += c * p(12u + ax);
        oc += c * p(16u + ax);
    }
    let am = p(20u);
    let ak = p(21u);
    let bk = p(22u);
    let bn = p(23u);
    let row0 = wg.y * 64u;
    let col0 = wg.x * 64u;
    let t = lid.y * 16u + lid.x;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < K; k0 += 16u) {
        // 1024 elements of each tile, 4 per thread.
        for (var e = 0u; e < 4u; e++) {
            let idx = t + e * 256u;
            let kk = idx / 64u;
            let mm = idx % 64u;
            let gk = k0 + kk;
            let gm = row0 + mm;
            let gn = col0 + mm;
            ta[kk][mm] = select(0.0, A[oa + gm * am + gk * ak], gk < K && gm < M);
            tb[kk][mm] = select(0.0, load_b(ob + gk * bk + gn * bn), gk < K && gn < N);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                a[r] = ta[kk][lid.y * 4u + r];
                b[r] = tb[kk][lid.x * 4u + r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[r][c] = fma(a[r], b[c], acc[r][c]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let gm = row0 + lid.y * 4u + r;
        for (var c = 0u; c < 4u; c++) {
            let gn = col0 + lid.x * 4u + c;
            if (gm < M && gn < N) {
                O[oc + gm * p(24u) + gn * p(25u)] = acc[r][c];
            }
        }
    }
}

