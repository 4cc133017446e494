//! The validated plan: everything the supervisor needs from the configuration and the state directory, worked
//! out before any stage starts (so a bad password file or an unreadable state is reported before models load).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::LoadedConfig;
use crate::control::{StateFile, prompts_hash};
use crate::labels::{PromptConfig, check_prompt};
use crate::modality::Modality;
use crate::publish::mqtt::{self, MqttSettings};
use crate::publish::{Topics, parse_broker_url};

/// What the daemon will run.
pub struct Plan {
    /// The state directory, when it could be created (else prompt embeddings and runtime changes are not kept).
    pub state_dir: Option<PathBuf>,
    /// The runtime state file and what it held at start.
    pub state: StateFile,
    /// Hash of the configuration file's prompts (a change discards prompts saved from MQTT updates).
    pub config_prompts_hash: String,
    /// The prompts to start with.
    pub prompts: Vec<PromptConfig>,
    /// Where they came from: `config` or `state_file`.
    pub prompts_origin: &'static str,
    /// The modalities of the sources (one encoder each).
    pub modalities: BTreeSet<Modality>,
    /// Whether the text tower and the tokenizer are needed (prompts or text sources).
    pub need_text: bool,
    /// Towers loaded only to embed the prompts' exemplars (modalities no source has).
    pub exemplar_towers: BTreeSet<Modality>,
    /// The broker, login and TLS, resolved (`None` with `mqtt.enabled = false`).
    pub mqtt: Option<MqttSettings>,
    /// The topic tree.
    pub topics: Topics,
    /// The shipped background prompts of the source modalities (`labels.default_background`).
    pub background: Vec<PromptConfig>,
}

impl Plan {
    /// Works out the plan; creates the state directory.
    pub fn new(loaded: &LoadedConfig) -> anyhow::Result<Self> {
        let cfg = &loaded.config;
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
        let (prompts, prompts_origin) = chosen_prompts(loaded, &state, &config_prompts_hash);
        let modalities: BTreeSet<Modality> = cfg.sources.iter().map(|s| s.modality()).collect();
        let need_text = !prompts.is_empty() || modalities.contains(&Modality::Text);
        let exemplar_towers = exemplar_modalities(loaded, &prompts)
            .into_iter()
            .filter(|m| !modalities.contains(m))
            .collect();
        let mqtt = if cfg.mqtt.enabled {
            Some(mqtt_settings(loaded)?)
        } else {
            None
        };
        let background = cfg.labels.background(&modalities);
        Ok(Self {
            state_dir,
            state,
            config_prompts_hash,
            prompts,
            prompts_origin,
            modalities,
            need_text,
            exemplar_towers,
            mqtt,
            topics: Topics::new(&cfg.mqtt.prefix, &cfg.device.id),
            background,
        })
    }

    /// The towers to load: one per source modality, and the text tower when needed.
    pub fn towers(&self) -> BTreeSet<Modality> {
        let mut towers = self.modalities.clone();
        towers.extend(&self.exemplar_towers);
        if self.need_text {
            towers.insert(Modality::Text);
        }
        towers
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
    let mut found = crate::issues::Issues::new();
    for p in saved {
        check_prompt(p, &cfg.events, &sources, &names, &mut found.scope(&p.id));
    }
    let problems: Vec<String> = found.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
    if problems.is_empty() {
        (saved.clone(), "state_file")
    } else {
        tracing::warn!(problems = ?problems, "The prompts saved from MQTT updates no longer fit the configuration; using the file's.");
        (cfg.prompts.clone(), "config")
    }
}

/// The modalities of the prompts' exemplars (as given, else from each file's first bytes; a file that cannot be
/// read is left out here and named when the prompts are embedded).
fn exemplar_modalities(loaded: &LoadedConfig, prompts: &[PromptConfig]) -> BTreeSet<Modality> {
    prompts
        .iter()
        .flat_map(|p| &p.exemplars)
        .filter_map(|e| e.tower(&loaded.base).ok())
        .collect()
}
