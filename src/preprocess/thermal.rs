//! Thermal: one-channel images → ImageBind's 224×224 single-channel input.
//!
//! ImageBind released no thermal loader. Its thermal data (LLVIP) are 8-bit images, and the best reproduction of
//! the paper's LLVIP number (PR #73 discussion: 62.4 % vs the paper's 63.4 %) uses the RGB transform on the
//! grayscale image *without* Normalize: `convert("L")`, `Resize(224, BICUBIC)`, `CenterCrop(224)`, `ToTensor()`.
//! sensebind's default is exactly that for 8-bit input (Pillow's fixed-point bicubic, values in [0, 1]).
//!
//! Radiometric 16-bit input (FLIR Lepton, raw counts) has no fixed range, so by default each frame is scaled by
//! its own percentiles (1st → 0, 99th → 1, clipped) and resized in floating point with the same kernel. A fixed
//! range (`scaling = "fixed"`, `fixed_min`/`fixed_max` in raw units) keeps temperatures comparable across frames.
//! Finally `(x − mean) / std` (defaults 0 and 1).

use serde::{Deserialize, Serialize};

use super::image::{GrayImage, IMAGE_SIZE, center_crop_offset, resized_size};
use super::resample::{pillow_resize_f32, pillow_resize_u8};

/// How raw thermal values become [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThermalScaling {
    /// 8-bit: `fixed` over 0..255; 16-bit: `percentile`.
    Auto,
    /// `(v − fixed_min) / (fixed_max − fixed_min)`, clipped to [0, 1].
    Fixed,
    /// Per frame: the `low_percentile` value → 0, the `high_percentile` value → 1, clipped.
    Percentile,
}

/// Thermal preprocessing parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ThermalConfig {
    /// How raw values become [0, 1].
    pub scaling: ThermalScaling,
    /// Raw value mapped to 0 with `fixed` (8-bit auto: 0).
    pub fixed_min: f32,
    /// Raw value mapped to 1 with `fixed` (8-bit auto: 255).
    pub fixed_max: f32,
    /// Percentile mapped to 0 with `percentile`.
    pub low_percentile: f32,
    /// Percentile mapped to 1 with `percentile`.
    pub high_percentile: f32,
    /// Subtracted after scaling and resizing.
    pub mean: f32,
    /// Divides after subtracting `mean`.
    pub std: f32,
}

impl Default for ThermalConfig {
    fn default() -> Self {
        Self {
            scaling: ThermalScaling::Auto,
            fixed_min: 0.0,
            fixed_max: 255.0,
            low_percentile: 1.0,
            high_percentile: 99.0,
            mean: 0.0,
            std: 1.0,
        }
    }
}

impl ThermalConfig {
    /// Problems with the values, each under the key it concerns (the first of a pair).
    pub fn validate(&self, issues: &mut crate::issues::Scope<'_>) {
        if self.fixed_max.partial_cmp(&self.fixed_min) != Some(std::cmp::Ordering::Greater) {
            issues.push(
                "fixed_min",
                format!("need min < max, got {} and {}", self.fixed_min, self.fixed_max),
            );
        }
        if !(0.0 <= self.low_percentile && self.low_percentile < self.high_percentile && self.high_percentile <= 100.0)
        {
            issues.push(
                "low_percentile",
                format!(
                    "need 0 <= low < high <= 100, got {} and {}",
                    self.low_percentile, self.high_percentile
                ),
            );
        }
        if !(self.std.is_finite() && self.std > 0.0 && self.mean.is_finite()) {
            issues.push("mean", "std must be positive and mean finite");
        }
    }
}

/// NumPy's default (linear) percentile of unsorted values.
pub fn percentile(values: &[f32], q: f32) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let pos = f64::from(q.clamp(0.0, 100.0)) / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = (pos - lo as f64) as f32;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Thermal image → `[1, 224, 224]` values.
pub fn transform(img: &GrayImage, config: &ThermalConfig) -> Vec<f32> {
    let (w, h) = resized_size(img.width, img.height, IMAGE_SIZE);
    let (top, left) = (center_crop_offset(h, IMAGE_SIZE), center_crop_offset(w, IMAGE_SIZE));
    let eight_bit = img.bit_depth <= 8;
    let scaling = match config.scaling {
        ThermalScaling::Auto if eight_bit => ThermalScaling::Fixed,
        ThermalScaling::Auto => ThermalScaling::Percentile,
        s => s,
    };
    let default_range = config.fixed_min == 0.0 && config.fixed_max == 255.0;
    let resized: Vec<f32> = if eight_bit && scaling == ThermalScaling::Fixed && default_range {
        // The reference path: 8-bit Pillow resize, then ToTensor's /255.
        let plane: Vec<u8> = img.samples.iter().map(|&v| v.min(255) as u8).collect();
        let out = if (w, h) == (img.width, img.height) {
            plane
        } else {
            pillow_resize_u8(&plane, img.width, img.height, w, h)
        };
        out.into_iter().map(|v| f32::from(v) / 255.0).collect()
    } else {
        let raw: Vec<f32> = img.samples.iter().map(|&v| f32::from(v)).collect();
        let (lo, hi) = match scaling {
            ThermalScaling::Percentile => (
                percentile(&raw, config.low_percentile),
                percentile(&raw, config.high_percentile),
            ),
            _ => (config.fixed_min, config.fixed_max),
        };
        let span = (hi - lo).max(f32::EPSILON);
        let scaled: Vec<f32> = raw.iter().map(|&v| ((v - lo) / span).clamp(0.0, 1.0)).collect();
        if (w, h) == (img.width, img.height) {
            scaled
        } else {
            pillow_resize_f32(&scaled, img.width, img.height, w, h)
        }
    };
    let mut out = Vec::with_capacity(IMAGE_SIZE * IMAGE_SIZE);
    for y in top..top + IMAGE_SIZE {
        out.extend(
            resized[y * w + left..y * w + left + IMAGE_SIZE]
                .iter()
                .map(|&v| (v - config.mean) / config.std),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert!((percentile(&v, 10.0) - 1.4).abs() < 1e-6);
        assert_eq!(percentile(&v, 100.0), 5.0);
    }

    #[test]
    fn sixteen_bit_frames_are_scaled_per_frame() {
        let img = GrayImage {
            width: 224,
            height: 224,
            bit_depth: 16,
            samples: (0..224 * 224).map(|i| 20000 + (i % 1000) as u16).collect(),
        };
        let out = transform(&img, &ThermalConfig::default());
        assert!(out.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert!(out.contains(&0.0) && out.contains(&1.0));
    }

    #[test]
    fn eight_bit_frames_are_divided_by_255() {
        let img = GrayImage {
            width: 224,
            height: 224,
            bit_depth: 8,
            samples: vec![51; 224 * 224],
        };
        let out = transform(&img, &ThermalConfig::default());
        assert!(out.iter().all(|&v| (v - 0.2).abs() < 1e-7));
    }
}
