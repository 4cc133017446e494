//! Hot reload through the real binary, a real broker and a real notification socket: SIGHUP with a broken file
//! keeps the last good configuration labelling and says why; a good file adds a prompt live and restarts only the
//! source that changed (the other's window numbers continue); `RELOADING=1`/`READY=1` surround each reload; the
//! `cmd` `reload` answers on `cmd/response` and removes a source with its retained topics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Listener, Mosquitto, Received, Subscriber, imu_config, publish_once, walking_not_still};
use sha2::{Digest, Sha256};

const DEVICE: &str = "rl";

/// A second synthetic IMU beside `imu_config`'s `imu0`.
fn imu1(window_secs: f64) -> String {
    format!(
        "[[sources]]\ntype = \"synthetic\"\nname = \"imu1\"\nmodality = \"imu\"\nrate_hz = 200.0\n\
         window_secs = {window_secs}\nhop_secs = 0.1\n"
    )
}

fn config(url: &str, state: &std::path::Path, extra: &str) -> String {
    imu_config(
        DEVICE,
        url,
        state,
        "",
        &format!("{}\n{extra}", walking_not_still(3600.0)),
    )
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `labels/1` messages of `sensor` received after `from` (an index into the messages).
fn labels(msgs: &[Received], sensor: &str, from: usize) -> Vec<serde_json::Value> {
    let topic = format!("sensebind/{DEVICE}/labels/{sensor}");
    msgs[from.min(msgs.len())..]
        .iter()
        .filter(|m| m.topic == topic)
        .map(Received::json)
        .collect()
}

fn config_states(msgs: &[Received]) -> Vec<serde_json::Value> {
    let topic = format!("sensebind/{DEVICE}/config/state");
    msgs.iter()
        .filter(|m| m.topic == topic && !m.payload.is_empty())
        .map(Received::json)
        .collect()
}

fn seqs(v: &[serde_json::Value]) -> Vec<u64> {
    v.iter().filter_map(|l| l["seq"].as_u64()).collect()
}

#[test]
fn sighup_keeps_the_last_good_file_when_broken_and_applies_a_good_one_live() {
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, &format!("sensebind/{DEVICE}/#"));
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut listener = Listener::bind(tmp.path());
    let good = config(&broker.url(), &state, &imu1(0.5));
    let sock = listener.path.display().to_string();
    let mut d = Daemon::start(tmp.path(), DEVICE, &good, &[("NOTIFY_SOCKET", sock.as_str())]);
    let file = tmp.path().join(format!("{DEVICE}.toml"));
    assert!(
        listener.read(Duration::from_secs(60), "READY=1"),
        "no READY:\n{}",
        d.log()
    );
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| labels(m, "imu1", 0).len() >= 3),
        "no labels:\n{}",
        d.log()
    );

    // 1. A broken file: every error with its key path; nothing changes, labelling goes on.
    let broken = format!(
        "{good}\n[[sources]]\ntype = \"synthetic\"\nname = \"imu9\"\nmodality = \"imu\"\nwindow_secs = -1.0\n\
         [[prompts]]\nid = \"Bad Id\"\ntext = \"x\"\n"
    );
    std::fs::write(&file, &broken).unwrap();
    let before = sub.snapshot().len();
    d.signal("-HUP");
    assert!(
        sub.wait_for(Duration::from_secs(20), |m| {
            config_states(m).last().is_some_and(|s| s["status"] == "rejected")
        }),
        "no rejection:\n{}",
        d.log()
    );
    let rejected = config_states(&sub.snapshot()).pop().unwrap();
    let errors: Vec<String> = serde_json::from_value(rejected["errors"].clone()).unwrap();
    assert!(
        errors.iter().any(|e| e.contains("sources[2].window_secs")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("prompts[2].id")), "{errors:?}");
    assert_eq!(rejected["source"], "reload");
    assert_eq!(
        rejected["config_hash"],
        sha256(&good),
        "the hash of the file still running"
    );
    assert!(
        d.log().contains("the last good configuration keeps running"),
        "{}",
        d.log()
    );
    let mark = sub.snapshot().len();
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| labels(m, "imu0", mark).len() >= 5),
        "labelling stopped after a rejected reload"
    );
    assert!(listener.read(Duration::from_secs(5), "READY=1"));
    let reloading = listener.first("RELOADING=1").expect("RELOADING=1");
    assert!(
        listener
            .got
            .iter()
            .any(|(t, m)| *t > reloading && m.contains("READY=1"))
    );
    assert!(before <= mark);

    // 2. A good file: a new prompt and imu1's windows changed (imu0 untouched).
    let newer = config(
        &broker.url(),
        &state,
        &format!(
            "{}\n[[prompts]]\nid = \"running\"\ntext = \"a person running\"\n",
            imu1(1.0)
        ),
    );
    std::fs::write(&file, &newer).unwrap();
    let mark = sub.snapshot().len();
    let sent = Instant::now();
    d.signal("-HUP");
    let live = |m: &[Received]| {
        labels(m, "imu0", mark)
            .iter()
            .any(|l| l["labels"].as_array().unwrap().iter().any(|x| x["label"] == "running"))
    };
    assert!(
        sub.wait_for(Duration::from_secs(20), live),
        "the new prompt never scored:\n{}",
        d.log()
    );
    let latency = sent.elapsed();
    // Live within one window of the reload (0.5 s windows every 0.1 s; the tiny towers take milliseconds).
    assert!(latency < Duration::from_secs(3), "new prompt live after {latency:?}");
    eprintln!("reload: SIGHUP → new prompt in a labels message after {latency:?}");
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| {
            config_states(m)
                .last()
                .is_some_and(|s| s["status"] == "ok" && s["source"] == "reload")
        }),
        "no config/state ok"
    );
    let ok = config_states(&sub.snapshot()).pop().unwrap();
    assert_eq!(ok["config_hash"], sha256(&newer));
    assert_eq!(ok["restarted"], serde_json::json!(["imu1"]));
    assert_eq!(ok["pending_restart"], serde_json::json!([]));
    assert_eq!(ok["prompts"], 3);
    // imu0 was not restarted: its window numbers continue without a reset or a gap across the reload, and its
    // labels keep coming at its hop.
    std::thread::sleep((sent + Duration::from_millis(2200)).saturating_duration_since(Instant::now()));
    let all = sub.snapshot();
    let topic = format!("sensebind/{DEVICE}/labels/imu0");
    let around: Vec<&Received> = all
        .iter()
        .filter(|m| m.topic == topic && m.at + Duration::from_secs(1) > sent && m.at < sent + Duration::from_secs(2))
        .collect();
    let imu0: Vec<u64> = around.iter().filter_map(|m| m.json()["seq"].as_u64()).collect();
    assert!(imu0.windows(2).all(|w| w[1] == w[0] + 1), "imu0 windows: {imu0:?}");
    assert!(
        around.first().is_some_and(|m| m.at < sent)
            && around.last().is_some_and(|m| m.at > sent + Duration::from_secs(1)),
        "imu0 labels do not span the reload"
    );
    assert!(imu0.len() >= 20, "{imu0:?}");
    let longest = around.windows(2).map(|w| w[1].at - w[0].at).max().unwrap_or_default();
    eprintln!("reload: imu0 (hop 0.1 s) longest time between labels around the reload: {longest:?}");
    // imu1 was: its numbers start again, with its new 1 s windows.
    let imu1_after: Vec<u64> = seqs(&labels(&all, "imu1", mark));
    assert!(imu1_after.contains(&0), "imu1 not restarted: {imu1_after:?}");
    listener.read(Duration::from_secs(1), "no such message");
    assert!(
        listener.got.iter().filter(|(_, m)| m.contains("RELOADING=1")).count() >= 2,
        "{:?}",
        listener.got
    );
    let stats = d.log();
    assert!(stats.contains("Configuration reloaded."), "{stats}");
    d.signal("-TERM");
    assert!(d.wait(Duration::from_secs(15)).expect("exits").success());
}

