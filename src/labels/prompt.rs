//! The `[[prompts]]` entries: what a label listens for, its thresholds and event overrides, and the checks
//! shared by the configuration file and `prompts/set` updates.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::{self, EventsConfig};
use crate::issues::Scope;
use crate::modality::Modality;
use crate::util::is_slug;

/// One label: a prompt (or several phrasings of it) scored against windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// Label id used in messages and topics: lower-case letters, digits, `_` and `-`; unique.
    pub id: String,
    /// The prompt.
    #[serde(default)]
    pub text: Option<String>,
    /// Several phrasings, ensembled as CLIP does: each embedding normalised, averaged, normalised again (at the text
    /// tower's scale), so two phrasings score like one.
    #[serde(default)]
    pub texts: Vec<String>,
    /// Modalities it applies to (default: every modality of the sources it applies to).
    #[serde(default)]
    pub modalities: Vec<Modality>,
    /// Sources it applies to (default: all).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Score (softmax probability among the applicable prompts) at or above which the label is active; the onset
    /// threshold of its events.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// An active event stays on while the aggregated score is at least this (default: 0.8 × `threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_threshold: Option<f32>,
    /// Overrides `events.aggregate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<events::Aggregate>,
    /// Overrides `events.aggregate_windows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_windows: Option<usize>,
    /// Overrides `events.onset_k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset_k: Option<usize>,
    /// Overrides `events.onset_n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset_n: Option<usize>,
    /// Overrides `events.hold_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<f64>,
    /// Overrides `events.cooldown_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_secs: Option<f64>,
    /// Overrides `events.max_event_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_secs: Option<f64>,
    /// Home Assistant `device_class` of the label's binary sensor (default by modality: `sound` for audio,
    /// `motion` for IMU, `occupancy` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// `label` (default): scored, with events, label states and Home Assistant entities. `background`: takes part in
    /// the softmax of the windows it applies to ("silence", "an empty room") and never produces events, states,
    /// retained topics or entities.
    #[serde(default, skip_serializing_if = "PromptRole::is_label")]
    pub role: PromptRole,
    /// How the score is computed (docs/prompts.md): `softmax` (default; ImageBind's zero-shot probability among the
    /// applicable prompts, background prompts included), `cosine` (the raw cosine similarity, -1…1, thresholded
    /// directly) or `zscore` (the cosine standardised by running statistics per sensor and prompt, kept in the
    /// state directory; no event before `labels.zscore_warmup_windows` windows). `threshold` is on that scale.
    #[serde(default, skip_serializing_if = "ScoreMode::is_softmax")]
    pub mode: ScoreMode,
    /// Media files that define the label besides (or instead of) its texts: each is embedded once by its own
    /// modality's tower (cached by content hash) and is one more part of the ensemble. A path (relative to the
    /// configuration file), `{ path, modality }`, or over `prompts/set` `{ base64, name }` (docs/prompts.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exemplars: Vec<super::exemplar::ExemplarSpec>,
    /// Put the texts into `[labels] templates` (default true; no effect while templates are off).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub templates: bool,
    /// Overrides of `[evidence]` for this prompt's events (`enabled`, `pre_secs`, `post_secs`, `max_clip_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<crate::evidence::EvidenceOverride>,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

/// What a prompt is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptRole {
    /// A label: events, states, entities.
    #[default]
    Label,
    /// Only part of the softmax of the windows it applies to.
    Background,
}

impl PromptRole {
    /// True for [`PromptRole::Label`].
    pub fn is_label(&self) -> bool {
        *self == Self::Label
    }
}

/// How a label's score is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScoreMode {
    /// Softmax probability among the applicable prompts (0…1).
    #[default]
    Softmax,
    /// Raw cosine similarity (-1…1).
    Cosine,
    /// Cosine standardised by running per-(sensor, prompt) statistics (standard deviations).
    Zscore,
}

impl ScoreMode {
    /// True for [`ScoreMode::Softmax`].
    pub fn is_softmax(&self) -> bool {
        *self == Self::Softmax
    }

    /// The values a threshold may take in this mode.
    pub fn threshold_range(self) -> std::ops::RangeInclusive<f32> {
        match self {
            Self::Softmax => 0.0..=1.0,
            Self::Cosine => -1.0..=1.0,
            Self::Zscore => -50.0..=50.0,
        }
    }

    /// The name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Softmax => "softmax",
            Self::Cosine => "cosine",
            Self::Zscore => "zscore",
        }
    }
}

fn default_threshold() -> f32 {
    0.5
}

