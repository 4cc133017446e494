//! Hot reload: SIGHUP (`systemctl reload`) or the `cmd` `reload` → the file is read and validated completely →
//! what can change live is applied at once, sources that changed are restarted alone, and the controller applies
//! the rest in its task (`control::reload`).
//!
//! What a reload does, section by section:
//! - `[[prompts]]`, `[events]`, `runtime.top_k`, `mqtt.labels`, `mqtt.embeddings`, `mqtt.homeassistant`,
//!   `labels.zscore_*`, `[[fusions]]`: live;
//! - `[[sources]]`: a source added is started, one removed is stopped, one whose settings changed is stopped and
//!   started anew; the others keep running without a gap (their window sequence numbers continue);
//!   `[preprocess]`, `runtime.ring_secs` and `runtime.ring_max_bytes` restart every source;
//! - everything else (`[device]`, `[models]`, the MQTT connection, `runtime.state_dir`, `[metrics]`,
//!   `labels.templates`, `[evidence]` — its writer, history rings and retention are set up at start —, …), and a
//!   source of a modality whose tower is not loaded, takes effect at the next start: `config/state.pending_restart`
//!   names it.
//!
//! An invalid file changes nothing: the last good configuration keeps running, and the log, `config/state`
//! (`status: rejected`) and the `cmd/response` give every error with its key path.

use std::collections::BTreeSet;

use serde::Serialize;

use super::Running;
use super::stages::{self, WindowQueues};
use crate::config::{Config, LoadedConfig};
use crate::control::{Applied, Reload, ReloadRequest, prompts_hash};

/// `mqtt` keys applied live; the others are the connection.
const LIVE_MQTT: &[&str] = &["labels", "embeddings", "homeassistant"];
/// `labels` keys applied live (the shipped background prompts and the templates are embedded at start).
const LIVE_LABELS: &[&str] = &["zscore_warmup_windows", "zscore_memory_windows"];
/// `runtime` keys applied live.
const LIVE_RUNTIME: &[&str] = &["top_k"];
/// `runtime` keys that restart every source (the rings are sized by them).
const RING_RUNTIME: &[&str] = &["ring_secs", "ring_max_bytes"];

/// What differs between the configuration running and the file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Sources in the file only, in file order.
    pub added: Vec<String>,
    /// Sources no longer in the file.
    pub removed: Vec<String>,
    /// Sources whose settings changed (or every source, when `[preprocess]` or the ring sizes changed).
    pub changed: Vec<String>,
    /// Whether the file's prompts differ.
    pub prompts: bool,
    /// Keys that changed and take effect only at the next start.
    pub pending_restart: Vec<String>,
}

/// Compares the configuration running with the file's.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let mut pending = Vec::new();
    pending.extend(changed_keys("device", &old.device, &new.device, &[]));
    pending.extend(changed_keys("models", &old.models, &new.models, &[]));
    pending.extend(changed_keys("mqtt", &old.mqtt, &new.mqtt, LIVE_MQTT));
    let live_or_rings: Vec<&str> = LIVE_RUNTIME.iter().chain(RING_RUNTIME).copied().collect();
    pending.extend(changed_keys("runtime", &old.runtime, &new.runtime, &live_or_rings));
    pending.extend(changed_keys("labels", &old.labels, &new.labels, LIVE_LABELS));
    // The HTTP server is bound once, before the models load.
    pending.extend(changed_keys("metrics", &old.metrics, &new.metrics, &[]));
    // The evidence writer, its root and the history rings are set up at start (a prompt's own `evidence` overrides
    // are part of the prompts and apply live, within the evidence running).
    pending.extend(changed_keys("evidence", &old.evidence, &new.evidence, &[]));
    let restart_all = value(&old.preprocess) != value(&new.preprocess)
        || RING_RUNTIME
            .iter()
            .any(|k| field(&old.runtime, k) != field(&new.runtime, k));
    let old_sources: Vec<(&str, serde_json::Value)> = old.sources.iter().map(|s| (s.name(), value(s))).collect();
    let mut changes = Changes {
        pending_restart: pending,
        prompts: prompts_hash(&old.prompts) != prompts_hash(&new.prompts),
        ..Changes::default()
    };
    for s in &new.sources {
        match old_sources.iter().find(|(n, _)| *n == s.name()) {
            None => changes.added.push(s.name().to_owned()),
            Some((_, v)) if restart_all || *v != value(s) => changes.changed.push(s.name().to_owned()),
            Some(_) => {}
        }
    }
    changes.removed = old_sources
        .iter()
        .filter(|(n, _)| !new.sources.iter().any(|s| s.name() == *n))
        .map(|(n, _)| (*n).to_owned())
        .collect();
    changes
}

