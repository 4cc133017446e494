//! What `/healthz`, `/readyz` and `/metrics` read: the start-up phase, two heartbeats and the run's counters.
//!
//! - Liveness (`/healthz`): the async runtime's heartbeat (a task that beats every second) and, while the pipeline
//!   runs, the controller's (its loop stamps every 250 ms tick) are both younger than [`STALE_AFTER`]. A runtime
//!   whose workers are all blocked, or a controller stuck in a handler, goes stale.
//! - Readiness (`/readyz`): the models are loaded, the pipeline runs, and with MQTT on the broker is connected.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::metrics::Metrics;
use crate::clock;
use crate::control::ControlStats;
use crate::publish::mqtt::MqttStats;

/// A heartbeat older than this makes `/healthz` answer 503.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// How often the runtime heartbeat beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Loading the towers and embedding the start-up prompts.
    LoadingModels = 0,
    /// Models loaded; connecting to the broker, starting encoders and sources.
    Starting = 1,
    /// The pipeline runs.
    Running = 2,
    /// Shutting down.
    Stopping = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::LoadingModels,
            1 => Phase::Starting,
            2 => Phase::Running,
            _ => Phase::Stopping,
        }
    }
}

/// The state the probes and `/metrics` read; shared between the supervisor and the HTTP server.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    phase: AtomicU8,
    mqtt_enabled: bool,
    mqtt: Arc<MqttStats>,
    control: Arc<ControlStats>,
    /// The run's counters, once the pipeline's stages exist (a hot reload that rebuilds them sets them again).
    metrics: RwLock<Option<Arc<Metrics>>>,
    /// Last beat of the runtime heartbeat (process monotonic ns).
    runtime_beat_ns: AtomicU64,
}

impl Health {
    /// A daemon that starts loading its models now.
    pub fn new(mqtt_enabled: bool, mqtt: &Arc<MqttStats>, control: &Arc<ControlStats>) -> Self {
        Self {
            started: Instant::now(),
            phase: AtomicU8::new(Phase::LoadingModels as u8),
            mqtt_enabled,
            mqtt: Arc::clone(mqtt),
            control: Arc::clone(control),
            metrics: RwLock::new(None),
            runtime_beat_ns: AtomicU64::new(clock::now().0),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    /// Moves to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// The pipeline runs with these counters.
    pub fn pipeline_running(&self, metrics: &Arc<Metrics>) {
        self.set_metrics(metrics);
        // The controller has just been spawned: its heartbeat counts from now until its first tick.
        let _first_tick_pending =
            self.control
                .last_tick_ns
                .compare_exchange(0, clock::now().0, Ordering::Relaxed, Ordering::Relaxed);
        self.set_phase(Phase::Running);
    }

    /// The counters `/metrics` shows from now on.
    pub fn set_metrics(&self, metrics: &Arc<Metrics>) {
        match self.metrics.write() {
            Ok(mut m) => *m = Some(Arc::clone(metrics)),
            Err(poisoned) => *poisoned.into_inner() = Some(Arc::clone(metrics)),
        }
    }

    /// The run's counters, once the pipeline's stages exist.
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        match self.metrics.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// One beat of the runtime heartbeat.
    pub fn beat(&self) {
        self.runtime_beat_ns.store(clock::now().0, Ordering::Relaxed);
    }

    /// Beats every [`BEAT_EVERY`] until aborted.
    pub async fn beat_forever(self: Arc<Self>) {
        let mut every = tokio::time::interval(BEAT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.beat();
        }
    }

    /// `Ok` when alive, else why not (`/healthz`).
    pub fn liveness(&self) -> Result<(), String> {
        self.liveness_at(clock::now().0)
    }

    /// [`Health::liveness`] at `now_ns` (process monotonic).
    pub fn liveness_at(&self, now_ns: u64) -> Result<(), String> {
        let age = |beat_ns: u64| Duration::from_nanos(now_ns.saturating_sub(beat_ns));
        let runtime = age(self.runtime_beat_ns.load(Ordering::Relaxed));
        if runtime > STALE_AFTER {
            return Err(format!(
                "the async runtime's heartbeat is {:.1} s old",
                runtime.as_secs_f64()
            ));
        }
        // The controller ends during shutdown; its heartbeat only counts while the pipeline runs.
        let controller = self.control.last_tick_ns.load(Ordering::Relaxed);
        if self.phase() == Phase::Running && controller != 0 && age(controller) > STALE_AFTER {
            return Err(format!(
                "the controller has not turned for {:.1} s",
                age(controller).as_secs_f64()
            ));
        }
        Ok(())
    }

    /// `Ok` when ready to do its job, else why not (`/readyz`).
    pub fn readiness(&self) -> Result<(), String> {
        match self.phase() {
            Phase::LoadingModels => Err("loading models".into()),
            Phase::Starting => Err("starting the pipeline".into()),
            Phase::Stopping => Err("stopping".into()),
            Phase::Running if self.mqtt_enabled && !self.mqtt.connected.load(Ordering::Relaxed) => {
                Err("the MQTT broker is not connected".into())
            }
            Phase::Running => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(mqtt_enabled: bool) -> (Health, Arc<MqttStats>, Arc<ControlStats>) {
        let mqtt = Arc::new(MqttStats::default());
        let control = Arc::new(ControlStats::default());
        (Health::new(mqtt_enabled, &mqtt, &control), mqtt, control)
    }

    #[test]
    fn readiness_follows_the_phases_and_the_broker() {
        let (h, mqtt, _) = health(true);
        assert_eq!(h.readiness(), Err("loading models".into()));
        h.set_phase(Phase::Starting);
        assert_eq!(h.readiness(), Err("starting the pipeline".into()));
        h.pipeline_running(&Arc::new(Metrics::default()));
        assert_eq!(h.readiness(), Err("the MQTT broker is not connected".into()));
        mqtt.connected.store(true, Ordering::Relaxed);
        assert_eq!(h.readiness(), Ok(()));
        h.set_phase(Phase::Stopping);
        assert_eq!(h.readiness(), Err("stopping".into()));
    }

    #[test]
    fn readiness_without_mqtt_needs_only_the_pipeline() {
        let (h, _, _) = health(false);
        assert!(h.readiness().is_err());
        assert!(h.metrics().is_none());
        h.pipeline_running(&Arc::new(Metrics::default()));
        assert_eq!(h.readiness(), Ok(()));
        assert!(h.metrics().is_some());
    }

    #[test]
    fn liveness_fails_when_a_heartbeat_is_stale() {
        let (h, _, control) = health(false);
        let now = clock::now().0;
        let stale = now + STALE_AFTER.as_nanos() as u64 + 1_000_000_000;
        assert_eq!(h.liveness_at(now), Ok(()));
        let err = h.liveness_at(stale).unwrap_err();
        assert!(err.contains("async runtime"), "{err}");
        // A beat makes it fresh again; the controller only counts once the pipeline runs.
        h.runtime_beat_ns.store(stale, Ordering::Relaxed);
        assert_eq!(h.liveness_at(stale), Ok(()));
        h.pipeline_running(&Arc::new(Metrics::default()));
        let err = h.liveness_at(stale).unwrap_err();
        assert!(err.contains("controller"), "{err}");
        control.last_tick_ns.store(stale, Ordering::Relaxed);
        assert_eq!(h.liveness_at(stale), Ok(()));
        // Stopping: the controller has ended, which is not a failure.
        control.last_tick_ns.store(now, Ordering::Relaxed);
        h.set_phase(Phase::Stopping);
        assert_eq!(h.liveness_at(stale), Ok(()));
    }
}
