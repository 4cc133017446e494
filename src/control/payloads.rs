//! Every JSON payload of the MQTT contract (docs/mqtt.md, docs/schemas/*.schema.json) as a typed struct, with one
//! builder function per payload; plus the plain-text sensor status.
//!
//! A payload that cannot be serialised is never published (and for retained state, never replaced by an empty
//! message, which would clear the topic on the broker): [`json_message`] and [`retained`] log it and return
//! `None`, and the controller counts it (`stats.events.payload_errors_total`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::events::{EndReason, EventsConfig};
use crate::labels::{LabelScore, PromptSet};
use crate::publish::config::{EmbeddingMode, EmbeddingsConfig};
use crate::publish::embedding::{Dtype, Encoding};
use crate::publish::{Class, OutMessage, Topics};

/// Schema id of [`LabelsMessage`].
pub const LABELS_SCHEMA: &str = "labels/1";
/// Schema id of [`EventMessage`].
pub const EVENT_SCHEMA: &str = "event/1";
/// Schema id of [`InfoMessage`].
pub const INFO_SCHEMA: &str = "info/1";
/// Schema id of [`ConfigStateMessage`].
pub const CONFIG_STATE_SCHEMA: &str = "config-state/1";
/// Schema id of [`PromptsStateMessage`].
pub const PROMPTS_STATE_SCHEMA: &str = "prompts-state/1";
/// Schema id of [`CmdResponse`].
pub const CMD_RESPONSE_SCHEMA: &str = "cmd-response/1";
/// Schema id of [`StatsMessage`].
pub const STATS_SCHEMA: &str = "stats/1";

/// `value` as JSON in a message made by `make`; `None` (logged) when it cannot be serialised.
pub fn json_message(
    topic: String,
    value: &impl Serialize,
    make: impl FnOnce(String, Vec<u8>) -> OutMessage,
) -> Option<OutMessage> {
    match serde_json::to_vec(value) {
        Ok(payload) => Some(make(topic, payload)),
        Err(e) => {
            tracing::error!(topic = %topic, error = %e, "Cannot serialise a payload; it is not published.");
            None
        }
    }
}

/// Retained state carrying `value` as JSON; `None` (logged) when it cannot be serialised — never an empty payload,
/// which would clear the topic on the broker.
pub fn retained(topic: String, value: &impl Serialize) -> Option<OutMessage> {
    json_message(topic, value, OutMessage::state)
}

/// `labels/1`: one window's best labels.
#[derive(Debug, Clone, Serialize)]
pub struct LabelsMessage {
    /// Payload schema id.
    pub schema: &'static str,
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Deprecated alias of `sensor` (same value), kept for `labels/1` only.
    pub source: String,
    /// Modality of the sensor.
    pub modality: String,
    /// Per-sensor window sequence number, from 0, without gaps except for dropped windows.
    pub seq: u64,
    /// Time of the window's first sample (RFC 3339, UTC).
    pub t0: String,
    /// Time of the window's end.
    pub t1: String,
    /// `t0` on the monotonic clock, nanoseconds.
    pub t0_mono_ns: u64,
    /// `t1` on the monotonic clock, nanoseconds.
    pub t1_mono_ns: u64,
    /// When the message was made (RFC 3339).
    pub ts: String,
    /// From the window's end to this message, milliseconds.
    pub latency_ms: f64,
    /// Model id (`name@sha256-prefix`) of the tower that embedded the window.
    pub model: String,
    /// The best labels, highest score first.
    pub labels: Vec<LabelScore>,
}

/// The window a labels or event message is about.
#[derive(Debug, Clone, Copy)]
pub struct WindowTimes {
    /// Per-sensor window number.
    pub seq: u64,
    /// First sample.
    pub t0: crate::clock::Timestamp,
    /// Window end.
    pub t1: crate::clock::Timestamp,
    /// Now, when the message is made.
    pub now: crate::clock::Timestamp,
}

impl WindowTimes {
    fn latency_ms(&self) -> f64 {
        self.now.since(self.t1).as_secs_f64() * 1e3
    }
}

/// Builds `labels/1`.
pub fn labels(
    device: &str,
    sensor: &str,
    modality: &str,
    w: WindowTimes,
    model: &str,
    labels: Vec<LabelScore>,
) -> LabelsMessage {
    use crate::clock::rfc3339_of;
    LabelsMessage {
        schema: LABELS_SCHEMA,
        device: device.to_owned(),
        sensor: sensor.to_owned(),
        source: sensor.to_owned(),
        modality: modality.to_owned(),
        seq: w.seq,
        t0: rfc3339_of(w.t0),
        t1: rfc3339_of(w.t1),
        t0_mono_ns: w.t0.0,
        t1_mono_ns: w.t1.0,
        ts: rfc3339_of(w.now),
        latency_ms: w.latency_ms(),
        model: model.to_owned(),
        labels,
    }
}

