//! The stages the supervisor starts, each a function: encoders loaded, prompts embedded, the publisher, the
//! encoder workers, the sources with their window stages, the controller and the stats task. Blocking work
//! (model loading, the text tower) runs on the blocking pool, never on the async workers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::RunOptions;
use super::metrics::{Metrics, SourceCounters};
use super::plan::Plan;
use super::tasks::{Tracked, spawn_named, wait_all};
use super::worker::{EncoderStats, Window, WindowQueue, WorkerContext, run_worker};
use crate::config::LoadedConfig;
use crate::control::payloads::ModelInfo;
use crate::control::{ControlStats, SensorInfo, TextTower};
use crate::encode::{Encoder, ModelDir, ModelSource, engine};
use crate::labels::exemplar::ExemplarTowers;
use crate::labels::{PromptCache, PromptConfig, PromptSet, embed_with_background};
use crate::modality::Modality;
use crate::preprocess::text::Tokenizer;
use crate::publish::mqtt::{self, FirstConnect, MqttSettings, MqttStats};
use crate::publish::{OutMessage, Outbox};
use crate::ring::{RingConsumer, ring};
use crate::sources::build::BuildContext;
use crate::sources::{SourceOutput, SourceStats, StopFlag};
use crate::window::gate::Gate;
use crate::window::{PrepareContext, prepare, windower};

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

/// The loaded towers.
pub struct Encoders {
    /// One per tower, by modality.
    pub by_modality: BTreeMap<Modality, Arc<dyn Encoder>>,
    /// Model id, backend and dimension per tower (for `info`).
    pub info: BTreeMap<String, ModelInfo>,
    /// The prompt embedder, when prompts or text sources need it.
    pub text: Option<TextTower>,
    /// CLIP BPE, when needed.
    pub tokenizer: Option<Arc<Tokenizer>>,
}

/// Loads every tower the plan needs, on the blocking pool.
pub async fn load_encoders(loaded: &LoadedConfig, plan: &Plan, options: &RunOptions) -> anyhow::Result<Encoders> {
    let loaded = loaded.clone();
    let (towers, need_text, delay) = (plan.towers(), plan.need_text, options.encoder_delay);
    tokio::task::spawn_blocking(move || load_encoders_blocking(&loaded, &towers, need_text, delay))
        .await
        .context("model loading was interrupted")?
}

fn load_encoders_blocking(
    loaded: &LoadedConfig,
    towers: &std::collections::BTreeSet<Modality>,
    need_text: bool,
    delay: Option<Duration>,
) -> anyhow::Result<Encoders> {
    let model_dir = ModelDir::open(&loaded.resolve(&loaded.config.models.dir))?;
    let tokenizer = if need_text {
        model_dir.verify_bpe_checksum()?;
        Some(Arc::new(Tokenizer::from_file(
            &model_dir.path(&model_dir.manifest().bpe),
        )?))
    } else {
        None
    };
    let mut by_modality: BTreeMap<Modality, Arc<dyn Encoder>> = BTreeMap::new();
    let mut info = BTreeMap::new();
    for &m in towers {
        let opts = loaded.engine_options(m);
        let enc = engine::load(ModelSource::Dir(&model_dir), m, &opts)?;
        let precision = model_dir.tower(m).map_or("f32", |t| t.precision.as_str());
        tracing::info!(modality = %m, model = %enc.info().model_id, backend = enc.backend(), precision, threads = opts.threads, "Loaded encoder.");
        info.insert(
            m.to_string(),
            ModelInfo {
                model: enc.info().model_id.clone(),
                backend: enc.backend().to_owned(),
                dim: enc.info().output_dim,
            },
        );
        let enc: Arc<dyn Encoder> = match delay {
            Some(delay) => Arc::new(DelayedEncoder { inner: enc, delay }),
            None => enc,
        };
        by_modality.insert(m, enc);
    }
    let text = match (by_modality.get(&Modality::Text), &tokenizer) {
        (Some(text), Some(tok)) => {
            let cfg = &loaded.config;
            let mut exemplar_towers = BTreeMap::new();
            for (&m, enc) in &by_modality {
                exemplar_towers.insert(m, (Arc::clone(enc), model_dir.tower(m)?.sha256.clone()));
            }
            let exemplars = ExemplarTowers {
                towers: exemplar_towers,
                preprocess: cfg.preprocess.clone(),
                tokenizer: Some(Arc::clone(tok)),
                base_dir: loaded.base.clone(),
                text_scale: model_dir.tower(Modality::Text)?.scale,
                max_batch: cfg.models.max_batch.max(1),
            };
            let state_dir = loaded.resolve(&cfg.runtime.state_dir);
            Some(TextTower {
                templates: cfg.labels.templates.resolve(),
                modalities: cfg.sources.iter().map(|s| s.modality()).collect(),
                exemplars: Some(Arc::new(exemplars)),
                exemplar_store: Some(state_dir.join("exemplars")),
                ..TextTower::new(
                    Arc::clone(text),
                    model_dir.tower(Modality::Text)?.sha256.clone(),
                    Arc::clone(tok),
                )
            })
        }
        _ => None,
    };
    Ok(Encoders {
        by_modality,
        info,
        text,
        tokenizer,
    })
}

