//! `/metrics`: the run's counters in the Prometheus text format (version 0.0.4), written by `prometheus-client`.
//!
//! Nothing is counted twice: every value is read at scrape time from the same atomics that the `stats` message
//! reads ([`Metrics`]), through a `prometheus-client` [`Collector`]. Counter names get their `_total` suffix from
//! the encoder. docs/metrics.md lists every metric.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::health::Health;
use super::metrics::{Metrics, SourceCounters};
use super::worker::{EncoderStats, LATENCY_BUCKETS_US};
use crate::modality::Modality;
use crate::publish::Class;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `/metrics` page: process metrics, and the pipeline's once it runs.
pub fn render(health: &Health) -> Result<String, fmt::Error> {
    let page = Page {
        metrics: health.metrics(),
        uptime_s: health.uptime().as_secs_f64(),
        ready: health.readiness().is_ok(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(page));
    let mut out = String::with_capacity(32 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One scrape's view.
#[derive(Debug)]
struct Page {
    metrics: Option<Arc<Metrics>>,
    uptime_s: f64,
    ready: bool,
}

impl Collector for Page {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut enc;
        gauge(
            e,
            "sensebind_build_info",
            "Always 1; the version is a label.",
            [([("version", env!("CARGO_PKG_VERSION"))], 1u64)],
        )?;
        gauge(
            e,
            "sensebind_uptime_seconds",
            "Seconds since start.",
            one(self.uptime_s),
        )?;
        gauge(
            e,
            "sensebind_ready",
            "1 when /readyz answers 200: models loaded, pipeline running, broker connected (with MQTT on).",
            one(u64::from(self.ready)),
        )?;
        if let Some(m) = &self.metrics {
            sources(e, m)?;
            encoders(e, m)?;
            mqtt(e, m)?;
            events(e, m)?;
            reloads(e, m)?;
            evidence(e, m)?;
        }
        Ok(())
    }
}

fn read(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One unlabelled row.
fn one<V>(v: V) -> [(NoLabels, V); 1] {
    [(NoLabels, v)]
}

/// The empty label set.
#[derive(Debug, Clone, Copy)]
struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(&self, _: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> fmt::Result {
        Ok(())
    }
}

/// A counter family (`name` without `_total`: the encoder adds it), one row per label set.
fn counter<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
    }
    Ok(())
}

/// A gauge family, one row per label set (`u64` values print as integers, `f64` as floats).
fn gauge<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// One row per source, labelled with its name.
fn per_source<'a, T>(
    sources: &'a BTreeMap<String, Arc<SourceCounters>>,
    f: impl Fn(&SourceCounters) -> T + 'a,
) -> impl Iterator<Item = ([(&'static str, &'a str); 1], T)> + 'a {
    sources
        .iter()
        .map(move |(name, c)| ([("component_id", name.as_str())], f(c)))
}

/// One row per encoder, labelled with its modality and backend.
fn per_encoder<'a, T>(
    m: &'a Metrics,
    f: impl Fn(&EncoderStats) -> T + 'a,
) -> impl Iterator<Item = ([(&'static str, &'static str); 2], T)> + 'a {
    m.encoders.iter().map(move |(k, s)| (encoder_labels(*k, s), f(s)))
}

fn encoder_labels(modality: Modality, s: &EncoderStats) -> [(&'static str, &'static str); 2] {
    [
        ("modality", modality.as_str()),
        ("backend", s.backend.get().copied().unwrap_or("none")),
    ]
}

