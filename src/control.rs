//! The controller: one tokio task that turns scored windows into the MQTT contract (docs/mqtt.md) and applies
//! commands.
//!
//! It owns every piece of published state — label and sensor states, events in progress, the prompt set's
//! revision — so changes are applied in one place and in order:
//! - scored windows (from the encoder workers, through a bounded queue whose overflow policy is **drop the newest
//!   window**, counted as `scored_dropped_total`) feed one [`Tracker`] per (sensor, label): events start, update and
//!   end; the label's retained state follows; per-window labels and embeddings are published as configured;
//! - a tick every 250 ms ends quiet events, and notices sensors that went offline or came back;
//! - commands (`prompts/set`, `…/enabled/set`, `cmd`, Home Assistant's birth message) are validated completely
//!   and then applied at once, or rejected with every error on `cmd/response` and `config/state`;
//! - on shutdown (the queue closes once the workers are done) every open event ends (`shutdown`) and every label
//!   state goes `OFF`.
//!
//! Runtime changes (accepted prompts, enable switches) and the events in progress are kept in
//! `{state_dir}/runtime-state.json`, so a restart keeps the prompts and closes the events a crash left open.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock::{self, Timestamp};
use crate::config::{EmbeddingMode, EventsConfig, MqttConfig, PromptConfig, check_prompt};
use crate::encode::Encoder;
use crate::events::{EndReason, Tracker, Transition, TransitionKind};
use crate::labels::{LabelScore, PromptCache, PromptSet, embed_prompts};
use crate::modality::Modality;
use crate::preprocess::text::Tokenizer;
use crate::publish::embedding::{self, EmbeddingFrame};
use crate::publish::mqtt::Incoming;
use crate::publish::{LABELS_SCHEMA, LabelMessage, OutMessage, Outbox, Topics};

/// A window after inference and scoring, on its way to the controller.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Sensor name.
    pub source: Arc<str>,
    /// Modality.
    pub modality: Modality,
    /// Per-sensor window number.
    pub seq: u64,
    /// First sample.
    pub t0: Timestamp,
    /// Window end.
    pub t1: Timestamp,
    /// Model id of the tower.
    pub model: Arc<str>,
    /// The window's embedding as the tower returned it.
    pub embedding: Vec<f32>,
    /// Every applicable label, best first.
    pub labels: Vec<LabelScore>,
}

/// Largest `prompts/set` payload, bytes.
pub const MAX_UPDATE_BYTES: usize = 256 * 1024;
/// Most prompts a daemon holds.
pub const MAX_PROMPTS: usize = 256;
/// Capacity of the queue from the encoder workers to the controller.
pub const SCORED_QUEUE: usize = 1024;

/// Controller counters (in `stats`).
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Events started.
    pub events_started_total: AtomicU64,
    /// Events ended.
    pub events_ended_total: AtomicU64,
    /// Events in progress.
    pub events_active: AtomicU64,
    /// Scored windows dropped because the controller's queue was full.
    pub scored_dropped_total: AtomicU64,
    /// Prompt updates applied.
    pub prompt_updates_accepted_total: AtomicU64,
    /// Prompt updates rejected.
    pub prompt_updates_rejected_total: AtomicU64,
    /// Embedding messages published.
    pub embeddings_total: AtomicU64,
    /// Current configuration revision.
    pub config_rev: AtomicU64,
}

/// A sensor as the controller sees it.
#[derive(Debug, Clone)]
pub struct SensorInfo {
    /// Name.
    pub name: String,
    /// Modality.
    pub modality: Modality,
    /// Window length.
    pub window_secs: f64,
    /// Hop.
    pub hop_secs: f64,
    /// The source's counters (`offline` is set while the device is gone).
    pub stats: Arc<crate::sources::SourceStats>,
    /// Cleared by `…/enabled/set OFF`; the window stage skips a disabled sensor.
    pub enabled: Arc<AtomicBool>,
}

/// The prompt embedder: the text tower and its tokenizer.
#[derive(Clone)]
pub struct TextTower {
    /// The tower.
    pub encoder: Arc<dyn Encoder>,
    /// Its sha256 (cache key).
    pub sha256: String,
    /// CLIP BPE.
    pub tokenizer: Arc<Tokenizer>,
}

/// Everything the controller needs at start.
pub struct ControllerSetup {
    /// Device id.
    pub device: String,
    /// Device name (Home Assistant).
    pub device_name: String,
    /// Topics.
    pub topics: Topics,
    /// MQTT settings (labels, embeddings, Home Assistant).
    pub mqtt: MqttConfig,
    /// Event defaults.
    pub events: EventsConfig,
    /// Labels per `labels/{sensor}` message.
    pub top_k: usize,
    /// The sensors.
    pub sensors: Vec<SensorInfo>,
    /// The encoders' model ids and backends, for `info`.
    pub models: BTreeMap<String, serde_json::Value>,
    /// The active prompts (shared with the encoder workers).
    pub prompts: Arc<RwLock<Arc<PromptSet>>>,
    /// The text tower, when loaded.
    pub text: Option<TextTower>,
    /// The prompt-embedding cache.
    pub cache: PromptCache,
    /// The runtime state file and what it held at start.
    pub state: StateFile,
    /// Hash of the configuration file's prompts.
    pub config_prompts_hash: String,
    /// Where the prompts came from (`config` or `state_file`).
    pub prompts_origin: &'static str,
    /// Outbox.
    pub outbox: Arc<Outbox>,
    /// Counters.
    pub stats: Arc<ControlStats>,
}

/// An event a crash may have left open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenEvent {
    /// Sensor.
    pub sensor: String,
    /// Modality.
    pub modality: String,
    /// Label.
    pub label: String,
    /// Prompt text.
    pub prompt: String,
    /// Start, RFC 3339.
    pub start_time: String,
    /// Last message number sent.
    pub seq: u64,
    /// Peak score.
    pub peak: f32,
}

/// `{state_dir}/runtime-state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeState {
    /// Format version.
    pub schema: u32,
    /// Daemon starts so far.
    pub session: u64,
    /// Configuration revision.
    pub config_rev: u64,
    /// Hash of the configuration file's prompts when `prompts` was saved.
    pub prompts_base: String,
    /// Prompts accepted over MQTT (replace the file's while the file's are unchanged).
    pub prompts: Option<Vec<PromptConfig>>,
    /// Sensors switched off.
    pub disabled_sensors: BTreeSet<String>,
    /// Labels switched off.
    pub disabled_labels: BTreeSet<String>,
    /// Labels whose retained topics were published.
    pub published_labels: BTreeSet<String>,
    /// Events started and not ended, by id.
    pub open_events: BTreeMap<String, OpenEvent>,
}

/// The runtime state and its file.
#[derive(Debug)]
pub struct StateFile {
    path: Option<PathBuf>,
    /// The state.
    pub state: RuntimeState,
}

impl StateFile {
    /// Reads `{dir}/runtime-state.json` (an unreadable file is logged and replaced); `None` keeps it in memory.
    pub fn open(dir: Option<&Path>) -> Self {
        let path = dir.map(|d| d.join("runtime-state.json"));
        let state = match path.as_ref().map(|p| (p, std::fs::read(p))) {
            Some((p, Ok(bytes))) => match serde_json::from_slice::<RuntimeState>(&bytes) {
                Ok(s) if s.schema == 1 => s,
                Ok(_) | Err(_) => {
                    tracing::warn!(path = %p.display(), "Ignoring an unreadable runtime state file; runtime prompt changes and open events in it are lost.");
                    RuntimeState::default()
                }
            },
            _ => RuntimeState::default(),
        };
        Self {
            path,
            state: RuntimeState { schema: 1, ..state },
        }
    }