/// `event/1` message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The event started.
    Start,
    /// Its score rose.
    Update,
    /// It ended.
    End,
}

/// A prompt's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Onset.
    pub on: f32,
    /// Release.
    pub off: f32,
    /// The scale of `score` and the thresholds: `softmax`, `cosine` or `zscore`.
    pub mode: &'static str,
}

/// Another label of the same window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerUp {
    /// Label id.
    pub label: String,
    /// Its score.
    pub score: f32,
}

/// The window that caused an event message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventWindow {
    /// Window number (as in `labels/1`).
    pub seq: u64,
    /// First sample, RFC 3339.
    pub t0: String,
    /// End, RFC 3339.
    pub t1: String,
    /// From the window's end to the message, ms.
    pub latency_ms: f64,
}

impl From<WindowTimes> for EventWindow {
    fn from(w: WindowTimes) -> Self {
        Self {
            seq: w.seq,
            t0: crate::clock::rfc3339_of(w.t0),
            t1: crate::clock::rfc3339_of(w.t1),
            latency_ms: w.latency_ms(),
        }
    }
}

/// `event/1`: one message of an event's lifecycle.
#[derive(Debug, Clone, Serialize)]
pub struct EventMessage {
    /// Payload schema id.
    pub schema: &'static str,
    /// Start, update or end.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// `{session}-{sensor}-{label}-{n}`.
    pub id: String,
    /// Device id.
    pub device: String,
    /// Which sensor and label (`sensor`, `modality`, `label`, `prompt` in the payload).
    #[serde(flatten)]
    pub subject: EventSubject,
    /// Aggregated score now.
    pub score: f32,
    /// Highest aggregated score of the event so far.
    pub peak: f32,
    /// The window's cosine with the prompt (null when no window caused the message).
    pub cos: Option<f32>,
    /// The prompt's thresholds (null in an end sent after a restart).
    pub thresholds: Option<Thresholds>,
    /// The next labels of the same window.
    pub runner_up: Vec<RunnerUp>,
    /// The window that caused the message (null for forced ends).
    pub window: Option<EventWindow>,
    /// Start, RFC 3339.
    pub start_time: String,
    /// End, RFC 3339 (ends only).
    pub end_time: Option<String>,
    /// Why it ended (ends only).
    pub end_reason: Option<&'static str>,
    /// Length of the event, s (ends only, null after a restart).
    pub duration_s: Option<f64>,
    /// When the message was made.
    pub ts: String,
    /// Message number within the event.
    pub seq: u64,
    /// Daemon session.
    pub session: u64,
    /// The tower that embedded the window.
    pub model: Option<String>,
    /// Prompt-set revision.
    pub config_rev: u64,
    /// The event's evidence on disk (`update` and `end` of events with `[evidence]`; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<super::evidence::EvidenceRef>,
}

/// The sensor and label an event is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventSubject {
    /// Sensor name.
    pub sensor: String,
    /// Sensor modality.
    pub modality: String,
    /// Label id.
    pub label: String,
    /// The prompt's first text.
    pub prompt: String,
}

/// How an event ended.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnd {
    /// End, RFC 3339.
    pub time: String,
    /// Why.
    pub reason: Option<EndReason>,
    /// Length, s, when known.
    pub duration_s: Option<f64>,
}

/// What an event message says, apart from what the daemon adds (device, session, revision, `ts`).
#[derive(Debug, Clone)]
pub struct EventFacts {
    /// Event id.
    pub id: String,
    /// Message number within the event.
    pub seq: u64,
    /// Start, update or end.
    pub kind: EventType,
    /// Which sensor and label.
    pub subject: EventSubject,
    /// Aggregated score.
    pub score: f32,
    /// Peak.
    pub peak: f32,
    /// Thresholds, when known.
    pub thresholds: Option<Thresholds>,
    /// Start, RFC 3339.
    pub start_time: String,
    /// The end (ends only).
    pub end: Option<EventEnd>,
    /// The window that caused the message, if one did.
    pub cause: Option<WindowCause>,
    /// The event's evidence, when it has some.
    pub evidence: Option<super::evidence::EvidenceRef>,
}

/// A window that caused an event message.
#[derive(Debug, Clone)]
pub struct WindowCause {
    /// The window's cosine with the prompt.
    pub cos: f32,
    /// The next labels.
    pub runner_up: Vec<RunnerUp>,
    /// The window.
    pub window: EventWindow,
    /// The tower.
    pub model: String,
}

/// Who publishes: the fields every event message carries besides its facts.
#[derive(Debug, Clone, Copy)]
pub struct Publisher<'a> {
    /// Device id.
    pub device: &'a str,
    /// Daemon session.
    pub session: u64,
    /// Prompt-set revision.
    pub config_rev: u64,
}

