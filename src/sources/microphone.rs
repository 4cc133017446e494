//! Microphones through cpal (`type = "microphone"`, cargo feature `microphone`; the ALSA host on Linux).
//!
//! **Device**: `default` (ALSA's default capture device), a cpal device id as `sensebind devices` lists it
//! (`alsa:hw:CARD=Mic,DEV=0`), or text contained in a device's id or name (case-insensitive; the first match).
//! The stream opens at `rate_hz`/`channels`/`sample_format` when set, else at the device's defaults; i16, i32 and
//! f32 samples are taken. The device rate is kept: windows are resampled to 16 kHz in the window stage.
//!
//! **Channels**: ImageBind's audio tower takes one channel, and its loader keeps the first of a multi-channel
//! file; the source keeps channel `channel` (default 0, the first) and ignores the others.
//!
//! **Real-time path**: cpal's capture callback runs on the audio thread. It only converts the kept channel to f32
//! and writes it into a lock-free SPSC ring (`ringbuf`, 2 s of samples, allocated when the stream opens) together
//! with a timing mark (sample index, capture time) in a second SPSC ring of 1024 marks. It never allocates, locks
//! or blocks: when the ring is full (the source thread stalled for 2 s) the newest samples are dropped and counted
//! in `overrun_samples_total`; a full mark ring only loses timing detail (times are extrapolated from the
//! previous mark at the device rate).
//!
//! **Timestamps**: the first sample of each callback is stamped with the time it was captured: the moment the
//! callback started, less the delay cpal reports between capture and callback (ALSA: the samples waiting in the
//! driver's buffer).
//!
//! **Source thread**: every 10 ms it moves what the callback wrote into [`Sample::Audio`] blocks (one per
//! callback, so a drop is a jump in time rather than a splice) and pushes them into the source's ring.
//!
//! **Loss and recovery**: a stream error saying the device is gone or the stream is invalid, or no samples for
//! 2 s, marks the sensor offline; the stream is dropped and the device reopened with a capped backoff (0.2 s
//! doubling to 5 s). Xruns the host reports are counted in `errors_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::config::{MicSampleFormat, MicrophoneSourceConfig};
use crate::clock::Timestamp;

use super::{Sample, Source, SourceError, SourceOutput, StopFlag};

const POLL: Duration = Duration::from_millis(10);
const STALL: Duration = Duration::from_secs(2);
const RING_SECS: usize = 2;
const MARKS: usize = 1024;

/// Where in the stream a callback's first sample lies, and when it was captured.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Samples (of the kept channel) written before this callback's first.
    index: u64,
    /// Capture time of that sample.
    t: Timestamp,
}

/// Counters the capture callback keeps; readable from any thread.
#[derive(Debug, Default)]
pub struct CallbackStats {
    /// Callbacks run.
    pub callbacks: AtomicU64,
    /// Samples (of the kept channel) written to the ring.
    pub samples: AtomicU64,
    /// Nanoseconds spent inside the callback, summed.
    pub busy_ns: AtomicU64,
    /// The longest callback, nanoseconds.
    pub max_ns: AtomicU64,
    /// Capture-to-callback delay cpal reported, summed (nanoseconds).
    pub capture_delay_ns: AtomicU64,
}

/// A microphone.
pub struct MicrophoneSource {
    config: MicrophoneSourceConfig,
    callback_stats: Arc<CallbackStats>,
}

impl std::fmt::Debug for MicrophoneSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrophoneSource")
            .field("name", &self.config.name)
            .field("device", &self.config.device)
            .finish_non_exhaustive()
    }
}

/// The stream as opened.
struct Open {
    _stream: cpal::Stream,
    samples: HeapCons<f32>,
    marks: HeapCons<Mark>,
    rate_hz: u32,
    failed: Arc<AtomicBool>,
    description: String,
}

/// Samples of one sample type to f32 in [-1, 1].
trait ToF32: cpal::SizedSample + Send + 'static {
    fn to_f32(self) -> f32;
}
impl ToF32 for i16 {
    fn to_f32(self) -> f32 {
        f32::from(self) / 32_768.0
    }
}
impl ToF32 for i32 {
    fn to_f32(self) -> f32 {
        (f64::from(self) / 2_147_483_648.0) as f32
    }
}
impl ToF32 for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

