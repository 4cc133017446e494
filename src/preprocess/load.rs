//! The file boundary: read a media file and run the modality's transform.

use std::path::Path;

use super::image::{IMAGE_SIZE, decode_gray, decode_rgb, transform_image};
use super::text::{CONTEXT_LENGTH, Tokenizer};
use super::{PreprocessConfig, PreprocessError, audio, depth, imu, thermal, video};
use crate::modality::Modality;
use crate::tensor::Tensor;

/// What a file appears to hold, from its first bytes (and its extension where bytes cannot tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// NumPy array.
    Npy,
    /// RIFF/WAVE, FLAC or Ogg.
    Audio,
    /// A container FFmpeg reads (MP4/MOV, Matroska/WebM, AVI, MPEG-TS, ...).
    Video,
    /// Anything else (text, CSV, unknown).
    Other,
}

/// Guesses the kind of a file from its leading bytes.
pub fn sniff_media(head: &[u8], path: &Path) -> MediaKind {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        MediaKind::Png
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        MediaKind::Jpeg
    } else if head.starts_with(b"\x93NUMPY") {
        MediaKind::Npy
    } else if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WAVE") || head.starts_with(b"fLaC") {
        MediaKind::Audio
    } else if head.starts_with(b"OggS") {
        // Ogg holds Vorbis/Opus audio, or (rarely) Theora video.
        if matches!(ext.as_deref(), Some("ogv")) {
            MediaKind::Video
        } else {
            MediaKind::Audio
        }
    } else if head
        .get(4..8)
        .is_some_and(|b| matches!(b, b"ftyp" | b"moov" | b"mdat" | b"free" | b"wide"))
        || head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3])
        || head.starts_with(b"RIFF") && head.get(8..11) == Some(b"AVI")
        || head.first() == Some(&0x47) && matches!(ext.as_deref(), Some("ts" | "m2ts"))
        || matches!(
            ext.as_deref(),
            Some("mp4" | "m4v" | "mov" | "mkv" | "webm" | "avi" | "mpg" | "mpeg" | "ts")
        )
    {
        MediaKind::Video
    } else {
        MediaKind::Other
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PreprocessError> {
    std::fs::read(path).map_err(|cause| PreprocessError::Io {
        path: path.display().to_string(),
        cause,
    })
}

fn tensor(shape: Vec<usize>, data: Vec<f32>, name: &str) -> Result<Tensor, PreprocessError> {
    Tensor::from_f32(shape, data).map_err(|e| PreprocessError::decode(name, format!("internal shape error: {e}")))
}

/// Reads `path` and returns exactly the tensor ImageBind's loader gives for it, without the batch dimension:
/// vision `[3,224,224]` (image) or `[15,3,2,224,224]` (video), audio `[3,1,128,204]`, depth/thermal `[1,224,224]`,
/// imu `[6,2000]`, text (one prompt per non-empty line) `[N,77]`.
pub fn load(
    modality: Modality,
    path: &Path,
    config: &PreprocessConfig,
    tokenizer: Option<&Tokenizer>,
) -> Result<Tensor, PreprocessError> {
    let name = path.display().to_string();
    let bytes = read(path)?;
    let kind = sniff_media(&bytes[..bytes.len().min(64)], path);
    match modality {
        Modality::Vision => match kind {
            MediaKind::Png | MediaKind::Jpeg => {
                let img = decode_rgb(&bytes, &name)?;
                tensor(vec![3, IMAGE_SIZE, IMAGE_SIZE], transform_image(&img), &name)
            }
            MediaKind::Video | MediaKind::Other if !bytes.is_empty() => {
                drop(bytes);
                let values = video::load_video(path)?;
                tensor(
                    vec![video::CLIPS * video::CROPS, 3, 2, IMAGE_SIZE, IMAGE_SIZE],
                    values,
                    &name,
                )
            }
            _ => Err(PreprocessError::decode(
                &name,
                "not an image (PNG/JPEG) or a video file",
            )),
        },
        Modality::Audio => {
            let wave = audio::decode(bytes, &name)?;
            let values = audio::transform(&wave, &name)?;
            tensor(
                vec![audio::CLIPS, 1, super::fbank::MEL_BINS, audio::TARGET_FRAMES],
                values,
                &name,
            )
        }
        Modality::Depth => {
            let map = match kind {
                MediaKind::Npy => {
                    let t =
                        crate::npy::parse(&bytes, &name).map_err(|e| PreprocessError::decode(&name, e.to_string()))?;
                    let (shape, data) = t.into_parts();
                    let values = match data {
                        crate::tensor::TensorData::F32(v) => v,
                        crate::tensor::TensorData::I64(v) => v.into_iter().map(|x| x as f32).collect(),
                    };
                    depth::from_npy(&shape, values, &name)?
                }
                MediaKind::Png => {
                    let g = decode_gray(&bytes, &name)?;
                    if g.bit_depth < 16 {
                        tracing::warn!(path = %name, bits = g.bit_depth, "Depth PNG is not 16-bit; reading its values in png_unit_m units.");
                    }
                    depth::from_png_samples(g.width, g.height, &g.samples, &config.depth)
                }
                _ => {
                    return Err(PreprocessError::decode(
                        &name,
                        "not a depth map: expected a 16-bit PNG (millimetres) or a float .npy (metres)",
                    ));
                }
            };
            tensor(
                vec![1, IMAGE_SIZE, IMAGE_SIZE],
                depth::transform(&map, &config.depth),
                &name,
            )
        }
        Modality::Thermal => {
            let img = match kind {
                MediaKind::Png | MediaKind::Jpeg => decode_gray(&bytes, &name)?,
                _ => {
                    return Err(PreprocessError::decode(
                        &name,
                        "not a thermal image: expected an 8- or 16-bit PNG or a JPEG",
                    ));
                }
            };
            tensor(
                vec![1, IMAGE_SIZE, IMAGE_SIZE],
                thermal::transform(&img, &config.thermal),
                &name,
            )
        }
        Modality::Imu => {
            let text = String::from_utf8(bytes).map_err(|e| {
                PreprocessError::decode(
                    &name,
                    format!(
                        "not a text (CSV) file: byte {} is not UTF-8",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })?;
            let rec = imu::parse(&text, &config.imu, &name)?;
            let samples = config.imu.samples;
            tensor(vec![6, samples], imu::window(&rec, &config.imu), &name)
        }
        Modality::Text => {
            let tokenizer = tokenizer.ok_or_else(|| PreprocessError::Tool {
                path: name.clone(),
                reason: "no BPE vocabulary loaded".into(),
            })?;
            let text = String::from_utf8(bytes).map_err(|_| PreprocessError::decode(&name, "not UTF-8 text"))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                return Err(PreprocessError::invalid(&name, "no text lines"));
            }
            let ids: Vec<i64> = lines.iter().flat_map(|l| tokenizer.tokenize(l)).collect();
            Tensor::from_i64(vec![lines.len(), CONTEXT_LENGTH], ids)
                .map_err(|e| PreprocessError::decode(&name, format!("internal shape error: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_uses_magic_bytes_first() {
        let p = Path::new("x.bin");
        assert_eq!(sniff_media(b"\x89PNG\r\n\x1a\n....", p), MediaKind::Png);
        assert_eq!(sniff_media(b"RIFF\0\0\0\0WAVEfmt ", p), MediaKind::Audio);
        assert_eq!(sniff_media(b"\0\0\0\x20ftypisom", p), MediaKind::Video);
        assert_eq!(sniff_media(b"OggS", Path::new("a.oga")), MediaKind::Audio);
        assert_eq!(sniff_media(b"hello", Path::new("clip.MKV")), MediaKind::Video);
        assert_eq!(sniff_media(b"a,b,c", Path::new("x.csv")), MediaKind::Other);
    }
}
