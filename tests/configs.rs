//! Every file in configs/ validates, and configs/schema.json matches the configuration types.

#![allow(clippy::unwrap_used)] // test code

use std::path::PathBuf;

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn every_config_file_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(configs()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        if let Err(e) = sensebind::config::load(&path) {
            panic!("{e}");
        }
        n += 1;
    }
    assert!(n >= 2, "expected example.toml and demo.toml, found {n} files");
}

#[test]
fn schema_json_is_current() {
    let on_disk = std::fs::read_to_string(configs().join("schema.json")).unwrap();
    let generated = sensebind::config::json_schema();
    assert!(
        on_disk == generated,
        "configs/schema.json is stale: run `cargo run --release -- schema > configs/schema.json`"
    );
}

#[test]
fn example_documents_every_top_level_key() {
    let text = std::fs::read_to_string(configs().join("example.toml")).unwrap();
    for key in [
        "[device]",
        "[runtime]",
        "[models]",
        "[mqtt]",
        "[preprocess.depth]",
        "[preprocess.thermal]",
        "[preprocess.imu]",
        "[[sources]]",
        "[[prompts]]",
    ] {
        assert!(text.contains(key), "example.toml lacks {key}");
    }
    let schema: serde_json::Value = serde_json::from_str(&sensebind::config::json_schema()).unwrap();
    for def in ["RuntimeConfig", "ModelsConfig", "MqttConfig"] {
        for key in schema["$defs"][def]["properties"].as_object().unwrap().keys() {
            assert!(
                text.contains(&format!("{key} =")),
                "example.toml does not document {def}.{key}"
            );
        }
    }
}
