//! Gates: skip windows that did not change (Frigate gates audio on volume and video on motion).
//!
//! A source's window stage asks its [`Gate`] about each window it cuts. The gate compares the window with the
//! *reference*, the last window it let through (the last one sent to be embedded):
//!
//! | modality | measure | gated when |
//! |---|---|---|
//! | audio | [`dbfs`]: RMS level, dB full scale | this window and the reference are both below `min_dbfs` |
//! | vision, depth, thermal | [`frame_diff`]: mean absolute difference of the frames | below `min_frame_diff` |
//! | imu | [`imu_variance`]: the largest per-channel variance | this window and the reference are both below `min_imu_variance` |
//!
//! Level and variance gate on *both* windows being quiet, so that the first quiet window after a loud one is
//! embedded (the labels follow the scene into silence) and only the quiet windows after it reuse its embedding.
//! The first window is never gated. A gated window still goes to the encoder worker, marked with the sequence
//! number of its reference; the worker reuses the source's last embedding only when it embedded that reference (or
//! a later window), and otherwise encodes the window itself.
//!
//! The gate runs on the window stage's thread, after the capture thread: measuring never blocks capture.

use super::{RawWindow, RawWindowData};
use crate::sources::FrameImage;
pub use crate::sources::config::GateConfig;

/// RMS level of `samples` in dB full scale (a full-scale square wave is 0 dB, a full-scale sine about -3 dB);
/// silence and an empty slice are `-inf`.
pub fn dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    10.0 * (energy / samples.len() as f64).log10()
}

/// Mean absolute difference between two frames as a fraction: of full scale for colour (255) and single-channel
/// images (the larger bit depth's maximum), of `b`'s mean depth for depth maps (over pixels known in both). `None`
/// when the frames cannot be compared (other size or kind, no known depth): such frames count as changed.
pub fn frame_diff(a: &FrameImage, b: &FrameImage) -> Option<f64> {
    match (a, b) {
        (FrameImage::Rgb(a), FrameImage::Rgb(b)) => {
            if (a.width, a.height) != (b.width, b.height) || a.width * a.height == 0 {
                return None;
            }
            let mut sum = 0u64;
            for (pa, pb) in a.planes.iter().zip(b.planes.iter()) {
                sum += pa.iter().zip(pb).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum::<u64>();
            }
            Some(sum as f64 / (3 * a.width * a.height) as f64 / 255.0)
        }
        (FrameImage::Gray(a), FrameImage::Gray(b)) => {
            if (a.width, a.height) != (b.width, b.height) || a.samples.is_empty() {
                return None;
            }
            let bits = a.bit_depth.max(b.bit_depth).clamp(1, 16);
            let full = f64::from((1u32 << bits) - 1);
            let sum: u64 = a
                .samples
                .iter()
                .zip(&b.samples)
                .map(|(&x, &y)| u64::from(x.abs_diff(y)))
                .sum();
            Some(sum as f64 / a.samples.len() as f64 / full)
        }
        (FrameImage::Depth(a), FrameImage::Depth(b)) => {
            if (a.width, a.height) != (b.width, b.height) {
                return None;
            }
            let known = |v: f32| v.is_finite() && v > 0.0;
            let (mut diff, mut depth, mut n) = (0.0f64, 0.0f64, 0usize);
            for (&x, &y) in a.metres.iter().zip(&b.metres) {
                if known(x) && known(y) {
                    diff += f64::from((x - y).abs());
                    depth += f64::from(y);
                    n += 1;
                }
            }
            (n > 0 && depth > 0.0).then(|| diff / depth)
        }
        _ => None,
    }
}

/// The largest variance (population) of the six IMU channels over a window: acc in (m/s²)², gyro in (rad/s)².
/// Zero for fewer than two readings.
pub fn imu_variance(values: &[[f32; 6]]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let n = values.len() as f64;
    (0..6)
        .map(|c| {
            let mean = values.iter().map(|v| f64::from(v[c])).sum::<f64>() / n;
            values.iter().map(|v| (f64::from(v[c]) - mean).powi(2)).sum::<f64>() / n
        })
        .fold(0.0, f64::max)
}

