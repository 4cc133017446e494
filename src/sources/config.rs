//! The `[[sources]]` entries: one config type per kind of sensor (`type = "…"`) and their value checks.
//! `SourceConfig::build` (in `sources::build`, so that the drivers can read their config types without an
//! import cycle) turns an entry into the running source.
//!
//! Whether files exist is checked by the configuration's environment checks, not here.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::issues::Scope;
use crate::modality::Modality;
use crate::preprocess::imu;
use crate::util::is_slug;

/// One sensor. `type` selects the kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// Plays recorded files at their real pace.
    Replay(ReplaySourceConfig),
    /// Generates test signals.
    Synthetic(SyntheticSourceConfig),
    /// An IMU on a serial port.
    Serial(SerialSourceConfig),
    /// A V4L2 camera: colour, depth (Z16) or thermal (Y16).
    V4l2(V4l2SourceConfig),
    /// A GStreamer pipeline ending in an appsink: Jetson CSI cameras, RTSP, files.
    Gstreamer(GstreamerSourceConfig),
    /// A microphone through cpal.
    Microphone(MicrophoneSourceConfig),
}

/// `type = "v4l2"`: a Video4Linux2 camera (docs in `sources::v4l2`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct V4l2SourceConfig {
    /// Sensor name: lower-case letters, digits, `_` and `-`; unique.
    pub name: String,
    /// What it senses: `vision`, `depth` or `thermal`.
    pub modality: Modality,
    /// The device: a path (`/dev/video0`, a stable `/dev/v4l/by-id/...` link), or the card name or bus id
    /// `sensebind devices` shows (`"PureThermal (fw:v1.3.0)"`, `"usb-0000:00:14.0-2"`).
    pub device: String,
    /// Pixel format (fourcc): `YUYV`, `MJPG`, `RGB3`, `GREY`, `Y16` or `Z16`. Default: the first the device
    /// offers among those that suit the modality (vision: MJPG, YUYV, RGB3, GREY; depth: Z16; thermal: Y16, GREY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Frame width in pixels (default: the largest the device offers in that format, up to 1920).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Frame height in pixels (set with `width`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Frames per second (default: the highest the device offers for that size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_hz: Option<f64>,
    /// Memory-mapped driver buffers (2 to 32): frames the driver can hold while the source converts one.
    #[serde(default = "default_v4l2_buffers")]
    pub buffers: u32,
    /// depth: metres per Z16 unit (RealSense: 0.001).
    #[serde(default = "default_depth_unit")]
    pub depth_unit_m: f64,
    /// Window length in seconds (default per modality, as for replay).
    #[serde(default)]
    pub window_secs: Option<f64>,
    /// Seconds between windows.
    #[serde(default)]
    pub hop_secs: Option<f64>,
    /// Skip windows that did not change (`gate.min_dbfs`, `gate.min_frame_diff`, `gate.min_imu_variance`):
    /// the previous embedding and scores are reused instead of running the encoder.
    #[serde(default)]
    pub gate: Option<GateConfig>,
}

fn default_v4l2_buffers() -> u32 {
    4
}
fn default_depth_unit() -> f64 {
    0.001
}

/// `type = "gstreamer"`: frames from a GStreamer pipeline (docs in `sources::gstreamer`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GstreamerSourceConfig {
    /// Sensor name: lower-case letters, digits, `_` and `-`; unique.
    pub name: String,
    /// What it senses: `vision`, `depth` or `thermal`.
    pub modality: Modality,
    /// The pipeline in `gst-launch-1.0` syntax, without a sink: the source appends
    /// `! videoconvert ! appsink` with the formats the modality accepts (vision: RGB, YUY2, GRAY8; depth:
    /// GRAY16_LE; thermal: GRAY16_LE, GRAY8). E.g. `nvarguscamerasrc ! nvvidconv` on a Jetson, or
    /// `rtspsrc location=rtsp://cam/stream latency=200 ! decodebin`.
    pub pipeline: String,
    /// The stream's nominal frame rate: sizes the ring (default 30) and, when set, the gap threshold (five
    /// periods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_hz: Option<f64>,
    /// depth: metres per GRAY16 unit.
    #[serde(default = "default_depth_unit")]
    pub depth_unit_m: f64,
    /// Window length in seconds (default per modality, as for replay).
    #[serde(default)]
    pub window_secs: Option<f64>,
    /// Seconds between windows.
    #[serde(default)]
    pub hop_secs: Option<f64>,
    /// Skip windows that did not change (`gate.min_dbfs`, `gate.min_frame_diff`, `gate.min_imu_variance`):
    /// the previous embedding and scores are reused instead of running the encoder.
    #[serde(default)]
    pub gate: Option<GateConfig>,
}