/// The callback's side: everything it touches, allocated before the stream starts.
struct CallbackState {
    samples: HeapProd<f32>,
    marks: HeapProd<Mark>,
    channels: usize,
    channel: usize,
    written: u64,
    stats: Arc<CallbackStats>,
    out_stats: Arc<super::SourceStats>,
}

impl CallbackState {
    /// The data callback. No allocation, lock or blocking call: ring pushes and atomics only.
    fn on_data<T: ToF32>(&mut self, data: &[T], info: &cpal::InputCallbackInfo) {
        let entered = Instant::now();
        let ts = info.timestamp();
        let delay = ts.callback.duration_since(ts.capture);
        let t = Timestamp(
            crate::clock::now()
                .0
                .saturating_sub(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX)),
        );
        let frames = data.len() / self.channels.max(1);
        // A full mark ring loses only timing detail; the reader extrapolates.
        let _lost_mark = self.marks.try_push(Mark { index: self.written, t });
        let kept = data
            .iter()
            .skip(self.channel)
            .step_by(self.channels.max(1))
            .map(|&s| s.to_f32());
        let pushed = self.samples.push_iter(kept);
        self.written += pushed as u64;
        let dropped = frames.saturating_sub(pushed) as u64;
        if dropped > 0 {
            self.out_stats
                .overrun_samples_total
                .fetch_add(dropped, Ordering::Relaxed);
        }
        let busy = u64::try_from(entered.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let s = &self.stats;
        s.callbacks.fetch_add(1, Ordering::Relaxed);
        s.samples.fetch_add(pushed as u64, Ordering::Relaxed);
        s.busy_ns.fetch_add(busy, Ordering::Relaxed);
        s.max_ns.fetch_max(busy, Ordering::Relaxed);
        s.capture_delay_ns
            .fetch_add(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// What a device offers, for error messages: `"2 ch 8000–48000 Hz i16; ..."`.
fn describe_configs(device: &cpal::Device) -> String {
    match device.supported_input_configs() {
        Ok(configs) => {
            let list: Vec<String> = configs
                .map(|c| {
                    format!(
                        "{} ch {}–{} Hz {}",
                        c.channels(),
                        c.min_sample_rate(),
                        c.max_sample_rate(),
                        c.sample_format()
                    )
                })
                .collect();
            if list.is_empty() {
                "nothing".into()
            } else {
                list.join("; ")
            }
        }
        Err(e) => format!("(cannot list its configurations: {e})"),
    }
}

fn format_of(f: MicSampleFormat) -> cpal::SampleFormat {
    match f {
        MicSampleFormat::I16 => cpal::SampleFormat::I16,
        MicSampleFormat::I32 => cpal::SampleFormat::I32,
        MicSampleFormat::F32 => cpal::SampleFormat::F32,
    }
}

/// A device's id (`alsa:...`) or, failing that, its name.
pub fn device_label(device: &cpal::Device) -> String {
    device
        .id()
        .map(|id| id.to_string())
        .or_else(|_| device.description().map(|d| d.name().to_owned()))
        .unwrap_or_else(|_| "(unnamed)".into())
}

/// Finds the configured device.
fn find_device(host: &cpal::Host, wanted: &str) -> Result<cpal::Device, String> {
    if wanted == "default" {
        return host
            .default_input_device()
            .ok_or_else(|| "there is no default input device".to_owned());
    }
    if let Ok(id) = wanted.parse::<cpal::DeviceId>()
        && let Some(d) = host.device_by_id(&id)
    {
        return Ok(d);
    }
    let needle = wanted.to_lowercase();
    let devices = host
        .input_devices()
        .map_err(|e| format!("cannot list input devices: {e}"))?;
    let mut seen = Vec::new();
    for d in devices {
        let id = d.id().map(|i| i.to_string()).unwrap_or_default();
        let name = d.description().map(|x| x.name().to_owned()).unwrap_or_default();
        if id.to_lowercase().contains(&needle) || name.to_lowercase().contains(&needle) {
            return Ok(d);
        }
        seen.push(if name.is_empty() { id } else { format!("{id} ({name})") });
    }
    Err(format!(
        "no input device matches {wanted:?}; inputs: {}",
        if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        }
    ))
}

impl MicrophoneSource {
    /// A microphone source; the device is opened when it runs.
    pub fn new(config: MicrophoneSourceConfig) -> Self {
        Self {
            config,
            callback_stats: Arc::default(),
        }
    }

    /// The capture callback's counters (for benchmarks and tests).
    pub fn callback_stats(&self) -> Arc<CallbackStats> {
        Arc::clone(&self.callback_stats)
    }

    /// Chooses the stream configuration.
    fn stream_config(&self, device: &cpal::Device) -> Result<(cpal::StreamConfig, cpal::SampleFormat), String> {
        let c = &self.config;
        let default = device
            .default_input_config()
            .map_err(|e| format!("cannot read its default input configuration: {e}"))?;
        let rate = c.rate_hz.unwrap_or_else(|| default.sample_rate());
        let channels = c.channels.unwrap_or_else(|| default.channels());
        let usable = [
            cpal::SampleFormat::I16,
            cpal::SampleFormat::I32,
            cpal::SampleFormat::F32,
        ];
        let wanted: Vec<cpal::SampleFormat> = match c.sample_format {
            Some(f) => vec![format_of(f)],
            None if usable.contains(&default.sample_format()) => {
                std::iter::once(default.sample_format()).chain(usable).collect()
            }
            None => usable.to_vec(),
        };
        let ranges: Vec<cpal::SupportedStreamConfigRange> = device
            .supported_input_configs()
            .map_err(|e| format!("cannot list its input configurations: {e}"))?
            .collect();
        for format in wanted {
            let fits = ranges.iter().any(|r| {
                r.channels() == channels
                    && r.sample_format() == format
                    && (r.min_sample_rate()..=r.max_sample_rate()).contains(&rate)
            });
            if fits {
                return Ok((
                    cpal::StreamConfig {
                        channels,
                        sample_rate: rate,
                        buffer_size: cpal::BufferSize::Default,
                    },
                    format,
                ));
            }
        }
        Err(format!(
            "it cannot capture {channels} ch at {rate} Hz{}; it offers {}",
            c.sample_format
                .map(|f| format!(" in {}", format_of(f)))
                .unwrap_or_default(),
            describe_configs(device)
        ))
    }

    /// Finds the device and the configuration it would be opened with.
    fn select(&self) -> Result<(cpal::Device, String, cpal::StreamConfig, cpal::SampleFormat), String> {
        let host = cpal::default_host();
        let device = find_device(&host, &self.config.device)?;
        let label = device_label(&device);
        let (config, format) = self.stream_config(&device).map_err(|e| format!("{label}: {e}"))?;
        let channel = usize::from(self.config.channel);
        if channel >= usize::from(config.channels) {
            return Err(format!(
                "{label}: channel {channel} does not exist with {} channels (0-based)",
                config.channels
            ));
        }
        Ok((device, label, config, format))
    }

    /// Checks that the device exists and can be opened as configured, without starting a stream: `Ok` with a
    /// description (`alsa:default, 1 ch at 48000 Hz i16`), or why not.
    ///
    /// # Errors
    ///
    /// The reason, naming the device and listing the inputs or the configurations it offers.
    pub fn probe(&self) -> Result<String, String> {
        let (_, label, config, format) = self.select()?;
        Ok(format!(
            "{label}, {} ch at {} Hz {format}",
            config.channels, config.sample_rate
        ))
    }

    fn open(&self, out: &SourceOutput) -> Result<Open, String> {
        let (device, label, config, format) = self.select()?;
        let channel = usize::from(self.config.channel);
        let capacity = (config.sample_rate as usize * RING_SECS).max(4096);
        let (samples_prod, samples) = HeapRb::<f32>::new(capacity).split();
        let (marks_prod, marks) = HeapRb::<Mark>::new(MARKS).split();
        let mut state = CallbackState {
            samples: samples_prod,
            marks: marks_prod,
            channels: usize::from(config.channels),
            channel,
            written: 0,
            stats: Arc::clone(&self.callback_stats),
            out_stats: out.stats_handle(),
        };
        let failed = Arc::new(AtomicBool::new(false));
        let (err_failed, err_stats, err_name) = (Arc::clone(&failed), out.stats_handle(), self.config.name.clone());
        let on_error = move |e: cpal::Error| {
            use cpal::ErrorKind as K;
            match e.kind() {
                K::Xrun => {
                    err_stats.errors_total.fetch_add(1, Ordering::Relaxed);
                }
                K::DeviceChanged | K::RealtimeDenied => {
                    tracing::info!(source = %err_name, error = %e, "Audio stream notice.");
                }
                _ => {
                    tracing::warn!(source = %err_name, error = %e, "Audio stream error.");
                    err_failed.store(true, Ordering::Relaxed);
                }
            }
        };
        let build = match format {
            cpal::SampleFormat::I16 => {
                device.build_input_stream::<i16, _, _>(config, move |d, i| state.on_data(d, i), on_error, None)
            }
            cpal::SampleFormat::I32 => {
                device.build_input_stream::<i32, _, _>(config, move |d, i| state.on_data(d, i), on_error, None)
            }
            _ => device.build_input_stream::<f32, _, _>(config, move |d, i| state.on_data(d, i), on_error, None),
        };
        let stream = build.map_err(|e| format!("{label}: cannot open the stream: {e}"))?;
        stream
            .play()
            .map_err(|e| format!("{label}: cannot start the stream: {e}"))?;
        Ok(Open {
            _stream: stream,
            samples,
            marks,
            rate_hz: config.sample_rate,
            failed,
            description: format!(
                "{label}, {} ch at {} Hz {format}, keeping channel {channel}",
                config.channels, config.sample_rate
            ),
        })
    }

    /// Moves samples from the callback's rings into the source's ring until the stream fails or stalls (`Err`)
    /// or `stop` is raised (`Ok`).
    fn stream(&self, open: &mut Open, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), String> {
        let rate = u64::from(open.rate_hz.max(1));
        // Samples popped so far, and the newest mark at or before that position.
        let mut position = 0u64;
        let mut anchor: Option<Mark> = None;
        let mut pending: std::collections::VecDeque<Mark> = std::collections::VecDeque::new();
        let mut last_data = Instant::now();
        let mut chunk: Vec<f32> = Vec::new();
        while !stop.sleep(POLL) {
            if open.failed.load(Ordering::Relaxed) {
                return Err("the device reported an error".into());
            }
            while let Some(m) = open.marks.try_pop() {
                pending.push_back(m);
            }
            let available = open.samples.occupied_len();
            if available == 0 {
                if last_data.elapsed() > STALL {
                    return Err(format!("no samples for {:.1} s", last_data.elapsed().as_secs_f64()));
                }
                continue;
            }
            last_data = Instant::now();
            let end = position + available as u64;
            // Cut at every mark inside [position, end): one block per callback.
            while position < end {
                while let Some(m) = pending.front().copied().filter(|m| m.index <= position) {
                    anchor = Some(m);
                    pending.pop_front();
                }
                let block_end = pending.front().map_or(end, |m| m.index.min(end));
                let n = usize::try_from(block_end - position).unwrap_or(0).max(1);
                chunk.clear();
                chunk.extend(open.samples.pop_iter().take(n));
                if chunk.is_empty() {
                    break;
                }
                let t = match anchor {
                    Some(a) => Timestamp(a.t.0 + (position - a.index) * 1_000_000_000 / rate),
                    None => crate::clock::now(),
                };
                position += chunk.len() as u64;
                out.push(Sample::Audio {
                    t,
                    rate_hz: open.rate_hz,
                    samples: std::mem::take(&mut chunk),
                });
            }
        }
        Ok(())
    }
}

impl Source for MicrophoneSource {
    fn run(&mut self, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), SourceError> {
        let name = self.config.name.clone();
        let this = &*self;
        super::run_with_reopen(
            &name,
            "microphone",
            out,
            stop,
            |out| {
                this.open(out).map(|o| {
                    let d = o.description.clone();
                    (o, d)
                })
            },
            |open, out, stop| this.stream(open, out, stop),
        );
        Ok(())
    }
}
