//! `sensebind label` and `sensebind eval` end to end through the binary: the timeline PNG, an exemplar-defined
//! dataset, and label's window scores against what the daemon publishes for the same recording.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Daemon, Mosquitto, Subscriber, media, root, toml_str};
use sensebind::zeroshot::timeline::PALETTE;

fn media_path(name: &str) -> PathBuf {
    root().join("tests/fixtures/media").join(name)
}

fn sensebind(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sensebind {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&sensebind(args)).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Decodes an 8-bit RGB PNG.
fn decode_png(path: &Path) -> (Vec<u8>, usize, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (buf, info.width as usize, info.height as usize)
}

/// Regions (4-connected) of pixels of exactly `colour`.
fn blobs(rgb: &[u8], w: usize, h: usize, colour: (u8, u8, u8)) -> usize {
    let c = [colour.0, colour.1, colour.2];
    let is = |i: usize| rgb[i * 3..i * 3 + 3] == c;
    let mut seen = vec![false; w * h];
    let mut count = 0;
    for start in 0..w * h {
        if seen[start] || !is(start) {
            continue;
        }
        count += 1;
        seen[start] = true;
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            let next = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for j in next.into_iter().flatten() {
                if !seen[j] && is(j) {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
    }
    count
}

#[test]
fn label_timeline_writes_a_png_with_one_point_per_window_and_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("timeline.png");
    let prompts = ["a piano", "drums", "a dog barking"];
    let mut args = vec![
        "label",
        "-m",
        "audio",
        "--windows",
        "--window-secs",
        "1",
        "--hop-secs",
        "0.25",
        // Without the shipped background prompts, the three scores of a window are its whole softmax.
        "--no-default-background",
    ];
    for p in &prompts {
        args.extend(["--prompt", p]);
    }
    let audio = media_path("ambi_piano.flac");
    args.extend(["--timeline", s(&png), "--json", s(&audio)]);
    let doc = json(&args);
    let windows = doc[0]["windows"].as_array().unwrap();
    // 2.81 s at 1 s windows every 0.25 s: the first ends at 1 s, then one per hop.
    assert_eq!(windows.len(), 8, "{doc}");
    assert!((windows[1]["t0"].as_f64().unwrap() - 0.25).abs() < 1e-3, "{doc}");
    for w in windows {
        let scores = w["scores"].as_array().unwrap();
        assert_eq!(scores.len(), prompts.len());
        let sum: f64 = scores.iter().map(|s| s["score"].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{w}");
    }
    let (rgb, w, h) = decode_png(&png);
    assert!(w >= 720 && h > prompts.len() * 100, "{w}×{h}");
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(blobs(&rgb, w, h, PALETTE[i]), windows.len(), "markers of {p:?}");
    }
    assert_eq!(blobs(&rgb, w, h, PALETTE[prompts.len()]), 0, "no fourth prompt");
}

/// Writes `image` mirrored left to right as a PNG.
fn write_mirrored(image: &Path, out: &Path) {
    let bytes = std::fs::read(image).unwrap();
    let img = sensebind::preprocess::image::decode_rgb(&bytes, "image").unwrap();
    let mut rgb = Vec::with_capacity(img.width * img.height * 3);
    for y in 0..img.height {
        for x in (0..img.width).rev() {
            rgb.extend(img.planes.iter().map(|p| p[y * img.width + x]));
        }
    }
    let mut enc = png::Encoder::new(std::fs::File::create(out).unwrap(), img.width as u32, img.height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(&rgb).unwrap();
    writer.finish().unwrap();
}

#[test]
fn eval_on_exemplar_classes_scores_100_percent_and_agrees_with_label() {
    // Five classes from the bundled pictures; each folder holds the picture and its mirror image, and the class
    // is defined by the picture alone: the mirror image has to be recognised from it.
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    let classes = [
        ("astronaut", "astronaut.png"),
        ("camera", "camera.png"),
        ("cat", "chelsea.png"),
        ("kafka", "franz-kafka.jpg"),
        ("street", "flir_e60_moving_car_CC0.jpg"),
    ];
    let mut exemplar_args = Vec::new();
    for (class, file) in classes {
        let dir = set.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        let original = dir.join(file);
        std::fs::copy(media_path(file), &original).unwrap();
        write_mirrored(&original, &dir.join("mirrored.png"));
        exemplar_args.push(format!("{class}={}", original.display()));
    }
    let mut args = vec!["eval", s(&set), "-m", "vision", "--exemplars-only", "--json"];
    for e in &exemplar_args {
        args.extend(["--exemplar", e]);
    }
    let report = json(&args);
    assert_eq!(report["n"], 10, "{report}");
    assert_eq!(report["top1"], 1.0, "{report}");
    assert_eq!(report["top5"], 1.0);
    for (class, _) in classes {
        assert_eq!(report["per_class"][class], 1.0, "{report}");
    }
    let predictions = report["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 10);

    // label with the same exemplars ranks each file's classes exactly as eval predicted.
    let mut args = vec!["label", "-m", "vision", "--json"];
    for e in &exemplar_args {
        args.extend(["--exemplar", e]);
    }
    let files: Vec<String> = predictions
        .iter()
        .map(|p| p["file"].as_str().unwrap().to_owned())
        .collect();
    args.extend(files.iter().map(String::as_str));
    let labelled = json(&args);
    let labelled = labelled.as_array().unwrap();
    assert_eq!(labelled.len(), 10);
    for (p, l) in predictions.iter().zip(labelled) {
        assert_eq!(p["file"], l["file"]);
        let ranked: Vec<&str> = l["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["label"].as_str().unwrap())
            .collect();
        let predicted: Vec<&str> = p["predicted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(ranked[..5], predicted[..], "{}", p["file"]);
        assert_eq!(ranked[0], p["label"].as_str().unwrap());
    }
}

#[test]
fn label_windows_equal_what_the_daemon_publishes_for_the_same_recording() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    // The shipped background prompts stay on (common::daemon_config switches them off).
    let config = format!(
        r#"
[device]
id = "bench"

[runtime]
state_dir = {state}

[models]
dir = {models}

[labels]
default_background = true
zscore_warmup_windows = 3
templates = true

[mqtt]
url = "{url}"
qos = 1

[[sources]]
type = "replay"
name = "mic"
modality = "audio"
paths = [{audio}]
loop = false
window_secs = 1.0
hop_secs = 0.25

[[prompts]]
id = "piano"
text = "a piano"

[[prompts]]
id = "drums"
texts = ["drums", "a drum kit"]

[[prompts]]
id = "dog"
text = "a dog barking"
mode = "zscore"
threshold = 1.0

[[prompts]]
id = "quiet"
text = "a quiet room"
role = "background"
"#,
        state = toml_str(&tmp.path().join("state")),
        models = toml_str(&root().join("models/imagebind-tiny")),
        url = broker.url(),
        audio = media("ambi_piano.flac"),
    );
    let sub = Subscriber::start(broker.port, "sensebind/bench/labels/mic");
    let mut daemon = Daemon::start(tmp.path(), "bench", &config, &[]);
    // The replay plays once (2.8 s) and the daemon stops by itself when it is done.
    let status = daemon
        .wait(Duration::from_secs(60))
        .expect("the daemon stops after the replay");
    assert!(status.success(), "{}", daemon.log());
    let published: BTreeMap<u64, serde_json::Value> = sub
        .snapshot()
        .iter()
        .map(|m| {
            let v = m.json();
            (v["seq"].as_u64().unwrap(), v)
        })
        .collect();

    let config_path = tmp.path().join("bench.toml");
    let audio = media_path("ambi_piano.flac");
    let doc = json(&[
        "label",
        "--config",
        s(&config_path),
        "-m",
        "audio",
        "--windows",
        "--json",
        s(&audio),
    ]);
    let windows = doc[0]["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 8);
    let seqs: Vec<u64> = windows.iter().map(|w| w["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        published.keys().copied().collect::<Vec<_>>(),
        seqs,
        "the daemon published every window label cut:\n{}",
        daemon.log()
    );
    // The shipped background prompts and "quiet" take part in every softmax but are never listed; "dog" is
    // standardised by its running statistics (0 during the 3-window warm-up).
    let zscored: Vec<f64> = windows
        .iter()
        .map(|w| {
            let dog = w["scores"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["label"] == "dog")
                .unwrap();
            assert_eq!(dog["mode"], "zscore");
            dog["score"].as_f64().unwrap()
        })
        .collect();
    assert!(
        zscored[..3].iter().all(|z| *z == 0.0) && zscored[3..].iter().any(|z| *z != 0.0),
        "{zscored:?}"
    );
    for w in windows {
        let seq = w["seq"].as_u64().unwrap();
        let daemon_labels = published[&seq]["labels"].as_array().unwrap();
        let ours = w["scores"].as_array().unwrap();
        assert_eq!(daemon_labels.len(), ours.len(), "window {seq}");
        for (d, o) in daemon_labels.iter().zip(ours) {
            assert_eq!(d["label"], o["label"], "window {seq}: {w} vs {}", published[&seq]);
            let close =
                |a: &serde_json::Value, b: &serde_json::Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5;
            assert!(close(&d["score"], &o["score"]), "window {seq}: {d} vs {o}");
            assert!(close(&d["cosine"], &o["cos"]), "window {seq}: {d} vs {o}");
            assert_eq!(d["mode"], o["mode"], "window {seq}");
            assert_eq!(d["active"], o["active"], "window {seq}");
        }
    }
}

#[test]
fn calibrate_on_a_quiet_recording_gives_thresholds_that_start_no_event_on_it() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    // Events start on any window at or above a low threshold: the piano recording, quiet for these labels,
    // starts events at the configured thresholds, and the calibrated ones must start none.
    let config = |prompts: &str, state: &str| {
        format!(
            r#"
[device]
id = "cal"

[runtime]
state_dir = {state}

[models]
dir = {models}

[labels]
default_background = true

[events]
aggregate_windows = 1
onset_k = 1
onset_n = 1
hold_secs = 0.0

[mqtt]
url = "{url}"
qos = 1

[[sources]]
type = "replay"
name = "mic"
modality = "audio"
paths = [{audio}]
loop = false
window_secs = 1.0
hop_secs = 0.25
{prompts}"#,
            state = toml_str(&tmp.path().join(state)),
            models = toml_str(&root().join("models/imagebind-tiny")),
            url = broker.url(),
            audio = media("ambi_piano.flac"),
        )
    };
    let original = r#"
[[prompts]]
id = "dog"
text = "a dog barking"
threshold = 0.0001

[[prompts]]
id = "glass"
text = "glass breaking"
mode = "cosine"
threshold = -0.5
"#;
    // The daemon's events on the recording with a configuration's prompts.
    let events_with = |name: &str, prompts: &str| -> usize {
        let sub = Subscriber::start(broker.port, "sensebind/cal/events/#");
        let mut daemon = Daemon::start(tmp.path(), name, &config(prompts, name), &[]);
        let status = daemon
            .wait(Duration::from_secs(60))
            .expect("the daemon stops after the replay");
        assert!(status.success(), "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(300));
        sub.snapshot().iter().filter(|m| m.json()["type"] == "start").count()
    };
    assert!(events_with("before", original) > 0, "the low thresholds start events");
    let config_path = tmp.path().join("before.toml");
    let audio = media_path("ambi_piano.flac");
    let doc = json(&[
        "calibrate",
        "--config",
        s(&config_path),
        "-m",
        "audio",
        "--json",
        s(&audio),
    ]);
    assert_eq!(doc["allowed_events"], 0, "{doc}");
    let outcomes = doc["prompts"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{doc}");
    for o in outcomes {
        assert!(o["events_before"].as_u64().unwrap() > 0, "{o}");
        assert_eq!(o["events_after"], 0, "{o}");
        assert!(
            o["threshold"].as_f64().unwrap() > o["max_score"].as_f64().unwrap(),
            "{o}"
        );
    }
    // The snippet itself (TOML) replaces the prompts: the same recording through the daemon starts no event.
    let snippet_path = tmp.path().join("calibrated.toml");
    sensebind(&[
        "calibrate",
        "--config",
        s(&config_path),
        "-m",
        "audio",
        "--out",
        s(&snippet_path),
        s(&audio),
    ]);
    let snippet = std::fs::read_to_string(&snippet_path).unwrap();
    assert!(snippet.contains("mode = \"cosine\""), "{snippet}");
    assert_eq!(events_with("after", &snippet), 0, "calibrated:\n{snippet}");
}

#[test]
fn config_exemplars_define_labels_and_templates_change_the_text_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let (piano, drums) = (media_path("ambi_piano.flac"), media_path("loop_amen.flac"));
    let write = |name: &str, labels: &str, prompts: &str| {
        let path = tmp.path().join(name);
        let text = format!(
            r#"
[device]
id = "t"
[runtime]
state_dir = {state}
[models]
dir = {models}
[labels]
default_background = false
{labels}
[mqtt]
enabled = false
[[sources]]
type = "replay"
name = "mic"
modality = "audio"
paths = [{audio}]
{prompts}"#,
            state = toml_str(&tmp.path().join("state")),
            models = toml_str(&root().join("models/imagebind-tiny")),
            audio = media("ambi_piano.flac"),
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let scores = |config: &Path| -> Vec<BTreeMap<String, f64>> {
        json(&[
            "label",
            "--config",
            s(config),
            "-m",
            "audio",
            "--json",
            s(&piano),
            s(&drums),
        ])
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            f["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| (x["label"].as_str().unwrap().to_owned(), x["cos"].as_f64().unwrap()))
                .collect()
        })
        .collect()
    };
    // Each recording defined by an exemplar of itself ranks first on it.
    let exemplars = write(
        "exemplars.toml",
        "",
        &format!(
            "[[prompts]]\nid = \"piano\"\nexemplars = [{}]\n[[prompts]]\nid = \"drums\"\nexemplars = [{}]\n",
            toml_str(&piano),
            toml_str(&drums)
        ),
    );
    let by_file = scores(&exemplars);
    assert!(by_file[0]["piano"] > by_file[0]["drums"], "{by_file:?}");
    assert!(by_file[1]["drums"] > by_file[1]["piano"], "{by_file:?}");
    assert!(
        (by_file[0]["piano"] - 1.0).abs() < 0.05,
        "a file against itself: {by_file:?}"
    );

    // Templates: the identity template embeds exactly the texts; the shipped audio templates change them.
    let prompts = "[[prompts]]\nid = \"piano\"\ntext = \"a piano\"\n[[prompts]]\nid = \"drums\"\ntext = \"drums\"\n";
    let plain = scores(&write("plain.toml", "", prompts));
    let identity = scores(&write("identity.toml", "templates = { audio = [\"{}\"] }", prompts));
    let shipped = scores(&write("shipped.toml", "templates = true", prompts));
    // (The same up to float rounding: the one filled text goes through one more normalisation.)
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    let same = |a: &[BTreeMap<String, f64>], b: &[BTreeMap<String, f64>]| {
        a.iter().zip(b).all(|(x, y)| x.iter().all(|(k, v)| close(*v, y[k])))
    };
    assert!(same(&plain, &identity), "{plain:?} vs {identity:?}");
    assert!(!same(&plain, &shipped), "{plain:?} vs {shipped:?}");
    // A prompt may opt out.
    let opted_out = prompts.replace("text = \"a piano\"", "text = \"a piano\"\ntemplates = false");
    let mixed = scores(&write("mixed.toml", "templates = true", &opted_out));
    assert!(close(mixed[0]["piano"], plain[0]["piano"]), "{mixed:?}");
    assert!(close(mixed[0]["drums"], shipped[0]["drums"]), "{mixed:?}");
}
