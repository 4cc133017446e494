//! Choosing a backend for each tower and loading it: tract, ONNX Runtime, wgpu, or `auto`.
//!
//! | backend | what runs | when it is available |
//! |---|---|---|
//! | `tract` | pure-Rust CPU inference ([`super::tract_cpu`]) | always |
//! | `onnxruntime` | ONNX Runtime, loaded at run time ([`super::onnxruntime`]); CPU, CUDA or TensorRT | built with the `onnxruntime` feature (default) and the library loads |
//! | `wgpu` | compute shaders on a Vulkan adapter ([`super::wgpu`]), CPU adapters such as lavapipe included | built with the `wgpu` feature (default) and an adapter opens |
//! | `auto` | the first that runs, in this order: ONNX Runtime with a configured GPU provider that starts; wgpu on a hardware adapter; ONNX Runtime on its CPU provider; tract | always |
//!
//! `auto` logs each choice once per process with its reason; a backend that cannot run a tower (an op it lacks)
//! passes it to the next with a warning naming the tower. Errors of the model itself (checksum, missing file,
//! missing tower) stop the search. An explicit backend never falls back: a missing library or adapter is an error
//! that says what was looked for.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

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
        Backend::Wgpu => load_wgpu(source, modality, options, false),
        Backend::Auto => load_auto(source, modality, options),
    }
}

/// Errors of the model itself: no other backend would do better.
fn is_model_error(e: &EncodeError) -> bool {
    matches!(
        e,
        EncodeError::Checksum { .. } | EncodeError::MissingFile { .. } | EncodeError::NoTower { .. }
    )
}

fn load_auto(
    source: ModelSource<'_>,
    modality: Modality,
    options: &EngineOptions,
) -> Result<Arc<dyn Encoder>, EncodeError> {
    let ort = onnxruntime_status(&options.onnxruntime);
    // 1. ONNX Runtime with a GPU provider, when one is configured and starts.
    if ort.is_ok()
        && options
            .onnxruntime
            .execution_providers
            .iter()
            .any(|p| p.name() != "cpu")
    {
        match load_onnxruntime_gpu(source, modality, options) {
            Ok(Some((encoder, provider))) => {
                notice(format!(
                    "ONNX Runtime with its {provider} provider (configured, and it started)"
                ));
                return Ok(encoder);
            }
            Ok(None) => notice("not ONNX Runtime's GPU providers: none of those configured started".into()),
            Err(e) if is_model_error(&e) => return Err(e),
            Err(e) => warn_next(modality, "ONNX Runtime", &e),
        }
    }
    // 2. wgpu on a hardware adapter.
    match wgpu_status(options, true) {
        Ok(adapter) => match load_wgpu(source, modality, options, true) {
            Ok(encoder) => {
                notice(format!("wgpu on {adapter} (a hardware adapter)"));
                return Ok(encoder);
            }
            Err(e) if is_model_error(&e) => return Err(e),
            Err(e) => warn_next(modality, "wgpu", &e),
        },
        Err(why) => notice(format!("not wgpu: {why}")),
    }
    // 3. ONNX Runtime on the CPU; 4. tract.
    match ort {
        Ok(library) => match load_onnxruntime(source, modality, options) {
            Ok(encoder) => {
                notice(format!("ONNX Runtime on the CPU (its library loaded from {library})"));
                Ok(encoder)
            }
            Err(e) if is_model_error(&e) => Err(e),
            Err(e) => {
                warn_next(modality, "ONNX Runtime", &e);
                load_tract(source, modality, options)
            }
        },
        Err(why) => {
            notice(format!("tract (ONNX Runtime is not available: {why})"));
            load_tract(source, modality, options)
        }
    }
}

/// Logs an `auto` decision the first time it is made in this process.
fn notice(choice: String) {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    if SEEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(choice.clone())
    {
        tracing::info!("Backend auto: {choice}.");
    }
}

fn warn_next(modality: Modality, backend: &str, e: &EncodeError) {
    tracing::warn!(
        modality = %modality,
        error = %e,
        "Backend auto: {backend} cannot run this tower; trying the next backend."
    );
}

