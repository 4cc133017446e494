//! Exemplars: prompts defined by media instead of (or besides) text.
//!
//! An exemplar is a recording of what a label should fire on (a clip of the real doorbell, a photo of the real
//! van). It is embedded with its own modality's tower, exactly as `sensebind embed` embeds a file (a video or an
//! audio file gives the mean of its clips, as ImageBind does), then put on the text tower's scale, so that an
//! exemplar prompt's logits are as sharp as a text prompt's and [`super::ensemble`] can average it with the
//! prompt's texts. Windows of the exemplar's modality score against it by cosine similarity like against a text;
//! within one modality that similarity is higher than across modalities, so an exemplar prompt usually wins over
//! text prompts on windows that resemble it (docs/prompts.md).

use std::path::{Path, PathBuf};

use crate::encode::{EncodeError, Encoder, embed};
use crate::modality::Modality;
use crate::preprocess::text::Tokenizer;
use crate::preprocess::{self, PreprocessConfig, PreprocessError};

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
