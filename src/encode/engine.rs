//! Choosing a backend for each tower and loading it: tract, ONNX Runtime, or `auto`.
//!
//! | backend | what runs | when it is available |
//! |---|---|---|
//! | `tract` | pure-Rust CPU inference ([`super::tract_cpu`]) | always |
//! | `onnxruntime` | ONNX Runtime, loaded at run time ([`super::onnxruntime`]); CPU, CUDA or TensorRT | built with the `onnxruntime` feature (default) and the library loads |
//! | `auto` | ONNX Runtime when its library loads and takes the tower, else tract | always |
//!
//! `auto` logs once per process what it chose and why; a tower ONNX Runtime rejects falls back to tract with a
//! warning naming the tower. An explicit `onnxruntime` never falls back: a missing library is an error that says
//! where it looked.

use std::path::Path;
use std::sync::{Arc, Once};

use super::options::{Backend, EngineOptions, OnnxRuntimeConfig};
use super::{EncodeError, Encoder, ModelDir, Precision, TractEncoder};
use crate::modality::Modality;

/// Where a tower comes from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// A model directory's tower (checksum and graph checked against the manifest).
    Dir(&'a ModelDir),
    /// A bare ONNX file (input and output read from the graph).
    Onnx(&'a Path),
}

/// Loads `modality`'s tower with the backend `options` ask for (resolving `auto`).
pub fn load(
    source: ModelSource<'_>,
    modality: Modality,
    options: &EngineOptions,
) -> Result<Arc<dyn Encoder>, EncodeError> {
    match options.backend {
        Backend::Tract => load_tract(source, modality, options),
        Backend::Onnxruntime => load_onnxruntime(source, modality, options),
        Backend::Auto => match onnxruntime_status(&options.onnxruntime) {
            Ok(library) => {
                AUTO_NOTICE.call_once(|| {
                    tracing::info!(library = %library, "Backend auto: using ONNX Runtime (its library loaded).");
                });
                match load_onnxruntime(source, modality, options) {
                    Ok(encoder) => Ok(encoder),
                    Err(
                        e @ (EncodeError::Checksum { .. }
                        | EncodeError::MissingFile { .. }
                        | EncodeError::NoTower { .. }),
                    ) => Err(e),
                    Err(e) => {
                        tracing::warn!(
                            modality = %modality,
                            error = %e,
                            "Backend auto: ONNX Runtime cannot run this tower; using tract for it."
                        );
                        load_tract(source, modality, options)
                    }
                }
            }
            Err(why) => {
                AUTO_NOTICE.call_once(|| {
                    tracing::info!(reason = %why, "Backend auto: using tract (ONNX Runtime is not available).");
                });
                load_tract(source, modality, options)
            }
        },
    }
}

/// The backends that can run here, in reporting order, each with why not when it cannot.
pub fn available_backends(options: &OnnxRuntimeConfig) -> Vec<(Backend, Result<(), String>)> {
    vec![
        (Backend::Tract, Ok(())),
        (Backend::Onnxruntime, onnxruntime_status(options).map(|_| ())),
    ]
}

static AUTO_NOTICE: Once = Once::new();

fn load_tract(
    source: ModelSource<'_>,
    modality: Modality,
    options: &EngineOptions,
) -> Result<Arc<dyn Encoder>, EncodeError> {
    let tract = options.tract();
    if let ModelSource::Dir(dir) = source
        && dir.tower(modality).is_ok_and(|t| t.precision == Precision::Int8)
    {
        // Measured on the real-size audio tower (docs/BENCHMARKS.md "int8"): ONNX Runtime 4× faster than f32, tract
        // 1.5× slower than f32 — tract has no fast int8 matrix kernels here.
        tracing::warn!(
            modality = %modality,
            model = %dir.manifest().name,
            "This int8 tower runs on tract, which is slower on int8 than on f32 (no fast int8 kernels): use ONNX Runtime (backend = \"onnxruntime\" or \"auto\" with its library) or the f32 tower."
        );
    }
    Ok(Arc::new(match source {
        ModelSource::Dir(dir) => TractEncoder::from_model_dir(dir, modality, &tract)?,
        ModelSource::Onnx(path) => TractEncoder::from_onnx(path, modality, &tract)?,
    }))
}

#[cfg(feature = "onnxruntime")]
fn load_onnxruntime(
    source: ModelSource<'_>,
    modality: Modality,
    options: &EngineOptions,
) -> Result<Arc<dyn Encoder>, EncodeError> {
    use super::onnxruntime::OrtEncoder;
    Ok(Arc::new(match source {
        ModelSource::Dir(dir) => OrtEncoder::from_model_dir(dir, modality, options)?,
        ModelSource::Onnx(path) => OrtEncoder::from_onnx(path, modality, options)?,
    }))
}

#[cfg(not(feature = "onnxruntime"))]
fn load_onnxruntime(
    _source: ModelSource<'_>,
    _modality: Modality,
    _options: &EngineOptions,
) -> Result<Arc<dyn Encoder>, EncodeError> {
    Err(EncodeError::Backend {
        backend: "onnxruntime",
        reason: NOT_BUILT.into(),
    })
}

#[cfg(not(feature = "onnxruntime"))]
const NOT_BUILT: &str = "this sensebind was built without the `onnxruntime` feature";

/// Loads the ONNX Runtime library if needed; the library's path when it is usable, else why not.
#[cfg(feature = "onnxruntime")]
fn onnxruntime_status(options: &OnnxRuntimeConfig) -> Result<String, String> {
    super::onnxruntime::environment(options).map(|env| env.library.display().to_string())
}

#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime_status(_options: &OnnxRuntimeConfig) -> Result<String, String> {
    Err(NOT_BUILT.into())
}

/// Whether this build includes the ONNX Runtime backend.
pub const ONNXRUNTIME_BUILT: bool = cfg!(feature = "onnxruntime");
