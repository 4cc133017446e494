//! The MQTT contract (docs/mqtt.md) against Debian's mosquitto: retained state, events, embeddings, runtime prompt
//! updates with every kind of bad input, Home Assistant discovery, password/TLS/ACL brokers, the broker killed
//! mid-stream, and the daemon killed (Last Will, events closed on restart). Every JSON payload received is
//! validated against its schema in docs/schemas/.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Daemon, Mosquitto, Received, Subscriber, imu_config};

/// `walking` is on for every window and `still` for none, so walking's events cycle by `max_event_secs`.
fn prompts() -> String {
    common::walking_not_still(0.5)
}

fn text(m: &Received) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

fn last_on(msgs: &[Received], topic: &str) -> Option<Received> {
    msgs.iter().rev().find(|m| m.topic == topic).cloned()
}

fn responses(msgs: &[Received], dev: &str) -> Vec<serde_json::Value> {
    msgs.iter()
        .filter(|m| m.topic == format!("sensebind/{dev}/cmd/response"))
        .map(Received::json)
        .collect()
}

/// Validates every JSON payload on a topic with a schema in docs/schemas/.
fn validate_all(msgs: &[Received]) -> usize {
    let mut n = 0;
    for m in msgs {
        if let Some(schema) = common::schema::schema_for_topic(&m.topic)
            && !m.payload.is_empty()
        {
            common::schema::validate(schema, &m.json()).unwrap_or_else(|e| panic!("{}: {e}\n{}", m.topic, text(m)));
            n += 1;
        }
    }
    n
}

