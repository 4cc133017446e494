//! Video: decoding through FFmpeg and ImageBind's `load_and_transform_video_data`.
//!
//! **Decoder.** ImageBind reads video with decord, which is FFmpeg (libavcodec + swscale to RGB24). sensebind runs
//! the `ffmpeg` and `ffprobe` programs as child processes and reads raw RGB24 frames from a pipe:
//! - the frames are bit-identical to decord's (checked on H.264 High and High 4:4:4 files: max difference 0),
//!   which a bundled decoder would not give (OpenH264, the usual choice from Rust, cannot decode High 4:4:4,
//!   the profile of one of our two sample files, nor HEVC, VP9 or AV1);
//! - every container and codec FFmpeg knows works (MP4/MKV/WebM/AVI; H.264/HEVC/VP9/AV1/MJPEG...);
//! - a corrupt or hostile file can crash or hang only the child, never the daemon, and costs no build time or
//!   unsafe code here. The price is a runtime dependency on FFmpeg (Debian/Ubuntu/JetPack: `apt install ffmpeg`)
//!   and one process start per file.
//!
//! **Transform** (pytorchvideo at ImageBind's pinned commit): duration `frames / avg_fps`; 5 clips of 2 s at
//! starts `i · max(d − 2, 0) / 4`; a clip holds frames `ceil(fps·start) .. min(ceil(fps·end), frames)` and keeps
//! the first and the last (`UniformTemporalSubsample(2)`); `/255`; short side to 224 with bilinear interpolation
//! *without* antialiasing (`floor` of the long side); CLIP mean/std; 3 crops of 224 at offsets 0, `ceil((L−224)/2)`
//! and `L − 224` along the long side → `[15, 3, 2, 224, 224]` (clip-major).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use super::PreprocessError;
use super::image::{CLIP_MEAN, CLIP_STD, IMAGE_SIZE, RgbImage};
use super::resample::torch_bilinear;

/// Clips per video (ImageBind's default).
pub const CLIPS: usize = 5;
/// Seconds per clip.
pub const CLIP_SECS: u32 = 2;
/// Frames kept per clip (first and last).
pub const FRAMES_PER_CLIP: usize = 2;
/// Spatial crops per clip.
pub const CROPS: usize = 3;
/// Largest frame accepted (pixels).
const MAX_PIXELS: usize = 1 << 26;

/// What ffprobe says about the first video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Average frame rate (decord's `get_avg_fps`).
    pub fps: f64,
    /// Frame count (decord's `len`: the container's count, else counted by decoding).
    pub frames: usize,
}

fn ffmpeg() -> String {
    std::env::var("SENSEBIND_FFMPEG").unwrap_or_else(|_| "ffmpeg".into())
}

fn ffprobe() -> String {
    std::env::var("SENSEBIND_FFPROBE").unwrap_or_else(|_| "ffprobe".into())
}

fn tool_error(path: &str, tool: &str, e: &std::io::Error) -> PreprocessError {
    let reason = if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "cannot decode video: `{tool}` was not found; install FFmpeg (Debian/Ubuntu: apt-get install ffmpeg) or \
             point SENSEBIND_FFMPEG/SENSEBIND_FFPROBE at it"
        )
    } else {
        format!("cannot run `{tool}`: {e}")
    };
    PreprocessError::Tool {
        path: path.to_owned(),
        reason,
    }
}

fn parse_rate(s: &str) -> Option<f64> {
    let (n, d) = s.split_once('/').unwrap_or((s, "1"));
    let (n, d): (f64, f64) = (n.trim().parse().ok()?, d.trim().parse().ok()?);
    (d != 0.0 && n > 0.0).then(|| n / d)
}