/// Builds `event/1` (the only place an event message is made).
pub fn event(by: Publisher<'_>, ts: String, f: EventFacts) -> EventMessage {
    let (cos, runner_up, window, model) = match f.cause {
        Some(c) => (Some(c.cos), c.runner_up, Some(c.window), Some(c.model)),
        None => (None, Vec::new(), None, None),
    };
    EventMessage {
        schema: EVENT_SCHEMA,
        kind: f.kind,
        id: f.id,
        device: by.device.to_owned(),
        subject: f.subject,
        score: f.score,
        peak: f.peak,
        cos,
        thresholds: f.thresholds,
        runner_up,
        window,
        start_time: f.start_time,
        end_time: f.end.as_ref().map(|e| e.time.clone()),
        end_reason: f.end.as_ref().and_then(|e| e.reason).map(|r| r.as_str()),
        duration_s: f.end.and_then(|e| e.duration_s),
        ts,
        seq: f.seq,
        session: by.session,
        model,
        config_rev: by.config_rev,
        evidence: f.evidence,
    }
}

/// A loaded tower, in `info/1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model id.
    pub model: String,
    /// Engine (`tract`, `onnxruntime`).
    pub backend: String,
    /// Embedding dimension.
    pub dim: usize,
}

/// A sensor, in `info/1`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorDescription {
    /// Name.
    pub name: String,
    /// Modality.
    pub modality: String,
    /// Window length, s.
    pub window_secs: f64,
    /// Hop, s.
    pub hop_secs: f64,
}

/// The embedding settings, in `info/1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EmbeddingsInfo {
    /// Default rate control.
    pub mode: EmbeddingMode,
    /// Element type.
    pub dtype: Dtype,
    /// Encoding.
    pub encoding: Encoding,
}

/// What the daemon can do, in `info/1`.
pub const CAPABILITIES: [&str; 7] = [
    "events",
    "label_state",
    "embeddings",
    "prompts_set",
    "enabled_set",
    "cmd",
    "homeassistant",
];

/// `info/1`: the daemon, its models and sensors.
#[derive(Debug, Clone, Serialize)]
pub struct InfoMessage {
    /// Payload schema id.
    pub schema: &'static str,
    /// Device id.
    pub device: String,
    /// Device name.
    pub name: String,
    /// Daemon version.
    pub version: &'static str,
    /// Daemon session.
    pub session: u64,
    /// Process start, RFC 3339.
    pub started_at: String,
    /// Prompt-set revision.
    pub config_rev: u64,
    /// Towers by modality.
    pub models: BTreeMap<String, ModelInfo>,
    /// Sensors.
    pub sensors: Vec<SensorDescription>,
    /// Capabilities.
    pub capabilities: [&'static str; 7],
    /// Embedding settings.
    pub embeddings: EmbeddingsInfo,
}

/// The daemon as `info/1` describes it.
#[derive(Debug, Clone)]
pub struct DaemonInfo<'a> {
    /// Device id.
    pub device: &'a str,
    /// Device name.
    pub name: &'a str,
    /// Session.
    pub session: u64,
    /// Revision.
    pub config_rev: u64,
    /// Towers.
    pub models: &'a BTreeMap<String, ModelInfo>,
    /// Sensors.
    pub sensors: Vec<SensorDescription>,
    /// Embedding settings.
    pub embeddings: &'a EmbeddingsConfig,
}

/// Builds `info/1`.
pub fn info(d: DaemonInfo<'_>) -> InfoMessage {
    InfoMessage {
        schema: INFO_SCHEMA,
        device: d.device.to_owned(),
        name: d.name.to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        session: d.session,
        started_at: crate::clock::rfc3339_of(crate::clock::Timestamp(0)),
        config_rev: d.config_rev,
        models: d.models.clone(),
        sensors: d.sensors,
        capabilities: CAPABILITIES,
        embeddings: EmbeddingsInfo {
            mode: d.embeddings.mode,
            dtype: d.embeddings.dtype,
            encoding: d.embeddings.encoding,
        },
    }
}

/// Outcome of the last configuration change, in `config-state/1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigStatus {
    /// Applied.
    Ok,
    /// Refused; nothing changed.
    Rejected,
}

/// Where the active prompts came from, in `config-state/1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PromptsOrigin {
    /// The configuration file.
    #[serde(rename = "config")]
    Config,
    /// Saved from earlier `prompts/set` updates.
    #[serde(rename = "state_file")]
    StateFile,
    /// A `prompts/set` update.
    #[serde(rename = "prompts/set")]
    PromptsSet,
    /// A configuration reload (SIGHUP, `systemctl reload`, `cmd` `reload`).
    #[serde(rename = "reload")]
    Reload,
}