#[test]
fn the_reload_command_answers_and_removes_a_source_with_its_topics() {
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, &format!("sensebind/{DEVICE}/#"));
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let good = config(&broker.url(), &state, &imu1(0.5));
    let mut d = Daemon::start(tmp.path(), DEVICE, &good, &[]);
    let file = tmp.path().join(format!("{DEVICE}.toml"));
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| labels(m, "imu1", 0).len() >= 2),
        "no labels:\n{}",
        d.log()
    );
    // imu1 removed; the device's name changed too (that waits for a restart).
    let fewer = config(&broker.url(), &state, "").replace("name = \"Test rig\"", "name = \"Renamed rig\"");
    std::fs::write(&file, &fewer).unwrap();
    publish_once(
        broker.port,
        &format!("sensebind/{DEVICE}/cmd"),
        br#"{"cmd": "reload", "request_id": "r-7"}"#,
    );
    let response_topic = format!("sensebind/{DEVICE}/cmd/response");
    assert!(
        sub.wait_for(Duration::from_secs(20), |m| m.iter().any(|r| r.topic == response_topic)),
        "no response:\n{}",
        d.log()
    );
    let response = sub
        .snapshot()
        .into_iter()
        .find(|r| r.topic == response_topic)
        .unwrap()
        .json();
    assert_eq!(response["command"], "cmd/reload");
    assert_eq!(response["request_id"], "r-7");
    assert_eq!(response["ok"], true, "{response}");
    assert_eq!(response["result"]["config_hash"], sha256(&fewer));
    assert_eq!(
        response["result"]["pending_restart"],
        serde_json::json!(["device.name"])
    );
    // imu1's retained topics are cleared and its windows stop.
    let status = format!("sensebind/{DEVICE}/sensor/imu1/status");
    assert!(
        sub.wait_for(Duration::from_secs(5), |m| m
            .iter()
            .any(|r| r.topic == status && r.payload.is_empty())),
        "imu1's status not cleared"
    );
    let mark = sub.snapshot().len();
    assert!(sub.wait_for(Duration::from_secs(10), |m| labels(m, "imu0", mark).len() >= 5));
    let mark = sub.snapshot().len();
    assert!(sub.wait_for(Duration::from_secs(10), |m| labels(m, "imu0", mark).len() >= 5));
    assert!(labels(&sub.snapshot(), "imu1", mark).is_empty(), "imu1 still labelled");
    d.signal("-TERM");
    assert!(d.wait(Duration::from_secs(15)).expect("exits").success());
}