impl PromptConfig {
    /// A prompt with one phrasing and every other key at its default.
    pub fn new(id: &str, text: &str) -> Self {
        Self {
            id: id.to_owned(),
            text: Some(text.to_owned()),
            texts: Vec::new(),
            modalities: Vec::new(),
            sources: Vec::new(),
            threshold: default_threshold(),
            off_threshold: None,
            aggregate: None,
            aggregate_windows: None,
            onset_k: None,
            onset_n: None,
            hold_secs: None,
            cooldown_secs: None,
            max_event_secs: None,
            device_class: None,
            role: PromptRole::Label,
            mode: ScoreMode::Softmax,
            exemplars: Vec::new(),
            templates: true,
            evidence: None,
        }
    }

    /// A background prompt for `modalities`.
    pub fn background(id: &str, text: &str, modalities: &[Modality]) -> Self {
        Self {
            modalities: modalities.to_vec(),
            role: PromptRole::Background,
            ..Self::new(id, text)
        }
    }

    /// All phrasings of the prompt.
    pub fn all_texts(&self) -> Vec<String> {
        self.text.iter().cloned().chain(self.texts.iter().cloned()).collect()
    }

    /// Whether the prompt applies to a window of `modality` from `source`.
    pub fn applies_to(&self, modality: Modality, source: &str) -> bool {
        (self.modalities.is_empty() || self.modalities.contains(&modality))
            && (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
    }

    /// The off threshold (default: 0.8 × `threshold` for softmax; `threshold` − 0.05 for cosine; `threshold` − 1
    /// for zscore).
    pub fn off(&self) -> f32 {
        self.off_threshold.unwrap_or(match self.mode {
            ScoreMode::Softmax => self.threshold * 0.8,
            ScoreMode::Cosine => self.threshold - 0.05,
            ScoreMode::Zscore => self.threshold - 1.0,
        })
    }

    /// The event parameters of this prompt: its own keys over the `[events]` defaults.
    pub fn event_params(&self, d: &EventsConfig) -> events::EventParams {
        let secs = events::duration_from_secs;
        events::EventParams {
            aggregate: self.aggregate.unwrap_or(d.aggregate),
            aggregate_windows: self.aggregate_windows.unwrap_or(d.aggregate_windows),
            onset_k: self.onset_k.unwrap_or(d.onset_k),
            onset_n: self.onset_n.unwrap_or(d.onset_n),
            hold: secs(self.hold_secs.unwrap_or(d.hold_secs)),
            cooldown: secs(self.cooldown_secs.unwrap_or(d.cooldown_secs)),
            max_event: secs(self.max_event_secs.unwrap_or(d.max_event_secs)),
            ..d.params(self.threshold, self.off())
        }
    }
}

/// Home Assistant's binary_sensor device classes (`BinarySensorDeviceClass` in Home Assistant 2025.4): a
/// label's `device_class` must be one of them, or Home Assistant drops the label's entity at every discovery.
pub const HA_BINARY_SENSOR_DEVICE_CLASSES: [&str; 28] = [
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
];

/// Checks one prompt's values against the sources; keys are relative to the prompt (`id`, `text`,
/// `sources[1]`, …) under `issues`' scope. Used for the configuration file and for `prompts/set` updates alike.
/// `source_names` lists every configured sensor name; `sources` the sensors whose modality is known.
pub fn check_prompt(
    pr: &PromptConfig,
    events: &EventsConfig,
    sources: &[(String, Modality)],
    source_names: &[String],
    issues: &mut Scope<'_>,
) {
    if !is_slug(&pr.id) {
        issues.push(
            "id",
            format!("{:?} is not a valid id: use [a-z0-9_-], at most 64 characters", pr.id),
        );
    }
    if pr.id.starts_with("_background-") {
        issues.push(
            "id",
            "ids starting with _background- are reserved for the shipped background prompts",
        );
    }
    check_texts(&pr.all_texts(), !pr.exemplars.is_empty(), issues);
    if pr.exemplars.len() > 16 {
        issues.push("exemplars", format!("{} exemplars; at most 16", pr.exemplars.len()));
    }
    for (j, e) in pr.exemplars.iter().enumerate() {
        if let Err(why) = e.check() {
            issues.push(&format!("exemplars[{j}]"), why);
        }
    }
    let range = pr.mode.threshold_range();
    let (lo, hi, mode) = (range.start(), range.end(), pr.mode.as_str());
    if !range.contains(&pr.threshold) {
        issues.push(
            "threshold",
            format!("must be between {lo} and {hi} in mode {mode}, got {}", pr.threshold),
        );
    }
    if let Some(off) = pr.off_threshold
        && !range.contains(&off)
    {
        issues.push(
            "off_threshold",
            format!("must be between {lo} and {hi} in mode {mode}, got {off}"),
        );
    }
    if range.contains(&pr.threshold)
        && pr.off_threshold.is_none_or(|o| range.contains(&o))
        && let Err(e) = pr.event_params(events).validate_in(range.clone())
    {
        issues.push("threshold", e);
    }
    if let Some(e) = &pr.evidence {
        for (key, v) in [
            ("pre_secs", e.pre_secs),
            ("post_secs", e.post_secs),
            ("max_clip_secs", e.max_clip_secs),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0 && *v <= 3600.0)) {
                issues.push(
                    &format!("evidence.{key}"),
                    format!("must be between 0 and 3600 seconds, got {v}"),
                );
            }
        }
    }
    if pr.role == PromptRole::Background && pr.device_class.is_some() {
        issues.push("device_class", "a background prompt has no Home Assistant entity");
    }
    for (key, v) in [
        ("hold_secs", pr.hold_secs),
        ("cooldown_secs", pr.cooldown_secs),
        ("max_event_secs", pr.max_event_secs),
    ] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0 && *v <= 86_400.0)) {
            issues.push(key, format!("must be between 0 and 86400 seconds, got {v}"));
        }
    }
    if let Some(dc) = &pr.device_class
        && !HA_BINARY_SENSOR_DEVICE_CLASSES.contains(&dc.as_str())
    {
        issues.push(
            "device_class",
            format!(
                "{dc:?} is not a Home Assistant binary_sensor device class; use one of {}",
                HA_BINARY_SENSOR_DEVICE_CLASSES.join(", ")
            ),
        );
    }
    for (j, s) in pr.sources.iter().enumerate() {
        if !source_names.iter().any(|n| n == s) {
            issues.push(&format!("sources[{j}]"), format!("no source is named {s:?}"));
        }
    }
    let reachable = sources.iter().any(|(name, m)| pr.applies_to(*m, name));
    if !sources.is_empty() && !reachable && sources.len() == source_names.len() {
        issues.push("modalities", "applies to no configured source");
    }
}