/// The backends that can run here, in reporting order, each with why not when it cannot.
pub fn available_backends(options: &OnnxRuntimeConfig) -> Vec<(Backend, Result<(), String>)> {
    vec![
        (Backend::Tract, Ok(())),
        (Backend::Onnxruntime, onnxruntime_status(options).map(|_| ())),
        (Backend::Wgpu, wgpu_status(&EngineOptions::default(), false).map(|_| ())),
    ]
}

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

/// An encoder and the GPU provider it runs on.
type OnGpu = (Arc<dyn Encoder>, &'static str);

/// ONNX Runtime with the configured providers; `None` when only its CPU provider started.
#[cfg(feature = "onnxruntime")]
fn load_onnxruntime_gpu(
    source: ModelSource<'_>,
    modality: Modality,
    options: &EngineOptions,
) -> Result<Option<OnGpu>, EncodeError> {
    use super::onnxruntime::OrtEncoder;
    let encoder = match source {
        ModelSource::Dir(dir) => OrtEncoder::from_model_dir(dir, modality, options)?,
        ModelSource::Onnx(path) => OrtEncoder::from_onnx(path, modality, options)?,
    };
    Ok(match encoder.providers().iter().find(|p| **p != "cpu") {
        Some(&provider) => Some((Arc::new(encoder), provider)),
        None => None,
    })
}

#[cfg(not(feature = "onnxruntime"))]
fn load_onnxruntime_gpu(
    _source: ModelSource<'_>,
    _modality: Modality,
    _options: &EngineOptions,
) -> Result<Option<OnGpu>, EncodeError> {
    Ok(None)
}

#[cfg(feature = "wgpu")]
fn load_wgpu(
    source: ModelSource<'_>,
    modality: Modality,
    options: &EngineOptions,
    hardware_only: bool,
) -> Result<Arc<dyn Encoder>, EncodeError> {
    use super::wgpu::{WgpuEncoder, WgpuOptions};
    let mut batch_plans = options.batch_plans.clone();
    batch_plans.push(options.max_batch.max(1));
    let wgpu = WgpuOptions {
        hardware_only,
        adapter: options.wgpu_adapter.clone(),
        batch_plans,
        verify_checksum: options.verify_checksum,
        f16_weights: options.wgpu_f16,
    };
    if let ModelSource::Dir(dir) = source
        && dir.tower(modality).is_ok_and(|t| t.precision == Precision::Int8)
    {
        return Err(EncodeError::Backend {
            backend: "wgpu",
            reason: format!("the {modality} tower is int8, which the wgpu kernels do not run (f32 only)"),
        });
    }
    Ok(Arc::new(match source {
        ModelSource::Dir(dir) => WgpuEncoder::from_model_dir(dir, modality, &wgpu)?,
        ModelSource::Onnx(path) => WgpuEncoder::from_onnx(path, modality, &wgpu)?,
    }))
}

#[cfg(not(feature = "wgpu"))]
fn load_wgpu(
    _source: ModelSource<'_>,
    _modality: Modality,
    _options: &EngineOptions,
    _hardware_only: bool,
) -> Result<Arc<dyn Encoder>, EncodeError> {
    Err(EncodeError::Backend {
        backend: "wgpu",
        reason: "this sensebind was built without the `wgpu` feature".into(),
    })
}

/// The adapter wgpu would run on, or why there is none. For hardware only, a Linux machine without GPU device
/// nodes is answered without starting the Vulkan loader.
#[cfg(feature = "wgpu")]
fn wgpu_status(options: &EngineOptions, hardware_only: bool) -> Result<String, String> {
    if hardware_only && cfg!(target_os = "linux") && super::wgpu::gpu_device_nodes(Path::new("/dev")).is_empty() {
        return Err("no GPU device node in /dev (dri/renderD*, nvidia*, nvgpu, nvhost-*)".into());
    }
    super::wgpu::open(hardware_only, options.wgpu_adapter.as_deref()).map(|gpu| gpu.adapter().to_string())
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_status(_options: &EngineOptions, _hardware_only: bool) -> Result<String, String> {
    Err("this sensebind was built without the `wgpu` feature".into())
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