fn value(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn field(v: &impl Serialize, key: &str) -> serde_json::Value {
    value(v).get(key).cloned().unwrap_or(serde_json::Value::Null)
}

/// `section.key` for every key whose value differs, but those in `live`.
fn changed_keys(section: &str, old: &impl Serialize, new: &impl Serialize, live: &[&str]) -> Vec<String> {
    let (old, new) = (value(old), value(new));
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return if old == new {
            Vec::new()
        } else {
            vec![section.to_owned()]
        };
    };
    let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    keys.into_iter()
        .filter(|k| !live.contains(&k.as_str()) && o.get(*k) != n.get(*k))
        .map(|k| format!("{section}.{k}"))
        .collect()
}

/// The configuration that runs after the reload: the file's, but the parts that wait for a restart as they run.
fn effective(current: &LoadedConfig, new: LoadedConfig, kept_sources: &[String]) -> LoadedConfig {
    let (old, mut cfg) = (&current.config, new.config);
    cfg.device = old.device.clone();
    cfg.models = old.models.clone();
    let mut mqtt = old.mqtt.clone();
    (mqtt.labels, mqtt.embeddings, mqtt.homeassistant) = (cfg.mqtt.labels, cfg.mqtt.embeddings, cfg.mqtt.homeassistant);
    cfg.mqtt = mqtt;
    let mut runtime = old.runtime.clone();
    (runtime.top_k, runtime.ring_secs, runtime.ring_max_bytes) =
        (cfg.runtime.top_k, cfg.runtime.ring_secs, cfg.runtime.ring_max_bytes);
    cfg.runtime = runtime;
    cfg.labels.default_background = old.labels.default_background;
    cfg.labels.templates = old.labels.templates.clone();
    cfg.metrics = old.metrics.clone();
    cfg.evidence = old.evidence.clone();
    // A source that could not be started keeps its old settings (or stays absent).
    for name in kept_sources {
        let old_entry = old.sources.iter().find(|s| s.name() == name).cloned();
        match (cfg.sources.iter().position(|s| s.name() == name), old_entry) {
            (Some(i), Some(o)) => cfg.sources[i] = o,
            (Some(i), None) => {
                cfg.sources.remove(i);
            }
            (None, Some(o)) => cfg.sources.push(o),
            (None, None) => {}
        }
    }
    LoadedConfig { config: cfg, ..new }
}

impl Running {
    /// Reloads the configuration file: validates it, restarts the sources that changed and hands the controller
    /// the rest. Never stops the daemon.
    pub(super) async fn reload(&mut self, request: ReloadRequest) {
        let Some(current) = self.config.clone() else { return };
        self.notify_reloading();
        tracing::info!(origin = ?request.origin, file = %current.file.display(), "Reloading the configuration.");
        let file = current.file.clone();
        let read = tokio::task::spawn_blocking(move || crate::config::load(&file)).await;
        let new = match read {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => {
                let errors: Vec<String> = e.issues.iter().map(ToString::to_string).collect();
                tracing::warn!(file = %e.file.display(), errors = ?errors, "The configuration file is invalid; the last good configuration keeps running.");
                self.to_controller(Reload::Rejected { request, errors });
                self.status("Running (reload rejected: the file is invalid)");
                self.notify_ready();
                return;
            }
            Err(e) => {
                let errors = vec![format!("reading the configuration was interrupted: {e}")];
                self.to_controller(Reload::Rejected { request, errors });
                self.notify_ready();
                return;
            }
        };
        let mut changes = diff(&current.config, &new.config);
        let kept = self.restart_sources(&new, &mut changes).await;
        let prompts = changes
            .prompts
            .then(|| (new.config.prompts.clone(), prompts_hash(&new.config.prompts)));
        let config_hash = new.sha256.clone();
        let new = effective(&current, new, &kept);
        let sensors = self.sources.as_ref().map(|s| s.sensors.clone()).unwrap_or_default();
        self.restart_watchdog();
        let applied = Applied {
            request,
            config_hash,
            events: new.config.events.clone(),
            mqtt: new.config.mqtt.clone(),
            top_k: new.config.runtime.top_k,
            labels: new.config.labels.clone(),
            fusions: new.config.fusions.clone(),
            prompts,
            sensors,
            restarted: changes.changed,
            removed: changes.removed,
            pending_restart: changes.pending_restart,
        };
        self.config = Some(new);
        self.to_controller(Reload::Applied(Box::new(applied)));
        self.status("Running");
        self.notify_ready();
    }

