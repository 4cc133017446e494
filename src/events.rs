//! Events with hysteresis: one [`Tracker`] per (sensor, label) turns window scores into `start`, `update` and
//! `end` transitions.
//!
//! Per window: the raw score joins the last `aggregate_windows` scores, which are combined (median or mean); the
//! aggregated score is compared with `on` and `off`.
//! - **Onset**: no event is active, the cooldown since the last end has passed, and at least `onset_k` of the last
//!   `onset_n` aggregated scores reached `on` → `start`.
//! - **Hold**: while active, a window whose aggregated score reaches `off` qualifies; the event ends (`quiet`) on
//!   a window below `off` once no window has qualified for `hold` (with `hold = 0`, on the first such window).
//! - **Updates**: at most every `update_interval`, and only when the aggregated score rose above the peak last
//!   reported.
//! - **Maximum duration**: an event lasting `max_event` ends (`max_duration`); a new one may start after the
//!   cooldown, once the onset criterion holds again (the onset history is cleared at every end).
//! - **Idle**: [`Tracker::tick`] ends an event when windows stop arriving; forced ends ([`Tracker::end`]) cover
//!   sensor lost, label disabled, prompt changed, shutdown and restart.
//!
//! Times are durations on a monotonic clock; the tracker is pure and deterministic (unit-tested with scripts).

pub mod fusion;

use std::collections::VecDeque;
use std::time::Duration;

/// `[events]`: how a label's window scores become events (per prompt and sensor). Every key can be overridden in
/// a `[[prompts]]` entry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `median` or `mean` of the last `aggregate_windows` scores.
    pub aggregate: Aggregate,
    /// Windows aggregated (1 = the raw score).
    pub aggregate_windows: usize,
    /// Onset: at least `onset_k` of the last `onset_n` aggregated scores reach the prompt's `threshold`.
    pub onset_k: usize,
    /// See `onset_k`.
    pub onset_n: usize,
    /// An event ends when no window's aggregated score has reached `off_threshold` for this long.
    pub hold_secs: f64,
    /// After an event ends, no new event of the same label and sensor for this long.
    pub cooldown_secs: f64,
    /// Longest event: it is ended (`max_duration`) and may start again.
    pub max_event_secs: f64,
    /// `update` messages at most this often, and only when the peak score rose.
    pub update_interval_secs: f64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            aggregate: Aggregate::Median,
            aggregate_windows: 3,
            onset_k: 2,
            onset_n: 3,
            hold_secs: 10.0,
            cooldown_secs: 0.0,
            max_event_secs: 300.0,
            update_interval_secs: 5.0,
        }
    }
}

impl EventsConfig {
    /// The event parameters with these defaults and a prompt's own thresholds and overrides applied by
    /// `overrides` (the `[[prompts]]` entry fills them in).
    pub fn params(&self, on: f32, off: f32) -> EventParams {
        EventParams {
            on,
            off,
            aggregate: self.aggregate,
            aggregate_windows: self.aggregate_windows,
            onset_k: self.onset_k,
            onset_n: self.onset_n,
            hold: duration_from_secs(self.hold_secs),
            cooldown: duration_from_secs(self.cooldown_secs),
            max_event: duration_from_secs(self.max_event_secs),
            update_interval: duration_from_secs(self.update_interval_secs),
        }
    }

    /// Value checks of `[events]`.
    pub fn validate(&self, issues: &mut crate::issues::Scope<'_>) {
        for (key, v) in [
            ("hold_secs", self.hold_secs),
            ("cooldown_secs", self.cooldown_secs),
            ("max_event_secs", self.max_event_secs),
            ("update_interval_secs", self.update_interval_secs),
        ] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                issues.push(key, format!("must be between 0 and 86400 seconds, got {v}"));
            }
        }
        // Checked with the default prompt thresholds (0.5 on, 0.4 off): the keys here are shared by every prompt.
        if let Err(m) = self.params(0.5, 0.4).validate() {
            issues.push("", m);
        }
    }
}

/// Seconds from the configuration as a duration: clamped to [0, 1e9], non-finite values as 0.
pub fn duration_from_secs(v: f64) -> Duration {
    Duration::from_secs_f64(if v.is_finite() { v.clamp(0.0, 1e9) } else { 0.0 })
}