/// Embeds the starting prompts with the text tower on the blocking pool, using and filling the cache (which is
/// handed back for the controller's later updates).
pub async fn embed_start_prompts(
    text: Option<TextTower>,
    (prompts, background): (Vec<PromptConfig>, Vec<PromptConfig>),
    mut cache: PromptCache,
    origin: &'static str,
) -> anyhow::Result<(PromptSet, PromptCache)> {
    let Some(t) = text.filter(|_| !prompts.is_empty()) else {
        return Ok((PromptSet::default(), cache));
    };
    tokio::task::spawn_blocking(move || {
        let set = embed_with_background(&prompts, &background, &t.embedder(), &mut cache)?;
        if let Err(e) = cache.save() {
            tracing::warn!(error = %e, "Cannot save the prompt cache.");
        }
        tracing::info!(
            prompts = set.prompts().len(),
            shipped_background = set.shipped_background().len(),
            cached = cache.len(),
            origin,
            "Prompts embedded."
        );
        Ok((set, cache))
    })
    .await
    .context("prompt embedding was interrupted")?
}

/// The MQTT task (or, with MQTT off, a task that logs what would be published).
pub struct Publisher {
    /// The task; it ends after flushing the closed outbox.
    pub task: tokio::task::JoinHandle<()>,
    /// Tells the MQTT task to flush and disconnect.
    pub stop: tokio::sync::watch::Sender<bool>,
    /// The outcome of the first connection attempt (MQTT on only).
    pub first: Option<tokio::sync::oneshot::Receiver<FirstConnect>>,
}

/// Starts the publisher. Commands from the broker go to `commands` (bounded; when full a command is dropped
/// and counted by the MQTT task).
pub fn start_publisher(
    settings: Option<MqttSettings>,
    outbox: &Arc<Outbox>,
    stats: &Arc<MqttStats>,
    commands: tokio::sync::mpsc::Sender<mqtt::Incoming>,
    shutdown_timeout: Duration,
) -> Publisher {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let Some(settings) = settings else {
        drop(commands);
        let ob = Arc::clone(outbox);
        let task = tokio::spawn(async move {
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
        });
        return Publisher {
            task,
            stop,
            first: None,
        };
    };
    tracing::info!(client_id = %settings.client_id, "Publishing to MQTT.");
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(mqtt::run(
        settings,
        mqtt::Connection {
            outbox: Arc::clone(outbox),
            stats: Arc::clone(stats),
            commands,
            first: Some(first_tx),
        },
        stop_rx,
        shutdown_timeout,
    ));
    Publisher {
        task,
        stop,
        first: Some(first_rx),
    }
}

/// Waits (at most 15 s) for the first connection attempt: a broker that rejects us is a configuration error;
/// one that cannot be reached yet is not (the task keeps retrying).
pub async fn first_connect(
    first: Option<tokio::sync::oneshot::Receiver<FirstConnect>>,
    url: &str,
) -> anyhow::Result<()> {
    let Some(first) = first else { return Ok(()) };
    match tokio::time::timeout(Duration::from_secs(15), first).await {
        Ok(Ok(FirstConnect::Rejected(why))) => anyhow::bail!("MQTT broker {url}: {why}"),
        Ok(Ok(FirstConnect::Unreachable(why))) => {
            tracing::warn!(broker = %url, error = %why, "The MQTT broker is not reachable yet; running and retrying.");
        }
        Ok(Ok(FirstConnect::Connected)) => {}
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(broker = %url, "No answer from the MQTT broker yet; running and retrying.");
        }
    }
    Ok(())
}

