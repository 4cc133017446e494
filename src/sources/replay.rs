//! `type = "replay"`: plays recorded files at their real pace, optionally looping.
//!
//! | modality | files | pace |
//! |---|---|---|
//! | vision | a video (anything FFmpeg reads), or images (PNG/JPEG) | the video's frame rate; `rate_hz` images per second |
//! | audio | WAV/FLAC/Ogg Vorbis (first channel) | the file's sample rate, in 20 ms blocks |
//! | depth | 16-bit PNG (mm) or `.npy` (m) | `rate_hz` |
//! | thermal | 8/16-bit PNG or JPEG | `rate_hz` |
//! | imu | CSV/TSV ([preprocess.imu] says how to read it) | the file's own timing |
//! | text | text files, one item per line | `rate_hz` lines per second |
//!
//! Samples are stamped with the monotonic clock when they are emitted. A file that cannot be read is logged,
//! counted and skipped; the source fails only when no file can be read at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{FrameImage, Pacer, Sample, Source, SourceError, SourceOutput, StopFlag};
use crate::clock::{self, Timestamp};
use crate::modality::Modality;
use crate::preprocess::{self, MediaKind, PreprocessConfig, sniff_media};

/// Audio block length emitted by replay, in seconds.
const AUDIO_BLOCK_SECS: f64 = 0.02;

/// A replay source.
#[derive(Debug)]
pub struct ReplaySource {
    name: String,
    modality: Modality,
    files: Vec<PathBuf>,
    looping: bool,
    rate_hz: f64,
    preprocess: PreprocessConfig,
}

impl ReplaySource {
    /// A replay of `paths` (folders are expanded to their files, sorted).
    pub fn new(
        name: &str,
        modality: Modality,
        paths: &[PathBuf],
        looping: bool,
        rate_hz: Option<f64>,
        preprocess: PreprocessConfig,
    ) -> Result<Self, SourceError> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| SourceError {
                        source_name: name.into(),
                        reason: format!("cannot list {}: {e}", p.display()),
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                entries.sort();
                files.extend(entries);
            } else {
                files.push(p.clone());
            }
        }
        if files.is_empty() {
            return Err(SourceError {
                source_name: name.into(),
                reason: "no files to replay".into(),
            });
        }
        Ok(Self {
            name: name.into(),
            modality,
            files,
            looping,
            rate_hz: rate_hz.unwrap_or(1.0),
            preprocess,
        })
    }

    fn fail(&self, reason: impl Into<String>) -> SourceError {
        SourceError {
            source_name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Plays every file once; returns how many could be read.
    fn play_once(&self, out: &mut SourceOutput, stop: &StopFlag) -> usize {
        let mut ok = 0;
        let period = Duration::from_secs_f64(1.0 / self.rate_hz.max(1e-3));
        let pacer = Pacer::new();
        let mut item = 0u32;
        for file in &self.files {
            if stop.is_raised() {
                break;
            }
            let result = match self.modality {
                Modality::Vision | Modality::Depth | Modality::Thermal if !is_video(self.modality, file) => {
                    load_frame(self.modality, file, &self.preprocess).map(|image| {
                        if !pacer.wait_until(period * item, stop) {
                            out.push(Sample::Frame { t: clock::now(), image });
                        }
                        item += 1;
                    })
                }
                _ => self.play_paced(file, out, stop),
            };
            match result {
                Ok(()) => ok += 1,
                Err(e) => {
                    out.error();
                    tracing::warn!(component_id = %self.name, error = %e, "Skipping a file that cannot be replayed.");
                }
            }
        }
        // Hold the last still item for one period so that the sequence's pace holds across loops.
        if ok > 0 && item > 0 {
            let _stopped = pacer.wait_until(period * item, stop);
        }
        ok
    }

    /// Plays one recording (a video, audio, an IMU file, text lines) at its own pace: each sample is held until
    /// its offset from the file's start, then stamped with the clock.
    fn play_paced(&self, file: &Path, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), String> {
        let pacer = Pacer::new();
        read_samples(self.modality, file, &self.preprocess, self.rate_hz, &mut |sample| {
            if pacer.wait_until(Duration::from_nanos(sample.time().0), stop) {
                return false;
            }
            out.push(sample.with_time(clock::now()));
            true
        })
    }
}

/// One file's samples in order, each stamped with its offset from the file's start (no pacing, no clock): what a
/// replay of the file plays, and what `sensebind label --windows` cuts into windows. `emit` returns false to stop
/// early. A video gives its frames at its frame rate, audio 20 ms blocks of its first channel at its sample rate,
/// an IMU file its readings at its own times (from the first), a text file its non-empty lines every
/// `1 / rate_hz` seconds, and an image (vision, depth, thermal) one frame at 0. Errors name the file.
pub fn read_samples(
    modality: Modality,
    file: &Path,
    preprocess: &PreprocessConfig,
    rate_hz: f64,
    emit: &mut dyn FnMut(Sample) -> bool,
) -> Result<(), String> {
    let at = |offset: Duration| Timestamp(u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX));
    match modality {
        Modality::Audio => read_audio(file, emit),
        Modality::Imu => read_imu(file, preprocess, emit),
        Modality::Text => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let period = Duration::from_secs_f64(1.0 / rate_hz.max(1e-3));
            for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                let t = at(period * u32::try_from(i).unwrap_or(u32::MAX));
                if !emit(Sample::Text {
                    t,
                    text: line.to_owned(),
                }) {
                    break;
                }
            }
            Ok(())
        }
        Modality::Vision if is_video(modality, file) => read_video(file, emit),
        Modality::Vision | Modality::Depth | Modality::Thermal => {
            let image = load_frame(modality, file, preprocess)?;
            emit(Sample::Frame { t: Timestamp(0), image });
            Ok(())
        }
    }
}

