//! Configuration reloads, as the controller sees them.
//!
//! A reload is asked for by SIGHUP (`systemctl reload`) or the `cmd` `reload`; the supervisor (`runtime::reload`)
//! reads and validates the whole file, restarts the sources that changed, and hands the controller the outcome as
//! a [`Reload`]. The controller applies the live part at once, in its own task and so in order with windows and
//! commands: event parameters, MQTT outputs, `top_k`, the sensor list, and the file's prompts when they changed
//! (embedded on the blocking pool like a `prompts/set` update; events of changed prompts end with `reload`). An
//! invalid file changes nothing: the last good configuration keeps running and `config/state` says why
//! (`status: rejected`, every error with its key path).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::payloads::{CmdResult, FileState, PromptsOrigin};
use super::{Controller, SensorInfo};
use crate::events::{EndReason, EventsConfig};
use crate::labels::PromptConfig;
use crate::publish::OutMessage;
use crate::publish::config::MqttConfig;

/// Reload requests that may wait for the supervisor; a further `cmd` `reload` is refused (signals coalesce).
pub const RELOAD_QUEUE: usize = 4;

/// Configuration reloads (in `stats` and `/metrics`).
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads applied (the file was valid).
    pub applied_total: AtomicU64,
    /// Reloads refused (the file was invalid; the last good configuration kept running).
    pub rejected_total: AtomicU64,
    /// Sources restarted by reloads.
    pub sources_restarted_total: AtomicU64,
    /// The last applied reload, from the request to the new configuration live (prompts embedded), milliseconds.
    pub last_duration_ms: AtomicU64,
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOrigin {
    /// SIGHUP (`systemctl reload`).
    Signal,
    /// The MQTT `cmd` `reload`.
    Command,
}

/// A request to reload the configuration file.
#[derive(Debug, Clone)]
pub struct ReloadRequest {
    /// Who asked.
    pub origin: ReloadOrigin,
    /// The command's `request_id`, echoed.
    pub request_id: Option<String>,
    /// When it was asked for (the reload's latency is counted from here).
    pub received: Instant,
}

impl ReloadRequest {
    /// A request made now.
    pub fn new(origin: ReloadOrigin, request_id: Option<String>) -> Self {
        Self {
            origin,
            request_id,
            received: Instant::now(),
        }
    }
}

/// The outcome of a reload, handed by the supervisor to the controller.
#[derive(Debug)]
pub enum Reload {
    /// The file was invalid (or unreadable): nothing changed.
    Rejected {
        /// The request.
        request: ReloadRequest,
        /// Every error, `key.path: message`.
        errors: Vec<String>,
    },
    /// The file was valid: the sources that changed run anew; the rest is for the controller to apply.
    Applied(Box<Applied>),
}

/// A valid file's live part.
#[derive(Debug)]
pub struct Applied {
    /// The request.
    pub request: ReloadRequest,
    /// sha256 of the file.
    pub config_hash: String,
    /// Event defaults.
    pub events: EventsConfig,
    /// MQTT outputs (labels, embeddings, Home Assistant); the connection itself is not changed live.
    pub mqtt: MqttConfig,
    /// Labels per `labels/{sensor}` message.
    pub top_k: usize,
    /// `[[fusions]]`.
    pub fusions: Vec<crate::events::fusion::FusionConfig>,
    /// `[labels]` (`zscore` warm-up and memory; the shipped background prompts change at the next start).
    pub labels: crate::labels::background::LabelsConfig,
    /// The file's prompts and their hash, when they differ from the last file's (the file then wins over prompts
    /// set over MQTT, as at start).
    pub prompts: Option<(Vec<PromptConfig>, String)>,
    /// Every sensor after the reload.
    pub sensors: Vec<SensorInfo>,
    /// Sources stopped and started anew (their events end with `reload`).
    pub restarted: Vec<String>,
    /// Sources removed.
    pub removed: Vec<String>,
    /// Settings that changed but take effect only at the next start (`device`, the MQTT connection, `models`, …).
    pub pending_restart: Vec<String>,
}

impl Controller {
    /// Applies a reload's outcome (or reports its rejection).
    pub(super) fn on_reload(&mut self, reload: Reload) {
        match reload {
            Reload::Rejected { request, errors } => {
                self.s.reloads.rejected_total.fetch_add(1, Ordering::Relaxed);
                let rid = request.request_id.as_deref();
                self.publish_config_state(Err(&errors), PromptsOrigin::Reload, rid);
                if request.origin == ReloadOrigin::Command {
                    self.respond("cmd/reload", rid, Err(errors));
                }
            }
            Reload::Applied(applied) => self.apply_reload(*applied),
        }
    }

