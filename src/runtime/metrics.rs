//! What the daemon counts, shared by the stages and read by `stats` (and the tests): per source, per encoder,
//! the MQTT connection and outbox, the controller.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::worker::EncoderStats;
use crate::clock;
use crate::control::ControlStats;
pub use crate::control::ReloadStats;
use crate::control::payloads::{
    EncoderStatsEntry, EventStatsEntry, EvidenceStatsEntry, HistoryStatsEntry, MqttStatsEntry, PerClass,
    ReloadStatsEntry, STATS_SCHEMA, SourceStatsEntry, StatsMessage,
};
use crate::modality::Modality;
use crate::publish::mqtt::MqttStats;
use crate::publish::{Class, Outbox};
use crate::ring::RingStats;
use crate::sources::SourceStats;

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Samples produced and read errors.
    pub source: Arc<SourceStats>,
    /// Ring pushes, pops and drops.
    pub ring: Arc<RingStats>,
    /// Windows cut and queued.
    pub windows_total: AtomicU64,
    /// Windows whose preprocessing failed.
    pub window_errors_total: AtomicU64,
}

/// Everything the daemon counts; shared with stats and tests.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per source (a reload adds, replaces and removes sources).
    pub sources: RwLock<BTreeMap<String, Arc<SourceCounters>>>,
    /// Per modality.
    pub encoders: BTreeMap<Modality, Arc<EncoderStats>>,
    /// The MQTT connection.
    pub mqtt: Arc<MqttStats>,
    /// The outbox.
    pub outbox: Option<Arc<Outbox>>,
    /// The controller (events, prompts).
    pub control: Arc<ControlStats>,
    /// Prompt embeddings evicted from the bounded prompt cache.
    pub prompt_cache_evictions: Arc<AtomicU64>,
    /// Configuration reloads.
    pub reloads: Arc<ReloadStats>,
    /// `[evidence]`: the writer's counters and the sensors' histories (none when evidence is off).
    pub evidence: Option<(
        Arc<crate::evidence::writer::EvidenceStats>,
        Arc<crate::evidence::history::Histories>,
    )>,
}

