//! Encoders: ImageBind towers that turn a batch of preprocessed clips into embeddings.
//!
//! An [`Encoder`] runs one modality's tower on a batch of single clips (`[B, ...clip shape]`) and returns
//! `[B, embed_dim]`, exactly what ImageBind's forward returns per clip (L2-normalised, times the modality's scale).
//! [`embed`] adds what ImageBind's forward does around the tower: images become 2-frame clips, multi-clip inputs
//! (video: 15 clips, audio: 3) are embedded clip by clip and averaged.
//!
//! Backends: [`tract_cpu`] (pure Rust, always available), [`onnxruntime`] (ONNX Runtime loaded at run time,
//! feature `onnxruntime`) and [`wgpu`] (compute shaders on a Vulkan device, feature `wgpu`); [`engine`] picks one
//! per tower (`auto`, `tract`, `onnxruntime`, `wgpu`).

pub mod engine;
pub mod manifest;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod options;
pub mod tract_cpu;
pub mod verify;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::path::{Path, PathBuf};

pub use engine::ModelSource;
pub use manifest::{Manifest, ModelDir, Precision, TowerManifest};
pub use options::{Backend, EngineOptions, ExecutionProviderConfig, ModelsConfig, OnnxRuntimeConfig, WgpuConfig};
pub use tract_cpu::{TractEncoder, TractOptions};

use crate::modality::Modality;
use crate::tensor::{DType, Tensor, TensorData};

/// What an encoder takes and gives.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderInfo {
    /// The modality of the tower.
    pub modality: Modality,
    /// A stable identifier of the weights (`name@sha256-prefix`, or the file name for a bare ONNX file).
    pub model_id: String,
    /// Per-clip input shape (without the batch dimension).
    pub input_shape: Vec<usize>,
    /// Input element type.
    pub input_dtype: DType,
    /// Embedding dimension.
    pub output_dim: usize,
    /// A batch size the graph is fixed to, if it has no dynamic batch dimension.
    pub fixed_batch: Option<usize>,
    /// The file the tower was loaded from.
    pub path: PathBuf,
}

/// A loaded tower: batch of clips in, embeddings out. Shared across threads.
pub trait Encoder: Send + Sync {
    /// What this encoder takes and gives.
    fn info(&self) -> &EncoderInfo;

    /// Embeds `[B, ...input_shape]` into `[B, output_dim]`. Any batch size of at least 1 is accepted.
    fn encode(&self, batch: &Tensor) -> Result<Tensor, EncodeError>;

    /// The backend's name, for logs and benchmarks.
    fn backend(&self) -> &'static str;
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A file could not be read.
    #[error("{op} {path}: {cause}", path = path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error (part of the message, so not chained as a source).
        cause: std::io::Error,
    },
    /// A file the manifest names does not exist.
    #[error("model file {path} does not exist", path = path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A file's sha256 differs from the manifest's.
    #[error(
        "checksum mismatch for {path}: the manifest says sha256 {expected}, the file has {actual}; \
         the file is corrupt or was replaced (re-export it or fix the manifest)",
        path = path.display()
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// sha256 in the manifest.
        expected: String,
        /// sha256 of the file.
        actual: String,
    },
    /// The manifest is malformed.
    #[error("invalid model manifest {path}: {reason}", path = path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model directory has no tower for a modality.
    #[error("the model directory {dir} has no {modality} tower", dir = dir.display())]
    NoTower {
        /// The modality asked for.
        modality: Modality,
        /// The model directory.
        dir: PathBuf,
    },
    /// The ONNX file could not be parsed or prepared.
    #[error("cannot load the {modality} model {path}: {reason}", path = path.display())]
    Load {
        /// The modality.
        modality: Modality,
        /// The ONNX file.
        path: PathBuf,
        /// The engine's explanation.
        reason: String,
    },
    /// The input does not have the shape or type the model takes.
    #[error("{model}: input {actual} does not fit: the model takes {expected}")]
    InputShape {
        /// The model id.
        model: String,
        /// What the model takes.
        expected: String,
        /// What was given.
        actual: String,
    },
    /// The input holds NaN or infinite values.
    #[error("{model}: input holds a non-finite value (NaN or infinity) in batch row {row}, element {index}")]
    NonFinite {
        /// The model id.
        model: String,
        /// The batch row.
        row: usize,
        /// Index of the element within the row.
        index: usize,
    },
    /// The engine failed while running the model.
    #[error("{model}: inference failed: {reason}")]
    Run {
        /// The model id.
        model: String,
        /// The engine's explanation.
        reason: String,
    },
    /// A backend cannot be used here (not built in, or its library does not load).
    #[error("the {backend} backend is unavailable: {reason}")]
    Backend {
        /// The backend asked for.
        backend: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// The model produced non-finite output.
    #[error("{model}: the model produced a non-finite embedding for batch row {row}")]
    NonFiniteOutput {
        /// The model id.
        model: String,
        /// The batch row.
        row: usize,
    },
}