impl PromptsOrigin {
    /// From the names the runtime uses (`config`, `state_file`, `prompts/set`); anything else is `config`.
    pub fn from_name(name: &str) -> Self {
        match name {
            "state_file" => Self::StateFile,
            "prompts/set" => Self::PromptsSet,
            "reload" => Self::Reload,
            _ => Self::Config,
        }
    }
}

/// `config-state/1`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStateMessage {
    /// Payload schema id.
    pub schema: &'static str,
    /// Revision.
    pub rev: u64,
    /// Outcome.
    pub status: ConfigStatus,
    /// When, RFC 3339.
    pub applied_at: String,
    /// Where the prompts came from.
    pub source: PromptsOrigin,
    /// The request's id.
    pub request_id: Option<String>,
    /// Every error (rejected only).
    pub errors: Vec<String>,
    /// Active prompts.
    pub prompts: usize,
    /// sha256 of the configuration file running (a rejected reload leaves the last good one).
    pub config_hash: String,
    /// Sources the last reload restarted.
    pub restarted: Vec<String>,
    /// Settings changed in the file that take effect at the next start.
    pub pending_restart: Vec<String>,
}

/// What `config/state` says about the configuration file (kept between reloads).
#[derive(Debug, Clone, Default)]
pub struct FileState {
    /// sha256 of the file running.
    pub config_hash: String,
    /// Sources restarted by the last reload.
    pub restarted: Vec<String>,
    /// Settings changed in the file that wait for a restart.
    pub pending_restart: Vec<String>,
}

/// What `config-state/1` reports besides the outcome.
pub struct ConfigStateInput<'a> {
    /// Revision.
    pub rev: u64,
    /// What made the change.
    pub source: PromptsOrigin,
    /// The request's id.
    pub request_id: Option<&'a str>,
    /// Active prompts.
    pub prompts: usize,
    /// The configuration file and the last reload.
    pub file: &'a FileState,
}

/// Builds `config-state/1`.
pub fn config_state(
    input: ConfigStateInput<'_>,
    result: Result<(), &[String]>,
    applied_at: String,
) -> ConfigStateMessage {
    let (status, errors) = match result {
        Ok(()) => (ConfigStatus::Ok, Vec::new()),
        Err(e) => (ConfigStatus::Rejected, e.to_vec()),
    };
    ConfigStateMessage {
        schema: CONFIG_STATE_SCHEMA,
        rev: input.rev,
        status,
        applied_at,
        source: input.source,
        request_id: input.request_id.map(str::to_owned),
        errors,
        prompts: input.prompts,
        config_hash: input.file.config_hash.clone(),
        restarted: input.file.restarted.clone(),
        pending_restart: input.file.pending_restart.clone(),
    }
}

/// One active prompt with every parameter resolved, in `prompts-state/1`.
#[derive(Debug, Clone, Serialize)]
pub struct PromptState {
    /// Label id.
    pub id: String,
    /// Phrasings.
    pub texts: Vec<String>,
    /// Modalities it applies to (empty: all).
    pub modalities: Vec<String>,
    /// Sensors it applies to (empty: all).
    pub sources: Vec<String>,
    /// Onset threshold.
    pub threshold: f32,
    /// Release threshold.
    pub off_threshold: f32,
    /// The event parameters in force for this prompt: its own overrides over `[events]` (`aggregate`,
    /// `aggregate_windows`, `onset_k`, `onset_n`, `hold_secs`, `cooldown_secs`, `max_event_secs`,
    /// `update_interval_secs` in the payload).
    #[serde(flatten)]
    pub events: EventsConfig,
    /// Switched on.
    pub enabled: bool,
    /// First 12 hex digits of the sha256 of the embedding.
    pub embedding_sha: String,
    /// `label` or `background`.
    pub role: crate::labels::PromptRole,
    /// `softmax`, `cosine` or `zscore`.
    pub mode: crate::labels::ScoreMode,
    /// The exemplars (base64 data as the path it was stored at); left out when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exemplars: Vec<crate::labels::exemplar::ExemplarSpec>,
}

/// `prompts-state/1`.
#[derive(Debug, Clone, Serialize)]
pub struct PromptsStateMessage {
    /// Payload schema id.
    pub schema: &'static str,
    /// Revision.
    pub rev: u64,
    /// The active prompts.
    pub prompts: Vec<PromptState>,
}