    /// Writes the state (a temporary file renamed over the old one); failures are logged.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let result = serde_json::to_vec_pretty(&self.state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = path.with_extension("json.tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, path)
            });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "Cannot save the runtime state.");
        }
    }
}

/// Hash of a prompt list (to notice that the configuration file's prompts changed).
pub fn prompts_hash(prompts: &[PromptConfig]) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(prompts).unwrap_or_default();
    crate::encode::manifest::hex(&Sha256::digest(&bytes))[..16].to_owned()
}

/// A `prompts/set` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptUpdate {
    #[serde(default)]
    upsert: Vec<PromptConfig>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    rev_expected: Option<u64>,
    #[serde(default)]
    request_id: Option<String>,
}

/// A `cmd` request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    cmd: String,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    args: serde_json::Value,
}

struct Slot {
    tracker: Tracker,
    modality: Modality,
    event_id: Option<String>,
    last_t: Duration,
    idle_grace: Duration,
}

/// The controller.
pub struct Controller {
    s: ControllerSetup,
    trackers: BTreeMap<(String, String), Slot>,
    label_on: BTreeMap<String, bool>,
    online: BTreeMap<String, bool>,
    removed_labels: BTreeSet<String>,
    session: u64,
}

/// A retained state message carrying `value` as JSON.
fn retained(topic: String, value: &impl Serialize) -> Option<OutMessage> {
    Some(OutMessage::state(topic, serde_json::to_vec(value).unwrap_or_default()))
}

fn on_off(b: bool) -> &'static str {
    if b { "ON" } else { "OFF" }
}

