//! Evidence file formats, encoded in-process (no child process, nothing that can stall the daemon):
//!
//! | what | format |
//! |---|---|
//! | vision snapshot | baseline JPEG (`jpeg-encoder`) |
//! | vision clip | MJPEG in AVI (RIFF, one `00dc` chunk per frame, `idx1` index) at a constant rate: each tick of the rate shows the newest frame captured by then, so gaps and drops keep real time |
//! | audio clip | WAV, 16-bit PCM, the device rate, one channel (the channel the daemon captures) |
//! | depth, thermal snapshot | false-colour PNG (8-bit RGB, [`INFERNO`] over the frame's valid range) and the raw 16-bit greyscale PNG |
//! | IMU clip | CSV: capture time (monotonic ns and seconds from the clip start), acc xyz m/s², gyro xyz rad/s |

use crate::preprocess::depth::DepthMap;
use crate::preprocess::image::{GrayImage, RgbImage};

/// Why a file could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The JPEG encoder refused the image.
    #[error("cannot encode JPEG: {0}")]
    Jpeg(String),
    /// The PNG encoder refused the image.
    #[error("cannot encode PNG: {0}")]
    Png(String),
    /// Too large for the format.
    #[error("{0}")]
    TooLarge(String),
}

/// The colour map of false-colour PNGs: matplotlib's `inferno` at 0, ¼, ½, ¾ and 1, linearly interpolated.
pub const INFERNO: [[u8; 3]; 5] = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

/// An RGB image as baseline JPEG.
pub fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, MediaError> {
    let (w, h) = dims16(img.width, img.height)?;
    let n = img.width * img.height;
    let mut rgb = Vec::with_capacity(n * 3);
    for i in 0..n {
        rgb.extend([img.planes[0][i], img.planes[1][i], img.planes[2][i]]);
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
        .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| MediaError::Jpeg(e.to_string()))?;
    Ok(out)
}

fn dims16(width: usize, height: usize) -> Result<(u16, u16), MediaError> {
    match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(MediaError::TooLarge(format!(
            "a {width}x{height} image cannot be a JPEG"
        ))),
    }
}