/// Embeds a tensor in ImageBind's loader layout (batch first), as `ImageBindModel.forward` does.
///
/// - `[B, ...clip]`: one clip per row.
/// - vision `[B, 3, H, W]`: images, each repeated into a 2-frame clip (ImageBind's `PadIm2Video`).
/// - `[B, S, ...clip]`: S clips per row (video: 15, audio: 3); the S per-clip embeddings are averaged, as
///   ImageBind does (the mean of scaled, L2-normalised clip embeddings, not re-normalised).
///
/// `max_batch` bounds how many clips go through the encoder at once.
pub fn embed(encoder: &dyn Encoder, input: &Tensor, max_batch: usize) -> Result<Tensor, EncodeError> {
    let info = encoder.info();
    let clip = info.input_shape.as_slice();
    let shape = input.shape();
    let describe = |s: &[usize]| format!("{} {s:?}", input.dtype());
    let expected = || {
        let mut forms = vec![format!("{} [B, {}]", info.input_dtype, join(clip))];
        if is_image_clip(info) {
            forms.push(format!("images [B, 3, {}, {}]", clip[2], clip[3]));
        }
        forms.push(format!("[B, clips, {}]", join(clip)));
        forms.join(" or ")
    };
    if input.dtype() != info.input_dtype {
        return Err(EncodeError::InputShape {
            model: info.model_id.clone(),
            expected: expected(),
            actual: describe(shape),
        });
    }
    if shape.len() == clip.len() + 1 && &shape[1..] == clip {
        return encode_chunked(encoder, input, max_batch);
    }
    if is_image_clip(info) && shape.len() == 4 && shape[1] == clip[0] && shape[2..] == clip[2..] {
        let clips = images_to_clips(input, clip[1]);
        return encode_chunked(encoder, &clips, max_batch);
    }
    if shape.len() == clip.len() + 2 && &shape[2..] == clip && shape[0] > 0 && shape[1] > 0 {
        let (rows, per_row) = (shape[0], shape[1]);
        let mut flat_shape = vec![rows * per_row];
        flat_shape.extend_from_slice(clip);
        let flat = input.clone().reshape(flat_shape).map_err(|e| EncodeError::InputShape {
            model: info.model_id.clone(),
            expected: expected(),
            actual: e.to_string(),
        })?;
        let per_clip = encode_chunked(encoder, &flat, max_batch)?;
        return Ok(mean_over_clips(&per_clip, rows, per_row, info.output_dim));
    }
    Err(EncodeError::InputShape {
        model: info.model_id.clone(),
        expected: expected(),
        actual: describe(shape),
    })
}

