//! Kaldi log-mel filterbank, as `torchaudio.compliance.kaldi.fbank` computes it with ImageBind's arguments.
//!
//! `fbank(wave, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
//! num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10)`, all other arguments at their defaults:
//! - frames of 400 samples every 160 (`snip_edges=True`: `1 + (n - 400) / 160` frames, none if `n < 400`);
//! - per frame: subtract the frame mean, pre-emphasis 0.97 with `x[-1] := x[0]`, symmetric Hann window
//!   (`0.5 - 0.5 cos(2πi/399)`), zero-pad to 512, `|rfft|²`;
//! - 128 triangular mel filters, HTK mel `1127 ln(1 + f/700)`, 20–8000 Hz, built in float32 like torchaudio;
//! - `ln(max(energy, f32::EPSILON))`.
//!
//! Output is `[frames][128]`, row-major.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Window length in samples (25 ms at 16 kHz).
pub const FRAME_LENGTH: usize = 400;
/// Hop in samples (10 ms at 16 kHz).
pub const FRAME_SHIFT: usize = 160;
/// FFT size (next power of two of the window).
pub const FFT_SIZE: usize = 512;
/// Mel bins.
pub const MEL_BINS: usize = 128;
const PREEMPHASIS: f32 = 0.97;
const SAMPLE_RATE: f64 = 16000.0;
const LOW_FREQ: f64 = 20.0;
const HIGH_FREQ: f64 = 8000.0;

/// A reusable filterbank: window, mel matrix and FFT plan.
pub struct Fbank {
    window: Vec<f32>,
    /// `[MEL_BINS][FFT_SIZE/2 + 1]`, sparse: (first bin, weights) per mel filter.
    filters: Vec<(usize, Vec<f32>)>,
    /// A 512-point complex float32 FFT (as torch's) that transforms two real frames at once: one in the real,
    /// one in the imaginary part, separated by symmetry afterwards. Measured against f64: the same agreement
    /// with torchaudio (its own float32 noise dominates), at half the cost.
    fft: Arc<dyn Fft<f32>>,
}

impl std::fmt::Debug for Fbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fbank")
            .field("mel_bins", &MEL_BINS)
            .finish_non_exhaustive()
    }
}

impl Default for Fbank {
    fn default() -> Self {
        Self::new()
    }
}

/// Number of frames torchaudio produces for `n` samples (`snip_edges=True`).
pub fn num_frames(n: usize) -> usize {
    if n < FRAME_LENGTH {
        0
    } else {
        1 + (n - FRAME_LENGTH) / FRAME_SHIFT
    }
}

impl Fbank {
    /// Builds the window, the mel filters and the FFT plan.
    pub fn new() -> Self {
        // torch.hann_window(400, periodic=False) in float32.
        let window = (0..FRAME_LENGTH)
            .map(|i| {
                let x = 2.0 * std::f64::consts::PI * i as f64 / (FRAME_LENGTH - 1) as f64;
                (0.5 - 0.5 * x.cos()) as f32
            })
            .collect();
        let fft = FftPlanner::<f32>::new().plan_fft_forward(FFT_SIZE);
        Self {
            window,
            filters: mel_filters(),
            fft,
        }
    }

