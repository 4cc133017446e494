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
//! The supervisor ([`run`]) works from a validated [`plan::Plan`], then starts the stages ([`stages`]) in order:
//! encoders loaded and prompts embedded (on the blocking pool), the publisher, the encoder workers, the sources
//! with their window stages, the controller, the stats task. Every start-up step that waits (model loading,
//! prompt embedding, the broker's first answer) is raced against the stop request, so a SIGTERM at any moment
//! ends the process cleanly with the shutdown possible at that point.
//!
//! Shutdown (SIGTERM/SIGINT, `--duration`, or every source finished) is one path with one deadline: sources
//! stop; window threads drain their rings; encoders drain their queues; the controller ends open events; the MQTT
//! task flushes the outbox, publishes `offline` and disconnects. Components report their end by closing a
//! channel ([`tasks`]); any still running at the deadline are named in the log.

pub mod evidence;
pub mod exposition;
pub mod health;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod reload;
pub mod stages;
pub mod systemd;
pub mod tasks;
pub mod worker;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::LoadedConfig;
use crate::control::{ControlStats, Controller, ControllerSetup};
use crate::labels::PromptCache;
use crate::publish::mqtt::MqttStats;
use crate::publish::{OutMessage, Outbox};
use health::{Health, Phase};
pub use metrics::{Metrics, SourceCounters};
use plan::Plan;
use stages::{EncoderSetup, Publisher, SourceStages};
use tasks::{StopSignal, Tracked, wait_all};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Longest time the shutdown may take before stragglers are named and the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Stop by itself after this long (counted from when the pipeline runs).
    pub duration: Option<Duration>,
    /// Fault injection: every encoder call takes at least this much longer (overload tests and benchmarks).
    pub encoder_delay: Option<Duration>,
    /// systemd's notification socket and watchdog (`sensebind run`: from `NOTIFY_SOCKET` and `WATCHDOG_USEC`).
    pub notifier: Option<Arc<systemd::Notifier>>,
    /// Notified to reload the configuration file (`sensebind run`: SIGHUP). Notifications coalesce: a reload
    /// asked for while one runs makes one more reload afterwards.
    pub reload_signal: Option<Arc<tokio::sync::Notify>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(10),
            duration: None,
            encoder_delay: None,
            notifier: None,
            reload_signal: None,
        }
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct Summary {
    /// Final counters.
    pub metrics: Arc<Metrics>,
    /// Components still running at the shutdown deadline.
    pub stragglers: Vec<String>,
    /// Whether the stop came before the pipeline was running.
    pub stopped_during_startup: bool,
}

/// Everything started so far; [`Running::shutdown`] stops whatever is there, in order.
struct Running {
    started: Instant,
    device: String,
    stats_topic: String,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    publisher: Option<Publisher>,
    sources: Option<SourceStages>,
    window_queues: stages::WindowQueues,
    workers: Vec<Tracked>,
    controller: Option<tokio::task::JoinHandle<()>>,
    stats: Option<tokio::task::JoinHandle<()>>,
    notifier: Option<Arc<systemd::Notifier>>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    /// The configuration running (a reload replaces it).
    config: Option<LoadedConfig>,
    /// Reload outcomes to the controller.
    to_controller: Option<tokio::sync::mpsc::Sender<crate::control::Reload>>,
    /// How long a reload waits for a stopped source to end.
    stop_timeout: Duration,
    /// `[metrics]`: `/metrics`, `/healthz`, `/readyz`; stopped last.
    http: Option<http::MetricsServer>,
    /// `[evidence]`: the writer thread; stopped after the controller.
    evidence: Option<evidence::EvidenceStage>,
}

impl Running {
    /// `STATUS=…` for systemd, when run by it.
    fn status(&self, text: &str) {
        if let Some(n) = &self.notifier {
            n.status(text);
        }
    }

    /// Nothing started yet.
    fn new(started: Instant, device: String, stats_topic: String, outbox: &Arc<Outbox>) -> Self {
        Self {
            started,
            device,
            stats_topic,
            outbox: Arc::clone(outbox),
            metrics: Arc::new(Metrics::default()),
            publisher: None,
            sources: None,
            window_queues: stages::WindowQueues::new(),
            workers: Vec::new(),
            controller: None,
            stats: None,
            notifier: None,
            watchdog: None,
            config: None,
            to_controller: None,
            stop_timeout: Duration::from_secs(10),
            http: None,
            evidence: None,
        }
    }