    /// Stops removed and changed sources, starts added and changed ones. Sources that cannot start (no tower for
    /// their modality, a build error) keep their old settings where they had some; their names are returned and
    /// listed in `changes.pending_restart`.
    async fn restart_sources(&mut self, new: &LoadedConfig, changes: &mut Changes) -> Vec<String> {
        let Some(sources) = self.sources.as_mut() else {
            return Vec::new();
        };
        // Held while sources are replaced, so that replacing the last one does not read as "every source ended".
        let Some(done) = sources.hold_open() else {
            return Vec::new();
        };
        sources.set_preprocess(new.config.preprocess.clone());
        let queues: &WindowQueues = &self.window_queues;
        // A source of a modality without a loaded tower waits for a restart.
        let no_tower: Vec<String> = new
            .config
            .sources
            .iter()
            .filter(|s| !queues.contains_key(&s.modality()))
            .filter(|s| changes.added.iter().chain(&changes.changed).any(|n| n == s.name()))
            .map(|s| s.name().to_owned())
            .collect();
        for name in &no_tower {
            changes
                .pending_restart
                .push(format!("sources.{name} (its tower is loaded at start)"));
        }
        changes.added.retain(|n| !no_tower.contains(n));
        changes.changed.retain(|n| !no_tower.contains(n));
        let deadline = tokio::time::Instant::now() + self.stop_timeout;
        for name in changes.removed.iter().chain(&changes.changed) {
            let stragglers = sources.stop_one(name, deadline).await;
            if !stragglers.is_empty() {
                tracing::error!(components = ?stragglers, "A source stopped by the reload is still running.");
            }
            if changes.removed.contains(name) {
                self.metrics.remove_source(name);
            }
        }
        let mut kept = no_tower;
        let old = self.config.as_ref().map(|c| &c.config);
        for sc in new.config.sources.iter() {
            let name = sc.name().to_owned();
            if !changes.added.contains(&name) && !changes.changed.contains(&name) {
                continue;
            }
            if let Err(e) = stages::start_source(new, sc, queues, &self.metrics, sources, &done) {
                tracing::error!(component_id = %name, error = %e, "Cannot start the source with its new settings; it keeps its old ones.");
                changes.pending_restart.push(format!("sources.{name} ({e})"));
                let previous = old.and_then(|o| o.sources.iter().find(|s| s.name() == name));
                if let (Some(prev), Some(cur)) = (previous, self.config.as_ref())
                    && let Err(e) = stages::start_source(cur, prev, queues, &self.metrics, sources, &done)
                {
                    tracing::error!(component_id = %name, error = %e, "Cannot start the source again with its old settings.");
                }
                kept.push(name);
            }
        }
        changes.added.retain(|n| !kept.contains(n));
        changes.changed.retain(|n| !kept.contains(n));
        // Keep the sensors in file order.
        let order: Vec<&str> = new.config.sources.iter().map(|s| s.name()).collect();
        sources
            .sensors
            .sort_by_key(|s| order.iter().position(|n| *n == s.name).unwrap_or(usize::MAX));
        let restarted = (changes.added.len() + changes.changed.len()) as u64;
        self.metrics
            .reloads
            .sources_restarted_total
            .fetch_add(restarted, std::sync::atomic::Ordering::Relaxed);
        kept
    }

    fn to_controller(&self, reload: Reload) {
        let Some(tx) = &self.to_controller else { return };
        // Bounded; the supervisor handles one reload at a time, so a full queue means the controller is gone.
        if let Err(e) = tx.try_send(reload) {
            tracing::warn!(error = %e, "The controller did not take the reload's outcome.");
        }
    }

