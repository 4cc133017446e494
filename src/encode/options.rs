//! How towers are loaded: the `[models]` section (backend, threads, batching, ONNX Runtime, per-tower
//! overrides) and the [`EngineOptions`] that `engine::load` takes, with the section's value checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::TractOptions;
use crate::issues::Scope;
use crate::modality::Modality;

/// Inference backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The first that runs here, in this order: ONNX Runtime with a configured GPU provider that starts, wgpu on a
    /// hardware adapter, ONNX Runtime on the CPU, tract (the choice is logged once with its reason).
    #[default]
    Auto,
    /// Pure-Rust CPU inference (always available).
    Tract,
    /// ONNX Runtime loaded at run time: CPU, CUDA or TensorRT execution providers.
    Onnxruntime,
    /// Compute shaders on a wgpu (Vulkan) adapter: the best there is, a CPU implementation such as lavapipe
    /// included (built with the `wgpu` feature, default).
    Wgpu,
}

impl Backend {
    /// The name used in configuration, logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tract => "tract",
            Self::Onnxruntime => "onnxruntime",
            Self::Wgpu => "wgpu",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "tract" => Ok(Self::Tract),
            "onnxruntime" => Ok(Self::Onnxruntime),
            "wgpu" => Ok(Self::Wgpu),
            other => Err(format!(
                "unknown backend {other:?}; expected auto, tract, onnxruntime or wgpu"
            )),
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

    /// A provider with default options, by name (`tensorrt`, `tensorrt-fp16`, `cuda`, `cpu`), for command-line
    /// flags.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "tensorrt" | "tensorrt-fp16" => Ok(Self::Tensorrt {
                device_id: 0,
                fp16: name == "tensorrt-fp16",
                engine_cache: true,
                options: BTreeMap::new(),
            }),
            "cuda" => Ok(Self::Cuda {
                device_id: 0,
                options: BTreeMap::new(),
            }),
            "cpu" => Ok(Self::Cpu {}),
            other => Err(format!(
                "unknown execution provider {other:?}; expected tensorrt, tensorrt-fp16, cuda or cpu"
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
    /// Most rows per encoder call: wgpu builds a plan for this batch size besides `batch_plans`.
    pub max_batch: usize,
    /// The wgpu adapter to use (part of its name), if not the best one.
    pub wgpu_adapter: Option<String>,
    /// wgpu: linear-layer weights in f16 where the adapter has `shader-f16`.
    pub wgpu_f16: bool,
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
            max_batch: 4,
            wgpu_adapter: None,
            wgpu_f16: false,
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

/// `[models]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Model directory (manifest.toml + one ONNX file per modality). Relative to the configuration file.
    pub dir: PathBuf,
    /// Inference backend for every tower: `auto` (in order: ONNX Runtime with a GPU provider that starts, wgpu on a
    /// hardware adapter, ONNX Runtime on the CPU, tract), `tract`, `onnxruntime` or `wgpu`.
    /// `[models.towers.<modality>]` overrides it per tower.
    pub backend: Backend,
    /// Engine threads per encoder.
    pub threads: usize,
    /// Most windows per encoder call (windows of the same modality from different sources are batched).
    pub max_batch: usize,
    /// How long an encoder waits for more windows before running a partial batch, in milliseconds.
    pub max_wait_ms: u64,
    /// Windows queued per encoder; when full the oldest is dropped and counted.
    pub queue_windows: usize,
    /// Check every ONNX file's sha256 against the manifest at start-up.
    pub verify_checksums: bool,
    /// tract: batch sizes that get a plan optimised for that size (faster, one more copy of the weights each).
    /// wgpu: the batch sizes it builds plans for, with `max_batch` (weights shared, activations per plan).
    pub batch_plans: Vec<usize>,
    /// The ONNX Runtime library and its execution providers.
    pub onnxruntime: OnnxRuntimeConfig,
    /// The wgpu backend's adapter.
    pub wgpu: WgpuConfig,
    /// Per-tower overrides of `backend` and `threads`.
    pub towers: TowersConfig,
}

/// `[models.wgpu]`: which adapter the wgpu backend uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WgpuConfig {
    /// Part of the adapter's name (case-insensitive; `sensebind devices` lists them). Unset: the best adapter —
    /// discrete, integrated, virtual, then (for `backend = "wgpu"` only) a CPU implementation such as lavapipe.
    pub adapter: Option<String>,
    /// Store the linear layers' weights as f16 on adapters with `shader-f16` (half their memory; arithmetic stays
    /// f32; embeddings move by about 1e-3, docs/gpu.md). Without `shader-f16` the weights stay f32, with a warning.
    pub f16: bool,
}

/// `[models.towers]`: one optional table per modality.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TowersConfig {
    /// The vision tower (images and video).
    pub vision: Option<TowerConfig>,
    /// The text tower (prompts).
    pub text: Option<TowerConfig>,
    /// The audio tower.
    pub audio: Option<TowerConfig>,
    /// The depth tower.
    pub depth: Option<TowerConfig>,
    /// The thermal tower.
    pub thermal: Option<TowerConfig>,
    /// The IMU tower.
    pub imu: Option<TowerConfig>,
}

