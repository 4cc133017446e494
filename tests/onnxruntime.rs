//! The ONNX Runtime backend against PyTorch and tract on the bundled towers, and every way its library can be
//! missing or wrong.
//!
//! The library comes from `ORT_DYLIB_PATH` (`tools/test` fetches the CPU library of the `onnxruntime` wheel and sets
//! it). Without it the in-process tests say so and return, unless `SENSEBIND_REQUIRE_ORT` is set (as `tools/test`
//! and CI do), which makes them fail. Tests about a missing or wrong library run the CLI in a fresh process, since a
//! process can load only one ONNX Runtime.

#![cfg(feature = "onnxruntime")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // test helpers; the skip note

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use sensebind::encode::engine::{self, ModelSource};
use sensebind::encode::verify::{max_abs_diff, verify_dir};
use sensebind::encode::{Backend, Encoder, EngineOptions, ExecutionProviderConfig, ModelDir, embed};
use sensebind::modality::Modality;
use sensebind::npy;
use sensebind::tensor::Tensor;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/imagebind-tiny")
}

/// The ONNX Runtime library for in-process tests, or `None` (with a note) when it is not configured.
fn ort_library() -> Option<PathBuf> {
    match std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("SENSEBIND_REQUIRE_ORT").is_some() => {
            panic!("SENSEBIND_REQUIRE_ORT is set but ORT_DYLIB_PATH is not; run ./tools/test")
        }
        None => {
            eprintln!("ORT_DYLIB_PATH is not set: skipping (./tools/test sets it)");
            None
        }
    }
}

fn options(backend: Backend) -> EngineOptions {
    EngineOptions {
        backend,
        ..EngineOptions::default()
    }
}

fn load(dir: &ModelDir, m: Modality, backend: Backend) -> Arc<dyn Encoder> {
    engine::load(ModelSource::Dir(dir), m, &options(backend)).unwrap()
}

#[test]
fn every_tower_matches_pytorch_and_tract_within_1e5() {
    if ort_library().is_none() {
        return;
    }
    let dir = ModelDir::open(&tiny()).unwrap();
    for m in Modality::ALL {
        let ort = load(&dir, m, Backend::Onnxruntime);
        assert_eq!(ort.backend(), "onnxruntime");
        let tract = load(&dir, m, Backend::Tract);
        let input = npy::read(&tiny().join(format!("selftest/{m}.input.npy"))).unwrap();
        let torch = npy::read(&tiny().join(format!("selftest/{m}.output.npy"))).unwrap();
        let a = embed(ort.as_ref(), &input, 16).unwrap();
        let b = embed(tract.as_ref(), &input, 16).unwrap();
        assert_eq!(a.shape(), torch.shape(), "{m}");
        let vs_torch = max_abs_diff(a.as_f32().unwrap(), torch.as_f32().unwrap());
        let vs_tract = max_abs_diff(a.as_f32().unwrap(), b.as_f32().unwrap());
        assert!(vs_torch <= 1e-5, "{m}: ONNX Runtime vs PyTorch {vs_torch:e}");
        assert!(vs_tract <= 1e-5, "{m}: ONNX Runtime vs tract {vs_tract:e}");
    }
}

#[test]
fn models_verify_passes_on_onnxruntime() {
    if ort_library().is_none() {
        return;
    }
    let report = verify_dir(&tiny(), &options(Backend::Onnxruntime)).unwrap();
    assert_eq!(report.towers.len(), 6);
    for t in &report.towers {
        assert!(t.passed && t.backend == "onnxruntime", "{t:?}");
        assert!(t.max_abs_error.unwrap() <= 1e-5, "{t:?}");
    }
}

#[test]
fn auto_prefers_onnxruntime_when_it_loads() {
    if ort_library().is_none() {
        return;
    }
    let dir = ModelDir::open(&tiny()).unwrap();
    assert_eq!(load(&dir, Modality::Depth, Backend::Auto).backend(), "onnxruntime");
}

