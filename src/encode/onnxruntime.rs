//! The ONNX Runtime backend: the exported towers on ONNX Runtime's CPU, CUDA or TensorRT execution providers.
//!
//! The library is not linked: it is opened at run time (`dlopen`) from `[models.onnxruntime] library`, else
//! `$ORT_DYLIB_PATH`, else `libonnxruntime.so` on the loader's search path. Any ONNX Runtime from 1.17 on works; the
//! CPU library inside the `onnxruntime` Python wheel is enough, `onnxruntime-gpu` adds CUDA and TensorRT.
//!
//! One library and one ONNX Runtime environment per process (ONNX Runtime's rule): the first successful load wins,
//! and asking for a different library later is an error naming both. A path that failed to load is remembered, so
//! `auto` asks the loader once.
//!
//! Sessions: graph optimisation level 3, `threads` intra-op threads, one inter-op thread, spinning off unless
//! configured. Execution providers are registered in the configured order; one the library lacks or that fails to
//! start is skipped with a warning (the CPU provider always remains). A session runs one call at a time (it is
//! behind a mutex; each modality has one worker thread, so there is no contention in the daemon).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ort::environment::Environment;
use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::options::{EngineOptions, ExecutionProviderConfig, OnnxRuntimeConfig};
use super::{EncodeError, Encoder, EncoderInfo, ModelDir, check_batch};
use crate::modality::Modality;
use crate::tensor::{DType, Tensor, TensorData};
use crate::util::panic_message;

/// The library name the dynamic loader searches for when neither the configuration nor `ORT_DYLIB_PATH` names one.
pub const DEFAULT_LIBRARY: &str = "libonnxruntime.so";

/// The loaded ONNX Runtime: its library and the process's environment.
#[derive(Debug, Clone)]
pub struct OrtEnvironment {
    /// The library it was loaded from (as configured).
    pub library: PathBuf,
    /// ONNX Runtime's build description (`ORT Build Info: git-branch=rel-1.32.0, ...`).
    pub build_info: String,
    env: Environment,
}

struct State {
    loaded: Option<OrtEnvironment>,
    failures: Vec<(PathBuf, String)>,
}

static STATE: Mutex<State> = Mutex::new(State {
    loaded: None,
    failures: Vec::new(),
});

/// The library `options` name: the configured one, else `$ORT_DYLIB_PATH`, else [`DEFAULT_LIBRARY`].
pub fn library_path(options: &OnnxRuntimeConfig) -> PathBuf {
    options
        .library
        .clone()
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LIBRARY))
}

/// Loads the ONNX Runtime library `options` name (once per process) and returns the environment, or why not.
pub fn environment(options: &OnnxRuntimeConfig) -> Result<OrtEnvironment, String> {
    let library = library_path(options);
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(env) = &state.loaded {
        if env.library == library {
            return Ok(env.clone());
        }
        return Err(format!(
            "ONNX Runtime is already loaded from {} in this process, and a process can load only one ONNX Runtime \
             library (asked for {})",
            env.library.display(),
            library.display()
        ));
    }
    if let Some((_, why)) = state.failures.iter().find(|(p, _)| *p == library) {
        return Err(why.clone());
    }
    match load_library(&library) {
        Ok(env) => {
            tracing::info!(library = %library.display(), build = %env.build_info, "Loaded ONNX Runtime.");
            state.loaded = Some(env.clone());
            Ok(env)
        }
        Err(why) => {
            state.failures.push((library, why.clone()));
            Err(why)
        }
    }
}

fn load_library(library: &Path) -> Result<OrtEnvironment, String> {
    let hint = "set [models.onnxruntime] library or ORT_DYLIB_PATH to libonnxruntime.so.1.x (the `onnxruntime` \
                Python wheel has one under onnxruntime/capi/)";
    let named_by_path = library.components().count() > 1;
    if named_by_path && !library.exists() {
        return Err(format!(
            "the ONNX Runtime library {} does not exist; {hint}",
            library.display()
        ));
    }
    let loaded = catch_unwind(AssertUnwindSafe(|| -> Result<(Environment, String), String> {
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        let env = builder
            .with_name("sensebind")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())?;
        Ok((env, ort::info().trim().to_owned()))
    }));
    match loaded {
        Ok(Ok((env, build_info))) => Ok(OrtEnvironment {
            library: library.to_path_buf(),
            build_info,
            env,
        }),
        Ok(Err(e)) if !named_by_path => Err(format!(
            "cannot load ONNX Runtime: {} is not on the dynamic loader's search path (LD_LIBRARY_PATH, ld.so.conf) \
             or does not load ({e}); {hint}",
            library.display()
        )),
        Ok(Err(e)) => Err(format!(
            "cannot load ONNX Runtime from {}: {e}; {hint}",
            library.display()
        )),
        Err(panic) => Err(format!(
            "cannot load ONNX Runtime from {}: {}; {hint}",
            library.display(),
            panic_message(&panic)
        )),
    }
}

/// An ImageBind tower running on ONNX Runtime.
pub struct OrtEncoder {
    info: EncoderInfo,
    session: Mutex<Session>,
    /// Execution providers that registered, in order (the CPU provider is always implied last).
    providers: Vec<&'static str>,
}

