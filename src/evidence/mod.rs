//! Event evidence: what a sensor saw around an event, kept on disk beside the event's messages.
//!
//! - [`history`]: one bounded ring per sensor of its last `history_secs` of raw samples (frames by `Arc`, never
//!   copied), capped in bytes; the window stage feeds it, so an event's clip can start before the event did.
//! - [`media`]: the file formats, written in-process: JPEG snapshots and MJPEG-in-AVI clips (vision), WAV (audio),
//!   false-colour and raw 16-bit PNGs (depth, thermal), CSV (IMU).
//! - [`store`]: one directory per event under the evidence root (`event.json` beside the media), retention by
//!   size and age, and the listing behind `sensebind evidence`.
//! - [`writer`]: the bounded job queue the controller fills and the `evidence-writer` thread that empties it.
//!
//! Overflow policy of the job queue: **skip the evidence** (the new job is refused and counted in
//! `evidence.skipped_total`); capture, scoring and the event messages never wait on the disk.

pub mod history;
pub mod media;
pub mod store;
pub mod writer;

use std::path::{Path, PathBuf};

use crate::modality::Modality;

/// The clip's file in an event directory, per modality (`None`: the modality has no evidence).
pub fn clip_name(modality: Modality) -> Option<&'static str> {
    match modality {
        Modality::Vision => Some("clip.avi"),
        Modality::Audio => Some("clip.wav"),
        Modality::Imu => Some("clip.csv"),
        Modality::Depth | Modality::Thermal => Some("clip/frames.csv"),
        Modality::Text => None,
    }
}

/// `[evidence]`: snapshots and clips around events (docs/evidence.md). Off by default.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// Write evidence for events (each prompt may override it).
    pub enabled: bool,
    /// Seconds of raw samples kept per sensor for pre-roll; at least `pre_secs + post_secs`.
    pub history_secs: f64,
    /// Most bytes one sensor's history holds; past it the oldest samples are dropped (counted).
    pub history_max_bytes: u64,
    /// Seconds before the event's start that its clip begins with.
    pub pre_secs: f64,
    /// The clip is written when the event ends or this long after its start, whichever comes first.
    pub post_secs: f64,
    /// Longest clip, pre-roll included.
    pub max_clip_secs: f64,
    /// Most bytes under the evidence root; the oldest events are deleted first.
    pub max_bytes: u64,
    /// Events older than this are deleted (0: no age limit).
    pub max_age_days: f64,
    /// The evidence root; empty: `{state_dir}/evidence`. Relative paths are taken from the configuration file.
    pub path: PathBuf,
    /// Frame rate of vision clips; 0: the camera's rate (from the median interval between its frames).
    pub clip_fps: f64,
    /// JPEG quality (1–100) of snapshots and clip frames.
    pub jpeg_quality: u8,
    /// Jobs waiting for the writer; when full, new evidence is skipped and counted.
    pub queue: usize,
    /// Modalities whose latest snapshot is published retained on `{prefix}/snapshot/{sensor}/{label}`.
    pub publish_snapshots: Vec<Modality>,
    /// Largest snapshot published over MQTT (larger ones are only written to disk, counted).
    pub snapshot_max_bytes: usize,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            history_secs: 20.0,
            history_max_bytes: 64 << 20,
            pre_secs: 3.0,
            post_secs: 10.0,
            max_clip_secs: 15.0,
            max_bytes: 1 << 30,
            max_age_days: 30.0,
            path: PathBuf::new(),
            clip_fps: 0.0,
            jpeg_quality: 80,
            queue: 16,
            publish_snapshots: vec![Modality::Vision],
            snapshot_max_bytes: 256 << 10,
        }
    }
}

/// A prompt's `evidence` table: overrides of `[evidence]` for that prompt's events.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceOverride {
    /// Overrides `evidence.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Overrides `evidence.pre_secs` (at most `evidence.history_secs - post_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_secs: Option<f64>,
    /// Overrides `evidence.post_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_secs: Option<f64>,
    /// Overrides `evidence.max_clip_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clip_secs: Option<f64>,
}

/// The evidence parameters of one prompt's events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvidenceParams {
    /// Evidence is written.
    pub enabled: bool,
    /// Pre-roll, seconds.
    pub pre_secs: f64,
    /// Clip written at the latest this long after the start, seconds.
    pub post_secs: f64,
    /// Longest clip, seconds.
    pub max_clip_secs: f64,
}