    /// Stops the started stages in order within `timeout`: sources → window stages → encoders → controller →
    /// final stats → publisher (flush, `offline`, disconnect).
    async fn shutdown(mut self, timeout: Duration, during_startup: bool) -> Summary {
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if let Some(n) = &self.notifier {
            n.notify("STOPPING=1\nSTATUS=Stopping\n");
        }
        if let Some(h) = &self.http {
            h.health().set_phase(Phase::Stopping);
        }
        let mut stragglers = Vec::new();
        if let Some(s) = self.sources.take() {
            stragglers.extend(s.shutdown(deadline).await);
        }
        for q in self.window_queues.values() {
            q.close();
        }
        stragglers.extend(wait_all(std::mem::take(&mut self.workers), deadline).await);
        // The workers are gone, so the scored queue closes: the controller ends every open event and stops.
        if let Some(mut task) = self.controller.take()
            && tokio::time::timeout_at(deadline, &mut task).await.is_err()
        {
            task.abort();
            stragglers.push("controller".into());
        }
        if let Some(e) = self.evidence.take() {
            stragglers.extend(e.shutdown(deadline).await);
        }
        if let Some(t) = self.stats.take() {
            t.abort();
        }
        let metrics = self.metrics;
        if !during_startup
            && let Ok(payload) = serde_json::to_vec(&metrics.snapshot(&self.device, self.started.elapsed()))
        {
            // QoS 1: the run's complete record, which a broker must not drop for a busy subscriber (mosquitto drops
            // QoS 0 messages for a subscriber whose in-flight window is full).
            self.outbox
                .push(OutMessage::telemetry(self.stats_topic.clone(), payload, 1));
        }
        // Close the outbox: the MQTT task flushes it, says offline and disconnects.
        self.outbox.close();
        if let Some(p) = self.publisher.take() {
            if p.stop.send(true).is_err() {
                tracing::debug!("The MQTT task had already ended.");
            }
            let grace = deadline + Duration::from_millis(200);
            if tokio::time::timeout_at(grace, p.task).await.is_err() {
                stragglers.push("mqtt".into());
            }
        }
        drop(self.http.take());
        if stragglers.is_empty() {
            tracing::info!(
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "Stopped cleanly."
            );
        } else {
            tracing::error!(components = ?stragglers, "Still running at the shutdown deadline; exiting anyway.");
        }
        Summary {
            metrics,
            stragglers,
            stopped_during_startup: during_startup,
        }
    }
}