/// Builds `prompts-state/1`.
pub fn prompts_state(
    rev: u64,
    prompts: &PromptSet,
    events: &EventsConfig,
    disabled: &BTreeSet<String>,
) -> PromptsStateMessage {
    use sha2::{Digest, Sha256};
    let prompts = prompts
        .prompts()
        .iter()
        .map(|p| {
            let params = p.config.event_params(events);
            let bytes: Vec<u8> = p.embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
            PromptState {
                id: p.id.clone(),
                texts: p.texts.clone(),
                modalities: p.config.modalities.iter().map(ToString::to_string).collect(),
                sources: p.config.sources.clone(),
                threshold: params.on,
                off_threshold: params.off,
                events: EventsConfig {
                    aggregate: params.aggregate,
                    aggregate_windows: params.aggregate_windows,
                    onset_k: params.onset_k,
                    onset_n: params.onset_n,
                    hold_secs: params.hold.as_secs_f64(),
                    cooldown_secs: params.cooldown.as_secs_f64(),
                    max_event_secs: params.max_event.as_secs_f64(),
                    update_interval_secs: params.update_interval.as_secs_f64(),
                },
                enabled: !disabled.contains(&p.id),
                embedding_sha: crate::util::hex(&Sha256::digest(&bytes))[..12].to_owned(),
                role: p.config.role,
                mode: p.config.mode,
                exemplars: p.config.exemplars.clone(),
            }
        })
        .collect();
    PromptsStateMessage {
        schema: PROMPTS_STATE_SCHEMA,
        rev,
        prompts,
    }
}

/// A sensor's status on `…/sensor/{sensor}/status` (plain text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorStatus {
    /// Delivering.
    Online,
    /// Its device is gone or not yet open.
    Offline,
    /// Switched off over MQTT.
    Disabled,
}

impl SensorStatus {
    /// Every status the daemon publishes.
    pub const ALL: [SensorStatus; 3] = [Self::Online, Self::Offline, Self::Disabled];

    /// The status of a sensor that is `enabled` and `online`.
    pub fn of(enabled: bool, online: bool) -> Self {
        match (enabled, online) {
            (false, _) => Self::Disabled,
            (true, true) => Self::Online,
            (true, false) => Self::Offline,
        }
    }

    /// The payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Disabled => "disabled",
        }
    }
}

/// What an applied command did, in `cmd-response/1`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CmdResult {
    /// `prompts/set`.
    PromptsSet {
        /// The new revision.
        rev: u64,
        /// Ids added or replaced.
        upserted: Vec<String>,
        /// Ids deleted.
        deleted: Vec<String>,
        /// Active prompts now.
        prompts: usize,
    },
    /// `…/enabled/set`.
    Enabled {
        /// `ON` or `OFF`.
        enabled: &'static str,
    },
    /// `rebirth`.
    Republished {
        /// Retained messages queued again.
        republished: usize,
    },
    /// `get_info`.
    Info(Box<InfoMessage>),
    /// `reload`.
    Reloaded {
        /// sha256 of the configuration file now running.
        config_hash: String,
        /// Sources stopped and started anew.
        restarted: Vec<String>,
        /// Settings that changed and take effect at the next start.
        pending_restart: Vec<String>,
        /// Active prompts now.
        prompts: usize,
    },
}

/// `cmd-response/1`.
#[derive(Debug, Clone, Serialize)]
pub struct CmdResponse {
    /// Payload schema id.
    pub schema: &'static str,
    /// What was asked.
    pub command: String,
    /// The request's id.
    pub request_id: Option<String>,
    /// Applied.
    pub ok: bool,
    /// What was done (ok only).
    pub result: Option<CmdResult>,
    /// Every error (empty when ok).
    pub errors: Vec<String>,
    /// When.
    pub ts: String,
}

/// Builds `cmd-response/1`.
pub fn cmd_response(
    command: &str,
    request_id: Option<&str>,
    result: Result<CmdResult, Vec<String>>,
    ts: String,
) -> CmdResponse {
    let (ok, result, errors) = match result {
        Ok(r) => (true, Some(r), Vec::new()),
        Err(e) => (false, None, e),
    };
    CmdResponse {
        schema: CMD_RESPONSE_SCHEMA,
        command: command.to_owned(),
        request_id: request_id.map(str::to_owned),
        ok,
        result,
        errors,
        ts,
    }
}

/// Home Assistant platforms the daemon discovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// ON/OFF sensor.
    BinarySensor,
    /// Switch.
    Switch,
    /// Image (evidence snapshots).
    Image,
}

/// Home Assistant entity categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityCategory {
    /// A setting.
    Config,
    /// Diagnostics.
    Diagnostic,
}

/// One discovered entity (abbreviated keys, as Home Assistant accepts them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaEntity {
    /// Platform.
    pub p: Platform,
    /// Unique id.
    pub unique_id: String,
    /// Entity name.
    pub name: String,
    /// Device class (binary sensors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_cla: Option<String>,
    /// Entity category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ent_cat: Option<EntityCategory>,
    /// Command topic (switches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd_t: Option<String>,
    /// State topic.
    pub stat_t: String,
    /// Value template: maps the state payload to `pl_on`/`pl_off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_tpl: Option<String>,
    /// Payload (after the template) meaning on.
    pub pl_on: &'static str,
    /// Payload (after the template) meaning off.
    pub pl_off: &'static str,
}

