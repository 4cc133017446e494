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
use crate::clock;
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
                Modality::Audio => self.play_audio(file, out, stop),
                Modality::Imu => self.play_imu(file, out, stop),
                Modality::Vision if is_video(file) => self.play_video(file, out, stop),
                Modality::Text => self.play_text(file, out, stop, period),
                _ => self.load_frame(file).map(|image| {
                    if !pacer.wait_until(period * item, stop) {
                        out.push(Sample::Frame { t: clock::now(), image });
                    }
                    item += 1;
                }),
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

    fn load_frame(&self, file: &Path) -> Result<FrameImage, String> {
        let name = file.display().to_string();
        let bytes = std::fs::read(file).map_err(|e| format!("cannot read {name}: {e}"))?;
        let kind = sniff_media(&bytes[..bytes.len().min(64)], file);
        match self.modality {
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
                let d = preprocess::depth::from_png_samples(g.width, g.height, &g.samples, &self.preprocess.depth);
                Ok(FrameImage::Depth(Arc::new(d)))
            }
            other => Err(format!("{other} files are not frames")),
        }
    }

    fn play_video(&self, file: &Path, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), String> {
        let info = preprocess::video::probe(file).map_err(|e| e.to_string())?;
        let pacer = Pacer::new();
        let fps = info.fps.max(1e-3);
        let mut pushed = 0usize;
        preprocess::video::for_each_frame(file, info.width, info.height, |i, frame| {
            if pacer.wait_until(Duration::from_secs_f64(i as f64 / fps), stop) {
                return false;
            }
            out.push(Sample::Frame {
                t: clock::now(),
                image: FrameImage::Rgb(Arc::new(frame)),
            });
            pushed += 1;
            true
        })
        .map_err(|e| e.to_string())?;
        if pushed == 0 && !stop.is_raised() {
            return Err(format!("{}: no frames", file.display()));
        }
        Ok(())
    }

    fn play_audio(&self, file: &Path, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), String> {
        let name = file.display().to_string();
        let bytes = std::fs::read(file).map_err(|e| format!("cannot read {name}: {e}"))?;
        let wave = preprocess::audio::decode(bytes, &name).map_err(|e| e.to_string())?;
        let rate = wave.sample_rate;
        let first = wave.channels.into_iter().next().unwrap_or_default();
        let block = ((f64::from(rate) * AUDIO_BLOCK_SECS).round() as usize).max(1);
        let pacer = Pacer::new();
        for (i, chunk) in first.chunks(block).enumerate() {
            let due = Duration::from_secs_f64((i * block) as f64 / f64::from(rate));
            if pacer.wait_until(due, stop) {
                break;
            }
            out.push(Sample::Audio {
                t: clock::now(),
                rate_hz: rate,
                samples: chunk.to_vec(),
            });
        }
        Ok(())
    }

    fn play_imu(&self, file: &Path, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), String> {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {name}: {e}"))?;
        let rec = preprocess::imu::parse(&text, &self.preprocess.imu, &name).map_err(|e| e.to_string())?;
        let t0 = rec.time_s.first().copied().unwrap_or(0.0);
        let pacer = Pacer::new();
        for (i, &t) in rec.time_s.iter().enumerate() {
            if pacer.wait_until(Duration::from_secs_f64((t - t0).max(0.0)), stop) {
                break;
            }
            let v = |c: usize| rec.channels[c][i];
            out.push(Sample::Imu {
                t: clock::now(),
                values: [v(0), v(1), v(2), v(3), v(4), v(5)],
            });
        }
        Ok(())
    }

    fn play_text(&self, file: &Path, out: &mut SourceOutput, stop: &StopFlag, period: Duration) -> Result<(), String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let pacer = Pacer::new();
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            if pacer.wait_until(period * i as u32, stop) {
                break;
            }
            out.push(Sample::Text {
                t: clock::now(),
                text: line.to_owned(),
            });
        }
        Ok(())
    }
}

fn is_video(file: &Path) -> bool {
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