fn u32_of(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// MJPEG frames (each a JPEG of `width`×`height`) in an AVI at `fps` frames per second.
pub fn avi_mjpeg(frames: &[&[u8]], width: usize, height: usize, fps: f64) -> Vec<u8> {
    let scale: u32 = 1000;
    let rate = (fps * 1000.0).round().clamp(1.0, f64::from(u32::MAX)) as u32;
    let n = u32_of(frames.len());
    let largest = u32_of(frames.iter().map(|f| f.len()).max().unwrap_or(0));
    let (w, h) = (u32_of(width), u32_of(height));
    let mut avih = Vec::with_capacity(56);
    let us_per_frame = (1e6 / fps.max(1e-3)).round() as u32;
    for v in [
        us_per_frame,
        largest.saturating_mul(rate / scale + 1),
        0,
        0x10,
        n,
        0,
        1,
        largest,
        w,
        h,
        0,
        0,
        0,
        0,
    ] {
        avih.extend(v.to_le_bytes());
    }
    let mut strh = Vec::with_capacity(56);
    strh.extend(b"vidsMJPG");
    strh.extend(0u32.to_le_bytes()); // flags
    strh.extend(0u32.to_le_bytes()); // priority, language
    for v in [0, scale, rate, 0, n, largest, u32::MAX, 0] {
        strh.extend(v.to_le_bytes());
    }
    for v in [0u16, 0, w as u16, h as u16] {
        strh.extend(v.to_le_bytes());
    }
    let mut strf = Vec::with_capacity(40);
    strf.extend(40u32.to_le_bytes());
    strf.extend(w.to_le_bytes());
    strf.extend(h.to_le_bytes());
    strf.extend(1u16.to_le_bytes());
    strf.extend(24u16.to_le_bytes());
    strf.extend(b"MJPG");
    for v in [w.saturating_mul(h).saturating_mul(3), 0, 0, 0, 0] {
        strf.extend(v.to_le_bytes());
    }
    let strl = list(b"strl", &[chunk(b"strh", &strh), chunk(b"strf", &strf)].concat());
    let hdrl = list(b"hdrl", &[chunk(b"avih", &avih), strl].concat());
    let mut movi = Vec::new();
    let mut idx = Vec::with_capacity(frames.len() * 16);
    for f in frames {
        // Offsets count from the `movi` fourcc.
        let offset = u32_of(movi.len() + 4);
        idx.extend(b"00dc");
        idx.extend(0x10u32.to_le_bytes());
        idx.extend(offset.to_le_bytes());
        idx.extend(u32_of(f.len()).to_le_bytes());
        movi.extend(chunk(b"00dc", f));
    }
    let body = [b"AVI ".to_vec(), hdrl, list(b"movi", &movi), chunk(b"idx1", &idx)].concat();
    chunk(b"RIFF", &body)
}

fn chunk(id: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 9);
    out.extend(id);
    out.extend(u32_of(data.len()).to_le_bytes());
    out.extend(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn list(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    chunk(b"LIST", &[kind.as_slice(), data].concat())
}

/// Samples in [-1, 1] as a 16-bit PCM WAV of one channel at `rate_hz`.
pub fn wav(samples: &[f32], rate_hz: u32) -> Vec<u8> {
    let data_len = u32_of(samples.len() * 2);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend(b"RIFF");
    out.extend(data_len.saturating_add(36).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes()); // PCM
    out.extend(1u16.to_le_bytes()); // channels
    out.extend(rate_hz.to_le_bytes());
    out.extend(rate_hz.saturating_mul(2).to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(data_len.to_le_bytes());
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        out.extend(v.to_le_bytes());
    }
    out
}

fn png(
    width: usize,
    height: usize,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, u32_of(width), u32_of(height));
        enc.set_color(color);
        enc.set_depth(depth);
        // fdeflate's fast mode: about 3× less CPU than the default for depth and thermal frames (docs/BENCHMARKS.md).
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().map_err(|e| MediaError::Png(e.to_string()))?;
        w.write_image_data(data).map_err(|e| MediaError::Png(e.to_string()))?;
        w.finish().map_err(|e| MediaError::Png(e.to_string()))?;
    }
    Ok(out)
}

/// 16-bit samples as a greyscale 16-bit PNG (the values exactly).
pub fn png_gray16(width: usize, height: usize, samples: &[u16]) -> Result<Vec<u8>, MediaError> {
    let bytes: Vec<u8> = samples.iter().flat_map(|v| v.to_be_bytes()).collect();
    png(width, height, png::ColorType::Grayscale, png::BitDepth::Sixteen, &bytes)
}

/// A depth map's raw values: metres divided by `unit_m` (the sensor's unit), rounded; unknown depth is 0.
pub fn depth_raw(d: &DepthMap, unit_m: f64) -> Vec<u16> {
    let unit = if unit_m > 0.0 { unit_m } else { 0.001 };
    d.metres
        .iter()
        .map(|&m| {
            if m.is_finite() && m > 0.0 {
                (f64::from(m) / unit).round().clamp(0.0, 65535.0) as u16
            } else {
                0
            }
        })
        .collect()
}

/// The colour of `x` in [0, 1] on [`INFERNO`].
pub fn inferno(x: f32) -> [u8; 3] {
    let x = if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.0 };
    let pos = x * (INFERNO.len() - 1) as f32;
    let i = (pos.floor() as usize).min(INFERNO.len() - 2);
    let f = pos - i as f32;
    let (a, b) = (INFERNO[i], INFERNO[i + 1]);
    std::array::from_fn(|c| (f32::from(a[c]) + (f32::from(b[c]) - f32::from(a[c])) * f).round() as u8)
}

/// Values as a false-colour PNG: [`INFERNO`] from the smallest valid value (dark) to the largest (bright); invalid
/// values (`valid` false) are black. Returns the PNG and the range used.
pub fn false_colour(
    width: usize,
    height: usize,
    values: &[f32],
    valid: impl Fn(f32) -> bool,
) -> Result<(Vec<u8>, [f32; 2]), MediaError> {
    let (lo, hi) = values
        .iter()
        .filter(|v| valid(**v))
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 0.0) };
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut rgb = Vec::with_capacity(values.len() * 3);
    for &v in values {
        rgb.extend(if valid(v) { inferno((v - lo) / span) } else { [0, 0, 0] });
    }
    let out = png(width, height, png::ColorType::Rgb, png::BitDepth::Eight, &rgb)?;
    Ok((out, [lo, hi]))
}

