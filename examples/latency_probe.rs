//! Measures window-close → MQTT delivery latency as a subscriber sees it.
//!
//! `cargo run --release --example latency_probe -- PORT SECONDS [FILTER]`
//!
//! Subscribes to FILTER (default `sensebind/+/labels/#`) on 127.0.0.1:PORT for SECONDS and, for every label
//! message, takes the arrival time minus the window's end (`t1`). Prints p50/p95/p99/max per modality and the
//! daemon's own `latency_ms` (window end → message made). Used for docs/BENCHMARKS.md.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).expect("PORT").parse().expect("PORT");
    let secs: u64 = args.get(2).expect("SECONDS").parse().expect("SECONDS");
    let filter = args.get(3).cloned().unwrap_or_else(|| "sensebind/+/labels/#".into());
    let mut opts = rumqttc::MqttOptions::new(format!("latency-probe-{}", std::process::id()), "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
    client.subscribe(filter, rumqttc::QoS::AtMostOnce).await.unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut delivered: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut internal: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    while Instant::now() < until {
        let Ok(ev) = tokio::time::timeout(Duration::from_millis(200), events.poll()).await else {
            continue;
        };
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = ev {
            let now = SystemTime::now();
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            let (Some(m), Some(t1)) = (v["modality"].as_str(), v["t1"].as_str()) else {
                continue;
            };
            let Ok(t1) = humantime::parse_rfc3339(t1) else { continue };
            let ms = now.duration_since(t1).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0);
            delivered.entry(m.to_owned()).or_default().push(ms);
            internal
                .entry(m.to_owned())
                .or_default()
                .push(v["latency_ms"].as_f64().unwrap_or(f64::NAN));
        }
    }
    println!(
        "{:<8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>14}",
        "modality", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "internal p99"
    );
    for (m, mut v) in delivered {
        v.sort_by(f64::total_cmp);
        let mut i = internal.remove(&m).unwrap_or_default();
        i.sort_by(f64::total_cmp);
        println!(
            "{m:<8} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>14.1}",
            v.len(),
            pct(&v, 0.5),
            pct(&v, 0.95),
            pct(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
            pct(&i, 0.99)
        );
    }
}