/// What the gate remembers of the last window it let through.
#[derive(Debug)]
struct Reference {
    seq: u64,
    /// Below the level or variance threshold (audio, imu).
    quiet: bool,
    /// Its frames (vision: two, depth/thermal: one).
    frames: Vec<FrameImage>,
}

/// One source's gate (see the module docs).
#[derive(Debug)]
pub struct Gate {
    config: GateConfig,
    reference: Option<Reference>,
}

impl Gate {
    /// A gate with these thresholds.
    pub fn new(config: GateConfig) -> Self {
        Self {
            config,
            reference: None,
        }
    }

    /// Decides on window `seq`: `Some(reference seq)` when it is unchanged since the reference window (gated),
    /// `None` when it must be embedded — it then becomes the reference.
    pub fn check(&mut self, raw: &RawWindow, seq: u64) -> Option<u64> {
        let (quiet, frames) = self.measure(&raw.data);
        if let Some(r) = &self.reference {
            let unchanged = match (&raw.data, self.config.min_frame_diff) {
                (RawWindowData::Clip(_) | RawWindowData::Frame(_), Some(min)) => {
                    !frames.is_empty()
                        && frames.len() == r.frames.len()
                        && frames
                            .iter()
                            .zip(&r.frames)
                            .map(|(a, b)| frame_diff(a, b))
                            .sum::<Option<f64>>()
                            .is_some_and(|total| total / (frames.len() as f64) < min)
                }
                _ => quiet && r.quiet,
            };
            if unchanged {
                return Some(r.seq);
            }
        }
        self.reference = Some(Reference { seq, quiet, frames });
        None
    }

