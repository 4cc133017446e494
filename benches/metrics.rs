//! `/metrics` at the size of a loaded device: six sensors (one per sensor modality, two IMUs), their five
//! encoders, 64 prompts' worth of per-label event counters, the outbox and the reload counters, all with
//! many-digit values.
//!
//! - `metrics/render`: the page built from the counters (what a scrape costs the daemon), criterion, beside
//!   `metrics/stats_json`: the `stats/1` message of the same counters, the MQTT side's equivalent;
//! - then 2000 real scrapes over loopback (connect, `GET /metrics`, read to the end, close) against the daemon's
//!   own server, timed one by one: mean, median and 99th percentile, and the page's size.
//!
//! `cargo bench --bench metrics`; figures in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // benchmark setup and report

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use sensebind::control::ControlStats;
use sensebind::modality::Modality;
use sensebind::publish::mqtt::MqttStats;
use sensebind::publish::{OutMessage, Outbox, OutboxLimits};
use sensebind::runtime::exposition;
use sensebind::runtime::health::Health;
use sensebind::runtime::http::{Limits, MetricsServer};
use sensebind::runtime::metrics::{Metrics, SourceCounters};
use sensebind::runtime::worker::EncoderStats;

const SENSORS: [(&str, Modality); 6] = [
    ("cam_front", Modality::Vision),
    ("mic_ceiling", Modality::Audio),
    ("depth_front", Modality::Depth),
    ("thermal_door", Modality::Thermal),
    ("imu_wrist", Modality::Imu),
    ("imu_belt", Modality::Imu),
];
const PROMPTS: usize = 64;

/// A daemon's worth of counters, days into a run.
fn loaded_health() -> Arc<Health> {
    let mqtt = Arc::new(MqttStats::default());
    let control = Arc::new(ControlStats::default());
    let big = 123_456_789u64;
    let mut metrics = Metrics {
        mqtt: Arc::clone(&mqtt),
        control: Arc::clone(&control),
        ..Metrics::default()
    };
    for (i, (name, modality)) in SENSORS.iter().enumerate() {
        let c = SourceCounters::default();
        c.source.samples_total.store(big * 40 + i as u64, Ordering::Relaxed);
        c.source.rate_mhz.store(29_970, Ordering::Relaxed);
        c.source
            .last_push_ns
            .store(sensebind::clock::now().0, Ordering::Relaxed);
        c.source.gaps_total.store(17, Ordering::Relaxed);
        c.source.max_gap_ms.store(1234, Ordering::Relaxed);
        c.ring.dropped.store(4321, Ordering::Relaxed);
        c.windows_total.store(big, Ordering::Relaxed);
        c.source.windows_scored_total.store(big - 1000, Ordering::Relaxed);
        metrics.set_source(name, Arc::new(c));
        let enc = metrics
            .encoders
            .entry(*modality)
            .or_insert_with(|| Arc::new(EncoderStats::default()));
        enc.backend.get_or_init(|| "onnxruntime");
        for us in [800, 3_000, 12_000, 40_000, 90_000, 300_000] {
            for _ in 0..(i + 1) * 100 {
                enc.infer_latency.record(us);
            }
            enc.infer_us_total.fetch_add(us * 100, Ordering::Relaxed);
            enc.batches_total.fetch_add(100, Ordering::Relaxed);
        }
        enc.windows_queued_total.store(big, Ordering::Relaxed);
        enc.windows_encoded_total.store(big - 5000, Ordering::Relaxed);
        enc.windows_dropped_total.store(5000, Ordering::Relaxed);
        enc.queued.store(3, Ordering::Relaxed);
    }
    for p in 0..PROMPTS {
        let label = format!("prompt_label_{p:02}");
        for _ in 0..(p % 7) + 1 {
            control.by_label.count(&label, true);
            control.by_label.count(&label, false);
        }
    }
    let outbox = Outbox::new(OutboxLimits {
        state: 1000,
        events: 1000,
        telemetry: 100,
        embeddings: 100,
    });
    for i in 0..50 {
        outbox.push(OutMessage::telemetry(
            format!("sensebind/dev/labels/s{i}"),
            vec![b'x'; 100],
            0,
        ));
    }
    metrics.outbox = Some(Arc::new(outbox));
    mqtt.connected.store(true, Ordering::Relaxed);
    mqtt.connects_total.store(3, Ordering::Relaxed);
    let health = Arc::new(Health::new(true, &mqtt, &control));
    health.pipeline_running(&Arc::new(metrics));
    health
}

fn bench_render(c: &mut Criterion) {
    let health = loaded_health();
    let page = exposition::render(&health).unwrap();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Bytes(page.len() as u64));
    g.bench_function("render", |b| b.iter(|| black_box(exposition::render(&health).unwrap())));
    // The peer in the same run: the stats/1 message of the same counters (what the MQTT side pays per interval).
    let metrics = health.metrics().unwrap();
    let stats = |m: &Metrics| serde_json::to_vec(&m.snapshot("dock-07", Duration::from_secs(86_400))).unwrap();
    g.throughput(Throughput::Bytes(stats(&metrics).len() as u64));
    g.bench_function("stats_json", |b| b.iter(|| black_box(stats(&metrics))));
    g.finish();
    eprintln!(
        "metrics/render: page {} bytes; stats_json: {} bytes",
        page.len(),
        stats(&metrics).len()
    );
}

criterion_group!(benches, bench_render);

/// Real scrapes over loopback, one connection each, as Prometheus makes them.
fn scrape_loopback(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let health = loaded_health();
    let server = rt
        .block_on(MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            &health,
            Limits::default(),
        ))
        .unwrap();
    let addr = server.local_addr();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    let mut times = Vec::with_capacity(n);
    let mut size = (0, 0);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::with_capacity(64 * 1024);
        s.read_to_end(&mut answer).unwrap();
        times.push(t.elapsed());
        let body = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        size = (answer.len() - body, answer.len());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / n as u32;
    let at = |q: f64| times[((n as f64 * q) as usize).min(n - 1)];
    let page = exposition::render(&health).unwrap();
    eprintln!(
        "metrics/scrape_loopback: {n} scrapes: mean {:.0} µs, median {:.0} µs, p99 {:.0} µs; page {} bytes \
         ({} with the HTTP head), {} lines, {} samples",
        mean.as_secs_f64() * 1e6,
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        size.0,
        size.1,
        page.lines().count(),
        page.lines().filter(|l| !l.starts_with('#')).count(),
    );
    drop(server);
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs each benchmark once; keep the scrape loop short there too.
    let quick = std::env::args().any(|a| a == "--test");
    scrape_loopback(if quick { 20 } else { 2000 });
}
