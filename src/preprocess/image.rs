//! Images: decoding to Pillow's RGB, and ImageBind's `load_and_transform_vision_data`.
//!
//! Reference (`imagebind/data.py:82-106`): `Image.open(f).convert("RGB")`, torchvision `Resize(224, BICUBIC)` on
//! the PIL image (short side to 224, long side `int(224 * long / short)`, Pillow's antialiased bicubic),
//! `CenterCrop(224)` (offsets `int(round((size - 224) / 2))`, Python's round half to even), `ToTensor()` (÷255 in
//! f32) and `Normalize` with the CLIP mean/std (`(x - mean) / std` in f32) → `[3, 224, 224]`.
//!
//! Decoding follows Pillow's conversions to RGB: grayscale (1/2/4/8 bits) is replicated, palettes are looked up,
//! alpha is dropped (not composited), 16-bit grayscale is clipped to 255 (Pillow's `I;16 → RGB`), 16-bit colour
//! keeps the high byte. EXIF orientation is not applied (Pillow does not apply it either). JPEG is decoded with
//! zune-jpeg, which can differ from libjpeg-turbo by a few levels; tests record how much.

use super::PreprocessError;
use super::resample::pillow_resize_u8;

/// CLIP's per-channel mean (ImageBind `data.py`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (the literals as ImageBind writes them; they round to these f32 values).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// Output side of ImageBind's image and video transforms.
pub const IMAGE_SIZE: usize = 224;

/// An 8-bit RGB image, planar (`[3][h][w]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Three planes of `width * height` bytes: R, G, B.
    pub planes: [Vec<u8>; 3],
}

/// A single-channel image with its native sample range (8- or 16-bit), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bits per sample in the file (1, 2, 4, 8 or 16).
    pub bit_depth: u8,
    /// Samples as stored (0..2^bit_depth), not rescaled.
    pub samples: Vec<u16>,
}

/// Largest image accepted (pixels), to bound memory on hostile headers.
const MAX_PIXELS: usize = 1 << 28;

/// What kind of image a byte stream holds.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else {
        None
    }
}

/// Decodes PNG or JPEG bytes to RGB exactly as `PIL.Image.open(f).convert("RGB")` would (JPEG within a few levels).
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage, PreprocessError> {
    match sniff(bytes) {
        Some("png") => png_to_rgb(bytes, name),
        Some("jpeg") => jpeg_to_rgb(bytes, name),
        _ => Err(PreprocessError::decode(name, "not a PNG or JPEG file")),
    }
}

/// Decodes a single-channel PNG (8- or 16-bit grayscale; colour is reduced with ITU-R 601-2 luma like Pillow's
/// `convert("L")`) keeping the sample values. Used for depth and thermal frames.
pub fn decode_gray(bytes: &[u8], name: &str) -> Result<GrayImage, PreprocessError> {
    match sniff(bytes) {
        Some("png") => {
            let raw = read_png(bytes, name)?;
            match raw.color {
                png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => {
                    let step = if raw.color == png::ColorType::GrayscaleAlpha {
                        2
                    } else {
                        1
                    };
                    let samples = raw.samples.iter().step_by(step).copied().collect();
                    Ok(GrayImage {
                        width: raw.width,
                        height: raw.height,
                        bit_depth: raw.bit_depth,
                        samples,
                    })
                }
                _ => {
                    let rgb = png_to_rgb(bytes, name)?;
                    Ok(luma(&rgb))
                }
            }
        }
        Some("jpeg") => Ok(luma(&jpeg_to_rgb(bytes, name)?)),
        _ => Err(PreprocessError::decode(name, "not a PNG or JPEG file")),
    }
}

/// Pillow's `convert("L")`: `L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16`.
fn luma(rgb: &RgbImage) -> GrayImage {
    let [r, g, b] = &rgb.planes;
    let samples = r
        .iter()
        .zip(g)
        .zip(b)
        .map(|((&r, &g), &b)| {
            ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u16
        })
        .collect();
    GrayImage {
        width: rgb.width,
        height: rgb.height,
        bit_depth: 8,
        samples,
    }
}