    fn notify_reloading(&self) {
        if let Some(n) = &self.notifier {
            let usec = crate::clock::system_monotonic_ns() / 1_000;
            n.notify(&format!(
                "RELOADING=1\nSTATUS=Reloading the configuration\nMONOTONIC_USEC={usec}\n"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        let base = std::path::Path::new(".");
        crate::config::parse_with(
            text,
            std::path::Path::new("t.toml"),
            base,
            crate::config::CheckOptions { environment: false },
        )
        .unwrap()
        .config
    }

    const BASE: &str = r#"
[device]
id = "d1"
[[sources]]
name = "imu0"
type = "synthetic"
modality = "imu"
[[sources]]
name = "imu1"
type = "synthetic"
modality = "imu"
[[prompts]]
id = "walking"
text = "walking"
"#;

    #[test]
    fn an_identical_file_changes_nothing() {
        assert_eq!(diff(&parse(BASE), &parse(BASE)), Changes::default());
    }

    #[test]
    fn sources_added_removed_and_changed_are_named_and_the_rest_kept() {
        let new = BASE
            .replace(
                "name = \"imu1\"\ntype = \"synthetic\"\nmodality = \"imu\"",
                "name = \"imu1\"\ntype = \"synthetic\"\nmodality = \"imu\"\nwindow_secs = 3.0",
            )
            .replace("name = \"imu0\"", "name = \"imu2\"");
        let c = diff(&parse(BASE), &parse(&new));
        assert_eq!(c.added, vec!["imu2".to_owned()]);
        assert_eq!(c.removed, vec!["imu0".to_owned()]);
        assert_eq!(c.changed, vec!["imu1".to_owned()]);
        assert!(!c.prompts);
        assert!(c.pending_restart.is_empty());
    }

    #[test]
    fn a_gate_added_or_changed_restarts_that_source_only() {
        let gated = |v: f64| {
            BASE.replace(
                "name = \"imu1\"\ntype = \"synthetic\"\nmodality = \"imu\"",
                &format!(
                    "name = \"imu1\"\ntype = \"synthetic\"\nmodality = \"imu\"\ngate = {{ min_imu_variance = {v} }}"
                ),
            )
        };
        for (old, new) in [
            (BASE.to_owned(), gated(0.001)),
            (gated(0.001), gated(0.01)),
            (gated(0.01), BASE.to_owned()),
        ] {
            let c = diff(&parse(&old), &parse(&new));
            assert_eq!(c.changed, vec!["imu1".to_owned()]);
            assert!(c.added.is_empty() && c.removed.is_empty() && c.pending_restart.is_empty());
        }
    }

    #[test]
    fn prompts_and_live_settings_need_no_restart_but_the_connection_does() {
        let new = format!(
            "{}\n[[prompts]]\nid = \"still\"\ntext = \"still\"\n[mqtt]\nurl = \"mqtt://10.0.0.1:1883\"\nlabels = false\n[runtime]\ntop_k = 5\n",
            BASE
        );
        let c = diff(&parse(BASE), &parse(&new));
        assert!(c.prompts);
        assert_eq!(c.pending_restart, vec!["mqtt.url".to_owned()]);
        assert!(c.changed.is_empty() && c.added.is_empty() && c.removed.is_empty());
        let with_evidence = format!("{BASE}\n[evidence]\nenabled = true\n");
        assert_eq!(
            diff(&parse(BASE), &parse(&with_evidence)).pending_restart,
            vec!["evidence.enabled".to_owned()]
        );
        let with_metrics = format!("{BASE}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        assert_eq!(
            diff(&parse(BASE), &parse(&with_metrics)).pending_restart,
            vec!["metrics".to_owned()]
        );
    }

    #[test]
    fn preprocessing_or_ring_sizes_restart_every_source() {
        let new = format!("{BASE}\n[runtime]\nring_secs = 8.0\n");
        let c = diff(&parse(BASE), &parse(&new));
        assert_eq!(c.changed, vec!["imu0".to_owned(), "imu1".to_owned()]);
        assert!(c.pending_restart.is_empty());
    }
}
