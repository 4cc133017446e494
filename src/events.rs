//! Events with hysteresis: one [`Tracker`] per (sensor, label) turns window scores into `start`, `update` and
//! `end` transitions.
//!
//! Per window: the raw score joins the last `aggregate_windows` scores, which are combined (median or mean); the
//! aggregated score is compared with `on` and `off`.
//! - **Onset**: no event is active, the cooldown since the last end has passed, and at least `onset_k` of the last
//!   `onset_n` aggregated scores reached `on` → `start`.
//! - **Hold**: while active, a window whose aggregated score reaches `off` qualifies; the event ends (`quiet`) on
//!   a window below `off` once no window has qualified for `hold` (with `hold = 0`, on the first such window).
//! - **Updates**: at most every `update_interval`, and only when the peak rose above the last reported one.
//! - **Maximum duration**: an event lasting `max_event` ends (`max_duration`); a new one may start after the
//!   cooldown, once the onset criterion holds again (the onset history is cleared at every end).
//! - Forced ends ([`Tracker::end`]): sensor lost, label disabled, prompt changed, shutdown, restart.
//!
//! Times are durations on a monotonic clock; the tracker is pure and deterministic (unit-tested with scripts).

use std::collections::VecDeque;
use std::time::Duration;

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
    /// The name used in payloads.
    pub fn as_str(self) -> &'static str {
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
    /// Raw scores aggregated (1..=100).
    pub aggregate_windows: usize,
    /// Onset: at least this many of the last `onset_n` aggregated scores reach `on`.
    pub onset_k: usize,
    /// See `onset_k` (`onset_k ≤ onset_n ≤ 100`).
    pub onset_n: usize,
    /// Stay active until no window has qualified for this long.
    pub hold: Duration,
    /// No new start this long after an end.
    pub cooldown: Duration,
    /// Longest event.
    pub max_event: Duration,
    /// Updates at most this often.
    pub update_interval: Duration,
}

