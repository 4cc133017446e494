//! Labels through the real daemon and broker: background prompts (the configuration's own and the shipped ones)
//! take part in the softmax and never appear as labels, retained topics or Home Assistant entities; `zscore`
//! labels score 0 while warming up, then standard deviations, and keep their statistics across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::time::Duration;

use common::{Daemon, Mosquitto, Received, Subscriber, imu_config};

fn labels_of(msgs: &[Received], device: &str) -> Vec<serde_json::Value> {
    let topic = format!("sensebind/{device}/labels/imu0");
    msgs.iter().filter(|m| m.topic == topic).map(Received::json).collect()
}

#[test]
fn background_prompts_shape_the_softmax_and_publish_nothing_of_their_own() {
    let broker = Mosquitto::start();
    let dev = "bg";
    let sub = Subscriber::start(broker.port, "#");
    let tmp = tempfile::tempdir().unwrap();
    let prompts = r#"
[[prompts]]
id = "walking"
text = "a person walking"
threshold = 0.5

[[prompts]]
id = "quiet"
text = "a phone lying on a table"
role = "background"
"#;
    // The shipped background prompts too (the test helpers switch them off).
    let text = imu_config(dev, &broker.url(), &tmp.path().join("state"), "", prompts)
        .replace("default_background = false", "default_background = true");
    let mut d = Daemon::start(tmp.path(), dev, &text, &[]);
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| labels_of(m, dev).len() >= 5),
        "no labels:\n{}",
        d.log()
    );
    let msgs = sub.snapshot();
    for l in labels_of(&msgs, dev) {
        let labels = l["labels"].as_array().unwrap();
        assert_eq!(labels.len(), 1, "only the label is published: {l}");
        assert_eq!(labels[0]["label"], "walking");
        assert_eq!(labels[0]["mode"], "softmax");
        let score = labels[0]["score"].as_f64().unwrap();
        // One label alone would always score 1; with background prompts it does not.
        assert!(score < 0.99, "walking scored {score}");
    }
    assert!(
        d.log().contains("shipped_background=2"),
        "two shipped IMU prompts:\n{}",
        d.log()
    );
    // No retained topic and no Home Assistant entity for a background prompt.
    assert!(
        !msgs
            .iter()
            .any(|m| m.topic.contains("/label/quiet") || m.topic.contains("_background")),
        "a background prompt was published"
    );
    let discovery = msgs
        .iter()
        .rev()
        .find(|m| m.topic == format!("homeassistant/device/{dev}/config"))
        .expect("discovery")
        .json();
    let cmps = discovery["cmps"].as_object().unwrap();
    assert!(cmps.contains_key("label-walking"));
    assert!(
        !cmps.keys().any(|k| k.contains("quiet") || k.contains("background")),
        "{cmps:?}"
    );
    let state = msgs
        .iter()
        .rev()
        .find(|m| m.topic == format!("sensebind/{dev}/prompts/state"))
        .unwrap()
        .json();
    let roles: Vec<(String, String)> = state["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().into(), p["role"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("walking".into(), "label".into()),
            ("quiet".into(), "background".into())
        ]
    );
    d.signal("-TERM");
    assert!(d.wait(Duration::from_secs(15)).expect("exits").success());
}