struct RawPng {
    width: usize,
    height: usize,
    color: png::ColorType,
    bit_depth: u8,
    /// One entry per sample (channels interleaved), unscaled.
    samples: Vec<u16>,
    palette: Option<Vec<u8>>,
}

fn read_png(bytes: &[u8], name: &str) -> Result<RawPng, PreprocessError> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder
        .read_info()
        .map_err(|e| PreprocessError::decode(name, format!("invalid PNG: {e}")))?;
    let info = reader.info();
    let (width, height) = (info.width as usize, info.height as usize);
    if width == 0 || height == 0 || width.saturating_mul(height) > MAX_PIXELS {
        return Err(PreprocessError::decode(
            name,
            format!("unsupported PNG size {width}x{height}"),
        ));
    }
    let color = info.color_type;
    let bit_depth = info.bit_depth as u8;
    let palette = info.palette.as_ref().map(|p| p.to_vec());
    let mut buf = vec![
        0u8;
        reader
            .output_buffer_size()
            .ok_or_else(|| PreprocessError::decode(name, "PNG too large"))?
    ];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| PreprocessError::decode(name, format!("invalid or truncated PNG: {e}")))?;
    let line = frame.line_size;
    let channels = color.samples();
    let mut samples = Vec::with_capacity(width * height * channels);
    for y in 0..height {
        let row = &buf[y * line..(y + 1) * line];
        match bit_depth {
            16 => samples.extend(
                row.chunks_exact(2)
                    .take(width * channels)
                    .map(|c| u16::from_be_bytes([c[0], c[1]])),
            ),
            8 => samples.extend(row.iter().take(width * channels).map(|&b| u16::from(b))),
            bits @ (1 | 2 | 4) => {
                let per_byte = 8 / usize::from(bits);
                let mask = (1u16 << bits) - 1;
                for x in 0..width * channels {
                    let byte = row[x / per_byte];
                    let shift = 8 - usize::from(bits) * (x % per_byte + 1);
                    samples.push((u16::from(byte) >> shift) & mask);
                }
            }
            other => {
                return Err(PreprocessError::decode(
                    name,
                    format!("unsupported PNG bit depth {other}"),
                ));
            }
        }
    }
    Ok(RawPng {
        width,
        height,
        color,
        bit_depth,
        samples,
        palette,
    })
}

fn png_to_rgb(bytes: &[u8], name: &str) -> Result<RgbImage, PreprocessError> {
    let raw = read_png(bytes, name)?;
    let n = raw.width * raw.height;
    let mut planes = [vec![0u8; n], vec![0u8; n], vec![0u8; n]];
    // Pillow's 8-bit value of a sample: low depths are scaled to 0..255, 16-bit colour keeps the high byte, 16-bit
    // grayscale (mode I;16) is clipped at 255 when converted to RGB.
    let gray8 = |v: u16| -> u8 {
        match raw.bit_depth {
            1 => (v * 255) as u8,
            2 => (v * 85) as u8,
            4 => (v * 17) as u8,
            8 => v as u8,
            _ => v.min(255) as u8,
        }
    };
    let color8 = |v: u16| -> u8 { if raw.bit_depth == 16 { (v >> 8) as u8 } else { v as u8 } };
    match raw.color {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => {
            let step = if raw.color == png::ColorType::GrayscaleAlpha {
                2
            } else {
                1
            };
            // Pillow opens 16-bit gray+alpha as LA (high byte), 16-bit gray as I;16 (clipped).
            let conv = |v: u16| {
                if raw.bit_depth == 16 && step == 2 {
                    (v >> 8) as u8
                } else {
                    gray8(v)
                }
            };
            for (i, &v) in raw.samples.iter().step_by(step).take(n).enumerate() {
                let g = conv(v);
                planes[0][i] = g;
                planes[1][i] = g;
                planes[2][i] = g;
            }
        }
        png::ColorType::Rgb | png::ColorType::Rgba => {
            let ch = raw.color.samples();
            for (i, px) in raw.samples.chunks_exact(ch).take(n).enumerate() {
                for (plane, &v) in planes.iter_mut().zip(px) {
                    plane[i] = color8(v);
                }
            }
        }
        png::ColorType::Indexed => {
            let palette = raw
                .palette
                .as_ref()
                .ok_or_else(|| PreprocessError::decode(name, "indexed PNG without a palette"))?;
            for (i, &idx) in raw.samples.iter().take(n).enumerate() {
                let at = usize::from(idx) * 3;
                // Pillow pads short palettes with black.
                for (c, plane) in planes.iter_mut().enumerate() {
                    plane[i] = palette.get(at + c).copied().unwrap_or(0);
                }
            }
        }
    }
    Ok(RgbImage {
        width: raw.width,
        height: raw.height,
        planes,
    })
}