/// Reads the first video stream's size, average frame rate and frame count with ffprobe.
pub fn probe(path: &Path) -> Result<VideoInfo, PreprocessError> {
    let name = path.display().to_string();
    let out = Command::new(ffprobe())
        .args(["-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool_error(&name, "ffprobe", &e))?;
    if !out.status.success() {
        return Err(PreprocessError::decode(
            &name,
            format!("not a readable video: {}", stderr_tail(&out.stderr)),
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| PreprocessError::decode(&name, format!("ffprobe printed unreadable output: {e}")))?;
    let stream = doc["streams"]
        .as_array()
        .and_then(|s| s.first())
        .ok_or_else(|| PreprocessError::invalid(&name, "the file has no video stream"))?;
    let dim = |k: &str| stream[k].as_u64().map(|v| v as usize).filter(|&v| v > 0);
    let (width, height) = match (dim("width"), dim("height")) {
        (Some(w), Some(h)) if w * h <= MAX_PIXELS => (w, h),
        (Some(w), Some(h)) => {
            return Err(PreprocessError::invalid(
                &name,
                format!("frames of {w}x{h} are too large"),
            ));
        }
        _ => {
            return Err(PreprocessError::invalid(
                &name,
                "the video stream declares no frame size",
            ));
        }
    };
    let fps = stream["avg_frame_rate"]
        .as_str()
        .and_then(parse_rate)
        .or_else(|| stream["r_frame_rate"].as_str().and_then(parse_rate))
        .ok_or_else(|| PreprocessError::invalid(&name, "the video stream declares no frame rate"))?;
    let declared = stream["nb_frames"]
        .as_str()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0);
    let frames = match declared {
        Some(n) => n,
        None => count_frames(path, width, height)?,
    };
    if frames == 0 {
        return Err(PreprocessError::invalid(&name, "the video has no frames"));
    }
    Ok(VideoInfo {
        width,
        height,
        fps,
        frames,
    })
}

fn count_frames(path: &Path, width: usize, height: usize) -> Result<usize, PreprocessError> {
    let mut n = 0;
    decode_stream(path, width, height, |_, _| {
        n += 1;
        true
    })?;
    Ok(n)
}

fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() { "no details".into() } else { tail }
}

/// Decodes every frame to RGB24 and hands it to `on_frame(index, bytes)` until it returns false.
fn decode_stream(
    path: &Path,
    width: usize,
    height: usize,
    mut on_frame: impl FnMut(usize, &[u8]) -> bool,
) -> Result<usize, PreprocessError> {
    let name = path.display().to_string();
    let mut child = Command::new(ffmpeg())
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:v:0",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-vsync",
            "passthrough",
            "-",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(&name, "ffmpeg", &e))?;
    let frame_bytes = width * height * 3;
    let mut buf = vec![0u8; frame_bytes];
    let mut index = 0;
    let mut stopped_early = false;
    if let Some(mut stdout) = child.stdout.take() {
        loop {
            match stdout.read_exact(&mut buf) {
                Ok(()) => {
                    let keep_going = on_frame(index, &buf);
                    index += 1;
                    if !keep_going {
                        stopped_early = true;
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    reap(&mut child, &name);
                    return Err(PreprocessError::Io { path: name, cause: e });
                }
            }
        }
    }
    if stopped_early {
        // We have what we need; the decoder's remaining work is wasted.
        reap(&mut child, &name);
        return Ok(index);
    }
    let mut stderr = Vec::new();
    if let Some(Err(e)) = child.stderr.take().map(|mut s| s.read_to_end(&mut stderr)) {
        tracing::debug!(path = %name, error = %e, "Cannot read ffmpeg's messages.");
    }
    let status = child.wait().map_err(|e| tool_error(&name, "ffmpeg", &e))?;
    if !status.success() && index == 0 {
        return Err(PreprocessError::decode(
            &name,
            format!("ffmpeg cannot decode it: {}", stderr_tail(&stderr)),
        ));
    }
    Ok(index)
}

/// Stops a child process and collects its exit status, so no zombie is left behind.
fn reap(child: &mut std::process::Child, name: &str) {
    if let Err(e) = child.kill() {
        tracing::debug!(path = %name, error = %e, "ffmpeg had already exited.");
    }
    if let Err(e) = child.wait() {
        tracing::debug!(path = %name, error = %e, "Cannot collect ffmpeg's exit status.");
    }
}

/// Decodes every frame of the first video stream in order, handing each to `on_frame(index, frame)` until it
/// returns false (used by the replay source, which paces frames in real time). Returns the frames delivered.
pub fn for_each_frame(
    path: &Path,
    width: usize,
    height: usize,
    mut on_frame: impl FnMut(usize, RgbImage) -> bool,
) -> Result<usize, PreprocessError> {
    decode_stream(path, width, height, |i, bytes| {
        on_frame(i, rgb_from_interleaved(bytes, width, height))
    })
}

/// The (first, last) frame index of each clip, as decord/pytorchvideo pick them.
pub fn clip_frames(fps: f64, frames: usize, clip_secs: u32, clips: usize) -> Result<Vec<(usize, usize)>, String> {
    let duration = frames as f64 / fps;
    let max_start = (duration - f64::from(clip_secs)).max(0.0);
    let divisor = clips.saturating_sub(1).max(1);
    (0..clips)
        .map(|i| {
            // float(Fraction(max_start) * i / divisor): exact when the divisor is a power of two (5 and 3 clips).
            let start = max_start * i as f64 / divisor as f64;
            let end = start + f64::from(clip_secs);
            let first = (fps * start).ceil() as usize;
            let stop = ((fps * end).ceil() as usize).min(frames);
            if stop <= first {
                return Err(format!(
                    "clip {i} ({start:.3}–{end:.3} s) holds no frame of the {frames} at {fps:.3} fps"
                ));
            }
            Ok((first, stop - 1))
        })
        .collect()
}

/// Decodes the frames ImageBind uses for each of its clips.
pub fn decode_clip_frames(path: &Path, info: &VideoInfo) -> Result<Vec<[RgbImage; 2]>, PreprocessError> {
    let name = path.display().to_string();
    let picks = clip_frames(info.fps, info.frames, CLIP_SECS, CLIPS).map_err(|r| PreprocessError::invalid(&name, r))?;
    let wanted: BTreeSet<usize> = picks.iter().flat_map(|&(a, b)| [a, b]).collect();
    let last_wanted = wanted.iter().next_back().copied().unwrap_or(0);
    let mut got: BTreeMap<usize, RgbImage> = BTreeMap::new();
    let (w, h) = (info.width, info.height);
    decode_stream(path, w, h, |i, bytes| {
        if wanted.contains(&i) {
            got.insert(i, rgb_from_interleaved(bytes, w, h));
        }
        i < last_wanted
    })?;
    picks
        .iter()
        .map(|&(a, b)| match (got.get(&a), got.get(&b)) {
            (Some(fa), Some(fb)) => Ok([fa.clone(), fb.clone()]),
            _ => Err(PreprocessError::decode(
                &name,
                format!(
                    "the stream ended before frame {}; the container declares {} frames",
                    a.max(b),
                    info.frames
                ),
            )),
        })
        .collect()
}

/// Interleaved RGB24 → planar.
pub fn rgb_from_interleaved(bytes: &[u8], width: usize, height: usize) -> RgbImage {
    let n = width * height;
    let mut planes = [vec![0u8; n], vec![0u8; n], vec![0u8; n]];
    for (i, px) in bytes.chunks_exact(3).take(n).enumerate() {
        planes[0][i] = px[0];
        planes[1][i] = px[1];
        planes[2][i] = px[2];
    }
    RgbImage { width, height, planes }
}

/// pytorchvideo `ShortSideScale(224)` output size: (width, height).
pub fn short_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    if width < height {
        (size, (height as f64 / width as f64 * size as f64).floor() as usize)
    } else {
        ((width as f64 / height as f64 * size as f64).floor() as usize, size)
    }
}

/// Which of ImageBind's three spatial crops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// Left (landscape) or top (portrait).
    Start,
    /// Centre, offset `ceil((L − 224) / 2)`.
    Center,
    /// Right or bottom.
    End,
}

