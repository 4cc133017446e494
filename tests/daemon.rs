//! The daemon end to end against Debian's mosquitto: every modality replayed, labels received and checked,
//! SIGTERM mid-stream, overload with a slowed encoder, and a configuration full of mistakes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use common::{Mosquitto, Subscriber, media, root, toml_str};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sensebind")
}

/// A configuration replaying one real recording per modality.
fn six_modalities_config(mqtt_url: &str, state: &std::path::Path) -> String {
    format!(
        r#"
[device]
id = "e2e"

[runtime]
state_dir = {state}
stats_interval_secs = 1

[models]
dir = {models}

# The vision tower on tract whatever `auto` picks for the others (ONNX Runtime when tools/test provides it).
[models.towers.vision]
backend = "tract"
threads = 2

[mqtt]
url = "{mqtt_url}"
qos = 1

[preprocess.imu]
acc_columns = ["Acc_X", "Acc_Y", "Acc_Z"]
gyro_columns = ["Gyr_X", "Gyr_Y", "Gyr_Z"]
rate_hz = 120.0

[[sources]]
type = "replay"
name = "cam"
modality = "vision"
paths = [{video}]
window_secs = 1.0
hop_secs = 0.5

[[sources]]
type = "replay"
name = "mic"
modality = "audio"
paths = [{audio}]
window_secs = 1.0
hop_secs = 0.5

[[sources]]
type = "replay"
name = "depth"
modality = "depth"
paths = [{depth}]
rate_hz = 4.0
hop_secs = 0.5

[[sources]]
type = "replay"
name = "ir"
modality = "thermal"
paths = [{thermal}]
rate_hz = 4.0
hop_secs = 0.5

[[sources]]
type = "replay"
name = "imu"
modality = "imu"
paths = [{imu}]
window_secs = 2.0
hop_secs = 0.5

[[sources]]
type = "replay"
name = "notes"
modality = "text"
paths = [{text}]
rate_hz = 4.0

[[prompts]]
id = "dog"
text = "a dog barking"

[[prompts]]
id = "phone"
texts = ["a person on the phone", "a phone call"]

[[prompts]]
id = "walking"
text = "a person walking"
modalities = ["imu", "vision"]
"#,
        state = toml_str(state),
        models = toml_str(&root().join("models/imagebind-tiny")),
        video = media("carphone_pristine.mp4"),
        audio = media("loop_amen.flac"),
        depth = media("motorcycle_depth_mm_uint16.png"),
        thermal = media("flir_e60_moving_car_CC0.raw16.png"),
        imu = media("xsens_walking_lowerLeg_120Hz.txt"),
        text = media("captions.txt"),
    )
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn six_modalities_end_to_end_then_sigterm() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("e2e.toml");
    std::fs::write(&config, six_modalities_config(&broker.url(), &tmp.path().join("state"))).unwrap();
    let sub = Subscriber::start(broker.port, "sensebind/e2e/#");
    let wall_start = SystemTime::now();
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .args(["--shutdown-timeout-secs", "5"])
        .env("SENSEBIND_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let sources = ["cam", "mic", "depth", "ir", "imu", "notes"];
    let all_seen = sub.wait_for(Duration::from_secs(60), |msgs| {
        sources.iter().all(|s| {
            msgs.iter()
                .filter(|m| m.topic == format!("sensebind/e2e/labels/{s}"))
                .count()
                >= 2
        })
    });
    let log = || std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();
    assert!(all_seen, "not every source published two windows:\n{}", log());

    // SIGTERM mid-stream: exit 0 within the deadline, having said offline.
    let before_term = Instant::now();
    sigterm(child.id());
    let status = wait_exit(&mut child, Duration::from_secs(8)).expect("exited within the shutdown deadline");
    assert!(status.success(), "exit status {status:?}:\n{}", log());
    assert!(before_term.elapsed() < Duration::from_secs(7));
    let wall_end = SystemTime::now();
    assert!(
        sub.wait_for(Duration::from_secs(5), |m| common::said_offline(m, "e2e")),
        "offline, the daemon's last message, did not arrive:\n{}",
        log()
    );
    let msgs = sub.snapshot();

    // Availability: online first, offline last.
    let avail: Vec<String> = msgs
        .iter()
        .filter(|m| m.topic == "sensebind/e2e/availability")
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(avail.first().map(String::as_str), Some("online"), "{avail:?}");
    assert_eq!(
        avail.last().map(String::as_str),
        Some("offline"),
        "{avail:?}\n{}",
        log()
    );

    // Label messages: fields, per-source sequence numbers, timestamps inside the run.
    let mut per_source: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in msgs.iter().filter(|m| m.topic.starts_with("sensebind/e2e/labels/")) {
        let v = m.json();
        assert_eq!(v["schema"], "labels/1");
        assert_eq!(v["device"], "e2e");
        let source = v["source"].as_str().unwrap().to_owned();
        assert_eq!(m.topic, format!("sensebind/e2e/labels/{source}"));
        assert!(!m.retain, "label messages are not retained");
        let modality = v["modality"].as_str().unwrap();
        assert!(["vision", "audio", "depth", "thermal", "imu", "text"].contains(&modality));
        let t0 = humantime::parse_rfc3339(v["t0"].as_str().unwrap()).unwrap();
        let t1 = humantime::parse_rfc3339(v["t1"].as_str().unwrap()).unwrap();
        let ts = humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap();
        assert!(t0 <= t1 && t1 <= ts, "{v}");
        let slack = Duration::from_millis(5);
        assert!(
            t0 + slack >= wall_start && ts <= wall_end + slack,
            "{v} outside the run"
        );
        assert!(v["t0_mono_ns"].as_u64().unwrap() <= v["t1_mono_ns"].as_u64().unwrap());
        assert!(v["latency_ms"].as_f64().unwrap() >= 0.0);
        assert!(v["model"].as_str().unwrap().starts_with("imagebind-tiny@"));
        // Every applicable prompt is listed (top_k 3): dog and phone everywhere, walking on imu and vision only.
        let applicable = if modality == "imu" || modality == "vision" {
            3
        } else {
            2
        };
        let labels = common::check_scores(&v, applicable);
        if applicable == 2 {
            assert!(
                labels.iter().all(|(l, _)| l != "walking"),
                "walking applies to imu/vision only: {v}"
            );
        }
        per_source.entry(source).or_default().push(v["seq"].as_u64().unwrap());
    }
    for (source, seqs) in &per_source {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{source}: seq not increasing: {seqs:?}"
        );
    }

    // The final stats say every window that was embedded was published (nothing lost at shutdown).
    let last_stats = msgs
        .iter()
        .rev()
        .find(|m| m.topic == "sensebind/e2e/stats")
        .map(common::Received::json)
        .expect("stats published");
    for (modality, e) in last_stats["encoders"].as_object().unwrap() {
        let encoded = e["windows_encoded_total"].as_u64().unwrap();
        let received = msgs
            .iter()
            .filter(|m| m.topic.starts_with("sensebind/e2e/labels/") && m.json()["modality"] == *modality)
            .count() as u64;
        assert_eq!(
            received, encoded,
            "{modality}: {received} messages for {encoded} windows"
        );
    }
    assert_eq!(last_stats["mqtt"]["dropped_total"], 0);
    let auto_backend = if sensebind::encode::engine::ONNXRUNTIME_BUILT
        && std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty())
    {
        "onnxruntime"
    } else {
        "tract"
    };
    for (modality, e) in last_stats["encoders"].as_object().unwrap() {
        let expected = if modality == "vision" { "tract" } else { auto_backend };
        assert_eq!(e["backend"], expected, "{modality}");
    }

    // A new subscriber gets the retained availability: offline.
    drop(sub);
    let late = Subscriber::start(broker.port, "sensebind/e2e/availability");
    assert!(late.wait_for(Duration::from_secs(5), |m| {
        m.iter().any(|r| r.retain && r.payload == b"offline")
    }));
}