/// `type = "microphone"`: audio capture through cpal (docs in `sources::microphone`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MicrophoneSourceConfig {
    /// Sensor name: lower-case letters, digits, `_` and `-`; unique.
    pub name: String,
    /// What it senses: `audio`.
    pub modality: Modality,
    /// The input device: `default`, a cpal device id as `sensebind devices` lists it (`alsa:hw:CARD=Mic,DEV=0`,
    /// `alsa:default`), or text its name or description contains.
    #[serde(default = "default_mic_device")]
    pub device: String,
    /// Sample rate to open the device at (default: the device's own). Windows are resampled to 16 kHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_hz: Option<u32>,
    /// Channels to open the device with (default: the device's own); only `channel` is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
    /// The 0-based channel kept (ImageBind's audio tower takes one channel; its loader uses the first).
    #[serde(default)]
    pub channel: u16,
    /// Sample format to open the device with: `i16`, `i32` or `f32` (default: the device's own when it is one
    /// of these, else the first of them the device offers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_format: Option<MicSampleFormat>,
    /// Window length in seconds (default 2).
    #[serde(default)]
    pub window_secs: Option<f64>,
    /// Seconds between windows (default: half the window).
    #[serde(default)]
    pub hop_secs: Option<f64>,
    /// Skip windows that did not change (`gate.min_dbfs`, `gate.min_frame_diff`, `gate.min_imu_variance`):
    /// the previous embedding and scores are reused instead of running the encoder.
    #[serde(default)]
    pub gate: Option<GateConfig>,
}

/// Sample formats a microphone can be opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MicSampleFormat {
    /// 16-bit signed integers.
    I16,
    /// 32-bit signed integers.
    I32,
    /// 32-bit floats in [-1, 1].
    F32,
}

fn default_mic_device() -> String {
    "default".into()
}

/// How a serial IMU frames its readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SerialProtocol {
    /// Text lines of numbers (`,` `;` tab or space separated); fields picked by index.
    Csv,
    /// WitMotion WT901-style 11-byte `0x55` frames (acceleration `0x51`, angular rate `0x52`).
    Witmotion,
}

/// `type = "serial"`: an IMU on a serial port (docs in `sources::serial`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialSourceConfig {
    /// Sensor name: lower-case letters, digits, `_` and `-`; unique.
    pub name: String,
    /// What it senses: `imu`.
    pub modality: Modality,
    /// The port, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/...` link.
    pub path: PathBuf,
    /// Baud rate (8 data bits, no parity, 1 stop bit).
    #[serde(default = "default_baud")]
    pub baud_rate: u32,
    /// The device's framing.
    #[serde(default = "default_protocol")]
    pub protocol: SerialProtocol,
    /// csv: 0-based fields of acceleration x, y, z.
    #[serde(default = "default_acc_fields")]
    pub acc_columns: [usize; 3],
    /// csv: 0-based fields of angular rate x, y, z (none: the device has no gyroscope; those channels are zero).
    #[serde(default = "default_gyro_fields")]
    pub gyro_columns: Option<[usize; 3]>,
    /// csv: unit of the acceleration fields.
    #[serde(default = "default_acc_unit")]
    pub acc_unit: imu::AccUnit,
    /// csv: unit of the angular-rate fields.
    #[serde(default = "default_gyro_unit")]
    pub gyro_unit: imu::GyroUnit,
    /// csv: 0-based field of the device's own timestamp, if it sends one. Readings are then timed by the device's
    /// clock (mapped onto the daemon's: the offset follows the lowest observed transfer delay, and is re-anchored
    /// when the device clock jumps by more than a second or runs backwards), not by arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_column: Option<usize>,
    /// csv: unit of `time_column`: `s`, `ms`, `us` or `ns`.
    #[serde(default = "default_time_unit")]
    pub time_unit: imu::TimeUnit,
    /// The device's nominal output rate: spaces the readings of a burst until the rate has been measured, sizes
    /// the ring, and sets the gap threshold (five periods).
    #[serde(default = "default_serial_rate")]
    pub rate_hz: f64,
    /// Window length in seconds (default 5).
    #[serde(default)]
    pub window_secs: Option<f64>,
    /// Seconds between windows (default: half the window).
    #[serde(default)]
    pub hop_secs: Option<f64>,
    /// Skip windows that did not change (`gate.min_dbfs`, `gate.min_frame_diff`, `gate.min_imu_variance`):
    /// the previous embedding and scores are reused instead of running the encoder.
    #[serde(default)]
    pub gate: Option<GateConfig>,
}

