//! Windows: the slices of each sensor stream that go through an encoder.
//!
//! A [`Windower`] turns the samples of one source into [`RawWindow`]s; [`prepare`] turns a raw window into the
//! tower's input tensor with the preprocessing of `crate::preprocess`. Windows are defined by the samples'
//! timestamps and counts, never by how samples were chunked on arrival, so feeding a recording in any chunking
//! yields the same windows (a property test checks this).
//!
//! | modality | window | emitted |
//! |---|---|---|
//! | vision | the first and the last frame in `[end − window, end)` (ImageBind's 2 frames per clip) | when a frame at or after `end` arrives |
//! | audio | the last `window_secs · rate` samples, at the device rate (resampled to 16 kHz in `prepare`) | every `hop_secs · rate` samples |
//! | imu | the samples in `[end − window, end)`, resampled to 2000 points | when a sample at or after `end` arrives |
//! | depth, thermal | the first frame at or after each hop boundary, as it arrives | once per hop, if a frame arrived |
//! | text | each line | at once |
//!
//! Window ends lie on a grid anchored at the first sample: `first + window + k · hop` (depth and thermal:
//! `first + k · hop`).

pub mod gate;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::clock::Timestamp;
use crate::modality::Modality;
use crate::preprocess::text::Tokenizer;
use crate::preprocess::{self, PreprocessConfig};
use crate::sources::{FrameImage, Sample};
use crate::tensor::Tensor;

/// Window settings are part of each source's configuration (`sources::config`); re-exported here, where they
/// are used.
pub use crate::sources::config::WindowSpec;

/// A window's samples before preprocessing.
#[derive(Debug, Clone)]
pub enum RawWindowData {
    /// Two frames (first and last of the window).
    Clip([FrameImage; 2]),
    /// One frame (depth, thermal).
    Frame(FrameImage),
    /// Audio at the device rate.
    Audio {
        /// Samples per second.
        rate_hz: u32,
        /// The samples.
        samples: Vec<f32>,
    },
    /// IMU readings with their times, seconds from the window start.
    Imu {
        /// Times in seconds from `t0`.
        time_s: Vec<f64>,
        /// acc xyz, gyro xyz per reading.
        values: Vec<[f32; 6]>,
        /// The window length in seconds.
        window_secs: f64,
    },
    /// A text line.
    Text(String),
}

/// A window before preprocessing.
#[derive(Debug, Clone)]
pub struct RawWindow {
    /// Time of the window's first sample.
    pub t0: Timestamp,
    /// Time of the window's end (last sample, or the grid end).
    pub t1: Timestamp,
    /// The samples.
    pub data: RawWindowData,
}

/// Cuts one source's samples into windows.
pub trait Windower: Send {
    /// Feeds a sample; completed windows are appended to `out`.
    fn push(&mut self, sample: Sample, out: &mut Vec<RawWindow>);
}

/// The windower for a modality.
pub fn windower(modality: Modality, spec: WindowSpec) -> Box<dyn Windower> {
    match modality {
        Modality::Vision => Box::new(ClipWindower::new(spec)),
        Modality::Audio => Box::new(AudioWindower::new(spec)),
        Modality::Imu => Box::new(ImuWindower::new(spec)),
        Modality::Depth | Modality::Thermal => Box::new(HopFrameWindower::new(spec)),
        Modality::Text => Box::new(TextWindower),
    }
}

fn nanos(secs: f64) -> u64 {
    (secs * 1e9).round().max(0.0) as u64
}

/// vision: first and last frame per window.
#[derive(Debug)]
pub struct ClipWindower {
    window: u64,
    hop: u64,
    next_end: Option<u64>,
    /// Frames kept: for each pending window start, its first frame, plus the newest frame.
    frames: VecDeque<(Timestamp, FrameImage)>,
}

impl ClipWindower {
    fn new(spec: WindowSpec) -> Self {
        Self {
            window: nanos(spec.window_secs),
            hop: nanos(spec.hop_secs).max(1),
            next_end: None,
            frames: VecDeque::new(),
        }
    }

