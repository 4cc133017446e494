//! The wgpu backend: ImageBind towers as compute shaders on Vulkan (Metal, DX12 where wgpu runs there), from the
//! same ONNX files as the CPU backends.
//!
//! tract parses and declutters the graph ([`super::tract_cpu::parse`]); [`plan::lower`] turns it into launches of
//! the kernels in `kernels.wgsl` (strided copy, unary and binary maps, reductions, softmax / RMS norm rows, a tiled
//! batched matrix product, direct convolution, gathers). Each tower gets one plan per batch size it is loaded for
//! (`[models] batch_plans` and `max_batch`): weights are uploaded once and shared by the plans, activation buffers
//! are allocated once per plan and reused between layers (a buffer is recycled after its last reader). A batch of
//! `b` rows runs on the smallest plan of at least `b` rows, padded with copies of its first row; larger batches
//! run in chunks of the largest plan. Every computation is f32.
//!
//! Adapters: `backend = "wgpu"` takes the best adapter there is — discrete, integrated, virtual, other, then a
//! CPU implementation such as lavapipe — or the first whose name contains `[models.wgpu] adapter`. `auto` asks
//! for hardware only ([`open`] with `hardware_only`). One device per process serves every tower.
//!
//! Validation errors of wgpu are caught in error scopes and returned as [`EncodeError`]s; the device's handler for
//! uncaptured errors logs instead of panicking.

pub mod plan;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use wgpu::util::DeviceExt;

use self::plan::{Dt, Kernel, Program, StorageKind};
use super::tract_cpu::{Parsed, parse};
use super::{EncodeError, Encoder, EncoderInfo, ModelDir, check_batch, encode_fixed};
use crate::modality::Modality;
use crate::tensor::{Tensor, TensorData};
use crate::util::panic_message;

/// The adapter a [`Gpu`] runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name.
    pub name: String,
    /// `discrete_gpu`, `integrated_gpu`, `virtual_gpu`, `cpu` or `other`.
    pub device_type: &'static str,
    /// Graphics API.
    pub backend: String,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.device_type, self.backend)
    }
}

/// A device with the kernels compiled.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterSummary,
    layout: wgpu::BindGroupLayout,
    /// By [`Kernel::ALL`] index; `None` for f16 kernels on an adapter without `shader-f16`.
    pipelines: Vec<Option<wgpu::ComputePipeline>>,
    dummy: wgpu::Buffer,
    max_binding: u64,
}

const COMMON: &str = include_str!("common.wgsl");
const MATMUL: &str = include_str!("matmul.wgsl");

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

fn device_type(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete_gpu",
        wgpu::DeviceType::IntegratedGpu => "integrated_gpu",
        wgpu::DeviceType::VirtualGpu => "virtual_gpu",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The GPU device nodes under `dev` (`/dev` on a real system): DRM render nodes, NVIDIA's desktop and Jetson
/// nodes. A Linux machine with none has no hardware Vulkan adapter, so `auto` need not start the Vulkan loader
/// (which initialises every installed driver, lavapipe's LLVM included) to find that out.
pub fn gpu_device_nodes(dev: &Path) -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(dev.join("dri"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("renderD"))
        })
        .collect();
    nodes.extend(
        std::fs::read_dir(dev)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("nvidia") || n == "nvgpu" || n.starts_with("nvhost-") || n == "nvmap"
                })
            }),
    );
    nodes.sort();
    nodes
}

type GpuCache = Mutex<HashMap<(bool, Option<String>), Arc<Gpu>>>;
static GPUS: std::sync::OnceLock<GpuCache> = std::sync::OnceLock::new();

/// The process's device for this choice of adapter (opened on first use): the best adapter, hardware only when
/// `hardware_only`, its name containing `name` (case-insensitive) when given. The error says which adapters
/// there are and why none fits.
pub fn open(hardware_only: bool, name: Option<&str>) -> Result<Arc<Gpu>, String> {
    let key = (hardware_only, name.map(str::to_lowercase));
    let cache = GPUS.get_or_init(Default::default);
    let mut gpus = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(gpu) = gpus.get(&key) {
        return Ok(gpu.clone());
    }
    let gpu = Arc::new(open_new(hardware_only, key.1.as_deref())?);
    tracing::info!(adapter = %gpu.adapter, "wgpu: device opened.");
    gpus.insert(key, gpu.clone());
    Ok(gpu)
}