/// What the encoder workers share.
pub struct EncoderSetup<'a> {
    /// The towers.
    pub encoders: &'a Encoders,
    /// The active prompts.
    pub prompts: &'a Arc<RwLock<Arc<PromptSet>>>,
    /// Scored windows to the controller.
    pub scored: &'a tokio::sync::mpsc::Sender<crate::control::Scored>,
    /// The controller's counters (scored windows dropped).
    pub control: &'a Arc<ControlStats>,
}

/// The bounded queue in front of each modality's encoder worker.
pub type WindowQueues = BTreeMap<Modality, Arc<WindowQueue>>;

/// Starts one encoder worker per source modality; returns their queues and threads.
pub fn start_encoders(
    loaded: &LoadedConfig,
    plan: &Plan,
    setup: &EncoderSetup<'_>,
    metrics: &mut Metrics,
) -> anyhow::Result<(WindowQueues, Vec<Tracked>)> {
    let models = &loaded.config.models;
    let mut queues = BTreeMap::new();
    let mut workers = Vec::new();
    for &m in &plan.modalities {
        let stats = Arc::new(EncoderStats::default());
        metrics.encoders.insert(m, Arc::clone(&stats));
        // Overflow policy: the oldest window is dropped and counted (worker.rs).
        let queue = Arc::new(WindowQueue::new(models.queue_windows, Arc::clone(&stats)));
        queues.insert(m, Arc::clone(&queue));
        let encoder = setup
            .encoders
            .by_modality
            .get(&m)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no {m} encoder was loaded"))?;
        stats.backend.get_or_init(|| encoder.backend());
        let cx = WorkerContext {
            encoder,
            prompts: Arc::clone(setup.prompts),
            scored: setup.scored.clone(),
            control: Arc::clone(setup.control),
            max_batch: models.max_batch,
            max_wait: Duration::from_millis(models.max_wait_ms),
            stats,
        };
        workers.push(spawn_named(format!("encode-{m}"), move || run_worker(&queue, &cx))?);
    }
    Ok((queues, workers))
}

/// One running source: its capture thread and its window stage.
pub struct SourceHandle {
    /// Raised to stop this source (its window stage then drains the ring and ends).
    pub stop: StopFlag,
    /// `source-{name}`.
    pub source: Tracked,
    /// `window-{name}`.
    pub window: Tracked,
}

/// The running sources and their window stages.
pub struct SourceStages {
    /// By name.
    pub running: BTreeMap<String, SourceHandle>,
    /// The sensors, for the controller and the watchdog (in configuration order).
    pub sensors: Vec<SensorInfo>,
    /// What every window stage preprocesses with.
    prepare: PrepareContext,
    /// Each source thread holds a sender of [`AllSourcesDone`]; this one does not keep the channel open.
    done: tokio::sync::mpsc::WeakSender<()>,
    /// With evidence on: each window stage also feeds its sensor's history ring.
    pub history: Option<super::evidence::HistoryMaker>,
}

/// Closes when every source thread has ended (each holds a sender; nothing is ever sent).
pub type AllSourcesDone = tokio::sync::mpsc::Receiver<()>;

impl SourceStages {
    /// Asks every source to stop.
    pub fn stop_all(&self) {
        for h in self.running.values() {
            h.stop.raise();
        }
    }

    /// Stops every source, then waits for the source threads and then the window stages until `deadline`;
    /// returns the names of those still running.
    pub async fn shutdown(self, deadline: tokio::time::Instant) -> Vec<String> {
        self.stop_all();
        let (sources, windows): (Vec<Tracked>, Vec<Tracked>) =
            self.running.into_values().map(|h| (h.source, h.window)).unzip();
        let mut stragglers = wait_all(sources, deadline).await;
        stragglers.extend(wait_all(windows, deadline).await);
        stragglers
    }

    /// Stops one source and waits for it and its window stage (its last windows are queued); returns the names of
    /// those still running at `deadline`.
    pub async fn stop_one(&mut self, name: &str, deadline: tokio::time::Instant) -> Vec<String> {
        self.sensors.retain(|s| s.name != name);
        let Some(h) = self.running.remove(name) else {
            return Vec::new();
        };
        h.stop.raise();
        let mut stragglers = wait_all(vec![h.source], deadline).await;
        stragglers.extend(wait_all(vec![h.window], deadline).await);
        stragglers
    }

    /// The preprocessing parameters of the window stages started from now on.
    pub fn set_preprocess(&mut self, preprocess: crate::preprocess::PreprocessConfig) {
        self.prepare.preprocess = preprocess;
    }

