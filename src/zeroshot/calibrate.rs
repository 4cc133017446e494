//! `sensebind calibrate`: per-prompt thresholds for a target false-alarm rate, from recordings without events.
//!
//! Every window of the quiet recordings is scored as the daemon scores it ([`super::Bench::label_windows`]), and
//! each label's scores are replayed through the daemon's own event state machine ([`Tracker`], with the
//! prompt's aggregation, onset, hold and cooldown) at candidate thresholds. The threshold chosen is the lowest
//! candidate at which the replay starts no more events than the target allows (`per_hour` × the recordings'
//! hours, rounded down; 0 for recordings shorter than an hour at 1 per hour), so every event those recordings
//! start is a false alarm the threshold stays clear of. Candidates are the windows' own scores, just above each,
//! on a 0.001 grid (0.01 for `zscore`), so the threshold is as low as these recordings allow; higher ones are
//! scanned first and the scan stops below the first that starts too many events.

use std::time::Duration;

use serde::Serialize;

use crate::events::{EventsConfig, Tracker, TransitionKind};
use crate::labels::{PromptConfig, ScoreMode};

/// One label's scores over the windows of one recording: (window end in seconds, score on the mode's scale).
pub type Series = Vec<(f64, f32)>;

/// One label's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibrated {
    /// Label id.
    pub id: String,
    /// Score mode (the threshold's scale).
    pub mode: ScoreMode,
    /// The threshold it had.
    pub previous: f32,
    /// The calibrated threshold.
    pub threshold: f32,
    /// Events the recordings start at the previous threshold.
    pub events_before: usize,
    /// Events they start at the calibrated one.
    pub events_after: usize,
    /// Highest window score in the recordings.
    pub max_score: f32,
    /// False: even the mode's highest threshold starts too many events (`threshold` is that maximum).
    pub reachable: bool,
}

/// Events allowed in `hours` of quiet recordings at `per_hour` false alarms per hour.
pub fn allowed_events(per_hour: f64, hours: f64) -> usize {
    let n = (per_hour * hours).floor();
    if n.is_finite() && n > 0.0 { n as usize } else { 0 }
}

/// The events the daemon would start on `files` (each a fresh tracker) with `prompt` at threshold `on`.
pub fn starts(prompt: &PromptConfig, defaults: &EventsConfig, on: f32, files: &[Series]) -> usize {
    let params = with_threshold(prompt, on).event_params(defaults);
    files
        .iter()
        .map(|series| {
            let mut tracker = Tracker::new(params.clone());
            series
                .iter()
                .filter_map(|&(t, score)| tracker.observe(Duration::from_secs_f64(t.max(0.0)), score))
                .filter(|tr| tr.kind == TransitionKind::Start)
                .count()
        })
        .sum()
}

/// `prompt` with threshold `on`; an explicit `off_threshold` above it is dropped for the mode's default.
pub fn with_threshold(prompt: &PromptConfig, on: f32) -> PromptConfig {
    let mut p = prompt.clone();
    p.threshold = on;
    if p.off_threshold.is_some_and(|off| off > on) {
        p.off_threshold = None;
    }
    p
}