fn jpeg_to_rgb(bytes: &[u8], name: &str) -> Result<RgbImage, PreprocessError> {
    use zune_jpeg::JpegDecoder;
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;

    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(1 << 15)
        .set_max_height(1 << 15);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder
        .decode()
        .map_err(|e| PreprocessError::decode(name, format!("invalid or truncated JPEG: {e:?}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| PreprocessError::decode(name, "JPEG without a frame header"))?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    let n = width * height;
    if pixels.len() < n * 3 || n == 0 {
        return Err(PreprocessError::decode(
            name,
            "JPEG decoded to fewer pixels than its header declares",
        ));
    }
    let mut planes = [vec![0u8; n], vec![0u8; n], vec![0u8; n]];
    for (i, px) in pixels.chunks_exact(3).take(n).enumerate() {
        planes[0][i] = px[0];
        planes[1][i] = px[1];
        planes[2][i] = px[2];
    }
    Ok(RgbImage { width, height, planes })
}

/// torchvision's `_compute_resized_output_size` for `Resize(224)`: (width, height).
pub fn resized_size(width: usize, height: usize, short: usize) -> (usize, usize) {
    let (s, l) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((short * l) as f64 / s as f64) as usize;
    if width <= height {
        (short, new_long)
    } else {
        (new_long, short)
    }
}

/// torchvision `CenterCrop` offset: `int(round((size - crop) / 2.0))` with round half to even.
pub fn center_crop_offset(size: usize, crop: usize) -> usize {
    let half = size.saturating_sub(crop) as f64 / 2.0;
    half.round_ties_even() as usize
}

/// ImageBind's image transform on a decoded RGB image → `[3, 224, 224]` f32 (CHW).
pub fn transform_image(img: &RgbImage) -> Vec<f32> {
    let (w, h) = resized_size(img.width, img.height, IMAGE_SIZE);
    let top = center_crop_offset(h, IMAGE_SIZE);
    let left = center_crop_offset(w, IMAGE_SIZE);
    let mut out = Vec::with_capacity(3 * IMAGE_SIZE * IMAGE_SIZE);
    for (c, plane) in img.planes.iter().enumerate() {
        let resized = if (w, h) == (img.width, img.height) {
            plane.clone()
        } else {
            pillow_resize_u8(plane, img.width, img.height, w, h)
        };
        for y in top..top + IMAGE_SIZE {
            for x in left..left + IMAGE_SIZE {
                let v = f32::from(resized[y * w + x]) / 255.0;
                out.push((v - CLIP_MEAN[c]) / CLIP_STD[c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_rule_truncates_the_long_side() {
        assert_eq!(resized_size(640, 848, 224), (224, 296)); // int(224*848/640) = int(296.8)
        assert_eq!(resized_size(640, 360, 224), (398, 224)); // int(398.22)
        assert_eq!(resized_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        assert_eq!(center_crop_offset(225, 224), 0); // 0.5 -> 0
        assert_eq!(center_crop_offset(227, 224), 2); // 1.5 -> 2
        assert_eq!(center_crop_offset(229, 224), 2); // 2.5 -> 2
        assert_eq!(center_crop_offset(224, 224), 0);
    }

    #[test]
    fn normalisation_matches_the_specs_range() {
        let img = RgbImage {
            width: 224,
            height: 224,
            planes: [vec![0; 224 * 224], vec![255; 224 * 224], vec![0; 224 * 224]],
        };
        let t = transform_image(&img);
        assert!((t[0] - -1.792_262_6).abs() < 1e-6);
        assert!((t[224 * 224] - 2.074_883_7).abs() < 1e-6);
    }
}