    /// Drops frames no pending window can use.
    fn prune(&mut self) {
        let Some(end) = self.next_end else { return };
        let earliest_start = end.saturating_sub(self.window);
        // Starts of windows not yet emitted: end - window + j*hop for j >= 0, up to the newest frame.
        let newest = self.frames.back().map_or(0, |f| f.0.0);
        let mut keep = vec![false; self.frames.len()];
        if let Some(last) = keep.last_mut() {
            *last = true;
        }
        let mut start = earliest_start;
        while start <= newest {
            if let Some(i) = self.frames.iter().position(|f| f.0.0 >= start) {
                keep[i] = true;
            }
            start += self.hop;
        }
        let mut i = 0;
        self.frames.retain(|_| {
            let k = keep[i];
            i += 1;
            k
        });
    }
}

impl Windower for ClipWindower {
    fn push(&mut self, sample: Sample, out: &mut Vec<RawWindow>) {
        let Sample::Frame { t, image } = sample else { return };
        let next_end = *self.next_end.get_or_insert(t.0 + self.window);
        let mut end = next_end;
        while t.0 >= end {
            let start = end.saturating_sub(self.window);
            let first = self.frames.iter().find(|f| f.0.0 >= start && f.0.0 < end);
            let last = self.frames.iter().rev().find(|f| f.0.0 >= start && f.0.0 < end);
            if let (Some(first), Some(last)) = (first, last) {
                out.push(RawWindow {
                    t0: first.0,
                    t1: last.0,
                    data: RawWindowData::Clip([first.1.clone(), last.1.clone()]),
                });
            }
            end += self.hop;
        }
        self.next_end = Some(end);
        self.frames.push_back((t, image));
        self.prune();
    }
}

/// depth and thermal: one frame per hop, the first to arrive at or after each hop boundary, emitted as it arrives
/// (no waiting for a later frame, so the window stage adds no latency). Boundaries sit on a grid anchored at the
/// first frame; a gap longer than a hop skips the empty hops rather than emitting stale frames.
#[derive(Debug)]
pub struct HopFrameWindower {
    hop: u64,
    next_start: Option<u64>,
}

impl HopFrameWindower {
    fn new(spec: WindowSpec) -> Self {
        Self {
            hop: nanos(spec.hop_secs).max(1),
            next_start: None,
        }
    }
}

impl Windower for HopFrameWindower {
    fn push(&mut self, sample: Sample, out: &mut Vec<RawWindow>) {
        let Sample::Frame { t, image } = sample else { return };
        let mut start = *self.next_start.get_or_insert(t.0);
        if t.0 < start {
            return;
        }
        out.push(RawWindow {
            t0: t,
            t1: t,
            data: RawWindowData::Frame(image),
        });
        while t.0 >= start {
            start += self.hop;
        }
        self.next_start = Some(start);
    }
}

/// audio: the last `window` samples every `hop` samples, by count.
#[derive(Debug)]
pub struct AudioWindower {
    spec: WindowSpec,
    rate_hz: u32,
    window_n: usize,
    hop_n: usize,
    /// The most recent samples (at most one window) and the time of the first of them.
    buffer: VecDeque<f32>,
    buffer_t0: Timestamp,
    /// Samples since the last window (or since the start).
    since_emit: usize,
    emitted_any: bool,
}

impl AudioWindower {
    fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            rate_hz: 0,
            window_n: 0,
            hop_n: 1,
            buffer: VecDeque::new(),
            buffer_t0: Timestamp(0),
            since_emit: 0,
            emitted_any: false,
        }
    }

    fn reset(&mut self, rate_hz: u32) {
        self.rate_hz = rate_hz;
        self.window_n = ((self.spec.window_secs * f64::from(rate_hz)).round() as usize).max(1);
        self.hop_n = ((self.spec.hop_secs * f64::from(rate_hz)).round() as usize).max(1);
        self.buffer.clear();
        self.since_emit = 0;
        self.emitted_any = false;
    }

    fn sample_time(&self, t0: Timestamp, i: usize) -> Timestamp {
        Timestamp(t0.0 + (i as u128 * 1_000_000_000 / u128::from(self.rate_hz.max(1))) as u64)
    }
}