impl Metrics {
    /// The sources' counters now.
    pub fn sources(&self) -> BTreeMap<String, Arc<SourceCounters>> {
        match self.sources.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counts a source (anew, when a reload restarts it).
    pub fn set_source(&self, name: &str, counters: Arc<SourceCounters>) {
        match self.sources.write() {
            Ok(mut s) => s.insert(name.to_owned(), counters),
            Err(poisoned) => poisoned.into_inner().insert(name.to_owned(), counters),
        };
    }

    /// Forgets a source a reload removed.
    pub fn remove_source(&self, name: &str) {
        match self.sources.write() {
            Ok(mut s) => s.remove(name),
            Err(poisoned) => poisoned.into_inner().remove(name),
        };
    }

    /// A snapshot as the stats payload.
    pub fn snapshot(&self, device: &str, uptime: Duration) -> StatsMessage {
        StatsMessage {
            schema: STATS_SCHEMA,
            device: device.to_owned(),
            ts: clock::rfc3339(std::time::SystemTime::now()),
            uptime_s: uptime.as_secs_f64(),
            sources: self
                .sources()
                .iter()
                .map(|(name, c)| (name.clone(), source_entry(c)))
                .collect(),
            encoders: self
                .encoders
                .iter()
                .map(|(m, s)| (m.to_string(), encoder_entry(s)))
                .collect(),
            mqtt: self.mqtt_entry(),
            events: control_entry(&self.control, &self.prompt_cache_evictions),
            reloads: ReloadStatsEntry {
                applied_total: read(&self.reloads.applied_total),
                rejected_total: read(&self.reloads.rejected_total),
                sources_restarted_total: read(&self.reloads.sources_restarted_total),
                last_duration_ms: read(&self.reloads.last_duration_ms),
            },
            evidence: self.evidence.as_ref().map(|(s, h)| evidence_entry(s, h)),
        }
    }

    fn mqtt_entry(&self) -> MqttStatsEntry {
        let m = &self.mqtt;
        let outbox = |f: &dyn Fn(&Outbox) -> u64| self.outbox.as_deref().map_or(0, f);
        let per_class = |f: &dyn Fn(&crate::publish::ClassCounters) -> u64| {
            PerClass::from_fn(|c| outbox(&|o| f(&o.classes[c as usize])))
        };
        MqttStatsEntry {
            connected: m.connected.load(Ordering::Relaxed),
            connects_total: read(&m.connects_total),
            errors_total: read(&m.errors_total),
            queued: outbox(&|o| o.len() as u64),
            queued_by_class: PerClass::from_fn(|c| outbox(&|o| o.lens()[c as usize] as u64)),
            dropped_total: outbox(&Outbox::dropped_total),
            dropped: per_class(&|c| read(&c.dropped)),
            sent_total: outbox(&Outbox::sent_total),
            requeued_total: outbox(&|o| read(&o.requeued)),
            superseded_total: outbox(&|o| read(&o.classes[Class::State as usize].superseded)),
            acked_total: read(&m.acked_total),
            republished_total: read(&m.republished_total),
            last_republish_ms: read(&m.last_republish_ms),
            commands_total: read(&m.commands_total),
            commands_dropped_total: read(&m.commands_dropped_total),
            subscriptions_denied: m.subscriptions_denied.lock().map(|d| d.clone()).unwrap_or_default(),
        }
    }
}

fn evidence_entry(
    s: &crate::evidence::writer::EvidenceStats,
    h: &crate::evidence::history::Histories,
) -> EvidenceStatsEntry {
    EvidenceStatsEntry {
        jobs_total: read(&s.jobs_total),
        skipped_total: read(&s.skipped_total),
        files_total: read(&s.files_total),
        bytes_written_total: read(&s.bytes_written_total),
        errors_total: read(&s.errors_total),
        last_error: s.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        deleted_total: read(&s.deleted_total),
        bytes_on_disk: read(&s.bytes_on_disk),
        events_on_disk: read(&s.events_on_disk),
        snapshots_published_total: read(&s.snapshots_published_total),
        snapshots_oversize_total: read(&s.snapshots_oversize_total),
        write_ms_total: read(&s.write_us_total) / 1000,
        history: h
            .all()
            .into_iter()
            .map(|(name, h)| {
                let st = &h.stats;
                let entry = HistoryStatsEntry {
                    bytes: read(&st.bytes),
                    bytes_total: read(&st.bytes_total),
                    samples_total: read(&st.pushed_total),
                    dropped_total: read(&st.dropped_total),
                };
                (name, entry)
            })
            .collect(),
    }
}

fn read(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn source_entry(c: &SourceCounters) -> SourceStatsEntry {
    SourceStatsEntry {
        online: !c.source.offline.load(Ordering::Relaxed),
        samples_total: read(&c.source.samples_total),
        read_errors_total: read(&c.source.errors_total),
        garbage_bytes_total: read(&c.source.garbage_bytes_total),
        lost_total: read(&c.source.lost_total),
        rate_hz: (c.source.rate_hz() * 1000.0).round() / 1000.0,
        gaps_total: read(&c.source.gaps_total),
        max_gap_ms: read(&c.source.max_gap_ms),
        overrun_samples_total: read(&c.source.overrun_samples_total),
        ring_dropped_total: read(&c.ring.dropped),
        windows_total: read(&c.windows_total),
        window_errors_total: read(&c.window_errors_total),
        windows_scored_total: read(&c.source.windows_scored_total),
        windows_gated_total: read(&c.source.windows_gated_total),
    }
}

fn encoder_entry(s: &EncoderStats) -> EncoderStatsEntry {
    let batches = read(&s.batches_total);
    EncoderStatsEntry {
        backend: s.backend.get().copied().unwrap_or("none"),
        queued: read(&s.queued),
        windows_queued_total: read(&s.windows_queued_total),
        windows_dropped_total: read(&s.windows_dropped_total),
        windows_encoded_total: read(&s.windows_encoded_total),
        windows_failed_total: read(&s.windows_failed_total),
        windows_gated_total: read(&s.windows_gated_total),
        batches_total: batches,
        infer_ms_avg: if batches == 0 {
            0.0
        } else {
            read(&s.infer_us_total) as f64 / batches as f64 / 1e3
        },
    }
}

fn control_entry(c: &ControlStats, evictions: &AtomicU64) -> EventStatsEntry {
    EventStatsEntry {
        started_total: read(&c.events_started_total),
        ended_total: read(&c.events_ended_total),
        active: read(&c.events_active),
        scored_dropped_total: read(&c.scored_dropped_total),
        embeddings_total: read(&c.embeddings_total),
        prompt_updates_accepted_total: read(&c.prompt_updates_accepted_total),
        prompt_updates_rejected_total: read(&c.prompt_updates_rejected_total),
        payload_errors_total: read(&c.payload_errors_total),
        config_rev: read(&c.config_rev),
        prompt_cache_evictions_total: read(evictions),
    }
}