/// An `image` entity: the retained snapshot topic of a (sensor, label) pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaImage {
    /// Platform (`image`).
    pub p: Platform,
    /// Unique id.
    pub unique_id: String,
    /// Entity name.
    pub name: String,
    /// The retained snapshot topic (raw image bytes).
    pub image_topic: String,
    /// `image/jpeg` or `image/png`.
    pub content_type: &'static str,
}

/// A discovery component: an entity, or a removal stub with only its platform.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HaComponent {
    /// An entity.
    Entity(Box<HaEntity>),
    /// An image (the latest evidence snapshot of a camera and label).
    Image(Box<HaImage>),
    /// Removes the entity of this id.
    Removed {
        /// Platform.
        p: Platform,
    },
}

/// The device, in discovery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaDevice {
    /// Ids.
    pub ids: [String; 1],
    /// Name.
    pub name: String,
    /// Manufacturer.
    pub mf: &'static str,
    /// Model.
    pub mdl: &'static str,
    /// Software version.
    pub sw: &'static str,
}

/// The origin of the discovery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaOrigin {
    /// Name.
    pub name: &'static str,
    /// Version.
    pub sw: &'static str,
}

/// An availability topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HaAvailability {
    /// Topic.
    pub t: String,
}

/// Home Assistant device discovery, retained on `homeassistant/device/{device}/config`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discovery {
    /// The device.
    pub dev: HaDevice,
    /// The origin.
    pub o: HaOrigin,
    /// Availability.
    pub avty: [HaAvailability; 1],
    /// QoS of the entities.
    pub qos: u8,
    /// Components by id (`{kind}-{name}`).
    pub cmps: BTreeMap<String, HaComponent>,
}

/// Maps every [`SensorStatus`] onto the connectivity binary_sensor's `ON`/`OFF`: `online` is connected, anything
/// else (`offline`, `disabled`) is not.
pub const SENSOR_STATUS_TEMPLATE: &str = "{{ 'ON' if value == 'online' else 'OFF' }}";

/// What discovery is made of.
#[derive(Debug, Clone)]
pub struct DiscoveryInput<'a> {
    /// Device id.
    pub device: &'a str,
    /// Device name.
    pub device_name: &'a str,
    /// Topics.
    pub topics: &'a Topics,
    /// Labels with their device class.
    pub labels: Vec<(String, String)>,
    /// Labels deleted (their entities are removed).
    pub removed: Vec<String>,
    /// Sensor names.
    pub sensors: Vec<String>,
    /// Sensors removed by a reload (their entities are removed).
    pub removed_sensors: Vec<String>,
    /// (sensor, label, content type) pairs whose evidence snapshots are published: one `image` each.
    pub images: Vec<(String, String, &'static str)>,
    /// (sensor, label) pairs of deleted labels and removed sensors: their `image`s are removed.
    pub removed_images: Vec<(String, String)>,
}

fn switch(device: &str, component: &str, name: String, cmd_t: String, stat_t: String) -> HaComponent {
    HaComponent::Entity(Box::new(HaEntity {
        p: Platform::Switch,
        unique_id: format!("{device}_{component}"),
        name,
        dev_cla: None,
        ent_cat: Some(EntityCategory::Config),
        cmd_t: Some(cmd_t),
        stat_t,
        val_tpl: None,
        pl_on: "ON",
        pl_off: "OFF",
    }))
}