impl Windower for AudioWindower {
    fn push(&mut self, sample: Sample, out: &mut Vec<RawWindow>) {
        let Sample::Audio { t, rate_hz, samples } = sample else {
            return;
        };
        if rate_hz != self.rate_hz {
            self.reset(rate_hz);
        }
        for (i, &x) in samples.iter().enumerate() {
            if self.buffer.len() == self.window_n {
                self.buffer.pop_front();
                self.buffer_t0 = Timestamp(self.buffer_t0.0 + 1_000_000_000 / u64::from(self.rate_hz.max(1)));
            }
            if self.buffer.is_empty() {
                self.buffer_t0 = self.sample_time(t, i);
            }
            self.buffer.push_back(x);
            self.since_emit += 1;
            let due = if self.emitted_any {
                self.since_emit >= self.hop_n
            } else {
                self.buffer.len() == self.window_n
            };
            if due && self.buffer.len() == self.window_n {
                out.push(RawWindow {
                    t0: self.buffer_t0,
                    t1: self.sample_time(t, i),
                    data: RawWindowData::Audio {
                        rate_hz: self.rate_hz,
                        samples: self.buffer.iter().copied().collect(),
                    },
                });
                self.since_emit = 0;
                self.emitted_any = true;
            }
        }
    }
}

/// imu: the readings in `[end − window, end)`.
#[derive(Debug)]
pub struct ImuWindower {
    window: u64,
    hop: u64,
    window_secs: f64,
    next_end: Option<u64>,
    readings: VecDeque<(Timestamp, [f32; 6])>,
}

impl ImuWindower {
    fn new(spec: WindowSpec) -> Self {
        Self {
            window: nanos(spec.window_secs),
            hop: nanos(spec.hop_secs).max(1),
            window_secs: spec.window_secs,
            next_end: None,
            readings: VecDeque::new(),
        }
    }
}

impl Windower for ImuWindower {
    fn push(&mut self, sample: Sample, out: &mut Vec<RawWindow>) {
        let Sample::Imu { t, values } = sample else { return };
        let mut end = *self.next_end.get_or_insert(t.0 + self.window);
        while t.0 >= end {
            let start = end.saturating_sub(self.window);
            let inside: Vec<&(Timestamp, [f32; 6])> =
                self.readings.iter().filter(|r| r.0.0 >= start && r.0.0 < end).collect();
            if !inside.is_empty() {
                out.push(RawWindow {
                    t0: Timestamp(start),
                    t1: Timestamp(end),
                    data: RawWindowData::Imu {
                        time_s: inside.iter().map(|r| (r.0.0 - start) as f64 / 1e9).collect(),
                        values: inside.iter().map(|r| r.1).collect(),
                        window_secs: self.window_secs,
                    },
                });
            }
            end += self.hop;
        }
        self.next_end = Some(end);
        self.readings.push_back((t, values));
        let keep_from = end.saturating_sub(self.window);
        while self.readings.front().is_some_and(|r| r.0.0 < keep_from) {
            self.readings.pop_front();
        }
    }
}

/// text: every line is a window.
#[derive(Debug)]
pub struct TextWindower;

impl Windower for TextWindower {
    fn push(&mut self, sample: Sample, out: &mut Vec<RawWindow>) {
        if let Sample::Text { t, text } = sample {
            out.push(RawWindow {
                t0: t,
                t1: t,
                data: RawWindowData::Text(text),
            });
        }
    }
}

/// What `prepare` needs besides the window.
#[derive(Debug, Clone)]
pub struct PrepareContext {
    /// Depth, thermal and IMU parameters.
    pub preprocess: PreprocessConfig,
    /// For text windows.
    pub tokenizer: Option<Arc<Tokenizer>>,
}