/// A frame's false-colour PNG, the value range it maps, and its raw 16-bit PNG.
pub type FramePngs = (Vec<u8>, [f32; 2], Vec<u8>);

/// A depth frame: (false-colour PNG and its range in metres, raw PNG in the sensor's unit).
pub fn depth_pngs(d: &DepthMap, unit_m: f64) -> Result<FramePngs, MediaError> {
    let (colour, range) = false_colour(d.width, d.height, &d.metres, |m| m.is_finite() && m > 0.0)?;
    let raw = png_gray16(d.width, d.height, &depth_raw(d, unit_m))?;
    Ok((colour, range, raw))
}

/// A thermal frame: (false-colour PNG and its range in raw units, raw PNG of the stored samples).
pub fn thermal_pngs(g: &GrayImage) -> Result<FramePngs, MediaError> {
    let values: Vec<f32> = g.samples.iter().map(|&v| f32::from(v)).collect();
    let (colour, range) = false_colour(g.width, g.height, &values, |_| true)?;
    let raw = png_gray16(g.width, g.height, &g.samples)?;
    Ok((colour, range, raw))
}

/// IMU readings (capture time, six channels) as CSV.
pub fn imu_csv(readings: &[(u64, [f32; 6])]) -> Vec<u8> {
    let mut out = String::with_capacity(64 + readings.len() * 96);
    out.push_str("t_mono_ns,t_s,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n");
    let t0 = readings.first().map_or(0, |r| r.0);
    for (t, v) in readings {
        let s = t.saturating_sub(t0) as f64 / 1e9;
        out.push_str(&format!(
            "{t},{s:.6},{},{},{},{},{},{}\n",
            v[0], v[1], v[2], v[3], v[4], v[5]
        ));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_decodes_back_to_the_size() {
        let img = RgbImage {
            width: 32,
            height: 16,
            planes: [vec![200; 512], vec![10; 512], vec![30; 512]],
        };
        let bytes = jpeg(&img, 80).unwrap();
        let decoded = crate::preprocess::image::decode_rgb(&bytes, "t.jpg").unwrap();
        assert_eq!((decoded.width, decoded.height), (32, 16));
        assert!((i32::from(decoded.planes[0][100]) - 200).abs() < 8);
    }

    #[test]
    fn raw_png_keeps_sixteen_bit_values() {
        let samples: Vec<u16> = (0..12).map(|i| i * 5000).collect();
        let bytes = png_gray16(4, 3, &samples).unwrap();
        let g = crate::preprocess::image::decode_gray(&bytes, "t.png").unwrap();
        assert_eq!(g.samples, samples);
    }

    #[test]
    fn wav_header_names_rate_and_length() {
        let w = wav(&[0.0, 0.5, -1.0], 44_100);
        assert_eq!(&w[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(w[24..28].try_into().unwrap()), 44_100);
        assert_eq!(w.len(), 44 + 6);
        assert_eq!(i16::from_le_bytes([w[46], w[47]]), 16384);
    }

    #[test]
    fn inferno_ends_and_middle() {
        assert_eq!(inferno(0.0), INFERNO[0]);
        assert_eq!(inferno(1.0), INFERNO[4]);
        assert_eq!(inferno(0.5), INFERNO[2]);
    }

    #[test]
    fn avi_is_a_riff_with_an_index() {
        let f = [1u8, 2, 3];
        let avi = avi_mjpeg(&[&f, &f], 2, 2, 10.0);
        assert_eq!(&avi[0..4], b"RIFF");
        assert_eq!(&avi[8..12], b"AVI ");
        assert_eq!(
            u32::from_le_bytes(avi[4..8].try_into().unwrap()) as usize,
            avi.len() - 8
        );
        assert!(avi.windows(4).any(|w| w == b"idx1"));
    }
}
