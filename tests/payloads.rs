//! Every published JSON payload comes from a typed struct in `sensebind::control::payloads`: each is built here
//! with its builder (every variant that changes the shape) and validated against its schema in docs/schemas/.
//! The payloads as the running daemon publishes them are validated in tests/mqtt_contract.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::schema::validate;
use sensebind::clock::Timestamp;
use sensebind::control::payloads::{
    self, CmdResult, DaemonInfo, DiscoveryInput, EventEnd, EventFacts, EventSubject, EventType, ModelInfo,
    PromptsOrigin, Publisher, RunnerUp, SensorDescription, SensorStatus, Thresholds, WindowCause, WindowTimes,
};
use sensebind::events::EndReason;
use sensebind::events::EventsConfig;
use sensebind::labels::PromptConfig;
use sensebind::labels::{LabelScore, Prompt, PromptSet, ScoreMode};
use sensebind::publish::Topics;
use sensebind::publish::config::EmbeddingsConfig;
use serde::Serialize;

fn check(schema: &str, payload: &impl Serialize) {
    let v = serde_json::to_value(payload).unwrap();
    validate(schema, &v).unwrap_or_else(|e| panic!("{schema}: {e}\n{v:#}"));
}

fn times() -> WindowTimes {
    WindowTimes {
        seq: 7,
        t0: Timestamp(1_000_000_000),
        t1: Timestamp(3_000_000_000),
        now: Timestamp(3_040_000_000),
    }
}

fn ts() -> String {
    sensebind::clock::rfc3339_of(Timestamp(5_000_000_000))
}

#[test]
fn labels_payload_matches_its_schema_with_sensor_and_the_deprecated_source() {
    let scores = vec![
        LabelScore {
            label: "walking".into(),
            score: 0.8,
            cosine: 0.3,
            active: true,
            mode: ScoreMode::Softmax,
        },
        LabelScore {
            label: "knock".into(),
            score: 4.2,
            cosine: 0.31,
            active: true,
            mode: ScoreMode::Zscore,
        },
        LabelScore {
            label: "door".into(),
            score: -0.12,
            cosine: -0.12,
            active: false,
            mode: ScoreMode::Cosine,
        },
    ];
    let msg = payloads::labels("dock-07", "imu0", "imu", times(), "imagebind-tiny@0123456789ab", scores);
    check("labels.schema.json", &msg);
    let v = serde_json::to_value(&msg).unwrap();
    assert_eq!(
        (v["sensor"].as_str(), v["source"].as_str()),
        (Some("imu0"), Some("imu0"))
    );
    assert!((v["latency_ms"].as_f64().unwrap() - 40.0).abs() < 1e-6);
}

fn facts(kind: EventType) -> EventFacts {
    EventFacts {
        id: "3-imu0-walking-1".into(),
        seq: 0,
        kind,
        subject: EventSubject {
            sensor: "imu0".into(),
            modality: "imu".into(),
            label: "walking".into(),
            prompt: "a person walking".into(),
        },
        score: 0.7,
        peak: 0.75,
        thresholds: Some(Thresholds {
            on: 0.6,
            off: 0.48,
            mode: "softmax",
        }),
        start_time: ts(),
        end: None,
        cause: Some(WindowCause {
            cos: 0.27,
            runner_up: vec![RunnerUp {
                label: "sitting".into(),
                score: 0.2,
            }],
            window: times().into(),
            model: "imagebind-tiny@0123456789ab".into(),
        }),
        evidence: None,
    }
}

