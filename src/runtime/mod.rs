//! The daemon: builds the pipeline from a configuration, runs it, and shuts it down in order.
//!
//! Threading model:
//! - one named thread per source (`source-{name}`): capture or replay, pushing into the source's ring;
//! - one named thread per source (`window-{name}`): drains the ring, cuts windows, preprocesses them, queues them
//!   for the encoder of the source's modality;
//! - one named thread per modality (`encode-{modality}`): batches windows, runs the tower, scores, queues label
//!   messages;
//! - tokio tasks: the MQTT connection, stats, signal handling and supervision.
//!
//! Every edge is bounded with a written overflow policy: source → window stage, a ring that drops its oldest
//! sample (`crate::ring`); window stage → encoder, a queue that drops its oldest window
//! ([`worker::WindowQueue`]); encoder → MQTT, an outbox that drops its oldest message
//! (`crate::publish::Outbox`). Capture therefore never waits for inference or the network.
//!
//! Shutdown (SIGTERM/SIGINT, `--duration`, or every source finished): sources stop; window threads drain their
//! rings; encoders drain their queues; the MQTT task flushes the outbox, publishes `offline` and disconnects. All
//! of that must finish within the shutdown deadline; any component still running then is named in the log.

pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::clock;
use crate::config::{LoadedConfig, PromptConfig, SourceConfig, check_prompt};
use crate::control::payloads::{
    EncoderStatsEntry, EventStatsEntry, MqttStatsEntry, PerClass, STATS_SCHEMA, SourceStatsEntry, StatsMessage,
};
use crate::control::{ControlStats, Controller, ControllerSetup, SensorInfo, StateFile, TextTower, prompts_hash};
use crate::encode::{Encoder, ModelDir, ModelSource, engine};
use crate::labels::{PromptCache, PromptSet, embed_prompts};
use crate::modality::Modality;
use crate::preprocess::text::Tokenizer;
use crate::publish::mqtt::{self, FirstConnect, MqttSettings, MqttStats};
use crate::publish::{Class, OutMessage, Outbox, OutboxLimits, Topics, parse_broker_url};
use crate::ring::{RingStats, ring};
use crate::sources::replay::ReplaySource;
use crate::sources::serial::SerialImuSource;
use crate::sources::synthetic::SyntheticSource;
use crate::sources::{Source, SourceOutput, SourceStats, StopFlag};
use crate::window::{PrepareContext, prepare, windower};
use worker::{EncoderStats, Window, WindowQueue, WorkerContext, run_worker};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Longest time the shutdown may take before stragglers are named and the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Fault injection: every encoder call takes at least this much longer (overload tests and benchmarks).
    pub encoder_delay: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(10),
            duration: None,
            encoder_delay: None,
        }
    }
}

/// An encoder slowed down on purpose (see [`RunOptions::encoder_delay`]).
struct DelayedEncoder {
    inner: Arc<dyn Encoder>,
    delay: Duration,
}

impl Encoder for DelayedEncoder {
    fn info(&self) -> &crate::encode::EncoderInfo {
        self.inner.info()
    }

    fn encode(&self, batch: &crate::tensor::Tensor) -> Result<crate::tensor::Tensor, crate::encode::EncodeError> {
        std::thread::sleep(self.delay);
        self.inner.encode(batch)
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// Counters of one source.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Samples produced and read errors.
    pub source: Arc<SourceStats>,
    /// Ring pushes, pops and drops.
    pub ring: Arc<RingStats>,
    /// Windows cut and queued.
    pub windows_total: AtomicU64,
    /// Windows whose preprocessing failed.
    pub window_errors_total: AtomicU64,
}

/// Everything the daemon counts; shared with stats and tests.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per source.
    pub sources: BTreeMap<String, Arc<SourceCounters>>,
    /// Per modality.
    pub encoders: BTreeMap<Modality, Arc<EncoderStats>>,
    /// The MQTT connection.
    pub mqtt: Arc<MqttStats>,
    /// The outbox.
    pub outbox: Option<Arc<Outbox>>,
    /// The controller (events, prompts).
    pub control: Arc<ControlStats>,
}

