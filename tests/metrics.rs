//! `[metrics]` (issue 14): `/metrics` scraped over a real TCP socket and parsed by the Python `prometheus_client`
//! text parser, its numbers checked against the `stats` messages of the same run; `/readyz` 503 while the broker
//! cannot be reached and 200 once it can; `/healthz` during start-up; the port closed at shutdown; a taken port a
//! start-up error naming the key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{Daemon, Mosquitto, Subscriber, imu_config, wait_until, walking_not_still};
use serde_json::Value;

/// An answer: status code, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `GET path` over a fresh connection, as a scraper sends it.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_ascii_lowercase(), v.to_owned())
        })
        .collect();
    let answer = Answer {
        status,
        headers,
        body: body.to_owned(),
    };
    assert_eq!(
        answer.headers.get("content-length").map(String::as_str),
        Some(answer.body.len().to_string().as_str())
    );
    Ok(answer)
}

/// The address the daemon logged (`metrics.listen` with port 0).
fn logged_address(d: &Daemon) -> SocketAddr {
    let mut found = None;
    wait_until(Duration::from_secs(30), "the metrics address in the log", || {
        found = d
            .log()
            .lines()
            .find(|l| l.contains("Serving /metrics"))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        found.is_some()
    });
    found.unwrap()
}

/// A metric family as the Python parser read it.
#[derive(Debug)]
struct Family {
    kind: String,
    help: String,
    /// (sample name, labels, value).
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses a scrape with `prometheus_client.parser.text_string_to_metric_families` (Debian's
/// python3-prometheus-client; `tools/install-deps` installs it). A line it cannot read fails the test.
fn parse_with_prometheus_client(text: &str) -> BTreeMap<String, Family> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    if f.name in out:
        raise SystemExit("family %s twice" % f.name)
    out[f.name] = {"type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
json.dump(out, sys.stdout)
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "python3-prometheus-client is missing: run tools/install-deps"
    );
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape: {stderr}\n{text}"
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    json.as_object()
        .unwrap()
        .iter()
        .map(|(name, f)| {
            let samples = f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect();
                    (s[0].as_str().unwrap().to_owned(), labels, s[2].as_f64().unwrap())
                })
                .collect();
            let family = Family {
                kind: f["type"].as_str().unwrap().to_owned(),
                help: f["help"].as_str().unwrap().to_owned(),
                samples,
            };
            (name.clone(), family)
        })
        .collect()
}

/// The value of sample `name` with exactly `labels`.
fn value(families: &BTreeMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    families
        .values()
        .flat_map(|f| &f.samples)
        .find(|(n, l, _)| n == name && *l == want)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .2
}

/// The sum of sample `name` over every label set.
fn sum(families: &BTreeMap<String, Family>, name: &str) -> f64 {
    families
        .values()
        .flat_map(|f| &f.samples)
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
        .sum()
}

/// `lo ≤ mid ≤ hi`: a counter read between two `stats` messages lies between their values.
fn between(what: &str, lo: f64, mid: f64, hi: f64) {
    assert!(lo <= mid && mid <= hi, "{what}: {mid} is not within [{lo}, {hi}]");
}

fn stats_ts(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap()
}

