//! Depth: metric depth → disparity → ImageBind's 224×224 single-channel input.
//!
//! ImageBind released no depth loader. Its paper converts depth to disparity "for scale normalisation", and its
//! co-author's conversion for SUN RGB-D (facebookresearch/omnivore#12) is `disparity = baseline · focal / depth`
//! with depth clipped to [0.01, 50] m. sensebind does exactly that, then resizes like the image path:
//!
//! 1. depth in metres: a 16-bit PNG times `png_unit_m` (default 0.001: millimetres, the Kinect/RealSense
//!    convention), or a float `.npy` already in metres; 0, negative or non-finite depth means "unknown";
//! 2. clip to [`min_depth_m`, `max_depth_m`] (0.01, 50), `disparity = baseline_m · focal_px / depth`
//!    (defaults 0.075 m and 518.8579 px: Kinect v1 baseline, NYU Depth v2 colour focal length); unknown → 0;
//! 3. short side to 224 with Pillow's bicubic on the float image (mode `F`), long side `int(224·long/short)`,
//!    centre crop (round half to even) — the geometry of ImageBind's image transform;
//! 4. `(d − mean) / std` (defaults 0 and 1: no normalisation). The depth stem is a bias-free convolution followed
//!    by LayerNorm, so a global scale of the input cancels out; only an offset would change the embedding.
//!
//! All five numbers are configurable (`[depth]` in the preprocessing config).

use serde::{Deserialize, Serialize};

use super::PreprocessError;
use super::image::{IMAGE_SIZE, center_crop_offset, resized_size};
use super::resample::pillow_resize_f32;

/// Depth preprocessing parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DepthConfig {
    /// Metres per unit of an integer depth PNG (0.001 = millimetres).
    pub png_unit_m: f64,
    /// Depth below this is clipped up to it, in metres.
    pub min_depth_m: f32,
    /// Depth above this is clipped down to it, in metres.
    pub max_depth_m: f32,
    /// Stereo baseline in metres.
    pub baseline_m: f32,
    /// Focal length in pixels.
    pub focal_px: f32,
    /// Subtracted from the disparity after resizing.
    pub mean: f32,
    /// Divides the disparity after subtracting `mean`.
    pub std: f32,
}

impl Default for DepthConfig {
    fn default() -> Self {
        Self {
            png_unit_m: 0.001,
            min_depth_m: 0.01,
            max_depth_m: 50.0,
            baseline_m: 0.075,
            focal_px: 518.857_9,
            mean: 0.0,
            std: 1.0,
        }
    }
}

impl DepthConfig {
    /// Problems with the values, each under the key it concerns (the first of a pair).
    pub fn validate(&self, issues: &mut crate::issues::Scope<'_>) {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.png_unit_m) {
            issues.push("png_unit_m", format!("must be positive, got {}", self.png_unit_m));
        }
        if !positive(f64::from(self.min_depth_m))
            || self.max_depth_m.partial_cmp(&self.min_depth_m) != Some(std::cmp::Ordering::Greater)
        {
            issues.push(
                "min_depth_m",
                format!("need 0 < min < max, got {} and {}", self.min_depth_m, self.max_depth_m),
            );
        }
        if !positive(f64::from(self.baseline_m)) || !positive(f64::from(self.focal_px)) {
            issues.push("baseline_m", "must be positive");
        }
        if !positive(f64::from(self.std)) || !self.mean.is_finite() {
            issues.push("mean", "std must be positive and mean finite");
        }
    }
}

/// A depth map in metres, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthMap {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Depth in metres; ≤ 0 or non-finite = unknown.
    pub metres: Vec<f32>,
}

/// Depth map → `[1, 224, 224]` values.
pub fn transform(depth: &DepthMap, config: &DepthConfig) -> Vec<f32> {
    let scale = config.baseline_m * config.focal_px;
    let disparity: Vec<f32> = depth
        .metres
        .iter()
        .map(|&d| {
            if d.is_finite() && d > 0.0 {
                scale / d.clamp(config.min_depth_m, config.max_depth_m)
            } else {
                0.0
            }
        })
        .collect();
    let (w, h) = resized_size(depth.width, depth.height, IMAGE_SIZE);
    let resized = if (w, h) == (depth.width, depth.height) {
        disparity
    } else {
        pillow_resize_f32(&disparity, depth.width, depth.height, w, h)
    };
    let (top, left) = (center_crop_offset(h, IMAGE_SIZE), center_crop_offset(w, IMAGE_SIZE));
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

/// A depth map from an integer PNG's samples.
pub fn from_png_samples(width: usize, height: usize, samples: &[u16], config: &DepthConfig) -> DepthMap {
    let unit = config.png_unit_m;
    DepthMap {
        width,
        height,
        metres: samples.iter().map(|&v| (f64::from(v) * unit) as f32).collect(),
    }
}

/// Checks a float depth map read from `.npy` (`[H, W]` or `[1, H, W]`, metres).
pub fn from_npy(shape: &[usize], values: Vec<f32>, name: &str) -> Result<DepthMap, PreprocessError> {
    let (height, width) = match shape {
        [h, w] | [1, h, w] => (*h, *w),
        other => {
            return Err(PreprocessError::invalid(
                name,
                format!("a depth .npy must be [H, W] or [1, H, W] in metres, got shape {other:?}"),
            ));
        }
    };
    if width == 0 || height == 0 {
        return Err(PreprocessError::invalid(name, "the depth map is empty"));
    }
    if let Some(i) = values.iter().position(|v| v.is_nan()) {
        return Err(PreprocessError::invalid(
            name,
            format!(
                "depth value at row {}, column {} is NaN (use 0 for unknown depth)",
                i / width,
                i % width
            ),
        ));
    }
    Ok(DepthMap {
        width,
        height,
        metres: values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disparity_follows_the_formula_and_clips() {
        let cfg = DepthConfig::default();
        let depth = DepthMap {
            width: 224,
            height: 224,
            metres: (0..224 * 224).map(|i| [2.0, 0.0, 0.001, 100.0][i % 4]).collect(),
        };
        let out = transform(&depth, &cfg);
        let k = 0.075 * 518.8579;
        assert!((out[0] - k / 2.0).abs() < 1e-4);
        assert_eq!(out[1], 0.0);
        assert!((out[2] - k / 0.01).abs() < 1e-2);
        assert!((out[3] - k / 50.0).abs() < 1e-5);
    }

    #[test]
    fn config_validation_names_keys() {
        let bad = DepthConfig {
            std: 0.0,
            min_depth_m: 5.0,
            max_depth_m: 1.0,
            ..DepthConfig::default()
        };
        let mut issues = crate::issues::Issues::new();
        bad.validate(&mut issues.scope("depth"));
        assert!(issues.iter().any(|e| e.path == "depth.min_depth_m"));
        assert!(
            issues
                .iter()
                .any(|e| e.path == "depth.mean" && e.message.contains("std"))
        );
    }
}