    fn apply_reload(&mut self, a: Applied) {
        // Sources restarted or removed: their events end and their trackers go.
        let gone: BTreeSet<String> = a.restarted.iter().chain(&a.removed).cloned().collect();
        self.end_where(EndReason::Reload, |s, _| gone.contains(s));
        self.trackers.retain(|(s, _), _| !gone.contains(s));
        for name in &a.removed {
            self.online.remove(name);
            self.clear_sensor_topics(name);
            self.remember_removed_sensor(name);
        }
        // New event defaults: the events of prompts whose resolved parameters change end (`reload`).
        let current = self.prompts();
        let retuned: BTreeSet<String> = current
            .prompts()
            .iter()
            .filter(|p| p.config.event_params(&self.s.events) != p.config.event_params(&a.events))
            .map(|p| p.id.clone())
            .collect();
        self.end_where(EndReason::Reload, |_, l| retuned.contains(l));
        self.trackers.retain(|(_, l), _| !retuned.contains(l));
        self.s.events = a.events;
        self.s.mqtt = a.mqtt;
        self.s.top_k = a.top_k;
        self.s.labels = a.labels;
        // Fusions changed or removed: their events end (`reload`); unchanged ones keep their sources' scores.
        let kept: Vec<crate::events::fusion::Fusion> = std::mem::take(&mut self.fusions)
            .into_iter()
            .filter(|f| a.fusions.contains(&f.config))
            .collect();
        let ended: BTreeSet<String> = self
            .s
            .fusions
            .iter()
            .filter(|c| !a.fusions.contains(c))
            .map(|c| c.id.clone())
            .collect();
        self.end_where(EndReason::Reload, |s, l| {
            s == crate::events::fusion::FUSED && ended.contains(l)
        });
        self.trackers
            .retain(|(s, l), _| !(s == crate::events::fusion::FUSED && ended.contains(l)));
        self.fusions = a
            .fusions
            .iter()
            .map(|c| {
                kept.iter()
                    .find(|f| f.config == *c)
                    .cloned()
                    .unwrap_or_else(|| crate::events::fusion::Fusion::new(c.clone()))
            })
            .collect();
        for id in &ended {
            if !a.fusions.iter().any(|c| &c.id == id) && self.label_on.remove(id).is_some() {
                self.clear_label_topics(id);
                self.remember_removed(id);
            }
        }
        for c in &a.fusions {
            if !self.label_on.contains_key(&c.id) {
                self.label_on.insert(c.id.clone(), false);
                self.push(OutMessage::state(self.s.topics.label_state(&c.id), "OFF"));
                let enabled = super::on_off(self.label_enabled(&c.id));
                self.push(OutMessage::state(self.s.topics.label_enabled_state(&c.id), enabled));
            }
        }
        self.s.fusions = a.fusions;
        for name in &gone {
            // A restarted or removed sensor's cosine statistics start again.
            self.zscores.forget(|s, _| s == name);
        }
        let known: BTreeSet<String> = self.s.sensors.iter().map(|s| s.name.clone()).collect();
        self.s.sensors = a.sensors;
        for sensor in self.s.sensors.clone() {
            if self.s.state.state.disabled_sensors.contains(&sensor.name) {
                sensor.enabled.store(false, Ordering::SeqCst);
            }
            if !known.contains(&sensor.name) || gone.contains(&sensor.name) {
                let online = !sensor.stats.offline.load(Ordering::SeqCst);
                self.online.insert(sensor.name.clone(), online);
                self.publish_sensor_state(&sensor);
            }
        }
        self.file = FileState {
            config_hash: a.config_hash,
            restarted: a.restarted,
            pending_restart: a.pending_restart,
        };
        let request = a.request;
        match a.prompts {
            Some((prompts, hash)) => {
                // The file's prompts replace the active set (the file wins over earlier `prompts/set` updates).
                self.s.config_prompts_hash = hash;
                self.replace_prompts(prompts, request);
            }
            None => self.reload_done(&request),
        }
        self.publish_prompts_state();
        self.publish_info();
        self.publish_discovery();
    }

    /// The reload is live: counted, timed, reported on `config/state` and, for a command, `cmd/response`.
    pub(super) fn reload_done(&mut self, request: &ReloadRequest) {
        let ms = u64::try_from(request.received.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.s.reloads.applied_total.fetch_add(1, Ordering::Relaxed);
        self.s.reloads.last_duration_ms.store(ms, Ordering::Relaxed);
        let rid = request.request_id.as_deref();
        self.publish_config_state(Ok(()), PromptsOrigin::Reload, rid);
        tracing::info!(
            latency_ms = ms,
            restarted = ?self.file.restarted,
            pending_restart = ?self.file.pending_restart,
            config_hash = %self.file.config_hash,
            "Configuration reloaded."
        );
        if !self.file.pending_restart.is_empty() {
            tracing::warn!(settings = ?self.file.pending_restart, "These settings changed in the file and take effect at the next start.");
        }
        if request.origin == ReloadOrigin::Command {
            let result = CmdResult::Reloaded {
                config_hash: self.file.config_hash.clone(),
                restarted: self.file.restarted.clone(),
                pending_restart: self.file.pending_restart.clone(),
                prompts: self.prompts().prompts().len(),
            };
            self.respond("cmd/reload", rid, Ok(result));
        }
    }

    /// Clears a removed sensor's retained topics (an empty retained message, on purpose).
    fn clear_sensor_topics(&self, name: &str) {
        let t = &self.s.topics;
        self.push(OutMessage::state(t.sensor_status(name), Vec::new()));
        self.push(OutMessage::state(t.sensor_enabled_state(name), Vec::new()));
        if self.evidence.is_some() {
            for label in self.prompts().labels() {
                self.push(OutMessage::state(t.snapshot(name, &label.id), Vec::new()));
            }
        }
    }

    /// Remembers a removed sensor so its Home Assistant entities are removed (bounded like removed labels).
    fn remember_removed_sensor(&mut self, name: &str) {
        const MAX_REMOVED: usize = 1024;
        self.removed_sensors.insert(name.to_owned());
        while self.removed_sensors.len() > MAX_REMOVED {
            self.removed_sensors.pop_first();
        }
    }
}