/// The whole contract over a real broker: readiness follows the broker, and a scrape taken between two `stats`
/// messages lies between them, counter by counter (same atomics, same units after conversion).
#[test]
fn readyz_follows_the_broker_and_metrics_agree_with_stats() {
    // A port with nothing listening: the broker comes up on it later.
    let broker_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let config = imu_config(
        "scraped",
        &format!("mqtt://127.0.0.1:{broker_port}"),
        &tmp.path().join("state"),
        "",
        &format!("{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n", walking_not_still(1.0)),
    );
    let mut d = Daemon::start(tmp.path(), "scraped", &config, &[]);
    let addr = logged_address(&d);
    assert_eq!(get(addr, "/healthz").unwrap().status, 200, "{}", d.log());
    wait_until(Duration::from_secs(60), "the pipeline running", || {
        d.log().contains("Pipeline running.")
    });
    let readyz = get(addr, "/readyz").unwrap();
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert_eq!(readyz.body, "not ready: the MQTT broker is not connected\n");
    let scrape = get(addr, "/metrics").unwrap();
    let families = parse_with_prometheus_client(&scrape.body);
    assert_eq!(value(&families, "sensebind_ready", &[]), 0.0);
    assert_eq!(value(&families, "sensebind_mqtt_connected", &[]), 0.0);
    assert!(value(&families, "sensebind_mqtt_connection_errors_total", &[]) >= 1.0);

    let broker = Mosquitto::start_on(broker_port);
    let sub = Subscriber::start(broker.port, "sensebind/scraped/stats");
    wait_until(Duration::from_secs(60), "/readyz 200 after the broker came up", || {
        get(addr, "/readyz").unwrap().status == 200
    });
    assert_eq!(get(addr, "/readyz").unwrap().body, "ready\n");
    // Enough of a run that the counters mean something: events have started and ended, stats are flowing.
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| {
            m.iter().any(|r| r.json()["events"]["ended_total"].as_u64() >= Some(2))
        }),
        "no events in stats:\n{}",
        d.log()
    );

    let before = sub.snapshot().last().unwrap().json();
    let scrape = get(addr, "/metrics").unwrap();
    let scraped_at = SystemTime::now();
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| {
            m.last()
                .is_some_and(|r| stats_ts(&r.json()) > scraped_at + Duration::from_millis(5))
        }),
        "no stats after the scrape"
    );
    let after = sub.snapshot().last().unwrap().json();
    assert_eq!(scrape.status, 200);
    assert_eq!(
        scrape.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let f = parse_with_prometheus_client(&scrape.body);
    check_families(&f);
    check_against_stats(&f, &before, &after);
    d.stop();
    assert!(get(addr, "/healthz").is_err(), "the port is closed after the exit");
}

/// Every family is there with its type and help text.
fn check_families(f: &BTreeMap<String, Family>) {
    for (name, kind) in [
        ("sensebind_build_info", "gauge"),
        ("sensebind_ready", "gauge"),
        ("sensebind_uptime_seconds", "gauge"),
        ("sensebind_source_online", "gauge"),
        ("sensebind_source_rate_hz", "gauge"),
        ("sensebind_source_samples", "counter"),
        ("sensebind_source_gaps", "counter"),
        ("sensebind_source_ring_dropped", "counter"),
        ("sensebind_source_windows", "counter"),
        ("sensebind_encoder_queued_windows", "gauge"),
        ("sensebind_encoder_windows_dropped", "counter"),
        ("sensebind_encoder_inference_seconds", "histogram"),
        ("sensebind_mqtt_connected", "gauge"),
        ("sensebind_mqtt_queue_messages", "gauge"),
        ("sensebind_mqtt_queue_dropped", "counter"),
        ("sensebind_events_started", "counter"),
        ("sensebind_events_ended", "counter"),
        ("sensebind_scored_windows_dropped", "counter"),
        ("sensebind_reloads", "counter"),
    ] {
        let family = f
            .get(name)
            .unwrap_or_else(|| panic!("no family {name}: {:?}", f.keys()));
        assert_eq!(family.kind, kind, "{name}");
        assert!(!family.help.is_empty(), "{name} has no help");
    }
    assert!(f.keys().all(|k| k.starts_with("sensebind_")), "{:?}", f.keys());
    assert_eq!(value(f, "sensebind_ready", &[]), 1.0);
    assert_eq!(value(f, "sensebind_mqtt_connected", &[]), 1.0);
    let build = &f["sensebind_build_info"].samples[0];
    assert_eq!(build.1["version"], env!("CARGO_PKG_VERSION"));
    // The histogram is cumulative and its +Inf bucket is its count.
    let imu: Vec<_> = f["sensebind_encoder_inference_seconds"]
        .samples
        .iter()
        .filter(|(n, l, _)| n.ends_with("_bucket") && l["modality"] == "imu")
        .collect();
    // `auto` runs the tower on ONNX Runtime where its library is found (tools/test), else on tract.
    let backend = imu[0].1["backend"].as_str();
    assert!(["tract", "onnxruntime"].contains(&backend), "{imu:?}");
    let buckets: Vec<(f64, f64)> = imu
        .iter()
        .map(|(_, l, v)| (l["le"].parse::<f64>().unwrap(), *v))
        .collect();
    assert_eq!(buckets.len(), 15, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{buckets:?}"
    );
    assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
    let count = value(
        f,
        "sensebind_encoder_inference_seconds_count",
        &[("modality", "imu"), ("backend", backend)],
    );
    assert_eq!(buckets.last().unwrap().1, count);
}