/// `seconds` of digital silence as a 16 kHz mono 16-bit WAV file.
fn silent_wav(path: &std::path::Path, seconds: u32) {
    let data_len = 16_000 * 2 * seconds;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&32_000u32.to_le_bytes()); // bytes per second
    b.extend_from_slice(&2u16.to_le_bytes()); // block align
    b.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    b.resize(b.len() + data_len as usize, 0);
    std::fs::write(path, b).unwrap();
}

/// Issue 13 part 4: a still picture and silence are gated (the encoder does not run for them, their labels keep the
/// previous scores), a video and a drum loop with the same gates are not.
#[test]
fn gates_skip_unchanged_windows_and_keep_previous_scores() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let silence = tmp.path().join("silence.wav");
    silent_wav(&silence, 3);
    let config = format!(
        r#"
[device]
id = "gates"
[runtime]
state_dir = {state}
stats_interval_secs = 1
[models]
dir = {models}
[models.towers.vision]
backend = "tract"
[mqtt]
url = "{url}"
qos = 1
[[sources]]
type = "replay"
name = "still"
modality = "vision"
paths = [{still}]
rate_hz = 8.0
window_secs = 1.0
hop_secs = 0.25
gate = {{ min_frame_diff = 0.005 }}
[[sources]]
type = "replay"
name = "cam"
modality = "vision"
paths = [{video}]
window_secs = 1.0
hop_secs = 0.5
gate = {{ min_frame_diff = 0.005 }}
[[sources]]
type = "replay"
name = "quiet"
modality = "audio"
paths = [{silence}]
window_secs = 1.0
hop_secs = 0.25
gate = {{ min_dbfs = -60.0 }}
[[sources]]
type = "replay"
name = "mic"
modality = "audio"
paths = [{audio}]
window_secs = 1.0
hop_secs = 0.5
gate = {{ min_dbfs = -60.0 }}
[[prompts]]
id = "dog"
text = "a dog barking"
[[prompts]]
id = "phone"
text = "a person on the phone"
"#,
        state = toml_str(&tmp.path().join("state")),
        models = toml_str(&root().join("models/imagebind-tiny")),
        url = broker.url(),
        still = media("astronaut.png"),
        video = media("carphone_pristine.mp4"),
        silence = toml_str(&silence),
        audio = media("loop_amen.flac"),
    );
    let path = tmp.path().join("gates.toml");
    std::fs::write(&path, config).unwrap();
    let sub = Subscriber::start(broker.port, "sensebind/gates/#");
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .args(["--shutdown-timeout-secs", "5"])
        .env("SENSEBIND_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();
    let labels = |msgs: &[common::Received], s: &str| {
        msgs.iter()
            .filter(|m| m.topic == format!("sensebind/gates/labels/{s}"))
            .count()
    };
    let enough = sub.wait_for(Duration::from_secs(60), |msgs| {
        labels(msgs, "still") >= 6 && labels(msgs, "quiet") >= 6 && labels(msgs, "cam") >= 3 && labels(msgs, "mic") >= 3
    });
    assert!(enough, "too few windows:\n{}", log());
    sigterm(child.id());
    let status = wait_exit(&mut child, Duration::from_secs(8)).expect("exited within the shutdown deadline");
    assert!(status.success(), "exit status {status:?}:\n{}", log());
    assert!(sub.wait_for(Duration::from_secs(5), |m| common::said_offline(m, "gates")));
    let msgs = sub.snapshot();
    let stats = msgs
        .iter()
        .rev()
        .find(|m| m.topic == "sensebind/gates/stats")
        .map(common::Received::json)
        .expect("stats published");
    let src = |s: &str, key: &str| stats["sources"][s][key].as_u64().unwrap();
    let enc = |m: &str, key: &str| stats["encoders"][m][key].as_u64().unwrap();
    // Constant inputs: every window after the first is gated; changing ones never are.
    for s in ["still", "quiet"] {
        let scored = src(s, "windows_scored_total");
        assert!(scored >= 6, "{s}: {scored} windows");
        assert_eq!(src(s, "windows_gated_total"), scored - 1, "{s}: {stats}");
    }
    for s in ["cam", "mic"] {
        assert!(src(s, "windows_scored_total") >= 3, "{s}: {stats}");
        assert_eq!(src(s, "windows_gated_total"), 0, "{s}: {stats}");
    }
    // The towers ran for the changing sources' windows and the constant sources' first window only.
    for (m, constant, changing) in [("vision", "still", "cam"), ("audio", "quiet", "mic")] {
        assert_eq!(
            enc(m, "windows_dropped_total") + enc(m, "windows_failed_total"),
            0,
            "{stats}"
        );
        assert_eq!(
            enc(m, "windows_gated_total"),
            src(constant, "windows_gated_total"),
            "{m}: {stats}"
        );
        assert_eq!(
            enc(m, "windows_encoded_total"),
            src(changing, "windows_scored_total") + 1,
            "{m}: {stats}"
        );
    }
    // A gated window keeps the previous scores: every label message of a constant source scores alike.
    for s in ["still", "quiet"] {
        let scores: Vec<Vec<(String, f64)>> = msgs
            .iter()
            .filter(|m| m.topic == format!("sensebind/gates/labels/{s}"))
            .map(|m| common::check_scores(&m.json(), 2))
            .collect();
        assert!(scores.windows(2).all(|w| w[0] == w[1]), "{s}: {scores:?}");
    }
    let cam: Vec<Vec<(String, f64)>> = msgs
        .iter()
        .filter(|m| m.topic == "sensebind/gates/labels/cam")
        .map(|m| common::check_scores(&m.json(), 2))
        .collect();
    assert!(
        cam.windows(2).any(|w| w[0] != w[1]),
        "the video's scores change: {cam:?}"
    );
}