#[test]
fn retained_state_events_embeddings_and_clean_shutdown() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(broker.port, "sensebind/st/#");
    let ha = Subscriber::start(broker.port, "homeassistant/#");
    let cfg = imu_config(
        "st",
        &broker.url(),
        &tmp.path().join("state"),
        "[mqtt.embeddings]\nmode = \"every_n\"\nevery_n = 2\ndtype = \"f16\"\n",
        &prompts(),
    );
    let mut d = Daemon::start(tmp.path(), "st", &cfg, &[]);
    let ok = sub.wait_for(Duration::from_secs(60), |m| {
        m.iter()
            .filter(|r| r.topic == "sensebind/st/events/imu0/walking" && r.json()["type"] == "end")
            .count()
            >= 2
    });
    assert!(ok, "two events did not end:\n{}", d.log());
    // The retained topics, as a new subscriber sees them.
    let late = Subscriber::start(broker.port, "sensebind/st/#");
    let want = [
        "sensebind/st/availability",
        "sensebind/st/info",
        "sensebind/st/config/state",
        "sensebind/st/prompts/state",
        "sensebind/st/sensor/imu0/status",
        "sensebind/st/sensor/imu0/enabled/state",
        "sensebind/st/label/walking/state",
        "sensebind/st/label/walking/enabled/state",
        "sensebind/st/label/still/state",
        "sensebind/st/label/still/enabled/state",
    ];
    assert!(
        late.wait_for(Duration::from_secs(5), |m| want
            .iter()
            .all(|t| m.iter().any(|r| r.topic == *t && r.retain))),
        "retained topics missing: {:?}",
        late.snapshot().iter().map(|r| r.topic.clone()).collect::<Vec<_>>()
    );
    let retained = late.snapshot();
    assert!(
        retained.iter().all(|r| !(r.retain && r.topic.contains("/events/"))),
        "events are never retained"
    );
    assert_eq!(
        text(&last_on(&retained, "sensebind/st/availability").unwrap()),
        "online"
    );
    assert_eq!(
        text(&last_on(&retained, "sensebind/st/sensor/imu0/status").unwrap()),
        "online"
    );
    let info = last_on(&retained, "sensebind/st/info").unwrap().json();
    assert_eq!(info["device"], "st");
    assert_eq!(info["sensors"][0]["name"], "imu0");
    let prompts = last_on(&retained, "sensebind/st/prompts/state").unwrap().json();
    assert_eq!(prompts["prompts"][0]["id"], "walking");
    assert_eq!(prompts["prompts"][0]["max_event_secs"], 0.5);
    assert_eq!(prompts["prompts"][1]["id"], "still");
    // Home Assistant discovery, retained.
    assert!(ha.wait_for(Duration::from_secs(5), |m| {
        m.iter().any(|r| r.topic == "homeassistant/device/st/config")
    }));
    let disc = last_on(&ha.snapshot(), "homeassistant/device/st/config")
        .unwrap()
        .json();
    assert_eq!(
        disc["cmps"]["label-walking"]["stat_t"],
        "sensebind/st/label/walking/state"
    );
    assert_eq!(disc["cmps"]["label-walking"]["dev_cla"], "motion");
    assert_eq!(
        disc["cmps"]["sensor_switch-imu0"]["cmd_t"],
        "sensebind/st/sensor/imu0/enabled/set"
    );
    assert_eq!(disc["avty"][0]["t"], "sensebind/st/availability");
    // Home Assistant restarting: discovery comes again.
    let before = ha.snapshot().len();
    common::publish(broker.port, "homeassistant/status", b"online", false);
    assert!(
        ha.wait_for(Duration::from_secs(5), |m| m.len() > before),
        "discovery not re-sent on HA birth"
    );

    d.stop();
    assert!(
        sub.wait_for(Duration::from_secs(5), |m| common::said_offline(m, "st")),
        "offline, the daemon's last message, did not arrive:\n{}",
        d.log()
    );
    let msgs = sub.snapshot();
    // Every start has exactly one end, with consecutive message numbers; ids are unique per event.
    let mut events: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for m in msgs.iter().filter(|m| m.topic.starts_with("sensebind/st/events/")) {
        assert!(!m.retain);
        let v = m.json();
        events.entry(v["id"].as_str().unwrap().to_owned()).or_default().push(v);
    }
    assert!(events.len() >= 2, "{events:?}");
    let mut reasons = BTreeSet::new();
    for (id, list) in &events {
        let types: Vec<&str> = list.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"start"), "{id}: {types:?}");
        assert_eq!(types.last(), Some(&"end"), "{id}: {types:?}");
        assert_eq!(types.iter().filter(|t| **t == "end").count(), 1, "{id}: {types:?}");
        let seqs: Vec<u64> = list.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{id}");
        reasons.insert(list.last().unwrap()["end_reason"].as_str().unwrap().to_owned());
        assert_eq!(list[0]["label"], "walking");
        assert_eq!(list[0]["sensor"], "imu0");
        // One window per decision (`aggregate_windows = 1`): the start's score and its runner-up's are that
        // window's softmax over the two prompts.
        let (score, other) = (&list[0]["score"], &list[0]["runner_up"][0]);
        assert_eq!(other["label"], "still", "{}", list[0]);
        let sum = score.as_f64().unwrap() + other["score"].as_f64().unwrap();
        assert!((sum - 1.0).abs() < 1e-4, "{}", list[0]);
    }
    assert!(reasons.contains("max_duration"), "{reasons:?}");
    // An event open at SIGTERM ends with `shutdown` (one usually is; between two events none is: the controller's
    // unit test covers that path deterministically).
    assert!(
        reasons.iter().all(|r| r == "max_duration" || r == "shutdown"),
        "{reasons:?}"
    );
    // The label state went ON and ends OFF; availability ends offline.
    let states: Vec<String> = msgs
        .iter()
        .filter(|m| m.topic == "sensebind/st/label/walking/state")
        .map(text)
        .collect();
    assert!(states.contains(&"ON".to_owned()), "{states:?}");
    assert_eq!(states.last().map(String::as_str), Some("OFF"), "{states:?}");
    let still: Vec<String> = msgs
        .iter()
        .filter(|m| m.topic == "sensebind/st/label/still/state")
        .map(text)
        .collect();
    assert!(!still.is_empty() && still.iter().all(|s| s == "OFF"), "{still:?}");
    // Every label message lists both prompts with their softmax scores, walking first.
    let labels: Vec<&Received> = msgs.iter().filter(|m| m.topic == "sensebind/st/labels/imu0").collect();
    assert!(!labels.is_empty(), "no label messages");
    for m in labels {
        assert_eq!(common::check_scores(&m.json(), 2)[0].0, "walking", "{}", text(m));
    }
    assert_eq!(text(&last_on(&msgs, "sensebind/st/availability").unwrap()), "offline");
    // Embeddings: every second window, CBOR f16, decodable, unit length.
    let embs: Vec<&Received> = msgs
        .iter()
        .filter(|m| m.topic == "sensebind/st/embeddings/imu0")
        .collect();
    assert!(!embs.is_empty(), "no embeddings");
    for m in &embs {
        let (frame, dtype) = sensebind::publish::embedding::decode(&m.payload).unwrap();
        assert_eq!(dtype, sensebind::publish::embedding::Dtype::F16);
        assert_eq!(frame.seq % 2, 0, "every_n = 2");
        assert_eq!(frame.vec.len(), 1024.min(frame.vec.len()).max(1));
        let norm: f32 = frame.vec.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-2, "norm {norm}");
        assert_eq!(frame.sensor, "imu0");
    }
    let n = validate_all(&msgs) + validate_all(&ha.snapshot());
    assert!(n > 20, "only {n} payloads validated");
}

