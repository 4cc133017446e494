// Shared by kernels.wgsl and the f16-weight matrix product (see mod.rs: each module is this file, its bindings,
// then its kernels).

struct Params { v: array<vec4<u32>, 16> }

@group(0) @binding(0) var<uniform> P: Params;

const WG: u32 = 256u;

fn p(i: u32) -> u32 { return P.v[i / 4u][i % 4u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(p(i)); }

// The element a thread of a 1-D launch handles (launches are folded into x·y workgroups of WG threads).
fn gid(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 { return (wg.y * nwg.x + wg.x) * WG + li; }

