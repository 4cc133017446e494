//! Section-by-section deserialisation: every section's errors are reported, and a section that fails is
//! replaced by its defaults and marked so that it is not validated.

use super::{Config, DeviceConfig, MetricsConfig, RuntimeConfig};
use crate::encode::ModelsConfig;
use crate::events::EventsConfig;
use crate::events::fusion::FusionConfig;
use crate::issues::Issues;
use crate::labels::PromptConfig;
use crate::labels::background::LabelsConfig;
use crate::preprocess::PreprocessConfig;
use crate::publish::config::MqttConfig;
use crate::sources::config::{GateConfig, SourceConfig};

const TOP_KEYS: [&str; 12] = [
    "device",
    "runtime",
    "models",
    "mqtt",
    "preprocess",
    "events",
    "labels",
    "sources",
    "prompts",
    "metrics",
    "fusions",
    "evidence",
];

/// Which parts of a configuration deserialised (the others hold defaults and are not validated).
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub(super) device: bool,
    pub(super) runtime: bool,
    pub(super) models: bool,
    pub(super) mqtt: bool,
    pub(super) preprocess: bool,
    pub(super) events: bool,
    pub(super) labels: bool,
    pub(super) evidence: bool,
    pub(super) metrics: bool,
    /// Original index of each deserialised source, in order.
    pub(super) source_index: Vec<usize>,
    /// Original index of each deserialised prompt, in order.
    pub(super) prompt_index: Vec<usize>,
    /// Names of sources that did not deserialise (for cross-references).
    pub(super) other_source_names: Vec<String>,
    pub(super) sources_total: usize,
    pub(super) prompts_total: usize,
    pub(super) fusions: bool,
}

impl Parsed {
    pub(super) fn complete(&self) -> bool {
        self.device
            && self.runtime
            && self.models
            && self.mqtt
            && self.preprocess
            && self.events
            && self.labels
            && self.evidence
            && self.metrics
            && self.source_index.len() == self.sources_total
            && self.prompt_index.len() == self.prompts_total
            && self.fusions
    }
}

/// Deserialises section by section so that every section's errors are reported; failed sections are replaced
/// by defaults in the returned configuration and marked in [`Parsed`].
pub(super) fn deserialize(table: &toml::Table, issues: &mut Issues) -> (Config, Parsed) {
    for key in table.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            issues.push(
                key.as_str(),
                format!("unknown section; expected one of {}", TOP_KEYS.join(", ")),
            );
        }
    }
    fn section<T: serde::de::DeserializeOwned>(
        value: Option<&toml::Value>,
        path: &str,
        issues: &mut Issues,
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
                // An unknown key is named in the message, and (serde_path_to_error 0.1.20) already in the path;
                // make sure it is in the path, once, so the line can be found.
                if let Some(field) = message
                    .split('`')
                    .nth(1)
                    .filter(|_| message.starts_with("unknown field"))
                    && !full.ends_with(&format!(".{field}"))
                {
                    full = format!("{full}.{field}");
                }
                issues.push(full, message);
                None
            }
        }
    }
    let mut parsed = Parsed::default();
    let device = match table.get("device") {
        Some(v) => section::<DeviceConfig>(Some(v), "device", issues),
        None => {
            issues.push("device", "missing: every configuration needs [device] with an id");
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
    let labels = section::<LabelsConfig>(table.get("labels"), "labels", issues);
    parsed.labels = labels.is_some();
    let evidence = section::<crate::evidence::EvidenceConfig>(table.get("evidence"), "evidence", issues);
    parsed.evidence = evidence.is_some();
    // No `[metrics]` section: the endpoint is off.
    let metrics = table
        .get("metrics")
        .map(|v| section::<MetricsConfig>(Some(v), "metrics", issues));
    parsed.metrics = !matches!(metrics, Some(None));
    let list = |key: &str, issues: &mut Issues| -> Vec<toml::Value> {
        match table.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items.clone(),
            Some(_) => {
                issues.push(key, format!("must be an array of tables ([[{key}]])"));
                Vec::new()
            }
        }
    };
    let mut sources = Vec::new();
    let raw_sources = list("sources", issues);
    parsed.sources_total = raw_sources.len();
    for (i, v) in raw_sources.iter().enumerate() {
        // The entry is an internally tagged enum, whose errors lose the path below the entry: the `gate` table is
        // read on its own first, so that its mistakes name `sources[i].gate.…`.
        let gate_ok = v
            .get("gate")
            .is_none_or(|g| section::<GateConfig>(Some(g), &format!("sources[{i}].gate"), issues).is_some());
        let entry = if gate_ok {
            section::<SourceConfig>(Some(v), &format!("sources[{i}]"), issues)
        } else {
            None
        };
        match entry {
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
    let mut fusions = Vec::new();
    parsed.fusions = true;
    for (i, v) in list("fusions", issues).iter().enumerate() {
        match section::<FusionConfig>(Some(v), &format!("fusions[{i}]"), issues) {
            Some(f) => fusions.push(f),
            None => parsed.fusions = false,
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
        labels: labels.unwrap_or_default(),
        evidence: evidence.unwrap_or_default(),
        sources,
        prompts,
        fusions,
        metrics: metrics.flatten(),
    };
    (config, parsed)
}
