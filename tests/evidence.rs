//! Event evidence end to end (issue 16): real recordings replayed through the daemon and Debian's mosquitto; the
//! clips decoded by `ffprobe`, the images by the decoders the daemon reads them with; retention over many events;
//! an unwritable evidence root; the retained snapshot for a late subscriber; Home Assistant's image.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Daemon, Mosquitto, Received, Subscriber, daemon_config, imu_config, media, toml_str, walking_not_still};

/// `ffprobe`'s view of a media file: `stream.KEY` and `format.KEY` as strings.
fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
            "-count_frames",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed (tools/install-deps: ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn num(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::String(s) => match s.split_once('/') {
            Some((a, b)) => a.parse::<f64>().unwrap() / b.parse::<f64>().unwrap(),
            None => s.parse().unwrap(),
        },
        other => other.as_f64().unwrap(),
    }
}

fn events(msgs: &[Received], dev: &str, kind: &str) -> Vec<serde_json::Value> {
    let prefix = format!("sensebind/{dev}/events/");
    msgs.iter()
        .filter(|m| m.topic.starts_with(&prefix))
        .map(Received::json)
        .filter(|j| j["type"] == kind)
        .collect()
}

fn last_stats(msgs: &[Received], dev: &str) -> serde_json::Value {
    let topic = format!("sensebind/{dev}/stats");
    msgs.iter()
        .rev()
        .find(|m| m.topic == topic)
        .map(Received::json)
        .expect("a stats message")
}

fn gray(path: &Path) -> sensebind::preprocess::image::GrayImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sensebind::preprocess::image::decode_gray(&bytes, &path.display().to_string()).unwrap()
}

/// Every modality but text, each with one event (one prompt scores 1: events start on the first window and last
/// `max_event_secs`), a 1 s pre-roll.
fn every_modality(url: &str, state: &Path) -> String {
    let replay = |name: &str, modality: &str, file: &str, extra: &str| {
        format!(
            "[[sources]]\ntype = \"replay\"\nname = \"{name}\"\nmodality = \"{modality}\"\npaths = [{}]\nloop = true\n{extra}\n",
            media(file)
        )
    };
    let sources = [
        replay(
            "cam0",
            "vision",
            "carphone_pristine.mp4",
            "window_secs = 2.0\nhop_secs = 1.0",
        ),
        replay("mic0", "audio", "loop_amen.flac", "window_secs = 2.0\nhop_secs = 1.0"),
        replay(
            "depth0",
            "depth",
            "motorcycle_depth_mm_uint16.png",
            "rate_hz = 2.0\nhop_secs = 1.0",
        ),
        replay(
            "ir0",
            "thermal",
            "flir_e60_moving_car_CC0.raw16.png",
            "rate_hz = 2.0\nhop_secs = 1.0",
        ),
        replay(
            "imu0",
            "imu",
            "xsens_walking_lowerLeg_120Hz.txt",
            "window_secs = 2.0\nhop_secs = 1.0",
        ),
    ]
    .concat();
    daemon_config(
        "evid",
        url,
        state,
        &format!(
            r#"
[events]
aggregate_windows = 1
onset_k = 1
onset_n = 1
hold_secs = 0.0
max_event_secs = 3.0
cooldown_secs = 600.0
update_interval_secs = 3600

[evidence]
enabled = true
pre_secs = 1.0
post_secs = 10.0
publish_snapshots = ["vision", "depth"]

[preprocess.imu]
acc_columns = ["Acc_X", "Acc_Y", "Acc_Z"]
gyro_columns = ["Gyr_X", "Gyr_Y", "Gyr_Z"]
rate_hz = 120.0

{sources}
[[prompts]]
id = "thing"
text = "a thing"
threshold = 0.5
"#
        ),
    )
}