fn default_time_unit() -> imu::TimeUnit {
    imu::TimeUnit::Ms
}
fn default_baud() -> u32 {
    115_200
}
fn default_protocol() -> SerialProtocol {
    SerialProtocol::Csv
}
fn default_acc_fields() -> [usize; 3] {
    [0, 1, 2]
}
fn default_gyro_fields() -> Option<[usize; 3]> {
    Some([3, 4, 5])
}
fn default_acc_unit() -> imu::AccUnit {
    imu::AccUnit::MetresPerSecond2
}
fn default_gyro_unit() -> imu::GyroUnit {
    imu::GyroUnit::RadPerSecond
}
fn default_serial_rate() -> f64 {
    100.0
}

fn check_camera_modality(m: Modality, issues: &mut Scope<'_>) {
    if !matches!(m, Modality::Vision | Modality::Depth | Modality::Thermal) {
        issues.push("modality", format!("cameras feed vision, depth or thermal, got {m}"));
    }
}

fn check_depth_unit(unit: f64, issues: &mut Scope<'_>) {
    if !(unit.is_finite() && unit > 0.0 && unit <= 1.0) {
        issues.push("depth_unit_m", format!("must be between 0 and 1 metre, got {unit}"));
    }
}

fn check_rate(rate: Option<f64>, max: f64, issues: &mut Scope<'_>) {
    if let Some(r) = rate.filter(|r| !(r.is_finite() && *r > 0.0 && *r <= max)) {
        issues.push("rate_hz", format!("must be between 0 and {max}, got {r}"));
    }
}

fn check_feature(built: bool, what: &str, feature: &str, issues: &mut Scope<'_>) {
    if !built {
        issues.push(
            "type",
            format!("this build has no {what} support (built without the `{feature}` feature)"),
        );
    }
}

/// Window settings shared by every source.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WindowSpec {
    /// Window length in seconds.
    pub window_secs: f64,
    /// Seconds between window ends.
    pub hop_secs: f64,
}

impl WindowSpec {
    /// The settings of a source of `modality` that sets `window_secs` and `hop_secs` or leaves them out: window
    /// vision 2 s, audio 2 s, imu 5 s, others 1 s; hop half the window (depth, thermal, text: 1 s).
    pub fn for_modality(modality: Modality, window_secs: Option<f64>, hop_secs: Option<f64>) -> Self {
        let default_window = match modality {
            Modality::Vision | Modality::Audio => 2.0,
            Modality::Imu => 5.0,
            Modality::Depth | Modality::Thermal | Modality::Text => 1.0,
        };
        let window_secs = window_secs.unwrap_or(default_window);
        let default_hop = match modality {
            Modality::Depth | Modality::Thermal | Modality::Text => 1.0,
            _ => window_secs / 2.0,
        };
        WindowSpec {
            window_secs,
            hop_secs: hop_secs.unwrap_or(default_hop),
        }
    }
}

/// `gate`: skip windows that did not change since the last embedded window of the source. A gated window is not
/// encoded: the source's previous embedding is reused and scored again (same prompts, same scores). The first
/// window of a source is never gated, and a window is gated only against a window that was embedded. Each key
/// applies to its modalities only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// audio: a window whose level (RMS, dB full scale; silence is -inf) is below this, after a last embedded window
    /// that was below it too, is gated. E.g. -60.
    #[serde(default)]
    pub min_dbfs: Option<f64>,
    /// vision, depth, thermal: a window whose frames differ from the last embedded window's by less than this mean
    /// absolute difference is gated. A fraction: of full scale (255 for vision, the bit depth's maximum for
    /// thermal) or of the mean depth (depth). E.g. 0.01.
    #[serde(default)]
    pub min_frame_diff: Option<f64>,
    /// imu: a window whose largest per-channel variance (acc (m/s²)², gyro (rad/s)²) is below this, after a last
    /// embedded window that was below it too, is gated. E.g. 0.001.
    #[serde(default)]
    pub min_imu_variance: Option<f64>,
}

