//! The bundled models against PyTorch, bare ONNX files of other widths, and every way a model can be bad.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sensebind::encode::verify::{max_abs_diff, verify_dir};
use sensebind::encode::{Backend, EncodeError, Encoder, EngineOptions, ModelDir, TractEncoder, TractOptions, embed};
use sensebind::modality::Modality;
use sensebind::npy;
use sensebind::tensor::Tensor;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny() -> PathBuf {
    root().join("models/imagebind-tiny")
}

fn sensebind(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(args)
        .env_remove("SENSEBIND_LOG")
        .output()
        .expect("run sensebind")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command expected to fail: non-zero exit, no panic, and the output mentions every `needle`.
fn assert_clean_failure(out: &Output, needles: &[&str]) {
    let all = text(out);
    assert!(!out.status.success(), "expected failure, got success:\n{all}");
    assert_eq!(out.status.code(), Some(1), "exit code:\n{all}");
    assert!(!all.contains("panicked"), "panicked:\n{all}");
    for n in needles {
        assert!(all.contains(n), "missing {n:?} in:\n{all}");
    }
}

#[test]
fn every_bundled_tower_matches_pytorch_within_1e5() {
    let options = EngineOptions {
        backend: Backend::Tract,
        ..EngineOptions::default()
    };
    let report = verify_dir(&tiny(), &options).unwrap();
    assert!(report.bpe_ok);
    assert_eq!(report.towers.len(), 6, "{report:?}");
    for t in &report.towers {
        let err = t.max_abs_error.expect("self-test ran");
        assert!(t.passed && err <= 1e-5, "{t:?}");
        assert!(t.rows >= 2, "{t:?}");
    }
}

#[test]
fn bundled_models_stay_under_25_mb() {
    let total: u64 = walk(&tiny()).iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(total < 25_000_000, "models/imagebind-tiny is {total} bytes");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn models_verify_cli_prints_a_line_per_tower() {
    let out = sensebind(&["models", "verify", tiny().to_str().unwrap()]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for m in Modality::ALL {
        let line = all
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(m.as_str()))
            .unwrap_or_else(|| panic!("no line for {m}:\n{all}"));
        assert!(line.starts_with("PASS") && line.contains("max-abs"), "{line}");
    }
}

#[test]
fn threads_do_not_change_the_result() {
    let dir = ModelDir::open(&tiny()).unwrap();
    let input = npy::read(&tiny().join("selftest/audio.input.npy")).unwrap();
    let one = TractEncoder::from_model_dir(&dir, Modality::Audio, &TractOptions::default()).unwrap();
    let two = TractEncoder::from_model_dir(
        &dir,
        Modality::Audio,
        &TractOptions {
            threads: 2,
            verify_checksum: true,
            ..TractOptions::default()
        },
    )
    .unwrap();
    let a = embed(&one, &input, 16).unwrap();
    let b = embed(&two, &input, 16).unwrap();
    assert!(max_abs_diff(a.as_f32().unwrap(), b.as_f32().unwrap()) <= 1e-6);
}

#[test]
fn batches_of_any_size_give_the_same_rows() {
    let dir = ModelDir::open(&tiny()).unwrap();
    let enc = TractEncoder::from_model_dir(&dir, Modality::Imu, &TractOptions::default()).unwrap();
    let input = npy::read(&tiny().join("selftest/imu.input.npy")).unwrap();
    let rows = input.as_f32().unwrap();
    let row_len = 6 * 2000;
    // 5 rows: the two self-test rows and three mixtures of them.
    let mut data = rows.to_vec();
    for k in 1..=3 {
        data.extend((0..row_len).map(|i| rows[i] * 0.25 * k as f32 + rows[row_len + i]));
    }
    let five = Tensor::from_f32(vec![5, 6, 2000], data.clone()).unwrap();
    let all = enc.encode(&five).unwrap();
    for (i, chunk) in [1usize, 4].iter().enumerate() {
        let got = embed(&enc, &five, *chunk).unwrap();
        let err = max_abs_diff(got.as_f32().unwrap(), all.as_f32().unwrap());
        assert!(err <= 1e-5, "chunk {i}: {err}");
    }
    for r in 0..5 {
        let one = Tensor::from_f32(vec![1, 6, 2000], data[r * row_len..(r + 1) * row_len].to_vec()).unwrap();
        let got = enc.encode(&one).unwrap();
        let err = max_abs_diff(got.as_f32().unwrap(), &all.as_f32().unwrap()[r * 1024..(r + 1) * 1024]);
        assert!(err <= 1e-5, "row {r}: {err}");
    }
}

#[test]
fn embed_accepts_bare_onnx_of_other_widths() {
    let fixtures = root().join("tests/fixtures/other-widths");
    let tmp = tempfile::tempdir().unwrap();
    for m in ["depth", "imu"] {
        let out = tmp.path().join(format!("{m}.npy"));
        let res = sensebind(&[
            "embed",
            "--modality",
            m,
            "--model",
            fixtures.join(format!("{m}.onnx")).to_str().unwrap(),
            fixtures.join(format!("{m}.input.npy")).to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(res.status.success(), "{}", text(&res));
        let got = npy::read(&out).unwrap();
        let want = npy::read(&fixtures.join(format!("{m}.output.npy"))).unwrap();
        assert_eq!(got.shape(), want.shape());
        let err = max_abs_diff(got.as_f32().unwrap(), want.as_f32().unwrap());
        assert!(err <= 1e-5, "{m}: max-abs {err}");
    }
}

#[test]
fn embed_keeps_input_order_and_writes_json() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tiny().join("selftest/text.input.npy");
    let ids = npy::read(&input).unwrap();
    let ids = ids.as_i64().unwrap();
    // The second row alone, unbatched, then both rows.
    let second = tmp.path().join("second.npy");
    npy::write(&second, &Tensor::from_i64(vec![77], ids[77..].to_vec()).unwrap()).unwrap();
    let out = tmp.path().join("e.json");
    let res = sensebind(&[
        "embed",
        "-m",
        "text",
        second.to_str().unwrap(),
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{}", text(&res));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(doc["dim"], 1024);
    let want = npy::read(&tiny().join("selftest/text.output.npy")).unwrap();
    let want = want.as_f32().unwrap();
    let row = |i: usize| -> Vec<f32> {
        rows[i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    assert!(max_abs_diff(&row(0), &want[1024..]) <= 1e-5);
    assert!(max_abs_diff(&row(1), &want[..1024]) <= 1e-5);
    assert!(max_abs_diff(&row(2), &want[1024..]) <= 1e-5);
    assert_eq!(rows[2]["index"], 1);
}

fn copy_tiny(to: &Path) {
    std::fs::create_dir_all(to.join("selftest")).unwrap();
    for p in walk(&tiny()) {
        let rel = p.strip_prefix(tiny()).unwrap();
        std::fs::copy(&p, to.join(rel)).unwrap();
    }
}

#[test]
fn checksum_mismatch_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tiny(tmp.path());
    let depth = tmp.path().join("depth.onnx");
    let mut bytes = std::fs::read(&depth).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&depth, bytes).unwrap();
    let out = sensebind(&["models", "verify", tmp.path().to_str().unwrap()]);
    assert_clean_failure(&out, &["FAIL depth", "checksum mismatch", "depth.onnx"]);
    // The other towers still pass.
    assert!(text(&out).contains("PASS vision"));

    let input = tiny().join("selftest/depth.input.npy");
    let res = sensebind(&[
        "embed",
        "-m",
        "depth",
        "--model",
        tmp.path().to_str().unwrap(),
        input.to_str().unwrap(),
        "--out",
        tmp.path().join("o.npy").to_str().unwrap(),
    ]);
    assert_clean_failure(&res, &["checksum mismatch", "depth.onnx"]);
}

#[test]
fn truncated_and_garbage_onnx_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(tiny().join("imu.onnx")).unwrap();
    let input = tiny().join("selftest/imu.input.npy");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.onnx", good[..good.len() / 3].to_vec()),
        (
            "garbage.onnx",
            (0..5000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("empty.onnx", Vec::new()),
    ];
    for (name, bytes) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let res = sensebind(&[
            "embed",
            "-m",
            "imu",
            "--model",
            p.to_str().unwrap(),
            input.to_str().unwrap(),
            "--out",
            tmp.path().join("o.npy").to_str().unwrap(),
        ]);
        assert_clean_failure(&res, &["cannot load the imu model", name]);
    }
}

#[test]
fn truncation_at_any_point_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(tiny().join("depth.onnx")).unwrap();
    for k in 1..16 {
        let p = tmp.path().join(format!("cut{k}.onnx"));
        std::fs::write(&p, &good[..good.len() * k / 16]).unwrap();
        match TractEncoder::from_onnx(&p, Modality::Depth, &TractOptions::default()) {
            Err(EncodeError::Load { reason, .. }) => {
                assert!(!reason.contains("panicked"), "{reason}")
            }
            Err(other) => panic!("cut {k}: unexpected error {other}"),
            Ok(_) => panic!("cut {k}: a truncated model loaded"),
        }
    }
}

#[test]
fn missing_model_and_input_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.npy");
    let res = sensebind(&[
        "embed",
        "-m",
        "depth",
        "--model",
        "/nonexistent/depth.onnx",
        tiny().join("selftest/depth.input.npy").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&res, &["/nonexistent/depth.onnx", "does not exist"]);

    let res = sensebind(&[
        "embed",
        "-m",
        "depth",
        "/nonexistent/in.npy",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&res, &["/nonexistent/in.npy"]);

    let res = sensebind(&["models", "verify", "/nonexistent/models"]);
    assert_clean_failure(&res, &["/nonexistent/models/manifest.toml"]);

    // A manifest naming a file that is not there.
    let dir = tmp.path().join("m");
    copy_tiny(&dir);
    std::fs::remove_file(dir.join("thermal.onnx")).unwrap();
    let res = sensebind(&["models", "verify", dir.to_str().unwrap()]);
    assert_clean_failure(&res, &["FAIL thermal", "thermal.onnx", "does not exist"]);
}

#[test]
fn wrong_shape_and_nan_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.npy");
    let bad = tmp.path().join("bad.npy");
    npy::write(
        &bad,
        &Tensor::from_f32(vec![2, 1, 200, 224], vec![0.5; 2 * 200 * 224]).unwrap(),
    )
    .unwrap();
    let res = sensebind(&[
        "embed",
        "-m",
        "depth",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&res, &["bad.npy", "[2, 1, 200, 224]", "[B, 1, 224, 224]"]);

    let mut v = vec![0.5f32; 2 * 224 * 224];
    v[224 * 224 + 17] = f32::NAN;
    let nan = tmp.path().join("nan.npy");
    npy::write(&nan, &Tensor::from_f32(vec![2, 1, 224, 224], v).unwrap()).unwrap();
    let res = sensebind(&[
        "embed",
        "-m",
        "thermal",
        nan.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&res, &["nan.npy", "non-finite", "row 1", "element 17"]);

    // Text ids given as floats.
    let res = sensebind(&[
        "embed",
        "-m",
        "text",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&res, &["bad.npy", "i64 [B, 77]"]);

    let res = sensebind(&["embed", "-m", "depth", bad.to_str().unwrap(), "--out", "x.txt"]);
    assert_clean_failure(&res, &["x.txt", ".npy or .json"]);
}

#[test]
fn a_model_with_the_wrong_modality_is_rejected_by_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let res = sensebind(&[
        "embed",
        "-m",
        "imu",
        "--model",
        tiny().join("depth.onnx").to_str().unwrap(),
        tiny().join("selftest/imu.input.npy").to_str().unwrap(),
        "--out",
        tmp.path().join("o.npy").to_str().unwrap(),
    ]);
    assert_clean_failure(&res, &["[2, 6, 2000]", "[B, 1, 224, 224]"]);
}

#[test]
fn bench_reports_each_tower_at_batch_1_and_4_on_every_backend() {
    let out = sensebind(&[
        "bench",
        "--secs",
        "0",
        "--min-iters",
        "1",
        "--modality",
        "depth",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let backends: Vec<&str> = rows.iter().map(|r| r["backend"].as_str().unwrap()).collect();
    let mut expected = vec!["tract", "tract"];
    if sensebind::encode::engine::ONNXRUNTIME_BUILT && std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty())
    {
        expected.extend(["onnxruntime", "onnxruntime"]);
    }
    // The wgpu backend runs wherever a Vulkan adapter is: lavapipe on CI (tools/install-deps).
    if cfg!(feature = "wgpu") {
        expected.extend(["wgpu", "wgpu"]);
    }
    assert_eq!(backends, expected);
    for pair in rows.chunks(2) {
        assert_eq!(pair[0]["batch"], 1);
        assert_eq!(pair[1]["batch"], 4);
    }
    for r in rows {
        assert!(r["p50_ms"].as_f64().unwrap() > 0.0);
        assert!(r["p95_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
    }
}

/// A copy of models/imagebind-tiny whose audio tower is the committed int8 one (tests/fixtures/models/README.md),
/// with the manifest's `precision` set to `precision`, as `tools/quantize.py --model-dir … --modalities audio`
/// writes it.
fn tiny_with_int8_audio(to: &Path, precision: &str) {
    copy_tiny(to);
    let audio = to.join("audio.onnx");
    std::fs::copy(
        root().join("tests/fixtures/models/imagebind-tiny-audio-int8.onnx"),
        &audio,
    )
    .unwrap();
    let sha = sensebind::encode::manifest::sha256_file(&audio).unwrap();
    let old = ModelDir::open(&tiny())
        .unwrap()
        .tower(Modality::Audio)
        .unwrap()
        .sha256
        .clone();
    let manifest = std::fs::read_to_string(to.join("manifest.toml")).unwrap();
    let manifest = manifest.replace(
        &format!("sha256 = \"{old}\""),
        &format!("sha256 = \"{sha}\"\nprecision = \"{precision}\""),
    );
    std::fs::write(to.join("manifest.toml"), manifest).unwrap();
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    sensebind::encode::verify::cosine(a, b)
}

#[test]
fn int8_tower_embeds_close_to_f32_verifies_by_cosine_and_an_unknown_precision_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let int8 = tmp.path().join("int8");
    tiny_with_int8_audio(&int8, "int8");
    let dir = ModelDir::open(&int8).unwrap();
    assert_eq!(
        dir.tower(Modality::Audio).unwrap().precision,
        sensebind::encode::Precision::Int8
    );
    assert_eq!(
        dir.tower(Modality::Depth).unwrap().precision,
        sensebind::encode::Precision::F32
    );
    let bell = root().join("tests/fixtures/media/bell.oga");
    let embed_with = |model: &Path, out: &str| {
        let out = tmp.path().join(out);
        let res = sensebind(&[
            "embed",
            "-m",
            "audio",
            "--model",
            model.to_str().unwrap(),
            bell.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(res.status.success(), "{}", text(&res));
        npy::read(&out).unwrap().as_f32().unwrap().to_vec()
    };
    let (f32_row, int8_row) = (embed_with(&tiny(), "f32.npy"), embed_with(&int8, "int8.npy"));
    let cos = cosine(&f32_row, &int8_row);
    assert!(cos >= 0.99, "int8 vs f32 cosine {cos}");
    assert!(f32_row != int8_row, "the int8 tower is a different graph");

    // `models verify` holds the int8 tower to a cosine, the others to PyTorch's max-abs tolerance.
    let out = sensebind(&["models", "verify", int8.to_str().unwrap(), "--backend", "tract"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("PASS audio") && text(&out).contains("int8: cosine"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("PASS depth"), "{}", text(&out));

    // An unknown precision is a clear error naming the manifest, the key and the values this build runs.
    let bad = tmp.path().join("int4");
    tiny_with_int8_audio(&bad, "int4");
    let res = sensebind(&[
        "embed",
        "-m",
        "audio",
        "--model",
        bad.to_str().unwrap(),
        bell.to_str().unwrap(),
        "--out",
        tmp.path().join("x.npy").to_str().unwrap(),
    ]);
    assert_clean_failure(
        &res,
        &["manifest.toml", "precision", "\"int4\" is not supported", "int8"],
    );
    let res = sensebind(&["models", "verify", bad.to_str().unwrap()]);
    assert_clean_failure(&res, &["\"int4\" is not supported"]);
}

#[test]
fn the_daemon_runs_an_int8_tower() {
    let tmp = tempfile::tempdir().unwrap();
    let int8 = tmp.path().join("int8");
    tiny_with_int8_audio(&int8, "int8");
    common::run_bell_offline(tmp.path(), &format!("dir = {}", common::toml_str(&int8)));
}