/// Builds the Home Assistant device discovery. Component ids are `{kind}-{name}`: the kinds differ before their
/// `-` and names cannot contain a kind, so a label called `x_enabled` cannot collide with label `x`'s switch.
pub fn discovery(d: DiscoveryInput<'_>) -> Discovery {
    let (t, id) = (d.topics, d.device);
    let mut cmps = BTreeMap::new();
    for (label, class) in d.labels {
        let component = format!("label-{label}");
        let entity = HaEntity {
            p: Platform::BinarySensor,
            unique_id: format!("{id}_{component}"),
            name: label.clone(),
            dev_cla: Some(class),
            ent_cat: None,
            cmd_t: None,
            stat_t: t.label_state(&label),
            val_tpl: None,
            pl_on: "ON",
            pl_off: "OFF",
        };
        cmps.insert(component, HaComponent::Entity(Box::new(entity)));
        let component = format!("label_switch-{label}");
        let (set, state) = (t.label_enabled_set(&label), t.label_enabled_state(&label));
        cmps.insert(
            component.clone(),
            switch(id, &component, format!("{label} enabled"), set, state),
        );
    }
    for label in d.removed {
        cmps.insert(
            format!("label-{label}"),
            HaComponent::Removed {
                p: Platform::BinarySensor,
            },
        );
        cmps.insert(
            format!("label_switch-{label}"),
            HaComponent::Removed { p: Platform::Switch },
        );
    }
    for sensor in d.removed_sensors {
        cmps.insert(
            format!("sensor-{sensor}"),
            HaComponent::Removed {
                p: Platform::BinarySensor,
            },
        );
        cmps.insert(
            format!("sensor_switch-{sensor}"),
            HaComponent::Removed { p: Platform::Switch },
        );
    }
    for sensor in d.sensors {
        let component = format!("sensor-{sensor}");
        let entity = HaEntity {
            p: Platform::BinarySensor,
            unique_id: format!("{id}_{component}"),
            name: format!("{sensor} connected"),
            dev_cla: Some("connectivity".into()),
            ent_cat: Some(EntityCategory::Diagnostic),
            cmd_t: None,
            stat_t: t.sensor_status(&sensor),
            val_tpl: Some(SENSOR_STATUS_TEMPLATE.into()),
            pl_on: "ON",
            pl_off: "OFF",
        };
        cmps.insert(component, HaComponent::Entity(Box::new(entity)));
        let component = format!("sensor_switch-{sensor}");
        let (set, state) = (t.sensor_enabled_set(&sensor), t.sensor_enabled_state(&sensor));
        cmps.insert(
            component.clone(),
            switch(id, &component, format!("{sensor} enabled"), set, state),
        );
    }
    for (sensor, label) in d.removed_images {
        cmps.insert(
            format!("snapshot-{sensor}-{label}"),
            HaComponent::Removed { p: Platform::Image },
        );
    }
    for (sensor, label, content_type) in d.images {
        let component = format!("snapshot-{sensor}-{label}");
        let image = HaImage {
            p: Platform::Image,
            unique_id: format!("{id}_{component}"),
            name: format!("{sensor} {label} snapshot"),
            image_topic: t.snapshot(&sensor, &label),
            content_type,
        };
        cmps.insert(component, HaComponent::Image(Box::new(image)));
    }
    let sw = env!("CARGO_PKG_VERSION");
    Discovery {
        dev: HaDevice {
            ids: [id.to_owned()],
            name: d.device_name.to_owned(),
            mf: "sensebind",
            mdl: "sensebind",
            sw,
        },
        o: HaOrigin { name: "sensebind", sw },
        avty: [HaAvailability { t: t.availability() }],
        qos: 1,
        cmps,
    }
}

/// A count per outbox class, in `stats/1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PerClass {
    /// Retained state and command responses.
    pub state: u64,
    /// Events.
    pub events: u64,
    /// Labels and stats.
    pub telemetry: u64,
    /// Embeddings.
    pub embeddings: u64,
}

impl PerClass {
    /// `f` of every class.
    pub fn from_fn(f: impl Fn(Class) -> u64) -> Self {
        Self {
            state: f(Class::State),
            events: f(Class::Event),
            telemetry: f(Class::Telemetry),
            embeddings: f(Class::Embedding),
        }
    }
}

/// One source's counters, in `stats/1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceStatsEntry {
    /// Delivering.
    pub online: bool,
    /// Samples produced.
    pub samples_total: u64,
    /// Read errors.
    pub read_errors_total: u64,
    /// Bytes that did not decode.
    pub garbage_bytes_total: u64,
    /// Times the device went away.
    pub lost_total: u64,
    /// Samples per second over the last full second.
    pub rate_hz: f64,
    /// Timestamp gaps.
    pub gaps_total: u64,
    /// Longest gap, ms.
    pub max_gap_ms: u64,
    /// Samples the device delivered but the source dropped.
    pub overrun_samples_total: u64,
    /// Samples the ring dropped.
    pub ring_dropped_total: u64,
    /// Windows cut.
    pub windows_total: u64,
    /// Windows whose preprocessing failed.
    pub window_errors_total: u64,
    /// Windows scored against the prompts.
    pub windows_scored_total: u64,
    /// Of those, windows a gate found unchanged (scored with the previous embedding).
    pub windows_gated_total: u64,
}

/// One modality's encoder counters, in `stats/1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EncoderStatsEntry {
    /// Engine (`tract`, `onnxruntime`, `none`).
    pub backend: &'static str,
    /// Windows waiting in the queue now.
    pub queued: u64,
    /// Windows queued.
    pub windows_queued_total: u64,
    /// Windows dropped (queue full).
    pub windows_dropped_total: u64,
    /// Windows embedded.
    pub windows_encoded_total: u64,
    /// Windows lost to inference errors.
    pub windows_failed_total: u64,
    /// Windows a gate found unchanged: the previous embedding was reused, the encoder did not run.
    pub windows_gated_total: u64,
    /// Encoder calls.
    pub batches_total: u64,
    /// Average inference time per call, ms.
    pub infer_ms_avg: f64,
}