fn open_new(hardware_only: bool, name: Option<&str>) -> Result<Gpu, String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let seen: Vec<String> = adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({})", i.name, device_type(i.device_type))
        })
        .collect();
    let adapter = adapters
        .into_iter()
        .filter(|a| {
            let info = a.get_info();
            !(hardware_only && info.device_type == wgpu::DeviceType::Cpu)
                && name.is_none_or(|n| info.name.to_lowercase().contains(n))
        })
        .min_by_key(|a| rank(a.get_info().device_type))
        .ok_or_else(|| {
            let want = match (hardware_only, name) {
                (true, Some(n)) => format!("a hardware adapter named like {n:?}"),
                (true, None) => "a hardware adapter (CPU adapters such as lavapipe need backend = \"wgpu\")".into(),
                (false, Some(n)) => format!("an adapter named like {n:?}"),
                (false, None) => "an adapter".into(),
            };
            if seen.is_empty() {
                format!("no Vulkan adapter found, {want} is needed (is a Vulkan driver installed? Mesa's lavapipe: mesa-vulkan-drivers)")
            } else {
                format!("none of the adapters is {want}: {}", seen.join(", "))
            }
        })?;
    let info = adapter.get_info();
    let limits = adapter.limits();
    let f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("sensebind"),
        required_features: if f16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        },
        required_limits: limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| format!("{}: cannot open a device: {e}", info.name))?;
    device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
        tracing::error!(error = %e, "wgpu: uncaptured device error.");
    }));
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let source = [COMMON, include_str!("kernels.wgsl"), MATMUL].concat();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("sensebind kernels"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let module_f16 = f16.then(|| {
        let source = [include_str!("matmul_f16.wgsl"), COMMON, MATMUL].concat();
        device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("sensebind f16-weight kernels"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        })
    });
    let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("sensebind kernels"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(256),
                },
                count: None,
            },
            storage(1, true),
            storage(2, true),
            storage(3, true),
            storage(4, false),
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("sensebind kernels"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipelines = Kernel::ALL
        .iter()
        .map(|k| {
            let module = match k {
                Kernel::MatmulW16 => module_f16.as_ref()?,
                _ => &module,
            };
            Some(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.entry()),
                layout: Some(&pipeline_layout),
                module,
                entry_point: Some(k.entry()),
                compilation_options: Default::default(),
                cache: None,
            }))
        })
        .collect();
    let dummy = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("unused binding"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(format!("{}: the kernels do not compile: {e}", info.name));
    }
    Ok(Gpu {
        device,
        queue,
        adapter: AdapterSummary {
            name: info.name,
            device_type: device_type(info.device_type),
            backend: info.backend.to_str().to_owned(),
        },
        layout,
        pipelines,
        dummy,
        max_binding: limits.max_storage_buffer_binding_size,
    })
}

/// One batch size's buffers and launches.
struct Plan {
    batch: usize,
    input: wgpu::Buffer,
    input_dt: Dt,
    output: wgpu::Buffer,
    output_offset: u64,
    output_bytes: u64,
    readback: wgpu::Buffer,
    launches: Vec<(usize, wgpu::BindGroup, [u32; 3])>,
}

impl Gpu {
    /// The adapter this device runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// Whether shaders may use f16 here (`shader-f16`).
    pub fn shader_f16(&self) -> bool {
        self.pipelines.iter().all(Option::is_some)
    }