impl EventParams {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("threshold (on)", self.on), ("off_threshold", self.off)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(format!("{name} must be between 0 and 1, got {v}"));
            }
        }
        if self.off > self.on {
            return Err(format!(
                "off_threshold ({}) must not exceed the threshold ({})",
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
    /// Aggregated score now (for a forced end: the last one).
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

#[derive(Debug, Clone)]
struct Active {
    event: u64,
    seq: u64,
    started_at: Duration,
    last_qualifying: Duration,
    last_message_at: Duration,
    peak: f32,
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

    /// Replaces the parameters; keeps the history and an active event.
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

    /// One window's raw score at `t` (the window's end; non-decreasing). At most one transition.
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
                    active.reported_peak = a;
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

    /// Time passes without a window: ends an active event at its maximum duration, or when no window has
    /// qualified for `hold + idle_grace`. Never starts one.
    pub fn tick(&mut self, t: Duration, idle_grace: Duration) -> Option<Transition> {
        let active = self.active.as_ref()?;
        if t.saturating_sub(active.started_at) >= self.params.max_event {
            return self.finish(t, EndReason::MaxDuration);
        }
        if t.saturating_sub(active.last_qualifying) >= self.params.hold + idle_grace {
            return self.finish(t, EndReason::Quiet);
        }
        None
    }

    /// Forces the end of an active event; clears the score history either way.
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

    /// Runs a script of (ms, score); returns (kind, event, seq, reason) per transition.
    fn run(p: EventParams, script: &[(u64, f32)]) -> Vec<(TransitionKind, u64, u64, Option<EndReason>)> {
        let mut t = Tracker::new(p);
        script
            .iter()
            .filter_map(|&(at, s)| t.observe(ms(at), s))
            .map(|tr| (tr.kind, tr.event, tr.seq, tr.end_reason))
            .collect()
    }

    use EndReason::*;
    use TransitionKind::*;

    #[test]
    fn k_of_n_onset() {
        let p = EventParams {
            onset_k: 2,
            onset_n: 3,
            ..params()
        };
        assert!(run(p.clone(), &[(0, 0.9), (100, 0.1), (200, 0.1), (300, 0.9), (400, 0.1)]).is_empty());
        assert_eq!(run(p, &[(0, 0.9), (100, 0.1), (200, 0.9)]), [(Start, 1, 0, None)]);
    }

    #[test]
    fn median_suppresses_a_single_spike() {
        let p = EventParams {
            aggregate_windows: 3,
            ..params()
        };
        assert!(run(p.clone(), &[(0, 0.1), (100, 0.95), (200, 0.1), (300, 0.1)]).is_empty());
        assert_eq!(
            run(p.clone(), &[(0, 0.1), (100, 0.95), (200, 0.9)]),
            [(Start, 1, 0, None)]
        );
        let mean = EventParams {
            aggregate: Aggregate::Mean,
            ..p
        };
        // Mean of (0.1, 0.95, 0.9) = 0.65 ≥ 0.6.
        assert_eq!(run(mean, &[(0, 0.1), (100, 0.95), (200, 0.9)]), [(Start, 1, 0, None)]);
    }

    #[test]
    fn hysteresis_and_hold() {
        // Between off and on keeps the event alive; below off ends it at once with hold 0.
        let script = [(0, 0.7), (100, 0.5), (200, 0.45), (300, 0.3), (400, 0.3)];
        assert_eq!(run(params(), &script), [(Start, 1, 0, None), (End, 1, 1, Some(Quiet))]);
        let mut t = Tracker::new(params());
        let ends: Vec<Duration> = script
            .iter()
            .filter_map(|&(at, s)| t.observe(ms(at), s))
            .filter(|tr| tr.kind == End)
            .map(|tr| tr.at)
            .collect();
        assert_eq!(ends, [ms(300)]);
        // With a 250 ms hold, the end waits until 250 ms after the last qualifying window (200 ms).
        let held = EventParams {
            hold: ms(250),
            ..params()
        };
        let mut t = Tracker::new(held);
        let mut at = Vec::new();
        for (x, s) in [(0, 0.7), (100, 0.5), (200, 0.45), (300, 0.3), (400, 0.3), (500, 0.3)] {
            if let Some(tr) = t.observe(ms(x), s) {
                at.push((tr.kind, tr.at));
            }
        }
        assert_eq!(at, [(Start, ms(0)), (End, ms(500))]);
    }

    #[test]
    fn cooldown_blocks_a_restart_until_it_passes() {
        let p = EventParams {
            cooldown: ms(500),
            ..params()
        };
        let got = run(p, &[(0, 0.9), (100, 0.1), (200, 0.9), (500, 0.9), (600, 0.9)]);
        assert_eq!(
            got,
            [(Start, 1, 0, None), (End, 1, 1, Some(Quiet)), (Start, 2, 0, None)]
        );
    }

    #[test]
    fn max_duration_forces_an_end_then_a_new_event() {
        let p = EventParams {
            max_event: ms(300),
            ..params()
        };
        let got = run(p, &[(0, 0.9), (100, 0.9), (300, 0.9), (400, 0.9), (700, 0.9)]);
        assert_eq!(
            got,
            [
                (Start, 1, 0, None),
                (End, 1, 1, Some(MaxDuration)),
                (Start, 2, 0, None),
                (End, 2, 1, Some(MaxDuration))
            ]
        );
    }

    #[test]
    fn updates_are_throttled_and_only_for_a_rising_peak() {
        let p = EventParams {
            update_interval: ms(200),
            ..params()
        };
        let got = run(
            p,
            &[
                (0, 0.7),
                (100, 0.8),
                (200, 0.75),
                (250, 0.85),
                (300, 0.9),
                (600, 0.9),
                (700, 0.95),
            ],
        );
        // 100: above the reported 0.7 but too soon; 200: 0.75 > 0.7, 200 ms after the start → update;
        // 250, 300: higher but too soon; 600: 0.9 > 0.75, 400 ms later → update; 700: too soon.
        assert_eq!(got, [(Start, 1, 0, None), (Update, 1, 1, None), (Update, 1, 2, None)]);
    }

    #[test]
    fn tick_ends_quiet_after_hold_and_grace_and_at_max_duration_but_never_starts() {
        let p = EventParams {
            hold: ms(200),
            max_event: ms(10_000),
            ..params()
        };
        let mut t = Tracker::new(p.clone());
        assert!(t.tick(ms(0), ms(100)).is_none());
        assert_eq!(t.observe(ms(0), 0.9).map(|x| x.kind), Some(Start));
        assert!(t.tick(ms(250), ms(100)).is_none());
        let end = t.tick(ms(300), ms(100)).unwrap();
        assert_eq!((end.kind, end.end_reason, end.seq), (End, Some(Quiet), 1));
        assert!(t.tick(ms(10_000), ms(100)).is_none());
        let mut t = Tracker::new(EventParams {
            max_event: ms(1000),
            ..p
        });
        t.observe(ms(0), 0.9);
        t.observe(ms(900), 0.9);
        assert_eq!(t.tick(ms(1000), ms(5000)).and_then(|x| x.end_reason), Some(MaxDuration));
    }

    #[test]
    fn forced_ends_for_every_reason() {
        for reason in [Quiet, SensorLost, Disabled, MaxDuration, Shutdown, Reload, Restart] {
            let mut t = Tracker::new(params());
            assert!(t.end(ms(0), reason).is_none(), "idle");
            t.observe(ms(0), 0.9);
            let e = t.end(ms(50), reason).unwrap();
            assert_eq!((e.kind, e.end_reason, e.at, e.peak), (End, Some(reason), ms(50), 0.9));
            assert!(!t.is_active());
            assert!(!reason.as_str().is_empty());
        }
    }

    #[test]
    fn set_params_keeps_an_active_event() {
        let mut t = Tracker::new(params());
        t.observe(ms(0), 0.9);
        t.set_params(EventParams { off: 0.2, ..params() });
        assert!(t.observe(ms(100), 0.3).is_none(), "0.3 ≥ the new off");
        assert!(t.is_active());
        assert_eq!(t.params().off, 0.2);
        assert!((t.last_score() - 0.3).abs() < 1e-6);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |p: EventParams, word: &str| {
            let e = p.validate().unwrap_err();
            assert!(e.contains(word), "{e}");
        };
        assert!(params().validate().is_ok());
        bad(EventParams { off: 0.7, ..params() }, "off_threshold");
        bad(
            EventParams {
                onset_k: 3,
                onset_n: 2,
                ..params()
            },
            "onset_k",
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
                aggregate_windows: 0,
                ..params()
            },
            "aggregate_windows",
        );
        bad(
            EventParams {
                max_event: Duration::ZERO,
                ..params()
            },
            "max_event",
        );
    }

    #[test]
    fn every_start_has_one_end_in_a_long_random_run() {
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
        let mut open: Option<(u64, u64)> = None;
        let (mut starts, mut ends) = (0, 0);
        for i in 0..100_000u64 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let s = (state >> 40) as f32 / (1u64 << 24) as f32;
            let tr = if i % 97 == 0 {
                t.tick(ms(i * 100), ms(150))
            } else {
                t.observe(ms(i * 100), if s.is_nan() { f32::NAN } else { s })
            };
            let Some(tr) = tr else { continue };
            match tr.kind {
                Start => {
                    assert!(open.is_none(), "start while open");
                    assert_eq!(tr.seq, 0);
                    open = Some((tr.event, 0));
                    starts += 1;
                }
                Update | End => {
                    let (ev, seq) = open.expect("update/end without start");
                    assert_eq!((tr.event, tr.seq), (ev, seq + 1));
                    open = if tr.kind == End {
                        ends += 1;
                        None
                    } else {
                        Some((ev, tr.seq))
                    };
                }
            }
        }
        if let Some(e) = t.end(ms(100_000 * 100), Shutdown) {
            assert_eq!(Some(e.event), open.map(|o| o.0));
            ends += 1;
        }
        assert!(!t.is_active());
        assert_eq!(starts, ends);
        assert!(starts > 100, "{starts}");
    }
}