    /// A sender that keeps [`AllSourcesDone`] open while sources are being replaced (`None`: every source has
    /// ended already).
    pub fn hold_open(&self) -> Option<tokio::sync::mpsc::Sender<()>> {
        self.done.upgrade()
    }
}

/// Starts every source on its thread, each with a window stage that cuts, preprocesses and queues windows.
pub fn start_sources(
    loaded: &LoadedConfig,
    tokenizer: Option<Arc<Tokenizer>>,
    queues: &WindowQueues,
    metrics: &Metrics,
    history: Option<super::evidence::HistoryMaker>,
) -> anyhow::Result<(SourceStages, AllSourcesDone)> {
    let cfg = &loaded.config;
    // Never sent on: closed when every source thread has dropped its sender.
    let (done_tx, all_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut stages = SourceStages {
        running: BTreeMap::new(),
        sensors: Vec::new(),
        prepare: PrepareContext {
            preprocess: cfg.preprocess.clone(),
            tokenizer,
        },
        done: done_tx.downgrade(),
        history,
    };
    for sc in &cfg.sources {
        // A source that cannot start stops those already started (their threads end by themselves).
        if let Err(e) = start_source(loaded, sc, queues, metrics, &mut stages, &done_tx) {
            stages.stop_all();
            return Err(e);
        }
    }
    Ok((stages, all_done))
}

/// Starts one source on its thread with its window stage; adds them to `stages` (`done_tx`: held by the source
/// thread until it ends).
pub fn start_source(
    loaded: &LoadedConfig,
    sc: &crate::sources::config::SourceConfig,
    queues: &WindowQueues,
    metrics: &Metrics,
    stages: &mut SourceStages,
    done_tx: &tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let cfg = &loaded.config;
    let stop = StopFlag::new();
    let (name, modality) = (sc.name().to_owned(), sc.modality());
    // The tower's queue first: a source whose modality has no encoder is refused before anything opens.
    let queue = queues
        .get(&modality)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("sources.{name}: no {modality} encoder is loaded"))?;
    let built = sc.build(&BuildContext {
        base: &loaded.base,
        preprocess: &cfg.preprocess,
        ring_secs: cfg.runtime.ring_secs,
        ring_max_bytes: cfg.runtime.ring_max_bytes,
    })?;
    // Overflow policy of the ring: the oldest sample is dropped and counted (ring.rs).
    let (producer, consumer) = ring(built.ring_capacity);
    let counters = Arc::new(SourceCounters {
        source: Arc::new(SourceStats::default()),
        ring: Arc::clone(producer.stats()),
        ..SourceCounters::default()
    });
    metrics.set_source(&name, Arc::clone(&counters));
    let enabled = Arc::new(AtomicBool::new(true));
    let spec = sc.window();
    stages.sensors.push(SensorInfo {
        name: name.clone(),
        modality,
        window_secs: spec.window_secs,
        hop_secs: spec.hop_secs,
        stats: Arc::clone(&counters.source),
        enabled: Arc::clone(&enabled),
    });
    let source_done = Arc::new(AtomicBool::new(false));
    let stage = WindowStage {
        name: Arc::from(name.as_str()),
        modality,
        spec,
        consumer,
        prepare: stages.prepare.clone(),
        queue,
        counters: Arc::clone(&counters),
        source_done: Arc::clone(&source_done),
        enabled,
        gate: sc.gate().filter(|g| !g.is_empty()).map(Gate::new),
        run: WINDOW_STAGE_RUNS.fetch_add(1, Ordering::Relaxed),
        // Text sensors have no evidence, so no history.
        history: (modality != Modality::Text)
            .then(|| stages.history.as_ref().map(|h| h.make(sc, &cfg.preprocess)))
            .flatten(),
    };
    let (window_tracked, window_guard) = Tracked::new(format!("window-{name}"));
    let window_thread = std::thread::Builder::new()
        .name(format!("window-{name}"))
        .spawn(move || {
            let _running = window_guard;
            stage.run();
        })
        .with_context(|| format!("cannot start thread window-{name}"))?;
    let wake = window_thread.thread().clone();
    let mut out = SourceOutput::new(producer, Some(wake.clone()), Arc::clone(&counters.source));
    let (sstop, sname, done) = (stop.clone(), name.clone(), done_tx.clone());
    let finished = Arc::clone(&source_done);
    let mut source = built.source;
    let source_tracked = spawn_named(format!("source-{name}"), move || {
        let _counted = done;
        if let Err(e) = source.run(&mut out, &sstop) {
            tracing::error!(component_id = %sname, error = %e, "Source stopped.");
        } else {
            tracing::info!(component_id = %sname, "Source finished.");
        }
        finished.store(true, Ordering::SeqCst);
        wake.unpark();
    });
    let source_tracked = match source_tracked {
        Ok(t) => t,
        Err(e) => {
            // The window stage ends by itself once it sees its source done.
            source_done.store(true, Ordering::SeqCst);
            window_thread.thread().unpark();
            return Err(e);
        }
    };
    stages.running.insert(
        name,
        SourceHandle {
            stop,
            source: source_tracked,
            window: window_tracked,
        },
    );
    Ok(())
}