    fn buffer(&self, label: &str, words: usize, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer, String> {
        let size = (words.max(1) * 4) as u64;
        if size > self.max_binding {
            return Err(format!(
                "{label} needs {size} bytes, above this adapter's largest storage binding ({} bytes)",
                self.max_binding
            ));
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        }))
    }

    /// Buffers and bind groups for `program`; constants come from (and go to) `consts`.
    fn build(
        &self,
        program: Program,
        batch: usize,
        consts: &mut HashMap<(String, u64), wgpu::Buffer>,
    ) -> Result<Plan, String> {
        let act = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let last_use = program.lifetimes();
        let output_storage = program.output.storage;
        let mut physical: Vec<Option<wgpu::Buffer>> = vec![None; program.storages.len()];
        let mut input = None;
        for (i, s) in program.storages.iter().enumerate() {
            match &s.kind {
                StorageKind::Const { words, key } => {
                    if (words.len() * 4) as u64 > self.max_binding {
                        return Err(format!(
                            "constant {} is above this adapter's largest storage binding",
                            key.0
                        ));
                    }
                    let buf = consts.entry(key.clone()).or_insert_with(|| {
                        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some(&key.0),
                            contents: bytemuck::cast_slice(words),
                            usage: wgpu::BufferUsages::STORAGE,
                        })
                    });
                    physical[i] = Some(buf.clone());
                }
                StorageKind::Input => {
                    let buf = self.buffer(
                        "input",
                        s.words,
                        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    )?;
                    input = Some(buf.clone());
                    physical[i] = Some(buf);
                }
                StorageKind::Activation => {}
            }
        }
        // Activations: a free buffer of the smallest sufficient size, else a new one; a buffer returns to the free
        // list after the last step that reads its storage (launches run in order, wgpu orders their accesses).
        let mut assigned = physical;
        let mut released = vec![false; program.storages.len()];
        let mut free: Vec<(usize, wgpu::Buffer)> = Vec::new();
        for (step_index, step) in program.steps.iter().enumerate() {
            let s = step.output;
            if assigned[s].is_none() {
                let need = program.storages[s].words;
                let best = free
                    .iter()
                    .enumerate()
                    .filter(|(_, (words, _))| *words >= need)
                    .min_by_key(|(_, (words, _))| *words)
                    .map(|(i, _)| i);
                assigned[s] = Some(match best {
                    Some(i) => free.swap_remove(i).1,
                    None => self.buffer(&step.node, need, act)?,
                });
            }
            for &s in step.inputs.iter().flatten().chain(std::iter::once(&step.output)) {
                let activation = matches!(program.storages[s].kind, StorageKind::Activation);
                if activation && !released[s] && last_use[s] == Some(step_index) && s != output_storage {
                    released[s] = true;
                    if let Some(buf) = &assigned[s] {
                        free.push((buf.size() as usize / 4, buf.clone()));
                    }
                }
            }
        }
        let params: Vec<u32> = program.steps.iter().flat_map(|s| s.params).collect();
        let params = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("kernel parameters"),
            contents: bytemuck::cast_slice(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let bound = assigned;
        let mut launches = Vec::with_capacity(program.steps.len());
        for (i, step) in program.steps.iter().enumerate() {
            let buf = |s: Option<usize>| -> &wgpu::Buffer { s.and_then(|s| bound[s].as_ref()).unwrap_or(&self.dummy) };
            let entries = [
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: (i * 256) as u64,
                        size: wgpu::BufferSize::new(256),
                    }),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: buf(step.inputs[0]).as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: buf(step.inputs[1]).as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: buf(step.inputs[2]).as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: buf(Some(step.output)).as_entire_binding(),
                },
            ];
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&step.node),
                layout: &self.layout,
                entries: &entries,
            });
            let pipeline = Kernel::ALL
                .iter()
                .position(|k| *k == step.kernel)
                .filter(|&i| self.pipelines[i].is_some())
                .ok_or_else(|| format!("the {:?} kernel is not available on this adapter", step.kernel))?;
            launches.push((pipeline, group, step.workgroups));
        }
        let output = bound[output_storage]
            .clone()
            .ok_or_else(|| "the graph output is never written".to_owned())?;
        let output_bytes = (program.output.shape.iter().product::<usize>() * 4) as u64;
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: output_bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Plan {
            batch,
            input: input.ok_or_else(|| "the graph has no input".to_owned())?,
            input_dt: program.input.1,
            output,
            output_offset: (program.output.offset * 4) as u64,
            output_bytes,
            readback,
            launches,
        })
    }
}

