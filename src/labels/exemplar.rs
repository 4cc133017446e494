//! Exemplars: prompts defined by media instead of (or besides) text.
//!
//! An exemplar is a recording of what a label should fire on (a clip of the real doorbell, a photo of the real
//! van). It is embedded with its own modality's tower, exactly as `sensebind embed` embeds a file (a video or an
//! audio file gives the mean of its clips, as ImageBind does), then put on the text tower's scale, so that an
//! exemplar prompt's logits are as sharp as a text prompt's and [`super::ensemble`] can average it with the
//! prompt's texts. Windows of the exemplar's modality score against it by cosine similarity like against a text;
//! within one modality that similarity is higher than across modalities, so an exemplar prompt usually wins over
//! text prompts on windows that resemble it (docs/prompts.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PromptCache;
use crate::encode::{EncodeError, Encoder, embed};
use crate::modality::Modality;
use crate::preprocess::load::{MediaKind, sniff_media};
use crate::preprocess::text::Tokenizer;
use crate::preprocess::{self, PreprocessConfig, PreprocessError};

/// Largest exemplar file the daemon reads.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest base64 exemplar, decoded (a `prompts/set` payload is at most 256 KiB in all).
pub const MAX_INLINE_BYTES: usize = 160 * 1024;

/// A prompt's exemplar: a media file on the device, by path, or (over `prompts/set`) its bytes in base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ExemplarSpec {
    /// A path: absolute, or relative to the configuration file's folder. The modality comes from the content.
    Path(String),
    /// A file with its modality, or inline data.
    File(ExemplarFile),
}

/// An exemplar with options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExemplarFile {
    /// A path, as for a plain string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file's bytes in base64 (`prompts/set` only; at most 160 KiB decoded). The daemon stores them in
    /// `{state_dir}/exemplars/` and replaces this by their `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// The file name of `base64` data (its extension tells the format, e.g. `knock.wav`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tower that embeds it, where the content cannot tell: `depth` or `thermal` for a PNG, `imu` for a CSV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<Modality>,
}

impl ExemplarSpec {
    /// The path, if it has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Path(p) => Some(p),
            Self::File(f) => f.path.as_deref(),
        }
    }

    /// The modality given explicitly.
    pub fn modality(&self) -> Option<Modality> {
        match self {
            Self::Path(_) => None,
            Self::File(f) => f.modality,
        }
    }

    /// Value checks (a path or base64 data, not both; base64 that decodes within the limit and has a name).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Path(p) if p.trim().is_empty() => Err("an empty path".into()),
            Self::Path(_) => Ok(()),
            Self::File(f) => match (&f.path, &f.base64) {
                (Some(_), Some(_)) => Err("give path or base64, not both".into()),
                (None, None) => Err("needs path or base64".into()),
                (Some(p), None) if p.trim().is_empty() => Err("an empty path".into()),
                (Some(_), None) => Ok(()),
                (None, Some(data)) => {
                    if f.name.as_deref().is_none_or(|n| Path::new(n).extension().is_none()) {
                        return Err("base64 data needs a `name` with an extension (e.g. \"knock.wav\")".into());
                    }
                    decode_inline(data).map(|_| ())
                }
            },
        }
    }
}