#[test]
fn zscore_labels_warm_up_then_standardise_and_keep_their_statistics() {
    let broker = Mosquitto::start();
    let dev = "zs";
    let sub = Subscriber::start(broker.port, &format!("sensebind/{dev}/#"));
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let prompts = r#"
[[prompts]]
id = "walking"
text = "a person walking"
mode = "zscore"
threshold = 3.0
"#;
    let text = imu_config(dev, &broker.url(), &state, "", prompts).replace(
        "default_background = false",
        "default_background = false\nzscore_warmup_windows = 5",
    );
    let mut d = Daemon::start(tmp.path(), dev, &text, &[]);
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| labels_of(m, dev).len() >= 12),
        "no labels:\n{}",
        d.log()
    );
    let labels = labels_of(&sub.snapshot(), dev);
    let first: Vec<&serde_json::Value> = labels.iter().map(|l| &l["labels"][0]).collect();
    assert!(first.iter().all(|l| l["mode"] == "zscore"));
    // Windows 0–4 warm up: score 0, inactive.
    for l in &first[..5] {
        assert_eq!(l["score"], 0.0, "{l}");
        assert_eq!(l["active"], false);
    }
    // Then standard deviations from the running mean of this sensor's cosines (not the cosine itself).
    let later: Vec<f64> = first[5..].iter().map(|l| l["score"].as_f64().unwrap()).collect();
    let cos: Vec<f64> = first[5..].iter().map(|l| l["cosine"].as_f64().unwrap()).collect();
    assert!(
        later.iter().zip(&cos).any(|(z, c)| (z - c).abs() > 1e-6),
        "{later:?} vs {cos:?}"
    );
    d.signal("-TERM");
    assert!(d.wait(Duration::from_secs(15)).expect("exits").success());
    // The statistics were saved with the runtime state and are used again after a restart: no new warm-up.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("runtime-state.json")).unwrap()).unwrap();
    let n = saved["zscores"]["imu0/walking"]["n"].as_u64().unwrap();
    assert!(n >= 12, "saved after {n} windows");
    let mark = sub.snapshot().len();
    let mut d = Daemon::start(tmp.path(), dev, &text, &[]);
    assert!(sub.wait_for(Duration::from_secs(60), |m| labels_of(&m[mark..], dev).len() >= 2));
    let again = labels_of(&sub.snapshot()[mark..], dev);
    assert!(again.iter().all(|l| l["labels"][0]["mode"] == "zscore"), "{again:?}");
    d.signal("-TERM");
    assert!(d.wait(Duration::from_secs(15)).expect("exits").success());
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("runtime-state.json")).unwrap()).unwrap();
    // Counted on from the saved statistics, not from 0.
    assert!(saved["zscores"]["imu0/walking"]["n"].as_u64().unwrap() > n + 1);
}

/// The labels of the last labels message that carries every label in `ids`.
fn last_with(msgs: &[Received], device: &str, ids: &[&str]) -> Option<serde_json::Value> {
    labels_of(msgs, device).into_iter().rev().find(|l| {
        let labels = l["labels"].as_array().unwrap();
        ids.iter().all(|id| labels.iter().any(|x| x["label"] == *id))
    })
}