impl Gpu {
    /// Runs `plan` on `input` (the input's 32-bit words as bytes) and returns the output.
    fn run(&self, plan: &Plan, input: &[u8]) -> Result<Vec<f32>, String> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.queue.write_buffer(&plan.input, 0, input);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("encode") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("encode"),
                timestamp_writes: None,
            });
            for (pipeline, group, [x, y, z]) in &plan.launches {
                let Some(pipeline) = &self.pipelines[*pipeline] else {
                    return Err("a plan uses a kernel this adapter lacks".into());
                };
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(*x, *y, *z);
            }
        }
        encoder.copy_buffer_to_buffer(&plan.output, plan.output_offset, &plan.readback, 0, plan.output_bytes);
        self.queue.submit([encoder.finish()]);
        let slice = plan.readback.slice(..plan.output_bytes);
        // One message: the mapping's result (a full channel cannot happen; a dropped receiver is ignored).
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            tx.send(r).ok();
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("waiting for the device: {e}"))?;
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(format!("the device rejected the launches: {e}"));
        }
        rx.recv()
            .map_err(|_| "the device dropped the read-back".to_owned())?
            .map_err(|e| format!("reading the output back: {e}"))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| format!("reading the output back: {e}"))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        plan.readback.unmap();
        Ok(out)
    }
}

/// An ImageBind tower running on a wgpu device.
pub struct WgpuEncoder {
    info: EncoderInfo,
    gpu: Arc<Gpu>,
    /// Plans by ascending batch size; a plan serves one call at a time.
    plans: Vec<Mutex<Plan>>,
    sizes: Vec<usize>,
    /// Weights stored as f16.
    f16: bool,
}

impl std::fmt::Debug for WgpuEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuEncoder")
            .field("info", &self.info)
            .field("adapter", &self.gpu.adapter)
            .field("batch_plans", &self.sizes)
            .finish_non_exhaustive()
    }
}

/// How to load a wgpu encoder.
#[derive(Debug, Clone)]
pub struct WgpuOptions {
    /// Only hardware adapters (what `auto` asks for).
    pub hardware_only: bool,
    /// Part of the adapter's name to pick (case-insensitive).
    pub adapter: Option<String>,
    /// Batch sizes that get a plan (at least one).
    pub batch_plans: Vec<usize>,
    /// Check the ONNX file's sha256 against the manifest before loading.
    pub verify_checksum: bool,
    /// Store the linear layers' weights as f16 (f32 arithmetic) where the adapter has `shader-f16`.
    pub f16_weights: bool,
}

impl WgpuEncoder {
    /// Loads a modality's tower from a model directory, checking it against the manifest.
    pub fn from_model_dir(dir: &ModelDir, modality: Modality, options: &WgpuOptions) -> Result<Self, EncodeError> {
        let (path, model_id) = super::tower_file(dir, modality, options.verify_checksum)?;
        let encoder = Self::load(&path, modality, model_id, options)?;
        super::check_against_manifest(dir, &encoder.info)?;
        Ok(encoder)
    }

    /// Loads a bare ONNX file.
    pub fn from_onnx(path: &Path, modality: Modality, options: &WgpuOptions) -> Result<Self, EncodeError> {
        let model_id = super::bare_model_id(path)?;
        Self::load(path, modality, model_id, options)
    }