impl GateConfig {
    /// Value checks; keys are relative to the `gate` table.
    pub fn validate(&self, modality: Modality, issues: &mut Scope<'_>) {
        let applies = |key: &str, ok: bool, which: &str, issues: &mut Scope<'_>| {
            if !ok {
                issues.push(key, format!("applies to {which} sources only, not {modality}"));
            }
        };
        if let Some(v) = self.min_dbfs {
            applies("min_dbfs", modality == Modality::Audio, "audio", issues);
            if !(v.is_finite() && (-200.0..=0.0).contains(&v)) {
                issues.push("min_dbfs", format!("must be between -200 and 0 dB full scale, got {v}"));
            }
        }
        if let Some(v) = self.min_frame_diff {
            let frames = matches!(modality, Modality::Vision | Modality::Depth | Modality::Thermal);
            applies("min_frame_diff", frames, "vision, depth and thermal", issues);
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                issues.push(
                    "min_frame_diff",
                    format!("must be a fraction above 0 and at most 1, got {v}"),
                );
            }
        }
        if let Some(v) = self.min_imu_variance {
            applies("min_imu_variance", modality == Modality::Imu, "imu", issues);
            if !(v.is_finite() && v > 0.0) {
                issues.push("min_imu_variance", format!("must be a positive number, got {v}"));
            }
        }
    }

    /// True when no key is set (the gate never closes).
    pub fn is_empty(&self) -> bool {
        self.min_dbfs.is_none() && self.min_frame_diff.is_none() && self.min_imu_variance.is_none()
    }
}

/// `type = "replay"`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaySourceConfig {
    /// Sensor name: lower-case letters, digits, `_` and `-`; unique.
    pub name: String,
    /// What it senses.
    pub modality: Modality,
    /// Files (or folders of files) to play in order: images, a video, audio, depth/thermal PNGs, an IMU CSV, a
    /// text file. Relative to the configuration file.
    pub paths: Vec<PathBuf>,
    /// Start again after the last file.
    #[serde(default = "yes", rename = "loop")]
    pub loop_playback: bool,
    /// Items per second for image, depth, thermal and text sequences (default 1).
    #[serde(default)]
    pub rate_hz: Option<f64>,
    /// Window length in seconds (default per modality: vision 2, audio 2, imu 5, others 1).
    #[serde(default)]
    pub window_secs: Option<f64>,
    /// Seconds between windows (default: half the window; depth/thermal/text: 1).
    #[serde(default)]
    pub hop_secs: Option<f64>,
    /// Skip windows that did not change (`gate.min_dbfs`, `gate.min_frame_diff`, `gate.min_imu_variance`):
    /// the previous embedding and scores are reused instead of running the encoder.
    #[serde(default)]
    pub gate: Option<GateConfig>,
}

fn yes() -> bool {
    true
}

/// Kinds of synthetic signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// vision: moving colour bars; depth: a sliding box; thermal: a moving warm blob.
    Moving,
    /// audio: a sine tone; imu: gravity plus a walking-like oscillation.
    Tone,
    /// The modality's default pattern.
    Default,
}

/// `type = "synthetic"`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSourceConfig {
    /// Sensor name: lower-case letters, digits, `_` and `-`; unique.
    pub name: String,
    /// What it senses.
    pub modality: Modality,
    /// Signal shape.
    #[serde(default = "default_pattern")]
    pub pattern: Pattern,
    /// Frames or samples per second (default: vision 15, depth/thermal 10, audio 16000, imu 400, text 1).
    #[serde(default)]
    pub rate_hz: Option<f64>,
    /// Tone frequency for audio, motion frequency for imu.
    #[serde(default = "default_frequency")]
    pub frequency_hz: f64,
    /// Frame width for images.
    #[serde(default = "default_width")]
    pub width: usize,
    /// Frame height for images.
    #[serde(default = "default_height")]
    pub height: usize,
    /// Lines cycled through for text.
    #[serde(default)]
    pub texts: Vec<String>,
    /// Window length in seconds (default per modality, as for replay).
    #[serde(default)]
    pub window_secs: Option<f64>,
    /// Seconds between windows.
    #[serde(default)]
    pub hop_secs: Option<f64>,
    /// Skip windows that did not change (`gate.min_dbfs`, `gate.min_frame_diff`, `gate.min_imu_variance`):
    /// the previous embedding and scores are reused instead of running the encoder.
    #[serde(default)]
    pub gate: Option<GateConfig>,
}

fn default_pattern() -> Pattern {
    Pattern::Default
}
fn default_frequency() -> f64 {
    440.0
}
fn default_width() -> usize {
    320
}
fn default_height() -> usize {
    240
}