    /// Log-mel features of a 16 kHz mono signal: `frames × 128` values, frame-major.
    ///
    /// On x86-64 CPUs with AVX2 the same code is compiled a second time with AVX2 enabled and chosen at run time
    /// (the default x86-64 target has only SSE2). Results are identical: no fused multiply-adds are introduced.
    pub fn compute(&self, wave: &[f32]) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: `compute_avx2` only requires AVX2, which was just detected on this CPU.
            #[allow(unsafe_code)]
            return unsafe { self.compute_avx2(wave) };
        }
        self.compute_portable(wave)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    unsafe fn compute_avx2(&self, wave: &[f32]) -> Vec<f32> {
        self.compute_portable(wave)
    }

    #[inline(always)]
    fn compute_portable(&self, wave: &[f32]) -> Vec<f32> {
        let frames = num_frames(wave.len());
        let mut out = Vec::with_capacity(frames * MEL_BINS);
        let mut buf = vec![Complex::new(0.0f32, 0.0); FFT_SIZE];
        let mut scratch = vec![Complex::new(0.0f32, 0.0); self.fft.get_inplace_scratch_len()];
        let mut windowed = [[0f32; FRAME_LENGTH]; 2];
        // Power spectra of up to BLOCK frames, bin-major, so that the mel sums run across frames in SIMD lanes.
        let mut power = vec![[0f32; BLOCK]; FFT_SIZE / 2 + 1];
        let mut energies = [[0f32; BLOCK]; MEL_BINS];
        let mut frame_energy = [0f32; MEL_BINS];
        let mut frame_log = [0f32; MEL_BINS];
        for block_start in (0..frames).step_by(BLOCK) {
            let block_len = BLOCK.min(frames - block_start);
            // Two real frames per complex FFT: frame a in the real part, frame b in the imaginary part.
            for pair in (0..block_len).step_by(2) {
                for (half, w) in windowed.iter_mut().enumerate() {
                    let f = block_start + pair + half;
                    if pair + half < block_len {
                        self.window_frame(&wave[f * FRAME_SHIFT..f * FRAME_SHIFT + FRAME_LENGTH], w);
                    } else {
                        *w = [0.0; FRAME_LENGTH];
                    }
                }
                for ((z, &a), &b) in buf.iter_mut().zip(&windowed[0]).zip(&windowed[1]) {
                    *z = Complex::new(a, b);
                }
                buf[FRAME_LENGTH..].iter_mut().for_each(|z| *z = Complex::new(0.0, 0.0));
                self.fft.process_with_scratch(&mut buf, &mut scratch);
                // X_a[k] = (Z[k] + conj Z[N-k]) / 2, X_b[k] = (Z[k] - conj Z[N-k]) / 2i.
                for (k, p) in power.iter_mut().enumerate() {
                    let z = buf[k];
                    let w = buf[(FFT_SIZE - k) % FFT_SIZE];
                    let (ar, ai) = (z.re + w.re, z.im - w.im);
                    let (br, bi) = (z.re - w.re, z.im + w.im);
                    p[pair] = 0.25 * (ar * ar + ai * ai);
                    if pair + 1 < BLOCK {
                        p[pair + 1] = 0.25 * (br * br + bi * bi);
                    }
                }
            }
            for ((start, weights), e) in self.filters.iter().zip(energies.iter_mut()) {
                *e = [0.0; BLOCK];
                for (w, p) in weights.iter().zip(&power[*start..]) {
                    let w = *w;
                    for lane in 0..BLOCK {
                        e[lane] += w * p[lane];
                    }
                }
            }
            for j in 0..block_len {
                for (dst, e) in frame_energy.iter_mut().zip(&energies) {
                    *dst = e[j].max(f32::EPSILON);
                }
                ln_slice(&frame_energy, &mut frame_log);
                out.extend_from_slice(&frame_log);
            }
        }
        out
    }

    /// DC removal, pre-emphasis (`x[-1] := x[0]`) and the window, each step rounded to f32 as torch does it.
    #[inline(always)]
    fn window_frame(&self, frame: &[f32], out: &mut [f32; FRAME_LENGTH]) {
        // torch.mean over the frame (a float32 result); eight partial sums keep the adds pipelined.
        let mut lanes = [0f64; 8];
        for chunk in frame.chunks_exact(8) {
            for (l, &x) in lanes.iter_mut().zip(chunk) {
                *l += f64::from(x);
            }
        }
        let mean = (lanes.iter().sum::<f64>() / FRAME_LENGTH as f64) as f32;
        let mut centered = [0f32; FRAME_LENGTH];
        for (c, &x) in centered.iter_mut().zip(frame) {
            *c = x - mean;
        }
        out[0] = (centered[0] - PREEMPHASIS * centered[0]) * self.window[0];
        for i in 1..FRAME_LENGTH {
            out[i] = (centered[i] - PREEMPHASIS * centered[i - 1]) * self.window[i];
        }
    }
}

/// Frames whose mel sums are computed together.
const BLOCK: usize = 8;

