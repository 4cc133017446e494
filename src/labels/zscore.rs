//! `zscore` prompts: a window's cosine standardised by the running statistics of that (sensor, prompt) — Frigate's
//! answer to raw similarities that drift and cluster: what counts is how unusual a window is for this sensor.
//!
//! Each (sensor, prompt) keeps a running mean and variance of its cosines: the exact mean and population variance
//! over the first `memory` windows, then an exponential average that remembers about `memory` windows. A window is
//! standardised against the statistics *before* it is added, so a sudden event is not damped by itself. Until
//! `warmup` windows were seen the score is `None` (0 in messages; no event starts).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The smallest standard deviation used (cosine units), so a sensor whose cosines never move does not divide by 0.
pub const MIN_STD: f64 = 1e-3;
/// Most (sensor, prompt) pairs tracked; beyond it the statistics of new pairs are not kept (their score stays
/// `None`) and a warning is logged once.
pub const MAX_PAIRS: usize = 16_384;

/// Running mean and variance of one (sensor, prompt)'s cosine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Running {
    /// Windows seen.
    pub n: u64,
    /// Mean cosine.
    pub mean: f64,
    /// Variance of the cosine.
    pub var: f64,
}

impl Running {
    /// Standard deviations of `x` from the mean (before `x` is observed).
    pub fn z(&self, x: f64) -> f64 {
        (x - self.mean) / self.var.sqrt().max(MIN_STD)
    }

    /// Adds a cosine; `memory`: windows remembered.
    pub fn observe(&mut self, x: f64, memory: u64) {
        if !x.is_finite() {
            return;
        }
        self.n = self.n.saturating_add(1);
        let alpha = 1.0 / self.n.min(memory.max(1)) as f64;
        let d = x - self.mean;
        self.mean += alpha * d;
        self.var = (1.0 - alpha) * (self.var + alpha * d * d);
    }
}

/// The statistics of every (sensor, prompt), keyed `sensor/prompt` (both are slugs without `/`).
#[derive(Debug, Clone, Default)]
pub struct ZScores {
    stats: BTreeMap<String, Running>,
    warned: bool,
}

impl ZScores {
    /// From what the state file kept.
    pub fn from_saved(saved: BTreeMap<String, Running>) -> Self {
        Self {
            stats: saved,
            warned: false,
        }
    }

    /// What to keep in the state file.
    pub fn saved(&self) -> &BTreeMap<String, Running> {
        &self.stats
    }

    fn key(sensor: &str, prompt: &str) -> String {
        format!("{sensor}/{prompt}")
    }

    /// The window's z-score (`None` while warming up), then adds its cosine to the statistics.
    pub fn standardise(&mut self, sensor: &str, prompt: &str, cosine: f32, warmup: u64, memory: u64) -> Option<f32> {
        let key = Self::key(sensor, prompt);
        if !self.stats.contains_key(&key) && self.stats.len() >= MAX_PAIRS {
            if !self.warned {
                tracing::warn!(
                    pairs = MAX_PAIRS,
                    "Too many (sensor, prompt) pairs in zscore mode; new ones score 0."
                );
                self.warned = true;
            }
            return None;
        }
        let r = self.stats.entry(key).or_default();
        let x = f64::from(cosine);
        let z = (r.n >= warmup).then(|| r.z(x) as f32);
        r.observe(x, memory);
        z.filter(|z| z.is_finite())
    }

    /// Forgets the statistics of a prompt (its text changed or it was deleted) on every sensor, or of a sensor.
    pub fn forget(&mut self, pred: impl Fn(&str, &str) -> bool) {
        self.stats.retain(|k, _| {
            let (s, p) = k.split_once('/').unwrap_or((k, ""));
            !pred(s, p)
        });
    }
}

/// A window's scores with its `zscore` labels standardised by `zscores` (score 0 and inactive while warming up;
/// active at `threshold_of(label)` standard deviations), re-sorted best first. Other labels are left as they are.
/// The controller applies it to every scored window of a sensor, and `sensebind label` to a recording's windows.
pub fn standardise_scores(
    zscores: &mut ZScores,
    sensor: &str,
    labels: &[super::LabelScore],
    threshold_of: impl Fn(&str) -> f32,
    warmup: u64,
    memory: u64,
) -> Vec<super::LabelScore> {
    let mut scores = labels.to_vec();
    if !scores.iter().any(|l| l.mode == super::ScoreMode::Zscore) {
        return scores;
    }
    for ls in scores.iter_mut().filter(|l| l.mode == super::ScoreMode::Zscore) {
        let threshold = threshold_of(&ls.label);
        let z = zscores.standardise(sensor, &ls.label, ls.cosine, warmup, memory);
        ls.score = z.unwrap_or(0.0);
        ls.active = z.is_some_and(|z| z >= threshold);
    }
    scores.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.label.cmp(&b.label)));
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_statistics_are_exact_until_the_memory_then_exponential() {
        let xs = [0.1, 0.2, 0.3, 0.4];
        let mut r = Running::default();
        for x in xs {
            r.observe(x, 100);
        }
        assert!((r.mean - 0.25).abs() < 1e-12);
        assert!((r.var - 0.0125).abs() < 1e-12, "population variance, {}", r.var);
        // With a memory of 2, old windows fade: the mean follows a level change.
        let mut r = Running::default();
        for _ in 0..50 {
            r.observe(0.1, 2);
        }
        for _ in 0..50 {
            r.observe(0.5, 2);
        }
        assert!((r.mean - 0.5).abs() < 1e-9);
    }

    #[test]
    fn no_score_during_warm_up_then_standard_deviations_before_the_window_counts() {
        let mut z = ZScores::default();
        for i in 0..10 {
            let c = if i % 2 == 0 { 0.20 } else { 0.22 };
            assert_eq!(z.standardise("mic0", "knock", c, 10, 1000), None);
        }
        // Mean 0.21, std 0.01: a window at 0.25 is 4 standard deviations out.
        let s = z.standardise("mic0", "knock", 0.25, 10, 1000).unwrap();
        assert!((s - 4.0).abs() < 1e-3, "{s}");
        // Statistics are per sensor.
        assert_eq!(z.standardise("mic1", "knock", 0.25, 10, 1000), None);
        z.forget(|s, _| s == "mic0");
        assert_eq!(z.standardise("mic0", "knock", 0.25, 10, 1000), None);
    }

    #[test]
    fn a_constant_cosine_does_not_divide_by_zero() {
        let mut z = ZScores::default();
        for _ in 0..5 {
            z.standardise("a", "b", 0.3, 2, 100);
        }
        let s = z.standardise("a", "b", 0.3, 2, 100).unwrap();
        assert_eq!(s, 0.0);
        let s = z.standardise("a", "b", 0.301, 2, 100).unwrap();
        assert!((s - 1.0).abs() < 1e-3, "{s}");
    }
}
