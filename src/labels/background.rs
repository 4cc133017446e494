//! Background prompts and the `[labels]` section.
//!
//! A softmax over the prompts that apply to a window always sums to 1: with a single prompt it scores 1 whatever
//! the window. Background prompts give that probability somewhere else to go. The shipped sets below are added to
//! every modality that has a source (`labels.default_background = true`, the default); a `[[prompts]]` entry with
//! `role = "background"` adds one of the user's own. Neither ever produces events, label states, retained topics
//! or Home Assistant entities.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PromptConfig;
use super::templates::TemplatesConfig;
use crate::issues::Scope;
use crate::modality::Modality;

/// `[labels]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    /// Add the shipped background prompts of each source modality (docs/prompts.md lists them).
    #[serde(default = "yes")]
    pub default_background: bool,
    /// `zscore` prompts: windows of a (sensor, prompt) observed before its score counts (until then it is 0 and no
    /// event starts).
    #[serde(default = "default_warmup")]
    pub zscore_warmup_windows: u64,
    /// `zscore` prompts: how many recent windows the running mean and variance remember (an exponential average
    /// once this many were seen).
    #[serde(default = "default_memory")]
    pub zscore_memory_windows: u64,
    /// Prompt templates per modality (docs/prompts.md): `false` (default) scores the texts as written, `true`
    /// the shipped sets ("the sound of {}." for audio windows, "a photo of {}." for vision, ...), or a table of
    /// templates per modality, `{}` standing for the text.
    #[serde(default, skip_serializing_if = "TemplatesConfig::is_off")]
    pub templates: TemplatesConfig,
}

fn yes() -> bool {
    true
}

fn default_warmup() -> u64 {
    50
}

fn default_memory() -> u64 {
    1000
}

impl Default for LabelsConfig {
    fn default() -> Self {
        Self {
            default_background: true,
            zscore_warmup_windows: default_warmup(),
            zscore_memory_windows: default_memory(),
            templates: TemplatesConfig::default(),
        }
    }
}

impl LabelsConfig {
    /// Value checks.
    pub fn validate(&self, issues: &mut Scope<'_>) {
        if !(2..=1_000_000).contains(&self.zscore_warmup_windows) {
            issues.push(
                "zscore_warmup_windows",
                format!("must be between 2 and 1000000, got {}", self.zscore_warmup_windows),
            );
        }
        if !(2..=10_000_000).contains(&self.zscore_memory_windows) {
            issues.push(
                "zscore_memory_windows",
                format!("must be between 2 and 10000000, got {}", self.zscore_memory_windows),
            );
        }
        self.templates.validate(issues);
    }

    /// The shipped background prompts for `modalities` (none when `default_background` is off).
    pub fn background(&self, modalities: &BTreeSet<Modality>) -> Vec<PromptConfig> {
        if !self.default_background {
            return Vec::new();
        }
        modalities
            .iter()
            .flat_map(|&m| {
                shipped(m)
                    .iter()
                    .enumerate()
                    .map(move |(i, text)| PromptConfig::background(&format!("_background-{m}-{i}"), text, &[m]))
            })
            .collect()
    }
}

/// The shipped background phrasings of a modality.
pub fn shipped(modality: Modality) -> &'static [&'static str] {
    match modality {
        Modality::Audio => &["silence", "background noise", "a quiet room with a faint hum"],
        Modality::Vision => &["an empty room", "a plain wall", "a dark, empty scene"],
        Modality::Depth => &["an empty room", "a flat wall"],
        Modality::Thermal => &["an empty room at room temperature", "a plain wall"],
        Modality::Imu => &["a device lying still", "a device resting on a table"],
        Modality::Text => &["an unrelated message"],
    }
}