#[test]
fn event_payloads_of_every_kind_match_their_schema() {
    let by = Publisher {
        device: "dock-07",
        session: 3,
        config_rev: 1,
    };
    check("event.schema.json", &payloads::event(by, ts(), facts(EventType::Start)));
    // A fused label's event: sensor "fused", modality "fusion".
    let mut fused = facts(EventType::Start);
    (fused.subject.sensor, fused.subject.modality) = ("fused".into(), "fusion".into());
    check("event.schema.json", &payloads::event(by, ts(), fused));
    check(
        "event.schema.json",
        &payloads::event(by, ts(), facts(EventType::Update)),
    );
    // An end caused by a window, a forced end (no window), and the end sent after a restart.
    let ended = |cause: bool, reason: EndReason, duration_s: Option<f64>| EventFacts {
        end: Some(EventEnd {
            time: ts(),
            reason: Some(reason),
            duration_s,
        }),
        cause: if cause { facts(EventType::End).cause } else { None },
        ..facts(EventType::End)
    };
    check(
        "event.schema.json",
        &payloads::event(by, ts(), ended(true, EndReason::Quiet, Some(2.0))),
    );
    check(
        "event.schema.json",
        &payloads::event(by, ts(), ended(false, EndReason::Shutdown, Some(9.5))),
    );
    let restart = EventFacts {
        thresholds: None,
        score: 0.0,
        ..ended(false, EndReason::Restart, None)
    };
    // With evidence: the update once the snapshot exists, and the end naming the clip.
    let evidence = |clip: Option<&str>| {
        Some(sensebind::control::evidence::EvidenceRef {
            snapshot: Some("3-cam0-walking-1/snapshot.jpg".into()),
            clip: clip.map(str::to_owned),
            bytes: 5620,
        })
    };
    let update = EventFacts {
        evidence: evidence(None),
        ..facts(EventType::Update)
    };
    check("event.schema.json", &payloads::event(by, ts(), update));
    let end = EventFacts {
        evidence: evidence(Some("3-cam0-walking-1/clip.avi")),
        ..ended(false, EndReason::Quiet, Some(4.0))
    };
    let v = serde_json::to_value(payloads::event(by, ts(), end)).unwrap();
    assert_eq!(v["evidence"]["clip"], "3-cam0-walking-1/clip.avi");
    check("event.schema.json", &v);
    let msg = payloads::event(by, ts(), restart);
    check("event.schema.json", &msg);
    let v = serde_json::to_value(&msg).unwrap();
    assert_eq!(v["type"], "end");
    assert_eq!(v["end_reason"], "restart");
    assert!(v["window"].is_null() && v["model"].is_null() && v["thresholds"].is_null());
}

fn info() -> payloads::InfoMessage {
    let models = BTreeMap::from([(
        "imu".to_owned(),
        ModelInfo {
            model: "imagebind-tiny@0123456789ab".into(),
            backend: "tract".into(),
            dim: 2,
        },
    )]);
    payloads::info(DaemonInfo {
        device: "dock-07",
        name: "Dock 7",
        session: 3,
        config_rev: 1,
        models: &models,
        sensors: vec![SensorDescription {
            name: "imu0".into(),
            modality: "imu".into(),
            window_secs: 1.0,
            hop_secs: 0.5,
        }],
        embeddings: &EmbeddingsConfig::default(),
    })
}

#[test]
fn info_config_state_and_prompts_state_match_their_schemas() {
    check("info.schema.json", &info());
    let file = payloads::FileState {
        config_hash: "ab".repeat(32),
        restarted: vec!["imu1".into()],
        pending_restart: vec!["device.name".into()],
    };
    let input = |source, request_id| payloads::ConfigStateInput {
        rev: 1,
        source,
        request_id,
        prompts: 2,
        file: &file,
    };
    for origin in [
        PromptsOrigin::Config,
        PromptsOrigin::StateFile,
        PromptsOrigin::PromptsSet,
        PromptsOrigin::Reload,
    ] {
        check(
            "config-state.schema.json",
            &payloads::config_state(input(origin, None), Ok(()), ts()),
        );
    }
    let errors = ["upsert[0].text: text 0 is empty".to_owned()];
    let rejected = payloads::config_state(input(PromptsOrigin::PromptsSet, Some("r-1")), Err(&errors), ts());
    check("config-state.schema.json", &rejected);
    let config = PromptConfig {
        exemplars: vec![
            sensebind::labels::exemplar::ExemplarSpec::Path("clips/walk.csv".into()),
            sensebind::labels::exemplar::ExemplarSpec::File(sensebind::labels::exemplar::ExemplarFile {
                path: Some("/var/lib/sensebind/exemplars/ab12.txt".into()),
                base64: None,
                name: Some("walk.txt".into()),
                modality: Some(sensebind::modality::Modality::Text),
            }),
        ],
        ..PromptConfig::new("walking", "a person walking")
    };
    let set = PromptSet::new(vec![Prompt {
        id: "walking".into(),
        texts: config.all_texts(),
        config,
        embedding: vec![0.6, 0.8],
        by_modality: std::collections::BTreeMap::new(),
    }]);
    let disabled = BTreeSet::from(["walking".to_owned()]);
    let state = payloads::prompts_state(1, &set, &EventsConfig::default(), &disabled);
    check("prompts-state.schema.json", &state);
    assert_eq!(state.prompts[0].embedding_sha.len(), 12);
}