/// Natural logs of positive, normal f32 values, correctly rounded except in rare ties (error < 1e-11 before
/// rounding to f32).
///
/// libm's `logf` is a function call per value and dominated the filterbank's profile; this loop is branch-free
/// and vectorises. `x = 2^k · m` with `m ∈ [√½, √2)`, `ln m = 2·atanh(s)`, `s = (m − 1)/(m + 1)`, seven odd
/// terms in f64.
#[inline(always)]
fn ln_slice(xs: &[f32; MEL_BINS], out: &mut [f32; MEL_BINS]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        let bits = x.to_bits();
        let exponent = ((bits >> 23) & 0xff) as i32 - 127;
        let m = f64::from(f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000));
        let big = m > std::f64::consts::SQRT_2;
        let m = if big { m * 0.5 } else { m };
        let k = f64::from(exponent + i32::from(big));
        let s = (m - 1.0) / (m + 1.0);
        let s2 = s * s;
        let series = 1.0
            + s2 * (1.0 / 3.0
                + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0))))));
        *o = (k * std::f64::consts::LN_2 + 2.0 * s * series) as f32;
    }
}

/// torchaudio's `get_mel_banks(128, 512, 16000, 20, 0, 100, -500, 1.0)`, in float32, as sparse rows.
fn mel_filters() -> Vec<(usize, Vec<f32>)> {
    let mel = |f: f64| 1127.0 * (1.0 + f / 700.0).ln();
    let mel_low = mel(LOW_FREQ);
    let mel_high = mel(HIGH_FREQ);
    let delta = (mel_high - mel_low) / (MEL_BINS + 1) as f64;
    let (low32, delta32) = (mel_low as f32, delta as f32);
    let fft_bin_width = (SAMPLE_RATE / FFT_SIZE as f64) as f32;
    // mel of each FFT bin centre, float32: 1127 * ln(1 + f/700).
    let bin_mel: Vec<f32> = (0..FFT_SIZE / 2)
        .map(|k| {
            let f = fft_bin_width * k as f32;
            1127.0f32 * (1.0f32 + f / 700.0f32).ln()
        })
        .collect();
    (0..MEL_BINS)
        .map(|b| {
            let left = low32 + b as f32 * delta32;
            let center = low32 + (b as f32 + 1.0) * delta32;
            let right = low32 + (b as f32 + 2.0) * delta32;
            let row: Vec<f32> = bin_mel
                .iter()
                .map(|&m| {
                    let up = (m - left) / (center - left);
                    let down = (right - m) / (right - center);
                    up.min(down).max(0.0)
                })
                .collect();
            // Keep the non-zero span (the padded 257th bin is always zero).
            let start = row.iter().position(|&w| w != 0.0).unwrap_or(0);
            let end = row.iter().rposition(|&w| w != 0.0).map_or(start, |e| e + 1);
            (start, row[start..end].to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_log_matches_libm() {
        let mut worst = 0u32;
        let mut x = f32::EPSILON;
        while x < 1e9 {
            let mut xs = [1.0f32; MEL_BINS];
            for v in xs.iter_mut() {
                *v = x;
                x = f32::from_bits(x.to_bits() + 7919);
            }
            let mut ls = [0f32; MEL_BINS];
            ln_slice(&xs, &mut ls);
            for (a, v) in ls.iter().zip(&xs) {
                worst = worst.max(a.to_bits().abs_diff(v.ln().to_bits()));
            }
        }
        assert!(worst <= 1, "{worst} ulp");
    }

    #[test]
    fn frame_count_follows_snip_edges() {
        assert_eq!(num_frames(399), 0);
        assert_eq!(num_frames(400), 1);
        assert_eq!(num_frames(32000), 198);
    }

    #[test]
    fn silence_hits_the_log_floor() {
        let out = Fbank::new().compute(&[0.0; 1000]);
        assert_eq!(out.len(), num_frames(1000) * MEL_BINS);
        assert!(out.iter().all(|&v| (v - f32::EPSILON.ln()).abs() < 1e-6));
    }

    #[test]
    fn a_tone_peaks_in_the_right_mel_bin() {
        let wave: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin())
            .collect();
        let out = Fbank::new().compute(&wave);
        let frame = &out[50 * MEL_BINS..51 * MEL_BINS];
        let peak = frame
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap();
        // torchaudio puts the same tone's peak in bin 43.
        assert_eq!(peak, 43);
    }
}