impl EvidenceConfig {
    /// The parameters with a prompt's overrides applied.
    pub fn params(&self, o: Option<&EvidenceOverride>) -> EvidenceParams {
        let o = o.cloned().unwrap_or_default();
        EvidenceParams {
            enabled: o.enabled.unwrap_or(self.enabled),
            pre_secs: o.pre_secs.unwrap_or(self.pre_secs),
            post_secs: o.post_secs.unwrap_or(self.post_secs),
            max_clip_secs: o.max_clip_secs.unwrap_or(self.max_clip_secs),
        }
    }

    /// True when any event may write evidence (the section, or any prompt, enables it).
    pub fn any_enabled<'a>(&self, overrides: impl IntoIterator<Item = Option<&'a EvidenceOverride>>) -> bool {
        self.enabled
            || overrides
                .into_iter()
                .any(|o| o.and_then(|o| o.enabled).unwrap_or(false))
    }

    /// The evidence root: `path` (relative to `base`), or `{state_dir}/evidence`.
    pub fn root(&self, base: &Path, state_dir: &Path) -> PathBuf {
        if self.path.as_os_str().is_empty() {
            state_dir.join("evidence")
        } else if self.path.is_absolute() {
            self.path.clone()
        } else {
            base.join(&self.path)
        }
    }

    /// Value checks of `[evidence]`.
    pub fn validate(&self, issues: &mut crate::issues::Scope<'_>) {
        let positive = [
            ("history_secs", self.history_secs),
            ("max_clip_secs", self.max_clip_secs),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
                issues.push(key, format!("must be a number of seconds in (0, 3600], got {v}"));
            }
        }
        self.params(None).validate(self.history_secs, issues);
        if !(self.max_age_days.is_finite() && self.max_age_days >= 0.0) {
            issues.push(
                "max_age_days",
                format!("must be 0 (no limit) or more, got {}", self.max_age_days),
            );
        }
        if !(self.clip_fps.is_finite() && (0.0..=240.0).contains(&self.clip_fps)) {
            issues.push(
                "clip_fps",
                format!("must be 0 (the camera's rate) up to 240, got {}", self.clip_fps),
            );
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            issues.push("jpeg_quality", format!("must be 1 to 100, got {}", self.jpeg_quality));
        }
        if !(1..=1024).contains(&self.queue) {
            issues.push("queue", format!("must be 1 to 1024 jobs, got {}", self.queue));
        }
        if self.history_max_bytes < 1 << 20 {
            issues.push(
                "history_max_bytes",
                format!("must be at least 1 MiB, got {}", self.history_max_bytes),
            );
        }
        if self.max_bytes < 64 << 10 {
            issues.push(
                "max_bytes",
                format!("must be at least 64 KiB (65536), got {}", self.max_bytes),
            );
        }
    }
}

impl EvidenceParams {
    /// Checks against the history length (the clip must fit in it).
    pub fn validate(&self, history_secs: f64, issues: &mut crate::issues::Scope<'_>) {
        for (key, v) in [("pre_secs", self.pre_secs), ("post_secs", self.post_secs)] {
            if !(v.is_finite() && v >= 0.0) {
                issues.push(key, format!("must be 0 or more seconds, got {v}"));
            }
        }
        if !(self.max_clip_secs.is_finite() && self.max_clip_secs > 0.0) {
            issues.push(
                "max_clip_secs",
                format!("must be more than 0 seconds, got {}", self.max_clip_secs),
            );
        }
        if self.pre_secs + self.post_secs > history_secs {
            issues.push(
                "pre_secs",
                format!(
                    "pre_secs + post_secs ({} s) must fit in evidence.history_secs ({history_secs} s)",
                    self.pre_secs + self.post_secs
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_overrides_apply() {
        let c = EvidenceConfig::default();
        let mut issues = crate::issues::Issues::default();
        c.validate(&mut issues.scope("evidence"));
        assert!(issues.is_empty(), "{issues:?}");
        let o = EvidenceOverride {
            enabled: Some(true),
            pre_secs: Some(1.0),
            ..EvidenceOverride::default()
        };
        let p = c.params(Some(&o));
        assert!(p.enabled);
        assert_eq!(p.pre_secs, 1.0);
        assert_eq!(p.post_secs, c.post_secs);
        assert!(c.any_enabled([Some(&o)]));
        assert!(!c.any_enabled([None]));
    }

    #[test]
    fn a_clip_longer_than_the_history_is_an_error_naming_the_key() {
        let c = EvidenceConfig {
            history_secs: 5.0,
            ..EvidenceConfig::default()
        };
        let mut issues = crate::issues::Issues::default();
        c.validate(&mut issues.scope("evidence"));
        let text = format!("{issues:?}");
        assert!(text.contains("evidence.pre_secs"), "{text}");
    }
}
