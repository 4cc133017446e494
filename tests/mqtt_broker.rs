//! The daemon against brokers that misbehave or demand credentials: password logins (good and rejected), TLS with
//! a CA and client certificate made by `openssl` at test time (and a wrong CA), an ACL that denies a command
//! topic, the broker killed with SIGKILL and restarted mid-stream, and the daemon killed with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{Daemon, Mosquitto, PersistentSubscriber, Received, Subscriber, imu_config, toml_str};

/// `walking` is on for every window and `still` for none, so walking's events cycle every 0.3 s (start, end
/// `max_duration`, start again).
fn config(device: &str, url: &str, state: &Path, mqtt_extra: &str) -> String {
    imu_config(device, url, state, mqtt_extra, &common::walking_not_still(0.3))
}

fn labels_seen(msgs: &[Received], dev: &str) -> usize {
    msgs.iter()
        .filter(|m| m.topic == format!("sensebind/{dev}/labels/imu0"))
        .count()
}

#[test]
fn password_login_works_and_a_rejected_one_is_a_clear_startup_error() {
    let broker = Mosquitto::start_password("sensor", "s3cret-Pa55");
    let tmp = tempfile::tempdir().unwrap();
    let sub = common::Subscriber::start_with_login(broker.port, "sensebind/pw/#", "sensor", "s3cret-Pa55");
    let extra = "username = \"sensor\"\npassword_env = \"TEST_MQTT_PASSWORD\"";
    let text = config("pw", &broker.url(), &tmp.path().join("state"), extra);
    let mut child = Daemon::start(tmp.path(), "pw", &text, &[("TEST_MQTT_PASSWORD", "s3cret-Pa55")]);
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| labels_seen(m, "pw") >= 2),
        "{}",
        child.log()
    );
    child.stop();
    assert!(!child.log().contains("s3cret-Pa55"), "the password was logged");

    // The wrong password: exit 1 within seconds, saying why, without the password.
    let mut bad = Daemon::start(tmp.path(), "pw-bad", &text, &[("TEST_MQTT_PASSWORD", "wrong-Pa55")]);
    let status = bad
        .wait(Duration::from_secs(30))
        .expect("a rejected login stops the daemon");
    assert_eq!(status.code(), Some(1), "{}", bad.log());
    let out = bad.log();
    assert!(
        out.contains("rejected the user name or password") || out.contains("not authorised"),
        "{out}"
    );
    assert!(!out.contains("wrong-Pa55"), "the password was logged");
}

#[test]
fn tls_with_a_private_ca_and_a_client_certificate() {
    let certs = common::make_certs();
    let broker = Mosquitto::start_tls(&certs, true);
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!(
        "[mqtt.tls]\nca_file = {}\nclient_cert = {}\nclient_key = {}",
        toml_str(&certs.ca),
        toml_str(&certs.client_cert),
        toml_str(&certs.client_key)
    );
    let text = config("tls", &broker.tls_url(), &tmp.path().join("state"), &extra);
    // The listener is TLS only: the test's subscriber connects through it too, with the same CA and client cert.
    let mut opts = rumqttc::MqttOptions::new(format!("test-tls-sub-{}", std::process::id()), "127.0.0.1", broker.port);
    opts.set_transport(rumqttc::Transport::tls_with_config(certs.tls_config(true)));
    let sub = Subscriber::start_with_options(opts, "sensebind/tls/#");
    let mut child = Daemon::start(tmp.path(), "tls", &text, &[]);
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| labels_seen(m, "tls") >= 2),
        "no labels over TLS:\n{}\n{}",
        child.log(),
        broker.log()
    );
    child.stop();
    let out = child.log();
    assert!(out.contains("tls=true"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "key material logged");

    // A CA that did not sign the server's certificate: a start-up error naming TLS.
    let other = common::make_certs();
    let extra = format!(
        "[mqtt.tls]\nca_file = {}\nclient_cert = {}\nclient_key = {}",
        toml_str(&other.ca),
        toml_str(&certs.client_cert),
        toml_str(&certs.client_key)
    );
    let text = config("tls", &broker.tls_url(), &tmp.path().join("state2"), &extra);
    let mut bad = Daemon::start(tmp.path(), "tls-bad", &text, &[]);
    let status = bad
        .wait(Duration::from_secs(30))
        .expect("a TLS failure stops the daemon");
    assert_eq!(status.code(), Some(1), "{}", bad.log());
    assert!(bad.log().contains("TLS failed"), "{}", bad.log());

    // A certificate path that does not exist: a configuration error (exit 64) naming the key.
    let text = config(
        "tls",
        &broker.tls_url(),
        &tmp.path().join("state3"),
        "[mqtt.tls]\nca_file = \"/nonexistent/ca.pem\"",
    );
    let mut missing = Daemon::start(tmp.path(), "tls-missing", &text, &[]);
    let status = missing.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(64), "{}", missing.log());
    assert!(missing.log().contains("mqtt.tls.ca_file"), "{}", missing.log());
}