fn mono(d: Duration) -> Timestamp {
    Timestamp(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Controller {
    /// A controller; call [`Controller::run`].
    pub fn new(mut s: ControllerSetup) -> Self {
        s.state.state.session += 1;
        let session = s.state.state.session;
        s.stats.config_rev.store(s.state.state.config_rev, Ordering::Relaxed);
        for sensor in &s.sensors {
            if s.state.state.disabled_sensors.contains(&sensor.name) {
                sensor.enabled.store(false, Ordering::SeqCst);
            }
        }
        Self {
            s,
            trackers: BTreeMap::new(),
            label_on: BTreeMap::new(),
            online: BTreeMap::new(),
            removed_labels: BTreeSet::new(),
            session,
        }
    }

    fn prompts(&self) -> Arc<PromptSet> {
        match self.s.prompts.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn push(&self, msg: OutMessage) {
        self.s.outbox.push(msg);
    }

    fn push_retained(&self, topic: String, value: &impl Serialize) {
        if let Some(msg) = retained(topic, value) {
            self.push(msg);
        }
    }

    fn json(&self, topic: String, v: &serde_json::Value) -> OutMessage {
        OutMessage::state(topic, serde_json::to_vec(v).unwrap_or_default())
    }

    /// Runs until the scored-window queue closes (every encoder worker finished); then ends every event.
    pub async fn run(
        mut self,
        mut scored: tokio::sync::mpsc::Receiver<Scored>,
        mut commands: tokio::sync::mpsc::Receiver<Incoming>,
    ) {
        self.publish_initial_state();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            tokio::select! {
                w = scored.recv() => match w {
                    Some(w) => self.on_window(&w),
                    None => break,
                },
                c = commands.recv(), if commands_open => match c {
                    Some(c) => self.on_command(c).await,
                    None => commands_open = false,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        self.shutdown();
    }

    /// Availability, info, config and prompt states, sensor and label states, discovery; closes what a previous
    /// run left open.
    fn publish_initial_state(&mut self) {
        let t = self.s.topics.clone();
        self.push(OutMessage::state(t.availability(), "online"));
        // Events a crash left open get their end now.
        let open = std::mem::take(&mut self.s.state.state.open_events);
        for (id, ev) in &open {
            let payload = json!({
                "schema": "event/1", "type": "end", "id": id, "device": self.s.device, "sensor": ev.sensor,
                "modality": ev.modality, "label": ev.label, "prompt": ev.prompt, "score": 0.0, "peak": ev.peak,
                "cos": null, "thresholds": null, "runner_up": [], "window": null, "start_time": ev.start_time,
                "end_time": clock::rfc3339(std::time::SystemTime::now()), "end_reason": EndReason::Restart.as_str(),
                "duration_s": null, "ts": clock::rfc3339(std::time::SystemTime::now()), "seq": ev.seq + 1,
                "session": self.session, "model": null, "config_rev": self.s.state.state.config_rev,
            });
            self.push(OutMessage::event(
                t.events(&ev.sensor, &ev.label),
                serde_json::to_vec(&payload).unwrap_or_default(),
            ));
            tracing::info!(event = %id, "Closed an event left open by the previous run.");
        }
        // Labels of earlier runs that no longer exist: clear their retained topics.
        let current: BTreeSet<String> = self.prompts().prompts().iter().map(|p| p.id.clone()).collect();
        let stale: Vec<String> = self
            .s
            .state
            .state
            .published_labels
            .difference(&current)
            .cloned()
            .collect();
        for label in &stale {
            self.clear_label_topics(label);
            self.remember_removed(label);
        }
        self.s.state.state.published_labels = current;
        self.s.state.save();
        self.push(self.json(t.info(), &self.info()));
        self.publish_config_state("ok", &[], self.s.prompts_origin, None);
        self.publish_prompts_state();
        for sensor in self.s.sensors.clone() {
            let online = !sensor.stats.offline.load(Ordering::SeqCst);
            self.online.insert(sensor.name.clone(), online);
            self.publish_sensor_state(&sensor);
        }
        for p in self.prompts().prompts() {
            self.label_on.insert(p.id.clone(), false);
            self.push(OutMessage::state(t.label_state(&p.id), "OFF"));
            let enabled = !self.s.state.state.disabled_labels.contains(&p.id);
            self.push(OutMessage::state(t.label_enabled_state(&p.id), on_off(enabled)));
        }
        self.publish_discovery();
    }

    /// Remembers a deleted label so its Home Assistant entities are removed (kept for the process lifetime so a
    /// republished discovery still removes them; bounded, oldest names forgotten first).
    fn remember_removed(&mut self, label: &str) {
        const MAX_REMOVED: usize = 1024;
        self.removed_labels.insert(label.to_owned());
        while self.removed_labels.len() > MAX_REMOVED {
            self.removed_labels.pop_first();
        }
    }

    fn clear_label_topics(&self, label: &str) {
        let t = &self.s.topics;
        self.push(OutMessage::state(t.label_state(label), Vec::new()));
        self.push(OutMessage::state(t.label_enabled_state(label), Vec::new()));
    }

    fn info(&self) -> serde_json::Value {
        json!({
            "schema": "info/1",
            "device": self.s.device,
            "name": self.s.device_name,
            "version": env!("CARGO_PKG_VERSION"),
            "session": self.session,
            "started_at": clock::rfc3339_of(Timestamp(0)),
            "config_rev": self.s.state.state.config_rev,
            "models": self.s.models,
            "sensors": self.s.sensors.iter().map(|s| json!({
                "name": s.name, "modality": s.modality.to_string(), "window_secs": s.window_secs, "hop_secs": s.hop_secs,
            })).collect::<Vec<_>>(),
            "capabilities": ["events", "label_state", "embeddings", "prompts_set", "enabled_set", "cmd", "homeassistant"],
            "embeddings": { "mode": self.s.mqtt.embeddings.mode, "dtype": self.s.mqtt.embeddings.dtype, "encoding": self.s.mqtt.embeddings.encoding },
        })
    }

    fn publish_config_state(&self, status: &str, errors: &[String], origin: &str, request_id: Option<&str>) {
        let payload = json!({
            "schema": "config-state/1",
            "rev": self.s.state.state.config_rev,
            "status": status,
            "applied_at": clock::rfc3339(std::time::SystemTime::now()),
            "source": origin,
            "request_id": request_id,
            "errors": errors,
            "prompts": self.prompts().prompts().len(),
        });
        self.push(self.json(self.s.topics.config_state(), &payload));
    }

    fn publish_prompts_state(&self) {
        use sha2::{Digest, Sha256};
        let prompts = self.prompts();
        let list: Vec<serde_json::Value> = prompts
            .prompts()
            .iter()
            .map(|p| {
                let params = p.config.event_params(&self.s.events);
                let bytes: Vec<u8> = p.embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!({
                    "id": p.id,
                    "texts": p.texts,
                    "modalities": p.config.modalities.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "sources": p.config.sources,
                    "threshold": params.on,
                    "off_threshold": params.off,
                    "aggregate": params.aggregate,
                    "aggregate_windows": params.aggregate_windows,
                    "onset_k": params.onset_k,
                    "onset_n": params.onset_n,
                    "hold_secs": params.hold.as_secs_f64(),
                    "cooldown_secs": params.cooldown.as_secs_f64(),
                    "max_event_secs": params.max_event.as_secs_f64(),
                    "enabled": !self.s.state.state.disabled_labels.contains(&p.id),
                    "embedding_sha": &crate::encode::manifest::hex(&Sha256::digest(&bytes))[..12],
                })
            })
            .collect();
        let payload = json!({
            "schema": "prompts-state/1",
            "rev": self.s.state.state.config_rev,
            "prompts": list,
        });
        self.push(self.json(self.s.topics.prompts_state(), &payload));
    }

    fn publish_sensor_state(&self, sensor: &SensorInfo) {
        let t = &self.s.topics;
        let enabled = sensor.enabled.load(Ordering::SeqCst);
        let online = self.online.get(&sensor.name).copied().unwrap_or(true);
        let status = match (enabled, online) {
            (false, _) => "disabled",
            (true, true) => "online",
            (true, false) => "offline",
        };
        self.push(OutMessage::state(t.sensor_status(&sensor.name), status));
        self.push(OutMessage::state(t.sensor_enabled_state(&sensor.name), on_off(enabled)));
    }

    /// Home Assistant device discovery (retained, so it is republished with the rest of the state).
    fn publish_discovery(&self) {
        let ha = &self.s.mqtt.homeassistant;
        if !ha.enabled {
            return;
        }
        let (t, id) = (&self.s.topics, &self.s.device);
        let mut cmps = serde_json::Map::new();
        let current = self.prompts();
        let prompts_now: BTreeSet<&str> = current.prompts().iter().map(|p| p.id.as_str()).collect();
        for p in current.prompts() {
            let modality = self
                .s
                .sensors
                .iter()
                .find(|s| p.config.applies_to(s.modality, &s.name))
                .map(|s| s.modality);
            let class = p.config.device_class.clone().unwrap_or_else(|| {
                match modality {
                    Some(Modality::Audio) => "sound",
                    Some(Modality::Imu) => "motion",
                    _ => "occupancy",
                }
                .to_owned()
            });
            // Component ids are `{kind}-{name}`: the kinds differ before their `-` and names cannot contain a kind,
            // so a label called `x_enabled` cannot collide with label `x`'s switch.
            cmps.insert(
                format!("label-{}", p.id),
                json!({
                    "p": "binary_sensor", "unique_id": format!("{id}_label-{}", p.id), "name": p.id,
                    "dev_cla": class, "stat_t": t.label_state(&p.id), "pl_on": "ON", "pl_off": "OFF",
                }),
            );
            cmps.insert(
                format!("label_switch-{}", p.id),
                json!({
                    "p": "switch", "unique_id": format!("{id}_label_switch-{}", p.id), "name": format!("{} enabled", p.id),
                    "ent_cat": "config", "cmd_t": t.label_enabled_set(&p.id), "stat_t": t.label_enabled_state(&p.id),
                    "pl_on": "ON", "pl_off": "OFF",
                }),
            );
        }
        for label in self.removed_labels.iter().filter(|l| !prompts_now.contains(l.as_str())) {
            cmps.insert(format!("label-{label}"), json!({ "p": "binary_sensor" }));
            cmps.insert(format!("label_switch-{label}"), json!({ "p": "switch" }));
        }
        for s in &self.s.sensors {
            cmps.insert(
                format!("sensor-{}", s.name),
                json!({
                    "p": "binary_sensor", "unique_id": format!("{id}_sensor-{}", s.name), "name": format!("{} connected", s.name),
                    "dev_cla": "connectivity", "ent_cat": "diagnostic", "stat_t": t.sensor_status(&s.name),
                    "pl_on": "online", "pl_off": "offline",
                }),
            );
            cmps.insert(
                format!("sensor_switch-{}", s.name),
                json!({
                    "p": "switch", "unique_id": format!("{id}_sensor_switch-{}", s.name), "name": format!("{} enabled", s.name),
                    "ent_cat": "config", "cmd_t": t.sensor_enabled_set(&s.name), "stat_t": t.sensor_enabled_state(&s.name),
                    "pl_on": "ON", "pl_off": "OFF",
                }),
            );
        }
        let payload = json!({
            "dev": { "ids": [id], "name": self.s.device_name, "mf": "sensebind", "mdl": "sensebind", "sw": env!("CARGO_PKG_VERSION") },
            "o": { "name": "sensebind", "sw": env!("CARGO_PKG_VERSION") },
            "avty": [{ "t": t.availability() }],
            "qos": 1,
            "cmps": cmps,
        });
        self.push(self.json(format!("{}/device/{id}/config", ha.discovery_prefix), &payload));
    }

    fn label_enabled(&self, label: &str) -> bool {
        !self.s.state.state.disabled_labels.contains(label)
    }

    fn on_window(&mut self, w: &Scored) {
        let Some(sensor) = self.s.sensors.iter().find(|s| *s.name == *w.source).cloned() else {
            return;
        };
        if !sensor.enabled.load(Ordering::SeqCst) {
            return;
        }
        let now = clock::now();
        if self.s.mqtt.labels {
            let msg = LabelMessage {
                schema: LABELS_SCHEMA,
                device: self.s.device.clone(),
                source: w.source.to_string(),
                modality: w.modality.to_string(),
                seq: w.seq,
                t0: clock::rfc3339_of(w.t0),
                t1: clock::rfc3339_of(w.t1),
                t0_mono_ns: w.t0.0,
                t1_mono_ns: w.t1.0,
                ts: clock::rfc3339_of(now),
                latency_ms: now.since(w.t1).as_secs_f64() * 1e3,
                model: w.model.to_string(),
                labels: w.labels.iter().take(self.s.top_k.max(1)).cloned().collect(),
            };
            if let Ok(payload) = serde_json::to_vec(&msg) {
                self.push(OutMessage::telemetry(
                    self.s.topics.labels(&w.source),
                    payload,
                    self.s.mqtt.qos,
                ));
            }
        }
        let prompts = self.prompts();
        let t = Duration::from_nanos(w.t1.0);
        let idle_grace = Duration::from_secs_f64(sensor.hop_secs * 2.0 + 1.0);
        for (rank, ls) in w.labels.iter().enumerate() {
            if !self.label_enabled(&ls.label) {
                continue;
            }
            let Some(prompt) = prompts.prompts().iter().find(|p| p.id == ls.label) else {
                continue;
            };
            let key = (sensor.name.clone(), ls.label.clone());
            let slot = self.trackers.entry(key.clone()).or_insert_with(|| Slot {
                tracker: Tracker::new(prompt.config.event_params(&self.s.events)),
                modality: w.modality,
                event_id: None,
                last_t: Duration::ZERO,
                idle_grace,
            });
            slot.last_t = slot.last_t.max(t);
            let at = slot.last_t;
            if let Some(tr) = slot.tracker.observe(at, ls.score) {
                let runner_up: Vec<serde_json::Value> = w
                    .labels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != rank)
                    .take(2)
                    .map(|(_, o)| json!({ "label": o.label, "score": o.score }))
                    .collect();
                let window = json!({
                    "seq": w.seq, "t0": clock::rfc3339_of(w.t0), "t1": clock::rfc3339_of(w.t1),
                    "latency_ms": now.since(w.t1).as_secs_f64() * 1e3,
                });
                self.emit(&key, &tr, Some(ls.cosine), runner_up, window, Some(&w.model));
            }
        }
        self.maybe_embedding(w, &sensor);
    }

    fn maybe_embedding(&mut self, w: &Scored, sensor: &SensorInfo) {
        let (mode, every_n) = self.s.mqtt.embeddings.for_sensor(&sensor.name);
        let event = self
            .trackers
            .iter()
            .find(|((s, _), slot)| *s == sensor.name && slot.event_id.is_some())
            .and_then(|(_, slot)| slot.event_id.clone());
        let publish = match mode {
            EmbeddingMode::Off => false,
            EmbeddingMode::All => true,
            EmbeddingMode::EveryN => w.seq.is_multiple_of(every_n.max(1)),
            EmbeddingMode::OnEvent => event.is_some(),
        };
        if !publish {
            return;
        }
        let frame = EmbeddingFrame {
            device: self.s.device.clone(),
            sensor: sensor.name.clone(),
            modality: w.modality.to_string(),
            seq: w.seq,
            session: self.session,
            t0: clock::rfc3339_of(w.t0),
            t1: clock::rfc3339_of(w.t1),
            t0_mono_ns: w.t0.0,
            t1_mono_ns: w.t1.0,
            model: w.model.to_string(),
            event,
            // An all-zero (or non-finite) embedding cannot be scaled to unit length and is sent as it is.
            normalized: w.embedding.iter().any(|x| *x != 0.0) && w.embedding.iter().all(|x| x.is_finite()),
            vec: embedding::l2_normalize(&w.embedding),
        };
        let e = &self.s.mqtt.embeddings;
        match embedding::encode(&frame, e.dtype, e.encoding) {
            Ok(payload) => {
                self.push(OutMessage::embedding(self.s.topics.embeddings(&sensor.name), payload));
                self.s.stats.embeddings_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(sensor = %sensor.name, error = %err, "Cannot encode an embedding message."),
        }
    }

    /// Publishes one event message and keeps the label state and the state file in step.
    fn emit(
        &mut self,
        key: &(String, String),
        tr: &Transition,
        cos: Option<f32>,
        runner_up: Vec<serde_json::Value>,
        window: serde_json::Value,
        model: Option<&str>,
    ) {
        let (sensor, label) = key;
        let prompts = self.prompts();
        let prompt = prompts.prompts().iter().find(|p| &p.id == label);
        let prompt_text = prompt.and_then(|p| p.texts.first().cloned()).unwrap_or_default();
        let Some(slot) = self.trackers.get_mut(key) else { return };
        let params = slot.tracker.params().clone();
        let modality = slot.modality;
        let id = match (tr.kind, &slot.event_id) {
            (TransitionKind::Start, _) | (_, None) => format!("{}-{sensor}-{label}-{}", self.session, tr.event),
            (_, Some(id)) => id.clone(),
        };
        let start_time = clock::rfc3339_of(mono(tr.started_at));
        let ended = tr.kind == TransitionKind::End;
        let payload = json!({
            "schema": "event/1",
            "type": match tr.kind { TransitionKind::Start => "start", TransitionKind::Update => "update", TransitionKind::End => "end" },
            "id": id,
            "device": self.s.device,
            "sensor": sensor,
            "modality": modality.to_string(),
            "label": label,
            "prompt": prompt_text,
            "score": tr.score,
            "peak": tr.peak,
            "cos": cos,
            "thresholds": { "on": params.on, "off": params.off },
            "runner_up": runner_up,
            "window": window,
            "start_time": start_time,
            "end_time": if ended { Some(clock::rfc3339_of(mono(tr.at))) } else { None },
            "end_reason": tr.end_reason.map(|r| r.as_str()),
            "duration_s": if ended { Some(tr.at.saturating_sub(tr.started_at).as_secs_f64()) } else { None },
            "ts": clock::rfc3339(std::time::SystemTime::now()),
            "seq": tr.seq,
            "session": self.session,
            "model": model,
            "config_rev": self.s.state.state.config_rev,
        });
        match tr.kind {
            TransitionKind::Start => {
                slot.event_id = Some(id.clone());
                self.s.stats.events_started_total.fetch_add(1, Ordering::Relaxed);
                self.s.stats.events_active.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = %id, score = tr.score, "Event started.");
            }
            TransitionKind::Update => {}
            TransitionKind::End => {
                slot.event_id = None;
                self.s.stats.events_ended_total.fetch_add(1, Ordering::Relaxed);
                self.s.stats.events_active.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(event = %id, reason = tr.end_reason.map_or("", |r| r.as_str()), "Event ended.");
            }
        }
        self.push(OutMessage::event(
            self.s.topics.events(sensor, label),
            serde_json::to_vec(&payload).unwrap_or_default(),
        ));
        // The state file knows the open events, so a crash can be followed by their end.
        match tr.kind {
            TransitionKind::End => {
                self.s.state.state.open_events.remove(&id);
            }
            _ => {
                self.s.state.state.open_events.insert(
                    id,
                    OpenEvent {
                        sensor: sensor.clone(),
                        modality: modality.to_string(),
                        label: label.clone(),
                        prompt: prompt_text,
                        start_time,
                        seq: tr.seq,
                        peak: tr.peak,
                    },
                );
            }
        }
        if tr.kind != TransitionKind::Update {
            self.s.state.save();
        }
        self.refresh_label_state(label);
    }

    fn refresh_label_state(&mut self, label: &str) {
        let on = self
            .trackers
            .iter()
            .any(|((_, l), slot)| l == label && slot.tracker.is_active());
        if self.label_on.get(label) != Some(&on) {
            self.label_on.insert(label.to_owned(), on);
            self.push(OutMessage::state(self.s.topics.label_state(label), on_off(on)));
        }
    }

    /// Ends every event matching `pred` for `reason`.
    fn end_where(&mut self, reason: EndReason, pred: impl Fn(&str, &str) -> bool) {
        let now = Duration::from_nanos(clock::now().0);
        let keys: Vec<(String, String)> = self.trackers.keys().filter(|(s, l)| pred(s, l)).cloned().collect();
        for key in keys {
            let Some(slot) = self.trackers.get_mut(&key) else {
                continue;
            };
            slot.last_t = slot.last_t.max(now);
            let at = slot.last_t;
            if let Some(tr) = slot.tracker.end(at, reason) {
                self.emit(&key, &tr, None, Vec::new(), serde_json::Value::Null, None);
            }
        }
    }

    fn on_tick(&mut self) {
        // Sensors that went offline or came back.
        for sensor in self.s.sensors.clone() {
            let online = !sensor.stats.offline.load(Ordering::SeqCst);
            if self.online.get(&sensor.name) != Some(&online) {
                self.online.insert(sensor.name.clone(), online);
                if !online {
                    tracing::warn!(sensor = %sensor.name, "Sensor offline; its events end.");
                    let name = sensor.name.clone();
                    self.end_where(EndReason::SensorLost, |s, _| s == name);
                }
                self.publish_sensor_state(&sensor);
            }
        }
        // Quiet events and maximum durations while no window arrives.
        let now = Duration::from_nanos(clock::now().0);
        let keys: Vec<(String, String)> = self.trackers.keys().cloned().collect();
        for key in keys {
            let Some(slot) = self.trackers.get_mut(&key) else {
                continue;
            };
            if !slot.tracker.is_active() {
                continue;
            }
            slot.last_t = slot.last_t.max(now);
            let (at, grace) = (slot.last_t, slot.idle_grace);
            if let Some(tr) = slot.tracker.tick(at, grace) {
                self.emit(&key, &tr, None, Vec::new(), serde_json::Value::Null, None);
            }
        }
    }

    fn shutdown(&mut self) {
        self.end_where(EndReason::Shutdown, |_, _| true);
        let labels: Vec<String> = self.label_on.keys().cloned().collect();
        for label in labels {
            self.label_on.insert(label.clone(), false);
            self.push(OutMessage::state(self.s.topics.label_state(&label), "OFF"));
        }
        self.s.state.save();
    }

    fn respond(&self, command: &str, request_id: Option<&str>, result: Result<serde_json::Value, Vec<String>>) {
        let (ok, result, errors) = match result {
            Ok(v) => (true, v, Vec::new()),
            Err(e) => (false, serde_json::Value::Null, e),
        };
        if !ok {
            tracing::warn!(command, errors = ?errors, "Command rejected.");
        }
        let payload = json!({
            "schema": "cmd-response/1",
            "command": command,
            "request_id": request_id,
            "ok": ok,
            "result": result,
            "errors": errors,
            "ts": clock::rfc3339(std::time::SystemTime::now()),
        });
        self.push(OutMessage::response(
            self.s.topics.cmd_response(),
            serde_json::to_vec(&payload).unwrap_or_default(),
        ));
    }

    async fn on_command(&mut self, c: Incoming) {
        let t = self.s.topics.clone();
        let base = format!("{}/", t.base());
        let ha_status = format!("{}/status", self.s.mqtt.homeassistant.discovery_prefix);
        if c.topic == ha_status {
            if c.payload.eq_ignore_ascii_case(b"online") && self.s.mqtt.homeassistant.enabled {
                tracing::info!("Home Assistant is online: republishing discovery and state.");
                self.publish_discovery();
                self.s.outbox.republish_retained(&t.availability());
            }
            return;
        }
        let Some(rest) = c.topic.strip_prefix(&base) else {
            return;
        };
        let command = rest.to_owned();
        if c.payload.is_empty() {
            // Someone cleared a retained message on a command topic: not a command.
            tracing::debug!(topic = %c.topic, "Empty command payload ignored.");
            return;
        }
        if c.retain {
            self.respond(
                &command,
                None,
                Err(vec![format!(
                    "{}: retained commands are ignored (publish commands without the retain flag, and clear this one with an empty retained message)",
                    c.topic
                )]),
            );
            return;
        }
        if rest == "prompts/set" {
            self.on_prompt_update(&c.payload).await;
        } else if rest == "cmd" {
            self.on_cmd(&c.payload);
        } else if let Some(name) = rest
            .strip_prefix("sensor/")
            .and_then(|r| r.strip_suffix("/enabled/set"))
        {
            self.on_enable(&command, name, &c.payload, true);
        } else if let Some(name) = rest.strip_prefix("label/").and_then(|r| r.strip_suffix("/enabled/set")) {
            self.on_enable(&command, name, &c.payload, false);
        }
    }

    fn on_enable(&mut self, command: &str, name: &str, payload: &[u8], sensor: bool) {
        let text = String::from_utf8_lossy(payload).trim().to_ascii_uppercase();
        let on = match text.as_str() {
            "ON" => true,
            "OFF" => false,
            _ => {
                self.respond(
                    command,
                    None,
                    Err(vec![format!("payload must be ON or OFF, got {:?}", truncate(payload))]),
                );
                return;
            }
        };
        if sensor {
            let Some(info) = self.s.sensors.iter().find(|s| s.name == name).cloned() else {
                self.respond(command, None, Err(vec![format!("no sensor is named {name:?}")]));
                return;
            };
            info.enabled.store(on, Ordering::SeqCst);
            if on {
                self.s.state.state.disabled_sensors.remove(name);
            } else {
                self.s.state.state.disabled_sensors.insert(name.to_owned());
                self.end_where(EndReason::Disabled, |s, _| s == name);
            }
            self.publish_sensor_state(&info);
        } else {
            if !self.prompts().prompts().iter().any(|p| p.id == name) {
                self.respond(command, None, Err(vec![format!("no label is named {name:?}")]));
                return;
            }
            if on {
                self.s.state.state.disabled_labels.remove(name);
            } else {
                self.s.state.state.disabled_labels.insert(name.to_owned());
                self.end_where(EndReason::Disabled, |_, l| l == name);
            }
            self.push(OutMessage::state(self.s.topics.label_enabled_state(name), on_off(on)));
            self.publish_prompts_state();
        }
        tracing::info!(target_name = name, enabled = on, "Switched.");
        self.s.state.save();
        self.respond(command, None, Ok(json!({ "enabled": on_off(on) })));
    }

    fn on_cmd(&mut self, payload: &[u8]) {
        let cmd: Command = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                self.respond("cmd", None, Err(vec![format!("not a valid command: {e}")]));
                return;
            }
        };
        let rid = cmd.request_id.as_deref();
        let no_args = cmd.args.is_null() || cmd.args.as_object().is_some_and(serde_json::Map::is_empty);
        let label = format!("cmd/{}", cmd.cmd);
        match cmd.cmd.as_str() {
            _ if !no_args => self.respond(&label, rid, Err(vec![format!("{} takes no args", cmd.cmd)])),
            "rebirth" => {
                self.publish_discovery();
                let n = self.s.outbox.republish_retained(&self.s.topics.availability());
                self.respond(&label, rid, Ok(json!({ "republished": n })));
            }
            "get_info" => self.respond(&label, rid, Ok(self.info())),
            other => self.respond(
                &label,
                rid,
                Err(vec![format!("unknown command {other:?}; known: rebirth, get_info")]),
            ),
        }
    }

    async fn on_prompt_update(&mut self, payload: &[u8]) {
        let rejected = |me: &mut Self, rid: Option<&str>, errors: Vec<String>| {
            me.s.stats.prompt_updates_rejected_total.fetch_add(1, Ordering::Relaxed);
            me.publish_config_state("rejected", &errors, "prompts/set", rid);
            me.respond("prompts/set", rid, Err(errors));
        };
        if payload.len() > MAX_UPDATE_BYTES {
            let e = format!("payload is {} bytes; the limit is {MAX_UPDATE_BYTES}", payload.len());
            rejected(self, None, vec![e]);
            return;
        }
        let update: PromptUpdate = match serde_json::from_slice(payload) {
            Ok(u) => u,
            Err(e) => {
                // Echo the request id if the JSON is at least an object with one.
                let rid = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("request_id").and_then(|r| r.as_str()).map(str::to_owned));
                rejected(self, rid.as_deref(), vec![format!("not a valid prompt update: {e}")]);
                return;
            }
        };
        let rid = update.request_id.clone();
        let rid = rid.as_deref();
        let errors = self.check_update(&update);
        if !errors.is_empty() {
            rejected(self, rid, errors);
            return;
        }
        // The new list: deletions, then upserts in place or appended.
        let current = self.prompts();
        let mut configs: Vec<PromptConfig> = current.prompts().iter().map(|p| p.config.clone()).collect();
        configs.retain(|c| !update.delete.contains(&c.id));
        for u in &update.upsert {
            match configs.iter_mut().find(|c| c.id == u.id) {
                Some(c) => *c = u.clone(),
                None => configs.push(u.clone()),
            }
        }
        let Some(text) = self.s.text.clone() else {
            rejected(
                self,
                rid,
                vec![
                    "the text tower is not loaded (start the daemon with at least one prompt in its configuration)"
                        .into(),
                ],
            );
            return;
        };
        let mut cache = std::mem::replace(&mut self.s.cache, PromptCache::open(None));
        let list = configs.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let set = embed_prompts(&list, text.encoder.as_ref(), &text.sha256, &text.tokenizer, &mut cache);
            (set, cache)
        })
        .await;
        let set = match joined {
            Ok((set, mut cache)) => {
                if let Err(e) = cache.save() {
                    tracing::warn!(error = %e, "Cannot save the prompt cache.");
                }
                self.s.cache = cache;
                set
            }
            Err(e) => {
                rejected(self, rid, vec![format!("embedding the prompts failed: {e}")]);
                return;
            }
        };
        let set = match set {
            Ok(s) => s,
            Err(e) => {
                rejected(self, rid, vec![e.to_string()]);
                return;
            }
        };
        // Apply: events of changed and deleted prompts end (reload), then the new set replaces the old at once.
        let changed: BTreeSet<String> = update
            .upsert
            .iter()
            .map(|u| u.id.clone())
            .chain(update.delete.iter().cloned())
            .collect();
        self.end_where(EndReason::Reload, |_, l| changed.contains(l));
        self.trackers.retain(|(_, l), _| !changed.contains(l));
        match self.s.prompts.write() {
            Ok(mut p) => *p = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        let st = &mut self.s.state.state;
        st.config_rev += 1;
        st.prompts = Some(configs);
        st.prompts_base = self.s.config_prompts_hash.clone();
        for id in &update.delete {
            st.disabled_labels.remove(id);
            st.published_labels.remove(id);
        }
        for u in &update.upsert {
            st.published_labels.insert(u.id.clone());
        }
        self.s.stats.config_rev.store(st.config_rev, Ordering::Relaxed);
        self.s
            .stats
            .prompt_updates_accepted_total
            .fetch_add(1, Ordering::Relaxed);
        self.s.state.save();
        for id in &update.delete {
            self.label_on.remove(id);
            self.clear_label_topics(id);
            self.remember_removed(id);
        }
        for u in &update.upsert {
            self.removed_labels.remove(&u.id);
            self.label_on.insert(u.id.clone(), false);
            self.push(OutMessage::state(self.s.topics.label_state(&u.id), "OFF"));
            let enabled = self.label_enabled(&u.id);
            self.push(OutMessage::state(
                self.s.topics.label_enabled_state(&u.id),
                on_off(enabled),
            ));
        }
        self.publish_prompts_state();
        self.publish_config_state("ok", &[], "prompts/set", rid);
        self.push(self.json(self.s.topics.info(), &self.info()));
        self.publish_discovery();
        tracing::info!(
            rev = self.s.state.state.config_rev,
            upserted = update.upsert.len(),
            deleted = update.delete.len(),
            prompts = self.prompts().prompts().len(),
            "Prompt update applied."
        );
        self.respond(
            "prompts/set",
            rid,
            Ok(json!({
                "rev": self.s.state.state.config_rev,
                "upserted": update.upsert.iter().map(|u| u.id.clone()).collect::<Vec<_>>(),
                "deleted": update.delete,
                "prompts": self.prompts().prompts().len(),
            })),
        );
    }

    /// Every problem of an update, with its key path (`upsert[2].text`).
    fn check_update(&self, u: &PromptUpdate) -> Vec<String> {
        let mut errors = Vec::new();
        if u.upsert.is_empty() && u.delete.is_empty() {
            errors.push("nothing to do: give upsert and/or delete".into());
        }
        let rev = self.s.state.state.config_rev;
        if let Some(want) = u.rev_expected.filter(|&w| w != rev) {
            errors.push(format!(
                "rev_expected: the configuration is at revision {rev}, not {want}"
            ));
        }
        if u.upsert.len() > MAX_PROMPTS {
            errors.push(format!(
                "upsert: {} prompts; a daemon holds at most {MAX_PROMPTS}",
                u.upsert.len()
            ));
            return errors;
        }
        let current = self.prompts();
        let sources: Vec<(String, Modality)> = self.s.sensors.iter().map(|s| (s.name.clone(), s.modality)).collect();
        let names: Vec<String> = sources.iter().map(|(n, _)| n.clone()).collect();
        let mut seen = BTreeSet::new();
        for (i, p) in u.upsert.iter().enumerate() {
            for (k, m) in check_prompt(p, &self.s.events, &sources, &names) {
                errors.push(format!("upsert[{i}].{k}: {m}"));
            }
            if !seen.insert(p.id.clone()) {
                errors.push(format!("upsert[{i}].id: {:?} appears twice in upsert", p.id));
            }
            if u.delete.contains(&p.id) {
                errors.push(format!("upsert[{i}].id: {:?} is also in delete", p.id));
            }
        }
        for (i, id) in u.delete.iter().enumerate() {
            if !current.prompts().iter().any(|p| &p.id == id) {
                errors.push(format!("delete[{i}]: no prompt is named {id:?}"));
            }
        }
        let after = current
            .prompts()
            .iter()
            .filter(|p| !u.delete.contains(&p.id) && !seen.contains(&p.id))
            .count()
            + seen.len();
        if after > MAX_PROMPTS {
            errors.push(format!(
                "the update would leave {after} prompts; a daemon holds at most {MAX_PROMPTS}"
            ));
        }
        errors
    }
}

