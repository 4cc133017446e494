//! The controller: one tokio task that turns scored windows into the MQTT contract (docs/mqtt.md) and applies
//! commands.
//!
//! It owns every piece of published state — label and sensor states, events in progress, the prompt set's
//! revision — so changes are applied in one place and in order:
//! - scored windows (from the encoder workers, through a bounded queue whose overflow policy is **drop the newest
//!   window**, counted as `scored_dropped_total`) feed one [`Tracker`] per (sensor, label): events start, update and
//!   end; the label's retained state follows; per-window labels and embeddings are published as configured;
//! - a tick every 250 ms ends quiet events, and notices sensors that went offline or came back;
//! - commands (`prompts/set`, `…/enabled/set`, `cmd`, Home Assistant's birth message) are parsed, validated
//!   completely and then applied at once, or rejected with every error on `cmd/response` and `config/state`
//!   ([`commands`]); a prompt update's texts are embedded on the blocking pool while windows keep flowing;
//! - on shutdown (the queue closes once the workers are done) every open event ends (`shutdown`) and every label
//!   state goes `OFF`.
//!
//! Every payload is a typed struct built in [`payloads`]. Runtime changes (accepted prompts, enable switches) and
//! the events in progress are kept in `{state_dir}/runtime-state.json` ([`state`]), written off this task, so a
//! restart keeps the prompts and closes the events a crash left open. The controller reads the time through an
//! injected [`TimeSource`], so its tests run on scripted time.

pub mod commands;
pub mod evidence;
pub mod payloads;
pub mod reload;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::clock::{self, ProcessTime, TimeSource, Timestamp};
use crate::encode::Encoder;
use crate::events::EventsConfig;
use crate::events::fusion::{FUSED, Fusion, FusionConfig};
use crate::events::{EndReason, Tracker, Transition, TransitionKind};
use crate::labels::{LabelScore, PromptCache, PromptSet, ScoreMode};
use crate::modality::Modality;
use crate::preprocess::text::Tokenizer;
use crate::publish::config::{EmbeddingMode, MqttConfig};
use crate::publish::embedding::{self, EmbeddingFrame};
use crate::publish::mqtt::Incoming;
use crate::publish::{OutMessage, Outbox, Topics};
pub use commands::{MAX_PROMPTS, MAX_UPDATE_BYTES};
use payloads::{
    EventEnd, EventFacts, EventSubject, EventType, ModelInfo, PromptsOrigin, Publisher, SensorStatus, WindowCause,
    WindowTimes,
};
pub use reload::{Applied, Reload, ReloadOrigin, ReloadRequest, ReloadStats};
use state::StateWriter;
pub use state::{OpenEvent, RuntimeState, StateFile, prompts_hash};

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
    /// A gate found the window unchanged: `embedding` is the source's previous one, reused (`window::gate`).
    pub gated: bool,
}

/// How often the running z-score statistics are saved with the runtime state.
pub const ZSCORE_SAVE: Duration = Duration::from_secs(30);

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
    /// Payloads not published because they could not be serialised.
    pub payload_errors_total: AtomicU64,
    /// Current configuration revision.
    pub config_rev: AtomicU64,
    /// Events started and ended per label (`/metrics`).
    pub by_label: LabelEventCounts,
    /// When the controller's loop last turned (process monotonic ns, 0 before it runs): `/healthz` says 503 when
    /// it is stale.
    pub last_tick_ns: AtomicU64,
}

/// Most labels [`LabelEventCounts`] keeps apart: a label's counters stay after its prompt is removed (counters never
/// go back), so prompt updates could otherwise grow the map without end. Events of further labels are counted under
/// [`OTHER_LABELS`].
pub const MAX_COUNTED_LABELS: usize = 4 * MAX_PROMPTS;

/// The label that events of labels past [`MAX_COUNTED_LABELS`] are counted under (prompt ids are slugs, so no
/// prompt can have this id).
pub const OTHER_LABELS: &str = "(other)";

/// Events started and ended, per label, bounded at [`MAX_COUNTED_LABELS`] labels.
#[derive(Debug, Default)]
pub struct LabelEventCounts {
    counts: std::sync::Mutex<BTreeMap<String, LabelEvents>>,
}

/// One label's event counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LabelEvents {
    /// Events started.
    pub started_total: u64,
    /// Events ended.
    pub ended_total: u64,
}

impl LabelEventCounts {
    /// Counts an event of `label` that started (`true`) or ended.
    pub fn count(&self, label: &str, started: bool) {
        let mut counts = match self.counts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = if counts.contains_key(label) || counts.len() < MAX_COUNTED_LABELS {
            label
        } else {
            OTHER_LABELS
        };
        let entry = match counts.get_mut(key) {
            Some(e) => e,
            None => counts.entry(key.to_owned()).or_default(),
        };
        if started {
            entry.started_total += 1;
        } else {
            entry.ended_total += 1;
        }
    }

    /// Every label counted so far, in name order.
    pub fn snapshot(&self) -> Vec<(String, LabelEvents)> {
        let counts = match self.counts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        counts.iter().map(|(l, c)| (l.clone(), *c)).collect()
    }
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

/// The prompt embedder: the text tower and its tokenizer, the templates, and the towers of exemplars.
#[derive(Clone)]
pub struct TextTower {
    /// The tower.
    pub encoder: Arc<dyn Encoder>,
    /// Its sha256 (cache key).
    pub sha256: String,
    /// CLIP BPE.
    pub tokenizer: Arc<Tokenizer>,
    /// `[labels] templates`, by modality (empty: off).
    pub templates: BTreeMap<Modality, Vec<String>>,
    /// The sources' modalities (a prompt without `modalities` is embedded for each).
    pub modalities: BTreeSet<Modality>,
    /// The loaded towers that embed exemplars.
    pub exemplars: Option<Arc<crate::labels::exemplar::ExemplarTowers>>,
    /// Where base64 exemplars from `prompts/set` are stored (`{state_dir}/exemplars`); `None`: refused.
    pub exemplar_store: Option<std::path::PathBuf>,
}

impl TextTower {
    /// The text tower alone: no templates, no exemplars.
    pub fn new(encoder: Arc<dyn Encoder>, sha256: String, tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            encoder,
            sha256,
            tokenizer,
            templates: BTreeMap::new(),
            modalities: BTreeSet::new(),
            exemplars: None,
            exemplar_store: None,
        }
    }

