//! Cross-modal fusion: one label seen by several sensors (`[[fusions]]`), e.g. "glass_break" on a microphone and a
//! camera. Each source's latest score of the label is kept with its time; the fused score at a moment is, over the
//! sources whose latest score is at most `within_secs` old,
//! - `all`: the lowest (a source without a recent score counts 0): every sensor agrees;
//! - `any`: the highest: one sensor suffices;
//! - `mean`: the mean (a source without a recent score counts 0).
//!
//! The fused score then goes through an ordinary [`crate::events::Tracker`] with the label's event parameters, so a
//! fused event starts when the rule holds for the sources' scores inside the time tolerance, with the same
//! hysteresis as any event. Pure and deterministic: the controller feeds it.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::issues::Scope;
use crate::util::is_slug;

/// The pseudo-sensor name fused events are published under: `events/fused/{id}`.
pub const FUSED: &str = "fused";

/// How the sources' scores combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FusionRule {
    /// Every source's recent score (the lowest).
    #[default]
    All,
    /// Any source's recent score (the highest).
    Any,
    /// The mean of the sources' recent scores.
    Mean,
}

/// `[[fusions]]`: one label over several sensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FusionConfig {
    /// Id of the fused label (its own label state and Home Assistant entity; events on `events/fused/{id}`):
    /// lower-case letters, digits, `_` and `-`; unique among prompts and fusions.
    pub id: String,
    /// The prompt id whose scores are fused.
    pub label: String,
    /// The sensors (at least two).
    pub sources: Vec<String>,
    /// How old a source's latest score may be to count, seconds.
    #[serde(default = "default_within")]
    pub within_secs: f64,
    /// `all` (default), `any` or `mean`.
    #[serde(default)]
    pub rule: FusionRule,
    /// Onset threshold of the fused score (default: the label's `threshold`, on the label's scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
}

fn default_within() -> f64 {
    2.0
}

impl FusionConfig {
    /// Checks of the entry alone; `prompts` are the label ids, `sources` the sensor names.
    pub fn validate(&self, prompts: &[String], sources: &[String], issues: &mut Scope<'_>) {
        if !is_slug(&self.id) {
            issues.push("id", format!("{:?} is not a valid id: use [a-z0-9_-]", self.id));
        }
        if prompts.contains(&self.id) {
            issues.push("id", format!("{:?} is already a prompt id", self.id));
        }
        if !prompts.contains(&self.label) {
            issues.push("label", format!("no prompt is named {:?}", self.label));
        }
        if self.sources.len() < 2 {
            issues.push("sources", "needs at least two sensors");
        }
        for (i, s) in self.sources.iter().enumerate() {
            if !sources.contains(s) {
                issues.push(&format!("sources[{i}]"), format!("no source is named {s:?}"));
            } else if self.sources[..i].contains(s) {
                issues.push(&format!("sources[{i}]"), format!("{s:?} appears twice"));
            }
        }
        if !(self.within_secs.is_finite() && self.within_secs > 0.0 && self.within_secs <= 3600.0) {
            issues.push(
                "within_secs",
                format!("must be above 0 and at most 3600, got {}", self.within_secs),
            );
        }
        if let Some(t) = self
            .threshold
            .filter(|t| !(t.is_finite() && (-50.0..=50.0).contains(t)))
        {
            issues.push("threshold", format!("must be between -50 and 50, got {t}"));
        }
    }
}

/// One fusion's latest score per source.
#[derive(Debug, Clone)]
pub struct Fusion {
    /// Its configuration.
    pub config: FusionConfig,
    latest: BTreeMap<String, (Duration, f32)>,
}

impl Fusion {
    /// Nothing seen yet.
    pub fn new(config: FusionConfig) -> Self {
        Self {
            config,
            latest: BTreeMap::new(),
        }
    }

    /// Whether a window of `source` scoring `label` feeds this fusion.
    pub fn takes(&self, source: &str, label: &str) -> bool {
        self.config.label == label && self.config.sources.iter().any(|s| s == source)
    }

    /// Records a source's score at `t` (monotonic time).
    pub fn observe(&mut self, source: &str, t: Duration, score: f32) {
        self.latest.insert(source.to_owned(), (t, score));
    }

    /// Forgets a source's score (it went offline or was restarted).
    pub fn forget(&mut self, source: &str) {
        self.latest.remove(source);
    }

    /// The fused score at `now`.
    pub fn score(&self, now: Duration) -> f32 {
        let within = Duration::from_secs_f64(self.config.within_secs.clamp(0.0, 3600.0));
        let recent: Vec<Option<f32>> = self
            .config
            .sources
            .iter()
            .map(|s| {
                self.latest
                    .get(s)
                    .filter(|(t, _)| now.saturating_sub(*t) <= within)
                    .map(|(_, v)| *v)
            })
            .collect();
        let n = recent.len().max(1) as f32;
        match self.config.rule {
            FusionRule::All => recent.iter().map(|v| v.unwrap_or(0.0)).reduce(f32::min).unwrap_or(0.0),
            FusionRule::Any => recent.iter().flatten().copied().fold(0.0, f32::max),
            FusionRule::Mean => recent.iter().map(|v| v.unwrap_or(0.0)).sum::<f32>() / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fusion(rule: FusionRule) -> Fusion {
        Fusion::new(FusionConfig {
            id: "glass".into(),
            label: "glass_break".into(),
            sources: vec!["mic0".into(), "cam0".into()],
            within_secs: 2.0,
            rule,
            threshold: None,
        })
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn all_needs_every_source_recently_any_one_mean_the_average() {
        let mut all = fusion(FusionRule::All);
        let mut any = fusion(FusionRule::Any);
        let mut mean = fusion(FusionRule::Mean);
        for f in [&mut all, &mut any, &mut mean] {
            f.observe("mic0", s(10.0), 0.9);
        }
        // cam0 has not scored: all = 0, any = 0.9, mean = 0.45.
        assert_eq!(all.score(s(10.0)), 0.0);
        assert_eq!(any.score(s(10.0)), 0.9);
        assert!((mean.score(s(10.0)) - 0.45).abs() < 1e-6);
        for f in [&mut all, &mut any, &mut mean] {
            f.observe("cam0", s(11.0), 0.7);
        }
        assert!((all.score(s(11.0)) - 0.7).abs() < 1e-6);
        assert!((mean.score(s(11.0)) - 0.8).abs() < 1e-6);
        // 2.5 s after mic0's score it no longer counts.
        assert_eq!(all.score(s(12.5)), 0.0);
        assert!((any.score(s(12.5)) - 0.7).abs() < 1e-6);
        assert!((mean.score(s(12.5)) - 0.35).abs() < 1e-6);
        assert!(all.takes("cam0", "glass_break") && !all.takes("cam1", "glass_break") && !all.takes("cam0", "x"));
    }

    #[test]
    fn entries_are_checked_with_their_key_paths() {
        let bad = FusionConfig {
            id: "walking".into(),
            label: "nope".into(),
            sources: vec!["mic0".into(), "mic0".into(), "cam9".into()],
            within_secs: 0.0,
            rule: FusionRule::Mean,
            threshold: Some(99.0),
        };
        let mut found = crate::issues::Issues::new();
        bad.validate(
            &["walking".into()],
            &["mic0".into(), "cam0".into()],
            &mut found.scope("fusions[0]"),
        );
        let paths: Vec<String> = found.iter().map(|i| i.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "fusions[0].id",
                "fusions[0].label",
                "fusions[0].sources[1]",
                "fusions[0].sources[2]",
                "fusions[0].within_secs",
                "fusions[0].threshold"
            ]
        );
    }
}
