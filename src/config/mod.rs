//! The daemon's configuration: TOML, parsed strictly, validated completely, every error with its key path.
//!
//! Loading is two-phase (STYLE.md habit 1): each section is deserialised on its own (unknown keys are errors), then
//! the whole configuration is checked for values and cross-references. All problems are collected — a file with
//! five mistakes reports five errors — each with its key path (`sources[2].window_secs`) and, where the key exists
//! in the file, its line. Relative paths are resolved against the configuration file's folder.
//!
//! Each component owns its section: its serde types and its value checks live with it (`sources::config`,
//! `labels::prompt`, `events`, `publish::config`, `encode::options`). This module is the aggregator on top: it
//! parses the file section by section, asks each component to validate its part, adds the checks that span
//! sections (names, references), the environment checks (files, environment variables, the model directory —
//! skipped by `check --no-environment` on build hosts), and turns every [`crate::issues::Issue`] into a
//! [`ConfigIssue`] with its line.
//!
//! `configs/example.toml` documents every option; `configs/schema.json` is generated from these types
//! (`sensebind schema`) and kept current by a test.

mod environment;
mod lines;
mod sections;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::encode::{EngineOptions, ModelsConfig};
use crate::events::EventsConfig;
use crate::labels::PromptConfig;
use crate::labels::background::LabelsConfig;
use crate::modality::Modality;
use crate::preprocess::PreprocessConfig;
use crate::publish::config::MqttConfig;
use crate::sources::config::SourceConfig;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This device.
    pub device: DeviceConfig,
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The ImageBind towers and how they run.
    #[serde(default)]
    pub models: ModelsConfig,
    /// The MQTT broker and topic prefix.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Parameters of the depth, thermal and IMU preprocessing (docs/preprocessing.md).
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// How label scores become events (defaults for every prompt; each prompt may override them).
    #[serde(default)]
    pub events: EventsConfig,
    /// Background prompts and `zscore` statistics (docs/prompts.md).
    #[serde(default)]
    pub labels: LabelsConfig,
    /// Snapshots and clips around events, on disk and over MQTT (docs/evidence.md). Off by default.
    #[serde(default)]
    pub evidence: crate::evidence::EvidenceConfig,
    /// The sensors.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// What to listen for: text prompts scored against every window.
    #[serde(default)]
    pub prompts: Vec<PromptConfig>,
    /// One label over several sensors: fused events on `events/fused/{id}` (docs/prompts.md).
    #[serde(default)]
    pub fusions: Vec<crate::events::fusion::FusionConfig>,
    /// The HTTP endpoint for Prometheus (`/metrics`) and probes (`/healthz`, `/readyz`); no section: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// `[device]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Stable device id used in MQTT topics: lower-case letters, digits, `_` and `-`.
    pub id: String,
    /// Human-readable name (Home Assistant, logs).
    #[serde(default)]
    pub name: Option<String>,
}

/// `[runtime]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Where the daemon keeps state (prompt-embedding cache). Relative to the configuration file.
    pub state_dir: PathBuf,
    /// Labels per window in each label message.
    pub top_k: usize,
    /// Seconds between `stats` messages (0 = none).
    pub stats_interval_secs: f64,
    /// Capacity of each sensor's ring buffer, in seconds of data.
    pub ring_secs: f64,
    /// Upper bound of each frame ring buffer in bytes (large video frames hit this before `ring_secs`).
    pub ring_max_bytes: u64,
    /// Most prompt embeddings kept in the prompt cache (memory and `prompt-cache.json`); the least recently used
    /// are evicted first and counted in `stats`.
    pub prompt_cache_entries: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("state"),
            top_k: 3,
            stats_interval_secs: 60.0,
            ring_secs: 4.0,
            ring_max_bytes: 64 << 20,
            prompt_cache_entries: crate::labels::cache::DEFAULT_CAPACITY,
        }
    }
}

// Defined here rather than with its server (`runtime::http`, a layer above `config`), like `[runtime]`.
/// `[metrics]`: the HTTP endpoint of `/metrics` (Prometheus text format), `/healthz` and `/readyz` (docs/metrics.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address and port to listen on, `IP:port` (`0.0.0.0:9464` for every IPv4 interface, `[::1]:9464` for IPv6
    /// loopback; port 0 picks a free port, logged at start-up). Default `127.0.0.1:9464`. The endpoints have no
    /// authentication: keep them on loopback or a trusted network.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_METRICS_LISTEN.to_owned(),
        }
    }
}