impl std::fmt::Debug for OrtEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEncoder")
            .field("info", &self.info)
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl OrtEncoder {
    /// Loads a modality's tower from a model directory, verifying its checksum (unless disabled) and checking the
    /// graph against the manifest.
    pub fn from_model_dir(dir: &ModelDir, modality: Modality, options: &EngineOptions) -> Result<Self, EncodeError> {
        let (path, model_id) = super::tower_file(dir, modality, options.verify_checksum)?;
        let encoder = Self::load(&path, modality, model_id, options)?;
        super::check_against_manifest(dir, &encoder.info)?;
        Ok(encoder)
    }

    /// Loads a bare ONNX file (no manifest): the input and output are read from the graph.
    pub fn from_onnx(path: &Path, modality: Modality, options: &EngineOptions) -> Result<Self, EncodeError> {
        let model_id = super::bare_model_id(path)?;
        Self::load(path, modality, model_id, options)
    }

    /// The execution providers that registered for this session, in order of preference.
    pub fn providers(&self) -> &[&'static str] {
        &self.providers
    }

    fn load(path: &Path, modality: Modality, model_id: String, options: &EngineOptions) -> Result<Self, EncodeError> {
        let env = environment(&options.onnxruntime).map_err(|reason| EncodeError::Backend {
            backend: "onnxruntime",
            reason,
        })?;
        let load_err = |reason: String| EncodeError::Load {
            modality,
            path: path.to_path_buf(),
            reason,
        };
        let threads = options.threads.max(1);
        let built = catch_unwind(AssertUnwindSafe(|| -> Result<(Session, Vec<&'static str>), String> {
            let mut builder = Session::builder(&env.env)
                .map_err(|e| e.to_string())?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| e.to_string())?
                .with_intra_threads(threads)
                .map_err(|e| e.to_string())?
                .with_inter_threads(1)
                .map_err(|e| e.to_string())?
                .with_intra_op_spinning(options.onnxruntime.intra_op_spinning)
                .map_err(|e| e.to_string())?;
            let providers = register_providers(&mut builder, modality, options);
            let session = builder.commit_from_file(path).map_err(|e| e.to_string())?;
            Ok((session, providers))
        }));
        let (session, providers) = built
            .map_err(|panic| load_err(format!("ONNX Runtime panicked: {}", panic_message(&panic))))?
            .map_err(load_err)?;
        let spec = graph_spec(&session).map_err(load_err)?;
        tracing::debug!(
            modality = %modality,
            model = %model_id,
            input = ?spec.input_shape,
            output_dim = spec.output_dim,
            threads,
            providers = ?providers,
            "Loaded ONNX Runtime encoder."
        );
        Ok(Self {
            info: EncoderInfo {
                modality,
                model_id,
                input_shape: spec.input_shape,
                input_dtype: spec.input_dtype,
                output_dim: spec.output_dim,
                fixed_batch: spec.fixed_batch,
                path: path.to_path_buf(),
            },
            session: Mutex::new(session),
            providers,
        })
    }

    fn run_once(&self, batch: &Tensor) -> Result<Tensor, EncodeError> {
        let run_err = |reason: String| EncodeError::Run {
            model: self.info.model_id.clone(),
            reason,
        };
        let rows = batch.shape()[0];
        let dim = self.info.output_dim;
        let shape: Vec<i64> = batch.shape().iter().map(|&d| d as i64).collect();
        // A panic inside a previous call leaves nothing half-done in the session that a later call relies on.
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let ran = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<f32>, String> {
            let outputs = match batch.data() {
                TensorData::F32(v) => {
                    let input = TensorRef::from_array_view((shape, v.as_slice())).map_err(|e| e.to_string())?;
                    session.run(ort::inputs![input]).map_err(|e| e.to_string())?
                }
                TensorData::I64(v) => {
                    let input = TensorRef::from_array_view((shape, v.as_slice())).map_err(|e| e.to_string())?;
                    session.run(ort::inputs![input]).map_err(|e| e.to_string())?
                }
            };
            if outputs.len() == 0 {
                return Err("the model returned no output".into());
            }
            let (out_shape, values) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("the output is not an f32 tensor: {e}"))?;
            if **out_shape != [rows as i64, dim as i64] {
                return Err(format!("the output has shape {out_shape:?}, expected [{rows}, {dim}]"));
            }
            Ok(values.to_vec())
        }));
        let values = ran
            .map_err(|panic| run_err(format!("ONNX Runtime panicked: {}", panic_message(&panic))))?
            .map_err(run_err)?;
        super::finite_output(&self.info, rows, values)
    }
}

impl Encoder for OrtEncoder {
    fn info(&self) -> &EncoderInfo {
        &self.info
    }

    fn encode(&self, batch: &Tensor) -> Result<Tensor, EncodeError> {
        check_batch(&self.info, batch)?;
        match self.info.fixed_batch {
            Some(n) if batch.shape()[0] != n => super::encode_fixed(&self.info, batch, n, |chunk| self.run_once(chunk)),
            _ => self.run_once(batch),
        }
    }