/// How the last N window scores are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// The median (mean of the middle two for an even count): one outlier window cannot start an event.
    #[default]
    Median,
    /// The mean.
    Mean,
}

/// Why an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// No qualifying window for the hold time.
    Quiet,
    /// The sensor went offline.
    SensorLost,
    /// The sensor or the label was switched off.
    Disabled,
    /// The event reached its maximum duration.
    MaxDuration,
    /// The daemon stopped.
    Shutdown,
    /// The prompt was changed or deleted.
    Reload,
    /// The daemon died with the event open; ended when it started again.
    Restart,
}

impl EndReason {
    /// The name used in payloads (the same as the serde name).
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Quiet => "quiet",
            EndReason::SensorLost => "sensor_lost",
            EndReason::Disabled => "disabled",
            EndReason::MaxDuration => "max_duration",
            EndReason::Shutdown => "shutdown",
            EndReason::Reload => "reload",
            EndReason::Restart => "restart",
        }
    }
}

/// Parameters of one tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct EventParams {
    /// Onset threshold on the aggregated score.
    pub on: f32,
    /// Release threshold (at most `on`).
    pub off: f32,
    /// Median or mean.
    pub aggregate: Aggregate,
    /// Raw scores aggregated (1..=100; fewer at the beginning).
    pub aggregate_windows: usize,
    /// Onset: at least this many of the last `onset_n` aggregated scores reach `on`.
    pub onset_k: usize,
    /// See `onset_k` (`1 ≤ onset_k ≤ onset_n ≤ 100`).
    pub onset_n: usize,
    /// Stay active until no window has qualified (aggregated score ≥ `off`) for this long.
    pub hold: Duration,
    /// No new start this long after an end.
    pub cooldown: Duration,
    /// Longest event (above 0).
    pub max_event: Duration,
    /// Updates at most this often.
    pub update_interval: Duration,
}

impl EventParams {
    /// Checks the values; the message names the field by its configuration key (`threshold` for `on`,
    /// `off_threshold` for `off`, `max_event_secs` for `max_event`).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_in(0.0..=1.0)
    }

    /// [`EventParams::validate`] with thresholds on another scale (a cosine, a z-score).
    pub fn validate_in(&self, range: std::ops::RangeInclusive<f32>) -> Result<(), String> {
        for (name, v) in [("threshold (on)", self.on), ("off_threshold (off)", self.off)] {
            if !(v.is_finite() && range.contains(&v)) {
                return Err(format!(
                    "{name} must be between {} and {}, got {v}",
                    range.start(),
                    range.end()
                ));
            }
        }
        if self.off > self.on {
            return Err(format!(
                "off_threshold ({}) must not exceed threshold ({})",
                self.off, self.on
            ));
        }
        for (name, v) in [
            ("aggregate_windows", self.aggregate_windows),
            ("onset_k", self.onset_k),
            ("onset_n", self.onset_n),
        ] {
            if !(1..=100).contains(&v) {
                return Err(format!("{name} must be between 1 and 100, got {v}"));
            }
        }
        if self.onset_k > self.onset_n {
            return Err(format!(
                "onset_k ({}) must not exceed onset_n ({})",
                self.onset_k, self.onset_n
            ));
        }
        if self.max_event.is_zero() {
            return Err("max_event_secs must be above 0".into());
        }
        Ok(())
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// An event started.
    Start,
    /// Its peak score rose.
    Update,
    /// It ended.
    End,
}

/// One event message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Start, update or end.
    pub kind: TransitionKind,
    /// Event number within this tracker, from 1.
    pub event: u64,
    /// Message number within the event: start 0, then +1 per update and for the end.
    pub seq: u64,
    /// Aggregated score now (for an end without a window: the last one).
    pub score: f32,
    /// Highest aggregated score of the event so far.
    pub peak: f32,
    /// When the event started.
    pub started_at: Duration,
    /// When this transition happened.
    pub at: Duration,
    /// Why it ended (ends only).
    pub end_reason: Option<EndReason>,
}

/// The state of an active event.
#[derive(Debug, Clone)]
struct Active {
    event: u64,
    seq: u64,
    started_at: Duration,
    last_qualifying: Duration,
    last_message_at: Duration,
    peak: f32,
    /// The peak carried in the last start or update message.
    reported_peak: f32,
}