/// `metrics.listen` when the `[metrics]` section leaves it out: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

impl MetricsConfig {
    /// The listen address, parsed.
    pub fn address(&self) -> Result<std::net::SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "{:?} is not a socket address: write IP:port, e.g. \"127.0.0.1:9464\" or \"[::]:9464\" (no host names)",
                self.listen
            )
        })
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `sources[1].window_secs` (empty for the whole file).
    pub path: String,
    /// 1-based line of the key in the file, where known.
    pub line: Option<usize>,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.path.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.path, self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file.
    pub file: PathBuf,
    /// The problems, in file order where known.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} error{} in the configuration:",
            self.file.display(),
            self.issues.len(),
            if self.issues.len() == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A loaded, validated configuration, with paths resolved.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// The file it came from.
    pub file: PathBuf,
    /// Its folder (relative paths are resolved against it).
    pub base: PathBuf,
    /// sha256 of the file's text, hex (`config/state.config_hash`: which file a daemon runs).
    pub sha256: String,
}

impl LoadedConfig {
    /// A path from the configuration, resolved against the configuration's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        crate::util::resolve_path(&self.base, p)
    }

    /// How `modality`'s tower is loaded ([`ModelsConfig::engine_options`] with this file's folders).
    pub fn engine_options(&self, modality: Modality) -> EngineOptions {
        let state_dir = self.resolve(&self.config.runtime.state_dir);
        self.config.models.engine_options(modality, &self.base, &state_dir)
    }
}

/// What a load checks beyond the file's own values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Also check this machine: files the configuration names exist, environment variables are set, the model
    /// directory has the towers the sources need. Off for `check --no-environment` on a build host.
    pub environment: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self { environment: true }
    }
}

/// Reads, parses and validates a configuration file, environment included.
pub fn load(file: &Path) -> Result<LoadedConfig, ConfigErrors> {
    load_with(file, CheckOptions::default())
}

/// Reads, parses and validates a configuration file with the given checks.
pub fn load_with(file: &Path, options: CheckOptions) -> Result<LoadedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigErrors {
        file: file.to_path_buf(),
        issues: vec![ConfigIssue {
            path: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_with(&text, file, &base, options)
}

/// Parses and validates configuration text, environment included; `file` names it in messages, `base` resolves
/// relative paths.
pub fn parse(text: &str, file: &Path, base: &Path) -> Result<LoadedConfig, ConfigErrors> {
    parse_with(text, file, base, CheckOptions::default())
}

/// Parses and validates configuration text with the given checks.
pub fn parse_with(text: &str, file: &Path, base: &Path, options: CheckOptions) -> Result<LoadedConfig, ConfigErrors> {
    let fail = |issues: Vec<ConfigIssue>| ConfigErrors {
        file: file.to_path_buf(),
        issues,
    };
    let doc = match text.parse::<toml_edit::ImDocument<String>>() {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map(|s| lines::line_of(text, s.start));
            return Err(fail(vec![ConfigIssue {
                path: String::new(),
                line,
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            return Err(fail(vec![ConfigIssue {
                path: String::new(),
                line: e.span().map(|s| lines::line_of(text, s.start)),
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    let mut found = crate::issues::Issues::new();
    let (partial, parsed) = sections::deserialize(&table, &mut found);
    let loaded = LoadedConfig {
        config: partial,
        file: file.to_path_buf(),
        base: base.to_path_buf(),
        sha256: {
            use sha2::{Digest, Sha256};
            crate::util::hex(&Sha256::digest(text.as_bytes()))
        },
    };
    // Validate whatever did deserialise, so one bad section does not hide the others' mistakes.
    validate::validate(&loaded.config, &parsed, &mut found);
    if options.environment {
        environment::check(&loaded, &parsed, &mut found);
    }
    let config = parsed.complete().then_some(loaded.config);
    let mut issues: Vec<ConfigIssue> = found
        .into_vec()
        .into_iter()
        .map(|i| ConfigIssue {
            line: (!i.path.is_empty())
                .then(|| lines::line_of_path(&doc, text, &i.path))
                .flatten(),
            path: i.path,
            message: i.message,
        })
        .collect();
    issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
    match config {
        Some(config) if issues.is_empty() => Ok(LoadedConfig { config, ..loaded }),
        _ => Err(fail(issues)),
    }
}

/// The JSON Schema of the configuration, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}