fn load_frame(modality: Modality, file: &Path, preprocess: &PreprocessConfig) -> Result<FrameImage, String> {
    let name = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {name}: {e}"))?;
    let kind = sniff_media(&bytes[..bytes.len().min(64)], file);
    match modality {
        Modality::Vision => preprocess::image::decode_rgb(&bytes, &name)
            .map(|i| FrameImage::Rgb(Arc::new(i)))
            .map_err(|e| e.to_string()),
        Modality::Thermal => preprocess::image::decode_gray(&bytes, &name)
            .map(|i| FrameImage::Gray(Arc::new(i)))
            .map_err(|e| e.to_string()),
        Modality::Depth if kind == MediaKind::Npy => {
            let t = crate::npy::parse(&bytes, &name).map_err(|e| e.to_string())?;
            let (shape, data) = t.into_parts();
            let values = match data {
                crate::tensor::TensorData::F32(v) => v,
                crate::tensor::TensorData::I64(v) => v.into_iter().map(|x| x as f32).collect(),
            };
            preprocess::depth::from_npy(&shape, values, &name)
                .map(|d| FrameImage::Depth(Arc::new(d)))
                .map_err(|e| e.to_string())
        }
        Modality::Depth => {
            let g = preprocess::image::decode_gray(&bytes, &name).map_err(|e| e.to_string())?;
            let d = preprocess::depth::from_png_samples(g.width, g.height, &g.samples, &preprocess.depth);
            Ok(FrameImage::Depth(Arc::new(d)))
        }
        other => Err(format!("{name}: {other} files are not frames")),
    }
}

fn read_video(file: &Path, emit: &mut dyn FnMut(Sample) -> bool) -> Result<(), String> {
    let info = preprocess::video::probe(file).map_err(|e| e.to_string())?;
    let fps = info.fps.max(1e-3);
    let mut decoded = 0usize;
    preprocess::video::for_each_frame(file, info.width, info.height, |i, frame| {
        decoded += 1;
        emit(Sample::Frame {
            t: Timestamp((i as f64 / fps * 1e9).round() as u64),
            image: FrameImage::Rgb(Arc::new(frame)),
        })
    })
    .map_err(|e| e.to_string())?;
    if decoded == 0 {
        return Err(format!("{}: no frames", file.display()));
    }
    Ok(())
}

fn read_audio(file: &Path, emit: &mut dyn FnMut(Sample) -> bool) -> Result<(), String> {
    let name = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {name}: {e}"))?;
    let wave = preprocess::audio::decode(bytes, &name).map_err(|e| e.to_string())?;
    let rate = wave.sample_rate;
    let first = wave.channels.into_iter().next().unwrap_or_default();
    let block = ((f64::from(rate) * AUDIO_BLOCK_SECS).round() as usize).max(1);
    for (i, chunk) in first.chunks(block).enumerate() {
        let t = (i * block) as u128 * 1_000_000_000 / u128::from(rate.max(1));
        let sample = Sample::Audio {
            t: Timestamp(u64::try_from(t).unwrap_or(u64::MAX)),
            rate_hz: rate,
            samples: chunk.to_vec(),
        };
        if !emit(sample) {
            break;
        }
    }
    Ok(())
}

fn read_imu(file: &Path, preprocess: &PreprocessConfig, emit: &mut dyn FnMut(Sample) -> bool) -> Result<(), String> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {name}: {e}"))?;
    let rec = preprocess::imu::parse(&text, &preprocess.imu, &name).map_err(|e| e.to_string())?;
    let t0 = rec.time_s.first().copied().unwrap_or(0.0);
    for (i, &t) in rec.time_s.iter().enumerate() {
        let v = |c: usize| rec.channels[c][i];
        let sample = Sample::Imu {
            t: Timestamp(((t - t0).max(0.0) * 1e9).round() as u64),
            values: [v(0), v(1), v(2), v(3), v(4), v(5)],
        };
        if !emit(sample) {
            break;
        }
    }
    Ok(())
}

/// Whether a vision file is a video (anything but PNG, JPEG and `.npy`); other modalities have no videos.
fn is_video(modality: Modality, file: &Path) -> bool {
    if modality != Modality::Vision {
        return false;
    }
    let mut head = [0u8; 64];
    let n = std::fs::File::open(file)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    !matches!(
        sniff_media(&head[..n], file),
        MediaKind::Png | MediaKind::Jpeg | MediaKind::Npy
    )
}

impl Source for ReplaySource {
    fn run(&mut self, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), SourceError> {
        loop {
            let played = self.play_once(out, stop);
            if stop.is_raised() {
                return Ok(());
            }
            if played == 0 {
                return Err(self.fail("none of the files could be replayed"));
            }
            if !self.looping {
                return Ok(());
            }
        }
    }
}