/// Each scraped number lies between the `stats` messages before and after the scrape.
fn check_against_stats(f: &BTreeMap<String, Family>, before: &Value, after: &Value) {
    let src = [("component_id", "imu0")];
    for (metric, key) in [
        ("sensebind_source_samples_total", "samples_total"),
        ("sensebind_source_read_errors_total", "read_errors_total"),
        ("sensebind_source_garbage_bytes_total", "garbage_bytes_total"),
        ("sensebind_source_lost_total", "lost_total"),
        ("sensebind_source_gaps_total", "gaps_total"),
        ("sensebind_source_overrun_samples_total", "overrun_samples_total"),
        ("sensebind_source_ring_dropped_total", "ring_dropped_total"),
        ("sensebind_source_windows_total", "windows_total"),
        ("sensebind_source_window_errors_total", "window_errors_total"),
        ("sensebind_source_windows_scored_total", "windows_scored_total"),
        ("sensebind_source_windows_gated_total", "windows_gated_total"),
    ] {
        let s = |v: &Value| v["sources"]["imu0"][key].as_f64().unwrap();
        between(metric, s(before), value(f, metric, &src), s(after));
    }
    assert!(value(f, "sensebind_source_samples_total", &src) > 0.0);
    assert_eq!(value(f, "sensebind_source_online", &src), 1.0);
    let gap = |v: &Value| v["sources"]["imu0"]["max_gap_ms"].as_f64().unwrap() / 1e3;
    between(
        "max gap",
        gap(before),
        value(f, "sensebind_source_max_gap_seconds", &src),
        gap(after),
    );

    let backend = after["encoders"]["imu"]["backend"].as_str().unwrap();
    let enc = [("modality", "imu"), ("backend", backend)];
    for (metric, key) in [
        ("sensebind_encoder_windows_queued_total", "windows_queued_total"),
        ("sensebind_encoder_windows_dropped_total", "windows_dropped_total"),
        ("sensebind_encoder_windows_encoded_total", "windows_encoded_total"),
        ("sensebind_encoder_windows_failed_total", "windows_failed_total"),
        ("sensebind_encoder_windows_gated_total", "windows_gated_total"),
        ("sensebind_encoder_batches_total", "batches_total"),
        ("sensebind_encoder_inference_seconds_count", "batches_total"),
    ] {
        let s = |v: &Value| v["encoders"]["imu"][key].as_f64().unwrap();
        between(metric, s(before), value(f, metric, &enc), s(after));
    }
    assert!(value(f, "sensebind_encoder_batches_total", &enc) > 0.0);
    // stats has the mean per call; times the calls it is the histogram's sum (µs precision both ways).
    let total_s = |v: &Value| {
        let e = &v["encoders"]["imu"];
        e["infer_ms_avg"].as_f64().unwrap() * e["batches_total"].as_f64().unwrap() / 1e3
    };
    let sum_s = value(f, "sensebind_encoder_inference_seconds_sum", &enc);
    between(
        "inference seconds",
        total_s(before) - 1e-6,
        sum_s,
        total_s(after) + 1e-6,
    );

    let ev = |v: &Value, key: &str| v["events"][key].as_f64().unwrap();
    let started = sum(f, "sensebind_events_started_total");
    between(
        "events started",
        ev(before, "started_total"),
        started,
        ev(after, "started_total"),
    );
    let ended = sum(f, "sensebind_events_ended_total");
    between(
        "events ended",
        ev(before, "ended_total"),
        ended,
        ev(after, "ended_total"),
    );
    assert!(value(f, "sensebind_events_started_total", &[("label", "walking")]) >= 2.0);
    for (metric, key) in [
        ("sensebind_scored_windows_dropped_total", "scored_dropped_total"),
        ("sensebind_embeddings_published_total", "embeddings_total"),
        ("sensebind_payload_errors_total", "payload_errors_total"),
        ("sensebind_prompt_cache_evictions_total", "prompt_cache_evictions_total"),
        ("sensebind_config_revision", "config_rev"),
    ] {
        between(metric, ev(before, key), value(f, metric, &[]), ev(after, key));
    }

    let mq = |v: &Value, key: &str| v["mqtt"][key].as_f64().unwrap();
    for (metric, key) in [
        ("sensebind_mqtt_connects_total", "connects_total"),
        ("sensebind_mqtt_connection_errors_total", "errors_total"),
        ("sensebind_mqtt_acked_total", "acked_total"),
        ("sensebind_mqtt_republished_total", "republished_total"),
        ("sensebind_mqtt_commands_total", "commands_total"),
        ("sensebind_mqtt_commands_dropped_total", "commands_dropped_total"),
        ("sensebind_mqtt_queue_requeued_total", "requeued_total"),
    ] {
        between(metric, mq(before, key), value(f, metric, &[]), mq(after, key));
    }
    between(
        "sent",
        mq(before, "sent_total"),
        sum(f, "sensebind_mqtt_queue_sent_total"),
        mq(after, "sent_total"),
    );
    for class in ["state", "events", "telemetry", "embeddings"] {
        let d = |v: &Value| v["mqtt"]["dropped"][class].as_f64().unwrap();
        let m = value(f, "sensebind_mqtt_queue_dropped_total", &[("class", class)]);
        between(&format!("dropped {class}"), d(before), m, d(after));
    }
    between(
        "superseded",
        mq(before, "superseded_total"),
        value(f, "sensebind_mqtt_queue_superseded_total", &[("class", "state")]),
        mq(after, "superseded_total"),
    );
}

