//! The daemon's configuration: TOML, parsed strictly, validated completely, every error with its key path.
//!
//! Loading is two-phase (STYLE.md habit 1): each section is deserialised on its own (unknown keys are errors), then
//! the whole configuration is checked for values and cross-references. All problems are collected — a file with
//! five mistakes reports five errors — each with its key path (`sources[2].window_secs`) and, where the key exists
//! in the file, its line. Relative paths are resolved against the configuration file's folder.
//!
//! `configs/example.toml` documents every option; `configs/schema.json` is generated from these types
//! (`sensebind schema`) and kept current by a test.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::encode::EngineOptions;
use crate::modality::Modality;
use crate::preprocess::PreprocessConfig;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This device.
    pub device: DeviceConfig,
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The ImageBind towers and how they run.
    #[serde(default)]
    pub models: ModelsConfig,
    /// The MQTT broker and topic prefix.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Parameters of the depth, thermal and IMU preprocessing (docs/preprocessing.md).
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// How label scores become events (defaults for every prompt; each prompt may override them).
    #[serde(default)]
    pub events: EventsConfig,
    /// The sensors.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// What to listen for: text prompts scored against every window.
    #[serde(default)]
    pub prompts: Vec<PromptConfig>,
}

/// `[device]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Stable device id used in MQTT topics: lower-case letters, digits, `_` and `-`.
    pub id: String,
    /// Human-readable name (Home Assistant, logs).
    #[serde(default)]
    pub name: Option<String>,
}

/// `[runtime]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Where the daemon keeps state (prompt-embedding cache). Relative to the configuration file.
    pub state_dir: PathBuf,
    /// Labels per window in each label message.
    pub top_k: usize,
    /// Seconds between `stats` messages (0 = none).
    pub stats_interval_secs: f64,
    /// Capacity of each sensor's ring buffer, in seconds of data.
    pub ring_secs: f64,
    /// Upper bound of each frame ring buffer in bytes (large video frames hit this before `ring_secs`).
    pub ring_max_bytes: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("state"),
            top_k: 3,
            stats_interval_secs: 60.0,
            ring_secs: 4.0,
            ring_max_bytes: 64 << 20,
        }
    }
}

pub use crate::encode::engine::{Backend, ExecutionProviderConfig, OnnxRuntimeConfig};

/// `[models]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Model directory (manifest.toml + one ONNX file per modality). Relative to the configuration file.
    pub dir: PathBuf,
    /// Inference backend for every tower: `auto` (ONNX Runtime when its library loads, else tract), `tract` or
    /// `onnxruntime`. `[models.towers.<modality>]` overrides it per tower.
    pub backend: Backend,
    /// Engine threads per encoder.
    pub threads: usize,
    /// Most windows per encoder call (windows of the same modality from different sources are batched).
    pub max_batch: usize,
    /// How long an encoder waits for more windows before running a partial batch, in milliseconds.
    pub max_wait_ms: u64,
    /// Windows queued per encoder; when full the oldest is dropped and counted.
    pub queue_windows: usize,
    /// Check every ONNX file's sha256 against the manifest at start-up.
    pub verify_checksums: bool,
    /// tract: batch sizes that get a plan optimised for that size (faster, one more copy of the weights each).
    pub batch_plans: Vec<usize>,
    /// The ONNX Runtime library and its execution providers.
    pub onnxruntime: OnnxRuntimeConfig,
    /// Per-tower overrides of `backend` and `threads`.
    pub towers: TowersConfig,
}

/// `[models.towers]`: one optional table per modality.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TowersConfig {
    /// The vision tower (images and video).
    pub vision: Option<TowerConfig>,
    /// The text tower (prompts).
    pub text: Option<TowerConfig>,
    /// The audio tower.
    pub audio: Option<TowerConfig>,
    /// The depth tower.
    pub depth: Option<TowerConfig>,
    /// The thermal tower.
    pub thermal: Option<TowerConfig>,
    /// The IMU tower.
    pub imu: Option<TowerConfig>,
}

impl TowersConfig {
    /// The override for one modality, if any.
    pub fn get(&self, modality: Modality) -> Option<&TowerConfig> {
        match modality {
            Modality::Vision => self.vision.as_ref(),
            Modality::Text => self.text.as_ref(),
            Modality::Audio => self.audio.as_ref(),
            Modality::Depth => self.depth.as_ref(),
            Modality::Thermal => self.thermal.as_ref(),
            Modality::Imu => self.imu.as_ref(),
        }
    }
}

/// `[models.towers.<modality>]`: how one tower runs, overriding `[models]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TowerConfig {
    /// This tower's backend.
    pub backend: Option<Backend>,
    /// This tower's engine threads.
    pub threads: Option<usize>,
}

impl ModelsConfig {
    /// How `modality`'s tower is loaded: `[models]` with the tower's overrides. `config_dir` resolves a relative
    /// ONNX Runtime library path; `state_dir` holds the TensorRT engine cache.
    pub fn engine_options(&self, modality: Modality, config_dir: &Path, state_dir: &Path) -> EngineOptions {
        let tower = self.towers.get(modality);
        let mut onnxruntime = self.onnxruntime.clone();
        onnxruntime.library = onnxruntime.library.map(|p| resolve_library(config_dir, &p));
        EngineOptions {
            backend: tower.and_then(|t| t.backend).unwrap_or(self.backend),
            threads: tower.and_then(|t| t.threads).unwrap_or(self.threads),
            verify_checksum: self.verify_checksums,
            batch_plans: self.batch_plans.clone(),
            onnxruntime,
            cache_dir: Some(state_dir.join("tensorrt")),
        }
    }
}