#[test]
fn every_modality_leaves_evidence_that_decodes_and_matches_the_messages() {
    let broker = Mosquitto::start();
    let dev = "evid";
    let sub = Subscriber::start(broker.port, "#");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut d = Daemon::start(tmp.path(), dev, &every_modality(&broker.url(), &state), &[]);
    // Each sensor's event ends after 3 s; its clip is written right after.
    let ended = |m: &[Received]| events(m, dev, "end").len() >= 5;
    assert!(
        sub.wait_for(Duration::from_secs(90), ended),
        "not every event ended:\n{}",
        d.log()
    );
    let root = state.join("evidence");
    let clips_written = || {
        [
            "1-cam0-thing-1/clip.avi",
            "1-mic0-thing-1/clip.wav",
            "1-imu0-thing-1/clip.csv",
        ]
        .iter()
        .all(|f| root.join(f).exists())
            && ["1-depth0-thing-1", "1-ir0-thing-1"]
                .iter()
                .all(|e| root.join(e).join("clip/frames.csv").exists())
    };
    common::wait_until(Duration::from_secs(20), "the clips", clips_written);
    // A late subscriber gets the retained snapshot.
    let late = Subscriber::start(broker.port, &format!("sensebind/{dev}/snapshot/#"));
    assert!(
        late.wait_for(Duration::from_secs(10), |m| m.len() >= 2),
        "no retained snapshots"
    );
    d.stop();
    assert!(sub.wait_for(Duration::from_secs(10), |m| common::said_offline(m, dev)));
    let msgs = sub.snapshot();
    let ends = events(&msgs, dev, "end");
    let end_of = |sensor: &str| ends.iter().find(|e| e["sensor"] == sensor).unwrap().clone();

    // Vision: MJPEG at the camera's rate (29.97 fps replayed), the pre-roll included.
    let cam = end_of("cam0");
    let evidence = &cam["evidence"];
    assert_eq!(evidence["clip"], "1-cam0-thing-1/clip.avi", "{cam}");
    assert_eq!(evidence["snapshot"], "1-cam0-thing-1/snapshot.jpg", "{cam}");
    let probe = ffprobe(&root.join("1-cam0-thing-1/clip.avi"));
    let video = &probe["streams"][0];
    assert_eq!(video["codec_name"], "mjpeg");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(176), Some(144))
    );
    let fps = num(&video["r_frame_rate"]);
    assert!((fps - 29.97).abs() < 1.5, "frame rate {fps}");
    let expected = cam["duration_s"].as_f64().unwrap() + 1.0;
    let duration = num(&probe["format"]["duration"]);
    assert!(
        (duration - expected).abs() < 0.3,
        "clip {duration} s, event + pre-roll {expected} s"
    );
    let frames = num(&video["nb_read_frames"]);
    assert!((frames - expected * fps).abs() < 10.0, "{frames} frames");
    let snap = ffprobe(&root.join("1-cam0-thing-1/snapshot.jpg"));
    assert_eq!(snap["streams"][0]["codec_name"], "mjpeg");
    assert_eq!(snap["streams"][0]["width"].as_u64(), Some(176));
    // The update sent once the snapshot existed.
    let updates = events(&msgs, dev, "update");
    let cam_update = updates
        .iter()
        .find(|u| u["sensor"] == "cam0")
        .expect("an update with the snapshot");
    assert_eq!(cam_update["evidence"]["snapshot"], "1-cam0-thing-1/snapshot.jpg");

    // Audio: WAV at the device rate (44.1 kHz, the captured channel).
    let mic = end_of("mic0");
    let probe = ffprobe(&root.join("1-mic0-thing-1/clip.wav"));
    let audio = &probe["streams"][0];
    assert_eq!(audio["codec_name"], "pcm_s16le");
    assert_eq!(audio["sample_rate"], "44100");
    assert_eq!(audio["channels"].as_u64(), Some(1));
    let expected = mic["duration_s"].as_f64().unwrap() + 1.0;
    let duration = num(&probe["format"]["duration"]);
    assert!(
        (duration - expected).abs() < 0.3,
        "wav {duration} s, expected {expected} s"
    );

    // Depth and thermal: false colour decodes; the raw PNG holds the source frame's values.
    for (sensor, source) in [
        ("depth0", "motorcycle_depth_mm_uint16.png"),
        ("ir0", "flir_e60_moving_car_CC0.raw16.png"),
    ] {
        let dir = root.join(format!("1-{sensor}-thing-1"));
        let src = gray(&common::root().join("tests/fixtures/media").join(source));
        let raw = gray(&dir.join("snapshot-raw.png"));
        assert_eq!((raw.width, raw.height, raw.bit_depth), (src.width, src.height, 16));
        assert!(
            raw.samples == src.samples,
            "{sensor}: raw values differ from the source frame"
        );
        let colour = std::fs::read(dir.join("snapshot.png")).unwrap();
        let rgb = sensebind::preprocess::image::decode_rgb(&colour, "snapshot.png").unwrap();
        assert_eq!((rgb.width, rgb.height), (src.width, src.height));
        let first_frame = gray(&dir.join("clip/000000.png"));
        assert!(first_frame.samples == src.samples, "{sensor}: clip frame differs");
        let csv = std::fs::read_to_string(dir.join("clip/frames.csv")).unwrap();
        assert!(csv.lines().count() >= 5, "{sensor}: {csv}");
    }

    // IMU: CSV with capture times, at the recording's 120 Hz.
    let imu = end_of("imu0");
    let csv = std::fs::read_to_string(root.join("1-imu0-thing-1/clip.csv")).unwrap();
    let times: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[1] > w[0]), "times increase");
    let expected = imu["duration_s"].as_f64().unwrap() + 1.0;
    let span = times.last().unwrap() - times[0];
    assert!((span - expected).abs() < 0.3, "imu clip {span} s, expected {expected}");
    assert!(
        ((times.len() as f64) / span - 120.0).abs() < 5.0,
        "{} readings in {span} s",
        times.len()
    );

    // event.json: the start and end exactly as published, and the windows' scores.
    let starts = events(&msgs, dev, "start");
    for sensor in ["cam0", "mic0", "depth0", "ir0", "imu0"] {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join(format!("1-{sensor}-thing-1/event.json"))).unwrap())
                .unwrap();
        let start = starts.iter().find(|s| s["sensor"] == sensor).unwrap();
        assert_eq!(&record["start"], start, "{sensor}");
        assert_eq!(record["end"], end_of(sensor), "{sensor}");
        assert!(!record["scores"].as_array().unwrap().is_empty(), "{sensor}");
        for (schema, value) in [
            ("evidence-record.schema.json", &record),
            ("event.schema.json", &record["start"]),
            ("event.schema.json", &record["end"]),
        ] {
            common::schema::validate(schema, value).unwrap_or_else(|e| panic!("{sensor}: {e}"));
        }
    }

    // The retained snapshots: a JPEG for the camera, a PNG for depth (listed in publish_snapshots), none for ir0.
    let snaps = late.snapshot();
    let cam_snap = snaps
        .iter()
        .find(|m| m.topic == format!("sensebind/{dev}/snapshot/cam0/thing"))
        .unwrap();
    assert!(cam_snap.retain && cam_snap.payload.starts_with(&[0xFF, 0xD8]));
    let depth_snap = snaps
        .iter()
        .find(|m| m.topic.ends_with("/snapshot/depth0/thing"))
        .unwrap();
    assert!(depth_snap.payload.starts_with(b"\x89PNG"));
    assert!(!snaps.iter().any(|m| m.topic.contains("/ir0/")));

    // Home Assistant: an image per (camera, label) with snapshots.
    let discovery = msgs
        .iter()
        .rev()
        .find(|m| m.topic == format!("homeassistant/device/{dev}/config"))
        .expect("discovery")
        .json();
    let image = &discovery["cmps"]["snapshot-cam0-thing"];
    assert_eq!(image["p"], "image");
    assert_eq!(image["image_topic"], format!("sensebind/{dev}/snapshot/cam0/thing"));
    assert!(discovery["cmps"].get("snapshot-imu0-thing").is_none());

    let stats = last_stats(&msgs, dev);
    assert_eq!(stats["evidence"]["errors_total"], 0, "{}", stats["evidence"]);
    assert_eq!(stats["evidence"]["skipped_total"], 0);
    assert!(stats["evidence"]["history"]["cam0"]["bytes"].as_u64().unwrap() > 0);
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            // Retention may delete an entry between the listing and this call.
            let Ok(meta) = e.metadata() else { return 0 };
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[test]
fn retention_keeps_the_evidence_root_under_max_bytes_over_many_events() {
    let broker = Mosquitto::start();
    let dev = "evret";
    let sub = Subscriber::start(broker.port, &format!("sensebind/{dev}/#"));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ev");
    let max_bytes = 100_000u64;
    // Walking's events last 0.4 s and follow each other (max_event_secs; no cooldown): a CSV and event.json each.
    let evidence = format!(
        "\n[evidence]\nenabled = true\npre_secs = 1.0\npost_secs = 2.0\nmax_bytes = {max_bytes}\npath = {}\n",
        toml_str(&root)
    );
    let text = imu_config(
        dev,
        &broker.url(),
        &tmp.path().join("state"),
        "",
        &walking_not_still(0.4),
    )
    .replace("\n[events]", &format!("{evidence}\n[events]"));
    let mut d = Daemon::start(tmp.path(), dev, &text, &[]);
    let mut max_seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        max_seen = max_seen.max(dir_bytes(&root));
        let msgs = sub.snapshot();
        if events(&msgs, dev, "end").len() >= 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    d.stop();
    assert!(sub.wait_for(Duration::from_secs(10), |m| common::said_offline(m, dev)));
    let msgs = sub.snapshot();
    assert!(events(&msgs, dev, "end").len() >= 20, "too few events:\n{}", d.log());
    let stats = last_stats(&msgs, dev);
    let ev = &stats["evidence"];
    assert!(ev["deleted_total"].as_u64().unwrap() > 0, "{ev}");
    assert!(ev["bytes_on_disk"].as_u64().unwrap() <= max_bytes, "{ev}");
    assert_eq!(ev["errors_total"], 0, "{ev}");
    assert!(dir_bytes(&root) <= max_bytes, "{} bytes left", dir_bytes(&root));
    // Between a write and its prune the root may hold one event more, never much more.
    assert!(max_seen <= max_bytes + 40_000, "{max_seen} bytes seen");
    // The newest events are the ones kept.
    let kept: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let last_end = events(&msgs, dev, "end").last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(kept.contains(&last_end), "{last_end} not in {kept:?}");

    // The field engineer's view: `sensebind evidence list|show|prune` on the same configuration.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sensebind"))
            .arg("evidence")
            .arg("--config")
            .arg(tmp.path().join(format!("{dev}.toml")))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed: serde_json::Value = serde_json::from_str(&cli(&["list", "--json"])).unwrap();
    let mut ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let mut kept = kept;
    ids.sort();
    kept.sort();
    assert_eq!(ids, kept);
    let shown: serde_json::Value = serde_json::from_str(&cli(&["show", &last_end])).unwrap();
    assert_eq!(shown["end"]["id"], last_end.as_str());
    let pruned = cli(&["prune", "--max-bytes", "0"]);
    assert!(
        pruned.starts_with(&format!("deleted {} events", kept.len())),
        "{pruned}"
    );
    assert_eq!(dir_bytes(&root), 0);
}