impl Metrics {
    /// A snapshot as the stats payload.
    pub fn snapshot(&self, device: &str, uptime: Duration) -> StatsMessage {
        StatsMessage {
            schema: STATS_SCHEMA,
            device: device.to_owned(),
            ts: clock::rfc3339(std::time::SystemTime::now()),
            uptime_s: uptime.as_secs_f64(),
            sources: self
                .sources
                .iter()
                .map(|(name, c)| (name.clone(), source_entry(c)))
                .collect(),
            encoders: self
                .encoders
                .iter()
                .map(|(m, s)| (m.to_string(), encoder_entry(s)))
                .collect(),
            mqtt: self.mqtt_entry(),
            events: control_entry(&self.control),
        }
    }

    fn mqtt_entry(&self) -> MqttStatsEntry {
        let m = &self.mqtt;
        let outbox = |f: &dyn Fn(&Outbox) -> u64| self.outbox.as_deref().map_or(0, f);
        let per_class = |f: &dyn Fn(&crate::publish::ClassCounters) -> u64| {
            PerClass::from_fn(|c| outbox(&|o| f(&o.classes[c as usize])))
        };
        MqttStatsEntry {
            connected: m.connected.load(Ordering::Relaxed),
            connects_total: read(&m.connects_total),
            errors_total: read(&m.errors_total),
            queued: outbox(&|o| o.len() as u64),
            queued_by_class: PerClass::from_fn(|c| outbox(&|o| o.lens()[c as usize] as u64)),
            dropped_total: outbox(&Outbox::dropped_total),
            dropped: per_class(&|c| read(&c.dropped)),
            sent_total: outbox(&Outbox::sent_total),
            requeued_total: outbox(&|o| read(&o.requeued)),
            superseded_total: outbox(&|o| read(&o.classes[Class::State as usize].superseded)),
            acked_total: read(&m.acked_total),
            republished_total: read(&m.republished_total),
            last_republish_ms: read(&m.last_republish_ms),
            commands_total: read(&m.commands_total),
            commands_dropped_total: read(&m.commands_dropped_total),
            subscriptions_denied: m.subscriptions_denied.lock().map(|d| d.clone()).unwrap_or_default(),
        }
    }
}

