//! `preprocess`, `tokenize` and `embed` on media files and texts, end to end through the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::path::{Path, PathBuf};
use std::process::Command;

use sensebind::encode::verify::max_abs_diff;
use sensebind::npy;

fn media(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/media")
        .join(name)
}

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sensebind {args:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn tokenize_prints_77_ids_per_text() {
    let json = run(&["tokenize", "--json", "A dog.", "a photo of a dog"]);
    let ids: Vec<Vec<i64>> = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|r| r.len() == 77));
    assert_eq!(&ids[0][..5], &[49406, 320, 1929, 269, 49407]);
    let plain = run(&["tokenize", "A car"]);
    assert!(plain.starts_with("49406 320 1615 49407 0"), "{plain}");
}

#[test]
fn embedding_a_media_file_equals_embedding_its_preprocessed_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for (modality, file) in [
        ("vision", "chelsea.png"),
        ("audio", "bell.oga"),
        ("thermal", "flir_e60_moving_car_CC0.jpg"),
    ] {
        let pre = tmp.path().join(format!("{modality}.pre.npy"));
        run(&["preprocess", "-m", modality, p(&media(file)), "--out", p(&pre)]);
        let direct = tmp.path().join(format!("{modality}.direct.npy"));
        run(&["embed", "-m", modality, p(&media(file)), "--out", p(&direct)]);
        let via = tmp.path().join(format!("{modality}.via.npy"));
        run(&["embed", "-m", modality, "--unbatched", p(&pre), "--out", p(&via)]);
        let (a, b) = (npy::read(&direct).unwrap(), npy::read(&via).unwrap());
        assert_eq!(a.shape(), &[1, 1024], "{modality}");
        assert_eq!(
            max_abs_diff(a.as_f32().unwrap(), b.as_f32().unwrap()),
            0.0,
            "{modality}"
        );
    }
}

#[test]
fn a_video_is_one_row_the_mean_of_its_15_clips() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v.npy");
    run(&[
        "embed",
        "-m",
        "vision",
        p(&media("carphone_pristine.mp4")),
        "--out",
        p(&out),
    ]);
    let e = npy::read(&out).unwrap();
    assert_eq!(e.shape(), &[1, 1024]);
    // The vision tower's clip embeddings are unit vectors; their mean is shorter unless all 15 agree.
    let norm: f32 = e.as_f32().unwrap().iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(norm > 0.0 && norm <= 1.0 + 1e-5, "{norm}");
}

#[test]
fn text_prompts_embed_directly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.json");
    run(&[
        "embed",
        "-m",
        "text",
        "--text",
        "a dog barking",
        "glass breaking",
        "--out",
        p(&out),
    ]);
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["rows"].as_array().unwrap().len(), 2);
    assert_eq!(doc["rows"][1]["input"], "glass breaking");
    // Same as the PyPI tokenizer's ids through the .npy path: the self-test's first text is "a dog barking".
    let ids = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/imagebind-tiny/selftest/text.input.npy");
    let via = tmp.path().join("ids.npy");
    run(&["embed", "-m", "text", p(&ids), "--out", p(&via)]);
    let via = npy::read(&via).unwrap();
    let direct: Vec<f32> = doc["rows"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert!(max_abs_diff(&direct, &via.as_f32().unwrap()[..1024]) <= 1e-6);
}
