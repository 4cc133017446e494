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
        // The device configuration uses every capture driver; a build without them rightly refuses it.
        let drivers = cfg!(all(feature = "v4l2", feature = "gstreamer", feature = "microphone"));
        if path.file_name().is_some_and(|f| f == "jetson.toml") && !drivers {
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
        "[events]",
        "[[sources]]",
        "[[prompts]]",
        "[metrics]",
        "[evidence]",
    ] {
        assert!(text.contains(key), "example.toml lacks {key}");
    }
    let schema: serde_json::Value = serde_json::from_str(&sensebind::config::json_schema()).unwrap();
    for def in [
        "RuntimeConfig",
        "ModelsConfig",
        "MqttConfig",
        "OnnxRuntimeConfig",
        "EventsConfig",
        "EmbeddingsConfig",
        "HomeAssistantConfig",
        "TlsConfig",
        "MetricsConfig",
        "EvidenceConfig",
    ] {
        for key in schema["$defs"][def]["properties"].as_object().unwrap().keys() {
            assert!(
                text.contains(&format!("{key} =")) || text.contains(&format!(".{key}]")),
                "example.toml does not document {def}.{key}"
            );
        }
    }
}

/// A configuration with a device and the bundled models, then `rest` (which continues the `[models]` table).
fn with_models(rest: &str) -> String {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/imagebind-tiny");
    format!(
        "[device]\nid = \"dev\"\n[models]\ndir = \"{}\"\n{rest}",
        models.display()
    )
}

#[test]
fn metrics_listen_is_optional_defaults_to_loopback_and_must_be_a_socket_address() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let parse = |extra: &str| sensebind::config::parse(&with_models(extra), &file, dir.path());
    // No section: off.
    assert_eq!(parse("").unwrap().config.metrics, None);
    let on = parse("[metrics]\n").unwrap().config.metrics.unwrap();
    assert_eq!(on.listen, "127.0.0.1:9464");
    for ok in ["0.0.0.0:9100", "[::1]:0"] {
        let m = parse(&format!("[metrics]\nlisten = \"{ok}\"\n"))
            .unwrap()
            .config
            .metrics
            .unwrap();
        assert_eq!(m.address().unwrap(), ok.parse().unwrap());
    }
    for bad in ["localhost:9464", "127.0.0.1", "127.0.0.1:99999", ""] {
        let err = parse(&format!("[metrics]\nlisten = \"{bad}\"\n")).unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        let issue = &err.issues[0];
        assert_eq!(issue.path, "metrics.listen", "{err}");
        assert!(issue.message.contains("not a socket address"), "{err}");
        assert!(issue.line.is_some(), "the key's line is reported: {err}");
    }
    let err = parse("[metrics]\nport = 9464\n").unwrap_err();
    assert_eq!(err.issues[0].path, "metrics.port", "{err}");
}