#[test]
fn an_acl_that_denies_a_command_topic_is_reported_and_the_daemon_keeps_running() {
    let acl = "user sensor\ntopic readwrite sensebind/acl/#\ntopic deny sensebind/acl/cmd\ntopic read homeassistant/#\ntopic write homeassistant/#\n";
    // mosquitto's acl_file never refuses a SUBSCRIBE (2.0.x); its dynamic-security plugin does (SUBACK 0x80).
    let broker = Mosquitto::start_dynsec("sensor", "pw-acl-1", acl);
    let tmp = tempfile::tempdir().unwrap();
    let sub = common::Subscriber::start_with_login(broker.port, "sensebind/acl/#", "sensor", "pw-acl-1");
    let extra = "username = \"sensor\"\npassword_env = \"TEST_MQTT_PASSWORD\"";
    let text = config("acl", &broker.url(), &tmp.path().join("state"), extra);
    let mut child = Daemon::start(tmp.path(), "acl", &text, &[("TEST_MQTT_PASSWORD", "pw-acl-1")]);
    let denied = |m: &[Received]| {
        m.iter().any(|r| {
            r.topic == "sensebind/acl/stats"
                && r.json()["mqtt"]["subscriptions_denied"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|f| f == "sensebind/acl/cmd"))
        })
    };
    assert!(sub.wait_for(Duration::from_secs(60), denied), "{}", child.log());
    let n = labels_seen(&sub.snapshot(), "acl");
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| labels_seen(m, "acl") > n + 5),
        "labels stopped"
    );
    assert!(child.log().contains("refused these subscriptions"), "{}", child.log());
    child.stop();
}