/// Transforms a 2-frame clip into `crops.len()` tensors of `[3, 2, 224, 224]` (concatenated).
pub fn transform_clip(frames: &[RgbImage; 2], crops: &[Crop]) -> Vec<f32> {
    let (w, h) = (frames[0].width, frames[0].height);
    let (nw, nh) = short_side_size(w, h, IMAGE_SIZE);
    // [c][t] planes after /255, scaling and normalisation.
    let mut planes: Vec<Vec<f32>> = Vec::with_capacity(6);
    for c in 0..3 {
        for frame in frames {
            let scaled: Vec<f32> = frame.planes[c].iter().map(|&v| f32::from(v) / 255.0).collect();
            let resized = torch_bilinear(&scaled, w, h, nw, nh);
            planes.push(resized.into_iter().map(|v| (v - CLIP_MEAN[c]) / CLIP_STD[c]).collect());
        }
    }
    let mut out = Vec::with_capacity(crops.len() * 6 * IMAGE_SIZE * IMAGE_SIZE);
    for &crop in crops {
        let center_y = (nh.saturating_sub(IMAGE_SIZE) as f64 / 2.0).ceil() as usize;
        let center_x = (nw.saturating_sub(IMAGE_SIZE) as f64 / 2.0).ceil() as usize;
        let (y0, x0) = match (crop, nh > nw) {
            (Crop::Start, true) => (0, center_x),
            (Crop::End, true) => (nh - IMAGE_SIZE, center_x),
            (Crop::Start, false) => (center_y, 0),
            (Crop::End, false) => (center_y, nw - IMAGE_SIZE),
            (Crop::Center, _) => (center_y, center_x),
        };
        for plane in &planes {
            for y in y0..y0 + IMAGE_SIZE {
                out.extend_from_slice(&plane[y * nw + x0..y * nw + x0 + IMAGE_SIZE]);
            }
        }
    }
    out
}