/// (A build without the `onnxruntime` feature also refuses `backend = "onnxruntime"` itself: one more issue.)
#[cfg(feature = "onnxruntime")]
#[test]
fn backend_settings_are_validated_with_their_key_paths() {
    let text = with_models(
        r#"backend = "onnxruntime"
[models.towers.audio]
threads = 0
[models.towers.vision]
backend = "tract"
[models.onnxruntime]
library = "lib/missing/libonnxruntime.so.1.32.0"
execution_providers = [{ type = "cuda" }, { type = "cuda", device_id = 1 }]
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let err = sensebind::config::parse(&text, &dir.path().join("c.toml"), dir.path()).unwrap_err();
    let issues: Vec<(String, String)> = err.issues.iter().map(|i| (i.path.clone(), i.message.clone())).collect();
    let find = |path: &str| {
        issues
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("no issue at {path}: {issues:?}"))
            .1
            .clone()
    };
    assert!(find("models.towers.audio.threads").contains("between 1 and 256"));
    let lib = find("models.onnxruntime.library");
    assert!(
        lib.contains("does not exist") && lib.contains(&dir.path().join("lib/missing").display().to_string()),
        "{lib}"
    );
    assert!(find("models.onnxruntime.execution_providers[1]").contains("cuda is listed twice"));
    assert_eq!(issues.len(), 3, "{issues:?}");

    let unknown = text.replace("backend = \"tract\"", "backend = \"vulkan\"");
    let err = sensebind::config::parse(&unknown, &dir.path().join("c.toml"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vulkan") && err.contains("auto") && err.contains("onnxruntime") && err.contains("wgpu"),
        "{err}"
    );

    // Per-tower overrides resolve against [models].
    let ok = text
        .replace("threads = 0", "threads = 3")
        .replace("library = \"lib/missing/libonnxruntime.so.1.32.0\"\n", "")
        .replace(
            r#"[{ type = "cuda" }, { type = "cuda", device_id = 1 }]"#,
            r#"[{ type = "cuda" }]"#,
        );
    let loaded = sensebind::config::parse(&ok, &dir.path().join("c.toml"), dir.path()).unwrap();
    use sensebind::encode::Backend;
    use sensebind::modality::Modality;
    let audio = loaded.engine_options(Modality::Audio);
    assert_eq!((audio.backend, audio.threads), (Backend::Onnxruntime, 3));
    let vision = loaded.engine_options(Modality::Vision);
    assert_eq!((vision.backend, vision.threads), (Backend::Tract, 1));
    assert_eq!(audio.cache_dir, Some(dir.path().join("state/tensorrt")));
}

#[test]
fn serial_sources_are_validated_with_their_key_paths() {
    let text = with_models(
        r#"[[sources]]
type = "serial"
name = "imu0"
modality = "vision"
path = "/dev/ttyUSB0"
baud_rate = 10
rate_hz = 0.0
protocol = "witmotion"
[[sources]]
type = "serial"
name = "imu1"
modality = "imu"
path = "/dev/ttyUSB1"
protocol = "nmea"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let err = sensebind::config::parse(&text, &dir.path().join("c.toml"), dir.path()).unwrap_err();
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    for expected in ["sources[0].modality", "sources[0].baud_rate", "sources[0].rate_hz"] {
        assert!(paths.contains(&expected), "no issue at {expected}: {err}");
    }
    let all = err.to_string();
    assert!(all.contains("nmea") && all.contains("witmotion"), "{all}");
}

#[test]
fn camera_and_microphone_sources_are_validated_with_their_key_paths() {
    let text = with_models(
        r#"[[sources]]
type = "v4l2"
name = "cam0"
modality = "audio"
device = ""
format = "NV12"
width = 640
buffers = 64
depth_unit_m = 0.0
[[sources]]
type = "v4l2"
name = "cam1"
modality = "vision"
device = "/dev/video0"
format = "Z16"
[[sources]]
type = "gstreamer"
name = "csi0"
modality = "imu"
pipeline = " "
rate_hz = -1.0
[[sources]]
type = "microphone"
name = "mic0"
modality = "vision"
rate_hz = 1000
channels = 2
channel = 2
sample_format = "u8"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let err = sensebind::config::parse(&text, &dir.path().join("c.toml"), dir.path()).unwrap_err();
    let all = err.to_string();
    // sample_format = "u8" is a type error: reported alone for that source, with the accepted values.
    assert!(
        all.contains("sources[3]") && all.contains("i16") && all.contains("f32"),
        "{all}"
    );
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    for expected in [
        "sources[0].modality",
        "sources[0].device",
        "sources[0].format",
        "sources[0].width",
        "sources[0].buffers",
        "sources[0].depth_unit_m",
        "sources[1].format",
        "sources[2].modality",
        "sources[2].pipeline",
        "sources[2].rate_hz",
    ] {
        assert!(paths.contains(&expected), "no issue at {expected}: {all}");
    }
    assert!(all.contains("\"NV12\" is not a supported pixel format"), "{all}");
    assert!(all.contains("Z16 frames cannot feed the vision tower"), "{all}");

    let text = with_models(
        r#"[[sources]]
type = "microphone"
name = "mic0"
modality = "vision"
rate_hz = 1000
channels = 2
channel = 2
"#,
    );
    let err = sensebind::config::parse(&text, &dir.path().join("c.toml"), dir.path()).unwrap_err();
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    for expected in ["sources[0].modality", "sources[0].rate_hz", "sources[0].channel"] {
        assert!(paths.contains(&expected), "no issue at {expected}: {err}");
    }
}

/// A build without a capture driver refuses its sources in `check`, naming the feature.
#[test]
fn sources_of_drivers_this_build_lacks_are_refused_by_name() {
    let text = with_models(
        r#"[[sources]]
type = "v4l2"
name = "cam0"
modality = "vision"
device = "/dev/video0"
[[sources]]
type = "gstreamer"
name = "csi0"
modality = "vision"
pipeline = "videotestsrc"
[[sources]]
type = "microphone"
name = "mic0"
modality = "audio"
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let result = sensebind::config::parse(&text, &dir.path().join("c.toml"), dir.path());
    let missing: Vec<&str> = [
        (cfg!(feature = "v4l2"), "v4l2"),
        (cfg!(feature = "gstreamer"), "gstreamer"),
        (cfg!(feature = "microphone"), "microphone"),
    ]
    .iter()
    .filter(|(on, _)| !on)
    .map(|(_, f)| *f)
    .collect();
    match result {
        Ok(_) => assert!(missing.is_empty(), "accepted without {missing:?}"),
        Err(e) => {
            let all = e.to_string();
            assert!(!missing.is_empty(), "refused with every driver: {all}");
            for f in missing {
                assert!(all.contains(&format!("built without the `{f}` feature")), "{all}");
            }
        }
    }
}

/// `check --no-environment` validates the values of a device's configuration on a build host that lacks its
/// recordings, secrets and models; plain `check` reports each of those with its key path.
#[test]
fn check_without_environment_skips_files_variables_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("device.toml");
    std::fs::write(
        &file,
        r#"[device]
id = "dock-7"
[models]
dir = "models/not-here"
[mqtt]
url = "mqtt://127.0.0.1:1883"
username = "dock"
password_env = "SENSEBIND_TEST_PASSWORD_THAT_IS_NOT_SET"
[[sources]]
type = "replay"
name = "mic0"
modality = "audio"
paths = ["recordings/missing.wav"]
[[prompts]]
id = "knock"
text = "a knock on the door"
[[prompts]]
id = "quiet"
text = "silence"
"#,
    )
    .unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sensebind"))
            .arg("check")
            .arg("--config")
            .arg(&file)
            .args(extra)
            .output()
            .unwrap()
    };
    let full = run(&[]);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(64), "{stderr}");
    for key in ["models.dir", "mqtt.password_env", "sources[0].paths[0]"] {
        assert!(stderr.contains(key), "plain check reports {key}: {stderr}");
    }
    let values_only = run(&["--no-environment"]);
    assert_eq!(
        values_only.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&values_only.stderr)
    );
    assert!(String::from_utf8_lossy(&values_only.stdout).contains("ok"));
    // A wrong value is still an error without the environment.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file).unwrap().replace("dock-7", "Dock 7"),
    )
    .unwrap();
    let bad = run(&["--no-environment"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("device.id"));
}