/// Issue 13 part 4: a `gate` added by a reload restarts its source alone, and from then on its windows are gated
/// (counted in `stats`, the encoder skipped) while the other source's are not.
#[test]
fn a_gate_added_by_a_reload_gates_that_source_from_its_restart() {
    let broker = Mosquitto::start();
    let sub = Subscriber::start(broker.port, &format!("sensebind/{DEVICE}/#"));
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut d = Daemon::start(tmp.path(), DEVICE, &config(&broker.url(), &state, &imu1(0.5)), &[]);
    let file = tmp.path().join(format!("{DEVICE}.toml"));
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| labels(m, "imu1", 0).len() >= 2),
        "no labels:\n{}",
        d.log()
    );
    // Every synthetic IMU window is far below this variance: all but the first after the restart are gated.
    let gated = config(
        &broker.url(),
        &state,
        &format!("{}gate = {{ min_imu_variance = 1000000.0 }}\n", imu1(0.5)),
    );
    std::fs::write(&file, &gated).unwrap();
    publish_once(
        broker.port,
        &format!("sensebind/{DEVICE}/cmd"),
        br#"{"cmd": "reload", "request_id": "g-1"}"#,
    );
    let response_topic = format!("sensebind/{DEVICE}/cmd/response");
    assert!(
        sub.wait_for(Duration::from_secs(20), |m| m.iter().any(|r| r.topic == response_topic)),
        "no response:\n{}",
        d.log()
    );
    let response = sub
        .snapshot()
        .into_iter()
        .find(|r| r.topic == response_topic)
        .unwrap()
        .json();
    assert_eq!(response["ok"], true, "{response}");
    assert_eq!(
        response["result"]["restarted"],
        serde_json::json!(["imu1"]),
        "{response}"
    );
    let gated_total = |m: &[Received], source: &str| {
        common::source_stats(m, DEVICE, source)
            .last()
            .and_then(|s| s["windows_gated_total"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        sub.wait_for(Duration::from_secs(20), |m| gated_total(m, "imu1") >= 5),
        "imu1's windows are not gated after the reload:\n{}",
        d.log()
    );
    d.signal("-TERM");
    assert!(d.wait(Duration::from_secs(15)).expect("exits").success());
    assert!(sub.wait_for(Duration::from_secs(5), |m| common::said_offline(m, DEVICE)));
    // The final stats (published after the pipeline drained): the restarted source's first window was embedded,
    // every later one gated; imu0 has no gate.
    let msgs = sub.snapshot();
    assert_eq!(gated_total(&msgs, "imu0"), 0, "imu0 has no gate");
    let last = common::source_stats(&msgs, DEVICE, "imu1").pop().unwrap();
    assert_eq!(
        last["windows_gated_total"].as_u64().unwrap() + 1,
        last["windows_scored_total"].as_u64().unwrap(),
        "{last}"
    );
}