#[test]
fn broker_killed_mid_stream_loses_no_event_and_state_is_right_after_reconnect() {
    let mut broker = Mosquitto::start_persistent();
    let tmp = tempfile::tempdir().unwrap();
    let sub = PersistentSubscriber::start_on(broker.port, "test-persistent-events", "sensebind/bk/#");
    let text = config("bk", &broker.url(), &tmp.path().join("state"), "queue_events = 100000");
    let mut child = Daemon::start(tmp.path(), "bk", &text, &[]);
    let events = |m: &[Received]| m.iter().filter(|r| r.topic.starts_with("sensebind/bk/events/")).count();
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| events(m) >= 6),
        "{}",
        child.log()
    );
    // Kill the broker while events keep happening; they queue in the daemon.
    let outage_start = std::time::SystemTime::now();
    broker.kill9();
    // Part of the scenario: the outage lasts 3 s while the daemon keeps making events (at least 4 of them are
    // checked for below); nothing outside the daemon can see them meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    let outage_end = std::time::SystemTime::now();
    broker.restart();
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| m
            .iter()
            .filter(|r| r.topic == "sensebind/bk/stats")
            .any(|r| r.json()["mqtt"]["connects_total"].as_u64() >= Some(2))),
        "the daemon did not reconnect:\n{}",
        child.log()
    );
    assert!(
        sub.wait_connects(2, Duration::from_secs(10)),
        "the persistent subscriber did not reconnect"
    );
    // Right after the reconnect: the retained state is there (republished by the daemon on connect: see
    // republished_total below) and the command subscriptions work again.
    let fresh = Subscriber::start(broker.port, "sensebind/bk/#");
    assert!(
        fresh.wait_for(Duration::from_secs(10), |m| {
            [
                "availability",
                "info",
                "prompts/state",
                "sensor/imu0/status",
                "label/walking/state",
            ]
            .iter()
            .all(|t| m.iter().any(|r| r.retain && r.topic == format!("sensebind/bk/{t}")))
        }),
        "retained state after the reconnect: {:?}",
        fresh.snapshot().iter().map(|r| r.topic.clone()).collect::<Vec<_>>()
    );
    assert!(
        fresh
            .snapshot()
            .iter()
            .any(|r| r.topic == "sensebind/bk/availability" && r.payload == b"online")
    );
    common::publish_once(
        broker.port,
        "sensebind/bk/cmd",
        br#"{"cmd": "get_info", "request_id": "after-restart"}"#,
    );
    assert!(
        fresh.wait_for(Duration::from_secs(10), |m| m.iter().any(|r| r.topic
            == "sensebind/bk/cmd/response"
            && r.json()["request_id"] == "after-restart")),
        "no command response after the reconnect (not resubscribed?)"
    );
    child.stop();
    // What the daemon made, from its own log: every event started and ended (the shutdown ends the last one).
    let log = child.log();
    let published = (log.matches("Event started.").count() + log.matches("Event ended.").count()) as u64;
    // The persistent subscriber may still be catching up after its own reconnect, and the broker's restart can
    // replay a stale `offline`: wait until every event message is in (they are QoS 1), then the daemon's own
    // `offline` after the last of them.
    let event_messages = |m: &[Received]| -> BTreeSet<(String, u64)> {
        m.iter()
            .filter(|r| r.topic.starts_with("sensebind/bk/events/"))
            .map(|r| {
                (
                    r.json()["id"].as_str().unwrap_or("").to_owned(),
                    r.json()["seq"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| {
            let last_event = m.iter().rposition(|r| r.topic.starts_with("sensebind/bk/events/"));
            event_messages(m).len() as u64 >= published
                && last_event.is_some_and(|i| common::said_offline(&m[i..], "bk"))
        }),
        "{published} event messages and then offline did not arrive; received {:?}, topics after the last event {:?}\n\
         broker log:\n{}\ndaemon log:\n{log}",
        event_messages(&sub.snapshot()),
        {
            let m = sub.snapshot();
            let from = m
                .iter()
                .rposition(|r| r.topic.starts_with("sensebind/bk/events/"))
                .unwrap_or(0);
            m[from..]
                .iter()
                .map(|r| {
                    (
                        r.topic.clone(),
                        String::from_utf8_lossy(&r.payload).chars().take(40).collect::<String>(),
                    )
                })
                .collect::<Vec<_>>()
        },
        broker.log()
    );
    let msgs = sub.snapshot();
    // Every (event id, message number) the daemon published arrived at least once, or was counted as dropped.
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut received = 0usize;
    let mut during_outage = 0usize;
    for m in msgs.iter().filter(|r| r.topic.starts_with("sensebind/bk/events/")) {
        let v = m.json();
        assert_eq!(v["label"], "walking", "only walking's score reaches its threshold: {v}");
        let ts = humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap();
        if ts > outage_start && ts < outage_end {
            during_outage += 1;
        }
        seen.entry(v["id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(v["seq"].as_u64().unwrap());
        received += 1;
    }
    // The stats the subscriber saw last (the final ones may come after `offline` is read): drops only grow.
    let stats = msgs
        .iter()
        .rev()
        .find(|r| r.topic == "sensebind/bk/stats")
        .map(Received::json)
        .unwrap();
    let dropped = stats["mqtt"]["dropped"]["events"].as_u64().unwrap();
    let distinct: u64 = seen.values().map(|s| s.len() as u64).sum();
    assert_eq!(
        distinct + dropped,
        published,
        "distinct {distinct} + dropped {dropped} != published {published} (received {received})"
    );
    assert_eq!(dropped, 0, "the event queue is large enough for a 3 s outage");
    assert!(
        during_outage >= 4,
        "only {during_outage} event messages were made while the broker was down"
    );
    for (id, seqs) in &seen {
        assert_eq!(
            seqs.iter().copied().collect::<Vec<_>>(),
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "{id}: messages missing"
        );
    }
    assert!(stats["mqtt"]["connects_total"].as_u64().unwrap() >= 2);
    // The whole retained state went out again on the reconnect (availability, info, config, prompts, sensor x2,
    // label x2 for each of the two prompts, discovery: 11 topics; on the first connect the controller had not
    // published any yet).
    assert!(
        stats["mqtt"]["republished_total"].as_u64().unwrap() >= 11,
        "{}",
        stats["mqtt"]
    );
    eprintln!(
        "broker outage: {} events, {received} messages received for {published} published ({during_outage} made during the outage), requeued {}, republish {} ms",
        seen.len(),
        stats["mqtt"]["requeued_total"],
        stats["mqtt"]["last_republish_ms"]
    );
    // Retained state after the reconnect, as a new subscriber sees it: the daemon stopped cleanly.
    let late = Subscriber::start(broker.port, "sensebind/bk/#");
    assert!(late.wait_for(Duration::from_secs(5), |m| {
        m.iter()
            .any(|r| r.topic == "sensebind/bk/availability" && r.payload == b"offline")
            && m.iter()
                .any(|r| r.topic == "sensebind/bk/label/walking/state" && r.payload == b"OFF")
            && m.iter()
                .any(|r| r.topic == "sensebind/bk/sensor/imu0/status" && r.payload == b"online")
    }));
}

#[test]
fn daemon_killed_gets_its_will_and_the_open_event_is_closed_on_restart() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(broker.port, "sensebind/kl/#");
    // A long max duration: the event is open when the daemon dies.
    let text = config("kl", &broker.url(), &tmp.path().join("state"), "")
        .replace("max_event_secs = 0.3", "max_event_secs = 3600");
    let mut child = Daemon::start(tmp.path(), "kl", &text, &[]);
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| m
            .iter()
            .any(|r| r.topic == "sensebind/kl/events/imu0/walking")),
        "{}",
        child.log()
    );
    let started = sub
        .snapshot()
        .iter()
        .find(|r| r.topic == "sensebind/kl/events/imu0/walking")
        .unwrap()
        .json();
    child.signal("-KILL");
    child.wait(Duration::from_secs(5)).unwrap();
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| m
            .iter()
            .any(|r| r.topic == "sensebind/kl/availability" && r.payload == b"offline")),
        "the broker did not publish the Will"
    );
    // On restart the event left open ends (`restart`), and the label state is corrected.
    let mut again = Daemon::start(tmp.path(), "kl2", &text, &[]);
    let id = started["id"].as_str().unwrap().to_owned();
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| m.iter().any(|r| {
            let v = r.json();
            v["id"] == id.as_str() && v["type"] == "end" && v["end_reason"] == "restart"
        })),
        "{}",
        again.log()
    );
    again.stop();
    assert!(
        sub.snapshot().iter().all(|r| !r.topic.contains("/events/imu0/still")),
        "still's score never reaches its threshold"
    );
}
