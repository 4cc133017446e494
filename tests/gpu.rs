//! GPU adapters through wgpu on a real Vulkan device: Mesa's lavapipe (`mesa-vulkan-drivers`, installed by
//! tools/install-deps) is a Vulkan implementation on the CPU, so CI has one without a GPU.

#![cfg(feature = "wgpu")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::process::Command;

mod common;

#[test]
fn devices_lists_the_vulkan_adapters_wgpu_finds() {
    let out = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(["devices", "--json"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpus = doc["gpus"]
        .as_array()
        .expect("no GPU adapter: is mesa-vulkan-drivers installed?");
    let lavapipe = gpus
        .iter()
        .find(|g| g["driver"] == "llvmpipe")
        .unwrap_or_else(|| panic!("lavapipe is not among {gpus:?}"));
    assert_eq!(lavapipe["device_type"], "cpu", "{lavapipe}");
    assert_eq!(lavapipe["backend"], "vulkan", "{lavapipe}");
    assert!(lavapipe["shader_f16"].is_boolean(), "{lavapipe}");
    assert!(lavapipe["name"].as_str().unwrap().contains("llvmpipe"), "{lavapipe}");
    // The table names it too.
    let table = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .arg("devices")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("GPU adapters (wgpu):") && text.contains("llvmpipe"),
        "{text}"
    );
}

// ---- The wgpu backend on lavapipe ----

use std::path::PathBuf;
use std::sync::Arc;

use sensebind::encode::engine::{self, ModelSource};
use sensebind::encode::verify::max_abs_diff;
use sensebind::encode::{Backend, EncodeError, Encoder, EngineOptions, ModelDir, embed};
use sensebind::modality::Modality;
use sensebind::npy;
use sensebind::tensor::{Tensor, TensorData};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/imagebind-tiny")
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
fn every_tower_on_wgpu_matches_pytorch_and_tract_within_1e4() {
    let dir = ModelDir::open(&tiny()).unwrap();
    for m in Modality::ALL {
        let gpu = load(&dir, m, Backend::Wgpu);
        assert_eq!(gpu.backend(), "wgpu");
        let tract = load(&dir, m, Backend::Tract);
        let input = npy::read(&tiny().join(format!("selftest/{m}.input.npy"))).unwrap();
        let torch = npy::read(&tiny().join(format!("selftest/{m}.output.npy"))).unwrap();
        let a = embed(gpu.as_ref(), &input, 16).unwrap();
        let b = embed(tract.as_ref(), &input, 16).unwrap();
        assert_eq!(a.shape(), torch.shape(), "{m}");
        let vs_torch = max_abs_diff(a.as_f32().unwrap(), torch.as_f32().unwrap());
        let vs_tract = max_abs_diff(a.as_f32().unwrap(), b.as_f32().unwrap());
        // Measured on lavapipe (Mesa 22.3): at most 1e-6 against PyTorch on every tower.
        assert!(vs_torch <= 1e-4, "{m}: wgpu vs PyTorch {vs_torch:e}");
        assert!(vs_tract <= 1e-4, "{m}: wgpu vs tract {vs_tract:e}");
    }
}

/// `n` distinct clips for a tower (`clip`: its per-clip shape): the self-test's first two clips, then scaled
/// (token ids shifted) copies of them.
fn rows(m: Modality, clip: &[usize], n: usize) -> Tensor {
    let input = npy::read(&tiny().join(format!("selftest/{m}.input.npy"))).unwrap();
    let per: usize = clip.iter().product();
    let mut shape = vec![n];
    shape.extend_from_slice(clip);
    let data = match input.data() {
        TensorData::F32(v) => TensorData::F32(
            (0..n)
                .flat_map(|r| {
                    v[(r % 2) * per..(r % 2 + 1) * per]
                        .iter()
                        .map(move |x| x * (1.0 + r as f32 * 0.1))
                })
                .collect(),
        ),
        TensorData::I64(v) => TensorData::I64(
            (0..n)
                .flat_map(|r| {
                    v[(r % 2) * per..(r % 2 + 1) * per]
                        .iter()
                        .map(move |&t| if (1..49406).contains(&t) { t + r as i64 } else { t })
                })
                .collect(),
        ),
    };
    Tensor::new(shape, data).unwrap()
}

#[test]
fn batches_of_1_to_5_give_the_same_rows_on_wgpu() {
    let dir = ModelDir::open(&tiny()).unwrap();
    // Plans for 1 and 4 rows (batch_plans [1], max_batch 4): 2 and 3 are padded, 5 runs as 4 + 1 padded.
    for m in [Modality::Text, Modality::Audio, Modality::Imu] {
        let gpu = load(&dir, m, Backend::Wgpu);
        let clip = gpu.info().input_shape.clone();
        let all = rows(m, &clip, 5);
        let whole = gpu.encode(&all).unwrap();
        let dim = gpu.info().output_dim;
        for n in 1..=5 {
            let part = gpu.encode(&rows(m, &clip, n)).unwrap();
            let diff = max_abs_diff(part.as_f32().unwrap(), &whole.as_f32().unwrap()[..n * dim]);
            assert!(
                diff <= 1e-5,
                "{m}: batch {n} differs from its rows in a batch of 5 by {diff:e}"
            );
        }
    }
}

#[test]
fn nan_inputs_and_wrong_shapes_are_clear_errors_on_wgpu() {
    let dir = ModelDir::open(&tiny()).unwrap();
    let gpu = load(&dir, Modality::Audio, Backend::Wgpu);
    let clip = gpu.info().input_shape.clone();
    let mut input = rows(Modality::Audio, &clip, 2);
    if let TensorData::F32(v) = input.data() {
        let mut v = v.clone();
        v[128 * 204 + 7] = f32::NAN;
        input = Tensor::from_f32(input.shape().to_vec(), v).unwrap();
    }
    let err = gpu.encode(&input).unwrap_err();
    assert!(matches!(err, EncodeError::NonFinite { row: 1, index: 7, .. }), "{err}");
    let wrong = Tensor::from_f32(vec![1, 1, 128, 200], vec![0.0; 128 * 200]).unwrap();
    let err = gpu.encode(&wrong).unwrap_err().to_string();
    assert!(
        err.contains("[B, 1, 128, 204]") && err.contains("[1, 1, 128, 200]"),
        "{err}"
    );
    // The encoder still works after both.
    assert!(gpu.encode(&rows(Modality::Audio, &clip, 1)).is_ok());
}

#[test]
fn an_adapter_that_is_not_there_is_a_clear_error_and_auto_never_picks_a_cpu_adapter() {
    let dir = ModelDir::open(&tiny()).unwrap();
    let named = EngineOptions {
        wgpu_adapter: Some("no-such-gpu".into()),
        ..options(Backend::Wgpu)
    };
    let err = match engine::load(ModelSource::Dir(&dir), Modality::Depth, &named) {
        Ok(_) => panic!("an adapter named no-such-gpu was found"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("wgpu backend is unavailable") && err.contains("no-such-gpu") && err.contains("llvmpipe"),
        "{err}"
    );
    // lavapipe is this machine's only adapter, and a CPU one: auto goes on to ONNX Runtime or tract.
    let auto = load(&dir, Modality::Depth, Backend::Auto);
    assert_ne!(auto.backend(), "wgpu");
}

#[test]
fn without_any_vulkan_driver_wgpu_fails_clearly_and_auto_falls_through() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tiny().join("selftest/depth.input.npy");
    let run = |backend: &str| {
        Command::new(env!("CARGO_BIN_EXE_sensebind"))
            .args([
                "embed",
                "--modality",
                "depth",
                "--backend",
                backend,
                "--log",
                "info",
                "--out",
            ])
            .arg(tmp.path().join(format!("{backend}.npy")))
            .arg(&input)
            // The Vulkan loader finds no driver: the machine has no adapter at all.
            .env("VK_ICD_FILENAMES", tmp.path().join("none.json"))
            .env("VK_DRIVER_FILES", tmp.path().join("none.json"))
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap()
    };
    let explicit = run("wgpu");
    let stderr = String::from_utf8_lossy(&explicit.stderr);
    assert!(!explicit.status.success(), "{stderr}");
    assert!(stderr.contains("no Vulkan adapter found"), "{stderr}");
    let auto = run("auto");
    let stderr = String::from_utf8_lossy(&auto.stderr);
    assert!(auto.status.success(), "{stderr}");
    // Without GPU device nodes (CI) auto does not even start the Vulkan loader; with them, the loader finds nothing.
    assert!(
        stderr.contains("Backend auto: not wgpu: no GPU device node in /dev")
            || stderr.contains("Backend auto: not wgpu: no Vulkan adapter found"),
        "{stderr}"
    );
    assert!(tmp.path().join("auto.npy").exists());
}

#[test]
fn the_daemon_runs_a_tower_on_wgpu() {
    let tmp = tempfile::tempdir().unwrap();
    let models = format!(
        "dir = {}\n[models.towers.audio]\nbackend = \"wgpu\"",
        common::toml_str(&tiny())
    );
    assert_eq!(common::run_bell_offline(tmp.path(), &models), Some("wgpu"));
}

#[test]
fn f16_weights_stay_within_the_measured_error_of_pytorch() {
    let dir = ModelDir::open(&tiny()).unwrap();
    let half = EngineOptions {
        wgpu_f16: true,
        ..options(Backend::Wgpu)
    };
    for m in Modality::ALL {
        let gpu = engine::load(ModelSource::Dir(&dir), m, &half).unwrap();
        // lavapipe has shader-f16 (`sensebind devices`), so the weights really are f16 here.
        assert_eq!(gpu.backend(), "wgpu-f16");
        let input = npy::read(&tiny().join(format!("selftest/{m}.input.npy"))).unwrap();
        let torch = npy::read(&tiny().join(format!("selftest/{m}.output.npy"))).unwrap();
        let got = embed(gpu.as_ref(), &input, 16).unwrap();
        let (a, b) = (got.as_f32().unwrap(), torch.as_f32().unwrap());
        let err = max_abs_diff(a, b);
        // Measured on lavapipe: max-abs 2.5e-5 (vision) to 7.9e-4 (audio, norm 20); cosine ≥ 0.9999998.
        assert!(err > 1e-6, "{m}: f16 weights changed nothing ({err:e}): are they f16?");
        assert!(err <= 2e-3, "{m}: f16 weights vs PyTorch {err:e}");
        let dim = a.len() / got.shape()[0];
        for (x, y) in a.chunks(dim).zip(b.chunks(dim)) {
            let c = sensebind::encode::verify::cosine(x, y);
            assert!(c >= 0.99999, "{m}: cosine {c}");
        }
    }
}