impl TowersConfig {
    /// The override for one modality, if any.
    pub fn get(&self, modality: Modality) -> Option<&TowerConfig> {
        match modality {
            Modality::Vision => self.vision.as_ref(),
            Modality::Text => self.text.as_ref(),
            Modality::Audio => self.audio.as_ref(),
            Modality::Depth => self.depth.as_ref(),
            Modality::Thermal => self.thermal.as_ref(),
            Modality::Imu => self.imu.as_ref(),
        }
    }
}

/// `[models.towers.<modality>]`: how one tower runs, overriding `[models]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TowerConfig {
    /// This tower's backend.
    pub backend: Option<Backend>,
    /// This tower's engine threads.
    pub threads: Option<usize>,
}

impl ModelsConfig {
    /// How `modality`'s tower is loaded: `[models]` with the tower's overrides. `config_dir` resolves a relative
    /// ONNX Runtime library path; `state_dir` holds the TensorRT engine cache.
    pub fn engine_options(&self, modality: Modality, config_dir: &Path, state_dir: &Path) -> EngineOptions {
        let tower = self.towers.get(modality);
        let mut onnxruntime = self.onnxruntime.clone();
        onnxruntime.library = onnxruntime.library.map(|p| resolve_library(config_dir, &p));
        EngineOptions {
            backend: tower.and_then(|t| t.backend).unwrap_or(self.backend),
            threads: tower.and_then(|t| t.threads).unwrap_or(self.threads),
            verify_checksum: self.verify_checksums,
            batch_plans: self.batch_plans.clone(),
            onnxruntime,
            cache_dir: Some(state_dir.join("tensorrt")),
            max_batch: self.max_batch,
            wgpu_adapter: self.wgpu.adapter.clone(),
            wgpu_f16: self.wgpu.f16,
        }
    }
}

/// A library path from the configuration: relative paths with a folder part are relative to the configuration
/// file; a bare file name (`libonnxruntime.so.1`) is left to the dynamic loader's search path.
pub fn resolve_library(config_dir: &Path, library: &Path) -> PathBuf {
    if library.is_absolute() || library.components().count() == 1 {
        library.to_path_buf()
    } else {
        config_dir.join(library)
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models/imagebind-tiny"),
            backend: Backend::Auto,
            threads: 1,
            max_batch: 4,
            max_wait_ms: 20,
            queue_windows: 8,
            verify_checksums: true,
            batch_plans: vec![1],
            onnxruntime: OnnxRuntimeConfig::default(),
            wgpu: WgpuConfig::default(),
            towers: TowersConfig::default(),
        }
    }
}

impl ModelsConfig {
    /// Value checks of `[models]` (files are checked by the configuration's environment checks).
    pub fn validate(&self, issues: &mut Scope<'_>) {
        if self.threads == 0 || self.threads > 256 {
            issues.push("threads", format!("must be between 1 and 256, got {}", self.threads));
        }
        for modality in Modality::ALL {
            let Some(tower) = self.towers.get(modality) else {
                continue;
            };
            if let Some(t) = tower.threads.filter(|&t| t == 0 || t > 256) {
                issues.push(
                    &format!("towers.{modality}.threads"),
                    format!("must be between 1 and 256, got {t}"),
                );
            }
        }
        let uses_ort = self.backend == Backend::Onnxruntime
            || Modality::ALL
                .iter()
                .any(|&x| self.towers.get(x).and_then(|t| t.backend) == Some(Backend::Onnxruntime));
        if uses_ort && !cfg!(feature = "onnxruntime") {
            issues.push(
                "backend",
                "onnxruntime: this sensebind was built without the `onnxruntime` feature (use auto or tract)",
            );
        }
        if self.onnxruntime.execution_providers.is_empty() {
            issues.push(
                "onnxruntime.execution_providers",
                "must list at least one provider, e.g. [{ type = \"cpu\" }]",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, ep) in self.onnxruntime.execution_providers.iter().enumerate() {
            if !seen.insert(ep.name()) {
                issues.push(
                    &format!("onnxruntime.execution_providers[{i}]"),
                    format!("{} is listed twice", ep.name()),
                );
            }
        }
        if self.max_batch == 0 || self.max_batch > 256 {
            issues.push(
                "max_batch",
                format!("must be between 1 and 256, got {}", self.max_batch),
            );
        }
        if self.queue_windows == 0 {
            issues.push("queue_windows", "must be at least 1");
        }
        if self.max_wait_ms > 10_000 {
            issues.push(
                "max_wait_ms",
                format!("must be at most 10000, got {}", self.max_wait_ms),
            );
        }
    }
}

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
        assert!(matches!(
            ExecutionProviderConfig::from_name("tensorrt-fp16"),
            Ok(ExecutionProviderConfig::Tensorrt { fp16: true, .. })
        ));
        assert!(
            ExecutionProviderConfig::from_name("gpu")
                .unwrap_err()
                .contains("tensorrt, tensorrt-fp16, cuda or cpu")
        );
    }
}