/// Numbers the window stages started (each `Window` carries its stage's number, so that a source restarted by a
/// reload never reuses an embedding of its previous run).
static WINDOW_STAGE_RUNS: AtomicU64 = AtomicU64::new(0);

/// One source's window stage: drains its ring, cuts windows, gates them, preprocesses them, queues them for the
/// encoder.
struct WindowStage {
    name: Arc<str>,
    modality: Modality,
    spec: crate::window::WindowSpec,
    consumer: RingConsumer<crate::sources::Sample>,
    prepare: PrepareContext,
    queue: Arc<WindowQueue>,
    counters: Arc<SourceCounters>,
    source_done: Arc<AtomicBool>,
    enabled: Arc<AtomicBool>,
    /// The source's gate (`gate` in its entry), if any.
    gate: Option<Gate>,
    run: u64,
    /// The sensor's history for evidence (a frame is an `Arc` clone; see `evidence::history`).
    history: Option<Arc<crate::evidence::history::History>>,
}

impl WindowStage {
    fn run(mut self) {
        let mut cutter = windower(self.modality, self.spec);
        let (mut samples, mut raws) = (Vec::new(), Vec::new());
        let mut seq = 0u64;
        let mut logged_error = false;
        loop {
            let finished = self.source_done.load(Ordering::SeqCst);
            let n = self.consumer.drain_into(&mut samples);
            for s in samples.drain(..) {
                if let Some(h) = &self.history {
                    h.push(s.clone());
                }
                cutter.push(s, &mut raws);
            }
            if !self.enabled.load(Ordering::Relaxed) {
                // Switched off over MQTT: windows are cut (the ring keeps draining) but not embedded.
                raws.clear();
            }
            for raw in raws.drain(..) {
                // Gated windows are still preprocessed: the worker encodes one whose reference it did not embed.
                let gated_after = self.gate.as_mut().and_then(|g| g.check(&raw, seq));
                match prepare(&raw, &self.prepare) {
                    Ok(input) => {
                        self.queue.push(Window {
                            source: Arc::clone(&self.name),
                            modality: self.modality,
                            seq,
                            t0: raw.t0,
                            t1: raw.t1,
                            input,
                            run: self.run,
                            gated_after,
                        });
                        seq += 1;
                        self.counters.windows_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.counters.window_errors_total.fetch_add(1, Ordering::Relaxed);
                        if !logged_error {
                            tracing::warn!(component_id = %self.name, error = %e, "Cannot preprocess a window; skipping (further errors are counted).");
                            logged_error = true;
                        }
                    }
                }
            }
            if finished && self.consumer.is_empty() {
                break;
            }
            if n == 0 {
                // The source unparks this thread after every push; the timeout only bounds a missed wake-up.
                std::thread::park_timeout(Duration::from_millis(50));
            }
        }
    }
}

/// The outbox in front of the publisher: one bounded queue per class, each dropping its oldest message when full
/// (counted per class); state is bounded at 1000 retained topics.
pub fn outbox(mqtt: &crate::publish::config::MqttConfig) -> Arc<Outbox> {
    Arc::new(Outbox::new(crate::publish::OutboxLimits {
        state: 1000,
        events: mqtt.queue_events,
        telemetry: mqtt.queue_messages,
        embeddings: mqtt.queue_embeddings,
    }))
}

/// Starts the stats task: a `stats` message every `interval_secs` (none for 0).
pub fn start_stats(
    metrics: &Arc<Metrics>,
    outbox: &Arc<Outbox>,
    topic: String,
    device: &str,
    interval_secs: f64,
    started: Instant,
) -> Option<tokio::task::JoinHandle<()>> {
    if interval_secs <= 0.0 {
        return None;
    }
    let every = Duration::from_secs_f64(interval_secs);
    let (m, ob, t, device) = (Arc::clone(metrics), Arc::clone(outbox), topic, device.to_owned());
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
}