/// A raw window → the tower's per-clip input (vision `[3,2,224,224]`, audio `[1,128,204]`, depth/thermal
/// `[1,224,224]`, imu `[6,2000]`, text `[77]`).
pub fn prepare(window: &RawWindow, cx: &PrepareContext) -> Result<Tensor, String> {
    use preprocess::image::IMAGE_SIZE;
    let tensor = |shape: Vec<usize>, data: Vec<f32>| Tensor::from_f32(shape, data).map_err(|e| e.to_string());
    match &window.data {
        RawWindowData::Clip([a, b]) => {
            let (FrameImage::Rgb(a), FrameImage::Rgb(b)) = (a, b) else {
                return Err("a vision window holds non-RGB frames".into());
            };
            let b = if (b.width, b.height) == (a.width, a.height) {
                b
            } else {
                a
            };
            let frames = [a.as_ref().clone(), b.as_ref().clone()];
            tensor(
                vec![3, 2, IMAGE_SIZE, IMAGE_SIZE],
                preprocess::video::transform_clip(&frames, &[preprocess::video::Crop::Center]),
            )
        }
        RawWindowData::Frame(FrameImage::Depth(d)) => tensor(
            vec![1, IMAGE_SIZE, IMAGE_SIZE],
            preprocess::depth::transform(d, &cx.preprocess.depth),
        ),
        RawWindowData::Frame(FrameImage::Gray(g)) => tensor(
            vec![1, IMAGE_SIZE, IMAGE_SIZE],
            preprocess::thermal::transform(g, &cx.preprocess.thermal),
        ),
        RawWindowData::Frame(FrameImage::Rgb(_)) => Err("an RGB frame in a depth/thermal window".into()),
        RawWindowData::Audio { rate_hz, samples } => {
            let resampled = preprocess::audio::resample(samples, *rate_hz, preprocess::audio::SAMPLE_RATE);
            let features = preprocess::audio::clip_features(resampled).map_err(|e| e.to_string())?;
            tensor(
                vec![1, preprocess::fbank::MEL_BINS, preprocess::audio::TARGET_FRAMES],
                features,
            )
        }
        RawWindowData::Imu {
            time_s,
            values,
            window_secs,
        } => {
            let mut channels: [Vec<f32>; 6] = Default::default();
            for v in values {
                for (c, ch) in channels.iter_mut().enumerate() {
                    ch.push(v[c]);
                }
            }
            let rec = preprocess::imu::ImuRecording {
                time_s: time_s.clone(),
                channels,
            };
            let cfg = preprocess::imu::ImuConfig {
                start_secs: 0.0,
                window_secs: *window_secs,
                ..cx.preprocess.imu.clone()
            };
            // The window starts at t0, not at its first reading: shift so that time 0 is the window start.
            let mut data = preprocess::imu::window_from(&rec, &cfg, 0.0);
            data.truncate(6 * cfg.samples);
            tensor(vec![6, cfg.samples], data)
        }
        RawWindowData::Text(text) => {
            let tok = cx.tokenizer.as_ref().ok_or("no tokenizer for a text window")?;
            Tensor::from_i64(vec![preprocess::text::CONTEXT_LENGTH], tok.tokenize(text).to_vec())
                .map_err(|e| e.to_string())
        }
    }
}