/// A library path from the configuration: relative paths with a folder part are relative to the configuration
/// file; a bare file name (`libonnxruntime.so.1`) is left to the dynamic loader's search path.
fn resolve_library(config_dir: &Path, library: &Path) -> PathBuf {
    if library.is_absolute() || library.components().count() == 1 {
        library.to_path_buf()
    } else {
        config_dir.join(library)
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models/imagebind-tiny"),
            backend: Backend::Auto,
            threads: 1,
            max_batch: 4,
            max_wait_ms: 20,
            queue_windows: 8,
            verify_checksums: true,
            batch_plans: vec![1],
            onnxruntime: OnnxRuntimeConfig::default(),
            towers: TowersConfig::default(),
        }
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Publish at all (false: messages are only logged).
    pub enabled: bool,
    /// Broker address: `mqtt://host:port`, or `mqtts://host:port` for TLS (the system's root certificates unless
    /// `tls.ca_file` is set).
    pub url: String,
    /// MQTT client id (default `{prefix}-{device.id}`).
    pub client_id: Option<String>,
    /// First topic level.
    pub prefix: String,
    /// QoS of per-window label messages (0, 1 or 2). State and events are always QoS 1.
    pub qos: u8,
    /// Publish one `labels/{sensor}` message per window (the events and label states are published regardless).
    pub labels: bool,
    /// Keep-alive interval in seconds (at least 1).
    pub keep_alive_secs: u64,
    /// User name.
    pub username: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (first line). Relative to the configuration file.
    pub password_file: Option<PathBuf>,
    /// TLS settings for `mqtts://` brokers.
    pub tls: TlsConfig,
    /// Per-window label messages and stats queued for the broker (while it is unreachable, too); when full the
    /// oldest is dropped and counted.
    pub queue_messages: usize,
    /// Event messages queued while the broker is unreachable; when full the oldest is dropped and counted.
    pub queue_events: usize,
    /// Embedding messages queued; when full the oldest is dropped and counted.
    pub queue_embeddings: usize,
    /// Which window embeddings are published on `embeddings/{sensor}`.
    pub embeddings: EmbeddingsConfig,
    /// Home Assistant MQTT discovery.
    pub homeassistant: HomeAssistantConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            prefix: "sensebind".into(),
            qos: 1,
            labels: true,
            keep_alive_secs: 30,
            username: None,
            password_env: None,
            password_file: None,
            tls: TlsConfig::default(),
            queue_messages: 1000,
            queue_events: 10_000,
            queue_embeddings: 200,
            embeddings: EmbeddingsConfig::default(),
            homeassistant: HomeAssistantConfig::default(),
        }
    }
}

/// `[mqtt.tls]`: used with `mqtts://` brokers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate authorities to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for brokers that require one; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1). A secret: never logged.
    pub client_key: Option<PathBuf>,
}

/// How many window embeddings a sensor publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingMode {
    /// None.
    #[default]
    Off,
    /// Windows that belong to an active event of the sensor.
    OnEvent,
    /// Every `every_n`-th window.
    EveryN,
    /// Every window.
    All,
}

/// `[mqtt.embeddings]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingsConfig {
    /// Default for every sensor.
    pub mode: EmbeddingMode,
    /// With `every_n`: publish one window in this many.
    pub every_n: u64,
    /// Element type on the wire: `f16` (half the bytes; keeps the prompt ranking, docs/mqtt.md) or `f32`.
    pub dtype: crate::publish::embedding::Dtype,
    /// `cbor` (binary, self-describing) or `json_base64`.
    pub encoding: crate::publish::embedding::Encoding,
    /// Per-sensor overrides of `mode` and `every_n`, by sensor name.
    pub sensors: std::collections::BTreeMap<String, SensorEmbeddings>,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        Self {
            mode: EmbeddingMode::Off,
            every_n: 10,
            dtype: crate::publish::embedding::Dtype::F16,
            encoding: crate::publish::embedding::Encoding::Cbor,
            sensors: std::collections::BTreeMap::new(),
        }
    }
}

/// `[mqtt.embeddings.sensors.<name>]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorEmbeddings {
    /// This sensor's mode.
    pub mode: EmbeddingMode,
    /// With `every_n`: publish one window in this many (default: `mqtt.embeddings.every_n`).
    #[serde(default)]
    pub every_n: Option<u64>,
}

impl EmbeddingsConfig {
    /// The mode and `every_n` of a sensor.
    pub fn for_sensor(&self, sensor: &str) -> (EmbeddingMode, u64) {
        match self.sensors.get(sensor) {
            Some(s) => (s.mode, s.every_n.unwrap_or(self.every_n)),
            None => (self.mode, self.every_n),
        }
    }
}

/// `[mqtt.homeassistant]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish device discovery (`{discovery_prefix}/device/{device.id}/config`).
    pub enabled: bool,
    /// Home Assistant's discovery prefix; its birth topic is `{discovery_prefix}/status`.
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// `[events]`: how a label's window scores become events (per prompt and sensor). Every key can be overridden in
/// a `[[prompts]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `median` or `mean` of the last `aggregate_windows` scores.
    pub aggregate: crate::events::Aggregate,
    /// Windows aggregated (1 = the raw score).
    pub aggregate_windows: usize,
    /// Onset: at least `onset_k` of the last `onset_n` aggregated scores reach the prompt's `threshold`.
    pub onset_k: usize,
    /// See `onset_k`.
    pub onset_n: usize,
    /// An event ends when no window's aggregated score has reached `off_threshold` for this long.
    pub hold_secs: f64,
    /// After an event ends, no new event of the same label and sensor for this long.
    pub cooldown_secs: f64,
    /// Longest event: it is ended (`max_duration`) and may start again.
    pub max_event_secs: f64,
    /// `update` messages at most this often, and only when the peak score rose.
    pub update_interval_secs: f64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            aggregate: crate::events::Aggregate::Median,
            aggregate_windows: 3,
            onset_k: 2,
            onset_n: 3,
            hold_secs: 10.0,
            cooldown_secs: 0.0,
            max_event_secs: 300.0,
            update_interval_secs: 5.0,
        }
    }
}

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
    pub acc_unit: crate::preprocess::imu::AccUnit,
    /// csv: unit of the angular-rate fields.
    #[serde(default = "default_gyro_unit")]
    pub gyro_unit: crate::preprocess::imu::GyroUnit,
    /// csv: 0-based field of the device's own timestamp, if it sends one. Readings are then timed by the device's
    /// clock (mapped onto the daemon's: the offset follows the lowest observed transfer delay, and is re-anchored
    /// when the device clock jumps by more than a second or runs backwards), not by arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_column: Option<usize>,
    /// csv: unit of `time_column`: `s`, `ms`, `us` or `ns`.
    #[serde(default = "default_time_unit")]
    pub time_unit: crate::preprocess::imu::TimeUnit,
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
}