/// ImageBind's video loader for one file → `[15, 3, 2, 224, 224]` values.
pub fn load_video(path: &Path) -> Result<Vec<f32>, PreprocessError> {
    let info = probe(path)?;
    let clips = decode_clip_frames(path, &info)?;
    let mut out = Vec::with_capacity(CLIPS * CROPS * 6 * IMAGE_SIZE * IMAGE_SIZE);
    for frames in &clips {
        out.extend(transform_clip(frames, &[Crop::Start, Crop::Center, Crop::End]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_frames_follow_decord_indices() {
        // carphone: 120 frames at 29.97 fps → 4.004 s; max start 2.004 s; step 0.501 s.
        let picks = clip_frames(30000.0 / 1001.0, 120, 2, 5).unwrap();
        // Python: [(ceil(fps*s), min(ceil(fps*(s+2)), 120) - 1) for s in starts]
        assert_eq!(picks, vec![(0, 59), (16, 74), (31, 89), (46, 104), (61, 119)]);
        // A 1 s video: every clip is [0, 2) → all frames.
        assert_eq!(clip_frames(10.0, 10, 2, 5).unwrap(), vec![(0, 9); 5]);
    }

    #[test]
    fn short_side_scale_floors_the_long_side() {
        assert_eq!(short_side_size(176, 144, 224), (273, 224)); // floor(273.77)
        assert_eq!(short_side_size(720, 1280, 224), (224, 398)); // floor(398.22)
        assert_eq!(short_side_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn crops_cover_start_center_end() {
        let frame = RgbImage {
            width: 300,
            height: 224,
            planes: [
                (0..300 * 224).map(|i| (i % 300) as u8).collect(),
                vec![0; 300 * 224],
                vec![0; 300 * 224],
            ],
        };
        let out = transform_clip(&[frame.clone(), frame], &[Crop::Start, Crop::Center, Crop::End]);
        let per_crop = 6 * IMAGE_SIZE * IMAGE_SIZE;
        assert_eq!(out.len(), 3 * per_crop);
        let red = |crop: usize, x: usize| out[crop * per_crop + x] * CLIP_STD[0] + CLIP_MEAN[0];
        assert!((red(0, 0) - 0.0).abs() < 1e-5);
        assert!((red(1, 0) - 38.0 / 255.0).abs() < 1e-5); // ceil((300-224)/2) = 38
        assert!((red(2, 0) - 76.0 / 255.0).abs() < 1e-5);
    }
}
