//! Event evidence as the controller sees it: which events get evidence, the jobs for the `evidence-writer`
//! thread (`crate::evidence::writer`), and the `evidence` object of `update` and `end` messages.
//!
//! - `start`: the snapshot job (cameras, depth, thermal) for the frame at the end of the window that started it.
//! - while active: every window's score is kept for `event.json` (at most [`MAX_SCORES`], the oldest dropped).
//! - `post_secs` after the start, or at the end if sooner: the clip job, `pre_secs` before the start to then
//!   (at most `max_clip_secs`).
//! - once the writer reports the snapshot: one `update` carrying `evidence` (the controller's tick looks).
//! - `end`: its `evidence` names the snapshot and the clip (queued, or already written) and the bytes written so
//!   far; `event.json` is then rewritten with the `end` message as published.
//!
//! A job the full queue refuses is skipped (counted by the queue); the messages go out regardless.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::evidence::writer::{Job, JobKind, JobQueue, ScorePoint};
use crate::evidence::{EvidenceConfig, EvidenceParams, clip_name};
use crate::modality::Modality;

/// Most window scores kept per event for `event.json`.
pub const MAX_SCORES: usize = 3600;

/// What the controller needs for evidence.
#[derive(Debug, Clone)]
pub struct EvidenceSetup {
    /// The writer's queue.
    pub queue: Arc<JobQueue>,
    /// `[evidence]` as started.
    pub config: EvidenceConfig,
}

/// `evidence` in `event/1` `update` and `end` messages: paths relative to the evidence root.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvidenceRef {
    /// The snapshot (`{id}/snapshot.jpg` or `.png`), once written.
    pub snapshot: Option<String>,
    /// The clip, written or queued.
    pub clip: Option<String>,
    /// Bytes written for the event when the message was sent.
    pub bytes: u64,
}

struct Open {
    sensor: String,
    label: String,
    modality: Modality,
    params: EvidenceParams,
    started_at: Duration,
    start: serde_json::Value,
    scores: VecDeque<ScorePoint>,
    /// The clip job was handed to the queue (at `post_secs`); `clip` names it unless the queue refused it.
    clip_queued: bool,
    clip: Option<String>,
    snapshot_announced: bool,
}

/// The events with evidence in progress.
pub(super) struct EvidenceState {
    setup: EvidenceSetup,
    open: BTreeMap<String, Open>,
}

fn is_image(m: Modality) -> bool {
    matches!(m, Modality::Vision | Modality::Depth | Modality::Thermal)
}