fn default_time_unit() -> crate::preprocess::imu::TimeUnit {
    crate::preprocess::imu::TimeUnit::Ms
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
fn default_acc_unit() -> crate::preprocess::imu::AccUnit {
    crate::preprocess::imu::AccUnit::MetresPerSecond2
}
fn default_gyro_unit() -> crate::preprocess::imu::GyroUnit {
    crate::preprocess::imu::GyroUnit::RadPerSecond
}
fn default_serial_rate() -> f64 {
    100.0
}

fn check_camera_modality(m: Modality, push: &mut dyn FnMut(String)) {
    if !matches!(m, Modality::Vision | Modality::Depth | Modality::Thermal) {
        push(format!("cameras feed vision, depth or thermal, got {m}"));
    }
}

fn check_depth_unit(unit: f64, push: &mut dyn FnMut(String)) {
    if !(unit.is_finite() && unit > 0.0 && unit <= 1.0) {
        push(format!("must be between 0 and 1 metre, got {unit}"));
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
        let default_window = match self.modality() {
            Modality::Vision | Modality::Audio => 2.0,
            Modality::Imu => 5.0,
            Modality::Depth | Modality::Thermal | Modality::Text => 1.0,
        };
        let window_secs = w.unwrap_or(default_window);
        let default_hop = match self.modality() {
            Modality::Depth | Modality::Thermal | Modality::Text => 1.0,
            _ => window_secs / 2.0,
        };
        WindowSpec {
            window_secs,
            hop_secs: h.unwrap_or(default_hop),
        }
    }
}

/// One label: a prompt (or several phrasings of it) scored against windows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// Label id used in messages and topics: lower-case letters, digits, `_` and `-`; unique.
    pub id: String,
    /// The prompt.
    #[serde(default)]
    pub text: Option<String>,
    /// Several phrasings; their embeddings are averaged.
    #[serde(default)]
    pub texts: Vec<String>,
    /// Modalities it applies to (default: every modality of the sources it applies to).
    #[serde(default)]
    pub modalities: Vec<Modality>,
    /// Sources it applies to (default: all).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Score (softmax probability among the applicable prompts) at or above which the label is active; the onset
    /// threshold of its events.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// An active event stays on while the aggregated score is at least this (default: 0.8 × `threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_threshold: Option<f32>,
    /// Overrides `events.aggregate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<crate::events::Aggregate>,
    /// Overrides `events.aggregate_windows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_windows: Option<usize>,
    /// Overrides `events.onset_k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset_k: Option<usize>,
    /// Overrides `events.onset_n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset_n: Option<usize>,
    /// Overrides `events.hold_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<f64>,
    /// Overrides `events.cooldown_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_secs: Option<f64>,
    /// Overrides `events.max_event_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_secs: Option<f64>,
    /// Home Assistant `device_class` of the label's binary sensor (default by modality: `sound` for audio,
    /// `motion` for IMU, `occupancy` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
}

fn default_threshold() -> f32 {
    0.5
}

impl PromptConfig {
    /// A prompt with one phrasing and every other key at its default.
    pub fn new(id: &str, text: &str) -> Self {
        Self {
            id: id.to_owned(),
            text: Some(text.to_owned()),
            texts: Vec::new(),
            modalities: Vec::new(),
            sources: Vec::new(),
            threshold: default_threshold(),
            off_threshold: None,
            aggregate: None,
            aggregate_windows: None,
            onset_k: None,
            onset_n: None,
            hold_secs: None,
            cooldown_secs: None,
            max_event_secs: None,
            device_class: None,
        }
    }

    /// All phrasings of the prompt.
    pub fn all_texts(&self) -> Vec<String> {
        self.text.iter().cloned().chain(self.texts.iter().cloned()).collect()
    }