/// The MQTT connection and outbox, in `stats/1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MqttStatsEntry {
    /// Connected now.
    pub connected: bool,
    /// CONNACKs received.
    pub connects_total: u64,
    /// Connection errors.
    pub errors_total: u64,
    /// Messages waiting.
    pub queued: u64,
    /// Messages waiting per class.
    pub queued_by_class: PerClass,
    /// Messages dropped.
    pub dropped_total: u64,
    /// Messages dropped per class.
    pub dropped: PerClass,
    /// Messages handed to the client.
    pub sent_total: u64,
    /// Messages sent again after a broken connection.
    pub requeued_total: u64,
    /// Retained states replaced before they were sent.
    pub superseded_total: u64,
    /// Acknowledgements.
    pub acked_total: u64,
    /// Retained states republished.
    pub republished_total: u64,
    /// From the last CONNACK until the retained state was acknowledged, ms.
    pub last_republish_ms: u64,
    /// Commands received.
    pub commands_total: u64,
    /// Commands dropped (controller busy).
    pub commands_dropped_total: u64,
    /// Subscriptions the broker refused.
    pub subscriptions_denied: Vec<String>,
}

/// Events and prompt updates, in `stats/1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventStatsEntry {
    /// Events started.
    pub started_total: u64,
    /// Events ended.
    pub ended_total: u64,
    /// Events in progress.
    pub active: u64,
    /// Scored windows dropped (controller busy).
    pub scored_dropped_total: u64,
    /// Embedding messages published.
    pub embeddings_total: u64,
    /// Prompt updates applied.
    pub prompt_updates_accepted_total: u64,
    /// Prompt updates rejected.
    pub prompt_updates_rejected_total: u64,
    /// Payloads not published because they could not be serialised.
    pub payload_errors_total: u64,
    /// Current revision.
    pub config_rev: u64,
    /// Prompt embeddings evicted from the bounded prompt cache (least recently used first).
    pub prompt_cache_evictions_total: u64,
}

/// `stats/1` (filled by `runtime::Metrics::snapshot`).
#[derive(Debug, Clone, Serialize)]
pub struct StatsMessage {
    /// Payload schema id.
    pub schema: &'static str,
    /// Device id.
    pub device: String,
    /// When.
    pub ts: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Per source.
    pub sources: BTreeMap<String, SourceStatsEntry>,
    /// Per modality.
    pub encoders: BTreeMap<String, EncoderStatsEntry>,
    /// The MQTT connection and outbox.
    pub mqtt: MqttStatsEntry,
    /// Events and prompt updates.
    pub events: EventStatsEntry,
    /// Configuration reloads.
    pub reloads: ReloadStatsEntry,
    /// Event evidence (absent when no event writes evidence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceStatsEntry>,
}

/// `stats/1` `evidence`.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceStatsEntry {
    /// Jobs accepted by the writer's queue.
    pub jobs_total: u64,
    /// Jobs refused because the queue was full (that evidence is skipped).
    pub skipped_total: u64,
    /// Files written.
    pub files_total: u64,
    /// Bytes written.
    pub bytes_written_total: u64,
    /// Jobs or retention passes that failed (full or read-only disk, nothing in the history).
    pub errors_total: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Events deleted by retention.
    pub deleted_total: u64,
    /// Bytes under the evidence root.
    pub bytes_on_disk: u64,
    /// Events under the evidence root.
    pub events_on_disk: u64,
    /// Snapshots published retained.
    pub snapshots_published_total: u64,
    /// Snapshots over `snapshot_max_bytes`, not published.
    pub snapshots_oversize_total: u64,
    /// Writing time, milliseconds in all.
    pub write_ms_total: u64,
    /// Per sensor: its history ring.
    pub history: BTreeMap<String, HistoryStatsEntry>,
}

/// `stats/1` `evidence.history.{sensor}`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryStatsEntry {
    /// Bytes held now.
    pub bytes: u64,
    /// Bytes pushed since start (its rate is the history's bytes per second).
    pub bytes_total: u64,
    /// Samples pushed.
    pub samples_total: u64,
    /// Samples dropped early because the ring reached `history_max_bytes`.
    pub dropped_total: u64,
}

/// `stats/1` `reloads`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatsEntry {
    /// Reloads applied.
    pub applied_total: u64,
    /// Reloads refused (invalid file; the last good configuration kept running).
    pub rejected_total: u64,
    /// Sources restarted by reloads.
    pub sources_restarted_total: u64,
    /// The last applied reload, request to live, milliseconds.
    pub last_duration_ms: u64,
}