fn truncate(payload: &[u8]) -> String {
    let s = String::from_utf8_lossy(payload);
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Prompt;
    use crate::publish::{Class, OutboxLimits};

    fn setup(prompt: PromptConfig, mqtt: MqttConfig, events: EventsConfig) -> (Controller, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(OutboxLimits::uniform(10_000)));
        let prompts = PromptSet::new(vec![Prompt {
            id: prompt.id.clone(),
            texts: prompt.all_texts(),
            config: prompt,
            embedding: vec![1.0, 0.0],
        }]);
        let c = Controller::new(ControllerSetup {
            device: "dev".into(),
            device_name: "Dev".into(),
            topics: Topics::new("sensebind", "dev"),
            mqtt,
            events,
            top_k: 3,
            sensors: vec![SensorInfo {
                name: "imu0".into(),
                modality: Modality::Imu,
                window_secs: 1.0,
                hop_secs: 0.5,
                stats: Arc::default(),
                enabled: Arc::new(AtomicBool::new(true)),
            }],
            models: BTreeMap::new(),
            prompts: Arc::new(RwLock::new(Arc::new(prompts))),
            text: None,
            cache: PromptCache::open(None),
            state: StateFile::open(None),
            config_prompts_hash: String::new(),
            prompts_origin: "config",
            outbox: Arc::clone(&outbox),
            stats: Arc::default(),
        });
        (c, outbox)
    }

    fn window(seq: u64, t_ms: u64, score: f32) -> Scored {
        Scored {
            source: Arc::from("imu0"),
            modality: Modality::Imu,
            seq,
            t0: Timestamp(t_ms * 1_000_000),
            t1: Timestamp(t_ms * 1_000_000),
            model: Arc::from("tiny@0"),
            embedding: vec![3.0, 4.0],
            labels: vec![LabelScore {
                label: "walking".into(),
                score,
                cosine: 0.5,
                active: score >= 0.6,
            }],
        }
    }

    fn drain(o: &Outbox) -> Vec<OutMessage> {
        std::iter::from_fn(|| o.pop()).collect()
    }

    fn events(msgs: &[OutMessage]) -> Vec<(String, String, u64, Option<String>)> {
        msgs.iter()
            .filter(|m| m.class == Class::Event)
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                (
                    v["type"].as_str().unwrap_or_default().to_owned(),
                    v["id"].as_str().unwrap_or_default().to_owned(),
                    v["seq"].as_u64().unwrap_or(99),
                    v["end_reason"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    #[test]
    fn scripted_scores_give_exactly_the_expected_event_messages_and_label_states() {
        let events_cfg = EventsConfig {
            aggregate_windows: 1,
            onset_k: 2,
            onset_n: 3,
            hold_secs: 1.0,
            update_interval_secs: 0.0,
            ..EventsConfig::default()
        };
        let prompt = PromptConfig {
            threshold: 0.6,
            off_threshold: Some(0.4),
            ..PromptConfig::new("walking", "a person walking")
        };
        let mqtt = MqttConfig {
            labels: false,
            ..MqttConfig::default()
        };
        let (mut c, outbox) = setup(prompt, mqtt, events_cfg);
        c.publish_initial_state();
        let initial = drain(&outbox);
        assert!(
            initial
                .iter()
                .any(|m| m.topic == "sensebind/dev/label/walking/state" && m.payload == b"OFF")
        );
        assert!(initial.iter().any(|m| m.topic == "homeassistant/device/dev/config"));
        // 0.7 once (1 of 3: no start), 0.7 again (2 of 3: start), rising 0.8 (update), 0.5 (above off: held),
        // 0.1 at +0.5 s (below off, inside hold), 0.1 at +1.0 s (hold over: end quiet).
        let script = [
            (0, 0.7),
            (500, 0.3),
            (1000, 0.7),
            (1500, 0.8),
            (2000, 0.5),
            (2500, 0.1),
            (3000, 0.1),
            (3500, 0.1),
        ];
        // Drained after every window, as the connection task does (queued retained states coalesce per topic).
        let mut msgs = Vec::new();
        for (i, (t, s)) in script.iter().enumerate() {
            c.on_window(&window(i as u64, *t, *s));
            msgs.extend(drain(&outbox));
        }
        let ev = events(&msgs);
        let id = ev.first().map(|e| e.1.clone()).unwrap_or_default();
        assert_eq!(
            ev,
            vec![
                ("start".into(), id.clone(), 0, None),
                ("update".into(), id.clone(), 1, None),
                ("end".into(), id.clone(), 2, Some("quiet".into())),
            ]
        );
        assert_eq!(id, "1-imu0-walking-1");
        let states: Vec<&[u8]> = msgs
            .iter()
            .filter(|m| m.topic == "sensebind/dev/label/walking/state")
            .map(|m| m.payload.as_slice())
            .collect();
        assert_eq!(states, [b"ON".as_slice(), b"OFF".as_slice()]);
        // A new event, then the sensor is lost: it ends with sensor_lost and the sensor reports offline.
        c.on_window(&window(8, 4000, 0.9));
        c.on_window(&window(9, 4500, 0.9));
        c.s.sensors[0].stats.offline.store(true, Ordering::SeqCst);
        c.on_tick();
        let msgs = drain(&outbox);
        let ev = events(&msgs);
        assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["start", "end"]);
        assert_eq!(ev[1].3.as_deref(), Some("sensor_lost"));
        assert_eq!(ev[0].1, "1-imu0-walking-2");
        assert!(
            msgs.iter()
                .any(|m| m.topic == "sensebind/dev/sensor/imu0/status" && m.payload == b"offline")
        );
        // Shutdown with an event open: it ends, the label goes OFF.
        c.s.sensors[0].stats.offline.store(false, Ordering::SeqCst);
        c.on_tick();
        c.on_window(&window(10, 9000, 0.9));
        c.on_window(&window(11, 9500, 0.9));
        c.shutdown();
        let msgs = drain(&outbox);
        let ev = events(&msgs);
        assert_eq!(ev.last().and_then(|e| e.3.clone()).as_deref(), Some("shutdown"));
        assert_eq!(
            msgs.iter()
                .rfind(|m| m.topic == "sensebind/dev/label/walking/state")
                .map(|m| m.payload.clone()),
            Some(b"OFF".to_vec())
        );
    }

    #[test]
    fn embeddings_follow_the_rate_control() {
        use crate::config::EmbeddingsConfig;
        let run = |mode: EmbeddingMode, every_n: u64, scores: &[f32]| -> Vec<u64> {
            let mqtt = MqttConfig {
                labels: false,
                embeddings: EmbeddingsConfig {
                    mode,
                    every_n,
                    ..EmbeddingsConfig::default()
                },
                ..MqttConfig::default()
            };
            let events_cfg = EventsConfig {
                aggregate_windows: 1,
                onset_k: 1,
                onset_n: 1,
                hold_secs: 0.0,
                ..EventsConfig::default()
            };
            let (mut c, outbox) = setup(PromptConfig::new("walking", "x"), mqtt, events_cfg);
            for (i, s) in scores.iter().enumerate() {
                c.on_window(&window(i as u64, i as u64 * 100, *s));
            }
            drain(&outbox)
                .iter()
                .filter(|m| m.class == Class::Embedding)
                .map(|m| embedding::decode(&m.payload).map(|(f, _)| f.seq).unwrap_or(999))
                .collect()
        };
        let scores = [0.1, 0.9, 0.9, 0.1, 0.1, 0.9];
        assert_eq!(run(EmbeddingMode::Off, 1, &scores), Vec::<u64>::new());
        assert_eq!(run(EmbeddingMode::All, 1, &scores), [0, 1, 2, 3, 4, 5]);
        assert_eq!(run(EmbeddingMode::EveryN, 2, &scores), [0, 2, 4]);
        assert_eq!(run(EmbeddingMode::OnEvent, 1, &scores), [1, 2, 5]);
    }

    /// A value whose serialisation fails.
    struct Unserializable;

    impl Serialize for Unserializable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("cannot serialise this"))
        }
    }

    /// Issue 12, bug 3: a payload that cannot be serialised must not publish an empty retained message (which
    /// clears the topic on the broker); it is skipped.
    #[test]
    fn issue_12_retained_state_that_cannot_be_serialised_is_not_published() {
        assert!(retained("t".into(), &Unserializable).is_none());
        let non_string_keys: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(retained("t".into(), &non_string_keys).is_none());
        assert!(retained("t".into(), &BTreeMap::from([("k", 1)])).is_some());
        let (c, outbox) = setup(PromptConfig::new("walking", "x"), MqttConfig::default(), EventsConfig::default());
        outbox.push(OutMessage::state("sensebind/dev/info".into(), "kept"));
        drain(&outbox);
        c.push_retained("sensebind/dev/info".into(), &Unserializable);
        assert!(drain(&outbox).is_empty(), "nothing is published");
        assert_eq!(outbox.retained("sensebind/dev/info"), Some(b"kept".to_vec()));
    }

    /// Issue 12, bug 6: `labels/1` names the sensor `sensor` (as `event/1` and `embedding/1` do) and keeps `source`
    /// as a deprecated alias with the same value.
    #[test]
    fn issue_12_label_messages_carry_sensor_and_the_deprecated_source() {
        let (mut c, outbox) = setup(PromptConfig::new("walking", "x"), MqttConfig::default(), EventsConfig::default());
        c.on_window(&window(0, 0, 0.9));
        let msgs = drain(&outbox);
        let m = msgs.iter().find(|m| m.topic == "sensebind/dev/labels/imu0").expect("a labels message");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["sensor"], "imu0");
        assert_eq!(v["source"], "imu0");
    }

    /// Home Assistant's rule for an MQTT binary_sensor: the payload, through `val_tpl` when there is one, must equal
    /// `pl_on` or `pl_off` (anything else is logged as "No matching payload found" and ignored). Renders only the
    /// one template form the daemon emits: `{{ 'A' if value == 'B' else 'C' }}`.
    fn ha_binary_sensor_state(component: &serde_json::Value, payload: &str) -> Option<bool> {
        let rendered = match component["val_tpl"].as_str() {
            None => payload.to_owned(),
            Some(t) => {
                let inner = t.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).expect("a {{ }} template");
                let quoted = |s: &str| s.trim().strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).map(str::to_owned);
                let (then, rest) = inner.split_once(" if value == ").expect("'A' if value == 'B' else 'C'");
                let (cond, otherwise) = rest.split_once(" else ").expect("'A' if value == 'B' else 'C'");
                let (then, cond, otherwise) = (quoted(then).unwrap(), quoted(cond).unwrap(), quoted(otherwise).unwrap());
                if payload == cond { then } else { otherwise }
            }
        };
        if Some(rendered.as_str()) == component["pl_on"].as_str() {
            Some(true)
        } else if Some(rendered.as_str()) == component["pl_off"].as_str() {
            Some(false)
        } else {
            None
        }
    }

    /// Issue 12, bug 7: every status a sensor can publish (`online`, `offline`, `disabled`) maps to ON or OFF for
    /// the Home Assistant connectivity binary_sensor; before, `disabled` matched neither and HA kept "connected".
    #[test]
    fn issue_12_every_sensor_status_maps_to_on_or_off_in_home_assistant() {
        let (mut c, outbox) = setup(PromptConfig::new("walking", "x"), MqttConfig::default(), EventsConfig::default());
        let status_topic = "sensebind/dev/sensor/imu0/status";
        c.publish_initial_state();
        let mut statuses: Vec<String> = Vec::new();
        let mut collect = |msgs: Vec<OutMessage>| {
            statuses.extend(msgs.iter().filter(|m| m.topic == status_topic).map(|m| String::from_utf8_lossy(&m.payload).into_owned()))
        };
        let initial = drain(&outbox);
        let discovery = initial.iter().rfind(|m| m.topic == "homeassistant/device/dev/config").expect("discovery").clone();
        collect(initial);
        c.s.sensors[0].stats.offline.store(true, Ordering::SeqCst);
        c.on_tick();
        collect(drain(&outbox));
        c.s.sensors[0].stats.offline.store(false, Ordering::SeqCst);
        c.on_tick();
        collect(drain(&outbox));
        let off = Incoming { topic: "sensebind/dev/sensor/imu0/enabled/set".into(), payload: b"OFF".to_vec(), retain: false };
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(c.on_command(off));
        collect(drain(&outbox));
        let mut kinds = statuses.clone();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds, ["disabled", "offline", "online"], "{statuses:?}");
        let v: serde_json::Value = serde_json::from_slice(&discovery.payload).unwrap();
        let component = &v["cmps"]["sensor-imu0"];
        assert_eq!(component["dev_cla"], "connectivity");
        for status in &kinds {
            let state = ha_binary_sensor_state(component, status);
            assert_eq!(state, Some(status == "online"), "status {status:?} with {component}");
        }
    }

    /// A text tower that takes its time: a two-dimensional embedding after `delay`.
    struct SlowTextEncoder {
        info: crate::encode::EncoderInfo,
        delay: Duration,
    }

    impl Encoder for SlowTextEncoder {
        fn info(&self) -> &crate::encode::EncoderInfo {
            &self.info
        }
        fn encode(&self, batch: &crate::tensor::Tensor) -> Result<crate::tensor::Tensor, crate::encode::EncodeError> {
            std::thread::sleep(self.delay);
            let b = batch.shape()[0];
            Ok(crate::tensor::Tensor::from_f32(vec![b, 2], [0.0, 1.0].repeat(b)).unwrap())
        }
        fn backend(&self) -> &'static str {
            "test"
        }
    }

    fn slow_text_tower(delay: Duration) -> TextTower {
        let bpe = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/imagebind-tiny/bpe_simple_vocab_16e6.txt.gz");
        TextTower {
            encoder: Arc::new(SlowTextEncoder {
                info: crate::encode::EncoderInfo {
                    modality: Modality::Text,
                    model_id: "slow@0".into(),
                    input_shape: vec![crate::preprocess::text::CONTEXT_LENGTH],
                    input_dtype: crate::tensor::DType::I64,
                    output_dim: 2,
                    fixed_batch: None,
                    path: PathBuf::new(),
                },
                delay,
            }),
            sha256: "slow".into(),
            tokenizer: Arc::new(Tokenizer::from_file(&bpe).unwrap()),
        }
    }

    /// Waits (real time) until `pred` holds for the messages popped so far; returns them.
    async fn wait_for(outbox: &Outbox, seen: &mut Vec<OutMessage>, pred: impl Fn(&[OutMessage]) -> bool) -> bool {
        for _ in 0..500 {
            seen.extend(drain(outbox));
            if pred(seen) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Issue 12, bug 4: while a prompt update is being embedded, the controller keeps handling windows (their
    /// labels messages appear before the update's response).
    #[tokio::test]
    async fn issue_12_windows_flow_while_a_prompt_update_is_embedded() {
        let (mut c, outbox) = setup(PromptConfig::new("walking", "x"), MqttConfig::default(), EventsConfig::default());
        c.s.text = Some(slow_text_tower(Duration::from_millis(1500)));
        let (scored_tx, scored_rx) = tokio::sync::mpsc::channel(8);
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(8);
        let task = tokio::spawn(c.run(scored_rx, cmd_rx));
        let update = br#"{"request_id": "r1", "upsert": [{"id": "running", "text": "a person running"}]}"#;
        let incoming = |p: &[u8]| Incoming { topic: "sensebind/dev/prompts/set".into(), payload: p.to_vec(), retain: false };
        cmd_tx.send(incoming(update)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        scored_tx.send(window(0, 0, 0.9)).await.unwrap();
        let responses = |m: &[OutMessage]| m.iter().filter(|m| m.topic == "sensebind/dev/cmd/response").count();
        let labels = |m: &[OutMessage]| m.iter().any(|m| m.topic == "sensebind/dev/labels/imu0");
        let mut seen = Vec::new();
        assert!(wait_for(&outbox, &mut seen, labels).await, "the window was handled");
        assert_eq!(responses(&seen), 0, "the labels message came before the update's response");
        // A second update while the first is embedded is queued and applied after it.
        let second = br#"{"request_id": "r2", "upsert": [{"id": "sitting", "text": "a person sitting"}]}"#;
        cmd_tx.send(incoming(second)).await.unwrap();
        assert!(wait_for(&outbox, &mut seen, |m| responses(m) == 2).await, "both updates answered");
        let answers: Vec<serde_json::Value> = seen
            .iter()
            .filter(|m| m.topic == "sensebind/dev/cmd/response")
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
        assert_eq!(answers[0]["request_id"], "r1");
        assert_eq!(answers[0]["ok"], true, "{}", answers[0]);
        assert_eq!(answers[1]["request_id"], "r2");
        assert_eq!(answers[1]["ok"], true, "{}", answers[1]);
        assert_eq!(answers[1]["result"]["rev"], 2);
        drop(scored_tx);
        task.await.unwrap();
    }
}