#[test]
fn an_unwritable_evidence_root_counts_errors_and_every_event_is_still_published() {
    let broker = Mosquitto::start();
    let dev = "evro";
    let sub = Subscriber::start(broker.port, &format!("sensebind/{dev}/#"));
    let tmp = tempfile::tempdir().unwrap();
    // Root ignores directory permissions, so the root lies under a regular file (every write fails: not a
    // directory); for other users it is a read-only directory too.
    let blocker = tmp.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let root: PathBuf = if common::is_root() {
        blocker.join("evidence")
    } else {
        use std::os::unix::fs::PermissionsExt;
        let ro = tmp.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        ro
    };
    let evidence = format!(
        "\n[evidence]\nenabled = true\npre_secs = 0.5\npost_secs = 1.0\npath = {}\n",
        toml_str(&root)
    );
    let text = imu_config(
        dev,
        &broker.url(),
        &tmp.path().join("state"),
        "",
        &walking_not_still(0.5),
    )
    .replace("\n[events]", &format!("{evidence}\n[events]"));
    let mut d = Daemon::start(tmp.path(), dev, &text, &[]);
    let errors = |m: &[Received]| {
        let topic = format!("sensebind/{dev}/stats");
        events(m, dev, "end").len() >= 3
            && m.iter()
                .rev()
                .find(|x| x.topic == topic)
                .is_some_and(|s| s.json()["evidence"]["errors_total"].as_u64() > Some(2))
    };
    assert!(
        sub.wait_for(Duration::from_secs(60), errors),
        "no counted errors:\n{}",
        d.log()
    );
    // A clean exit (stop asserts it).
    d.stop();
    assert!(sub.wait_for(Duration::from_secs(10), |m| common::said_offline(m, dev)));
    let msgs = sub.snapshot();
    let (starts, ends) = (events(&msgs, dev, "start"), events(&msgs, dev, "end"));
    // Every event that started ended, with the shutdown's end included.
    assert_eq!(starts.len(), ends.len(), "{}", d.log());
    let stats = last_stats(&msgs, dev);
    assert!(
        stats["evidence"]["last_error"].as_str().is_some(),
        "{}",
        stats["evidence"]
    );
    assert!(d.log().contains("Cannot write event evidence"), "{}", d.log());
}