#[test]
fn overload_drops_are_counted_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[device]
id = "overload"
[runtime]
state_dir = {state}
stats_interval_secs = 0
[models]
dir = {models}
max_batch = 1
max_wait_ms = 0
queue_windows = 2
[mqtt]
enabled = false
[[sources]]
type = "synthetic"
name = "fast"
modality = "imu"
rate_hz = 400.0
window_secs = 0.5
hop_secs = 0.02
[[prompts]]
id = "x"
text = "a person walking"
"#,
        state = toml_str(&tmp.path().join("state")),
        models = toml_str(&root().join("models/imagebind-tiny")),
    );
    let path = tmp.path().join("overload.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = sensebind::config::load(&path).unwrap();
    let options = sensebind::runtime::RunOptions {
        duration: Some(Duration::from_secs(3)),
        shutdown_timeout: Duration::from_secs(10),
        // 50 windows per second arrive; an encoder that needs 100 ms each keeps up with 10.
        encoder_delay: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt
        .block_on(sensebind::runtime::run(&loaded, &options, std::future::pending()))
        .unwrap();
    assert!(summary.stragglers.is_empty(), "{:?}", summary.stragglers);
    let m = &summary.metrics;
    let sources = m.sources();
    let src = &sources["fast"];
    let enc = &m.encoders[&sensebind::modality::Modality::Imu];
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let windows = r(&src.windows_total);
    let (queued, dropped, encoded, failed) = (
        r(&enc.windows_queued_total),
        r(&enc.windows_dropped_total),
        r(&enc.windows_encoded_total),
        r(&enc.windows_failed_total),
    );
    assert!(windows >= 50, "only {windows} windows");
    assert_eq!(queued, windows);
    // Every window was embedded, dropped or failed: exactly once.
    assert_eq!(
        encoded + dropped + failed,
        windows,
        "encoded {encoded} dropped {dropped} failed {failed}"
    );
    assert!(
        dropped > windows / 2,
        "the slowed encoder should have forced drops: {dropped} of {windows}"
    );
    assert_eq!(r(&enc.messages_total), encoded);
    // The ring was drained promptly by the window stage: samples in = samples out + dropped.
    assert_eq!(r(&src.ring.popped) + r(&src.ring.dropped), r(&src.source.samples_total));
    assert_eq!(r(&m.control.scored_dropped_total), 0);
    let outbox = m.outbox.as_ref().unwrap();
    assert!(outbox.is_empty());
    for c in &outbox.classes {
        assert_eq!(r(&c.sent) + r(&c.dropped) + r(&c.superseded), r(&c.enqueued));
    }
}

#[test]
fn config_with_several_mistakes_reports_each_with_path_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            r#"[device]
id = "Not A Slug"

[models]
dir = {models}
max_batch = 0

[mqtt]
url = "http://broker:1883"
qos = 3

[[sources]]
type = "replay"
name = "cam"
modality = "vision"
paths = ["/nonexistent/video.mp4"]
widnow_secs = 2.0

[[sources]]
type = "synthetic"
name = "mic"
modality = "audio"
hop_secs = -1.0

[[sources]]
type = "synthetic"
name = "mic"
modality = "depth"

[[prompts]]
id = "p1"
text = ""
sources = ["nope"]
threshold = 1.5
"#,
            models = toml_str(&root().join("models/imagebind-tiny"))
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for (path, line) in [
        ("device.id", 2),
        ("models.max_batch", 6),
        ("mqtt.url", 9),
        ("mqtt.qos", 10),
        ("sources[0].widnow_secs", 17),
    ] {
        let needle = format!("line {line}: {path}:");
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    // The unknown key stops sources[0] from deserialising; the other sections are still checked.
    for needle in [
        "line 23: sources[1].hop_secs:",
        "line 27: sources[2].name: \"mic\" is used by another source",
        "line 32: prompts[0].text: text 0 is empty",
        "line 33: prompts[0].sources[0]: no source is named \"nope\"",
        "line 34: prompts[0].threshold:",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("10 errors"), "{err}");

    // With the unknown key fixed, the cross-field checks report too.
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace("widnow_secs", "window_secs");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for needle in [
        "line 16: sources[0].paths[0]:",
        "line 23: sources[1].hop_secs:",
        "line 27: sources[2].name: \"mic\" is used by another source",
        "line 32: prompts[0].text: text 0 is empty",
        "line 33: prompts[0].sources[0]: no source is named \"nope\"",
        "line 34: prompts[0].threshold:",
        "line 2: device.id:",
        "line 10: mqtt.qos:",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    // A run with a bad configuration exits 64 too, before starting anything.
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn demo_runs_with_an_embedded_broker_and_prints_labels() {
    let out = Command::new(bin())
        .args(["demo", "--duration", "6"])
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for source in ["cam0", "mic0", "depth0", "ir0", "notes"] {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().nth(1) == Some(source)),
            "no line for {source}:\n{stdout}"
        );
    }
    assert!(stdout.contains("windows embedded and labelled, 0 dropped"), "{stdout}");
}