fn sources(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> fmt::Result {
    // A reload may add or remove sources: one snapshot for the whole page.
    let all = m.sources();
    let rows = |f: fn(&SourceCounters) -> u64| per_source(&all, f);
    let grows = |f: fn(&SourceCounters) -> f64| per_source(&all, f);
    gauge(
        e,
        "sensebind_source_online",
        "1 while the device is open (recordings and test signals are always online).",
        rows(|c| u64::from(!c.source.offline.load(Ordering::Relaxed))),
    )?;
    gauge(
        e,
        "sensebind_source_rate_hz",
        "Samples per second over the last full second (0 after two silent seconds).",
        grows(|c| c.source.rate_hz()),
    )?;
    counter(
        e,
        "sensebind_source_samples",
        "Samples produced.",
        rows(|c| read(&c.source.samples_total)),
    )?;
    counter(
        e,
        "sensebind_source_read_errors",
        "Files or items the source could not read.",
        rows(|c| read(&c.source.errors_total)),
    )?;
    counter(
        e,
        "sensebind_source_garbage_bytes",
        "Bytes the device sent that did not decode.",
        rows(|c| read(&c.source.garbage_bytes_total)),
    )?;
    counter(
        e,
        "sensebind_source_lost",
        "Times the device went away after being open.",
        rows(|c| read(&c.source.lost_total)),
    )?;
    counter(
        e,
        "sensebind_source_gaps",
        "Gaps in the sample timestamps longer than five nominal periods (sources with a nominal rate).",
        rows(|c| read(&c.source.gaps_total)),
    )?;
    gauge(
        e,
        "sensebind_source_max_gap_seconds",
        "The longest such gap.",
        grows(|c| read(&c.source.max_gap_ms) as f64 / 1e3),
    )?;
    counter(
        e,
        "sensebind_source_overrun_samples",
        "Samples the device delivered that were dropped before the ring.",
        rows(|c| read(&c.source.overrun_samples_total)),
    )?;
    counter(
        e,
        "sensebind_source_ring_dropped",
        "Samples dropped by the ring, oldest first (the window stage fell behind).",
        rows(|c| read(&c.ring.dropped)),
    )?;
    counter(
        e,
        "sensebind_source_windows",
        "Windows cut and queued.",
        rows(|c| read(&c.windows_total)),
    )?;
    counter(
        e,
        "sensebind_source_window_errors",
        "Windows whose preprocessing failed.",
        rows(|c| read(&c.window_errors_total)),
    )?;
    counter(
        e,
        "sensebind_source_windows_scored",
        "Windows scored against the prompts.",
        rows(|c| read(&c.source.windows_scored_total)),
    )?;
    counter(
        e,
        "sensebind_source_windows_gated",
        "Windows a gate found unchanged, scored with the previous embedding without running the encoder.",
        rows(|c| read(&c.source.windows_gated_total)),
    )
}

fn encoders(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> fmt::Result {
    let rows = |f: fn(&EncoderStats) -> u64| per_encoder(m, f);
    gauge(
        e,
        "sensebind_encoder_queued_windows",
        "Windows waiting in the encoder's queue.",
        per_encoder(m, |s| read(&s.queued)),
    )?;
    counter(
        e,
        "sensebind_encoder_windows_queued",
        "Windows queued for the encoder.",
        rows(|s| read(&s.windows_queued_total)),
    )?;
    counter(
        e,
        "sensebind_encoder_windows_dropped",
        "Windows dropped because the queue was full, oldest first (inference fell behind).",
        rows(|s| read(&s.windows_dropped_total)),
    )?;
    counter(
        e,
        "sensebind_encoder_windows_encoded",
        "Windows embedded.",
        rows(|s| read(&s.windows_encoded_total)),
    )?;
    counter(
        e,
        "sensebind_encoder_windows_failed",
        "Windows lost to an inference error.",
        rows(|s| read(&s.windows_failed_total)),
    )?;
    counter(
        e,
        "sensebind_encoder_windows_gated",
        "Windows a gate found unchanged: the previous embedding was reused and the encoder did not run.",
        rows(|s| read(&s.windows_gated_total)),
    )?;
    counter(
        e,
        "sensebind_encoder_batches",
        "Encoder calls.",
        rows(|s| read(&s.batches_total)),
    )?;
    let mut h = e.encode_descriptor(
        "sensebind_encoder_inference_seconds",
        "Duration of one encoder call (a batch of windows).",
        None,
        MetricType::Histogram,
    )?;
    for (k, s) in &m.encoders {
        let counts = s.infer_latency.counts();
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
            .iter()
            .zip(counts)
            .map(|(&bound, n)| (bound as f64 / 1e6, n))
            .collect();
        let labels = encoder_labels(*k, s);
        h.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            read(&s.infer_us_total) as f64 / 1e6,
            counts.iter().sum(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn mqtt(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> fmt::Result {
    let q = &m.mqtt;
    gauge(
        e,
        "sensebind_mqtt_connected",
        "1 while connected to the broker.",
        one(u64::from(q.connected.load(Ordering::Relaxed))),
    )?;
    counter(
        e,
        "sensebind_mqtt_connects",
        "CONNACKs received.",
        one(read(&q.connects_total)),
    )?;
    counter(
        e,
        "sensebind_mqtt_connection_errors",
        "Connection errors.",
        one(read(&q.errors_total)),
    )?;
    counter(
        e,
        "sensebind_mqtt_acked",
        "QoS 1 messages the broker acknowledged.",
        one(read(&q.acked_total)),
    )?;
    counter(
        e,
        "sensebind_mqtt_republished",
        "Retained messages republished after connects.",
        one(read(&q.republished_total)),
    )?;
    gauge(
        e,
        "sensebind_mqtt_last_republish_seconds",
        "From the last CONNACK until the broker had acknowledged every retained state message.",
        one(read(&q.last_republish_ms) as f64 / 1e3),
    )?;
    counter(
        e,
        "sensebind_mqtt_commands",
        "Commands received on the command topics.",
        one(read(&q.commands_total)),
    )?;
    counter(
        e,
        "sensebind_mqtt_commands_dropped",
        "Commands dropped because the controller's queue was full.",
        one(read(&q.commands_dropped_total)),
    )?;
    let denied = q.subscriptions_denied.lock().map(|d| d.len()).unwrap_or(0);
    gauge(
        e,
        "sensebind_mqtt_subscriptions_denied",
        "Filters the broker refused in its last SUBACK.",
        one(denied as u64),
    )?;
    outbox(e, m)
}

/// The outbox per class (state, events, telemetry, embeddings).
fn outbox(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> fmt::Result {
    let Some(ob) = m.outbox.as_deref() else {
        return Ok(());
    };
    let lens = ob.lens();
    let classes = |f: &dyn Fn(usize) -> u64| Class::ALL.map(|c| ([("class", c.as_str())], f(c as usize)));
    gauge(
        e,
        "sensebind_mqtt_queue_messages",
        "Messages waiting in the outbox.",
        Class::ALL.map(|c| ([("class", c.as_str())], lens[c as usize] as u64)),
    )?;
    counter(
        e,
        "sensebind_mqtt_queue_enqueued",
        "Messages accepted into the outbox.",
        classes(&|i| read(&ob.classes[i].enqueued)),
    )?;
    counter(
        e,
        "sensebind_mqtt_queue_dropped",
        "Messages dropped because the class's queue was full, oldest first.",
        classes(&|i| read(&ob.classes[i].dropped)),
    )?;
    counter(
        e,
        "sensebind_mqtt_queue_sent",
        "Messages handed to the MQTT client (again after a reconnect, if unacknowledged).",
        classes(&|i| read(&ob.classes[i].sent)),
    )?;
    counter(
        e,
        "sensebind_mqtt_queue_superseded",
        "Retained state replaced by a newer value of the same topic before it was sent.",
        classes(&|i| read(&ob.classes[i].superseded)),
    )?;
    counter(
        e,
        "sensebind_mqtt_queue_requeued",
        "Messages put back because the connection dropped before the broker acknowledged them.",
        one(read(&ob.requeued)),
    )
}

fn events(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> fmt::Result {
    let c = &m.control;
    let by_label = c.by_label.snapshot();
    counter(
        e,
        "sensebind_events_started",
        "Events started, per label.",
        by_label.iter().map(|(l, n)| ([("label", l.as_str())], n.started_total)),
    )?;
    counter(
        e,
        "sensebind_events_ended",
        "Events ended, per label.",
        by_label.iter().map(|(l, n)| ([("label", l.as_str())], n.ended_total)),
    )?;
    gauge(
        e,
        "sensebind_events_active",
        "Events in progress.",
        one(read(&c.events_active)),
    )?;
    counter(
        e,
        "sensebind_scored_windows_dropped",
        "Scored windows dropped, newest first, because the controller's queue was full.",
        one(read(&c.scored_dropped_total)),
    )?;
    counter(
        e,
        "sensebind_embeddings_published",
        "Embedding messages published.",
        one(read(&c.embeddings_total)),
    )?;
    counter(
        e,
        "sensebind_prompt_updates",
        "Prompt updates (prompts/set), by result.",
        [
            ([("result", "accepted")], read(&c.prompt_updates_accepted_total)),
            ([("result", "rejected")], read(&c.prompt_updates_rejected_total)),
        ],
    )?;
    counter(
        e,
        "sensebind_payload_errors",
        "Payloads not published because they could not be serialised.",
        one(read(&c.payload_errors_total)),
    )?;
    gauge(
        e,
        "sensebind_config_revision",
        "Current configuration revision.",
        one(read(&c.config_rev)),
    )?;
    counter(
        e,
        "sensebind_prompt_cache_evictions",
        "Prompt embeddings evicted from the bounded prompt cache.",
        one(read(&m.prompt_cache_evictions)),
    )
}

fn reloads(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> fmt::Result {
    let r = &m.reloads;
    counter(
        e,
        "sensebind_reloads",
        "Configuration reloads, by result (rejected: the file was invalid and the running configuration stayed).",
        [
            ([("result", "applied")], read(&r.applied_total)),
            ([("result", "rejected")], read(&r.rejected_total)),
        ],
    )?;
    counter(
        e,
        "sensebind_reload_sources_restarted",
        "Sources restarted by reloads.",
        one(read(&r.sources_restarted_total)),
    )?;
    gauge(
        e,
        "sensebind_reload_last_duration_seconds",
        "Duration of the last applied reload, from the request to the new configuration live.",
        one(read(&r.last_duration_ms) as f64 / 1e3),
    )
}

fn evidence(e: &mut DescriptorEncoder<'_>, m: &Metrics) -> fmt::Result {
    let Some((s, histories)) = &m.evidence else {
        return Ok(());
    };
    counter(
        e,
        "sensebind_evidence_jobs",
        "Evidence jobs, by result (skipped: the writer's queue was full; failed: the write or encoding failed).",
        [
            ([("result", "accepted")], read(&s.jobs_total)),
            ([("result", "skipped")], read(&s.skipped_total)),
            ([("result", "failed")], read(&s.errors_total)),
        ],
    )?;
    counter(
        e,
        "sensebind_evidence_written_bytes",
        "Evidence bytes written.",
        one(read(&s.bytes_written_total)),
    )?;
    counter(
        e,
        "sensebind_evidence_deleted_events",
        "Events deleted by evidence retention.",
        one(read(&s.deleted_total)),
    )?;
    gauge(
        e,
        "sensebind_evidence_disk_bytes",
        "Bytes under the evidence root.",
        one(read(&s.bytes_on_disk)),
    )?;
    let all = histories.all();
    let rows = |f: fn(&crate::evidence::history::HistoryStats) -> u64| {
        all.iter()
            .map(move |(n, h)| ([("component_id", n.as_str())], f(&h.stats)))
            .collect::<Vec<_>>()
    };
    gauge(
        e,
        "sensebind_history_bytes",
        "Bytes held by the sensor's history ring.",
        rows(|s| read(&s.bytes)),
    )?;
    counter(
        e,
        "sensebind_history_dropped_samples",
        "Samples dropped from a history ring before history_secs because it reached history_max_bytes.",
        rows(|s| read(&s.dropped_total)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlStats;
    use crate::publish::mqtt::MqttStats;

    #[test]
    fn before_the_pipeline_runs_only_process_metrics_are_shown() {
        let h = Health::new(
            true,
            &Arc::new(MqttStats::default()),
            &Arc::new(ControlStats::default()),
        );
        let text = render(&h).unwrap();
        assert!(text.contains("sensebind_build_info{version=\""), "{text}");
        assert!(text.contains("\nsensebind_ready 0\n"), "{text}");
        assert!(!text.contains("sensebind_source_"), "{text}");
    }

    #[test]
    fn evidence_counters_and_history_rings_are_rendered() {
        use crate::evidence::history::{Histories, History};
        let control = Arc::new(ControlStats::default());
        let stats = crate::evidence::writer::EvidenceStats::default();
        stats.skipped_total.fetch_add(2, Ordering::Relaxed);
        stats.errors_total.fetch_add(3, Ordering::Relaxed);
        let histories = Histories::default();
        let ring = Arc::new(History::new(crate::modality::Modality::Imu, 1.0, 1 << 20, 0.001));
        ring.push(crate::sources::Sample::Imu {
            t: crate::clock::Timestamp(1),
            values: [0.0; 6],
        });
        histories.insert("imu0", ring);
        let metrics = Metrics {
            control: Arc::clone(&control),
            evidence: Some((Arc::new(stats), Arc::new(histories))),
            ..Metrics::default()
        };
        let h = Health::new(false, &Arc::new(MqttStats::default()), &control);
        h.pipeline_running(&Arc::new(metrics));
        let text = render(&h).unwrap();
        for line in [
            "sensebind_evidence_jobs_total{result=\"skipped\"} 2",
            "sensebind_evidence_jobs_total{result=\"failed\"} 3",
            "sensebind_history_bytes{component_id=\"imu0\"} 32",
            "sensebind_history_dropped_samples_total{component_id=\"imu0\"} 0",
        ] {
            assert!(text.lines().any(|t| t == line), "no line {line:?} in\n{text}");
        }
    }

    #[test]
    fn counters_get_total_and_histograms_cumulate() {
        let control = Arc::new(ControlStats::default());
        let enc = Arc::new(super::super::worker::EncoderStats::default());
        enc.backend.get_or_init(|| "tract");
        for us in [400, 700, 20_000_000] {
            enc.batches_total.fetch_add(1, Ordering::Relaxed);
            enc.infer_us_total.fetch_add(us, Ordering::Relaxed);
            enc.infer_latency.record(us);
        }
        control.by_label.count("walking", true);
        let metrics = Metrics {
            encoders: [(crate::modality::Modality::Imu, enc)].into(),
            control: Arc::clone(&control),
            ..Metrics::default()
        };
        let h = Health::new(false, &Arc::new(MqttStats::default()), &control);
        h.pipeline_running(&Arc::new(metrics));
        let text = render(&h).unwrap();
        let l = r#"modality="imu",backend="tract""#;
        for line in [
            format!("sensebind_encoder_batches_total{{{l}}} 3"),
            format!("sensebind_encoder_inference_seconds_bucket{{{l},le=\"0.0005\"}} 1"),
            format!("sensebind_encoder_inference_seconds_bucket{{{l},le=\"0.001\"}} 2"),
            format!("sensebind_encoder_inference_seconds_bucket{{{l},le=\"10\"}} 2"),
            format!("sensebind_encoder_inference_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
            format!("sensebind_encoder_inference_seconds_count{{{l}}} 3"),
            "sensebind_events_started_total{label=\"walking\"} 1".to_owned(),
            "sensebind_events_ended_total{label=\"walking\"} 0".to_owned(),
            "sensebind_ready 1".to_owned(),
        ] {
            assert!(text.lines().any(|t| t == line), "no line {line:?} in\n{text}");
        }
        assert!(
            text.contains("# TYPE sensebind_encoder_inference_seconds histogram\n"),
            "{text}"
        );
    }
}