fn read(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn source_entry(c: &SourceCounters) -> SourceStatsEntry {
    SourceStatsEntry {
        online: !c.source.offline.load(Ordering::Relaxed),
        samples_total: read(&c.source.samples_total),
        read_errors_total: read(&c.source.errors_total),
        garbage_bytes_total: read(&c.source.garbage_bytes_total),
        lost_total: read(&c.source.lost_total),
        rate_hz: (c.source.rate_hz() * 1000.0).round() / 1000.0,
        gaps_total: read(&c.source.gaps_total),
        max_gap_ms: read(&c.source.max_gap_ms),
        overrun_samples_total: read(&c.source.overrun_samples_total),
        ring_dropped_total: read(&c.ring.dropped),
        windows_total: read(&c.windows_total),
        window_errors_total: read(&c.window_errors_total),
    }
}

fn encoder_entry(s: &EncoderStats) -> EncoderStatsEntry {
    let batches = read(&s.batches_total);
    EncoderStatsEntry {
        backend: s.backend.get().copied().unwrap_or("none"),
        windows_queued_total: read(&s.windows_queued_total),
        windows_dropped_total: read(&s.windows_dropped_total),
        windows_encoded_total: read(&s.windows_encoded_total),
        windows_failed_total: read(&s.windows_failed_total),
        batches_total: batches,
        infer_ms_avg: if batches == 0 {
            0.0
        } else {
            read(&s.infer_us_total) as f64 / batches as f64 / 1e3
        },
    }
}

fn control_entry(c: &ControlStats) -> EventStatsEntry {
    EventStatsEntry {
        started_total: read(&c.events_started_total),
        ended_total: read(&c.events_ended_total),
        active: read(&c.events_active),
        scored_dropped_total: read(&c.scored_dropped_total),
        embeddings_total: read(&c.embeddings_total),
        prompt_updates_accepted_total: read(&c.prompt_updates_accepted_total),
        prompt_updates_rejected_total: read(&c.prompt_updates_rejected_total),
        payload_errors_total: read(&c.payload_errors_total),
        config_rev: read(&c.config_rev),
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct Summary {
    /// Final counters.
    pub metrics: Arc<Metrics>,
    /// Components still running at the shutdown deadline.
    pub stragglers: Vec<String>,
}

/// A component whose end the supervisor waits for.
struct Tracked {
    name: String,
    done: Arc<AtomicBool>,
}

fn spawn_named(name: String, done: Arc<AtomicBool>, f: impl FnOnce() + Send + 'static) -> anyhow::Result<Tracked> {
    let flag = Arc::clone(&done);
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            f();
            flag.store(true, Ordering::SeqCst);
        })
        .with_context(|| format!("cannot start thread {name}"))?;
    Ok(Tracked { name, done })
}

/// Waits until every component is done or the deadline passes; returns the names still running.
async fn wait_all(components: &[Tracked], deadline: Instant) -> Vec<String> {
    loop {
        let running: Vec<String> = components
            .iter()
            .filter(|c| !c.done.load(Ordering::SeqCst))
            .map(|c| c.name.clone())
            .collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolves the MQTT settings (reads the password from its environment variable or file).
pub fn mqtt_settings(loaded: &LoadedConfig) -> anyhow::Result<MqttSettings> {
    let c = &loaded.config;
    let broker = parse_broker_url(&c.mqtt.url).map_err(|e| anyhow::anyhow!("mqtt.url: {e}"))?;
    let password = match (&c.mqtt.password_env, &c.mqtt.password_file) {
        (Some(var), _) => Some(std::env::var(var).with_context(|| format!("mqtt.password_env: {var} is not set"))?),
        (None, Some(file)) => {
            let path = loaded.resolve(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("mqtt.password_file: cannot read {}", path.display()))?;
            Some(text.lines().next().unwrap_or_default().to_owned())
        }
        (None, None) => None,
    };
    let tls = if broker.tls {
        let client = match (&c.mqtt.tls.client_cert, &c.mqtt.tls.client_key) {
            (Some(cert), Some(key)) => Some((loaded.resolve(cert), loaded.resolve(key))),
            _ => None,
        };
        let ca = c.mqtt.tls.ca_file.as_ref().map(|p| loaded.resolve(p));
        Some(
            mqtt::tls_settings(ca.as_deref(), client.as_ref().map(|(a, b)| (a.as_path(), b.as_path())))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
    } else {
        None
    };
    let topics = Topics::new(&c.mqtt.prefix, &c.device.id);
    let mut subscriptions = topics.command_filters();
    if c.mqtt.homeassistant.enabled {
        subscriptions.push(format!("{}/status", c.mqtt.homeassistant.discovery_prefix));
    }
    Ok(MqttSettings {
        broker,
        client_id: c
            .mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", c.mqtt.prefix, c.device.id)),
        keep_alive: Duration::from_secs(c.mqtt.keep_alive_secs),
        username: c.mqtt.username.clone(),
        password,
        tls,
        topics,
        subscriptions,
    })
}

/// The prompts to start with: those accepted over MQTT in an earlier run (from the state file) while the
/// configuration file's prompts are unchanged and they still fit the configured sources; else the file's.
fn chosen_prompts(loaded: &LoadedConfig, state: &StateFile, config_hash: &str) -> (Vec<PromptConfig>, &'static str) {
    let cfg = &loaded.config;
    let Some(saved) = &state.state.prompts else {
        return (cfg.prompts.clone(), "config");
    };
    if state.state.prompts_base != config_hash {
        tracing::info!(
            "The configuration file's prompts changed since prompts were updated over MQTT; using the file's."
        );
        return (cfg.prompts.clone(), "config");
    }
    let sources: Vec<(String, Modality)> = cfg
        .sources
        .iter()
        .map(|s| (s.name().to_owned(), s.modality()))
        .collect();
    let names: Vec<String> = sources.iter().map(|(n, _)| n.clone()).collect();
    let problems: Vec<String> = saved
        .iter()
        .flat_map(|p| {
            check_prompt(p, &cfg.events, &sources, &names)
                .into_iter()
                .map(move |(k, m)| format!("{}.{k}: {m}", p.id))
        })
        .collect();
    if problems.is_empty() {
        (saved.clone(), "state_file")
    } else {
        tracing::warn!(problems = ?problems, "The prompts saved from MQTT updates no longer fit the configuration; using the file's.");
        (cfg.prompts.clone(), "config")
    }
}

/// Ring capacity for a source, in samples, from `ring_secs` and a nominal rate; frame rings are also bounded by
/// `ring_max_bytes` assuming frames up to 1920×1080 RGB.
fn ring_capacity(s: &SourceConfig, ring_secs: f64, ring_max_bytes: u64) -> usize {
    let rate = match s {
        SourceConfig::Replay(r) => r.rate_hz,
        SourceConfig::Synthetic(c) => c.rate_hz,
        SourceConfig::Serial(c) => Some(c.rate_hz),
        SourceConfig::V4l2(c) => c.rate_hz,
        SourceConfig::Gstreamer(c) => c.rate_hz,
        SourceConfig::Microphone(_) => None,
    };
    let per_sec = match s.modality() {
        // Audio arrives in blocks of at least 5 ms.
        Modality::Audio => 200.0,
        Modality::Imu => rate.unwrap_or(1000.0).max(100.0),
        Modality::Text => rate.unwrap_or(1.0).max(10.0),
        Modality::Vision | Modality::Depth | Modality::Thermal => rate.unwrap_or(30.0).max(30.0),
    };
    let by_time = (ring_secs * per_sec).ceil() as usize;
    match s.modality() {
        Modality::Vision | Modality::Depth | Modality::Thermal => {
            by_time.min((ring_max_bytes / (1920 * 1080 * 3)).max(2) as usize)
        }
        _ => by_time,
    }
    .max(2)
}

/// The sources behind cargo features; a build without the feature refuses the source (the configuration check
/// reports it first).
fn hardware_source(sc: &SourceConfig) -> anyhow::Result<Box<dyn Source>> {
    #[allow(dead_code, reason = "used only by builds without some of the features")]
    fn missing(sc: &SourceConfig, feature: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "source {:?}: this build has no {feature} support (built without the `{feature}` feature)",
            sc.name()
        )
    }
    match sc {
        #[cfg(feature = "v4l2")]
        SourceConfig::V4l2(c) => Ok(Box::new(crate::sources::v4l2::V4l2Source::new(c.clone()))),
        #[cfg(feature = "gstreamer")]
        SourceConfig::Gstreamer(c) => Ok(Box::new(crate::sources::gstreamer::GstreamerSource::new(c.clone())?)),
        #[cfg(feature = "microphone")]
        SourceConfig::Microphone(c) => Ok(Box::new(crate::sources::microphone::MicrophoneSource::new(c.clone()))),
        #[cfg(not(feature = "v4l2"))]
        SourceConfig::V4l2(_) => Err(missing(sc, "v4l2")),
        #[cfg(not(feature = "gstreamer"))]
        SourceConfig::Gstreamer(_) => Err(missing(sc, "gstreamer")),
        #[cfg(not(feature = "microphone"))]
        SourceConfig::Microphone(_) => Err(missing(sc, "microphone")),
        SourceConfig::Replay(_) | SourceConfig::Synthetic(_) | SourceConfig::Serial(_) => {
            Err(anyhow::anyhow!("source {:?} is not a hardware source", sc.name()))
        }
    }
}

/// Runs the daemon until `stop_requested` completes (a signal), `options.duration` passes, or every source ends.
pub async fn run(
    loaded: &LoadedConfig,
    options: &RunOptions,
    stop_requested: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let cfg = &loaded.config;
    let started = Instant::now();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        device = %cfg.device.id,
        config = %loaded.file.display(),
        sources = cfg.sources.len(),
        prompts = cfg.prompts.len(),
        "Starting sensebind."
    );
    if cfg.sources.is_empty() {
        bail!("{}: no sources configured", loaded.file.display());
    }
    // Runtime state: the session counter, prompts accepted over MQTT, switches, events left open.
    let state_dir = loaded.resolve(&cfg.runtime.state_dir);
    let state_dir = match std::fs::create_dir_all(&state_dir) {
        Ok(()) => Some(state_dir),
        Err(e) => {
            tracing::warn!(path = %state_dir.display(), error = %e, "Cannot create the state directory; prompt embeddings are not cached and runtime changes do not survive a restart.");
            None
        }
    };
    let state = StateFile::open(state_dir.as_deref());
    let config_prompts_hash = prompts_hash(&cfg.prompts);
    let (prompt_configs, prompts_origin) = chosen_prompts(loaded, &state, &config_prompts_hash);

    // Models.
    let model_dir = ModelDir::open(&loaded.resolve(&cfg.models.dir))?;
    let modalities: BTreeSet<Modality> = cfg.sources.iter().map(SourceConfig::modality).collect();
    let need_text = !prompt_configs.is_empty() || modalities.contains(&Modality::Text);
    let tokenizer = if need_text {
        model_dir.verify_bpe_checksum()?;
        Some(Arc::new(Tokenizer::from_file(
            &model_dir.path(&model_dir.manifest().bpe),
        )?))
    } else {
        None
    };
    let mut to_load = modalities.clone();
    if need_text {
        to_load.insert(Modality::Text);
    }
    let mut encoders: BTreeMap<Modality, Arc<dyn Encoder>> = BTreeMap::new();
    let mut model_info = BTreeMap::new();
    for m in to_load {
        let (dir, opts) = (model_dir.clone(), loaded.engine_options(m));
        let threads = opts.threads;
        let enc = tokio::task::spawn_blocking(move || engine::load(ModelSource::Dir(&dir), m, &opts))
            .await
            .context("model loading was interrupted")??;
        tracing::info!(modality = %m, model = %enc.info().model_id, backend = enc.backend(), threads, "Loaded encoder.");
        model_info.insert(
            m.to_string(),
            serde_json::json!({ "model": enc.info().model_id, "backend": enc.backend(), "dim": enc.info().output_dim }),
        );
        let enc: Arc<dyn Encoder> = match options.encoder_delay {
            Some(delay) => Arc::new(DelayedEncoder { inner: enc, delay }),
            None => enc,
        };
        encoders.insert(m, enc);
    }
    // Prompts.
    let mut cache = PromptCache::open(state_dir.as_deref());
    let text_tower = match (encoders.get(&Modality::Text), &tokenizer) {
        (Some(text), Some(tok)) => Some(TextTower {
            encoder: Arc::clone(text),
            sha256: model_dir.tower(Modality::Text)?.sha256.clone(),
            tokenizer: Arc::clone(tok),
        }),
        _ => None,
    };
    let prompt_set = match &text_tower {
        Some(t) if !prompt_configs.is_empty() => {
            let set = embed_prompts(&prompt_configs, t.encoder.as_ref(), &t.sha256, &t.tokenizer, &mut cache)?;
            if let Err(e) = cache.save() {
                tracing::warn!(error = %e, "Cannot save the prompt cache.");
            }
            tracing::info!(
                prompts = set.prompts().len(),
                cached = cache.len(),
                origin = prompts_origin,
                "Prompts embedded."
            );
            set
        }
        _ => PromptSet::default(),
    };
    let prompts = Arc::new(RwLock::new(Arc::new(prompt_set)));

    // Publishing.
    let topics = Topics::new(&cfg.mqtt.prefix, &cfg.device.id);
    let outbox = Arc::new(Outbox::new(OutboxLimits {
        state: 1000,
        events: cfg.mqtt.queue_events,
        telemetry: cfg.mqtt.queue_messages,
        embeddings: cfg.mqtt.queue_embeddings,
    }));
    let mqtt_stats = Arc::new(MqttStats::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Commands from the broker to the controller; when full a command is dropped and counted.
    let (command_tx, command_rx) = tokio::sync::mpsc::channel(64);
    let publisher = if cfg.mqtt.enabled {
        let settings = mqtt_settings(loaded)?;
        tracing::info!(broker = %cfg.mqtt.url, client_id = %settings.client_id, "Publishing to MQTT.");
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(mqtt::run(
            settings,
            mqtt::Connection {
                outbox: Arc::clone(&outbox),
                stats: Arc::clone(&mqtt_stats),
                commands: command_tx,
                first: Some(first_tx),
            },
            stop_rx,
            options.shutdown_timeout,
        ));
        // A broker that rejects us is a configuration error; one that cannot be reached yet is not.
        match tokio::time::timeout(Duration::from_secs(15), first_rx).await {
            Ok(Ok(FirstConnect::Rejected(why))) => {
                task.abort();
                bail!("MQTT broker {}: {why}", cfg.mqtt.url);
            }
            Ok(Ok(FirstConnect::Unreachable(why))) => {
                tracing::warn!(broker = %cfg.mqtt.url, error = %why, "The MQTT broker is not reachable yet; running and retrying.");
            }
            Ok(Ok(FirstConnect::Connected)) => {}
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(broker = %cfg.mqtt.url, "No answer from the MQTT broker yet; running and retrying.");
            }
        }
        task
    } else {
        drop(command_tx);
        let ob = Arc::clone(&outbox);
        tokio::spawn(async move {
            loop {
                while let Some(msg) = ob.pop() {
                    ob.mark_sent(msg.class);
                    tracing::info!(topic = %msg.topic, payload = %String::from_utf8_lossy(&msg.payload), "Message (MQTT disabled).");
                }
                if ob.is_closed() {
                    break;
                }
                ob.ready().await;
            }
        })
    };
    let control_stats = Arc::new(ControlStats::default());
    // Scored windows from the encoder workers to the controller; overflow: the newest is dropped and counted.
    let (scored_tx, scored_rx) = tokio::sync::mpsc::channel(crate::control::SCORED_QUEUE);

    // Encoder workers.
    let mut metrics = Metrics {
        mqtt: Arc::clone(&mqtt_stats),
        outbox: Some(Arc::clone(&outbox)),
        control: Arc::clone(&control_stats),
        ..Metrics::default()
    };
    let mut queues: BTreeMap<Modality, Arc<WindowQueue>> = BTreeMap::new();
    let mut workers = Vec::new();
    for &m in &modalities {
        let stats = Arc::new(EncoderStats::default());
        metrics.encoders.insert(m, Arc::clone(&stats));
        let queue = Arc::new(WindowQueue::new(cfg.models.queue_windows, Arc::clone(&stats)));
        queues.insert(m, Arc::clone(&queue));
        let encoder = encoders
            .get(&m)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no {m} encoder was loaded"))?;
        stats.backend.get_or_init(|| encoder.backend());
        let cx = WorkerContext {
            encoder,
            prompts: Arc::clone(&prompts),
            scored: scored_tx.clone(),
            control: Arc::clone(&control_stats),
            max_batch: cfg.models.max_batch,
            max_wait: Duration::from_millis(cfg.models.max_wait_ms),
            stats,
        };
        workers.push(spawn_named(
            format!("encode-{m}"),
            Arc::new(AtomicBool::new(false)),
            move || run_worker(&queue, &cx),
        )?);
    }

    // Sources and window stages.
    let stop = StopFlag::new();
    let mut source_threads = Vec::new();
    let mut window_threads = Vec::new();
    let mut sensors = Vec::new();
    let prepare_cx = PrepareContext {
        preprocess: cfg.preprocess.clone(),
        tokenizer: tokenizer.clone(),
    };
    for sc in &cfg.sources {
        let name = sc.name().to_owned();
        let modality = sc.modality();
        let source: Box<dyn Source> = match sc {
            SourceConfig::Replay(r) => {
                let paths: Vec<_> = r.paths.iter().map(|p| loaded.resolve(p)).collect();
                Box::new(ReplaySource::new(
                    &name,
                    modality,
                    &paths,
                    r.loop_playback,
                    r.rate_hz,
                    cfg.preprocess.clone(),
                )?)
            }
            SourceConfig::Synthetic(s) => Box::new(SyntheticSource::new(s.clone())),
            SourceConfig::Serial(s) => Box::new(SerialImuSource::new(s.clone())),
            other => hardware_source(other)?,
        };
        let (producer, consumer) = ring(ring_capacity(sc, cfg.runtime.ring_secs, cfg.runtime.ring_max_bytes));
        let counters = Arc::new(SourceCounters {
            source: Arc::new(SourceStats::default()),
            ring: Arc::clone(producer.stats()),
            ..SourceCounters::default()
        });
        metrics.sources.insert(name.clone(), Arc::clone(&counters));
        let enabled = Arc::new(AtomicBool::new(true));
        let spec = sc.window();
        sensors.push(SensorInfo {
            name: name.clone(),
            modality,
            window_secs: spec.window_secs,
            hop_secs: spec.hop_secs,
            stats: Arc::clone(&counters.source),
            enabled: Arc::clone(&enabled),
        });
        let source_done = Arc::new(AtomicBool::new(false));
        let queue = queues
            .get(&modality)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no queue for {modality}"))?;
        // The window stage.
        let (wname, pcx, wcounters, sdone, wenabled) = (
            name.clone(),
            prepare_cx.clone(),
            Arc::clone(&counters),
            Arc::clone(&source_done),
            Arc::clone(&enabled),
        );
        let window_done = Arc::new(AtomicBool::new(false));
        let wflag = Arc::clone(&window_done);
        let window_thread = std::thread::Builder::new()
            .name(format!("window-{name}"))
            .spawn(move || {
                let source_name: Arc<str> = Arc::from(wname.as_str());
                let mut cutter = windower(modality, spec);
                let (mut samples, mut raws) = (Vec::new(), Vec::new());
                let mut seq = 0u64;
                let mut logged_error = false;
                loop {
                    let finished = sdone.load(Ordering::SeqCst);
                    let n = consumer.drain_into(&mut samples);
                    for s in samples.drain(..) {
                        cutter.push(s, &mut raws);
                    }
                    if !wenabled.load(Ordering::Relaxed) {
                        // Switched off over MQTT: windows are cut (the ring keeps draining) but not embedded.
                        raws.clear();
                    }
                    for raw in raws.drain(..) {
                        match prepare(&raw, &pcx) {
                            Ok(input) => {
                                queue.push(Window {
                                    source: Arc::clone(&source_name),
                                    modality,
                                    seq,
                                    t0: raw.t0,
                                    t1: raw.t1,
                                    input,
                                });
                                seq += 1;
                                wcounters.windows_total.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                wcounters.window_errors_total.fetch_add(1, Ordering::Relaxed);
                                if !logged_error {
                                    tracing::warn!(component_id = %source_name, error = %e, "Cannot preprocess a window; skipping (further errors are counted).");
                                    logged_error = true;
                                }
                            }
                        }
                    }
                    if finished && consumer.is_empty() {
                        break;
                    }
                    if n == 0 {
                        std::thread::park_timeout(Duration::from_millis(50));
                    }
                }
                wflag.store(true, Ordering::SeqCst);
            })
            .with_context(|| format!("cannot start thread window-{name}"))?;
        let wake = window_thread.thread().clone();
        window_threads.push(Tracked {
            name: format!("window-{name}"),
            done: window_done,
        });
        // The source.
        let mut out = SourceOutput::new(producer, Some(wake.clone()), Arc::clone(&counters.source));
        let (sstop, sname) = (stop.clone(), name.clone());
        let mut source = source;
        let done_flag = Arc::clone(&source_done);
        source_threads.push(spawn_named(
            format!("source-{name}"),
            Arc::new(AtomicBool::new(false)),
            move || {
                if let Err(e) = source.run(&mut out, &sstop) {
                    tracing::error!(component_id = %sname, error = %e, "Source stopped.");
                } else {
                    tracing::info!(component_id = %sname, "Source finished.");
                }
                done_flag.store(true, Ordering::SeqCst);
                wake.unpark();
            },
        )?);
    }
    let metrics = Arc::new(metrics);

    // The controller: events, states, commands.
    let controller = Controller::new(ControllerSetup {
        device: cfg.device.id.clone(),
        device_name: cfg.device.name.clone().unwrap_or_else(|| cfg.device.id.clone()),
        topics: topics.clone(),
        mqtt: cfg.mqtt.clone(),
        events: cfg.events.clone(),
        top_k: cfg.runtime.top_k,
        sensors,
        models: model_info,
        prompts: Arc::clone(&prompts),
        text: text_tower,
        cache,
        state,
        config_prompts_hash,
        prompts_origin,
        outbox: Arc::clone(&outbox),
        stats: Arc::clone(&control_stats),
    });
    drop(scored_tx);
    let control_done = Arc::new(AtomicBool::new(false));
    let control_flag = Arc::clone(&control_done);
    let control_task = tokio::spawn(async move {
        controller.run(scored_rx, command_rx).await;
        control_flag.store(true, Ordering::SeqCst);
    });

    // Stats.
    let stats_task = if cfg.runtime.stats_interval_secs > 0.0 {
        let (m, ob, t, device) = (
            Arc::clone(&metrics),
            Arc::clone(&outbox),
            topics.stats(),
            cfg.device.id.clone(),
        );
        let every = Duration::from_secs_f64(cfg.runtime.stats_interval_secs);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let snap = m.snapshot(&device, started.elapsed());
                if let Ok(payload) = serde_json::to_vec(&snap) {
                    ob.push(OutMessage::telemetry(t.clone(), payload, 0));
                }
            }
        }))
    } else {
        None
    };
    tracing::info!(
        sources = source_threads.len(),
        encoders = workers.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "Pipeline running."
    );

    // Wait for the reason to stop.
    let all_sources_done = {
        let flags: Vec<Arc<AtomicBool>> = source_threads.iter().map(|t| Arc::clone(&t.done)).collect();
        async move {
            loop {
                if flags.iter().all(|f| f.load(Ordering::SeqCst)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let duration = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = stop_requested => tracing::info!("Shutdown requested."),
        () = duration => tracing::info!("Run duration reached; shutting down."),
        () = all_sources_done => tracing::info!("Every source has finished; shutting down."),
    }

    // Shut down in order, within one deadline.
    let deadline = Instant::now() + options.shutdown_timeout;
    stop.raise();
    let mut stragglers = wait_all(&source_threads, deadline).await;
    stragglers.extend(wait_all(&window_threads, deadline).await);
    for q in queues.values() {
        q.close();
    }
    stragglers.extend(wait_all(&workers, deadline).await);
    // The workers are gone, so the scored queue closes: the controller ends every open event and stops.
    let controller_tracked = [Tracked {
        name: "controller".into(),
        done: control_done,
    }];
    let late = wait_all(&controller_tracked, deadline).await;
    if !late.is_empty() {
        control_task.abort();
        stragglers.extend(late);
    }
    if let Some(t) = stats_task {
        t.abort();
    }
    // Final stats, then close the outbox: the MQTT task flushes it, says offline and disconnects.
    if let Ok(payload) = serde_json::to_vec(&metrics.snapshot(&cfg.device.id, started.elapsed())) {
        outbox.push(OutMessage::telemetry(topics.stats(), payload, 0));
    }
    outbox.close();
    if stop_tx.send(true).is_err() {
        tracing::debug!("The MQTT task had already ended.");
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left + Duration::from_millis(200), publisher).await {
        Ok(_) => {}
        Err(_) => stragglers.push("mqtt".into()),
    }
    if stragglers.is_empty() {
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "Stopped cleanly.");
    } else {
        tracing::error!(components = ?stragglers, "Still running at the shutdown deadline; exiting anyway.");
    }
    Ok(Summary { metrics, stragglers })
}