    /// The adapter it runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.gpu.adapter
    }

    fn load(path: &Path, modality: Modality, model_id: String, options: &WgpuOptions) -> Result<Self, EncodeError> {
        let gpu = open(options.hardware_only, options.adapter.as_deref()).map_err(|reason| EncodeError::Backend {
            backend: "wgpu",
            reason,
        })?;
        let load_err = |reason: String| EncodeError::Load {
            modality,
            path: path.to_path_buf(),
            reason,
        };
        let parsed: Parsed = catch_unwind(AssertUnwindSafe(|| parse(path)))
            .map_err(|panic| load_err(format!("the ONNX loader panicked: {}", panic_message(&panic))))?
            .map_err(|e| load_err(format!("{e:#}")))?;
        let mut sizes: Vec<usize> = match parsed.fixed_batch {
            Some(n) => vec![n],
            None => options.batch_plans.iter().copied().filter(|&b| b >= 1).collect(),
        };
        sizes.sort_unstable();
        sizes.dedup();
        if sizes.is_empty() {
            sizes.push(1);
        }
        let f16 = options.f16_weights && gpu.shader_f16();
        if options.f16_weights && !f16 {
            tracing::warn!(adapter = %gpu.adapter, modality = %modality, "This adapter has no shader-f16: the weights stay f32.");
        }
        let mut consts = HashMap::new();
        let mut plans = Vec::with_capacity(sizes.len());
        for &b in &sizes {
            let program = catch_unwind(AssertUnwindSafe(|| parsed.lowered(b, f16)))
                .map_err(|panic| load_err(format!("lowering panicked: {}", panic_message(&panic))))?
                .map_err(|e| load_err(format!("{e:#}")))?;
            let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let plan = gpu.build(program, b, &mut consts).map_err(&load_err);
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(load_err(format!("the device rejected the plan: {e}")));
            }
            plans.push(Mutex::new(plan?));
        }
        tracing::debug!(
            modality = %modality,
            model = %model_id,
            adapter = %gpu.adapter,
            batch_plans = ?sizes,
            "Loaded wgpu encoder."
        );
        Ok(Self {
            info: EncoderInfo {
                modality,
                model_id,
                input_shape: parsed.input_shape,
                input_dtype: parsed.input_dtype,
                output_dim: parsed.output_dim,
                fixed_batch: parsed.fixed_batch,
                path: PathBuf::from(path),
            },
            gpu,
            plans,
            sizes,
            f16,
        })
    }

    fn run_plan(&self, index: usize, batch: &Tensor) -> Result<Tensor, EncodeError> {
        let run_err = |reason: String| EncodeError::Run {
            model: self.info.model_id.clone(),
            reason,
        };
        let plan = self.plans[index].lock().unwrap_or_else(PoisonError::into_inner);
        let rows = batch.shape()[0];
        if rows != plan.batch {
            return Err(run_err(format!("a batch of {rows} on the plan for {}", plan.batch)));
        }
        // f32 goes up as it is; token ids are narrowed to the kernels' i32.
        let ids: Vec<i32>;
        let input: &[u8] = match (batch.data(), plan.input_dt) {
            (TensorData::F32(v), Dt::F32) => bytemuck::cast_slice(v),
            (TensorData::I64(v), Dt::I32) => {
                ids = v
                    .iter()
                    .map(|&x| i32::try_from(x))
                    .collect::<Result<_, _>>()
                    .map_err(|_| run_err("an integer input does not fit in i32".into()))?;
                bytemuck::cast_slice(&ids)
            }
            _ => return Err(run_err("the input's element type does not match the graph".into())),
        };
        let out = self.gpu.run(&plan, input).map_err(run_err)?;
        let dim = self.info.output_dim;
        if out.len() != rows * dim {
            return Err(run_err(format!(
                "the output has {} values, expected {rows}×{dim}",
                out.len()
            )));
        }
        super::finite_output(&self.info, rows, out)
    }
}

impl Encoder for WgpuEncoder {
    fn info(&self) -> &EncoderInfo {
        &self.info
    }

    fn encode(&self, batch: &Tensor) -> Result<Tensor, EncodeError> {
        check_batch(&self.info, batch)?;
        let rows = batch.shape()[0];
        // The smallest plan that holds the batch, else the largest in chunks; padded rows are discarded.
        let index = self
            .sizes
            .iter()
            .position(|&s| s >= rows)
            .unwrap_or(self.sizes.len() - 1);
        let size = self.sizes[index];
        if rows == size {
            return self.run_plan(index, batch);
        }
        encode_fixed(&self.info, batch, size, |chunk| self.run_plan(index, chunk))
    }

    fn backend(&self) -> &'static str {
        if self.f16 { "wgpu-f16" } else { "wgpu" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_device_nodes_are_render_nodes_and_nvidia_nodes() {
        let dev = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let touch = |rel: &str| {
            let p = dev.path().join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::write(p, b"").unwrap_or_else(|e| panic!("{e}"));
        };
        assert!(gpu_device_nodes(dev.path()).is_empty(), "an empty /dev");
        for rel in ["null", "ttyS0", "video0", "dri/card0", "nvme0n1"] {
            touch(rel);
        }
        assert!(
            gpu_device_nodes(dev.path()).is_empty(),
            "no GPU: a DRM card node alone is display, not compute"
        );
        touch("dri/renderD128");
        touch("nvidia0");
        touch("nvhost-ctrl");
        let found: Vec<String> = gpu_device_nodes(dev.path())
            .iter()
            .filter_map(|p| p.strip_prefix(dev.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(found, ["dri/renderD128", "nvhost-ctrl", "nvidia0"]);
    }
}