/// The lowest threshold at which `files` start at most `allowed` events (see the module's description).
pub fn calibrate(prompt: &PromptConfig, defaults: &EventsConfig, files: &[Series], allowed: usize) -> Calibrated {
    let range = prompt.mode.threshold_range();
    let step: f64 = if prompt.mode == ScoreMode::Zscore { 0.01 } else { 0.001 };
    // The grid point strictly above `x` (float rounding can put `floor(x / step) + 1` on `x` itself).
    let grid = |x: f32| {
        let mut k = (f64::from(x) / step).floor() + 1.0;
        while ((k * step) as f32) <= x {
            k += 1.0;
        }
        (k * step) as f32
    };
    let max_score = files
        .iter()
        .flatten()
        .map(|&(_, s)| s)
        .filter(|s| s.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    // Just above each window's score, on the grid, within the mode's range; highest first.
    let mut candidates: Vec<f32> = files
        .iter()
        .flatten()
        .map(|&(_, s)| grid(s))
        .filter(|c| c.is_finite())
        .map(|c| c.clamp(*range.start(), *range.end()))
        .collect();
    candidates.push(*range.end());
    candidates.sort_by(|a, b| b.total_cmp(a));
    candidates.dedup();
    let mut best: Option<(f32, usize)> = None;
    for c in candidates {
        let n = starts(prompt, defaults, c, files);
        if n > allowed {
            break;
        }
        best = Some((c, n));
    }
    let (threshold, events_after, reachable) = match best {
        Some((c, n)) => (c, n, true),
        None => {
            let top = *range.end();
            (top, starts(prompt, defaults, top, files), false)
        }
    };
    Calibrated {
        id: prompt.id.clone(),
        mode: prompt.mode,
        previous: prompt.threshold,
        threshold,
        events_before: starts(prompt, defaults, prompt.threshold, files),
        events_after,
        max_score,
        reachable,
    }
}

/// The configuration snippet: a comment per label and its `[[prompts]]` table with the calibrated threshold.
pub fn snippet(
    results: &[(Calibrated, PromptConfig)],
    (files, hours): (usize, f64),
    (per_hour, allowed): (f64, usize),
) -> Result<String, toml::ser::Error> {
    let mut out = format!(
        "# sensebind calibrate: {files} recording(s) without events, {:.3} h; target {per_hour} false alarm(s) per \
         hour, so at most {allowed} event(s) on them.\n",
        hours
    );
    for (c, p) in results {
        out.push_str(&format!(
            "\n# {}: {} scores up to {:.4}; {} event(s) at the old threshold {}, {} at {}{}\n",
            c.id,
            c.mode.as_str(),
            c.max_score,
            c.events_before,
            c.previous,
            c.events_after,
            c.threshold,
            if c.reachable {
                ""
            } else {
                " -- NOT REACHED: even the highest threshold starts too many events (add background prompts, \
                 or use mode cosine or zscore)"
            }
        ));
        out.push_str(&prompt_table(p)?);
    }
    Ok(out)
}

/// `[[prompts]]` with `p`'s keys: empty lists left out, thresholds written as their shortest decimal (an `f32`
/// widened to TOML's 64-bit float would print 0.0010000000474974513).
fn prompt_table(p: &PromptConfig) -> Result<String, toml::ser::Error> {
    let mut table = toml::Table::try_from(p)?;
    table.retain(|_, v| !matches!(v, toml::Value::Array(a) if a.is_empty()));
    for (key, value) in [("threshold", Some(p.threshold)), ("off_threshold", p.off_threshold)] {
        if let Some(short) = value.and_then(|v| v.to_string().parse::<f64>().ok()) {
            table.insert(key.into(), toml::Value::Float(short));
        }
    }
    let mut doc = toml::Table::new();
    doc.insert("prompts".into(), toml::Value::Array(vec![toml::Value::Table(table)]));
    toml::to_string(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(mode: ScoreMode, threshold: f32) -> PromptConfig {
        PromptConfig {
            mode,
            threshold,
            ..PromptConfig::new("knock", "knocking")
        }
    }

    fn quiet(scores: &[f32]) -> Series {
        scores.iter().enumerate().map(|(i, &s)| (i as f64 * 0.5, s)).collect()
    }

    fn onset_every_window() -> EventsConfig {
        EventsConfig {
            aggregate_windows: 1,
            onset_k: 1,
            onset_n: 1,
            hold_secs: 0.0,
            cooldown_secs: 0.0,
            ..EventsConfig::default()
        }
    }

    #[test]
    fn allowed_events_round_down() {
        assert_eq!(allowed_events(1.0, 0.01), 0);
        assert_eq!(allowed_events(2.0, 1.6), 3);
        assert_eq!(allowed_events(f64::NAN, 1.0), 0);
    }

    #[test]
    fn the_threshold_clears_the_loudest_quiet_window() {
        let d = onset_every_window();
        let files = vec![quiet(&[0.1, 0.2, 0.62, 0.3]), quiet(&[0.05, 0.4])];
        let p = prompt(ScoreMode::Softmax, 0.3);
        let c = calibrate(&p, &d, &files, 0);
        assert!(c.reachable);
        assert_eq!(c.events_before, 2, "0.62 and 0.4 start one event each at 0.3");
        assert_eq!(c.events_after, 0);
        assert!(c.threshold > 0.62 && c.threshold <= 0.6215, "{}", c.threshold);
        assert_eq!(starts(&p, &d, c.threshold, &files), 0);
        assert!((c.max_score - 0.62).abs() < 1e-6);
    }

    #[test]
    fn allowing_events_lowers_the_threshold_to_the_next_one_that_would_start() {
        let d = onset_every_window();
        let files = vec![quiet(&[0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.7, 0.0])];
        let c = calibrate(&prompt(ScoreMode::Softmax, 0.5), &d, &files, 1);
        assert_eq!(c.events_after, 1);
        assert!(c.threshold > 0.7 && c.threshold < 0.71, "{}", c.threshold);
    }

    #[test]
    fn a_quiet_recording_scoring_one_cannot_be_calibrated_in_softmax() {
        let c = calibrate(
            &prompt(ScoreMode::Softmax, 0.5),
            &onset_every_window(),
            &[quiet(&[1.0, 1.0])],
            0,
        );
        assert!(!c.reachable);
        assert_eq!(c.threshold, 1.0);
    }

    #[test]
    fn cosine_and_zscore_thresholds_use_their_scales() {
        let d = onset_every_window();
        let c = calibrate(&prompt(ScoreMode::Cosine, 0.0), &d, &[quiet(&[-0.2, 0.31, 0.05])], 0);
        assert!(c.threshold > 0.31 && c.threshold < 0.312, "{}", c.threshold);
        let z = calibrate(&prompt(ScoreMode::Zscore, 1.0), &d, &[quiet(&[0.0, 2.5, -1.0])], 0);
        assert!(z.threshold > 2.5 && z.threshold <= 2.52, "{}", z.threshold);
    }

    #[test]
    fn an_explicit_off_threshold_above_the_new_threshold_is_dropped() {
        let p = PromptConfig {
            off_threshold: Some(0.4),
            ..prompt(ScoreMode::Softmax, 0.5)
        };
        assert_eq!(with_threshold(&p, 0.3).off_threshold, None);
        assert_eq!(with_threshold(&p, 0.6).off_threshold, Some(0.4));
    }

    #[test]
    fn the_snippet_is_a_valid_prompts_table() {
        let p = prompt(ScoreMode::Softmax, 0.3);
        let c = calibrate(&p, &onset_every_window(), &[quiet(&[0.2, 0.45])], 0);
        let text = snippet(&[(c.clone(), with_threshold(&p, c.threshold))], (1, 0.001), (1.0, 0)).unwrap();
        #[derive(serde::Deserialize)]
        struct Doc {
            prompts: Vec<PromptConfig>,
        }
        let doc: Doc = toml::from_str(&text).unwrap();
        assert_eq!(doc.prompts.len(), 1);
        assert_eq!(doc.prompts[0].threshold, c.threshold);
        assert!(text.contains("# knock: softmax"), "{text}");
        assert!(
            text.contains("threshold = 0.451\n") && !text.contains("texts"),
            "{text}"
        );
    }
}