impl SourceConfig {
    /// The sensor's name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Replay(c) => &c.name,
            SourceConfig::Synthetic(c) => &c.name,
            SourceConfig::Serial(c) => &c.name,
            SourceConfig::V4l2(c) => &c.name,
            SourceConfig::Gstreamer(c) => &c.name,
            SourceConfig::Microphone(c) => &c.name,
        }
    }

    /// The sensor's modality.
    pub fn modality(&self) -> Modality {
        match self {
            SourceConfig::Replay(c) => c.modality,
            SourceConfig::Synthetic(c) => c.modality,
            SourceConfig::Serial(c) => c.modality,
            SourceConfig::V4l2(c) => c.modality,
            SourceConfig::Gstreamer(c) => c.modality,
            SourceConfig::Microphone(c) => c.modality,
        }
    }

    /// The entry's gate, if any.
    pub fn gate(&self) -> Option<GateConfig> {
        match self {
            SourceConfig::Replay(c) => c.gate,
            SourceConfig::Synthetic(c) => c.gate,
            SourceConfig::Serial(c) => c.gate,
            SourceConfig::V4l2(c) => c.gate,
            SourceConfig::Gstreamer(c) => c.gate,
            SourceConfig::Microphone(c) => c.gate,
        }
    }

    /// Window length and hop, with the per-modality defaults filled in.
    pub fn window(&self) -> WindowSpec {
        let (w, h) = match self {
            SourceConfig::Replay(c) => (c.window_secs, c.hop_secs),
            SourceConfig::Synthetic(c) => (c.window_secs, c.hop_secs),
            SourceConfig::Serial(c) => (c.window_secs, c.hop_secs),
            SourceConfig::V4l2(c) => (c.window_secs, c.hop_secs),
            SourceConfig::Gstreamer(c) => (c.window_secs, c.hop_secs),
            SourceConfig::Microphone(c) => (c.window_secs, c.hop_secs),
        };
        WindowSpec::for_modality(self.modality(), w, h)
    }
}

impl SourceConfig {
    /// Value checks of one entry; keys are relative to the entry (`sources[i]`).
    pub fn validate(&self, issues: &mut Scope<'_>) {
        if !is_slug(self.name()) {
            issues.push("name", format!("{:?} is not a valid name: use [a-z0-9_-]", self.name()));
        }
        let w = self.window();
        if !(w.window_secs.is_finite() && w.window_secs > 0.0 && w.window_secs <= 600.0) {
            issues.push(
                "window_secs",
                format!("must be between 0 and 600 seconds, got {}", w.window_secs),
            );
        }
        if !(w.hop_secs.is_finite() && w.hop_secs >= 0.01 && w.hop_secs <= 3600.0) {
            issues.push(
                "hop_secs",
                format!("must be between 0.01 and 3600 seconds, got {}", w.hop_secs),
            );
        }
        if let Some(gate) = self.gate() {
            gate.validate(self.modality(), &mut issues.scope("gate"));
        }
        match self {
            SourceConfig::Replay(c) => c.validate(issues),
            SourceConfig::Synthetic(c) => c.validate(issues),
            SourceConfig::Serial(c) => c.validate(issues),
            SourceConfig::V4l2(c) => c.validate(issues),
            SourceConfig::Gstreamer(c) => c.validate(issues),
            SourceConfig::Microphone(c) => c.validate(issues),
        }
    }

    /// The files this entry reads, resolved against `base` (replay only), for the environment checks.
    pub fn files(&self, base: &Path) -> Vec<PathBuf> {
        match self {
            SourceConfig::Replay(c) => c.paths.iter().map(|p| crate::util::resolve_path(base, p)).collect(),
            _ => Vec::new(),
        }
    }
}

impl ReplaySourceConfig {
    fn validate(&self, issues: &mut Scope<'_>) {
        if self.paths.is_empty() {
            issues.push("paths", "needs at least one file");
        }
        check_rate(self.rate_hz, 1000.0, issues);
    }
}

impl SyntheticSourceConfig {
    fn validate(&self, issues: &mut Scope<'_>) {
        check_rate(self.rate_hz, 192_000.0, issues);
        if self.modality == Modality::Audio && self.rate_hz.is_some_and(|r| r < 4000.0) {
            issues.push("rate_hz", "audio needs at least 4000 samples per second");
        }
        if !(self.frequency_hz.is_finite() && self.frequency_hz > 0.0) {
            issues.push("frequency_hz", format!("must be positive, got {}", self.frequency_hz));
        }
        if self.width == 0 || self.height == 0 || self.width * self.height > 4096 * 4096 {
            issues.push(
                "width",
                format!("{}x{} is not a usable frame size", self.width, self.height),
            );
        }
        if self.modality == Modality::Text && self.texts.is_empty() {
            issues.push("texts", "a synthetic text source needs texts to cycle through");
        }
    }
}