/// Decodes base64 exemplar data within [`MAX_INLINE_BYTES`].
fn decode_inline(data: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    if data.len() > MAX_INLINE_BYTES / 3 * 4 + 8 {
        return Err(format!(
            "base64 data of {} characters is over the limit of {MAX_INLINE_BYTES} bytes decoded",
            data.len()
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("base64 data does not decode: {e}"))?;
    if bytes.len() > MAX_INLINE_BYTES {
        return Err(format!(
            "{} bytes decoded; the limit is {MAX_INLINE_BYTES}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Stores base64 exemplars under `dir` (named by their sha256 and extension) and returns the specs with their
/// paths instead, so the data is neither kept in memory nor republished in `prompts/state`.
pub fn store_inline(specs: &[ExemplarSpec], dir: &Path) -> Result<Vec<ExemplarSpec>, String> {
    specs
        .iter()
        .map(|spec| {
            let ExemplarSpec::File(f) = spec else {
                return Ok(spec.clone());
            };
            let Some(data) = &f.base64 else {
                return Ok(spec.clone());
            };
            let bytes = decode_inline(data)?;
            let ext = f
                .name
                .as_deref()
                .and_then(|n| Path::new(n).extension())
                .and_then(|e| e.to_str())
                .filter(|e| e.len() <= 8 && e.chars().all(|c| c.is_ascii_alphanumeric()))
                .ok_or("base64 data needs a `name` with a plain extension (e.g. \"knock.wav\")")?;
            let path = dir.join(format!("{}.{ext}", sha256_hex(&bytes)));
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, &bytes))
                .map_err(|e| format!("storing the exemplar in {}: {e}", path.display()))?;
            Ok(ExemplarSpec::File(ExemplarFile {
                path: Some(path.display().to_string()),
                base64: None,
                name: f.name.clone(),
                modality: f.modality,
            }))
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    crate::util::hex(&Sha256::digest(bytes))
}

/// The towers that embed a daemon's exemplars, and how files are found and read.
#[derive(Clone)]
pub struct ExemplarTowers {
    /// Loaded towers with their sha256 (the cache key), by modality.
    pub towers: BTreeMap<Modality, (Arc<dyn Encoder>, String)>,
    /// Depth, thermal and IMU parameters.
    pub preprocess: PreprocessConfig,
    /// CLIP BPE (text files).
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Relative paths start here (the configuration file's folder).
    pub base_dir: PathBuf,
    /// The text tower's scale (its manifest `scale`).
    pub text_scale: f32,
    /// Most clips per encoder call.
    pub max_batch: usize,
}

impl std::fmt::Debug for ExemplarTowers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExemplarTowers")
            .field("towers", &self.towers.keys().collect::<Vec<_>>())
            .field("base_dir", &self.base_dir)
            .finish_non_exhaustive()
    }
}

impl ExemplarTowers {
    /// The exemplar's embedding as a prompt embedding (on the text scale), from the cache when the same file
    /// (by content) was embedded by the same tower before. Errors name the file.
    pub fn embed(&self, spec: &ExemplarSpec, cache: &mut PromptCache) -> Result<Vec<f32>, String> {
        let raw = spec
            .path()
            .ok_or("base64 exemplars are taken over prompts/set only; in a configuration file give a path")?;
        let path = self.base_dir.join(raw);
        let shown = path.display();
        let size = std::fs::metadata(&path).map_err(|e| format!("{shown}: {e}"))?.len();
        if size > MAX_FILE_BYTES {
            return Err(format!(
                "{shown}: {size} bytes; an exemplar is at most {MAX_FILE_BYTES}"
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{shown}: {e}"))?;
        let modality = match spec.modality() {
            Some(m) => m,
            None => modality_of(&bytes, &path)?,
        };
        let (encoder, sha) = self.towers.get(&modality).ok_or_else(|| {
            format!(
                "{shown}: a {modality} exemplar needs the {modality} tower, which is not loaded (no {modality} source)"
            )
        })?;
        let key = PromptCache::key(sha, &format!("exemplar sha256:{}", sha256_hex(&bytes)));
        let dim = encoder.info().output_dim;
        let embedding = match cache.get(&key) {
            Some(e) if e.len() == dim => e,
            _ => {
                let e = embed_file(
                    encoder.as_ref(),
                    &path,
                    &self.preprocess,
                    self.tokenizer.as_deref(),
                    self.max_batch,
                )
                .map_err(|e| e.to_string())?;
                cache.insert(key, e.clone());
                e
            }
        };
        as_prompt(&embedding, self.text_scale).ok_or_else(|| format!("{shown}: its embedding is zero or not finite"))
    }
}

impl ExemplarSpec {
    /// The tower that embeds this exemplar: `modality` as given, else read from the first bytes of its file
    /// (`path` resolved against `base_dir`). Errors name the file.
    pub fn tower(&self, base_dir: &Path) -> Result<Modality, String> {
        use std::io::Read;
        if let Some(m) = self.modality() {
            return Ok(m);
        }
        let path = base_dir.join(self.path().ok_or("base64 data has no file yet")?);
        let mut head = Vec::with_capacity(64);
        std::fs::File::open(&path)
            .and_then(|f| f.take(64).read_to_end(&mut head))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        modality_of(&head, &path)
    }
}

/// The modality of an exemplar file from its content: images and video → vision, audio → audio, CSV/TSV → IMU;
/// anything else needs `modality`.
pub fn modality_of(head: &[u8], path: &Path) -> Result<Modality, String> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match sniff_media(&head[..head.len().min(64)], path) {
        MediaKind::Png | MediaKind::Jpeg | MediaKind::Video => Ok(Modality::Vision),
        MediaKind::Audio => Ok(Modality::Audio),
        MediaKind::Other if matches!(ext.as_deref(), Some("csv" | "tsv")) => Ok(Modality::Imu),
        _ => Err(format!(
            "{}: cannot tell which tower embeds it; give it as {{ path = \"...\", modality = \"...\" }}",
            path.display()
        )),
    }
}

/// Why a file could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum ExemplarError {
    /// The file could not be read or decoded (the message names the file).
    #[error("{cause}")]
    Preprocess {
        /// The file.
        file: PathBuf,
        /// What failed.
        cause: PreprocessError,
    },
    /// The tower failed on it.
    #[error("{}: {cause}", file.display())]
    Encode {
        /// The file.
        file: PathBuf,
        /// What failed.
        cause: EncodeError,
    },
    /// The tower gave no usable embedding (no rows, or a zero vector).
    #[error("{}: the {modality} tower gave no usable embedding", file.display())]
    Empty {
        /// The file.
        file: PathBuf,
        /// The tower.
        modality: Modality,
    },
}

/// Embeds a media file with `encoder` (its modality's tower), as `sensebind embed` does: the file is preprocessed
/// as ImageBind's loaders do, and the rows of a multi-clip input (a video's 15 clips, an audio file's 3, a text
/// file's lines) are averaged. `tokenizer` is needed for text files only.
pub fn embed_file(
    encoder: &dyn Encoder,
    file: &Path,
    config: &PreprocessConfig,
    tokenizer: Option<&Tokenizer>,
    max_batch: usize,
) -> Result<Vec<f32>, ExemplarError> {
    let modality = encoder.info().modality;
    let preprocess_error = |cause| ExemplarError::Preprocess {
        file: file.to_path_buf(),
        cause,
    };
    let encode_error = |cause| ExemplarError::Encode {
        file: file.to_path_buf(),
        cause,
    };
    let tensor = preprocess::load(modality, file, config, tokenizer).map_err(preprocess_error)?;
    // Text files are already a batch of lines; every other file is one item without the batch dimension.
    let batch = if modality == Modality::Text {
        tensor
    } else {
        let mut shape = vec![1];
        shape.extend_from_slice(tensor.shape());
        tensor.reshape(shape).map_err(|e| {
            encode_error(EncodeError::Run {
                model: encoder.info().model_id.clone(),
                reason: e.to_string(),
            })
        })?
    };
    let rows = embed(encoder, &batch, max_batch).map_err(encode_error)?;
    let dim = encoder.info().output_dim;
    let values = rows.as_f32().unwrap_or_default();
    let n = values.len() / dim.max(1);
    if n == 0 {
        return Err(ExemplarError::Empty {
            file: file.to_path_buf(),
            modality,
        });
    }
    let mut mean = vec![0f32; dim];
    for row in values.chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(m, x)| *m += x / n as f32);
    }
    Ok(mean)
}

/// An exemplar's embedding as a prompt embedding: its direction at the text tower's scale (`text_scale`, the
/// norm of every text embedding: the manifest's `scale` of the text tower). `None` for a zero or non-finite
/// vector.
pub fn as_prompt(embedding: &[f32], text_scale: f32) -> Option<Vec<f32>> {
    let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(norm.is_finite() && norm > 0.0 && text_scale.is_finite() && text_scale > 0.0) {
        return None;
    }
    Some(embedding.iter().map(|x| x / norm * text_scale).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exemplar_keeps_its_direction_at_the_text_scale() {
        let e = as_prompt(&[0.6, 0.0, 0.8], 14.0).unwrap();
        assert!((e[0] - 8.4).abs() < 1e-5 && e[1] == 0.0 && (e[2] - 11.2).abs() < 1e-5);
        assert!(as_prompt(&[0.0, 0.0], 14.0).is_none());
        assert!(as_prompt(&[f32::NAN, 1.0], 14.0).is_none());
    }
}