#[test]
fn exemplars_are_checked_with_their_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(dir.path().join("knock.wav"), b"RIFF\0\0\0\0WAVEfmt ").unwrap();
    std::fs::write(dir.path().join("walk.dat"), b"1,2,3\n").unwrap();
    let source = "[[sources]]\ntype = \"synthetic\"\nname = \"imu0\"\nmodality = \"imu\"\n";
    let parse = |prompt: &str| {
        sensebind::config::parse(
            &with_models(&format!("{source}[[prompts]]\nid = \"p\"\n{prompt}\n")),
            &file,
            dir.path(),
        )
    };
    // A file relative to the configuration, of a modality no source has: fine (its tower is loaded for it).
    assert!(parse("exemplars = [\"knock.wav\"]").is_ok());
    assert!(parse("exemplars = [{ path = \"walk.dat\", modality = \"imu\" }]").is_ok());
    for (prompt, path, message) in [
        (
            "exemplars = [\"missing.wav\"]",
            "prompts[0].exemplars[0]",
            "missing.wav",
        ),
        (
            "text = \"x\"\nexemplars = [\"knock.wav\", \"walk.dat\"]",
            "prompts[0].exemplars[1]",
            "cannot tell",
        ),
        (
            "exemplars = [{ base64 = \"AAAA\", name = \"a.wav\" }]",
            "prompts[0].exemplars[0]",
            "prompts/set only",
        ),
        (
            "exemplars = [{ path = \"knock.wav\", base64 = \"AAAA\" }]",
            "prompts[0].exemplars[0]",
            "not both",
        ),
        ("", "prompts[0].text", "needs text, texts or exemplars"),
    ] {
        let err = parse(prompt).unwrap_err();
        assert!(
            err.issues.iter().any(|i| i.path == path && i.message.contains(message)),
            "{prompt}: expected {path}: {message} in {err}"
        );
    }
}

#[test]
fn gate_mistakes_name_their_key_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let parse = |extra: &str| sensebind::config::parse(&with_models(extra), &file, dir.path());
    let source = |modality: &str, gate: &str| {
        format!("[[sources]]\ntype = \"synthetic\"\nname = \"s\"\nmodality = \"{modality}\"\n[sources.gate]\n{gate}\n")
    };
    let ok = parse(&source("audio", "min_dbfs = -60.0")).unwrap();
    let gate = ok.config.sources[0].gate().unwrap();
    assert_eq!(gate.min_dbfs, Some(-60.0));
    for (modality, gate, path, says) in [
        (
            "audio",
            "min_dbfs = 3.0",
            "sources[0].gate.min_dbfs",
            "between -200 and 0",
        ),
        (
            "audio",
            "min_frame_diff = 0.1",
            "sources[0].gate.min_frame_diff",
            "vision, depth and thermal",
        ),
        (
            "vision",
            "min_frame_diff = 0.0",
            "sources[0].gate.min_frame_diff",
            "above 0",
        ),
        (
            "vision",
            "min_imu_variance = 1.0",
            "sources[0].gate.min_imu_variance",
            "imu sources only",
        ),
        (
            "imu",
            "min_imu_variance = -1.0",
            "sources[0].gate.min_imu_variance",
            "positive",
        ),
        (
            "imu",
            "min_variance = 1.0",
            "sources[0].gate.min_variance",
            "unknown field",
        ),
        (
            "audio",
            "min_dbfs = \"quiet\"",
            "sources[0].gate.min_dbfs",
            "invalid type",
        ),
    ] {
        let err = parse(&source(modality, gate)).unwrap_err();
        assert_eq!(err.issues.len(), 1, "{gate}: {err}");
        let issue = &err.issues[0];
        assert_eq!(issue.path, path, "{gate}: {err}");
        assert!(issue.message.contains(says), "{gate}: {err}");
        assert!(issue.line.is_some(), "{gate}: the key's line is reported: {err}");
    }
}