#[test]
fn prompt_updates_are_validated_applied_atomically_and_persisted() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let sub = Subscriber::start(broker.port, "sensebind/pu/#");
    let cfg = imu_config("pu", &broker.url(), &state, "", &prompts());
    // A retained command waiting on the broker (MQTT 3.1.1 marks a message retained only when it is delivered
    // from the broker's store, i.e. on subscribe): refused, not replayed.
    let set = "sensebind/pu/prompts/set";
    common::publish(
        broker.port,
        set,
        br#"{"upsert": [{"id": "glass", "text": "glass breaking"}]}"#,
        true,
    );
    let mut d = Daemon::start(tmp.path(), "pu", &cfg, &[]);
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| m
            .iter()
            .any(|r| r.topic == "sensebind/pu/labels/imu0")),
        "{}",
        d.log()
    );
    let wait_responses = |n: usize| {
        assert!(
            sub.wait_for(Duration::from_secs(20), |m| responses(m, "pu").len() >= n),
            "no response {n}: {:?}",
            responses(&sub.snapshot(), "pu")
        );
        responses(&sub.snapshot(), "pu").pop().unwrap()
    };
    let rejected = |n: usize, payload: &[u8], retain: bool, expect: &str| {
        common::publish(broker.port, set, payload, retain);
        let r = wait_responses(n);
        assert_eq!(r["ok"], false, "{r}");
        let errors: Vec<&str> = r["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "expected {expect:?} in {errors:?}"
        );
    };
    let r = wait_responses(1);
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["errors"][0]
            .as_str()
            .unwrap()
            .contains("retained commands are ignored"),
        "{r}"
    );
    // Clearing it (an empty retained message) is not a command.
    common::publish(broker.port, set, b"", true);
    rejected(2, b"{\"upsert\": [", false, "not a valid prompt update");
    rejected(
        3,
        br#"{"upsert": [{"id": "glass", "text": "glass breaking", "colour": "red"}]}"#,
        false,
        "unknown field `colour`",
    );
    rejected(
        4,
        br#"{"upsert": [{"id": "glass", "text": "  "}]}"#,
        false,
        "upsert[0].text: text 0 is empty",
    );
    rejected(
        5,
        br#"{"upsert": [{"id": "Glass!", "text": "x", "sources": ["nope"]}]}"#,
        false,
        "upsert[0].sources[0]: no source is named \"nope\"",
    );
    let big = format!(
        "{{\"upsert\": [{{\"id\": \"big\", \"text\": \"{}\"}}]}}",
        "a".repeat(1_000_000)
    );
    rejected(6, big.as_bytes(), false, "the limit is 262144");
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("{{\"id\":\"p{i}\",\"text\":\"t\"}}"))
        .collect();
    let many = format!("{{\"upsert\":[{}]}}", many.join(","));
    assert!(many.len() < 262_144, "{}", many.len());
    rejected(7, many.as_bytes(), false, "10000 prompts; a daemon holds at most 256");
    rejected(
        8,
        br#"{"delete": ["nope"]}"#,
        false,
        "delete[0]: no prompt is named \"nope\"",
    );
    rejected(
        9,
        br#"{"upsert": [{"id": "glass", "text": "glass breaking", "threshold": 0.5, "off_threshold": 0.9}]}"#,
        false,
        "off",
    );
    // Nothing changed: revision 0, two prompts.
    let cs = last_on(&sub.snapshot(), "sensebind/pu/config/state").unwrap().json();
    assert_eq!(cs["status"], "rejected");
    assert_eq!(cs["rev"], 0);
    let ps = last_on(&sub.snapshot(), "sensebind/pu/prompts/state").unwrap().json();
    assert_eq!(ps["prompts"].as_array().unwrap().len(), 2);
    // A good update: applied, with a new revision, label topics and a response naming the request.
    common::publish(
        broker.port,
        set,
        br#"{"request_id": "r-42", "rev_expected": 0, "upsert": [{"id": "glass", "text": "glass breaking", "threshold": 0.9}]}"#,
        false,
    );
    let r = wait_responses(10);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["request_id"], "r-42");
    assert_eq!(r["result"]["rev"], 1);
    let ps = last_on(&sub.snapshot(), "sensebind/pu/prompts/state").unwrap().json();
    let ids: Vec<&str> = ps["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["walking", "still", "glass"]);
    assert!(sub.wait_for(Duration::from_secs(5), |m| {
        m.iter().any(|r| r.topic == "sensebind/pu/label/glass/state")
    }));
    // Scored against the new set from now on.
    assert!(sub.wait_for(Duration::from_secs(10), |m| m.iter().any(|r| {
        r.topic == "sensebind/pu/labels/imu0"
            && r.json()["labels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["label"] == "glass")
    })));
    // A stale revision is refused.
    rejected(
        11,
        br#"{"rev_expected": 0, "delete": ["glass"]}"#,
        false,
        "revision 1, not 0",
    );
    // Switch a label off and back on.
    common::publish(broker.port, "sensebind/pu/label/glass/enabled/set", b"OFF", false);
    assert!(sub.wait_for(Duration::from_secs(5), |m| {
        last_on(m, "sensebind/pu/label/glass/enabled/state").is_some_and(|r| r.payload == b"OFF")
    }));
    common::publish(broker.port, "sensebind/pu/sensor/imu0/enabled/set", b"maybe", false);
    let r = wait_responses(13);
    assert!(r["errors"].to_string().contains("payload must be ON or OFF"), "{r}");
    d.stop();

    // A restart keeps the accepted prompts and the switch.
    let sub2 = Subscriber::start(broker.port, "sensebind/pu/#");
    let mut d2 = Daemon::start(tmp.path(), "pu2", &cfg, &[]);
    assert!(
        sub2.wait_for(Duration::from_secs(60), |m| {
            last_on(m, "sensebind/pu/prompts/state").is_some_and(|r| r.json()["rev"] == 1)
                && last_on(m, "sensebind/pu/config/state").is_some_and(|r| r.json()["source"] == "state_file")
        }),
        "{}",
        d2.log()
    );
    let ps = last_on(&sub2.snapshot(), "sensebind/pu/prompts/state").unwrap().json();
    assert_eq!(ps["prompts"][2]["id"], "glass");
    assert_eq!(ps["prompts"][2]["enabled"], false);
    // Deleting a prompt clears its retained topics and removes its Home Assistant entities.
    common::publish(broker.port, set, br#"{"delete": ["glass"]}"#, false);
    assert!(sub2.wait_for(Duration::from_secs(20), |m| {
        responses(m, "pu").iter().any(|r| r["ok"] == true)
    }));
    let ha = Subscriber::start(broker.port, "homeassistant/device/pu/config");
    assert!(ha.wait_for(Duration::from_secs(5), |m| !m.is_empty()));
    let disc = ha.snapshot().last().unwrap().json();
    assert_eq!(disc["cmps"]["label-glass"], serde_json::json!({ "p": "binary_sensor" }));
    let late = Subscriber::start(broker.port, "sensebind/pu/label/#");
    // The broker sends the retained messages on subscribe, before the marker published after it.
    late.sync("sensebind/pu/label/test-marker");
    assert!(
        late.snapshot()
            .iter()
            .any(|r| r.retain && r.topic == "sensebind/pu/label/walking/state"),
        "walking's retained state is missing"
    );
    assert!(
        late.snapshot().iter().all(|r| !r.topic.contains("/glass/")),
        "glass topics still retained"
    );
    d2.stop();
    let all = sub.snapshot().into_iter().chain(sub2.snapshot()).collect::<Vec<_>>();
    assert!(validate_all(&all) > 10);
}