    /// What [`crate::labels::embed_prompts`] embeds with.
    pub fn embedder(&self) -> crate::labels::Embedder<'_> {
        crate::labels::Embedder {
            text: self.encoder.as_ref(),
            text_sha: &self.sha256,
            tokenizer: &self.tokenizer,
            templates: &self.templates,
            modalities: &self.modalities,
            exemplars: self.exemplars.as_deref(),
        }
    }
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
    pub models: BTreeMap<String, ModelInfo>,
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
    /// `[[fusions]]`: labels fused over several sensors.
    pub fusions: Vec<FusionConfig>,
    /// The shipped background prompts (`labels.default_background`), embedded with every prompt update.
    pub background: Vec<crate::labels::PromptConfig>,
    /// `[labels]`: `zscore` warm-up and memory.
    pub labels: crate::labels::background::LabelsConfig,
    /// sha256 of the configuration file.
    pub config_hash: String,
    /// Where a `cmd` `reload` goes (the supervisor); `None`: this daemon cannot reload.
    pub reload_requests: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    /// Reload counters.
    pub reloads: Arc<ReloadStats>,
}

/// A (sensor, label) pair's event tracker.
struct Slot {
    tracker: Tracker,
    /// The sensor's modality, or `fusion` for a fused label.
    modality: String,
    event_id: Option<String>,
    last_t: Duration,
    idle_grace: Duration,
}

/// The controller.
pub struct Controller {
    s: ControllerSetup,
    /// The towers, as `info/1` lists them.
    models: BTreeMap<String, ModelInfo>,
    trackers: BTreeMap<(String, String), Slot>,
    label_on: BTreeMap<String, bool>,
    online: BTreeMap<String, bool>,
    removed_labels: BTreeSet<String>,
    session: u64,
    time: Arc<dyn TimeSource>,
    writer: StateWriter,
    /// The prompt update being embedded.
    pending: Option<commands::PendingUpdate>,
    /// Prompt updates waiting for it (at most [`commands::MAX_QUEUED_UPDATES`]; more are rejected).
    queued: VecDeque<commands::PromptUpdate>,
    /// Sensors removed by reloads (their Home Assistant entities are removed).
    removed_sensors: BTreeSet<String>,
    /// The fusions with their sources' latest scores.
    fusions: Vec<Fusion>,
    /// Running statistics of `zscore` labels (saved in the state file every [`ZSCORE_SAVE`]).
    zscores: crate::labels::zscore::ZScores,
    /// When the z-score statistics were last handed to the state writer.
    zscores_saved: std::time::Instant,
    /// The configuration file running and what the last reload did.
    file: payloads::FileState,
    /// `[evidence]`: the events with evidence in progress and the writer's queue (`None`: evidence is off).
    evidence: Option<evidence::EvidenceState>,
}

fn on_off(b: bool) -> &'static str {
    if b { "ON" } else { "OFF" }
}