fn join(dims: &[usize]) -> String {
    dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// A vision tower takes `[3, T, H, W]` clips; a `[3, H, W]` image is repeated T times.
fn is_image_clip(info: &EncoderInfo) -> bool {
    info.modality == Modality::Vision && info.input_shape.len() == 4
}

/// `[B, C, H, W]` → `[B, C, T, H, W]`, each frame a copy of the image.
fn images_to_clips(images: &Tensor, frames: usize) -> Tensor {
    let shape = images.shape();
    let (b, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let src = images.as_f32().unwrap_or_default();
    let plane = h * w;
    let mut out = Vec::with_capacity(src.len() * frames);
    for bc in 0..b * c {
        let image = &src[bc * plane..(bc + 1) * plane];
        for _ in 0..frames {
            out.extend_from_slice(image);
        }
    }
    Tensor::from_f32(vec![b, c, frames, h, w], out).unwrap_or_else(|_| images.clone())
}

fn encode_chunked(encoder: &dyn Encoder, clips: &Tensor, max_batch: usize) -> Result<Tensor, EncodeError> {
    let n = clips.shape()[0];
    let max_batch = max_batch.max(1);
    if n <= max_batch {
        return encoder.encode(clips);
    }
    let row = clips.len() / n.max(1);
    let clip_shape = clips.shape()[1..].to_vec();
    let dim = encoder.info().output_dim;
    let mut out = Vec::with_capacity(n * dim);
    for start in (0..n).step_by(max_batch) {
        let end = (start + max_batch).min(n);
        let mut shape = vec![end - start];
        shape.extend_from_slice(&clip_shape);
        let data = match clips.data() {
            TensorData::F32(v) => TensorData::F32(v[start * row..end * row].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[start * row..end * row].to_vec()),
        };
        let chunk = Tensor::new(shape, data).map_err(|e| EncodeError::InputShape {
            model: encoder.info().model_id.clone(),
            expected: format!("{:?}", clip_shape),
            actual: e.to_string(),
        })?;
        let emb = encoder.encode(&chunk)?;
        out.extend_from_slice(emb.as_f32().unwrap_or_default());
    }
    Tensor::from_f32(vec![n, dim], out).map_err(|e| EncodeError::Run {
        model: encoder.info().model_id.clone(),
        reason: e.to_string(),
    })
}

/// `[rows*per_row, dim]` → `[rows, dim]`, the mean over each row's clips (in f32, summed in clip order).
fn mean_over_clips(per_clip: &Tensor, rows: usize, per_row: usize, dim: usize) -> Tensor {
    let src = per_clip.as_f32().unwrap_or_default();
    let mut out = vec![0f32; rows * dim];
    for r in 0..rows {
        let acc = &mut out[r * dim..(r + 1) * dim];
        for s in 0..per_row {
            let clip = &src[(r * per_row + s) * dim..(r * per_row + s + 1) * dim];
            acc.iter_mut().zip(clip).for_each(|(a, x)| *a += x);
        }
        acc.iter_mut().for_each(|a| *a /= per_row as f32);
    }
    Tensor::from_f32(vec![rows, dim], out).unwrap_or_else(|_| per_clip.clone())
}

/// A tower's ONNX file in a model directory and its model id, after checking it exists and (if asked) its sha256.
pub(crate) fn tower_file(
    dir: &ModelDir,
    modality: Modality,
    verify_checksum: bool,
) -> Result<(PathBuf, String), EncodeError> {
    let tower = dir.tower(modality)?;
    let path = dir.path(&tower.file);
    if !path.exists() {
        return Err(EncodeError::MissingFile { path });
    }
    if verify_checksum {
        dir.verify_tower_checksum(modality)?;
    }
    Ok((path, dir.model_id(modality)?))
}

/// A bare ONNX file's model id (its file name), after checking it exists.
pub(crate) fn bare_model_id(path: &Path) -> Result<String, EncodeError> {
    if !path.exists() {
        return Err(EncodeError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    Ok(path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string()))
}

/// Checks a loaded graph's input and output against what the manifest says about its tower.
pub(crate) fn check_against_manifest(dir: &ModelDir, info: &EncoderInfo) -> Result<(), EncodeError> {
    let tower = dir.tower(info.modality)?;
    let manifest = dir.root().join(manifest::MANIFEST_FILE);
    let modality = info.modality;
    if info.input_shape != tower.input_shape || info.input_dtype != tower.input_dtype {
        return Err(EncodeError::Manifest {
            path: manifest,
            reason: format!(
                "towers.{modality} says the input is {} {:?}, but {} takes {} {:?}",
                tower.input_dtype,
                tower.input_shape,
                info.path.display(),
                info.input_dtype,
                info.input_shape
            ),
        });
    }
    if info.output_dim != tower.output_dim {
        return Err(EncodeError::Manifest {
            path: manifest,
            reason: format!(
                "towers.{modality}.output_dim is {}, but {} outputs {}",
                tower.output_dim,
                info.path.display(),
                info.output_dim
            ),
        });
    }
    Ok(())
}

/// Runs a graph exported with a fixed batch size `n` on any batch: chunks of exactly `n`, the last padded with
/// copies of its first row (whose outputs are dropped).
pub(crate) fn encode_fixed(
    info: &EncoderInfo,
    batch: &Tensor,
    n: usize,
    run_once: impl Fn(&Tensor) -> Result<Tensor, EncodeError>,
) -> Result<Tensor, EncodeError> {
    let rows = batch.shape()[0];
    let row_len = batch.len() / rows.max(1);
    let dim = info.output_dim;
    let run_err = |e: crate::tensor::ShapeMismatch| EncodeError::Run {
        model: info.model_id.clone(),
        reason: e.to_string(),
    };
    let mut out = Vec::with_capacity(rows * dim);
    for start in (0..rows).step_by(n.max(1)) {
        let end = (start + n).min(rows);
        let mut shape = batch.shape().to_vec();
        shape[0] = n;
        let data = match batch.data() {
            TensorData::F32(v) => TensorData::F32(pad_rows(&v[start * row_len..end * row_len], row_len, n)),
            TensorData::I64(v) => TensorData::I64(pad_rows(&v[start * row_len..end * row_len], row_len, n)),
        };
        let chunk = Tensor::new(shape, data).map_err(run_err)?;
        let emb = run_once(&chunk)?;
        out.extend_from_slice(&emb.as_f32().unwrap_or_default()[..(end - start) * dim]);
    }
    Tensor::from_f32(vec![rows, dim], out).map_err(run_err)
}

fn pad_rows<T: Copy>(rows: &[T], row_len: usize, n: usize) -> Vec<T> {
    let mut v = rows.to_vec();
    while v.len() < n * row_len {
        v.extend_from_slice(&rows[..row_len]);
    }
    v
}

/// A backend's `[rows, output_dim]` output as a tensor, after checking every value is finite (a non-finite value
/// is an error naming its row). Each backend checks the output's shape itself, with what its engine reports.
pub(crate) fn finite_output(info: &EncoderInfo, rows: usize, values: Vec<f32>) -> Result<Tensor, EncodeError> {
    let dim = info.output_dim;
    if let Some(pos) = values.iter().position(|x| !x.is_finite()) {
        return Err(EncodeError::NonFiniteOutput {
            model: info.model_id.clone(),
            row: pos / dim.max(1),
        });
    }
    Tensor::from_f32(vec![rows, dim], values).map_err(|e| EncodeError::Run {
        model: info.model_id.clone(),
        reason: e.to_string(),
    })
}

/// Checks a batch against the encoder's input spec: shape, dtype and finiteness.
pub fn check_batch(info: &EncoderInfo, batch: &Tensor) -> Result<(), EncodeError> {
    let shape = batch.shape();
    let fits = batch.dtype() == info.input_dtype
        && shape.len() == info.input_shape.len() + 1
        && shape[1..] == info.input_shape[..]
        && shape[0] >= 1;
    if !fits {
        return Err(EncodeError::InputShape {
            model: info.model_id.clone(),
            expected: format!("{} [B, {}]", info.input_dtype, join(&info.input_shape)),
            actual: format!("{} {shape:?}", batch.dtype()),
        });
    }
    if let Some(index) = batch.first_non_finite() {
        let row_len = info.input_shape.iter().product::<usize>().max(1);
        return Err(EncodeError::NonFinite {
            model: info.model_id.clone(),
            row: index / row_len,
            index: index % row_len,
        });
    }
    Ok(())
}

/// Returns `[B, D]` embeddings L2-normalised per row (for cosine similarity). Zero rows stay zero.
pub fn l2_normalized(embeddings: &[f32], dim: usize) -> Vec<f32> {
    let mut out = embeddings.to_vec();
    for row in out.chunks_mut(dim.max(1)) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > f32::EPSILON {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An encoder whose embedding of a clip is the sum of its elements in every dimension, recording batches.
    struct SumEncoder {
        info: EncoderInfo,
        batches: Mutex<Vec<usize>>,
    }

    impl SumEncoder {
        fn new(modality: Modality, clip: Vec<usize>) -> Self {
            Self {
                info: EncoderInfo {
                    modality,
                    model_id: "sum".into(),
                    input_shape: clip,
                    input_dtype: DType::F32,
                    output_dim: 2,
                    fixed_batch: None,
                    path: PathBuf::new(),
                },
                batches: Mutex::new(Vec::new()),
            }
        }
    }

    impl Encoder for SumEncoder {
        fn info(&self) -> &EncoderInfo {
            &self.info
        }
        fn encode(&self, batch: &Tensor) -> Result<Tensor, EncodeError> {
            check_batch(&self.info, batch)?;
            let b = batch.shape()[0];
            self.batches.lock().unwrap().push(b);
            let row = batch.len() / b;
            let v = batch.as_f32().unwrap();
            let out = (0..b)
                .flat_map(|i| {
                    let s: f32 = v[i * row..(i + 1) * row].iter().sum();
                    [s, -s]
                })
                .collect();
            Ok(Tensor::from_f32(vec![b, 2], out).unwrap())
        }
        fn backend(&self) -> &'static str {
            "test"
        }
    }

    #[test]
    fn embed_repeats_images_into_two_frame_clips() {
        let enc = SumEncoder::new(Modality::Vision, vec![3, 2, 2, 2]);
        let img = Tensor::from_f32(vec![1, 3, 2, 2], (0..12).map(|x| x as f32).collect()).unwrap();
        let out = embed(&enc, &img, 8).unwrap();
        assert_eq!(out.as_f32().unwrap(), &[132.0, -132.0]); // 2 frames × sum(0..12)
    }

    #[test]
    fn embed_averages_multi_clip_rows_and_chunks_batches() {
        let enc = SumEncoder::new(Modality::Audio, vec![1, 2]);
        // 2 rows × 3 clips × [1, 2]
        let x = Tensor::from_f32(vec![2, 3, 1, 2], (0..12).map(|x| x as f32).collect()).unwrap();
        let out = embed(&enc, &x, 4).unwrap();
        // clip sums: 1, 5, 9 | 13, 17, 21 → means 5, 17
        assert_eq!(out.as_f32().unwrap(), &[5.0, -5.0, 17.0, -17.0]);
        assert_eq!(*enc.batches.lock().unwrap(), vec![4, 2]);
    }

    #[test]
    fn embed_rejects_wrong_shapes_and_types_with_expected_forms() {
        let enc = SumEncoder::new(Modality::Depth, vec![1, 4, 4]);
        let x = Tensor::from_f32(vec![1, 1, 4, 5], vec![0.0; 20]).unwrap();
        let err = embed(&enc, &x, 4).unwrap_err().to_string();
        assert!(err.contains("[B, 1, 4, 4]") && err.contains("[1, 1, 4, 5]"), "{err}");
        let x = Tensor::from_i64(vec![1, 1, 4, 4], vec![0; 16]).unwrap();
        assert!(embed(&enc, &x, 4).is_err());
    }

    #[test]
    fn check_batch_locates_nan() {
        let enc = SumEncoder::new(Modality::Imu, vec![2, 3]);
        let mut v = vec![0.0; 12];
        v[9] = f32::NAN;
        let x = Tensor::from_f32(vec![2, 2, 3], v).unwrap();
        match embed(&enc, &x, 4) {
            Err(EncodeError::NonFinite { row: 1, index: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn l2_normalized_rows_have_unit_norm() {
        let v = l2_normalized(&[3.0, 4.0, 0.0, 0.0], 2);
        assert_eq!(v, vec![0.6, 0.8, 0.0, 0.0]);
    }
}