/// Runs the daemon until `stop_requested` completes (a signal), `options.duration` passes, or every source ends.
pub async fn run(
    loaded: &LoadedConfig,
    options: &RunOptions,
    stop_requested: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Summary> {
    let cfg = &loaded.config;
    let started = Instant::now();
    let mut stop = StopSignal::new(stop_requested);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        device = %cfg.device.id,
        config = %loaded.file.display(),
        sources = cfg.sources.len(),
        prompts = cfg.prompts.len(),
        "Starting sensebind."
    );
    let plan = Plan::new(loaded)?;
    let outbox = stages::outbox(&cfg.mqtt);
    let mqtt_stats = Arc::new(MqttStats::default());
    let control_stats = Arc::new(ControlStats::default());
    let mut metrics = Metrics {
        mqtt: Arc::clone(&mqtt_stats),
        outbox: Some(Arc::clone(&outbox)),
        control: Arc::clone(&control_stats),
        ..Metrics::default()
    };
    let mut running = Running::new(started, cfg.device.id.clone(), plan.topics.stats(), &outbox);
    running.notifier = options.notifier.clone();
    running.stop_timeout = options.shutdown_timeout;
    running.config = Some(loaded.clone());
    // Before the models load, so that /healthz answers (and /readyz says why not) during start-up.
    let health = Arc::new(Health::new(cfg.mqtt.enabled, &mqtt_stats, &control_stats));
    running.http = http::start(cfg.metrics.as_ref(), &health).await?;
    running.status("Loading models");
    macro_rules! or_stopped {
        ($step:expr) => {
            match stop.unless_stopped($step).await {
                Some(out) => out,
                None => {
                    tracing::info!(
                        after_ms = started.elapsed().as_millis() as u64,
                        "Stopped during start-up."
                    );
                    return Ok(running.shutdown(options.shutdown_timeout, true).await);
                }
            }
        };
    }
    // A stage that cannot start after the publisher runs: shut down what runs (offline is said), then fail.
    macro_rules! or_fail {
        ($step:expr) => {
            match $step {
                Ok(out) => out,
                Err(e) => {
                    running.shutdown(options.shutdown_timeout, true).await;
                    return Err(e);
                }
            }
        };
    }
    let encoders = or_stopped!(stages::load_encoders(loaded, &plan, options))?;
    let cache = PromptCache::with_capacity(plan.state_dir.as_deref(), cfg.runtime.prompt_cache_entries);
    metrics.prompt_cache_evictions = cache.evictions();
    let (prompt_set, cache) = or_stopped!(stages::embed_start_prompts(
        encoders.text.clone(),
        (plan.prompts.clone(), plan.background.clone()),
        cache,
        plan.prompts_origin,
    ))?;
    let prompts = Arc::new(RwLock::new(Arc::new(prompt_set)));
    health.set_phase(Phase::Starting);

    // Commands from the broker to the controller; when full a command is dropped and counted.
    let (command_tx, command_rx) = tokio::sync::mpsc::channel(64);
    let publisher = stages::start_publisher(
        plan.mqtt.clone(),
        &outbox,
        &mqtt_stats,
        command_tx,
        options.shutdown_timeout,
    );
    let first = running.publisher.insert(publisher).first.take();
    if let Err(e) = or_stopped!(stages::first_connect(first, &cfg.mqtt.url)) {
        if let Some(p) = running.publisher.take() {
            p.task.abort();
        }
        return Err(e);
    }

    // Scored windows from the encoder workers to the controller; overflow: the newest is dropped and counted.
    let (scored_tx, scored_rx) = tokio::sync::mpsc::channel(crate::control::SCORED_QUEUE);
    let setup = EncoderSetup {
        encoders: &encoders,
        prompts: &prompts,
        scored: &scored_tx,
        control: &control_stats,
    };
    let (queues, workers) = or_fail!(stages::start_encoders(loaded, &plan, &setup, &mut metrics));
    running.window_queues = queues;
    running.workers = workers;
    drop(scored_tx);
    running.evidence = or_fail!(evidence::EvidenceStage::start(loaded, &plan.topics, &outbox));
    metrics.evidence = running.evidence.as_ref().map(evidence::EvidenceStage::counters);
    let (sources, all_done) = or_fail!(stages::start_sources(
        loaded,
        encoders.tokenizer.clone(),
        &running.window_queues,
        &metrics,
        running.evidence.as_ref().map(evidence::EvidenceStage::history_maker),
    ));
    // Reload requests from the controller (`cmd` `reload`) to the supervisor, and the outcomes back; both bounded
    // (a request beyond the limit is refused with a response; the supervisor handles one reload at a time).
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(crate::control::reload::RELOAD_QUEUE);
    let (to_controller, reloads) = tokio::sync::mpsc::channel(crate::control::reload::RELOAD_QUEUE);
    running.to_controller = Some(to_controller);
    let controller = controller(
        loaded,
        plan,
        sources.sensors.clone(),
        &encoders,
        (&prompts, cache),
        (&outbox, &control_stats, &metrics.reloads),
    )
    .with_reloads(reload_tx)
    .with_evidence(running.evidence.as_ref().map(evidence::EvidenceStage::controller_setup));
    running.controller = Some(tokio::spawn(controller.run(scored_rx, command_rx, reloads)));
    running.sources = Some(sources);
    running.pipeline_running(metrics, &health, cfg.runtime.stats_interval_secs);
    let mut waits = Waits {
        stop,
        until: options.duration.map(|d| tokio::time::Instant::now() + d),
        all_done,
        signal: options.reload_signal.clone(),
        commands: reload_rx,
    };
    while let Some(request) = waits.next_reload().await {
        running.reload(request).await;
    }
    Ok(running.shutdown(options.shutdown_timeout, false).await)
}

/// What the running daemon waits for: the reason to stop, or a reload.
struct Waits {
    stop: StopSignal,
    until: Option<tokio::time::Instant>,
    all_done: stages::AllSourcesDone,
    signal: Option<Arc<tokio::sync::Notify>>,
    commands: tokio::sync::mpsc::Receiver<crate::control::ReloadRequest>,
}

