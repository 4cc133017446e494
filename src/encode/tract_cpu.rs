//! The tract backend: pure-Rust CPU inference of the exported ONNX towers.
//!
//! Load → check the graph's input/output against the manifest → optimise once → a runnable plan shared by every
//! call. The batch dimension stays symbolic, so one plan serves batches of any size. Each encoder owns its thread
//! pool (`threads`); with one thread it runs on the caller's thread.
//!
//! Robustness: tract reports malformed graphs as errors, but as defence in depth every call into tract is wrapped
//! in `catch_unwind`, so a corrupt or hostile model file becomes an [`EncodeError`], never a crash of the daemon.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoTValue, RunOptions, TDim, Tensor as TractTensor, TypedModel, TypedRunnableModel,
    tvec,
};

use tract_onnx::prelude::tract_data::internal::DimLike;

use super::{EncodeError, Encoder, EncoderInfo, ModelDir, check_batch};
use crate::modality::Modality;
use crate::tensor::{DType, Tensor, TensorData};
use crate::util::panic_message;

/// How to load a tract encoder.
#[derive(Debug, Clone)]
pub struct TractOptions {
    /// Threads for matrix products inside one inference (1 = the calling thread only).
    pub threads: usize,
    /// Check the ONNX file's sha256 against the manifest before loading.
    pub verify_checksum: bool,
    /// Batch sizes that get a plan of their own, optimised with the batch dimension fixed (about 15–20 % faster
    /// on ImageBind towers: tract fuses more once shapes are concrete). Other sizes use the symbolic-batch plan.
    /// Each extra plan holds its own packed copy of the weights.
    pub batch_plans: Vec<usize>,
}

impl Default for TractOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            verify_checksum: true,
            batch_plans: vec![1],
        }
    }
}

/// An ImageBind tower running on tract.
pub struct TractEncoder {
    info: EncoderInfo,
    plan: Arc<TypedRunnableModel>,
    /// Plans optimised for one fixed batch size, by batch size.
    fixed_plans: Vec<(usize, Arc<TypedRunnableModel>)>,
}

impl std::fmt::Debug for TractEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEncoder")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TractEncoder {
    /// Loads a modality's tower from a model directory, verifying its checksum (unless disabled) and checking the
    /// graph against the manifest.
    pub fn from_model_dir(dir: &ModelDir, modality: Modality, options: &TractOptions) -> Result<Self, EncodeError> {
        let (path, model_id) = super::tower_file(dir, modality, options.verify_checksum)?;
        let encoder = Self::load(&path, modality, model_id, options)?;
        super::check_against_manifest(dir, &encoder.info)?;
        Ok(encoder)
    }

    /// Loads a bare ONNX file (no manifest): the input and output are read from the graph.
    pub fn from_onnx(path: &Path, modality: Modality, options: &TractOptions) -> Result<Self, EncodeError> {
        let model_id = super::bare_model_id(path)?;
        Self::load(path, modality, model_id, options)
    }

    fn load(path: &Path, modality: Modality, model_id: String, options: &TractOptions) -> Result<Self, EncodeError> {
        let load_err = |reason: String| EncodeError::Load {
            modality,
            path: path.to_path_buf(),
            reason,
        };
        let threads = options.threads.max(1);
        let prepared = catch_unwind(AssertUnwindSafe(|| prepare(path, threads, &options.batch_plans)))
            .map_err(|panic| load_err(format!("the ONNX loader panicked: {}", panic_message(&panic))))?
            .map_err(|e| load_err(format!("{e:#}")))?;
        let Prepared {
            plan,
            fixed_plans,
            input_shape,
            input_dtype,
            output_dim,
            fixed_batch,
        } = prepared;
        tracing::debug!(
            modality = %modality,
            model = %model_id,
            input = ?input_shape,
            output_dim,
            threads,
            "Loaded tract encoder."
        );
        Ok(Self {
            info: EncoderInfo {
                modality,
                model_id,
                input_shape,
                input_dtype,
                output_dim,
                fixed_batch,
                path: PathBuf::from(path),
            },
            plan,
            fixed_plans,
        })
    }

    fn run_once(&self, batch: &Tensor) -> Result<Tensor, EncodeError> {
        let run_err = |reason: String| EncodeError::Run {
            model: self.info.model_id.clone(),
            reason,
        };
        let rows = batch.shape()[0];
        let input = to_tract(batch).map_err(|e| run_err(format!("{e:#}")))?;
        let plan = self
            .fixed_plans
            .iter()
            .find(|(b, _)| *b == rows)
            .map_or(&self.plan, |(_, p)| p);
        let outputs = catch_unwind(AssertUnwindSafe(|| plan.run(tvec!(input.into_tvalue()))))
            .map_err(|panic| run_err(format!("the engine panicked: {}", panic_message(&panic))))?
            .map_err(|e| run_err(format!("{e:#}")))?;
        let output = outputs
            .first()
            .ok_or_else(|| run_err("the model returned no output".into()))?;
        let view = output.try_as_plain_ram().map_err(|e| run_err(format!("{e:#}")))?;
        let values = view
            .as_slice::<f32>()
            .map_err(|e| run_err(format!("the output is not f32: {e:#}")))?;
        let dim = self.info.output_dim;
        if values.len() != rows * dim {
            return Err(run_err(format!(
                "the output has shape {:?}, expected [{rows}, {dim}]",
                output.shape()
            )));
        }
        super::finite_output(&self.info, rows, values.to_vec())
    }
}

impl Encoder for TractEncoder {
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
        "tract"
    }
}