/// Cuts one recorded file into the windows the daemon cuts when it replays it: the file's samples as
/// `sources::replay` plays them, stamped with their offset from the file's start instead of the clock, through
/// the modality's [`windower`]. So `t0` and `t1` are file time (nanoseconds from the start), and the windows are
/// the daemon's: the windowers cut by sample times and counts, never by arrival. `on_window` gets each window as
/// it is cut (a long recording is never held whole); it returns false to stop. `rate_hz` paces image sequences
/// and text lines as a replay source's `rate_hz` does.
pub fn file_windows(
    modality: Modality,
    spec: WindowSpec,
    file: &std::path::Path,
    preprocess: &PreprocessConfig,
    rate_hz: f64,
    on_window: &mut dyn FnMut(RawWindow) -> bool,
) -> Result<(), String> {
    let mut cutter = windower(modality, spec);
    let mut cut = Vec::new();
    let mut go_on = true;
    crate::sources::replay::read_samples(modality, file, preprocess, rate_hz, &mut |sample| {
        cutter.push(sample, &mut cut);
        for w in cut.drain(..) {
            go_on = go_on && on_window(w);
        }
        go_on
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn audio_windows(samples: &[f32], chunks: &[usize], spec: WindowSpec) -> Vec<(Timestamp, Timestamp, Vec<f32>)> {
        let mut w = AudioWindower::new(spec);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut ci = 0;
        while pos < samples.len() {
            let n = chunks[ci % chunks.len()].max(1).min(samples.len() - pos);
            ci += 1;
            // Each chunk is stamped with the time of its first sample at 1 kHz.
            let t = Timestamp(pos as u64 * 1_000_000);
            w.push(
                Sample::Audio {
                    t,
                    rate_hz: 1000,
                    samples: samples[pos..pos + n].to_vec(),
                },
                &mut out,
            );
            pos += n;
        }
        out.into_iter()
            .map(|rw| match rw.data {
                RawWindowData::Audio { samples, .. } => (rw.t0, rw.t1, samples),
                _ => unreachable!(),
            })
            .collect()
    }

    fn imu_windows(n: usize, chunks: &[usize], spec: WindowSpec) -> Vec<(Timestamp, Timestamp, Vec<f64>)> {
        // IMU readings arrive one at a time; "chunking" here is how many arrive between polls, which must not
        // matter either. Readings at 100 Hz.
        let mut w = ImuWindower::new(spec);
        let mut out = Vec::new();
        let mut i = 0;
        let mut ci = 0;
        while i < n {
            let k = chunks[ci % chunks.len()].max(1).min(n - i);
            ci += 1;
            for j in i..i + k {
                w.push(
                    Sample::Imu {
                        t: Timestamp(j as u64 * 10_000_000),
                        values: [j as f32; 6],
                    },
                    &mut out,
                );
            }
            i += k;
        }
        out.into_iter()
            .map(|rw| match rw.data {
                RawWindowData::Imu { time_s, .. } => (rw.t0, rw.t1, time_s),
                _ => unreachable!(),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn audio_windows_do_not_depend_on_chunking(
            chunks in proptest::collection::vec(1usize..700, 1..20),
            len in 1000usize..9000,
            window_ms in 200u32..3000,
            hop_ms in 50u32..2000,
        ) {
            let spec = WindowSpec { window_secs: f64::from(window_ms) / 1000.0, hop_secs: f64::from(hop_ms) / 1000.0 };
            let samples: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let whole = audio_windows(&samples, &[len], spec);
            let chunked = audio_windows(&samples, &chunks, spec);
            prop_assert_eq!(whole.len(), chunked.len());
            prop_assert_eq!(whole, chunked);
        }

        #[test]
        fn imu_windows_do_not_depend_on_chunking(
            chunks in proptest::collection::vec(1usize..50, 1..10),
            n in 100usize..2000,
        ) {
            let spec = WindowSpec { window_secs: 2.0, hop_secs: 0.7 };
            prop_assert_eq!(imu_windows(n, &[n], spec), imu_windows(n, &chunks, spec));
        }
    }

    /// A mono 16-bit PCM WAV of `samples` at `rate_hz`.
    fn wav(samples: &[i16], rate_hz: u32) -> Vec<u8> {
        let data = samples.len() as u32 * 2;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&rate_hz.to_le_bytes());
        b.extend_from_slice(&(rate_hz * 2).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data.to_le_bytes());
        samples.iter().for_each(|s| b.extend_from_slice(&s.to_le_bytes()));
        b
    }

    #[test]
    fn a_files_windows_are_the_windowers_windows_in_file_time() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("ramp.wav");
        let samples: Vec<i16> = (0..3000).map(|i| (i * 10) as i16).collect();
        std::fs::write(&file, wav(&samples, 1000)).unwrap();
        let spec = WindowSpec {
            window_secs: 1.0,
            hop_secs: 0.25,
        };
        let mut got = Vec::new();
        file_windows(
            Modality::Audio,
            spec,
            &file,
            &PreprocessConfig::default(),
            1.0,
            &mut |w| {
                got.push(w);
                true
            },
        )
        .unwrap();
        let whole: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let expected = audio_windows(&whole, &[whole.len()], spec);
        assert_eq!(got.len(), expected.len());
        assert_eq!(got.len(), 9);
        for (g, (t0, t1, e)) in got.iter().zip(&expected) {
            let RawWindowData::Audio { samples, rate_hz } = &g.data else {
                panic!("not audio")
            };
            assert_eq!(*rate_hz, 1000);
            assert_eq!(samples, e);
            assert_eq!((g.t0, g.t1), (*t0, *t1), "file time: the first sample is at 0");
        }
        // Stopping early.
        let mut n = 0;
        file_windows(
            Modality::Audio,
            spec,
            &file,
            &PreprocessConfig::default(),
            1.0,
            &mut |_| {
                n += 1;
                n < 2
            },
        )
        .unwrap();
        assert_eq!(n, 2);
        let missing = file_windows(
            Modality::Audio,
            spec,
            &tmp.path().join("none.wav"),
            &PreprocessConfig::default(),
            1.0,
            &mut |_| true,
        );
        assert!(missing.unwrap_err().contains("none.wav"));
    }

    #[test]
    fn audio_windows_follow_window_and_hop() {
        let spec = WindowSpec {
            window_secs: 1.0,
            hop_secs: 0.25,
        };
        let samples: Vec<f32> = (0..3000).map(|i| i as f32).collect();
        let w = audio_windows(&samples, &[128], spec);
        // First window after 1000 samples, then every 250: ends at 999, 1249, ..., 2999.
        assert_eq!(w.len(), 9);
        assert_eq!(w[0].2.first(), Some(&0.0));
        assert_eq!(w[1].2.first(), Some(&250.0));
        assert_eq!(w[8].2.last(), Some(&2999.0));
        assert_eq!(w[1].0, Timestamp(250_000_000));
    }

    #[test]
    fn clip_windows_take_first_and_last_frame() {
        let spec = WindowSpec {
            window_secs: 1.0,
            hop_secs: 0.5,
        };
        let mut w = ClipWindower::new(spec);
        let mut out = Vec::new();
        let frame = |i: usize| {
            FrameImage::Depth(Arc::new(crate::preprocess::depth::DepthMap {
                width: 1,
                height: 1,
                metres: vec![i as f32],
            }))
        };
        for i in 0..40 {
            // 10 frames per second.
            w.push(
                Sample::Frame {
                    t: Timestamp(i * 100_000_000),
                    image: frame(i as usize),
                },
                &mut out,
            );
        }
        let ids: Vec<(f32, f32)> = out
            .iter()
            .map(|rw| match &rw.data {
                RawWindowData::Clip([FrameImage::Depth(a), FrameImage::Depth(b)]) => (a.metres[0], b.metres[0]),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ids[0], (0.0, 9.0));
        assert_eq!(ids[1], (5.0, 14.0));
        assert_eq!(ids.len(), 6);
        assert!(w.frames.len() <= 4, "kept {} frames", w.frames.len());
    }

    /// Start times (in 100 ms ticks) of the windows a 1 s / 1 s hop-frame windower cuts from frames at `ticks`.
    fn hop_window_starts(ticks: impl Iterator<Item = u64>) -> Vec<u64> {
        let spec = WindowSpec {
            window_secs: 1.0,
            hop_secs: 1.0,
        };
        let mut w = HopFrameWindower::new(spec);
        let mut out = Vec::new();
        for i in ticks {
            let image = FrameImage::Depth(Arc::new(crate::preprocess::depth::DepthMap {
                width: 1,
                height: 1,
                metres: vec![i as f32],
            }));
            let t = Timestamp(i * 100_000_000);
            w.push(Sample::Frame { t, image }, &mut out);
        }
        out.iter().map(|rw| rw.t0.0 / 100_000_000).collect()
    }

    #[test]
    fn frame_windows_emit_once_per_hop_without_waiting() {
        assert_eq!(hop_window_starts(0..35), vec![0, 10, 20, 30]);
    }

    #[test]
    fn frame_windows_skip_empty_hops_after_a_gap() {
        // Frames every 100 ms, a silence from 1.2 s to 3.5 s, then frames again.
        assert_eq!(hop_window_starts((0..12).chain(35..52)), vec![0, 10, 35, 40, 50]);
    }
}
