//! Resamplers that reproduce the reference libraries bit for bit.
//!
//! - [`pillow_resize_u8`]: Pillow's `Image.resize(..., BICUBIC)` on 8-bit images (ImageBind's image path goes
//!   through torchvision's `Resize` on a PIL image, which calls it). Pillow's convolution is always antialiased
//!   (the kernel widens by the downscale factor), uses fixed-point weights with 22 fractional bits, and stores the
//!   horizontal pass as clipped 8-bit before the vertical pass. All of that is reproduced here.
//! - [`pillow_resize_f32`]: the same kernels in floating point, as Pillow resizes mode `F` images (depth).
//! - [`torch_bilinear`]: `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` without
//!   antialiasing (ImageBind's video path, pytorchvideo `ShortSideScale`).
//!
//! Images are planar: one `u8`/`f32` plane per channel, row-major.

/// Pillow's bicubic kernel (a = -0.5) and its support.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

const BICUBIC_SUPPORT: f64 = 2.0;
/// Fractional bits of Pillow's 8-bit fixed-point weights (32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Per output pixel: the first input index and the normalised weights of the inputs it reads.
#[derive(Debug, Clone)]
pub(crate) struct Coeffs {
    /// (first input index, number of inputs) per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel (unused tail is zero).
    weights: Vec<f64>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` for an axis of `in_size` resampled to `out_size` (box = the whole axis).
pub(crate) fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0.0; out_size * ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; negative starts clamp to 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let count = xmax.saturating_sub(xmin);
        let k = &mut weights[xx * ksize..xx * ksize + count.min(ksize)];
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate() {
            *w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *w;
        }
        if total != 0.0 {
            k.iter_mut().for_each(|w| *w /= total);
        }
        bounds.push((xmin, count.min(ksize)));
    }
    Coeffs { bounds, weights, ksize }
}

impl Coeffs {
    /// The weights as Pillow's 8-bit fixed point (rounded half away from zero, truncated).
    fn fixed_point(&self) -> Vec<i32> {
        let one = f64::from(1u32 << PRECISION_BITS);
        self.weights
            .iter()
            .map(|&w| {
                if w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                }
            })
            .collect()
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's two-pass bicubic resize of one 8-bit plane (`w`×`h` → `out_w`×`out_h`).
///
/// Both passes run as "rows in, rows out" accumulations that vectorise; the horizontal pass works on the
/// transposed plane. Every output value is the same fixed-point sum, in the same order, as Pillow's.
pub fn pillow_resize_u8(plane: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let vert = precompute_coeffs(h, out_h);
    // Rows of the source that the vertical pass reads.
    let first_row = vert.bounds.first().map_or(0, |b| b.0);
    let last_row = vert.bounds.last().map_or(h, |b| b.0 + b.1);
    let (mut src, mut src_w, mut row_offset) = (plane.to_vec(), w, 0usize);
    if out_w != w {
        let horiz = precompute_coeffs(w, out_w);
        let rows = last_row - first_row;
        // [x][y] layout: each input column becomes a row.
        let columns = transpose(&plane[first_row * w..last_row * w], w, rows);
        let resampled = resample_rows_u8(&columns, rows, &horiz);
        src = transpose(&resampled, rows, out_w);
        src_w = out_w;
        row_offset = first_row;
    }
    if out_h == h {
        return src;
    }
    let vert = Coeffs {
        bounds: vert.bounds.iter().map(|&(start, n)| (start - row_offset, n)).collect(),
        ..vert
    };
    resample_rows_u8(&src, src_w, &vert)
}

/// Output row `r` = Σ_t weight[r][t] · input row `start[r] + t`, in Pillow's 8-bit fixed point.
///
/// The default x86-64 target lacks a 32-bit integer vector multiply (SSE4.1); where the CPU has AVX2 the same
/// code runs compiled for it. Integer arithmetic: identical results either way.
fn resample_rows_u8(src: &[u8], width: usize, coeffs: &Coeffs) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `resample_rows_u8_avx2` only requires AVX2, which was just detected on this CPU.
        #[allow(unsafe_code)]
        return unsafe { resample_rows_u8_avx2(src, width, coeffs) };
    }
    resample_rows_u8_portable(src, width, coeffs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn resample_rows_u8_avx2(src: &[u8], width: usize, coeffs: &Coeffs) -> Vec<u8> {
    resample_rows_u8_portable(src, width, coeffs)
}

#[inline(always)]
fn resample_rows_u8_portable(src: &[u8], width: usize, coeffs: &Coeffs) -> Vec<u8> {
    let k = coeffs.fixed_point();
    let mut out = vec![0u8; width * coeffs.bounds.len()];
    let mut acc = vec![0i32; width];
    for (r, &(start, count)) in coeffs.bounds.iter().enumerate() {
        acc.iter_mut().for_each(|a| *a = 1 << (PRECISION_BITS - 1));
        for (t, &wgt) in k[r * coeffs.ksize..r * coeffs.ksize + count].iter().enumerate() {
            let row = &src[(start + t) * width..(start + t + 1) * width];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add(i32::from(v).wrapping_mul(wgt));
            }
        }
        for (o, &a) in out[r * width..(r + 1) * width].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// `rows`×`cols` row-major → `cols`×`rows`.
fn transpose<T: Copy + Default>(src: &[T], cols: usize, rows: usize) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    out
}

/// Pillow's bicubic resize of a floating-point plane (mode `F`): f64 weights, f32 storage between passes.
pub fn pillow_resize_f32(plane: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let vert = precompute_coeffs(h, out_h);
    let first_row = vert.bounds.first().map_or(0, |b| b.0);
    let last_row = vert.bounds.last().map_or(h, |b| b.0 + b.1);
    let (mut src, mut src_w, mut row_offset) = (plane.to_vec(), w, 0usize);
    if out_w != w {
        let horiz = precompute_coeffs(w, out_w);
        let rows = last_row - first_row;
        let mut tmp = vec![0f32; out_w * rows];
        for yy in 0..rows {
            let row = &plane[(yy + first_row) * w..(yy + first_row + 1) * w];
            for xx in 0..out_w {
                let (xmin, count) = horiz.bounds[xx];
                let kk = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + count];
                let acc: f64 = kk.iter().enumerate().map(|(x, &k)| f64::from(row[xmin + x]) * k).sum();
                tmp[yy * out_w + xx] = acc as f32;
            }
        }
        src = tmp;
        src_w = out_w;
        row_offset = first_row;
    }
    if out_h == h {
        return src;
    }
    let mut out = vec![0f32; src_w * out_h];
    let mut acc = vec![0f64; src_w];
    for yy in 0..out_h {
        let (ymin, count) = vert.bounds[yy];
        let ymin = ymin - row_offset;
        let kk = &vert.weights[yy * vert.ksize..yy * vert.ksize + count];
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (y, &wgt) in kk.iter().enumerate() {
            let row = &src[(ymin + y) * src_w..(ymin + y + 1) * src_w];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += f64::from(v) * wgt;
            }
        }
        for (o, &a) in out[yy * src_w..(yy + 1) * src_w].iter_mut().zip(&acc) {
            *o = a as f32;
        }
    }
    out
}

/// `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)` on one f32 plane, without
/// antialiasing, computed as PyTorch's CPU kernel does (f32 source index and lambdas).
pub fn torch_bilinear(plane: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let xs = linear_indices(w, out_w);
    let ys = linear_indices(h, out_h);
    let mut out = vec![0f32; out_w * out_h];
    for (oy, &(y0, y1, ly0, ly1)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, lx0, lx1)) in xs.iter().enumerate() {
            let p = |y: usize, x: usize| plane[y * w + x];
            out[oy * out_w + ox] =
                ly0 * (lx0 * p(y0, x0) + lx1 * p(y0, x1)) + ly1 * (lx0 * p(y1, x0) + lx1 * p(y1, x1));
        }
    }
    out
}

/// PyTorch's `compute_indices_weights_linear` with `align_corners=False` and no explicit scale:
/// `scale = in/out` (as float), `src = max((dst + 0.5) * scale - 0.5, 0)`.
fn linear_indices(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|dst| {
            let real = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (real as usize).min(in_size - 1);
            let offset = usize::from(i0 < in_size - 1);
            let l1 = real - i0 as f32;
            let l0 = 1.0 - l1;
            (i0, i0 + offset, l0, l1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let plane: Vec<u8> = (0..=255).collect();
        assert_eq!(pillow_resize_u8(&plane, 16, 16, 16, 16), plane);
    }

    #[test]
    fn constant_planes_stay_constant() {
        let plane = vec![77u8; 37 * 23];
        let out = pillow_resize_u8(&plane, 37, 23, 11, 50);
        assert!(out.iter().all(|&v| v == 77));
        let plane = vec![3.5f32; 37 * 23];
        let out = torch_bilinear(&plane, 37, 23, 11, 50);
        assert!(out.iter().all(|&v| (v - 3.5).abs() < 1e-6));
    }

    #[test]
    fn coefficients_sum_to_one() {
        for (i, o) in [(640, 224), (224, 225), (7, 3), (1000, 224)] {
            let c = precompute_coeffs(i, o);
            for xx in 0..o {
                let (_, n) = c.bounds[xx];
                let s: f64 = c.weights[xx * c.ksize..xx * c.ksize + n].iter().sum();
                assert!((s - 1.0).abs() < 1e-9, "{i}->{o} at {xx}: {s}");
            }
        }
    }
}