#[test]
fn batches_of_any_size_give_the_same_rows_and_bad_input_is_named() {
    if ort_library().is_none() {
        return;
    }
    let dir = ModelDir::open(&tiny()).unwrap();
    let enc = load(&dir, Modality::Depth, Backend::Onnxruntime);
    let input = npy::read(&tiny().join("selftest/depth.input.npy")).unwrap();
    let rows = input.as_f32().unwrap();
    let row_len = rows.len() / input.shape()[0];
    let all = enc.encode(&input).unwrap();
    for r in 0..input.shape()[0] {
        let mut shape = input.shape().to_vec();
        shape[0] = 1;
        let one = Tensor::from_f32(shape, rows[r * row_len..(r + 1) * row_len].to_vec()).unwrap();
        let got = enc.encode(&one).unwrap();
        let dim = enc.info().output_dim;
        let d = max_abs_diff(got.as_f32().unwrap(), &all.as_f32().unwrap()[r * dim..(r + 1) * dim]);
        assert!(d <= 1e-5, "row {r}: {d:e}");
    }
    let mut bad = rows.to_vec();
    bad[row_len + 7] = f32::NAN;
    let err = enc
        .encode(&Tensor::from_f32(input.shape().to_vec(), bad).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("row 1, element 7"), "{err}");
    let wrong = Tensor::from_f32(vec![1, 3], vec![0.0; 3]).unwrap();
    let err = enc.encode(&wrong).unwrap_err().to_string();
    assert!(err.contains("[1, 3]") && err.contains("the model takes"), "{err}");
}

#[test]
fn a_truncated_model_is_an_error_not_a_crash() {
    if ort_library().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny().join("depth.onnx")).unwrap();
    let cut = tmp.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = match engine::load(ModelSource::Onnx(&cut), Modality::Depth, &options(Backend::Onnxruntime)) {
        Ok(_) => panic!("a truncated model loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cut.onnx") && err.contains("depth"), "{err}");
}

#[test]
fn a_provider_this_build_lacks_falls_back_with_a_warning() {
    let Some(lib) = ort_library() else { return };
    let out = embed_imu(&[
        "--backend",
        "onnxruntime",
        "--ort-providers",
        "tensorrt,cuda,cpu",
        "--ort-library",
        lib.to_str().unwrap(),
    ]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("no tensorrt execution provider") && all.contains("no cuda execution provider"),
        "{all}"
    );
    assert!(all.contains("\"backend\":\"onnxruntime\""), "{all}");
    assert!(ExecutionProviderConfig::from_name("cuda").is_ok());
}

/// Runs `sensebind embed -m imu ARGS --out OUT.json INPUT` (the IMU self-test input) without ORT_DYLIB_PATH, logging
/// at info; returns the output with the JSON written appended.
fn embed_imu(args: &[&str]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("out.json");
    let input = tiny().join("selftest/imu.input.npy");
    let mut out = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(["embed", "-m", "imu"])
        .args(args)
        .arg("--out")
        .arg(&out_file)
        .arg(&input)
        .args(["--log", "info"])
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("SENSEBIND_LOG")
        .output()
        .unwrap();
    if let Ok(json) = std::fs::read(&out_file) {
        out.stdout.extend_from_slice(&json);
    }
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_missing_library_is_a_clear_error_naming_it() {
    let out = embed_imu(&[
        "--backend",
        "onnxruntime",
        "--ort-library",
        "/nonexistent/libonnxruntime.so.1",
    ]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(all.contains("/nonexistent/libonnxruntime.so.1 does not exist"), "{all}");
    assert!(all.contains("ORT_DYLIB_PATH"), "the error says how to fix it: {all}");
}

#[test]
fn a_file_that_is_not_onnxruntime_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libonnxruntime.so.1.32.0");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let out = embed_imu(&["--backend", "onnxruntime", "--ort-library", fake.to_str().unwrap()]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(
        all.contains("cannot load ONNX Runtime from") && all.contains(fake.to_str().unwrap()),
        "{all}"
    );
}

#[test]
fn auto_falls_back_to_tract_and_says_why() {
    let out = embed_imu(&["--backend", "auto", "--ort-library", "/nonexistent/libonnxruntime.so.1"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("\"backend\":\"tract\""), "{all}");
    assert_eq!(
        all.matches("Backend auto: tract (ONNX Runtime is not available")
            .count(),
        1,
        "logged once: {all}"
    );
    assert!(all.contains("does not exist"), "the log says why: {all}");
}