fn check_texts(texts: &[String], has_exemplars: bool, issues: &mut Scope<'_>) {
    if texts.is_empty() && !has_exemplars {
        issues.push("text", "needs text, texts or exemplars");
    }
    if texts.len() > 16 {
        issues.push("texts", format!("{} phrasings; at most 16", texts.len()));
    }
    for (j, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            issues.push("text", format!("text {j} is empty"));
        }
        if t.len() > 2000 {
            issues.push(
                "text",
                format!("text {j} is {} bytes long; keep prompts under 2000", t.len()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issues::Issues;

    fn problems(pr: &PromptConfig) -> Vec<(String, String)> {
        let mut issues = Issues::new();
        let sources = [("mic0".to_owned(), Modality::Audio)];
        check_prompt(
            pr,
            &EventsConfig::default(),
            &sources,
            &["mic0".to_owned()],
            &mut issues.scope(""),
        );
        issues.into_vec().into_iter().map(|i| (i.path, i.message)).collect()
    }

    #[test]
    fn issue_12_device_class_must_be_a_home_assistant_binary_sensor_class() {
        let ok = PromptConfig {
            device_class: Some("sound".into()),
            ..PromptConfig::new("glass", "glass breaking")
        };
        assert!(problems(&ok).is_empty(), "{:?}", problems(&ok));
        // A slug that Home Assistant does not know: it would drop the entity at every discovery.
        let bad = PromptConfig {
            device_class: Some("glass_break".into()),
            ..ok.clone()
        };
        let p = problems(&bad);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "device_class");
        assert!(p[0].1.contains("glass_break") && p[0].1.contains("sound"), "{}", p[0].1);
    }

    #[test]
    fn prompt_event_params_override_the_events_section() {
        let d = EventsConfig::default();
        let pr = PromptConfig {
            hold_secs: Some(2.0),
            onset_k: Some(1),
            ..PromptConfig::new("a", "a")
        };
        let p = pr.event_params(&d);
        assert_eq!(p.hold, std::time::Duration::from_secs(2));
        assert_eq!(p.onset_k, 1);
        assert_eq!(p.onset_n, d.onset_n);
        assert!((p.on - 0.5).abs() < 1e-6 && (p.off - 0.4).abs() < 1e-6);
        assert_eq!(p.update_interval, events::duration_from_secs(d.update_interval_secs));
    }
}