    /// Whether the prompt applies to a window of `modality` from `source`.
    pub fn applies_to(&self, modality: Modality, source: &str) -> bool {
        (self.modalities.is_empty() || self.modalities.contains(&modality))
            && (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
    }

    /// The off threshold (default 0.8 × `threshold`).
    pub fn off(&self) -> f32 {
        self.off_threshold.unwrap_or(self.threshold * 0.8)
    }

    /// The event parameters of this prompt: its own keys over the `[events]` defaults.
    pub fn event_params(&self, d: &EventsConfig) -> crate::events::EventParams {
        let secs = |v: f64| std::time::Duration::from_secs_f64(if v.is_finite() { v.clamp(0.0, 1e9) } else { 0.0 });
        crate::events::EventParams {
            on: self.threshold,
            off: self.off(),
            aggregate: self.aggregate.unwrap_or(d.aggregate),
            aggregate_windows: self.aggregate_windows.unwrap_or(d.aggregate_windows),
            onset_k: self.onset_k.unwrap_or(d.onset_k),
            onset_n: self.onset_n.unwrap_or(d.onset_n),
            hold: secs(self.hold_secs.unwrap_or(d.hold_secs)),
            cooldown: secs(self.cooldown_secs.unwrap_or(d.cooldown_secs)),
            max_event: secs(self.max_event_secs.unwrap_or(d.max_event_secs)),
            update_interval: secs(d.update_interval_secs),
        }
    }
}

/// Checks one prompt's values against the sources; returns `(key, message)` pairs, keys relative to the prompt
/// (`id`, `text`, `sources[1]`, …). Used for the configuration file and for `prompts/set` updates alike.
/// `source_names` lists every configured sensor name; `sources` the sensors whose modality is known.
pub fn check_prompt(
    pr: &PromptConfig,
    events: &EventsConfig,
    sources: &[(String, Modality)],
    source_names: &[String],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |k: &str, m: String| out.push((k.to_owned(), m));
    if !is_slug(&pr.id) {
        push(
            "id",
            format!("{:?} is not a valid id: use [a-z0-9_-], at most 64 characters", pr.id),
        );
    }
    let texts = pr.all_texts();
    if texts.is_empty() {
        push("text", "needs text or texts".into());
    }
    if texts.len() > 16 {
        push("texts", format!("{} phrasings; at most 16", texts.len()));
    }
    for (j, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            push("text", format!("text {j} is empty"));
        }
        if t.len() > 2000 {
            push(
                "text",
                format!("text {j} is {} bytes long; keep prompts under 2000", t.len()),
            );
        }
    }
    if !(0.0..=1.0).contains(&pr.threshold) {
        push("threshold", format!("must be between 0 and 1, got {}", pr.threshold));
    }
    if let Some(off) = pr.off_threshold
        && !(0.0..=1.0).contains(&off)
    {
        push("off_threshold", format!("must be between 0 and 1, got {off}"));
    }
    if (0.0..=1.0).contains(&pr.threshold)
        && pr.off_threshold.is_none_or(|o| (0.0..=1.0).contains(&o))
        && let Err(e) = pr.event_params(events).validate()
    {
        push("threshold", e);
    }
    for (key, v) in [
        ("hold_secs", pr.hold_secs),
        ("cooldown_secs", pr.cooldown_secs),
        ("max_event_secs", pr.max_event_secs),
    ] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0 && *v <= 86_400.0)) {
            push(key, format!("must be between 0 and 86400 seconds, got {v}"));
        }
    }
    if let Some(dc) = &pr.device_class
        && !is_slug(dc)
    {
        push("device_class", format!("{dc:?} is not a Home Assistant device class"));
    }
    for (j, s) in pr.sources.iter().enumerate() {
        if !source_names.iter().any(|n| n == s) {
            push(&format!("sources[{j}]"), format!("no source is named {s:?}"));
        }
    }
    let reachable = sources.iter().any(|(name, m)| pr.applies_to(*m, name));
    if !sources.is_empty() && !reachable && sources.len() == source_names.len() {
        push("modalities", "applies to no configured source".into());
    }
    out
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `sources[1].window_secs` (empty for the whole file).
    pub path: String,
    /// 1-based line of the key in the file, where known.
    pub line: Option<usize>,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.path.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.path, self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file.
    pub file: PathBuf,
    /// The problems, in file order where known.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} error{} in the configuration:",
            self.file.display(),
            self.issues.len(),
            if self.issues.len() == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A loaded, validated configuration, with paths resolved.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// The file it came from.
    pub file: PathBuf,
    /// Its folder (relative paths are resolved against it).
    pub base: PathBuf,
}

impl LoadedConfig {
    /// A path from the configuration, resolved against the configuration's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// How `modality`'s tower is loaded ([`ModelsConfig::engine_options`] with this file's folders).
    pub fn engine_options(&self, modality: Modality) -> EngineOptions {
        let state_dir = self.resolve(&self.config.runtime.state_dir);
        self.config.models.engine_options(modality, &self.base, &state_dir)
    }
}