struct Prepared {
    plan: Arc<TypedRunnableModel>,
    fixed_plans: Vec<(usize, Arc<TypedRunnableModel>)>,
    input_shape: Vec<usize>,
    input_dtype: DType,
    output_dim: usize,
    fixed_batch: Option<usize>,
}

/// A tower parsed by tract, typed, with its input and output checked: what every backend that reuses tract's
/// graph starts from.
pub(crate) struct Parsed {
    /// The typed graph (batch dimension symbolic unless the file fixes it).
    pub typed: TypedModel,
    /// Per-clip input shape.
    pub input_shape: Vec<usize>,
    /// Input element type.
    pub input_dtype: DType,
    /// Embedding dimension.
    pub output_dim: usize,
    /// The batch size the file fixes, if any.
    pub fixed_batch: Option<usize>,
    /// The batch dimension as the graph has it.
    pub batch_dim: TDim,
}

impl Parsed {
    /// The graph for batches of exactly `batch` rows, decluttered.
    #[cfg(feature = "wgpu")]
    pub fn decluttered(&self, batch: usize) -> anyhow::Result<TypedModel> {
        let typed = match &self.batch_dim {
            TDim::Sym(symbol) => {
                let subs = std::iter::once((symbol.clone(), TDim::Val(batch as i64))).collect();
                self.typed.set_symbols(&subs)?
            }
            _ => self.typed.clone(),
        };
        typed.into_decluttered()
    }

    /// The graph for batches of `batch` rows lowered to wgpu kernel launches.
    #[cfg(feature = "wgpu")]
    pub fn lowered(&self, batch: usize, f16_weights: bool) -> anyhow::Result<super::wgpu::plan::Program> {
        super::wgpu::plan::lower(&self.decluttered(batch)?, f16_weights)
    }
}

/// Parses an ONNX tower with tract and checks it has one input (f32 or i64, batch first) and a `[batch, dim]` f32
/// output.
pub(crate) fn parse(path: &Path) -> anyhow::Result<Parsed> {
    let model = tract_onnx::onnx().model_for_path(path)?;
    anyhow::ensure!(
        model.inputs.len() == 1,
        "the graph has {} inputs; an ImageBind tower has exactly one",
        model.inputs.len()
    );
    anyhow::ensure!(!model.outputs.is_empty(), "the graph has no outputs");
    let typed: TypedModel = model.into_typed()?;
    let input_fact = typed.input_fact(0)?.clone();
    let input_dtype = match input_fact.datum_type {
        tract_onnx::prelude::DatumType::F32 => DType::F32,
        tract_onnx::prelude::DatumType::I64 => DType::I64,
        other => anyhow::bail!("the graph input is {other:?}; sensebind feeds f32 or i64 tensors"),
    };
    let dims: Vec<_> = input_fact.shape.iter().collect();
    anyhow::ensure!(
        dims.len() >= 2,
        "the graph input has rank {}, expected a batch dimension and more",
        dims.len()
    );
    let fixed_batch = dims[0].to_usize().ok();
    let batch_dim = dims[0].clone();
    let input_shape = dims[1..]
        .iter()
        .map(|d| d.to_usize())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            anyhow::anyhow!(
                "the graph input {:?} has a symbolic dimension after the batch",
                input_fact.shape
            )
        })?;
    let output_fact = typed.output_fact(0)?.clone();
    let out_dims: Vec<_> = output_fact.shape.iter().collect();
    anyhow::ensure!(
        out_dims.len() == 2,
        "the graph output {:?} is not [batch, dim]",
        output_fact.shape
    );
    anyhow::ensure!(
        output_fact.datum_type == tract_onnx::prelude::DatumType::F32,
        "the graph output is {:?}, expected f32",
        output_fact.datum_type
    );
    let output_dim = out_dims[1]
        .to_usize()
        .map_err(|_| anyhow::anyhow!("the graph output {:?} has a symbolic dimension", output_fact.shape))?;
    Ok(Parsed {
        typed,
        input_shape,
        input_dtype,
        output_dim,
        fixed_batch,
        batch_dim,
    })
}

fn prepare(path: &Path, threads: usize, batch_plans: &[usize]) -> anyhow::Result<Prepared> {
    let Parsed {
        typed,
        input_shape,
        input_dtype,
        output_dim,
        fixed_batch,
        batch_dim,
    } = parse(path)?;
    let options = RunOptions {
        executor: (threads > 1)
            .then(|| tract_linalg::multithread::Executor::multithread_with_name(threads, "sensebind-tract")),
        ..RunOptions::default()
    };
    let mut fixed_plans = Vec::new();
    if let TDim::Sym(symbol) = &batch_dim {
        let mut sizes: Vec<usize> = batch_plans.iter().copied().filter(|&b| b >= 1).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for b in sizes {
            let subs = std::iter::once((symbol.clone(), TDim::Val(b as i64))).collect();
            let fixed = typed.set_symbols(&subs)?.into_optimized()?;
            fixed_plans.push((b, fixed.into_runnable_with_options(&options)?));
        }
    }
    let plan = typed.into_optimized()?.into_runnable_with_options(&options)?;
    Ok(Prepared {
        plan,
        fixed_plans,
        input_shape,
        input_dtype,
        output_dim,
        fixed_batch,
    })
}

fn to_tract(t: &Tensor) -> anyhow::Result<TractTensor> {
    Ok(match t.data() {
        TensorData::F32(v) => TractTensor::from_shape(t.shape(), v)?,
        TensorData::I64(v) => TractTensor::from_shape(t.shape(), v)?,
    })
}