#[test]
fn exemplars_from_the_configuration_and_from_prompts_set_define_labels() {
    use base64::Engine;
    let broker = Mosquitto::start();
    let dev = "ex";
    let sub = Subscriber::start(broker.port, &format!("sensebind/{dev}/#"));
    let tmp = tempfile::tempdir().unwrap();
    let imu = common::root().join("tests/fixtures/media/xsens_walking_lowerLeg_120Hz.txt");
    // An IMU recording as an exemplar (its extension does not tell the tower, so the modality is given), with
    // `top_k` large enough for every label.
    let prompts = format!(
        r#"
[[prompts]]
id = "walking"
text = "a person walking"

[[prompts]]
id = "still"
text = "a phone lying still on a table"

[[prompts]]
id = "recorded-walk"
exemplars = [{{ path = {path}, modality = "imu" }}]
"#,
        path = common::toml_str(&imu)
    );
    let text = imu_config(dev, &broker.url(), &tmp.path().join("state"), "", &prompts)
        .replace("[runtime]", "[runtime]\ntop_k = 10")
        + "\n[preprocess.imu]\nrate_hz = 120.0\n";
    let mut d = Daemon::start(tmp.path(), dev, &text, &[]);
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| last_with(m, dev, &["recorded-walk"])
            .is_some()),
        "no labels with the exemplar prompt:\n{}",
        d.log()
    );
    let l = last_with(&sub.snapshot(), dev, &["recorded-walk"]).unwrap();
    let cos = |l: &serde_json::Value, id: &str| {
        l["labels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["label"] == id)
            .unwrap()["cosine"]
            .as_f64()
            .unwrap()
    };
    assert!(cos(&l, "recorded-walk").is_finite(), "{l}");

    // Over prompts/set: a one-line text file as a base64 exemplar embeds exactly like the same text as a prompt.
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let set = format!("sensebind/{dev}/prompts/set");
    let update = serde_json::json!({"upsert": [{
        "id": "walking-by-example",
        "exemplars": [{"base64": b64(b"a person walking\n"), "name": "walking.txt", "modality": "text"}]
    }]});
    common::publish_once(broker.port, &set, update.to_string().as_bytes());
    let responses = |m: &[Received]| -> Vec<serde_json::Value> {
        m.iter()
            .filter(|r| r.topic == format!("sensebind/{dev}/cmd/response"))
            .map(Received::json)
            .collect()
    };
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| !responses(m).is_empty()),
        "no response:\n{}",
        d.log()
    );
    let r = responses(&sub.snapshot()).pop().unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| last_with(
            m,
            dev,
            &["walking-by-example", "walking"]
        )
        .is_some()),
        "the exemplar label never scored:\n{}",
        d.log()
    );
    let l = last_with(&sub.snapshot(), dev, &["walking-by-example", "walking"]).unwrap();
    let (by_example, by_text) = (cos(&l, "walking-by-example"), cos(&l, "walking"));
    assert!((by_example - by_text).abs() < 1e-4, "{by_example} vs {by_text}: {l}");
    // The data was stored in the state directory; prompts/state names the file, not the data.
    let state = sub
        .snapshot()
        .iter()
        .rev()
        .find(|m| m.topic == format!("sensebind/{dev}/prompts/state"))
        .unwrap()
        .json();
    let stored = state["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "walking-by-example")
        .unwrap()["exemplars"][0]
        .clone();
    assert!(stored.get("base64").is_none(), "{stored}");
    let path = std::path::PathBuf::from(stored["path"].as_str().unwrap());
    assert!(
        path.starts_with(tmp.path().join("state/exemplars")),
        "{}",
        path.display()
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"a person walking\n");

    // Refused with a clear error, and nothing else changes: an audio exemplar without an audio tower, data over
    // the size limit, data that is not base64.
    let cases: [(serde_json::Value, &str); 3] = [
        (
            serde_json::json!({"base64": b64(&std::fs::read(common::root().join("tests/fixtures/media/bell.oga")).unwrap()), "name": "bell.oga"}),
            "audio tower",
        ),
        (
            serde_json::json!({"base64": b64(&vec![0u8; 170 * 1024]), "name": "big.wav"}),
            "limit",
        ),
        (
            serde_json::json!({"base64": "not base64!", "name": "x.wav"}),
            "does not decode",
        ),
    ];
    for (n, (exemplar, expect)) in cases.into_iter().enumerate() {
        let update = serde_json::json!({"upsert": [{"id": "bad", "exemplars": [exemplar]}]});
        common::publish_once(broker.port, &set, update.to_string().as_bytes());
        assert!(
            sub.wait_for(Duration::from_secs(30), |m| responses(m).len() >= n + 2),
            "no response to case {n}:\n{}",
            d.log()
        );
        let r = responses(&sub.snapshot()).pop().unwrap();
        assert_eq!(r["ok"], false, "{r}");
        assert!(r.to_string().contains(expect), "{expect:?} not in {r}");
    }
    let n = labels_of(&sub.snapshot(), dev).len();
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| labels_of(m, dev).len() > n + 3),
        "labelling goes on"
    );
    d.signal("-TERM");
    assert!(d.wait(Duration::from_secs(15)).expect("exits").success());
}