impl SerialSourceConfig {
    fn validate(&self, issues: &mut Scope<'_>) {
        if self.modality != Modality::Imu {
            issues.push(
                "modality",
                format!("serial sources are IMUs: use modality = \"imu\", got {}", self.modality),
            );
        }
        if !(50..=4_000_000).contains(&self.baud_rate) {
            issues.push(
                "baud_rate",
                format!("must be between 50 and 4000000, got {}", self.baud_rate),
            );
        }
        check_rate(Some(self.rate_hz), 10_000.0, issues);
        if self.path.as_os_str().is_empty() {
            issues.push("path", "needs the port's path, e.g. /dev/ttyUSB0");
        }
        if let Some(tc) = self.time_column {
            if self.protocol != SerialProtocol::Csv {
                issues.push("time_column", "only the csv protocol carries a device timestamp");
            }
            let mut used = self.acc_columns.iter().chain(self.gyro_columns.iter().flatten());
            if used.any(|&c| c == tc) {
                issues.push(
                    "time_column",
                    format!("field {tc} is also an acceleration or angular-rate field"),
                );
            }
        }
    }
}

impl V4l2SourceConfig {
    fn validate(&self, issues: &mut Scope<'_>) {
        check_feature(cfg!(feature = "v4l2"), "V4L2", "v4l2", issues);
        check_camera_modality(self.modality, issues);
        if self.device.trim().is_empty() {
            issues.push("device", "needs a path such as /dev/video0, or the card name or bus id");
        }
        if let Some(f) = &self.format {
            match super::pixfmt::PixelFormat::from_name(f) {
                None => issues.push(
                    "format",
                    format!("{f:?} is not a supported pixel format (YUYV, MJPG, RGB3, GREY, Y16, Z16)"),
                ),
                Some(pf) if !super::camera::format_suits(pf, self.modality) => {
                    issues.push("format", format!("{pf} frames cannot feed the {} tower", self.modality))
                }
                Some(_) => {}
            }
        }
        match (self.width, self.height) {
            (Some(w), Some(h)) if w == 0 || h == 0 || w > 16_384 || h > 16_384 => {
                issues.push("width", format!("{w}x{h} is not a usable frame size"));
            }
            (Some(_), None) | (None, Some(_)) => issues.push("width", "set width and height together"),
            _ => {}
        }
        check_rate(self.rate_hz, 1000.0, issues);
        if !(2..=32).contains(&self.buffers) {
            issues.push("buffers", format!("must be between 2 and 32, got {}", self.buffers));
        }
        check_depth_unit(self.depth_unit_m, issues);
    }
}

impl GstreamerSourceConfig {
    fn validate(&self, issues: &mut Scope<'_>) {
        check_feature(cfg!(feature = "gstreamer"), "GStreamer", "gstreamer", issues);
        check_camera_modality(self.modality, issues);
        if self.pipeline.trim().is_empty() {
            issues.push("pipeline", "needs a pipeline, e.g. \"v4l2src device=/dev/video0\"");
        }
        check_rate(self.rate_hz, 1000.0, issues);
        check_depth_unit(self.depth_unit_m, issues);
    }
}

impl MicrophoneSourceConfig {
    fn validate(&self, issues: &mut Scope<'_>) {
        check_feature(cfg!(feature = "microphone"), "microphone", "microphone", issues);
        if self.modality != Modality::Audio {
            issues.push(
                "modality",
                format!("microphones are audio: use modality = \"audio\", got {}", self.modality),
            );
        }
        if self.device.trim().is_empty() {
            issues.push("device", "needs \"default\", a device id or part of a device name");
        }
        if let Some(r) = self.rate_hz.filter(|r| !(4000..=384_000).contains(r)) {
            issues.push("rate_hz", format!("must be between 4000 and 384000, got {r}"));
        }
        if let Some(c) = self.channels.filter(|c| !(1..=64).contains(c)) {
            issues.push("channels", format!("must be between 1 and 64, got {c}"));
        }
        if let Some(c) = self.channels.filter(|&c| self.channel >= c) {
            issues.push(
                "channel",
                format!("channel {} does not exist with {c} channels (0-based)", self.channel),
            );
        }
    }
}