/// Reads, parses and validates a configuration file.
pub fn load(file: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
        file: file.to_path_buf(),
        issues: vec![ConfigIssue {
            path: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, file, &base)
}

/// Parses and validates configuration text; `file` names it in messages, `base` resolves relative paths.
pub fn parse(text: &str, file: &Path, base: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let fail = |issues: Vec<ConfigIssue>| ConfigErrors {
        file: file.to_path_buf(),
        issues,
    };
    let doc = match text.parse::<toml_edit::ImDocument<String>>() {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            return Err(fail(vec![ConfigIssue {
                path: String::new(),
                line,
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            return Err(fail(vec![ConfigIssue {
                path: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    let mut issues = Vec::new();
    let (partial, parsed) = deserialize_sections(&table, &mut issues);
    let loaded = LoadedConfig {
        config: partial,
        file: file.to_path_buf(),
        base: base.to_path_buf(),
    };
    // Validate whatever did deserialise, so one bad section does not hide the others' mistakes.
    validate(&loaded, &parsed, &mut issues);
    let config = parsed.complete().then_some(loaded.config);
    for issue in &mut issues {
        if issue.line.is_none() && !issue.path.is_empty() {
            issue.line = line_of_path(&doc, text, &issue.path);
        }
    }
    issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
    match config {
        Some(config) if issues.is_empty() => Ok(LoadedConfig {
            config,
            file: file.to_path_buf(),
            base: base.to_path_buf(),
        }),
        _ => Err(fail(issues)),
    }
}

const TOP_KEYS: [&str; 8] = [
    "device",
    "runtime",
    "models",
    "mqtt",
    "preprocess",
    "events",
    "sources",
    "prompts",
];

/// Which parts of a configuration deserialised (the others hold defaults and are not validated).
#[derive(Debug, Default)]
struct Parsed {
    device: bool,
    runtime: bool,
    models: bool,
    mqtt: bool,
    preprocess: bool,
    events: bool,
    /// Original index of each deserialised source, in order.
    source_index: Vec<usize>,
    /// Original index of each deserialised prompt, in order.
    prompt_index: Vec<usize>,
    /// Names of sources that did not deserialise (for cross-references).
    other_source_names: Vec<String>,
    sources_total: usize,
    prompts_total: usize,
}

impl Parsed {
    fn complete(&self) -> bool {
        self.device
            && self.runtime
            && self.models
            && self.mqtt
            && self.preprocess
            && self.events
            && self.source_index.len() == self.sources_total
            && self.prompt_index.len() == self.prompts_total
    }
}

/// Deserialises section by section so that every section's errors are reported; failed sections are replaced
/// by defaults in the returned configuration and marked in [`Parsed`].
fn deserialize_sections(table: &toml::Table, issues: &mut Vec<ConfigIssue>) -> (Config, Parsed) {
    for key in table.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            issues.push(issue(
                key,
                format!("unknown section; expected one of {}", TOP_KEYS.join(", ")),
            ));
        }
    }
    fn section<T: serde::de::DeserializeOwned>(
        value: Option<&toml::Value>,
        path: &str,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<T> {
        let value = value.cloned().unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let message = e.inner().to_string().trim_end().to_owned();
                let mut full = if inner == "." || inner.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}.{inner}")
                };
                // serde names an unknown key only in its message; put it in the path so the line can be found.
                if let Some(field) = message
                    .split('`')
                    .nth(1)
                    .filter(|_| message.starts_with("unknown field"))
                {
                    full = format!("{full}.{field}");
                }
                issues.push(issue(&full, message));
                None
            }
        }
    }
    let mut parsed = Parsed::default();
    let device = match table.get("device") {
        Some(v) => section::<DeviceConfig>(Some(v), "device", issues),
        None => {
            issues.push(issue(
                "device",
                "missing: every configuration needs [device] with an id".into(),
            ));
            None
        }
    };
    parsed.device = device.is_some();
    let runtime = section::<RuntimeConfig>(table.get("runtime"), "runtime", issues);
    parsed.runtime = runtime.is_some();
    let models = section::<ModelsConfig>(table.get("models"), "models", issues);
    parsed.models = models.is_some();
    let mqtt = section::<MqttConfig>(table.get("mqtt"), "mqtt", issues);
    parsed.mqtt = mqtt.is_some();
    let preprocess = section::<PreprocessConfig>(table.get("preprocess"), "preprocess", issues);
    parsed.preprocess = preprocess.is_some();
    let events = section::<EventsConfig>(table.get("events"), "events", issues);
    parsed.events = events.is_some();
    let list = |key: &str, issues: &mut Vec<ConfigIssue>| -> Vec<toml::Value> {
        match table.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items.clone(),
            Some(_) => {
                issues.push(issue(key, format!("must be an array of tables ([[{key}]])")));
                Vec::new()
            }
        }
    };
    let mut sources = Vec::new();
    let raw_sources = list("sources", issues);
    parsed.sources_total = raw_sources.len();
    for (i, v) in raw_sources.iter().enumerate() {
        match section::<SourceConfig>(Some(v), &format!("sources[{i}]"), issues) {
            Some(s) => {
                sources.push(s);
                parsed.source_index.push(i);
            }
            None => {
                if let Some(name) = v.get("name").and_then(toml::Value::as_str) {
                    parsed.other_source_names.push(name.to_owned());
                }
            }
        }
    }
    let mut prompts = Vec::new();
    let raw_prompts = list("prompts", issues);
    parsed.prompts_total = raw_prompts.len();
    for (i, v) in raw_prompts.iter().enumerate() {
        if let Some(p) = section::<PromptConfig>(Some(v), &format!("prompts[{i}]"), issues) {
            prompts.push(p);
            parsed.prompt_index.push(i);
        }
    }
    let config = Config {
        device: device.unwrap_or(DeviceConfig {
            id: "unparsed".into(),
            name: None,
        }),
        runtime: runtime.unwrap_or_default(),
        models: models.unwrap_or_default(),
        mqtt: mqtt.unwrap_or_default(),
        preprocess: preprocess.unwrap_or_default(),
        events: events.unwrap_or_default(),
        sources,
        prompts,
    };
    (config, parsed)
}

fn issue(path: &str, message: String) -> ConfigIssue {
    ConfigIssue {
        path: path.to_owned(),
        line: None,
        message,
    }
}

/// True for `[a-z0-9_-]+`.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// Value and cross-reference checks of the parts that deserialised; appends to `issues`.
fn validate(loaded: &LoadedConfig, parsed: &Parsed, issues: &mut Vec<ConfigIssue>) {
    let c = &loaded.config;
    let mut push = |path: String, message: String| issues.push(issue(&path, message));
    if parsed.device && !is_slug(&c.device.id) {
        push(
            "device.id".into(),
            format!(
                "{:?} is not a valid id: use lower-case letters, digits, '_' and '-'",
                c.device.id
            ),
        );
    }
    if parsed.runtime {
        let r = &c.runtime;
        if r.top_k == 0 {
            push("runtime.top_k".into(), "must be at least 1".into());
        }
        if !(r.stats_interval_secs == 0.0 || (r.stats_interval_secs.is_finite() && r.stats_interval_secs >= 1.0)) {
            push(
                "runtime.stats_interval_secs".into(),
                format!("must be 0 (off) or at least 1, got {}", r.stats_interval_secs),
            );
        }
        if !(r.ring_secs.is_finite() && r.ring_secs >= 0.1 && r.ring_secs <= 3600.0) {
            push(
                "runtime.ring_secs".into(),
                format!("must be between 0.1 and 3600 seconds, got {}", r.ring_secs),
            );
        }
        if r.ring_max_bytes < 1 << 20 {
            push(
                "runtime.ring_max_bytes".into(),
                "must be at least 1 MiB (1048576)".into(),
            );
        }
    }
    if parsed.models {
        let m = &c.models;
        if m.threads == 0 || m.threads > 256 {
            push(
                "models.threads".into(),
                format!("must be between 1 and 256, got {}", m.threads),
            );
        }
        for modality in Modality::ALL {
            let Some(tower) = m.towers.get(modality) else { continue };
            if let Some(t) = tower.threads.filter(|&t| t == 0 || t > 256) {
                push(
                    format!("models.towers.{modality}.threads"),
                    format!("must be between 1 and 256, got {t}"),
                );
            }
        }
        let uses_ort = m.backend == Backend::Onnxruntime
            || Modality::ALL
                .iter()
                .any(|&x| m.towers.get(x).and_then(|t| t.backend) == Some(Backend::Onnxruntime));
        if uses_ort && !crate::encode::engine::ONNXRUNTIME_BUILT {
            push(
                "models.backend".into(),
                "onnxruntime: this sensebind was built without the `onnxruntime` feature (use auto or tract)".into(),
            );
        }
        if let Some(lib) = &m.onnxruntime.library {
            let resolved = resolve_library(&loaded.base, lib);
            if resolved.components().count() > 1 && !resolved.is_file() {
                push(
                    "models.onnxruntime.library".into(),
                    format!("{} does not exist", resolved.display()),
                );
            }
        }
        if m.onnxruntime.execution_providers.is_empty() {
            push(
                "models.onnxruntime.execution_providers".into(),
                "must list at least one provider, e.g. [{ type = \"cpu\" }]".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, ep) in m.onnxruntime.execution_providers.iter().enumerate() {
            if !seen.insert(ep.name()) {
                push(
                    format!("models.onnxruntime.execution_providers[{i}]"),
                    format!("{} is listed twice", ep.name()),
                );
            }
        }
        if m.max_batch == 0 || m.max_batch > 256 {
            push(
                "models.max_batch".into(),
                format!("must be between 1 and 256, got {}", m.max_batch),
            );
        }
        if m.queue_windows == 0 {
            push("models.queue_windows".into(), "must be at least 1".into());
        }
        if m.max_wait_ms > 10_000 {
            push(
                "models.max_wait_ms".into(),
                format!("must be at most 10000, got {}", m.max_wait_ms),
            );
        }
    }
    let manifest = if parsed.models {
        match crate::encode::ModelDir::open(&loaded.resolve(&c.models.dir)) {
            Ok(dir) => Some(dir),
            Err(e) => {
                push("models.dir".into(), e.to_string());
                None
            }
        }
    } else {
        None
    };
    if parsed.mqtt {
        let q = &c.mqtt;
        if q.enabled
            && let Err(e) = crate::publish::parse_broker_url(&q.url)
        {
            push("mqtt.url".into(), e);
        }
        if !is_slug(&q.prefix) {
            push(
                "mqtt.prefix".into(),
                format!("{:?} is not a valid topic level: use [a-z0-9_-]", q.prefix),
            );
        }
        if q.qos > 2 {
            push("mqtt.qos".into(), format!("must be 0, 1 or 2, got {}", q.qos));
        }
        if q.keep_alive_secs == 0 || q.keep_alive_secs > 65_535 {
            push(
                "mqtt.keep_alive_secs".into(),
                format!("must be between 1 and 65535, got {}", q.keep_alive_secs),
            );
        }
        for (key, v) in [
            ("queue_messages", q.queue_messages),
            ("queue_events", q.queue_events),
            ("queue_embeddings", q.queue_embeddings),
        ] {
            if v == 0 || v > 1_000_000 {
                push(format!("mqtt.{key}"), format!("must be between 1 and 1000000, got {v}"));
            }
        }
        if q.embeddings.every_n == 0 {
            push("mqtt.embeddings.every_n".into(), "must be at least 1".into());
        }
        for (name, e) in &q.embeddings.sensors {
            if !c.sources.iter().any(|s| s.name() == name) && !parsed.other_source_names.contains(name) {
                push(
                    format!("mqtt.embeddings.sensors.{name}"),
                    format!("no source is named {name:?}"),
                );
            }
            if e.every_n == Some(0) {
                push(
                    format!("mqtt.embeddings.sensors.{name}.every_n"),
                    "must be at least 1".into(),
                );
            }
        }
        if !is_slug(&q.homeassistant.discovery_prefix) {
            push(
                "mqtt.homeassistant.discovery_prefix".into(),
                format!(
                    "{:?} is not a valid topic level: use [a-z0-9_-]",
                    q.homeassistant.discovery_prefix
                ),
            );
        }
        let tls_url = crate::publish::parse_broker_url(&q.url).is_ok_and(|u| u.tls);
        for (key, file) in [
            ("ca_file", &q.tls.ca_file),
            ("client_cert", &q.tls.client_cert),
            ("client_key", &q.tls.client_key),
        ] {
            let Some(f) = file else { continue };
            if !tls_url {
                push(format!("mqtt.tls.{key}"), "only used with an mqtts:// url".into());
            } else if !loaded.resolve(f).is_file() {
                push(
                    format!("mqtt.tls.{key}"),
                    format!("{} does not exist", loaded.resolve(f).display()),
                );
            }
        }
        if q.tls.client_cert.is_some() != q.tls.client_key.is_some() {
            push(
                "mqtt.tls.client_cert".into(),
                "client_cert and client_key go together".into(),
            );
        }
        if q.password_env.is_some() && q.password_file.is_some() {
            push(
                "mqtt.password_env".into(),
                "set password_env or password_file, not both".into(),
            );
        }
        if let Some(var) = &q.password_env
            && std::env::var_os(var).is_none()
        {
            push(
                "mqtt.password_env".into(),
                format!("the environment variable {var} is not set"),
            );
        }
        if let Some(f) = &q.password_file
            && !loaded.resolve(f).is_file()
        {
            push(
                "mqtt.password_file".into(),
                format!("{} does not exist", loaded.resolve(f).display()),
            );
        }
        if (q.password_env.is_some() || q.password_file.is_some()) && q.username.is_none() {
            push("mqtt.username".into(), "a password needs a username".into());
        }
    }
    if parsed.events {
        let e = &c.events;
        let defaults = PromptConfig::new("defaults", "defaults");
        for (key, v) in [
            ("hold_secs", e.hold_secs),
            ("cooldown_secs", e.cooldown_secs),
            ("max_event_secs", e.max_event_secs),
            ("update_interval_secs", e.update_interval_secs),
        ] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                push(
                    format!("events.{key}"),
                    format!("must be between 0 and 86400 seconds, got {v}"),
                );
            }
        }
        if let Err(m) = defaults.event_params(e).validate() {
            push("events".into(), m);
        }
    }
    let preprocess_checks = if parsed.preprocess {
        vec![
            ("preprocess.depth", c.preprocess.depth.validate()),
            ("preprocess.thermal", c.preprocess.thermal.validate()),
            ("preprocess.imu", c.preprocess.imu.validate()),
        ]
    } else {
        Vec::new()
    };
    for (key, errors) in preprocess_checks {
        for e in errors {
            let (k, rest) = e.split_once(": ").unwrap_or(("", &e));
            let first_key = k.split('/').next().unwrap_or(k);
            push(format!("{key}.{first_key}"), rest.to_owned());
        }
    }
    let mut names = BTreeSet::new();
    for (pos, s) in c.sources.iter().enumerate() {
        let i = parsed.source_index.get(pos).copied().unwrap_or(pos);
        let p = |k: &str| format!("sources[{i}].{k}");
        if !is_slug(s.name()) {
            push(p("name"), format!("{:?} is not a valid name: use [a-z0-9_-]", s.name()));
        } else if !names.insert(s.name().to_owned()) {
            push(p("name"), format!("{:?} is used by another source", s.name()));
        }
        let w = s.window();
        if !(w.window_secs.is_finite() && w.window_secs > 0.0 && w.window_secs <= 600.0) {
            push(
                p("window_secs"),
                format!("must be between 0 and 600 seconds, got {}", w.window_secs),
            );
        }
        if !(w.hop_secs.is_finite() && w.hop_secs >= 0.01 && w.hop_secs <= 3600.0) {
            push(
                p("hop_secs"),
                format!("must be between 0.01 and 3600 seconds, got {}", w.hop_secs),
            );
        }
        if let Some(dir) = &manifest
            && dir.tower(s.modality()).is_err()
        {
            push(
                p("modality"),
                format!("the model directory has no {} tower", s.modality()),
            );
        }
        match s {
            SourceConfig::Replay(rc) => {
                if rc.paths.is_empty() {
                    push(p("paths"), "needs at least one file".into());
                }
                for (j, f) in rc.paths.iter().enumerate() {
                    let full = loaded.resolve(f);
                    if !full.exists() {
                        push(
                            format!("sources[{i}].paths[{j}]"),
                            format!("{} does not exist", full.display()),
                        );
                    }
                }
                if let Some(rate) = rc.rate_hz.filter(|r| !(r.is_finite() && *r > 0.0 && *r <= 1000.0)) {
                    push(p("rate_hz"), format!("must be between 0 and 1000, got {rate}"));
                }
            }
            SourceConfig::Synthetic(sc) => {
                if let Some(rate) = sc.rate_hz.filter(|r| !(r.is_finite() && *r > 0.0 && *r <= 192_000.0)) {
                    push(p("rate_hz"), format!("must be between 0 and 192000, got {rate}"));
                }
                if sc.modality == Modality::Audio && sc.rate_hz.is_some_and(|r| r < 4000.0) {
                    push(p("rate_hz"), "audio needs at least 4000 samples per second".into());
                }
                if !(sc.frequency_hz.is_finite() && sc.frequency_hz > 0.0) {
                    push(p("frequency_hz"), format!("must be positive, got {}", sc.frequency_hz));
                }
                if sc.width == 0 || sc.height == 0 || sc.width * sc.height > 4096 * 4096 {
                    push(
                        p("width"),
                        format!("{}x{} is not a usable frame size", sc.width, sc.height),
                    );
                }
                if sc.modality == Modality::Text && sc.texts.is_empty() {
                    push(
                        p("texts"),
                        "a synthetic text source needs texts to cycle through".into(),
                    );
                }
            }
            SourceConfig::Serial(sc) => {
                if sc.modality != Modality::Imu {
                    push(
                        p("modality"),
                        format!("serial sources are IMUs: use modality = \"imu\", got {}", sc.modality),
                    );
                }
                if !(50..=4_000_000).contains(&sc.baud_rate) {
                    push(
                        p("baud_rate"),
                        format!("must be between 50 and 4000000, got {}", sc.baud_rate),
                    );
                }
                if !(sc.rate_hz.is_finite() && sc.rate_hz > 0.0 && sc.rate_hz <= 10_000.0) {
                    push(p("rate_hz"), format!("must be between 0 and 10000, got {}", sc.rate_hz));
                }
                if sc.path.as_os_str().is_empty() {
                    push(p("path"), "needs the port's path, e.g. /dev/ttyUSB0".into());
                }
                if let Some(tc) = sc.time_column {
                    if sc.protocol != SerialProtocol::Csv {
                        push(
                            p("time_column"),
                            "only the csv protocol carries a device timestamp".into(),
                        );
                    }
                    let used = sc.acc_columns.iter().chain(sc.gyro_columns.iter().flatten());
                    if used.clone().any(|&c| c == tc) {
                        push(
                            p("time_column"),
                            format!("field {tc} is also an acceleration or angular-rate field"),
                        );
                    }
                }
            }
            SourceConfig::V4l2(vc) => {
                if !cfg!(feature = "v4l2") {
                    push(
                        p("type"),
                        "this build has no V4L2 support (built without the `v4l2` feature)".into(),
                    );
                }
                check_camera_modality(vc.modality, &mut |m| push(p("modality"), m));
                if vc.device.trim().is_empty() {
                    push(
                        p("device"),
                        "needs a path such as /dev/video0, or the card name or bus id".into(),
                    );
                }
                if let Some(f) = &vc.format {
                    match crate::sources::pixfmt::PixelFormat::from_name(f) {
                        None => push(
                            p("format"),
                            format!("{f:?} is not a supported pixel format (YUYV, MJPG, RGB3, GREY, Y16, Z16)"),
                        ),
                        Some(pf) if !crate::sources::camera::format_suits(pf, vc.modality) => push(
                            p("format"),
                            format!("{pf} frames cannot feed the {} tower", vc.modality),
                        ),
                        Some(_) => {}
                    }
                }
                match (vc.width, vc.height) {
                    (Some(w), Some(h)) if w == 0 || h == 0 || w > 16_384 || h > 16_384 => {
                        push(p("width"), format!("{w}x{h} is not a usable frame size"));
                    }
                    (Some(_), None) | (None, Some(_)) => {
                        push(p("width"), "set width and height together".into());
                    }
                    _ => {}
                }
                if let Some(r) = vc.rate_hz.filter(|r| !(r.is_finite() && *r > 0.0 && *r <= 1000.0)) {
                    push(p("rate_hz"), format!("must be between 0 and 1000, got {r}"));
                }
                if !(2..=32).contains(&vc.buffers) {
                    push(p("buffers"), format!("must be between 2 and 32, got {}", vc.buffers));
                }
                check_depth_unit(vc.depth_unit_m, &mut |m| push(p("depth_unit_m"), m));
            }
            SourceConfig::Gstreamer(gc) => {
                if !cfg!(feature = "gstreamer") {
                    push(
                        p("type"),
                        "this build has no GStreamer support (built without the `gstreamer` feature)".into(),
                    );
                }
                check_camera_modality(gc.modality, &mut |m| push(p("modality"), m));
                if gc.pipeline.trim().is_empty() {
                    push(
                        p("pipeline"),
                        "needs a pipeline, e.g. \"v4l2src device=/dev/video0\"".into(),
                    );
                }
                if let Some(r) = gc.rate_hz.filter(|r| !(r.is_finite() && *r > 0.0 && *r <= 1000.0)) {
                    push(p("rate_hz"), format!("must be between 0 and 1000, got {r}"));
                }
                check_depth_unit(gc.depth_unit_m, &mut |m| push(p("depth_unit_m"), m));
            }
            SourceConfig::Microphone(mc) => {
                if !cfg!(feature = "microphone") {
                    push(
                        p("type"),
                        "this build has no microphone support (built without the `microphone` feature)".into(),
                    );
                }
                if mc.modality != Modality::Audio {
                    push(
                        p("modality"),
                        format!("microphones are audio: use modality = \"audio\", got {}", mc.modality),
                    );
                }
                if mc.device.trim().is_empty() {
                    push(
                        p("device"),
                        "needs \"default\", a device id or part of a device name".into(),
                    );
                }
                if let Some(r) = mc.rate_hz.filter(|r| !(4000..=384_000).contains(r)) {
                    push(p("rate_hz"), format!("must be between 4000 and 384000, got {r}"));
                }
                if let Some(c) = mc.channels.filter(|c| !(1..=64).contains(c)) {
                    push(p("channels"), format!("must be between 1 and 64, got {c}"));
                }
                if let Some(c) = mc.channels.filter(|&c| mc.channel >= c) {
                    push(
                        p("channel"),
                        format!("channel {} does not exist with {c} channels (0-based)", mc.channel),
                    );
                }
            }
        }
    }
    let known: Vec<(String, Modality)> = c.sources.iter().map(|s| (s.name().to_owned(), s.modality())).collect();
    let all_names: Vec<String> = known
        .iter()
        .map(|(n, _)| n.clone())
        .chain(parsed.other_source_names.iter().cloned())
        .collect();
    let mut ids = BTreeSet::new();
    for (pos, pr) in c.prompts.iter().enumerate() {
        let i = parsed.prompt_index.get(pos).copied().unwrap_or(pos);
        for (k, m) in check_prompt(pr, &c.events, &known, &all_names) {
            push(format!("prompts[{i}].{k}"), m);
        }
        if is_slug(&pr.id) && !ids.insert(pr.id.clone()) {
            push(
                format!("prompts[{i}].id"),
                format!("{:?} is used by another prompt", pr.id),
            );
        }
    }
    if !c.prompts.is_empty()
        && let Some(dir) = &manifest
        && dir.tower(Modality::Text).is_err()
    {
        push("prompts".into(), "prompts need the model directory's text tower".into());
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The line of a key path like `sources[1].window_secs`, or of its nearest existing parent.
fn line_of_path(doc: &toml_edit::ImDocument<String>, text: &str, path: &str) -> Option<usize> {
    use toml_edit::{Item, Value};

    #[derive(Clone, Copy)]
    enum Node<'a> {
        Item(&'a Item),
        Value(&'a Value),
        Table(&'a toml_edit::Table),
    }
    fn child<'a>(node: Node<'a>, key: &str) -> Option<Node<'a>> {
        match node {
            Node::Item(Item::Table(t)) | Node::Table(t) => t.get(key).map(Node::Item),
            Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => {
                t.get(key).map(Node::Value)
            }
            _ => None,
        }
    }
    fn index(node: Node<'_>, i: usize) -> Option<Node<'_>> {
        match node {
            Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => a.get(i).map(Node::Value),
            _ => None,
        }
    }
    fn start(node: Node<'_>) -> Option<usize> {
        match node {
            Node::Item(Item::Value(v)) | Node::Value(v) => v.span().map(|s| s.start),
            Node::Item(Item::Table(t)) | Node::Table(t) => t.span().map(|s| s.start),
            Node::Item(Item::ArrayOfTables(a)) => a.span().map(|s| s.start),
            Node::Item(Item::None) => None,
        }
    }
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, idx) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = child(node, key) else { break };
        node = next;
        if let Some(at) = start(node) {
            best = Some(line_of(text, at));
        }
        if let Some(i) = idx {
            let Some(next) = index(node, i) else { break };
            node = next;
            if let Some(at) = start(node) {
                best = Some(line_of(text, at));
            }
        }
    }
    best
}

/// The JSON Schema of the configuration, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}
