//! From configuration to running source: [`SourceConfig::build`] picks the driver for an entry and sizes its
//! ring. It lives apart from `sources::config` so that the drivers can read their config types without an
//! import cycle (config ← driver ← build).

use std::path::Path;

use super::config::SourceConfig;
use super::{Source, SourceError};
use crate::modality::Modality;
use crate::preprocess::PreprocessConfig;

/// What [`SourceConfig::build`] needs beyond the entry itself.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// The configuration file's folder: relative paths are resolved against it.
    pub base: &'a Path,
    /// Parameters of the depth, thermal and IMU preprocessing (replayed files are decoded with them).
    pub preprocess: &'a PreprocessConfig,
    /// `[runtime] ring_secs`: ring capacity in seconds of data.
    pub ring_secs: f64,
    /// `[runtime] ring_max_bytes`: upper bound of a frame ring.
    pub ring_max_bytes: u64,
}

/// A source ready to run on its thread, and the capacity its ring needs.
pub struct BuiltSource {
    /// The source.
    pub source: Box<dyn Source>,
    /// Ring capacity in samples.
    pub ring_capacity: usize,
}

impl SourceConfig {
    /// The running source for this entry, and its ring capacity.
    pub fn build(&self, cx: &BuildContext<'_>) -> Result<BuiltSource, SourceError> {
        let source: Box<dyn Source> = match self {
            SourceConfig::Replay(r) => {
                let paths = self.files(cx.base);
                Box::new(super::replay::ReplaySource::new(
                    &r.name,
                    r.modality,
                    &paths,
                    r.loop_playback,
                    r.rate_hz,
                    cx.preprocess.clone(),
                )?)
            }
            SourceConfig::Synthetic(s) => Box::new(super::synthetic::SyntheticSource::new(s.clone())),
            SourceConfig::Serial(s) => Box::new(super::serial::SerialImuSource::new(s.clone())),
            other => other.hardware_source()?,
        };
        Ok(BuiltSource {
            source,
            ring_capacity: self.ring_capacity(cx.ring_secs, cx.ring_max_bytes),
        })
    }

    /// The sources behind cargo features; a build without the feature refuses the source (the configuration
    /// check reports it first).
    fn hardware_source(&self) -> Result<Box<dyn Source>, SourceError> {
        #[allow(dead_code, reason = "used only by builds without some of the features")]
        fn missing(sc: &SourceConfig, feature: &str) -> SourceError {
            SourceError {
                source_name: sc.name().to_owned(),
                reason: format!("this build has no {feature} support (built without the `{feature}` feature)"),
            }
        }
        match self {
            #[cfg(feature = "v4l2")]
            SourceConfig::V4l2(c) => Ok(Box::new(super::v4l2::V4l2Source::new(c.clone()))),
            #[cfg(feature = "gstreamer")]
            SourceConfig::Gstreamer(c) => Ok(Box::new(super::gstreamer::GstreamerSource::new(c.clone())?)),
            #[cfg(feature = "microphone")]
            SourceConfig::Microphone(c) => Ok(Box::new(super::microphone::MicrophoneSource::new(c.clone()))),
            #[cfg(not(feature = "v4l2"))]
            SourceConfig::V4l2(_) => Err(missing(self, "v4l2")),
            #[cfg(not(feature = "gstreamer"))]
            SourceConfig::Gstreamer(_) => Err(missing(self, "gstreamer")),
            #[cfg(not(feature = "microphone"))]
            SourceConfig::Microphone(_) => Err(missing(self, "microphone")),
            SourceConfig::Replay(_) | SourceConfig::Synthetic(_) | SourceConfig::Serial(_) => Err(SourceError {
                source_name: self.name().to_owned(),
                reason: "not a hardware source".into(),
            }),
        }
    }

    /// Ring capacity in samples, from `ring_secs` and a nominal rate; frame rings are also bounded by
    /// `ring_max_bytes` assuming frames up to 1920×1080 RGB.
    pub fn ring_capacity(&self, ring_secs: f64, ring_max_bytes: u64) -> usize {
        let rate = match self {
            SourceConfig::Replay(r) => r.rate_hz,
            SourceConfig::Synthetic(c) => c.rate_hz,
            SourceConfig::Serial(c) => Some(c.rate_hz),
            SourceConfig::V4l2(c) => c.rate_hz,
            SourceConfig::Gstreamer(c) => c.rate_hz,
            SourceConfig::Microphone(_) => None,
        };
        let per_sec = match self.modality() {
            // Audio arrives in blocks of at least 5 ms.
            Modality::Audio => 200.0,
            Modality::Imu => rate.unwrap_or(1000.0).max(100.0),
            Modality::Text => rate.unwrap_or(1.0).max(10.0),
            Modality::Vision | Modality::Depth | Modality::Thermal => rate.unwrap_or(30.0).max(30.0),
        };
        let by_time = (ring_secs * per_sec).ceil() as usize;
        match self.modality() {
            Modality::Vision | Modality::Depth | Modality::Thermal => {
                by_time.min((ring_max_bytes / (1920 * 1080 * 3)).max(2) as usize)
            }
            _ => by_time,
        }
        .max(2)
    }
}
