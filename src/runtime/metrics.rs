//! What the daemon counts, shared by the stages and read by `stats` (and the tests): per source, per encoder,
//! the MQTT connection and outbox, the controller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::worker::EncoderStats;
use crate::clock;
use crate::control::ControlStats;
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
    /// Per source.
    pub sources: BTreeMap<String, Arc<SourceCounters>>,
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
}

/// The stats payload (`stats/1`).
#[derive(Debug, Serialize)]
pub struct StatsMessage {
    /// Schema id.
    pub schema: &'static str,
    /// Device id.
    pub device: String,
    /// When.
    pub ts: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Per source.
    pub sources: BTreeMap<String, serde_json::Value>,
    /// Per modality.
    pub encoders: BTreeMap<String, serde_json::Value>,
    /// The MQTT connection and outbox.
    pub mqtt: serde_json::Value,
    /// Events and prompt updates.
    pub events: serde_json::Value,
}

impl Metrics {
    /// A snapshot as the stats payload.
    pub fn snapshot(&self, device: &str, uptime: Duration) -> StatsMessage {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sources = self
            .sources
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "online": !c.source.offline.load(Ordering::Relaxed),
                        "samples_total": r(&c.source.samples_total),
                        "read_errors_total": r(&c.source.errors_total),
                        "garbage_bytes_total": r(&c.source.garbage_bytes_total),
                        "lost_total": r(&c.source.lost_total),
                        "rate_hz": (c.source.rate_hz() * 1000.0).round() / 1000.0,
                        "gaps_total": r(&c.source.gaps_total),
                        "max_gap_ms": r(&c.source.max_gap_ms),
                        "overrun_samples_total": r(&c.source.overrun_samples_total),
                        "ring_dropped_total": r(&c.ring.dropped),
                        "windows_total": r(&c.windows_total),
                        "window_errors_total": r(&c.window_errors_total),
                    }),
                )
            })
            .collect();
        let encoders = self
            .encoders
            .iter()
            .map(|(m, s)| {
                let batches = r(&s.batches_total);
                (
                    m.to_string(),
                    serde_json::json!({
                        "backend": s.backend.get().copied().unwrap_or("none"),
                        "windows_queued_total": r(&s.windows_queued_total),
                        "windows_dropped_total": r(&s.windows_dropped_total),
                        "windows_encoded_total": r(&s.windows_encoded_total),
                        "windows_failed_total": r(&s.windows_failed_total),
                        "batches_total": batches,
                        "infer_ms_avg": if batches == 0 { 0.0 } else { r(&s.infer_us_total) as f64 / batches as f64 / 1e3 },
                    }),
                )
            })
            .collect();
        let m = &self.mqtt;
        let per_class = |f: &dyn Fn(&crate::publish::ClassCounters) -> u64| -> serde_json::Value {
            let map: serde_json::Map<String, serde_json::Value> = Class::ALL
                .iter()
                .map(|&c| {
                    let v = self.outbox.as_ref().map_or(0, |o| f(&o.classes[c as usize]));
                    (c.as_str().to_owned(), v.into())
                })
                .collect();
            map.into()
        };
        let queued: serde_json::Map<String, serde_json::Value> = Class::ALL
            .iter()
            .map(|&c| {
                let n = self.outbox.as_ref().map_or(0, |o| o.lens()[c as usize]);
                (c.as_str().to_owned(), n.into())
            })
            .collect();
        let mqtt = serde_json::json!({
            "connected": m.connected.load(Ordering::Relaxed),
            "connects_total": r(&m.connects_total),
            "errors_total": r(&m.errors_total),
            "queued": self.outbox.as_ref().map_or(0, |o| o.len()),
            "queued_by_class": queued,
            "dropped_total": self.outbox.as_ref().map_or(0, |o| o.dropped_total()),
            "dropped": per_class(&|c| r(&c.dropped)),
            "sent_total": self.outbox.as_ref().map_or(0, |o| o.sent_total()),
            "requeued_total": self.outbox.as_ref().map_or(0, |o| r(&o.requeued)),
            "superseded_total": self.outbox.as_ref().map_or(0, |o| r(&o.classes[Class::State as usize].superseded)),
            "acked_total": r(&m.acked_total),
            "republished_total": r(&m.republished_total),
            "last_republish_ms": r(&m.last_republish_ms),
            "commands_total": r(&m.commands_total),
            "commands_dropped_total": r(&m.commands_dropped_total),
            "subscriptions_denied": m.subscriptions_denied.lock().map(|d| d.clone()).unwrap_or_default(),
        });
        let c = &self.control;
        let events = serde_json::json!({
            "started_total": r(&c.events_started_total),
            "ended_total": r(&c.events_ended_total),
            "active": r(&c.events_active),
            "scored_dropped_total": r(&c.scored_dropped_total),
            "embeddings_total": r(&c.embeddings_total),
            "prompt_updates_accepted_total": r(&c.prompt_updates_accepted_total),
            "prompt_updates_rejected_total": r(&c.prompt_updates_rejected_total),
            "config_rev": r(&c.config_rev),
            "prompt_cache_evictions_total": r(&self.prompt_cache_evictions),
        });
        StatsMessage {
            schema: "stats/1",
            device: device.to_owned(),
            ts: clock::rfc3339(std::time::SystemTime::now()),
            uptime_s: uptime.as_secs_f64(),
            sources,
            encoders,
            mqtt,
            events,
        }
    }
}