/// The hysteresis state of one (sensor, label).
#[derive(Debug, Clone)]
pub struct Tracker {
    params: EventParams,
    raw: VecDeque<f32>,
    onset: VecDeque<bool>,
    last_score: f32,
    active: Option<Active>,
    last_end: Option<Duration>,
    events: u64,
}

impl Tracker {
    /// A tracker with no history.
    pub fn new(params: EventParams) -> Self {
        Self {
            params,
            raw: VecDeque::new(),
            onset: VecDeque::new(),
            last_score: 0.0,
            active: None,
            last_end: None,
            events: 0,
        }
    }

    /// The parameters.
    pub fn params(&self) -> &EventParams {
        &self.params
    }

    /// Replaces the parameters (prompt edited at runtime); keeps the score history and an active event.
    pub fn set_params(&mut self, params: EventParams) {
        self.params = params;
    }

    /// True while an event is active.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The last aggregated score (0 before any window).
    pub fn last_score(&self) -> f32 {
        self.last_score
    }

    fn aggregate(&self) -> f32 {
        if self.raw.is_empty() {
            return 0.0;
        }
        match self.params.aggregate {
            Aggregate::Mean => self.raw.iter().sum::<f32>() / self.raw.len() as f32,
            Aggregate::Median => {
                let mut v: Vec<f32> = self.raw.iter().copied().collect();
                v.sort_by(f32::total_cmp);
                let n = v.len();
                if n % 2 == 1 {
                    v[n / 2]
                } else {
                    (v[n / 2 - 1] + v[n / 2]) / 2.0
                }
            }
        }
    }

    fn finish(&mut self, at: Duration, reason: EndReason) -> Option<Transition> {
        let a = self.active.take()?;
        self.last_end = Some(at);
        self.onset.clear();
        Some(Transition {
            kind: TransitionKind::End,
            event: a.event,
            seq: a.seq + 1,
            score: self.last_score,
            peak: a.peak,
            started_at: a.started_at,
            at,
            end_reason: Some(reason),
        })
    }

    /// One window's raw score at `t` (the window's end on a monotonic clock; non-decreasing across calls). A
    /// non-finite score counts as 0. Returns at most one transition: when an event ends, the next one can start
    /// on a later window at the earliest.
    pub fn observe(&mut self, t: Duration, score: f32) -> Option<Transition> {
        let score = if score.is_finite() { score } else { 0.0 };
        self.raw.push_back(score);
        while self.raw.len() > self.params.aggregate_windows.max(1) {
            self.raw.pop_front();
        }
        let a = self.aggregate();
        self.last_score = a;
        self.onset.push_back(a >= self.params.on);
        while self.onset.len() > self.params.onset_n.max(1) {
            self.onset.pop_front();
        }
        if let Some(active) = self.active.as_mut() {
            if t.saturating_sub(active.started_at) >= self.params.max_event {
                return self.finish(t, EndReason::MaxDuration);
            }
            if a >= self.params.off {
                active.last_qualifying = t;
                active.peak = active.peak.max(a);
                if a > active.reported_peak && t.saturating_sub(active.last_message_at) >= self.params.update_interval {
                    active.seq += 1;
                    active.reported_peak = active.peak;
                    active.last_message_at = t;
                    return Some(Transition {
                        kind: TransitionKind::Update,
                        event: active.event,
                        seq: active.seq,
                        score: a,
                        peak: active.peak,
                        started_at: active.started_at,
                        at: t,
                        end_reason: None,
                    });
                }
                return None;
            }
            if t.saturating_sub(active.last_qualifying) >= self.params.hold {
                return self.finish(t, EndReason::Quiet);
            }
            return None;
        }
        let cooled = self
            .last_end
            .is_none_or(|end| t.saturating_sub(end) >= self.params.cooldown);
        let hits = self.onset.iter().filter(|&&b| b).count();
        if cooled && hits >= self.params.onset_k.max(1) {
            self.events += 1;
            self.active = Some(Active {
                event: self.events,
                seq: 0,
                started_at: t,
                last_qualifying: t,
                last_message_at: t,
                peak: a,
                reported_peak: a,
            });
            return Some(Transition {
                kind: TransitionKind::Start,
                event: self.events,
                seq: 0,
                score: a,
                peak: a,
                started_at: t,
                at: t,
                end_reason: None,
            });
        }
        None
    }

