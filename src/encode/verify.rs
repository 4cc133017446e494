//! `sensebind models verify`: checksums plus every tower's stored self-test vector.

use std::path::Path;

use super::engine::{self, ModelSource};
use super::options::EngineOptions;
use super::{EncodeError, ModelDir, Precision, embed};
use crate::modality::Modality;
use crate::npy;

/// Default self-test tolerance when the manifest gives none.
pub const DEFAULT_TOLERANCE: f32 = 1e-5;

/// The self-test of an `int8` tower: every row's cosine to the stored f32 output at least this (quantisation changes
/// the numbers, so a max-abs tolerance does not apply; docs/models.md "int8").
pub const INT8_MIN_COSINE: f32 = 0.99;

/// The self-test of a tower run with f16 weights (`wgpu-f16`): every row's cosine to the stored f32 output at
/// least this (measured on the tiny towers: docs/gpu.md).
pub const F16_MIN_COSINE: f32 = 0.999;

/// The outcome of one tower's check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TowerCheck {
    /// The tower.
    pub modality: Modality,
    /// The backend that ran it.
    pub backend: String,
    /// Whether the checksum, load and self-test all passed.
    pub passed: bool,
    /// The tower's weight precision (`f32`, `int8`).
    pub precision: Precision,
    /// Largest absolute difference from PyTorch's stored output, when the self-test ran.
    pub max_abs_error: Option<f32>,
    /// Smallest per-row cosine to PyTorch's stored output, when the self-test ran (what an `int8` tower is held to).
    pub min_cosine: Option<f32>,
    /// The tolerance applied.
    pub tolerance: f32,
    /// Rows in the self-test batch.
    pub rows: usize,
    /// Why it failed, or a note.
    pub detail: String,
}

/// The outcome of checking a model directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// The model's name.
    pub model: String,
    /// Whether the BPE vocabulary's checksum matched.
    pub bpe_ok: bool,
    /// One entry per tower, in ImageBind's order.
    pub towers: Vec<TowerCheck>,
}

impl VerifyReport {
    /// True when everything passed.
    pub fn passed(&self) -> bool {
        self.bpe_ok && self.towers.iter().all(|t| t.passed)
    }
}

/// Checks every tower of a model directory on the backend `options` name: sha256, load, self-test within
/// tolerance.
pub fn verify_dir(dir: &Path, options: &EngineOptions) -> Result<VerifyReport, EncodeError> {
    let model_dir = ModelDir::open(dir)?;
    let bpe_ok = match model_dir.verify_bpe_checksum() {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(model = %model_dir.manifest().name, error = %e, "BPE vocabulary failed its check.");
            false
        }
    };
    let towers = model_dir
        .modalities()
        .into_iter()
        .map(|m| check_tower(&model_dir, m, options))
        .collect();
    Ok(VerifyReport {
        model: model_dir.manifest().name.clone(),
        bpe_ok,
        towers,
    })
}

fn check_tower(dir: &ModelDir, modality: Modality, options: &EngineOptions) -> TowerCheck {
    let tower = dir.tower(modality).ok();
    let tolerance = tower.and_then(|t| t.selftest_tolerance).unwrap_or(DEFAULT_TOLERANCE);
    let precision = tower.map_or(Precision::F32, |t| t.precision);
    let mut check = TowerCheck {
        modality,
        backend: options.backend.to_string(),
        precision,
        passed: false,
        max_abs_error: None,
        min_cosine: None,
        tolerance,
        rows: 0,
        detail: String::new(),
    };
    match run_selftest(dir, modality, options) {
        Ok((backend, None)) => {
            check.backend = backend.into();
            check.passed = true;
            check.detail = "checksum ok; no self-test vector in the manifest".into();
        }
        Ok((backend, Some(result))) => {
            check.backend = backend.into();
            check.max_abs_error = Some(result.max_abs_error);
            check.min_cosine = Some(result.min_cosine);
            check.rows = result.rows;
            let (err, cos) = (result.max_abs_error, result.min_cosine);
            let half = backend.ends_with("-f16");
            (check.passed, check.detail) = match precision {
                Precision::F32 if half && cos >= F16_MIN_COSINE => (true, format!("ok (f16 weights: cosine {cos:.5})")),
                Precision::F32 if half => (
                    false,
                    format!("f16 weights: cosine {cos:.5} to the f32 output is below {F16_MIN_COSINE}"),
                ),
                Precision::F32 if err <= tolerance => (true, "ok".into()),
                Precision::F32 => (
                    false,
                    format!("max-abs error {err:.3e} exceeds the tolerance {tolerance:.1e}"),
                ),
                Precision::Int8 if cos >= INT8_MIN_COSINE => (true, format!("ok (int8: cosine {cos:.4} to f32)")),
                Precision::Int8 => (
                    false,
                    format!("int8: cosine {cos:.4} to the f32 output is below {INT8_MIN_COSINE}"),
                ),
            };
        }
        Err(e) => check.detail = e.to_string(),
    }
    check
}

/// How a self-test output compares with the stored one.
struct Compared {
    max_abs_error: f32,
    min_cosine: f32,
    rows: usize,
}

/// The backend that ran a self-test, and the comparison when the manifest has a self-test pair.
type SelfTest = (&'static str, Option<Compared>);

/// Runs the self-test: the backend that ran it, and the comparison, or `None` when the manifest has no self-test
/// pair.
fn run_selftest(dir: &ModelDir, modality: Modality, options: &EngineOptions) -> Result<SelfTest, EncodeError> {
    let encoder = engine::load(ModelSource::Dir(dir), modality, options)?;
    let backend = encoder.backend();
    let tower = dir.tower(modality)?;
    let (Some(input), Some(output)) = (&tower.selftest_input, &tower.selftest_output) else {
        return Ok((backend, None));
    };
    let read = |rel: &str| {
        npy::read(&dir.path(rel)).map_err(|e| EncodeError::Manifest {
            path: dir.path(rel),
            reason: e.to_string(),
        })
    };
    let input = read(input)?;
    let expected = read(output)?;
    let got = embed(encoder.as_ref(), &input, 16)?;
    if got.shape() != expected.shape() {
        return Err(EncodeError::Run {
            model: encoder_id(dir, modality),
            reason: format!(
                "the self-test output has shape {:?}, PyTorch's has {:?}",
                got.shape(),
                expected.shape()
            ),
        });
    }
    let (got_v, expected_v) = (got.as_f32().unwrap_or_default(), expected.as_f32().unwrap_or_default());
    let rows = got.shape()[0];
    let dim = got_v.len() / rows.max(1);
    let min_cosine = got_v
        .chunks(dim.max(1))
        .zip(expected_v.chunks(dim.max(1)))
        .map(|(a, b)| cosine(a, b))
        .fold(f32::INFINITY, f32::min);
    let compared = Compared {
        max_abs_error: max_abs_diff(got_v, expected_v),
        min_cosine: if min_cosine.is_finite() { min_cosine } else { 0.0 },
        rows,
    };
    Ok((backend, Some(compared)))
}

/// Cosine similarity (0 for a zero or non-finite vector).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let na: f64 = a.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    let c = dot / (na * nb);
    if c.is_finite() { c as f32 } else { 0.0 }
}

fn encoder_id(dir: &ModelDir, modality: Modality) -> String {
    dir.model_id(modality).unwrap_or_else(|_| modality.to_string())
}

/// Largest absolute element-wise difference (NaN counts as infinitely different).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() { f32::INFINITY } else { d }
        })
        .fold(0.0, f32::max)
}