fn ts(d: Duration) -> Timestamp {
    Timestamp(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl EvidenceState {
    pub(super) fn new(setup: EvidenceSetup) -> Self {
        Self {
            setup,
            open: BTreeMap::new(),
        }
    }

    /// The evidence parameters of a sensor's events of a prompt; `None` when they get none.
    pub(super) fn params(
        &self,
        modality: Modality,
        prompt: Option<&crate::labels::PromptConfig>,
    ) -> Option<EvidenceParams> {
        let p = self.setup.config.params(prompt.and_then(|p| p.evidence.as_ref()));
        (p.enabled && clip_name(modality).is_some()).then_some(p)
    }

    /// Whether snapshots of sensors of `modality` are published retained.
    pub(super) fn publishes(&self, modality: Modality) -> bool {
        is_image(modality) && self.setup.config.publish_snapshots.contains(&modality)
    }

    /// The (sensor, label, content type) pairs whose snapshots are published retained (Home Assistant `image`s).
    pub(super) fn snapshot_pairs<'a>(
        &self,
        sensors: impl Iterator<Item = (&'a str, Modality)>,
        prompts: &crate::labels::PromptSet,
    ) -> Vec<(String, String, &'static str)> {
        let mut out = Vec::new();
        for (sensor, modality) in sensors {
            if !self.publishes(modality) {
                continue;
            }
            let content_type = if modality == Modality::Vision {
                "image/jpeg"
            } else {
                "image/png"
            };
            for p in prompts.labels() {
                if p.config.applies_to(modality, sensor) && self.params(modality, Some(&p.config)).is_some() {
                    out.push((sensor.to_owned(), p.id.clone(), content_type));
                }
            }
        }
        out
    }

    fn job(&self, id: &str, o: &Open, kind: JobKind, end: Option<serde_json::Value>) -> Job {
        Job {
            id: id.to_owned(),
            sensor: o.sensor.clone(),
            label: o.label.clone(),
            kind,
            start: o.start.clone(),
            end,
            scores: o.scores.iter().cloned().collect(),
        }
    }

    /// An event started: its snapshot is queued (image sensors).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn started(
        &mut self,
        id: &str,
        sensor: &str,
        label: &str,
        modality: Modality,
        params: EvidenceParams,
        started_at: Duration,
        start: serde_json::Value,
    ) {
        let o = Open {
            sensor: sensor.to_owned(),
            label: label.to_owned(),
            modality,
            params,
            started_at,
            start,
            scores: VecDeque::new(),
            clip_queued: false,
            clip: None,
            snapshot_announced: !is_image(modality),
        };
        let kind = if is_image(modality) {
            JobKind::Snapshot { at: ts(started_at) }
        } else {
            JobKind::Record
        };
        let job = self.job(id, &o, kind, None);
        self.setup.queue.push(job);
        self.open.insert(id.to_owned(), o);
    }

    /// A window's score during the event.
    pub(super) fn score(&mut self, id: &str, seq: u64, t1: Timestamp, score: f32) {
        if let Some(o) = self.open.get_mut(id) {
            o.scores.push_back(ScorePoint {
                seq,
                t1: crate::clock::rfc3339_of(t1),
                score,
            });
            while o.scores.len() > MAX_SCORES {
                o.scores.pop_front();
            }
        }
    }

    fn clip_span(o: &Open, until: Duration) -> (Timestamp, Timestamp) {
        let from = o
            .started_at
            .saturating_sub(crate::events::duration_from_secs(o.params.pre_secs));
        let post = o.started_at + crate::events::duration_from_secs(o.params.post_secs);
        let longest = from + crate::events::duration_from_secs(o.params.max_clip_secs);
        (ts(from), ts(until.min(post).min(longest)))
    }

    /// What `update` and `end` messages of `id` say about its evidence now (`ending`: the clip that [`Self::ended`]
    /// will queue is named when the queue has room for it).
    pub(super) fn describe(&self, id: &str, ending: bool) -> Option<EvidenceRef> {
        let o = self.open.get(id)?;
        let written = self.setup.queue.index.get(id).unwrap_or_default();
        let clip = if o.clip_queued {
            o.clip.clone()
        } else if ending && self.setup.queue.has_room() {
            clip_name(o.modality).map(|c| crate::evidence::store::Store::relative(id, c))
        } else {
            None
        };
        Some(EvidenceRef {
            snapshot: written.snapshot,
            clip,
            bytes: written.bytes,
        })
    }

    /// The event ended at `at` with the `end` message `end`: its clip (if not yet written) or its record is queued.
    pub(super) fn ended(&mut self, id: &str, at: Duration, end: serde_json::Value) {
        let Some(o) = self.open.remove(id) else { return };
        let kind = if !o.clip_queued {
            let (from, to) = Self::clip_span(&o, at);
            JobKind::Clip { from, to }
        } else {
            JobKind::Record
        };
        let job = self.job(id, &o, kind, Some(end));
        self.setup.queue.push(job);
    }

    /// Every tick: clips whose `post_secs` have passed are queued; returns the events whose snapshot has just been
    /// written (to be announced with an `update`).
    pub(super) fn tick(&mut self, now: Duration) -> Vec<String> {
        let mut due = Vec::new();
        let mut announce = Vec::new();
        for (id, o) in &mut self.open {
            if !o.clip_queued && now >= o.started_at + crate::events::duration_from_secs(o.params.post_secs) {
                due.push(id.clone());
            }
            if !o.snapshot_announced && self.setup.queue.index.get(id).is_some_and(|w| w.snapshot.is_some()) {
                o.snapshot_announced = true;
                announce.push(id.clone());
            }
        }
        for id in due {
            let Some(o) = self.open.get(&id) else { continue };
            let (from, to) = Self::clip_span(o, now);
            let job = self.job(&id, o, JobKind::Clip { from, to }, None);
            let name = clip_name(o.modality).map(|c| crate::evidence::store::Store::relative(&id, c));
            let accepted = self.setup.queue.push(job);
            if let Some(o) = self.open.get_mut(&id) {
                // A refused clip is not retried: the history moves on (the skip is counted by the queue).
                o.clip_queued = true;
                o.clip = name.filter(|_| accepted);
            }
        }
        announce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(queue: usize) -> (EvidenceState, Arc<JobQueue>) {
        let q = Arc::new(JobQueue::new(queue));
        let config = EvidenceConfig {
            enabled: true,
            pre_secs: 2.0,
            post_secs: 5.0,
            max_clip_secs: 6.0,
            ..EvidenceConfig::default()
        };
        let s = EvidenceState::new(EvidenceSetup {
            queue: Arc::clone(&q),
            config,
        });
        (s, q)
    }

    fn secs(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    #[test]
    fn a_long_event_gets_its_clip_at_post_secs_capped_and_its_record_at_the_end() {
        let (mut ev, q) = state(8);
        let p = ev.params(Modality::Vision, None).unwrap();
        ev.started(
            "1-cam0-x-1",
            "cam0",
            "x",
            Modality::Vision,
            p,
            secs(100),
            serde_json::json!({"type": "start"}),
        );
        ev.score("1-cam0-x-1", 7, Timestamp(100_000_000_000), 0.9);
        assert!(ev.tick(secs(104)).is_empty());
        assert_eq!(q.stats.jobs_total.load(std::sync::atomic::Ordering::Relaxed), 1);
        ev.tick(secs(105));
        let described = ev.describe("1-cam0-x-1", false).unwrap();
        assert_eq!(described.clip.as_deref(), Some("1-cam0-x-1/clip.avi"));
        ev.ended("1-cam0-x-1", secs(130), serde_json::json!({"type": "end"}));
        let jobs: Vec<Job> = std::iter::from_fn(|| q.pop_now()).collect();
        let kinds: Vec<JobKind> = jobs.iter().map(|j| j.kind).collect();
        let ns = |s: u64| Timestamp(s * 1_000_000_000);
        assert_eq!(
            kinds,
            [
                JobKind::Snapshot { at: ns(100) },
                // From 98 s; post_secs would end it at 105 s, max_clip_secs at 104 s.
                JobKind::Clip {
                    from: ns(98),
                    to: ns(104)
                },
                JobKind::Record,
            ]
        );
        assert_eq!(jobs[2].end, Some(serde_json::json!({"type": "end"})));
        assert_eq!(jobs[2].scores.len(), 1);
    }

    #[test]
    fn a_short_event_gets_its_clip_at_the_end_and_a_full_queue_names_no_clip() {
        let (mut ev, q) = state(1);
        let p = ev.params(Modality::Audio, None).unwrap();
        ev.started(
            "1-mic0-x-1",
            "mic0",
            "x",
            Modality::Audio,
            p,
            secs(10),
            serde_json::json!({}),
        );
        // The queue (1 job) is full with the start's record: the end's clip cannot be queued.
        assert_eq!(ev.describe("1-mic0-x-1", true).unwrap().clip, None);
        let _ = q.pop_now();
        assert_eq!(
            ev.describe("1-mic0-x-1", true).unwrap().clip.as_deref(),
            Some("1-mic0-x-1/clip.wav")
        );
        ev.ended("1-mic0-x-1", secs(12), serde_json::json!({}));
        let ns = |s: u64| Timestamp(s * 1_000_000_000);
        assert_eq!(
            q.pop_now().unwrap().kind,
            JobKind::Clip {
                from: ns(8),
                to: ns(12)
            }
        );
        // Text has no evidence; a prompt can switch it off.
        assert!(ev.params(Modality::Text, None).is_none());
        let mut off = crate::labels::PromptConfig::new("x", "x");
        off.evidence = Some(crate::evidence::EvidenceOverride {
            enabled: Some(false),
            ..Default::default()
        });
        assert!(ev.params(Modality::Vision, Some(&off)).is_none());
    }
}