    fn backend(&self) -> &'static str {
        "onnxruntime"
    }
}

/// Registers the configured execution providers in order; returns the names of those that registered.
fn register_providers(builder: &mut SessionBuilder, modality: Modality, options: &EngineOptions) -> Vec<&'static str> {
    let mut registered = Vec::new();
    for config in &options.onnxruntime.execution_providers {
        let name = config.name();
        let (available, dispatch) = match config {
            ExecutionProviderConfig::Tensorrt {
                device_id,
                fp16,
                engine_cache,
                options: extra,
            } => {
                let mut trt = ep::TensorRT::default()
                    .with_device_id(*device_id as i32)
                    .with_fp16(*fp16);
                if *engine_cache {
                    match tensorrt_cache_dir(options.cache_dir.as_deref()) {
                        Ok(dir) => {
                            let dir = dir.display().to_string();
                            trt = trt
                                .with_engine_cache(true)
                                .with_engine_cache_path(&dir)
                                .with_timing_cache(true)
                                .with_timing_cache_path(&dir);
                        }
                        Err(why) => tracing::warn!(
                            modality = %modality,
                            reason = %why,
                            "TensorRT engines will not be cached: every start rebuilds them."
                        ),
                    }
                }
                for (k, v) in extra {
                    trt = trt.with_arbitrary_config(k, v);
                }
                (ep::TensorRT::is_available(), trt.build())
            }
            ExecutionProviderConfig::Cuda {
                device_id,
                options: extra,
            } => {
                let mut cuda = ep::CUDA::default().with_device_id(*device_id as i32);
                for (k, v) in extra {
                    cuda = cuda.with_arbitrary_config(k, v);
                }
                (ep::CUDA::is_available(), cuda.build())
            }
            ExecutionProviderConfig::Cpu {} => (ep::CPU::is_available(), ep::CPU::default().build()),
        };
        match available {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    modality = %modality,
                    provider = name,
                    "This ONNX Runtime build has no {name} execution provider; skipping it."
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(modality = %modality, provider = name, error = %e, "Cannot list ONNX Runtime's providers; skipping {name}.");
                continue;
            }
        }
        match dispatch.register(builder) {
            Ok(()) => registered.push(name),
            Err(e) => tracing::warn!(
                modality = %modality,
                provider = name,
                error = %e,
                "The {name} execution provider failed to start; skipping it."
            ),
        }
    }
    if !registered.iter().any(|&p| p != "cpu")
        && options
            .onnxruntime
            .execution_providers
            .iter()
            .any(|p| p.name() != "cpu")
    {
        tracing::warn!(modality = %modality, "No GPU execution provider started; this tower runs on ONNX Runtime's CPU provider.");
    }
    registered
}

/// `<cache_dir>`, created if needed.
fn tensorrt_cache_dir(cache_dir: Option<&Path>) -> Result<PathBuf, String> {
    let dir = cache_dir.ok_or_else(|| "no state directory to keep them in".to_owned())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir.to_path_buf())
}

struct GraphSpec {
    input_shape: Vec<usize>,
    input_dtype: DType,
    output_dim: usize,
    fixed_batch: Option<usize>,
}

/// The tower's input and output as the session sees them.
fn graph_spec(session: &Session) -> Result<GraphSpec, String> {
    let inputs = session.inputs();
    if inputs.len() != 1 {
        return Err(format!(
            "the graph has {} inputs; an ImageBind tower has exactly one",
            inputs.len()
        ));
    }
    let ValueType::Tensor { ty, shape, .. } = inputs[0].dtype() else {
        return Err(format!("the graph input {} is not a tensor", inputs[0].name()));
    };
    let input_dtype = match ty {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Int64 => DType::I64,
        other => {
            return Err(format!(
                "the graph input is {other:?}; sensebind feeds f32 or i64 tensors"
            ));
        }
    };
    if shape.len() < 2 {
        return Err(format!(
            "the graph input has rank {}, expected a batch dimension and more",
            shape.len()
        ));
    }
    let fixed_batch = usize::try_from(shape[0]).ok().filter(|&b| b > 0);
    let input_shape = shape[1..]
        .iter()
        .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("the graph input {shape:?} has a symbolic dimension after the batch"))?;
    let outputs = session.outputs();
    let Some(output) = outputs.first() else {
        return Err("the graph has no outputs".into());
    };
    let ValueType::Tensor { ty, shape, .. } = output.dtype() else {
        return Err(format!("the graph output {} is not a tensor", output.name()));
    };
    if *ty != TensorElementType::Float32 {
        return Err(format!("the graph output is {ty:?}, expected f32"));
    }
    if shape.len() != 2 {
        return Err(format!("the graph output {shape:?} is not [batch, dim]"));
    }
    let output_dim = usize::try_from(shape[1])
        .ok()
        .filter(|&d| d > 0)
        .ok_or_else(|| format!("the graph output {shape:?} has a symbolic dimension"))?;
    Ok(GraphSpec {
        input_shape,
        input_dtype,
        output_dim,
        fixed_batch,
    })
}
