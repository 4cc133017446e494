//! `type = "synthetic"`: deterministic test signals for every modality, no hardware or files needed.
//!
//! | modality | signal | default rate |
//! |---|---|---|
//! | vision | colour bars scrolling one bar per second | 15 frames/s |
//! | audio | a sine at `frequency_hz`, −12 dBFS, in 20 ms blocks | 16000 samples/s |
//! | depth | a wall at 3 m with a box at 1.5 m sliding across | 10 frames/s |
//! | thermal | 16-bit background with a warm blob circling | 10 frames/s |
//! | imu | gravity on z plus a `frequency_hz` oscillation on x and a rotation on z | 400 samples/s |
//! | text | `texts`, cycled | 1 line/s |

use std::sync::Arc;
use std::time::Duration;

use super::config::SyntheticSourceConfig;
use super::{FrameImage, Pacer, Sample, Source, SourceError, SourceOutput, StopFlag};
use crate::clock;
use crate::modality::Modality;
use crate::preprocess::depth::DepthMap;
use crate::preprocess::image::{GrayImage, RgbImage};

/// A synthetic source.
#[derive(Debug)]
pub struct SyntheticSource {
    config: SyntheticSourceConfig,
    rate_hz: f64,
}

impl SyntheticSource {
    /// From its configuration.
    pub fn new(config: SyntheticSourceConfig) -> Self {
        let rate_hz = config.rate_hz.unwrap_or(match config.modality {
            Modality::Vision => 15.0,
            Modality::Audio => 16000.0,
            Modality::Depth | Modality::Thermal => 10.0,
            Modality::Imu => 400.0,
            Modality::Text => 1.0,
        });
        Self { config, rate_hz }
    }

    fn sample(&self, i: u64) -> Sample {
        let t_secs = i as f64 / self.rate_hz;
        let (w, h) = (self.config.width, self.config.height);
        let t = clock::now();
        match self.config.modality {
            Modality::Vision => {
                let bars: [[u8; 3]; 8] = [
                    [255, 255, 255],
                    [255, 255, 0],
                    [0, 255, 255],
                    [0, 255, 0],
                    [255, 0, 255],
                    [255, 0, 0],
                    [0, 0, 255],
                    [0, 0, 0],
                ];
                let shift = (t_secs * w as f64 / 8.0) as usize;
                let mut planes = [vec![0u8; w * h], vec![0u8; w * h], vec![0u8; w * h]];
                for x in 0..w {
                    let bar = bars[((x + shift) * 8 / w.max(1)) % 8];
                    for y in 0..h {
                        for c in 0..3 {
                            planes[c][y * w + x] = bar[c];
                        }
                    }
                }
                Sample::Frame {
                    t,
                    image: FrameImage::Rgb(Arc::new(RgbImage {
                        width: w,
                        height: h,
                        planes,
                    })),
                }
            }
            Modality::Depth => {
                let box_x = ((t_secs * 0.25).fract() * w as f64) as usize;
                let mut metres = vec![3.0f32; w * h];
                for y in h / 3..2 * h / 3 {
                    for x in box_x..(box_x + w / 4).min(w) {
                        metres[y * w + x] = 1.5;
                    }
                }
                Sample::Frame {
                    t,
                    image: FrameImage::Depth(Arc::new(DepthMap {
                        width: w,
                        height: h,
                        metres,
                    })),
                }
            }
            Modality::Thermal => {
                let angle = t_secs * 2.0 * std::f64::consts::PI * 0.2;
                let (cx, cy) = (
                    w as f64 * (0.5 + 0.3 * angle.cos()),
                    h as f64 * (0.5 + 0.3 * angle.sin()),
                );
                let r2 = (w.min(h) as f64 / 6.0).powi(2);
                let samples = (0..w * h)
                    .map(|i| {
                        let (x, y) = ((i % w) as f64, (i / w) as f64);
                        let d2 = (x - cx).powi(2) + (y - cy).powi(2);
                        (20_000.0 + 2_000.0 * (-d2 / r2).exp()) as u16
                    })
                    .collect();
                Sample::Frame {
                    t,
                    image: FrameImage::Gray(Arc::new(GrayImage {
                        width: w,
                        height: h,
                        bit_depth: 16,
                        samples,
                    })),
                }
            }
            Modality::Imu => {
                let phase = 2.0 * std::f64::consts::PI * self.config.frequency_hz * t_secs;
                let values = [
                    (2.0 * phase.sin()) as f32,
                    (0.5 * (2.0 * phase).sin()) as f32,
                    (9.81 + 0.8 * phase.cos()) as f32,
                    (0.3 * phase.cos()) as f32,
                    0.0,
                    0.2,
                ];
                Sample::Imu { t, values }
            }
            Modality::Text => {
                let texts = &self.config.texts;
                let text = texts.get(i as usize % texts.len().max(1)).cloned().unwrap_or_default();
                Sample::Text { t, text }
            }
            Modality::Audio => Sample::Audio {
                t,
                rate_hz: self.rate_hz as u32,
                samples: Vec::new(),
            },
        }
    }
}

impl Source for SyntheticSource {
    fn run(&mut self, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), SourceError> {
        let pacer = Pacer::new();
        if self.config.modality == Modality::Audio {
            let rate = self.rate_hz.round() as u32;
            let block = (rate / 50).max(1) as usize;
            let amplitude = 10f32.powf(-12.0 / 20.0);
            let step = 2.0 * std::f64::consts::PI * self.config.frequency_hz / f64::from(rate);
            let mut n: u64 = 0;
            loop {
                if pacer.wait_until(Duration::from_secs_f64(n as f64 / f64::from(rate)), stop) {
                    return Ok(());
                }
                let samples = (0..block as u64)
                    .map(|k| amplitude * ((n + k) as f64 * step).sin() as f32)
                    .collect();
                out.push(Sample::Audio {
                    t: clock::now(),
                    rate_hz: rate,
                    samples,
                });
                n += block as u64;
            }
        }
        let mut i: u64 = 0;
        loop {
            if pacer.wait_until(Duration::from_secs_f64(i as f64 / self.rate_hz), stop) {
                return Ok(());
            }
            out.push(self.sample(i));
            i += 1;
        }
    }
}