/// `/healthz` answers while the models load and `/readyz` says why it is not ready; without MQTT the pipeline
/// running is ready; the port is closed once the run returns.
#[test]
fn healthz_answers_during_start_up_and_the_port_closes_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let prompts: String = (0..4)
        .map(|i| format!("[[prompts]]\nid = \"p{i}\"\ntext = \"prompt number {i}\"\n"))
        .collect();
    let rest = format!("{}{prompts}[metrics]\nlisten = \"{addr}\"\n", common::FAST_IMU);
    let text = common::offline_config("probes", &tmp.path().join("state"), "", &rest);
    let path = tmp.path().join("probes.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = sensebind::config::load(&path).unwrap();
    let options = sensebind::runtime::RunOptions {
        shutdown_timeout: Duration::from_secs(5),
        // Four prompts at 1 s each: a start-up long enough to look at.
        encoder_delay: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = common::spawn_named(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(sensebind::runtime::run(&loaded, &options, async {
            let _stopped = stop_rx.await;
        }))
        .unwrap()
    });
    let mut seen = Vec::new();
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready: {seen:?}");
        let Ok(readyz) = get(addr, "/readyz") else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let healthz = get(addr, "/healthz").unwrap();
        assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"), "{seen:?}");
        if seen.last() != Some(&(readyz.status, readyz.body.clone())) {
            seen.push((readyz.status, readyz.body.clone()));
        }
        if readyz.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen.first(),
        Some(&(503, "not ready: loading models\n".to_owned())),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&(200, "ready\n".to_owned())), "{seen:?}");
    drop(stop_tx);
    let summary = run.join().unwrap();
    assert!(summary.stragglers.is_empty(), "{:?}", summary.stragglers);
    assert!(
        get(addr, "/healthz").is_err(),
        "still listening on {addr} after the run"
    );
}

/// A port another process holds: the daemon does not start, and says which key to change.
#[test]
fn a_taken_port_is_a_start_up_error_naming_metrics_listen() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rest = format!("{}[metrics]\nlisten = \"{addr}\"\n", common::FAST_IMU);
    let text = common::offline_config("taken", &tmp.path().join("state"), "", &rest);
    let mut d = Daemon::start(tmp.path(), "taken", &text, &[]);
    let status = d.wait(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains(&format!("sensebind: error: metrics.listen: cannot listen on {addr}")),
        "{log}"
    );
    assert!(!log.contains("Loaded encoder"), "fails before the models load: {log}");
}
