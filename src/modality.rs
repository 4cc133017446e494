//! The six ImageBind modalities, named exactly as ImageBind names them.
//!
//! These names are part of the product contract: they appear on the command line, in config files, in model
//! manifests and in MQTT topics and payloads. A video file is `vision` input.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of ImageBind's modalities.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// Images and video clips (RGB), `[3, 2, 224, 224]` per clip.
    Vision,
    /// Text prompts, 77 CLIP BPE token ids.
    Text,
    /// Audio, 128 mel bins × 204 frames per 2 s clip.
    Audio,
    /// Depth maps as disparity, `[1, 224, 224]`.
    Depth,
    /// Thermal images, one channel, `[1, 224, 224]`.
    Thermal,
    /// Inertial measurements: accelerometer xyz + gyroscope xyz, `[6, 2000]`.
    Imu,
}

impl Modality {
    /// All modalities in ImageBind's order.
    pub const ALL: [Modality; 6] = [
        Modality::Vision,
        Modality::Text,
        Modality::Audio,
        Modality::Depth,
        Modality::Thermal,
        Modality::Imu,
    ];

    /// The contract name (`vision`, `text`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Vision => "vision",
            Modality::Text => "text",
            Modality::Audio => "audio",
            Modality::Depth => "depth",
            Modality::Thermal => "thermal",
            Modality::Imu => "imu",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that names no modality.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown modality {0:?}; expected one of vision, text, audio, depth, thermal, imu")]
pub struct UnknownModality(pub String);

impl FromStr for Modality {
    type Err = UnknownModality;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Modality::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownModality(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modality_names_round_trip() {
        for m in Modality::ALL {
            assert_eq!(m.as_str().parse::<Modality>(), Ok(m));
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert!("video".parse::<Modality>().is_err());
    }
}