    /// Whether the window is quiet (audio, imu) and the frames to keep (vision, depth, thermal).
    fn measure(&self, data: &RawWindowData) -> (bool, Vec<FrameImage>) {
        match data {
            RawWindowData::Audio { samples, .. } => {
                let quiet = self.config.min_dbfs.is_some_and(|min| dbfs(samples) < min);
                (quiet, Vec::new())
            }
            RawWindowData::Imu { values, .. } => {
                let quiet = self
                    .config
                    .min_imu_variance
                    .is_some_and(|min| imu_variance(values) < min);
                (quiet, Vec::new())
            }
            RawWindowData::Clip(frames) if self.config.min_frame_diff.is_some() => (false, frames.to_vec()),
            RawWindowData::Frame(frame) if self.config.min_frame_diff.is_some() => (false, vec![frame.clone()]),
            _ => (false, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::Timestamp;
    use crate::preprocess::depth::DepthMap;
    use crate::preprocess::image::{GrayImage, RgbImage};

    fn rgb(value: u8) -> FrameImage {
        FrameImage::Rgb(Arc::new(RgbImage {
            width: 4,
            height: 2,
            planes: [vec![value; 8], vec![value; 8], vec![value; 8]],
        }))
    }

    fn audio(amplitude: f32) -> RawWindow {
        let samples = (0..1600)
            .map(|i| amplitude * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        RawWindow {
            t0: Timestamp(0),
            t1: Timestamp(0),
            data: RawWindowData::Audio {
                rate_hz: 16_000,
                samples,
            },
        }
    }

    fn clip(value: u8) -> RawWindow {
        RawWindow {
            t0: Timestamp(0),
            t1: Timestamp(0),
            data: RawWindowData::Clip([rgb(value), rgb(value)]),
        }
    }

    #[test]
    fn dbfs_of_full_scale_square_is_zero_and_of_silence_minus_infinity() {
        assert!(dbfs(&[1.0, -1.0, 1.0, -1.0]).abs() < 1e-12);
        assert!((dbfs(&[0.1, -0.1]) + 20.0).abs() < 1e-5, "0.1 is -20 dB");
        let sine: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin()).collect();
        assert!((dbfs(&sine) + 3.0103).abs() < 0.01, "{}", dbfs(&sine));
        assert_eq!(dbfs(&[0.0; 10]), f64::NEG_INFINITY);
        assert_eq!(dbfs(&[]), f64::NEG_INFINITY);
    }

    #[test]
    fn frame_diff_is_a_fraction_of_full_scale_or_of_the_mean_depth() {
        assert_eq!(frame_diff(&rgb(10), &rgb(10)), Some(0.0));
        assert!((frame_diff(&rgb(0), &rgb(51)).unwrap() - 0.2).abs() < 1e-12);
        let gray = |bit_depth, v| {
            FrameImage::Gray(Arc::new(GrayImage {
                width: 2,
                height: 1,
                bit_depth,
                samples: vec![v, v],
            }))
        };
        assert!((frame_diff(&gray(16, 0), &gray(16, 65535)).unwrap() - 1.0).abs() < 1e-12);
        assert!((frame_diff(&gray(8, 0), &gray(8, 51)).unwrap() - 0.2).abs() < 1e-12);
        let depth = |m: Vec<f32>| {
            FrameImage::Depth(Arc::new(DepthMap {
                width: 2,
                height: 1,
                metres: m,
            }))
        };
        // 0.2 m off at 2 m: 10 %; the unknown pixel (0) is left out.
        let d = frame_diff(&depth(vec![2.2, 0.0]), &depth(vec![2.0, 5.0])).unwrap();
        assert!((d - 0.1).abs() < 1e-6, "{d}");
        assert_eq!(frame_diff(&depth(vec![0.0, 0.0]), &depth(vec![2.0, 5.0])), None);
        assert_eq!(frame_diff(&rgb(1), &gray(8, 1)), None, "other kinds are changed frames");
    }

    #[test]
    fn imu_variance_is_the_largest_channel_variance() {
        let still = vec![[0.0, 0.0, 9.81, 0.0, 0.0, 0.0]; 100];
        assert_eq!(imu_variance(&still), 0.0);
        let moving: Vec<[f32; 6]> = (0..100)
            .map(|i| [0.0, 0.0, 9.81, if i % 2 == 0 { 0.5 } else { -0.5 }, 0.0, 0.0])
            .collect();
        assert!((imu_variance(&moving) - 0.25).abs() < 1e-9);
        assert_eq!(imu_variance(&moving[..1]), 0.0);
    }

    #[test]
    fn audio_gate_needs_two_quiet_windows_and_never_gates_the_first() {
        let mut gate = Gate::new(GateConfig {
            min_dbfs: Some(-50.0),
            ..GateConfig::default()
        });
        assert_eq!(gate.check(&audio(0.0), 0), None, "the first window is never gated");
        assert_eq!(gate.check(&audio(0.0), 1), Some(0));
        assert_eq!(gate.check(&audio(0.001), 2), Some(0), "-60 dB is below -50");
        assert_eq!(gate.check(&audio(0.5), 3), None, "loud: embedded, the new reference");
        assert_eq!(
            gate.check(&audio(0.0), 4),
            None,
            "the first quiet window after a loud one is embedded"
        );
        assert_eq!(gate.check(&audio(0.0), 5), Some(4));
    }

    #[test]
    fn frame_gate_compares_with_the_last_embedded_window() {
        let mut gate = Gate::new(GateConfig {
            min_frame_diff: Some(0.02),
            ..GateConfig::default()
        });
        assert_eq!(gate.check(&clip(100), 0), None);
        assert_eq!(gate.check(&clip(100), 1), Some(0));
        assert_eq!(gate.check(&clip(103), 2), Some(0), "3/255 = 1.2 % < 2 %");
        assert_eq!(gate.check(&clip(106), 3), None, "6/255 from window 0: changed");
        assert_eq!(gate.check(&clip(107), 4), Some(3));
    }

    #[test]
    fn imu_gate_and_an_unset_key_never_gate() {
        let still = RawWindow {
            t0: Timestamp(0),
            t1: Timestamp(0),
            data: RawWindowData::Imu {
                time_s: vec![0.0, 0.1],
                values: vec![[0.0, 0.0, 9.81, 0.0, 0.0, 0.0]; 2],
                window_secs: 1.0,
            },
        };
        let mut gate = Gate::new(GateConfig {
            min_imu_variance: Some(1e-3),
            ..GateConfig::default()
        });
        assert_eq!(gate.check(&still, 0), None);
        assert_eq!(gate.check(&still, 1), Some(0));
        // A gate for another modality's key lets every window through.
        let mut audio_only = Gate::new(GateConfig {
            min_dbfs: Some(-50.0),
            ..GateConfig::default()
        });
        assert_eq!(audio_only.check(&clip(1), 0), None);
        assert_eq!(audio_only.check(&clip(1), 1), None);
        assert_eq!(audio_only.check(&still, 2), None);
    }
}