#[test]
fn command_responses_of_every_result_match_their_schema() {
    let results = [
        CmdResult::PromptsSet {
            rev: 2,
            upserted: vec!["walking".into()],
            deleted: vec![],
            prompts: 1,
        },
        CmdResult::Enabled { enabled: "OFF" },
        CmdResult::Republished { republished: 12 },
        CmdResult::Info(Box::new(info())),
        CmdResult::Reloaded {
            config_hash: "ab".repeat(32),
            restarted: vec!["imu1".into()],
            pending_restart: vec![],
            prompts: 3,
        },
    ];
    for result in results {
        check(
            "cmd-response.schema.json",
            &payloads::cmd_response("cmd/x", Some("r"), Ok(result), ts()),
        );
    }
    let errors = vec!["no sensor is named \"cam9\"".to_owned()];
    let rejected = payloads::cmd_response("sensor/cam9/enabled/set", None, Err(errors), ts());
    check("cmd-response.schema.json", &rejected);
    let v = serde_json::to_value(&rejected).unwrap();
    assert!(v["result"].is_null() && v["ok"] == false);
}

#[test]
fn discovery_with_entities_and_removals_matches_its_schema_and_maps_every_sensor_status() {
    let topics = Topics::new("sensebind", "dock-07");
    let d = payloads::discovery(DiscoveryInput {
        device: "dock-07",
        device_name: "Dock 7",
        topics: &topics,
        labels: vec![("walking".into(), "motion".into())],
        removed: vec!["running".into()],
        sensors: vec!["imu0".into()],
        removed_sensors: vec!["imu1".into()],
        images: vec![("cam0".into(), "walking".into(), "image/jpeg")],
        removed_images: vec![("cam0".into(), "running".into())],
    });
    check("ha-discovery.schema.json", &d);
    let v = serde_json::to_value(&d).unwrap();
    let image = &v["cmps"]["snapshot-cam0-walking"];
    assert_eq!(image["p"], "image");
    assert_eq!(image["image_topic"], "sensebind/dock-07/snapshot/cam0/walking");
    assert_eq!(image["content_type"], "image/jpeg");
    assert_eq!(v["cmps"]["snapshot-cam0-running"], serde_json::json!({"p": "image"}));
    assert_eq!(v["cmps"]["label-running"], serde_json::json!({"p": "binary_sensor"}));
    assert_eq!(v["cmps"]["sensor-imu1"], serde_json::json!({"p": "binary_sensor"}));
    assert_eq!(v["cmps"]["sensor_switch-imu1"], serde_json::json!({"p": "switch"}));
    let sensor = &v["cmps"]["sensor-imu0"];
    assert_eq!(sensor["val_tpl"], payloads::SENSOR_STATUS_TEMPLATE);
    assert_eq!(
        (sensor["pl_on"].as_str(), sensor["pl_off"].as_str()),
        (Some("ON"), Some("OFF"))
    );
    // Home Assistant renders the template with each status (the controller's unit test
    // issue_12_every_sensor_status_maps_to_on_or_off_in_home_assistant evaluates it for every published status).
    assert_eq!(SensorStatus::ALL.len(), 3);
}

#[test]
fn stats_snapshot_matches_its_schema() {
    let metrics = sensebind::runtime::Metrics::default();
    check(
        "stats.schema.json",
        &metrics.snapshot("dock-07", std::time::Duration::from_secs(60)),
    );
    // With evidence: the writer's counters and a history ring.
    use sensebind::evidence::history::{Histories, History};
    let histories = Histories::default();
    histories.insert(
        "cam0",
        std::sync::Arc::new(History::new(sensebind::modality::Modality::Vision, 5.0, 1 << 20, 0.001)),
    );
    let stats = sensebind::evidence::writer::EvidenceStats::default();
    *stats.last_error.lock().unwrap() = Some("3-cam0-walking-1: clip.avi: Read-only file system".into());
    let metrics = sensebind::runtime::Metrics {
        evidence: Some((std::sync::Arc::new(stats), std::sync::Arc::new(histories))),
        ..sensebind::runtime::Metrics::default()
    };
    let snap = serde_json::to_value(metrics.snapshot("dock-07", std::time::Duration::from_secs(60))).unwrap();
    assert_eq!(snap["evidence"]["history"]["cam0"]["bytes"], 0);
    check("stats.schema.json", &snap);
}
