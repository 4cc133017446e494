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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{EncodeError, Encoder, ModelDir, TractEncoder, TractOptions};
use crate::modality::Modality;

/// Inference backends.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// ONNX Runtime when its library loads, else tract (logged once).
    #[default]
    Auto,
    /// Pure-Rust CPU inference (always available).
    Tract,
    /// ONNX Runtime loaded at run time: CPU, CUDA or TensorRT execution providers.
    Onnxruntime,
}

impl Backend {
    /// The name used in configuration, logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tract => "tract",
            Self::Onnxruntime => "onnxruntime",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[models.onnxruntime]`: where the ONNX Runtime library is and how sessions run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxRuntimeConfig {
    /// The ONNX Runtime shared library (e.g. `libonnxruntime.so.1.32.0`, also found inside the `onnxruntime` and
    /// `onnxruntime-gpu` Python wheels under `onnxruntime/capi/`). Default: `$ORT_DYLIB_PATH`, else
    /// `libonnxruntime.so` on the dynamic loader's search path. Relative to the configuration file.
    pub library: Option<PathBuf>,
    /// Execution providers in order of preference. One that this ONNX Runtime build lacks, or that fails to start
    /// (no GPU, missing CUDA libraries), is skipped with a warning; ONNX Runtime's CPU provider always remains as
    /// the last resort.
    pub execution_providers: Vec<ExecutionProviderConfig>,
    /// Let ONNX Runtime's worker threads spin while waiting for work: slightly lower latency with `threads` > 1,
    /// but the threads burn CPU between windows (ONNX Runtime's own default is on; ours is off for edge devices).
    pub intra_op_spinning: bool,
}

impl Default for OnnxRuntimeConfig {
    fn default() -> Self {
        Self {
            library: None,
            execution_providers: vec![ExecutionProviderConfig::Cpu {}],
            intra_op_spinning: false,
        }
    }
}

/// One ONNX Runtime execution provider and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecutionProviderConfig {
    /// NVIDIA TensorRT (needs `onnxruntime-gpu` built with TensorRT, e.g. on JetPack).
    Tensorrt {
        /// CUDA device index.
        #[serde(default)]
        device_id: u32,
        /// Build fp16 engines (about twice as fast on Jetson; embeddings move by about 1e-3).
        #[serde(default)]
        fp16: bool,
        /// Keep built engines in `<runtime.state_dir>/tensorrt/` so later starts skip the minutes-long build.
        #[serde(default = "yes")]
        engine_cache: bool,
        /// Further provider options, passed through verbatim (ONNX Runtime's `trt_*` keys).
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    /// NVIDIA CUDA (needs `onnxruntime-gpu`).
    Cuda {
        /// CUDA device index.
        #[serde(default)]
        device_id: u32,
        /// Further provider options, passed through verbatim (e.g. `gpu_mem_limit`).
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
    /// ONNX Runtime's CPU kernels.
    Cpu {},
}

fn yes() -> bool {
    true
}

impl ExecutionProviderConfig {
    /// The provider's name in configuration and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tensorrt { .. } => "tensorrt",
            Self::Cuda { .. } => "cuda",
            Self::Cpu {} => "cpu",
        }
    }

    /// A provider with default options, by name (`tensorrt`, `cuda`, `cpu`), for command-line flags.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "tensorrt" => Ok(Self::Tensorrt {
                device_id: 0,
                fp16: false,
                engine_cache: true,
                options: BTreeMap::new(),
            }),
            "cuda" => Ok(Self::Cuda {
                device_id: 0,
                options: BTreeMap::new(),
            }),
            "cpu" => Ok(Self::Cpu {}),
            other => Err(format!(
                "unknown execution provider {other:?}; expected tensorrt, cuda or cpu"
            )),
        }
    }
}

/// How to load one tower.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Which backend.
    pub backend: Backend,
    /// Engine threads for one inference.
    pub threads: usize,
    /// Check the ONNX file's sha256 against the manifest before loading.
    pub verify_checksum: bool,
    /// tract only: batch sizes that get a plan of their own ([`TractOptions::batch_plans`]).
    pub batch_plans: Vec<usize>,
    /// ONNX Runtime's library and providers (`library` already resolved to a usable path, if given).
    pub onnxruntime: OnnxRuntimeConfig,
    /// Where TensorRT keeps its engine and timing caches (the daemon: `<runtime.state_dir>/tensorrt`).
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        let tract = TractOptions::default();
        Self {
            backend: Backend::Auto,
            threads: tract.threads,
            verify_checksum: tract.verify_checksum,
            batch_plans: tract.batch_plans,
            onnxruntime: OnnxRuntimeConfig::default(),
            cache_dir: None,
        }
    }
}

impl EngineOptions {
    /// The tract subset of these options.
    pub fn tract(&self) -> TractOptions {
        TractOptions {
            threads: self.threads,
            verify_checksum: self.verify_checksum,
            batch_plans: self.batch_plans.clone(),
        }
    }

    /// The same options with another backend.
    pub fn with_backend(&self, backend: Backend) -> Self {
        Self {
            backend,
            ..self.clone()
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Wrapper {
        onnxruntime: OnnxRuntimeConfig,
    }

    #[test]
    fn providers_parse_with_defaults_and_reject_unknown_keys() {
        let w: Wrapper = toml::from_str(
            r#"
            [onnxruntime]
            execution_providers = [
              { type = "tensorrt", fp16 = true },
              { type = "cuda", device_id = 1, options = { gpu_mem_limit = "2147483648" } },
              { type = "cpu" },
            ]
            "#,
        )
        .unwrap();
        let eps = &w.onnxruntime.execution_providers;
        assert_eq!(
            eps.iter().map(ExecutionProviderConfig::name).collect::<Vec<_>>(),
            ["tensorrt", "cuda", "cpu"]
        );
        assert!(matches!(
            eps[0],
            ExecutionProviderConfig::Tensorrt {
                fp16: true,
                engine_cache: true,
                device_id: 0,
                ..
            }
        ));
        assert!(matches!(&eps[1], ExecutionProviderConfig::Cuda { device_id: 1, options } if options.len() == 1));
        assert!(!w.onnxruntime.intra_op_spinning);
        for bad in [
            r#"execution_providers = [{ type = "cuda", fp16 = true }]"#,
            r#"execution_providers = [{ type = "cpu", threads = 2 }]"#,
            r#"execution_providers = [{ type = "rocm" }]"#,
        ] {
            let err = toml::from_str::<Wrapper>(&format!("[onnxruntime]\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown"), "{bad}: {err}");
        }
    }

    #[test]
    fn provider_names_round_trip() {
        for name in ["tensorrt", "cuda", "cpu"] {
            assert_eq!(ExecutionProviderConfig::from_name(name).unwrap().name(), name);
        }
        assert!(
            ExecutionProviderConfig::from_name("gpu")
                .unwrap_err()
                .contains("tensorrt, cuda or cpu")
        );
    }
}