impl Waits {
    /// The next reload request; `None` when the daemon is to stop (the stop request, the run duration, or every
    /// source finished).
    async fn next_reload(&mut self) -> Option<crate::control::ReloadRequest> {
        use crate::control::{ReloadOrigin, ReloadRequest};
        let until = async {
            match self.until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending::<()>().await,
            }
        };
        let signal = async {
            match &self.signal {
                Some(n) => n.notified().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = self.stop.wait() => None,
            () = until => {
                tracing::info!("Run duration reached; shutting down.");
                None
            }
            None = self.all_done.recv() => {
                tracing::info!("Every source has finished; shutting down.");
                None
            }
            () = signal => Some(ReloadRequest::new(ReloadOrigin::Signal, None)),
            Some(r) = self.commands.recv() => Some(r),
        }
    }
}

impl Running {
    /// Every stage runs: the stats task starts, `/readyz` and systemd are told, the watchdog starts.
    fn pipeline_running(&mut self, metrics: Metrics, health: &Health, stats_interval_secs: f64) {
        let metrics = Arc::new(metrics);
        self.metrics = Arc::clone(&metrics);
        self.stats = stages::start_stats(
            &metrics,
            &self.outbox,
            self.stats_topic.clone(),
            &self.device,
            stats_interval_secs,
            self.started,
        );
        health.pipeline_running(&metrics);
        tracing::info!(
            sources = self.sources.as_ref().map_or(0, |s| s.running.len()),
            encoders = self.workers.len(),
            startup_ms = self.started.elapsed().as_millis() as u64,
            "Pipeline running."
        );
        self.notify_ready();
        self.restart_watchdog();
    }

    /// Tells systemd the daemon is ready.
    fn notify_ready(&self) {
        if let Some(n) = &self.notifier {
            n.notify("READY=1\nSTATUS=Running\n");
        }
    }

    /// (Re)starts the progress watchdog (`runtime::systemd`) over the sensors running now.
    fn restart_watchdog(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let Some(notifier) = &self.notifier else { return };
        let sensors = self.sources.as_ref().map(|s| s.sensors.clone()).unwrap_or_default();
        // A sensor is stalled after at least one watchdog period without a scored window.
        let floor = notifier.watchdog().unwrap_or(Duration::from_secs(30));
        let progress = systemd::Progress::new(&sensors, floor, Instant::now());
        let mqtt_enabled = self.config.as_ref().is_some_and(|c| c.config.mqtt.enabled);
        let connected = Arc::clone(&self.metrics.mqtt);
        self.watchdog = Some(tokio::spawn(systemd::watch(
            Arc::clone(notifier),
            progress,
            move || mqtt_enabled.then(|| connected.connected.load(std::sync::atomic::Ordering::Relaxed)),
        )));
    }
}

/// The controller for the started pipeline.
fn controller(
    loaded: &LoadedConfig,
    plan: Plan,
    sensors: Vec<crate::control::SensorInfo>,
    encoders: &stages::Encoders,
    (prompts, cache): (&Arc<RwLock<Arc<crate::labels::PromptSet>>>, PromptCache),
    (outbox, stats, reloads): (&Arc<Outbox>, &Arc<ControlStats>, &Arc<crate::control::ReloadStats>),
) -> Controller {
    let cfg = &loaded.config;
    Controller::new(ControllerSetup {
        device: cfg.device.id.clone(),
        device_name: cfg.device.name.clone().unwrap_or_else(|| cfg.device.id.clone()),
        topics: plan.topics,
        mqtt: cfg.mqtt.clone(),
        events: cfg.events.clone(),
        top_k: cfg.runtime.top_k,
        sensors,
        models: encoders.info.clone(),
        prompts: Arc::clone(prompts),
        text: encoders.text.clone(),
        cache,
        state: plan.state,
        config_prompts_hash: plan.config_prompts_hash,
        prompts_origin: plan.prompts_origin,
        background: plan.background,
        fusions: cfg.fusions.clone(),
        labels: cfg.labels.clone(),
        outbox: Arc::clone(outbox),
        stats: Arc::clone(stats),
        config_hash: loaded.sha256.clone(),
        reload_requests: None,
        reloads: Arc::clone(reloads),
    })
}