    /// Time passes without a window: ends an active event at its maximum duration, or (`quiet`) when no window
    /// has qualified for `hold + idle_grace` (`idle_grace`: how long without windows before the sensor counts as
    /// quiet, about two hops). Never starts an event.
    pub fn tick(&mut self, t: Duration, idle_grace: Duration) -> Option<Transition> {
        let active = self.active.as_ref()?;
        if t.saturating_sub(active.started_at) >= self.params.max_event {
            return self.finish(t, EndReason::MaxDuration);
        }
        if t.saturating_sub(active.last_qualifying) >= self.params.hold.saturating_add(idle_grace) {
            return self.finish(t, EndReason::Quiet);
        }
        None
    }

    /// An `update` outside the score rules (the event's evidence snapshot now exists): the next message number with
    /// the current score and peak; `None` when no event is active.
    pub fn announce(&mut self, t: Duration) -> Option<Transition> {
        let score = self.last_score;
        let active = self.active.as_mut()?;
        active.seq += 1;
        active.last_message_at = t;
        Some(Transition {
            kind: TransitionKind::Update,
            event: active.event,
            seq: active.seq,
            score,
            peak: active.peak,
            started_at: active.started_at,
            at: t,
            end_reason: None,
        })
    }

    /// Forces the end of an active event now (sensor lost, label disabled, prompt changed, shutdown); `None` when
    /// none is active. Clears the score history either way, so a new event must satisfy the onset again.
    pub fn end(&mut self, t: Duration, reason: EndReason) -> Option<Transition> {
        let tr = self.finish(t, reason);
        self.raw.clear();
        self.onset.clear();
        tr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndReason::*;
    use TransitionKind::*;

    type Row = (TransitionKind, u64, u64, Option<EndReason>);

    /// Raw scores, one window each, with defaults that make every other rule trivial.
    fn params() -> EventParams {
        EventParams {
            on: 0.6,
            off: 0.4,
            aggregate: Aggregate::Median,
            aggregate_windows: 1,
            onset_k: 1,
            onset_n: 1,
            hold: Duration::ZERO,
            cooldown: Duration::ZERO,
            max_event: Duration::from_secs(3600),
            update_interval: Duration::from_secs(3600),
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Feeds one window every 100 ms (t = 0, 100, 200, …); returns every transition.
    fn feed(t: &mut Tracker, scores: &[f32]) -> Vec<Transition> {
        (0u64..)
            .zip(scores)
            .filter_map(|(i, &s)| t.observe(ms(i * 100), s))
            .collect()
    }

    fn rows(trs: &[Transition]) -> Vec<Row> {
        trs.iter()
            .map(|tr| (tr.kind, tr.event, tr.seq, tr.end_reason))
            .collect()
    }

    /// A fresh tracker fed one window every 100 ms; (kind, event, seq, reason) per transition.
    fn run(p: EventParams, scores: &[f32]) -> Vec<Row> {
        rows(&feed(&mut Tracker::new(p), scores))
    }

    /// Like [`run`], with the time of each transition in ms.
    fn run_at(p: EventParams, scores: &[f32]) -> Vec<(TransitionKind, u128)> {
        feed(&mut Tracker::new(p), scores)
            .iter()
            .map(|tr| (tr.kind, tr.at.as_millis()))
            .collect()
    }

    #[test]
    fn k_of_n_onset() {
        let p = EventParams {
            onset_k: 2,
            onset_n: 3,
            ..params()
        };
        // Single spikes, never two within three windows.
        assert_eq!(run(p.clone(), &[0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.9]), []);
        // Two of three (not consecutive) start on the second.
        assert_eq!(run_at(p.clone(), &[0.9, 0.1, 0.9]), [(Start, 200)]);
        assert_eq!(run(p, &[0.1, 0.9, 0.9]), [(Start, 1, 0, None)]);
    }

    #[test]
    fn median_suppresses_a_single_spike() {
        let p = EventParams {
            aggregate_windows: 3,
            ..params()
        };
        assert_eq!(run(p.clone(), &[0.1, 0.95, 0.1, 0.1, 0.1]), []);
        assert_eq!(run_at(p.clone(), &[0.1, 0.95, 0.9]), [(Start, 200)]);
        // The mean of (0.1, 0.95, 0.9) = 0.65 also starts; the mean of (0.1, 0.95, 0.1) = 0.38 does not.
        let mean = EventParams {
            aggregate: Aggregate::Mean,
            ..p.clone()
        };
        assert_eq!(run(mean.clone(), &[0.1, 0.95, 0.9]), [(Start, 1, 0, None)]);
        assert_eq!(run(mean, &[0.1, 0.95, 0.1]), []);
        // Fewer windows at the beginning: the first window alone is its own median.
        assert_eq!(run(p, &[0.9]), [(Start, 1, 0, None)]);
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let mut t = Tracker::new(EventParams {
            aggregate_windows: 4,
            ..params()
        });
        assert_eq!(t.last_score(), 0.0);
        for (i, s) in [0.2f32, 0.9, 0.4, 0.1].into_iter().enumerate() {
            t.observe(ms(i as u64 * 100), s);
        }
        assert!((t.last_score() - 0.3).abs() < 1e-6, "{}", t.last_score());
    }

    #[test]
    fn hysteresis_keeps_the_event_between_off_and_on() {
        // 0.5 and 0.45 are below on but above off: the event stays; 0.3 is below off: it ends (hold 0).
        let scores = [0.7, 0.5, 0.45, 0.5, 0.3, 0.3];
        assert_eq!(run(params(), &scores), [(Start, 1, 0, None), (End, 1, 1, Some(Quiet))]);
        assert_eq!(run_at(params(), &scores), [(Start, 0), (End, 400)]);
        // Exactly off qualifies.
        assert_eq!(run(params(), &[0.7, 0.4, 0.4]), [(Start, 1, 0, None)]);
    }

    #[test]
    fn hold_zero_ends_on_the_first_window_below_off() {
        let trs = feed(&mut Tracker::new(params()), &[0.8, 0.2]);
        assert_eq!(rows(&trs), [(Start, 1, 0, None), (End, 1, 1, Some(Quiet))]);
        let end = &trs[1];
        assert_eq!((end.at, end.started_at, end.peak), (ms(100), ms(0), 0.8));
        assert!((end.score - 0.2).abs() < 1e-6);
    }

    #[test]
    fn hold_ends_quiet_once_no_window_qualified_for_hold() {
        let p = EventParams {
            hold: ms(250),
            ..params()
        };
        // Last qualifying window at 200 ms; below off from 300 ms; 250 ms later is 450 → the window at 500 ends it.
        let scores = [0.7, 0.5, 0.45, 0.3, 0.3, 0.3, 0.3];
        assert_eq!(run(p.clone(), &scores), [(Start, 1, 0, None), (End, 1, 1, Some(Quiet))]);
        assert_eq!(run_at(p.clone(), &scores), [(Start, 0), (End, 500)]);
        // A qualifying window within the hold resets it.
        assert_eq!(
            run_at(p, &[0.7, 0.3, 0.3, 0.5, 0.3, 0.3, 0.3]),
            [(Start, 0), (End, 600)]
        );
    }

    #[test]
    fn cooldown_blocks_a_restart_until_it_passes() {
        let p = EventParams {
            cooldown: ms(500),
            ..params()
        };
        // Ends at 100; 200..500 are blocked; 600 is 500 ms after the end.
        let scores = [0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9];
        assert_eq!(
            run(p.clone(), &scores),
            [(Start, 1, 0, None), (End, 1, 1, Some(Quiet)), (Start, 2, 0, None)]
        );
        assert_eq!(run_at(p, &scores), [(Start, 0), (End, 100), (Start, 600)]);
        // Without a cooldown the next qualifying window starts again.
        assert_eq!(
            run_at(params(), &[0.9, 0.1, 0.9]),
            [(Start, 0), (End, 100), (Start, 200)]
        );
    }

    #[test]
    fn max_event_forces_an_end_and_a_restart_is_event_2() {
        let p = EventParams {
            max_event: ms(300),
            ..params()
        };
        let scores = [0.9; 8];
        // 300: max duration; the window that ended it cleared the onset history, so 400 starts event 2.
        assert_eq!(
            run(p.clone(), &scores),
            [
                (Start, 1, 0, None),
                (End, 1, 1, Some(MaxDuration)),
                (Start, 2, 0, None),
                (End, 2, 1, Some(MaxDuration)),
            ]
        );
        assert_eq!(run_at(p, &scores), [(Start, 0), (End, 300), (Start, 400), (End, 700)]);
    }

    #[test]
    fn a_restart_needs_k_fresh_qualifying_windows() {
        let p = EventParams {
            onset_k: 2,
            onset_n: 3,
            max_event: ms(300),
            ..params()
        };
        // Start at 100 (2 of 3), max duration at 400; the onset history is cleared there, so 500 alone (1 of 1)
        // does not start, 600 (2 of 2) does.
        assert_eq!(
            run_at(p, &[0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]),
            [(Start, 100), (End, 400), (Start, 600)]
        );
    }

    #[test]
    fn updates_are_throttled_and_need_a_rising_score() {
        let p = EventParams {
            update_interval: ms(200),
            ..params()
        };
        let mut t = Tracker::new(p.clone());
        // 100: above the reported 0.7 but too soon; 200: 0.75 > 0.7, 200 ms after the start → update carrying the
        // peak 0.8; 300: 0.85 too soon; 400, 500: 0.8 is not above the reported 0.8; 600: 0.9 > 0.8 → update;
        // 700: 0.95 too soon.
        let trs = feed(&mut t, &[0.7, 0.8, 0.75, 0.85, 0.8, 0.8, 0.9, 0.95]);
        assert_eq!(
            rows(&trs),
            [(Start, 1, 0, None), (Update, 1, 1, None), (Update, 1, 2, None)]
        );
        assert_eq!((trs[1].at, trs[1].score, trs[1].peak), (ms(200), 0.75, 0.8));
        assert_eq!((trs[2].at, trs[2].score, trs[2].peak), (ms(600), 0.9, 0.9));
        // The end carries the unreported peak 0.95.
        let end = t.end(ms(800), Shutdown).unwrap();
        assert_eq!((end.seq, end.peak), (3, 0.95));
        // A steady or falling score emits nothing, however long.
        assert_eq!(
            run(p.clone(), &[0.9, 0.9, 0.9, 0.85, 0.8, 0.9, 0.9, 0.9]),
            [(Start, 1, 0, None)]
        );
        // Interval 0: every rise is reported at once.
        let fast = EventParams {
            update_interval: Duration::ZERO,
            ..p
        };
        assert_eq!(
            run(fast, &[0.7, 0.8, 0.8, 0.9]),
            [(Start, 1, 0, None), (Update, 1, 1, None), (Update, 1, 2, None)]
        );
    }

    #[test]
    fn tick_ends_quiet_only_after_hold_plus_idle_grace() {
        let p = EventParams {
            hold: ms(200),
            ..params()
        };
        let mut t = Tracker::new(p);
        assert!(t.tick(ms(0), ms(100)).is_none(), "idle");
        assert_eq!(t.observe(ms(0), 0.9).map(|x| x.kind), Some(Start));
        assert_eq!(t.observe(ms(100), 0.5), None, "qualifies: last_qualifying = 100");
        assert!(t.tick(ms(399), ms(100)).is_none(), "299 ms < hold + grace");
        assert!(t.is_active());
        let end = t.tick(ms(400), ms(100)).unwrap();
        assert_eq!(
            (end.kind, end.event, end.seq, end.end_reason, end.at),
            (End, 1, 1, Some(Quiet), ms(400))
        );
        assert!((end.score - 0.5).abs() < 1e-6, "the last aggregated score");
        assert!(t.tick(ms(10_000), ms(100)).is_none(), "nothing left to end");
    }

    #[test]
    fn tick_ends_at_max_duration() {
        let mut t = Tracker::new(EventParams {
            max_event: ms(1000),
            ..params()
        });
        t.observe(ms(0), 0.9);
        t.observe(ms(900), 0.9);
        assert!(t.tick(ms(999), ms(5000)).is_none());
        let end = t.tick(ms(1000), ms(5000)).unwrap();
        assert_eq!((end.kind, end.seq, end.end_reason), (End, 1, Some(MaxDuration)));
    }

    #[test]
    fn tick_never_starts() {
        let mut t = Tracker::new(EventParams {
            onset_k: 2,
            onset_n: 2,
            ..params()
        });
        assert!(t.observe(ms(0), 0.9).is_none());
        for x in 1..50 {
            assert!(t.tick(ms(x * 100), ms(200)).is_none());
        }
        assert!(!t.is_active());
        // The next window completes the onset.
        assert_eq!(t.observe(ms(5000), 0.9).map(|x| x.kind), Some(Start));
    }

    #[test]
    fn tick_does_not_overflow_with_huge_durations() {
        let mut t = Tracker::new(EventParams {
            hold: Duration::MAX,
            max_event: Duration::MAX,
            ..params()
        });
        t.observe(ms(0), 0.9);
        assert!(t.tick(Duration::from_secs(1 << 40), Duration::MAX).is_none());
        assert!(t.is_active());
    }

    #[test]
    fn end_with_each_reason() {
        let reasons = [
            (Quiet, "quiet"),
            (SensorLost, "sensor_lost"),
            (Disabled, "disabled"),
            (MaxDuration, "max_duration"),
            (Shutdown, "shutdown"),
            (Reload, "reload"),
            (Restart, "restart"),
        ];
        for (reason, name) in reasons {
            assert_eq!(reason.as_str(), name);
            let mut t = Tracker::new(params());
            t.observe(ms(0), 0.9);
            t.observe(ms(100), 0.5);
            let e = t.end(ms(150), reason).unwrap();
            assert_eq!(
                (e.kind, e.event, e.seq, e.end_reason, e.at, e.started_at, e.peak),
                (End, 1, 1, Some(reason), ms(150), ms(0), 0.9)
            );
            assert!(!t.is_active());
            assert!(t.end(ms(200), reason).is_none(), "already ended");
        }
    }

    #[test]
    fn end_is_none_when_idle() {
        let mut t = Tracker::new(params());
        assert!(t.end(ms(0), Shutdown).is_none());
        assert!(t.observe(ms(0), 0.1).is_none());
        assert!(t.end(ms(100), SensorLost).is_none());
    }

    #[test]
    fn end_clears_the_score_history() {
        let p = EventParams {
            onset_k: 2,
            onset_n: 3,
            ..params()
        };
        // Idle with one qualifying window in the history: end() forgets it.
        let mut t = Tracker::new(p.clone());
        t.observe(ms(0), 0.9);
        assert!(t.end(ms(50), Disabled).is_none());
        assert!(t.observe(ms(100), 0.9).is_none(), "1 of 1 after the reset");
        assert_eq!(t.observe(ms(200), 0.9).map(|x| x.kind), Some(Start));
        // Raw history too: with a median of 3, two high windows before end() no longer count.
        let mut t = Tracker::new(EventParams {
            aggregate_windows: 3,
            ..params()
        });
        t.observe(ms(0), 0.9);
        t.observe(ms(100), 0.9);
        assert!(t.end(ms(150), Reload).is_some());
        t.observe(ms(200), 0.1);
        assert!(t.observe(ms(300), 0.9).is_none(), "median of (0.1, 0.9) = 0.5");
    }

    #[test]
    fn set_params_keeps_an_active_event() {
        let mut t = Tracker::new(EventParams {
            update_interval: Duration::ZERO,
            ..params()
        });
        t.observe(ms(0), 0.7);
        let p = EventParams {
            off: 0.2,
            update_interval: Duration::ZERO,
            ..params()
        };
        t.set_params(p.clone());
        assert_eq!(t.params(), &p);
        assert!(t.observe(ms(100), 0.3).is_none(), "0.3 ≥ the new off");
        assert!(t.is_active());
        assert!((t.last_score() - 0.3).abs() < 1e-6);
        // The same event goes on: update seq 1, end seq 2.
        let u = t.observe(ms(200), 0.8).unwrap();
        assert_eq!((u.kind, u.event, u.seq), (Update, 1, 1));
        let e = t.observe(ms(300), 0.1).unwrap();
        assert_eq!((e.kind, e.event, e.seq, e.end_reason), (End, 1, 2, Some(Quiet)));
    }

    #[test]
    fn non_finite_scores_count_as_zero() {
        let mut t = Tracker::new(EventParams {
            aggregate: Aggregate::Mean,
            aggregate_windows: 2,
            ..params()
        });
        assert!(t.observe(ms(0), f32::NAN).is_none());
        assert_eq!(t.last_score(), 0.0);
        assert!(t.observe(ms(100), f32::INFINITY).is_none());
        assert_eq!(t.last_score(), 0.0);
        t.observe(ms(200), 0.8);
        assert!((t.last_score() - 0.4).abs() < 1e-6);
    }

    #[test]
    fn validate_rejects_bad_params() {
        let bad = |p: EventParams, word: &str| {
            let e = p.validate().unwrap_err();
            assert!(e.contains(word), "{e:?} should name {word}");
        };
        assert!(params().validate().is_ok());
        assert!(EventParams { off: 0.6, ..params() }.validate().is_ok(), "off = on");
        bad(
            EventParams { off: 0.7, ..params() },
            "off_threshold (0.7) must not exceed threshold (0.6)",
        );
        bad(
            EventParams {
                onset_k: 3,
                onset_n: 2,
                ..params()
            },
            "onset_k (3) must not exceed onset_n (2)",
        );
        bad(
            EventParams {
                on: f32::NAN,
                ..params()
            },
            "threshold",
        );
        bad(
            EventParams {
                off: f32::NAN,
                ..params()
            },
            "off_threshold",
        );
        bad(EventParams { on: 1.5, ..params() }, "between 0 and 1");
        bad(EventParams { off: -0.1, ..params() }, "off_threshold");
        bad(
            EventParams {
                aggregate_windows: 0,
                ..params()
            },
            "aggregate_windows",
        );
        bad(
            EventParams {
                aggregate_windows: 101,
                ..params()
            },
            "aggregate_windows",
        );
        bad(EventParams { onset_k: 0, ..params() }, "onset_k");
        bad(EventParams { onset_n: 0, ..params() }, "onset_n");
        bad(
            EventParams {
                max_event: Duration::ZERO,
                ..params()
            },
            "max_event",
        );
    }

    #[test]
    fn random_runs_pair_every_start_with_one_end() {
        let p = EventParams {
            aggregate_windows: 3,
            onset_k: 2,
            onset_n: 3,
            hold: ms(300),
            cooldown: ms(200),
            max_event: ms(5000),
            update_interval: ms(500),
            ..params()
        };
        let mut t = Tracker::new(p);
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as u32
        };
        // (event, last seq) of the open event.
        let mut open: Option<(u64, u64)> = None;
        let (mut starts, mut updates, mut ends) = (0u64, 0u64, 0u64);
        let mut last_event = 0;
        let mut now = ms(0);
        for _ in 0..100_000 {
            let r = next();
            now += ms(u64::from(r % 200));
            // Mostly windows (a slow random walk would be nicer; uniform noise still crosses both thresholds),
            // sometimes an idle tick or a forced end, now and then a NaN.
            let tr = match r % 100 {
                0..=4 => t.tick(now, ms(150)),
                5 => t.end(now, SensorLost),
                6 => t.observe(now, f32::NAN),
                _ => t.observe(now, (next() % 1000) as f32 / 1000.0),
            };
            let Some(tr) = tr else { continue };
            assert_eq!(tr.at, now);
            assert!(tr.peak >= tr.score || tr.kind == End, "{tr:?}");
            match tr.kind {
                Start => {
                    assert!(open.is_none(), "start while open: {tr:?}");
                    assert_eq!((tr.event, tr.seq, tr.started_at), (last_event + 1, 0, now));
                    last_event = tr.event;
                    open = Some((tr.event, 0));
                    starts += 1;
                }
                Update | End => {
                    let Some((event, seq)) = open else {
                        panic!("{:?} without a start", tr.kind)
                    };
                    assert_eq!((tr.event, tr.seq), (event, seq + 1));
                    assert_eq!(tr.end_reason.is_some(), tr.kind == End);
                    if tr.kind == End {
                        ends += 1;
                        open = None;
                    } else {
                        updates += 1;
                        open = Some((event, tr.seq));
                    }
                }
            }
            assert_eq!(t.is_active(), open.is_some());
        }
        if let Some(e) = t.end(now, Shutdown) {
            assert_eq!((Some(e.event), e.end_reason), (open.map(|o| o.0), Some(Shutdown)));
            assert_eq!(e.seq, open.map_or(0, |o| o.1) + 1);
            ends += 1;
        }
        assert!(!t.is_active());
        assert!(t.end(now, Shutdown).is_none());
        assert_eq!(starts, ends);
        assert!(starts > 100 && updates > 10, "starts {starts}, updates {updates}");
    }
}