fn mono(d: Duration) -> Timestamp {
    Timestamp(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Controller {
    /// A controller on the process clock; call [`Controller::run`].
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
            models: s.models.clone(),
            writer: StateWriter::spawn(s.state.path()),
            file: payloads::FileState {
                config_hash: s.config_hash.clone(),
                ..payloads::FileState::default()
            },
            removed_sensors: BTreeSet::new(),
            fusions: s.fusions.iter().cloned().map(Fusion::new).collect(),
            zscores: crate::labels::zscore::ZScores::from_saved(s.state.state.zscores.clone()),
            zscores_saved: std::time::Instant::now(),
            s,
            trackers: BTreeMap::new(),
            label_on: BTreeMap::new(),
            online: BTreeMap::new(),
            removed_labels: BTreeSet::new(),
            session,
            time: Arc::new(ProcessTime),
            pending: None,
            queued: VecDeque::new(),
            evidence: None,
        }
    }

    /// Writes evidence of events through `setup` (`None`: none).
    #[must_use]
    pub fn with_evidence(mut self, setup: Option<evidence::EvidenceSetup>) -> Self {
        self.evidence = setup.map(evidence::EvidenceState::new);
        self
    }

    /// Sends `cmd` `reload` requests to `requests` (the supervisor).
    #[must_use]
    pub fn with_reloads(mut self, requests: tokio::sync::mpsc::Sender<ReloadRequest>) -> Self {
        self.s.reload_requests = Some(requests);
        self
    }

    /// Reads the time from `time` instead of the process clock (tests).
    #[must_use]
    pub fn with_time(mut self, time: Arc<dyn TimeSource>) -> Self {
        self.time = time;
        self
    }

    fn now(&self) -> Timestamp {
        self.time.now()
    }

    /// Wall-clock now, RFC 3339 (`ts`, `applied_at`).
    fn wall_ts(&self) -> String {
        clock::rfc3339(self.time.wall_now())
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

    /// Pushes a JSON message; one that could not be serialised (`None`, already logged) is counted.
    fn send(&self, msg: Option<OutMessage>) {
        match msg {
            Some(m) => self.push(m),
            None => {
                self.s.stats.payload_errors_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn push_retained(&self, topic: String, value: &impl serde::Serialize) {
        self.send(payloads::retained(topic, value));
    }

    /// Hands the runtime state to the writer thread.
    fn save_state(&self) {
        self.writer.save(&self.s.state.state);
    }

    /// Runs until the scored-window queue closes (every encoder worker finished); then ends every event.
    /// `reloads` brings the outcomes of configuration reloads from the supervisor.
    pub async fn run(
        mut self,
        mut scored: tokio::sync::mpsc::Receiver<Scored>,
        mut commands: tokio::sync::mpsc::Receiver<Incoming>,
        mut reloads: tokio::sync::mpsc::Receiver<Reload>,
    ) {
        self.publish_initial_state();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut commands_open, mut reloads_open) = (true, true);
        loop {
            tokio::select! {
                w = scored.recv() => match w {
                    Some(w) => self.on_window(&w),
                    None => break,
                },
                c = commands.recv(), if commands_open => match c {
                    Some(c) => self.on_command(&c),
                    None => commands_open = false,
                },
                r = reloads.recv(), if reloads_open => match r {
                    Some(r) => self.on_reload(r),
                    None => reloads_open = false,
                },
                done = commands::embedded(&mut self.pending), if self.pending.is_some() => {
                    self.finish_prompt_update(done);
                }
                _ = tick.tick() => {
                    self.s.stats.last_tick_ns.store(clock::now().0, Ordering::Relaxed);
                    self.on_tick();
                }
            }
        }
        self.shutdown();
        let Controller { writer, .. } = self;
        writer.finish().await;
    }

    /// Availability, info, config and prompt states, sensor and label states, discovery; closes what a previous
    /// run left open.
    fn publish_initial_state(&mut self) {
        let t = self.s.topics.clone();
        self.push(OutMessage::state(t.availability(), "online"));
        self.close_events_left_open();
        // Labels of earlier runs that no longer exist: clear their retained topics.
        let fused = self.fusions.iter().map(|f| f.config.id.clone());
        let current: BTreeSet<String> = self.prompts().labels().map(|p| p.id.clone()).chain(fused).collect();
        let published = &self.s.state.state.published_labels;
        let stale: Vec<String> = published.difference(&current).cloned().collect();
        for label in &stale {
            self.clear_label_topics(label);
            self.remember_removed(label);
        }
        self.s.state.state.published_labels = current;
        self.save_state();
        self.publish_info();
        let origin = PromptsOrigin::from_name(self.s.prompts_origin);
        self.publish_config_state(Ok(()), origin, None);
        self.publish_prompts_state();
        for sensor in self.s.sensors.clone() {
            let online = !sensor.stats.offline.load(Ordering::SeqCst);
            self.online.insert(sensor.name.clone(), online);
            self.publish_sensor_state(&sensor);
        }
        let fused: Vec<String> = self.fusions.iter().map(|f| f.config.id.clone()).collect();
        for id in self.prompts().labels().map(|p| p.id.clone()).chain(fused) {
            self.label_on.insert(id.clone(), false);
            self.push(OutMessage::state(t.label_state(&id), "OFF"));
            let enabled = on_off(self.label_enabled(&id));
            self.push(OutMessage::state(t.label_enabled_state(&id), enabled));
        }
        self.publish_discovery();
    }

    /// Events a crash left open get their end now (`restart`).
    fn close_events_left_open(&mut self) {
        let open = std::mem::take(&mut self.s.state.state.open_events);
        for (id, ev) in open {
            let end = EventEnd {
                time: self.wall_ts(),
                reason: Some(EndReason::Restart),
                duration_s: None,
            };
            let facts = EventFacts {
                id: id.clone(),
                seq: ev.seq + 1,
                kind: EventType::End,
                subject: EventSubject {
                    sensor: ev.sensor,
                    modality: ev.modality,
                    label: ev.label,
                    prompt: ev.prompt,
                },
                score: 0.0,
                peak: ev.peak,
                thresholds: None,
                start_time: ev.start_time,
                end: Some(end),
                cause: None,
                evidence: None,
            };
            let _ = self.publish_event(facts);
            tracing::info!(event = %id, "Closed an event left open by the previous run.");
        }
    }

    fn publisher(&self) -> Publisher<'_> {
        Publisher {
            device: &self.s.device,
            session: self.session,
            config_rev: self.s.state.state.config_rev,
        }
    }

    /// Publishes one `event/1` message.
    fn publish_event(&self, facts: EventFacts) -> Option<serde_json::Value> {
        let topic = self.s.topics.events(&facts.subject.sensor, &facts.subject.label);
        let payload = payloads::event(self.publisher(), self.wall_ts(), facts);
        self.send(payloads::json_message(topic, &payload, OutMessage::event));
        // Through the text, so that `event.json` holds exactly what was published (f32 scores as printed).
        serde_json::to_vec(&payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
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

    /// Clears a deleted label's retained topics (an empty retained message, on purpose).
    fn clear_label_topics(&self, label: &str) {
        let t = &self.s.topics;
        self.push(OutMessage::state(t.label_state(label), Vec::new()));
        self.push(OutMessage::state(t.label_enabled_state(label), Vec::new()));
        // Its evidence snapshots (an empty retained message clears a topic; clearing one never set is harmless).
        if let Some(ev) = &self.evidence {
            for sensor in self.s.sensors.iter().filter(|s| ev.publishes(s.modality)) {
                self.push(OutMessage::state(t.snapshot(&sensor.name, label), Vec::new()));
            }
        }
    }

    fn info(&self) -> payloads::InfoMessage {
        let sensors = self
            .s
            .sensors
            .iter()
            .map(|s| payloads::SensorDescription {
                name: s.name.clone(),
                modality: s.modality.to_string(),
                window_secs: s.window_secs,
                hop_secs: s.hop_secs,
            })
            .collect();
        payloads::info(payloads::DaemonInfo {
            device: &self.s.device,
            name: &self.s.device_name,
            session: self.session,
            config_rev: self.s.state.state.config_rev,
            models: &self.models,
            sensors,
            embeddings: &self.s.mqtt.embeddings,
        })
    }

    fn publish_info(&self) {
        self.push_retained(self.s.topics.info(), &self.info());
    }

    fn publish_config_state(&self, result: Result<(), &[String]>, origin: PromptsOrigin, request_id: Option<&str>) {
        let rev = self.s.state.state.config_rev;
        let prompts = self.prompts().prompts().len();
        let payload = payloads::config_state(
            payloads::ConfigStateInput {
                rev,
                source: origin,
                request_id,
                prompts,
                file: &self.file,
            },
            result,
            self.wall_ts(),
        );
        self.push_retained(self.s.topics.config_state(), &payload);
    }

    fn publish_prompts_state(&self) {
        let st = &self.s.state.state;
        let payload = payloads::prompts_state(st.config_rev, &self.prompts(), &self.s.events, &st.disabled_labels);
        self.push_retained(self.s.topics.prompts_state(), &payload);
    }

    fn publish_sensor_state(&self, sensor: &SensorInfo) {
        let t = &self.s.topics;
        let enabled = sensor.enabled.load(Ordering::SeqCst);
        let online = self.online.get(&sensor.name).copied().unwrap_or(true);
        let status = SensorStatus::of(enabled, online);
        self.push(OutMessage::state(t.sensor_status(&sensor.name), status.as_str()));
        self.push(OutMessage::state(t.sensor_enabled_state(&sensor.name), on_off(enabled)));
    }

    /// Home Assistant device discovery (retained, so it is republished with the rest of the state).
    fn publish_discovery(&self) {
        let ha = &self.s.mqtt.homeassistant;
        if !ha.enabled {
            return;
        }
        let current = self.prompts();
        let class_of = |p: &crate::labels::Prompt| {
            let modality = self
                .s
                .sensors
                .iter()
                .find(|s| p.config.applies_to(s.modality, &s.name))
                .map(|s| s.modality);
            p.config.device_class.clone().unwrap_or_else(|| {
                match modality {
                    Some(Modality::Audio) => "sound",
                    Some(Modality::Imu) => "motion",
                    _ => "occupancy",
                }
                .to_owned()
            })
        };
        let mut labels: Vec<(String, String)> = current.labels().map(|p| (p.id.clone(), class_of(p))).collect();
        for f in &self.fusions {
            let class = current
                .labels()
                .find(|p| p.id == f.config.label)
                .map_or_else(|| "occupancy".to_owned(), class_of);
            labels.push((f.config.id.clone(), class));
        }
        let now: BTreeSet<&str> = labels.iter().map(|(id, _)| id.as_str()).collect();
        let payload = payloads::discovery(payloads::DiscoveryInput {
            device: &self.s.device,
            device_name: &self.s.device_name,
            topics: &self.s.topics,
            labels: labels.clone(),
            removed: self
                .removed_labels
                .iter()
                .filter(|l| !now.contains(l.as_str()))
                .cloned()
                .collect(),
            sensors: self.s.sensors.iter().map(|s| s.name.clone()).collect(),
            removed_sensors: self
                .removed_sensors
                .iter()
                .filter(|r| !self.s.sensors.iter().any(|s| s.name == **r))
                .cloned()
                .collect(),
            images: self.evidence.as_ref().map_or_else(Vec::new, |ev| {
                let pairs = self.s.sensors.iter().map(|s| (s.name.as_str(), s.modality));
                ev.snapshot_pairs(pairs, &current)
            }),
            removed_images: self.removed_images(&now),
        });
        let topic = format!("{}/device/{}/config", ha.discovery_prefix, self.s.device);
        self.push_retained(topic, &payload);
    }

    /// The Home Assistant images of deleted labels and removed sensors (with evidence on).
    fn removed_images(&self, labels_now: &BTreeSet<&str>) -> Vec<(String, String)> {
        let Some(ev) = &self.evidence else {
            return Vec::new();
        };
        let cameras: Vec<&str> = self
            .s
            .sensors
            .iter()
            .filter(|s| ev.publishes(s.modality))
            .map(|s| s.name.as_str())
            .collect();
        let gone_labels = self.removed_labels.iter().filter(|l| !labels_now.contains(l.as_str()));
        let mut out: Vec<(String, String)> = gone_labels
            .flat_map(|l| cameras.iter().map(move |s| ((*s).to_owned(), l.clone())))
            .collect();
        for sensor in self
            .removed_sensors
            .iter()
            .filter(|r| !self.s.sensors.iter().any(|s| s.name == **r))
        {
            out.extend(labels_now.iter().map(|l| (sensor.clone(), (*l).to_owned())));
        }
        out
    }

    fn label_enabled(&self, label: &str) -> bool {
        !self.s.state.state.disabled_labels.contains(label)
    }

    fn on_window(&mut self, w: &Scored) {
        let Some(sensor) = self.s.sensors.iter().find(|s| *s.name == *w.source).cloned() else {
            return;
        };
        sensor.stats.windows_scored_total.fetch_add(1, Ordering::Relaxed);
        if w.gated {
            sensor.stats.windows_gated_total.fetch_add(1, Ordering::Relaxed);
        }
        if !sensor.enabled.load(Ordering::SeqCst) {
            return;
        }
        let times = WindowTimes {
            seq: w.seq,
            t0: w.t0,
            t1: w.t1,
            now: self.now(),
        };
        let scores = self.standardise(&sensor.name, &w.labels);
        if self.s.mqtt.labels {
            let top = scores.iter().take(self.s.top_k.max(1)).cloned().collect();
            let modality = w.modality.to_string();
            let payload = payloads::labels(&self.s.device, &w.source, &modality, times, &w.model, top);
            let qos = self.s.mqtt.qos;
            let topic = self.s.topics.labels(&w.source);
            self.send(payloads::json_message(topic, &payload, |t, p| {
                OutMessage::telemetry(t, p, qos)
            }));
        }
        let prompts = self.prompts();
        let t = Duration::from_nanos(w.t1.0);
        let idle_grace = Duration::from_secs_f64(sensor.hop_secs * 2.0 + 1.0);
        for (rank, ls) in scores.iter().enumerate() {
            if !self.label_enabled(&ls.label) {
                continue;
            }
            let Some(prompt) = prompts.prompts().iter().find(|p| p.id == ls.label) else {
                continue;
            };
            let key = (sensor.name.clone(), ls.label.clone());
            let slot = self.trackers.entry(key.clone()).or_insert_with(|| Slot {
                tracker: Tracker::new(prompt.config.event_params(&self.s.events)),
                modality: w.modality.to_string(),
                event_id: None,
                last_t: Duration::ZERO,
                idle_grace,
            });
            slot.last_t = slot.last_t.max(t);
            let at = slot.last_t;
            if let Some(tr) = slot.tracker.observe(at, ls.score) {
                let runner_up = scores.iter().enumerate().filter(|(i, _)| *i != rank).take(2);
                let cause = WindowCause {
                    cos: ls.cosine,
                    runner_up: runner_up
                        .map(|(_, o)| payloads::RunnerUp {
                            label: o.label.clone(),
                            score: o.score,
                        })
                        .collect(),
                    window: times.into(),
                    model: w.model.to_string(),
                };
                self.emit(&key, &tr, Some(cause));
            }
            if let (Some(ev), Some(id)) = (
                self.evidence.as_mut(),
                self.trackers.get(&key).and_then(|s| s.event_id.as_deref()),
            ) {
                ev.score(id, w.seq, w.t1, ls.score);
            }
        }
        self.fuse(&sensor.name, t, &scores, times, &w.model);
        self.maybe_embedding(w, &sensor);
    }

    /// Feeds a window's scores to the fusions that take them and runs their trackers.
    fn fuse(&mut self, sensor: &str, t: Duration, scores: &[LabelScore], times: WindowTimes, model: &str) {
        let prompts = self.prompts();
        for i in 0..self.fusions.len() {
            let Some(ls) = scores.iter().find(|ls| self.fusions[i].takes(sensor, &ls.label)) else {
                continue;
            };
            let f = &mut self.fusions[i];
            f.observe(sensor, t, ls.score);
            let fused = f.score(t);
            let (id, label, threshold) = (f.config.id.clone(), f.config.label.clone(), f.config.threshold);
            if !self.label_enabled(&id) {
                continue;
            }
            let Some(prompt) = prompts.labels().find(|p| p.id == label) else {
                continue;
            };
            let mut params = prompt.config.event_params(&self.s.events);
            if let Some(on) = threshold {
                let off = params.off - params.on + on;
                (params.on, params.off) = (on, off.min(on));
            }
            let key = (FUSED.to_owned(), id);
            let slot = self.trackers.entry(key.clone()).or_insert_with(|| Slot {
                tracker: Tracker::new(params),
                modality: "fusion".into(),
                event_id: None,
                last_t: Duration::ZERO,
                idle_grace: Duration::from_secs(2),
            });
            slot.last_t = slot.last_t.max(t);
            slot.idle_grace = Duration::from_secs_f64(self.fusions[i].config.within_secs + 1.0);
            let at = slot.last_t;
            if let Some(tr) = slot.tracker.observe(at, fused) {
                let cause = WindowCause {
                    cos: ls.cosine,
                    runner_up: Vec::new(),
                    window: times.into(),
                    model: model.to_owned(),
                };
                self.emit(&key, &tr, Some(cause));
            }
        }
    }

    /// The window's scores with `zscore` labels standardised by their running statistics (0 and inactive while
    /// warming up), best first.
    fn standardise(&mut self, sensor: &str, labels: &[LabelScore]) -> Vec<LabelScore> {
        if !labels.iter().any(|l| l.mode == ScoreMode::Zscore) {
            return labels.to_vec();
        }
        let prompts = self.prompts();
        let threshold_of = |label: &str| {
            prompts
                .labels()
                .find(|p| p.id == label)
                .map_or(f32::INFINITY, |p| p.config.threshold)
        };
        let (warmup, memory) = (self.s.labels.zscore_warmup_windows, self.s.labels.zscore_memory_windows);
        crate::labels::zscore::standardise_scores(&mut self.zscores, sensor, labels, threshold_of, warmup, memory)
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
    fn emit(&mut self, key: &(String, String), tr: &Transition, cause: Option<WindowCause>) {
        let (sensor, label) = key;
        let prompts = self.prompts();
        // A fused label's prompt is the label it fuses.
        let fused = (sensor == FUSED)
            .then(|| self.fusions.iter().find(|f| &f.config.id == label))
            .flatten()
            .map(|f| f.config.label.clone());
        let prompt = prompts
            .prompts()
            .iter()
            .find(|p| p.id == *fused.as_ref().unwrap_or(label));
        let prompt_text = prompt.and_then(|p| p.texts.first().cloned()).unwrap_or_default();
        let session = self.session;
        let Some(slot) = self.trackers.get_mut(key) else { return };
        let params = slot.tracker.params();
        let thresholds = payloads::Thresholds {
            on: params.on,
            off: params.off,
            mode: prompt.map(|p| p.config.mode).unwrap_or_default().as_str(),
        };
        let modality = slot.modality.clone();
        let id = match (tr.kind, &slot.event_id) {
            (TransitionKind::Start, _) | (_, None) => format!("{session}-{sensor}-{label}-{}", tr.event),
            (_, Some(id)) => id.clone(),
        };
        slot.event_id = (tr.kind != TransitionKind::End).then(|| id.clone());
        let start_time = clock::rfc3339_of(mono(tr.started_at));
        let end = (tr.kind == TransitionKind::End).then(|| EventEnd {
            time: clock::rfc3339_of(mono(tr.at)),
            reason: tr.end_reason,
            duration_s: Some(tr.at.saturating_sub(tr.started_at).as_secs_f64()),
        });
        self.count_transition(tr, &id, label);
        let facts = EventFacts {
            id: id.clone(),
            seq: tr.seq,
            kind: match tr.kind {
                TransitionKind::Start => EventType::Start,
                TransitionKind::Update => EventType::Update,
                TransitionKind::End => EventType::End,
            },
            subject: EventSubject {
                sensor: sensor.clone(),
                modality: modality.clone(),
                label: label.clone(),
                prompt: prompt_text.clone(),
            },
            score: tr.score,
            peak: tr.peak,
            thresholds: Some(thresholds),
            start_time: start_time.clone(),
            end,
            cause,
            evidence: None,
        };
        self.publish_with_evidence(facts, tr, prompt.map(|p| &p.config));
        // The state file knows the open events, so a crash can be followed by their end.
        let open = &mut self.s.state.state.open_events;
        if tr.kind == TransitionKind::End {
            open.remove(&id);
        } else {
            let (seq, peak) = (tr.seq, tr.peak);
            let (sensor, label, prompt) = (sensor.clone(), label.clone(), prompt_text);
            let ev = OpenEvent {
                sensor,
                modality,
                label,
                prompt,
                start_time,
                seq,
                peak,
            };
            open.insert(id, ev);
        }
        if tr.kind != TransitionKind::Update {
            self.save_state();
        }
        self.refresh_label_state(label);
    }

    /// Publishes an event message; with evidence on, attaches the event's `evidence` and queues its jobs.
    fn publish_with_evidence(
        &mut self,
        mut facts: EventFacts,
        tr: &Transition,
        prompt: Option<&crate::labels::PromptConfig>,
    ) {
        let modality = self
            .s
            .sensors
            .iter()
            .find(|s| s.name == facts.subject.sensor)
            .map(|s| s.modality);
        let (Some(ev), Some(modality)) = (self.evidence.as_mut(), modality) else {
            self.publish_event(facts);
            return;
        };
        let id = facts.id.clone();
        if tr.kind != TransitionKind::Start {
            facts.evidence = ev.describe(&id, tr.kind == TransitionKind::End);
        }
        let (sensor, label) = (facts.subject.sensor.clone(), facts.subject.label.clone());
        let params = ev.params(modality, prompt);
        let payload = self.publish_event(facts);
        let (Some(ev), Some(payload)) = (self.evidence.as_mut(), payload) else {
            return;
        };
        match tr.kind {
            TransitionKind::Start => {
                if let Some(p) = params {
                    ev.started(&id, &sensor, &label, modality, p, tr.started_at, payload);
                }
            }
            TransitionKind::Update => {}
            TransitionKind::End => ev.ended(&id, tr.at, payload),
        }
    }

    /// Evidence on every tick: clips that are due are queued, and a snapshot just written is announced with an
    /// `update`.
    fn evidence_tick(&mut self, now: Duration) {
        let Some(ev) = self.evidence.as_mut() else { return };
        for id in ev.tick(now) {
            let Some(key) = self
                .trackers
                .iter()
                .find(|(_, slot)| slot.event_id.as_deref() == Some(id.as_str()))
                .map(|(k, _)| k.clone())
            else {
                continue;
            };
            let Some(slot) = self.trackers.get_mut(&key) else {
                continue;
            };
            let at = slot.last_t.max(now);
            if let Some(tr) = slot.tracker.announce(at) {
                self.emit(&key, &tr, None);
            }
        }
    }

    fn count_transition(&self, tr: &Transition, id: &str, label: &str) {
        let stats = &self.s.stats;
        match tr.kind {
            TransitionKind::Start => {
                stats.events_started_total.fetch_add(1, Ordering::Relaxed);
                stats.events_active.fetch_add(1, Ordering::Relaxed);
                stats.by_label.count(label, true);
                tracing::info!(event = %id, score = tr.score, "Event started.");
            }
            TransitionKind::Update => {}
            TransitionKind::End => {
                stats.events_ended_total.fetch_add(1, Ordering::Relaxed);
                stats.events_active.fetch_sub(1, Ordering::Relaxed);
                stats.by_label.count(label, false);
                tracing::info!(event = %id, reason = tr.end_reason.map_or("", |r| r.as_str()), "Event ended.");
            }
        }
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
        let now = Duration::from_nanos(self.now().0);
        let keys: Vec<(String, String)> = self.trackers.keys().filter(|(s, l)| pred(s, l)).cloned().collect();
        for key in keys {
            let Some(slot) = self.trackers.get_mut(&key) else {
                continue;
            };
            slot.last_t = slot.last_t.max(now);
            let at = slot.last_t;
            if let Some(tr) = slot.tracker.end(at, reason) {
                self.emit(&key, &tr, None);
            }
        }
    }

    fn on_tick(&mut self) {
        if self.zscores_saved.elapsed() >= ZSCORE_SAVE && self.zscores.saved() != &self.s.state.state.zscores {
            self.s.state.state.zscores = self.zscores.saved().clone();
            self.zscores_saved = std::time::Instant::now();
            self.save_state();
        }
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
        let now = Duration::from_nanos(self.now().0);
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
                self.emit(&key, &tr, None);
            }
        }
        self.evidence_tick(now);
    }

    fn shutdown(&mut self) {
        self.s.state.state.zscores = self.zscores.saved().clone();
        self.abandon_prompt_updates();
        self.end_where(EndReason::Shutdown, |_, _| true);
        let labels: Vec<String> = self.label_on.keys().cloned().collect();
        for label in labels {
            self.label_on.insert(label.clone(), false);
            self.push(OutMessage::state(self.s.topics.label_state(&label), "OFF"));
        }
        self.save_state();
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use serde::Serialize;

    use super::*;
    use crate::clock::ScriptedTime;
    use crate::labels::Prompt;
    use crate::labels::PromptConfig;
    use crate::publish::{Class, OutboxLimits};
    use payloads::retained;

    fn setup(prompt: PromptConfig, mqtt: MqttConfig, events: EventsConfig) -> (Controller, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(OutboxLimits::uniform(10_000)));
        let prompts = PromptSet::new(vec![Prompt {
            id: prompt.id.clone(),
            texts: prompt.all_texts(),
            config: prompt,
            embedding: vec![1.0, 0.0],
            by_modality: BTreeMap::new(),
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
            background: Vec::new(),
            fusions: Vec::new(),
            labels: crate::labels::background::LabelsConfig::default(),
            config_hash: "c0ffee".into(),
            reload_requests: None,
            reloads: Arc::default(),
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
            gated: false,
            embedding: vec![3.0, 4.0],
            labels: vec![LabelScore {
                label: "walking".into(),
                score,
                cosine: 0.5,
                active: score >= 0.6,
                mode: ScoreMode::Softmax,
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
    fn a_fused_label_starts_only_while_every_sensor_agrees_within_the_tolerance() {
        use crate::events::fusion::{FusionConfig, FusionRule};
        let events_cfg = EventsConfig {
            aggregate_windows: 1,
            onset_k: 1,
            onset_n: 1,
            hold_secs: 0.0,
            update_interval_secs: 3600.0,
            ..EventsConfig::default()
        };
        let prompt = PromptConfig {
            threshold: 0.6,
            off_threshold: Some(0.5),
            ..PromptConfig::new("walking", "a person walking")
        };
        let mqtt = MqttConfig {
            labels: false,
            ..MqttConfig::default()
        };
        let (mut c, outbox) = setup(prompt, mqtt, events_cfg);
        let mut imu1 = c.s.sensors[0].clone();
        imu1.name = "imu1".into();
        imu1.stats = Arc::default();
        imu1.enabled = Arc::new(AtomicBool::new(true));
        c.s.sensors.push(imu1);
        let fusion = FusionConfig {
            id: "walking_both".into(),
            label: "walking".into(),
            sources: vec!["imu0".into(), "imu1".into()],
            within_secs: 1.0,
            rule: FusionRule::All,
            threshold: None,
        };
        c.fusions = vec![Fusion::new(fusion.clone())];
        c.s.fusions = vec![fusion];
        c.publish_initial_state();
        let initial = drain(&outbox);
        assert!(
            initial
                .iter()
                .any(|m| m.topic == "sensebind/dev/label/walking_both/state" && m.payload == b"OFF")
        );
        let discovery = initial
            .iter()
            .find(|m| m.topic == "homeassistant/device/dev/config")
            .unwrap();
        let d: serde_json::Value = serde_json::from_slice(&discovery.payload).unwrap();
        assert!(d["cmps"]["label-walking_both"].is_object(), "{d}");
        let fused_topic = "sensebind/dev/events/fused/walking_both";
        let fused = |msgs: &[OutMessage]| -> Vec<String> {
            msgs.iter()
                .filter(|m| m.topic == fused_topic)
                .map(|m| {
                    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                    assert_eq!(
                        (v["sensor"].as_str(), v["modality"].as_str()),
                        (Some("fused"), Some("fusion"))
                    );
                    assert_eq!(v["prompt"], "a person walking");
                    v["type"].as_str().unwrap().to_owned()
                })
                .collect()
        };
        let on_imu1 = |seq, t, s| {
            let mut w = window(seq, t, s);
            w.source = Arc::from("imu1");
            w
        };
        // imu0 alone: its own event starts, the fused one does not (imu1 has no score yet).
        c.on_window(&window(0, 0, 0.9));
        let msgs = drain(&outbox);
        assert_eq!(events(&msgs).len(), 1);
        assert!(fused(&msgs).is_empty());
        // imu1 agrees 0.2 s later: min(0.9, 0.8) = 0.8 ≥ 0.6 → the fused event starts, its label goes ON.
        c.on_window(&on_imu1(0, 200, 0.8));
        let msgs = drain(&outbox);
        assert_eq!(fused(&msgs), ["start"]);
        assert!(
            msgs.iter()
                .any(|m| m.topic == "sensebind/dev/label/walking_both/state" && m.payload == b"ON")
        );
        // 1.5 s later only imu1 has scored recently: imu0's 0.9 is too old, the fused score is 0 → it ends.
        c.on_window(&on_imu1(1, 1500, 0.8));
        let msgs = drain(&outbox);
        assert_eq!(fused(&msgs), ["end"]);
    }

    #[test]
    fn embeddings_follow_the_rate_control() {
        use crate::publish::config::EmbeddingsConfig;
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
        let (c, outbox) = setup(
            PromptConfig::new("walking", "x"),
            MqttConfig::default(),
            EventsConfig::default(),
        );
        outbox.push(OutMessage::state("sensebind/dev/info".into(), "kept"));
        drain(&outbox);
        c.push_retained("sensebind/dev/info".into(), &Unserializable);
        assert!(drain(&outbox).is_empty(), "nothing is published");
        assert_eq!(outbox.retained("sensebind/dev/info"), Some(b"kept".to_vec()));
        assert_eq!(
            c.s.stats.payload_errors_total.load(Ordering::Relaxed),
            1,
            "and it is counted"
        );
    }

    /// Issue 12, bug 6: `labels/1` names the sensor `sensor` (as `event/1` and `embedding/1` do) and keeps `source`
    /// as a deprecated alias with the same value.
    #[test]
    fn issue_12_label_messages_carry_sensor_and_the_deprecated_source() {
        let (mut c, outbox) = setup(
            PromptConfig::new("walking", "x"),
            MqttConfig::default(),
            EventsConfig::default(),
        );
        c.on_window(&window(0, 0, 0.9));
        let msgs = drain(&outbox);
        let m = msgs
            .iter()
            .find(|m| m.topic == "sensebind/dev/labels/imu0")
            .expect("a labels message");
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
                let inner = t
                    .trim()
                    .strip_prefix("{{")
                    .and_then(|t| t.strip_suffix("}}"))
                    .expect("a {{ }} template");
                let quoted = |s: &str| {
                    s.trim()
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .map(str::to_owned)
                };
                let (then, rest) = inner.split_once(" if value == ").expect("'A' if value == 'B' else 'C'");
                let (cond, otherwise) = rest.split_once(" else ").expect("'A' if value == 'B' else 'C'");
                let (then, cond, otherwise) =
                    (quoted(then).unwrap(), quoted(cond).unwrap(), quoted(otherwise).unwrap());
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
        let (mut c, outbox) = setup(
            PromptConfig::new("walking", "x"),
            MqttConfig::default(),
            EventsConfig::default(),
        );
        let status_topic = "sensebind/dev/sensor/imu0/status";
        c.publish_initial_state();
        let mut statuses: Vec<String> = Vec::new();
        let mut collect = |msgs: Vec<OutMessage>| {
            statuses.extend(
                msgs.iter()
                    .filter(|m| m.topic == status_topic)
                    .map(|m| String::from_utf8_lossy(&m.payload).into_owned()),
            )
        };
        let initial = drain(&outbox);
        let discovery = initial
            .iter()
            .rfind(|m| m.topic == "homeassistant/device/dev/config")
            .expect("discovery")
            .clone();
        collect(initial);
        c.s.sensors[0].stats.offline.store(true, Ordering::SeqCst);
        c.on_tick();
        collect(drain(&outbox));
        c.s.sensors[0].stats.offline.store(false, Ordering::SeqCst);
        c.on_tick();
        collect(drain(&outbox));
        let off = Incoming {
            topic: "sensebind/dev/sensor/imu0/enabled/set".into(),
            payload: b"OFF".to_vec(),
            retain: false,
        };
        c.on_command(&off);
        collect(drain(&outbox));
        let mut kinds = statuses.clone();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds, ["disabled", "offline", "online"], "{statuses:?}");
        let mut all: Vec<&str> = SensorStatus::ALL.iter().map(|s| s.as_str()).collect();
        all.sort_unstable();
        assert_eq!(kinds, all, "SensorStatus::ALL lists what is published");
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
        TextTower::new(
            Arc::new(SlowTextEncoder {
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
            "slow".into(),
            Arc::new(Tokenizer::from_file(&bpe).unwrap()),
        )
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
        let (mut c, outbox) = setup(
            PromptConfig::new("walking", "x"),
            MqttConfig::default(),
            EventsConfig::default(),
        );
        c.s.text = Some(slow_text_tower(Duration::from_millis(1500)));
        let (scored_tx, scored_rx) = tokio::sync::mpsc::channel(8);
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(8);
        let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(c.run(scored_rx, cmd_rx, reload_rx));
        let update = br#"{"request_id": "r1", "upsert": [{"id": "running", "text": "a person running"}]}"#;
        let incoming = |p: &[u8]| Incoming {
            topic: "sensebind/dev/prompts/set".into(),
            payload: p.to_vec(),
            retain: false,
        };
        cmd_tx.send(incoming(update)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        scored_tx.send(window(0, 0, 0.9)).await.unwrap();
        let responses = |m: &[OutMessage]| m.iter().filter(|m| m.topic == "sensebind/dev/cmd/response").count();
        let labels = |m: &[OutMessage]| m.iter().any(|m| m.topic == "sensebind/dev/labels/imu0");
        let mut seen = Vec::new();
        assert!(wait_for(&outbox, &mut seen, labels).await, "the window was handled");
        assert_eq!(
            responses(&seen),
            0,
            "the labels message came before the update's response"
        );
        // A second update while the first is embedded is queued and applied after it.
        let second = br#"{"request_id": "r2", "upsert": [{"id": "sitting", "text": "a person sitting"}]}"#;
        cmd_tx.send(incoming(second)).await.unwrap();
        assert!(
            wait_for(&outbox, &mut seen, |m| responses(m) == 2).await,
            "both updates answered"
        );
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

    /// Issue 16: with evidence on, a deleted label's snapshot topics are cleared for the cameras whose snapshots are
    /// published, and its Home Assistant images removed.
    #[test]
    fn a_deleted_labels_snapshots_are_cleared_and_its_images_removed() {
        let (mut c, outbox) = setup(
            PromptConfig::new("walking", "x"),
            MqttConfig::default(),
            EventsConfig::default(),
        );
        c.s.sensors[0].name = "cam0".into();
        c.s.sensors[0].modality = Modality::Vision;
        let config = crate::evidence::EvidenceConfig {
            enabled: true,
            ..crate::evidence::EvidenceConfig::default()
        };
        let queue = Arc::new(crate::evidence::writer::JobQueue::new(4));
        c = c.with_evidence(Some(evidence::EvidenceSetup { queue, config }));
        c.publish_discovery();
        let msgs = drain(&outbox);
        let discovery = msgs.iter().rev().find(|m| m.topic.ends_with("/config")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&discovery.payload).unwrap();
        assert_eq!(v["cmps"]["snapshot-cam0-walking"]["p"], "image");
        *c.s.prompts.write().unwrap() = Arc::new(PromptSet::new(Vec::new()));
        c.clear_label_topics("walking");
        c.remember_removed("walking");
        c.publish_discovery();
        let msgs = drain(&outbox);
        let cleared = msgs
            .iter()
            .find(|m| m.topic == "sensebind/dev/snapshot/cam0/walking")
            .unwrap();
        assert!(cleared.payload.is_empty() && cleared.retain);
        let discovery = msgs.iter().rev().find(|m| m.topic.ends_with("/config")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&discovery.payload).unwrap();
        assert_eq!(v["cmps"]["snapshot-cam0-walking"], serde_json::json!({"p": "image"}));
    }

    /// With scripted time the tick ends a quiet event without any real waiting (and sees the scripted clock, not
    /// the process's).
    #[test]
    fn ticks_on_scripted_time_end_quiet_events() {
        let events_cfg = EventsConfig {
            aggregate_windows: 1,
            onset_k: 1,
            onset_n: 1,
            hold_secs: 2.0,
            ..EventsConfig::default()
        };
        let mqtt = MqttConfig {
            labels: false,
            ..MqttConfig::default()
        };
        let (c, outbox) = setup(PromptConfig::new("walking", "x"), mqtt, events_cfg);
        let time = Arc::new(ScriptedTime::new(Timestamp(0)));
        let mut c = c.with_time(Arc::clone(&time) as Arc<dyn TimeSource>);
        c.publish_initial_state();
        drain(&outbox);
        time.set(Timestamp(1_000_000_000));
        c.on_window(&window(0, 1000, 0.9));
        c.on_tick();
        let started = drain(&outbox);
        assert_eq!(
            events(&started).iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["start"]
        );
        // Hold (2 s) plus the idle grace (two hops + 1 s = 2 s) after the last window: still on just before.
        time.advance(Duration::from_millis(3900));
        c.on_tick();
        assert!(events(&drain(&outbox)).is_empty());
        time.advance(Duration::from_millis(200));
        c.on_tick();
        let ended = drain(&outbox);
        let ev = events(&ended);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].3.as_deref(), Some("quiet"));
        let end: serde_json::Value =
            serde_json::from_slice(&ended.iter().find(|m| m.class == Class::Event).unwrap().payload).unwrap();
        assert_eq!(
            end["ts"],
            clock::rfc3339_of(Timestamp(5_100_000_000)),
            "ts comes from the injected clock"
        );
    }

    #[test]
    fn label_event_counts_are_bounded() {
        let c = LabelEventCounts::default();
        c.count("walking", true);
        c.count("walking", false);
        for i in 1..MAX_COUNTED_LABELS {
            c.count(&format!("l{i}"), true);
        }
        // The map is full: a new label is counted under OTHER_LABELS, a known one still under its own.
        c.count("new", true);
        c.count("new2", false);
        c.count("walking", true);
        let snap = c.snapshot();
        assert_eq!(snap.len(), MAX_COUNTED_LABELS + 1);
        let get = |l: &str| snap.iter().find(|(k, _)| k == l).map(|(_, v)| *v);
        assert_eq!(
            get("walking"),
            Some(LabelEvents {
                started_total: 2,
                ended_total: 1
            })
        );
        assert_eq!(
            get(OTHER_LABELS),
            Some(LabelEvents {
                started_total: 1,
                ended_total: 1
            })
        );
        assert_eq!(get("new"), None);
    }
}
