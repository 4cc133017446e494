//! The `[mqtt]` section: broker, login, TLS, queues, embeddings and Home Assistant discovery, with its value
//! checks (whether files and environment variables exist is checked by the configuration's environment checks).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::issues::Scope;
use crate::util::is_slug;

/// `[mqtt]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Publish at all (false: messages are only logged).
    pub enabled: bool,
    /// Broker address: `mqtt://host:port`, or `mqtts://host:port` for TLS (the system's root certificates unless
    /// `tls.ca_file` is set).
    pub url: String,
    /// MQTT client id (default `{prefix}-{device.id}`).
    pub client_id: Option<String>,
    /// First topic level.
    pub prefix: String,
    /// QoS of per-window label messages (0, 1 or 2). State and events are always QoS 1.
    pub qos: u8,
    /// Publish one `labels/{sensor}` message per window (the events and label states are published regardless).
    pub labels: bool,
    /// Keep-alive interval in seconds (at least 1).
    pub keep_alive_secs: u64,
    /// User name.
    pub username: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (first line). Relative to the configuration file.
    pub password_file: Option<PathBuf>,
    /// TLS settings for `mqtts://` brokers.
    pub tls: TlsConfig,
    /// Per-window label messages and stats queued for the broker (while it is unreachable, too); when full the
    /// oldest is dropped and counted.
    pub queue_messages: usize,
    /// Event messages queued while the broker is unreachable; when full the oldest is dropped and counted.
    pub queue_events: usize,
    /// Embedding messages queued; when full the oldest is dropped and counted.
    pub queue_embeddings: usize,
    /// Which window embeddings are published on `embeddings/{sensor}`.
    pub embeddings: EmbeddingsConfig,
    /// Home Assistant MQTT discovery.
    pub homeassistant: HomeAssistantConfig,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            prefix: "sensebind".into(),
            qos: 1,
            labels: true,
            keep_alive_secs: 30,
            username: None,
            password_env: None,
            password_file: None,
            tls: TlsConfig::default(),
            queue_messages: 1000,
            queue_events: 10_000,
            queue_embeddings: 200,
            embeddings: EmbeddingsConfig::default(),
            homeassistant: HomeAssistantConfig::default(),
        }
    }
}

/// `[mqtt.tls]`: used with `mqtts://` brokers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate authorities to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for brokers that require one; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1). A secret: never logged.
    pub client_key: Option<PathBuf>,
}

/// How many window embeddings a sensor publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingMode {
    /// None.
    #[default]
    Off,
    /// Windows that belong to an active event of the sensor.
    OnEvent,
    /// Every `every_n`-th window.
    EveryN,
    /// Every window.
    All,
}

/// `[mqtt.embeddings]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingsConfig {
    /// Default for every sensor.
    pub mode: EmbeddingMode,
    /// With `every_n`: publish one window in this many.
    pub every_n: u64,
    /// Element type on the wire: `f16` (half the bytes; keeps the prompt ranking, docs/mqtt.md) or `f32`.
    pub dtype: super::embedding::Dtype,
    /// `cbor` (binary, self-describing) or `json_base64`.
    pub encoding: super::embedding::Encoding,
    /// Per-sensor overrides of `mode` and `every_n`, by sensor name.
    pub sensors: std::collections::BTreeMap<String, SensorEmbeddings>,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        Self {
            mode: EmbeddingMode::Off,
            every_n: 10,
            dtype: super::embedding::Dtype::F16,
            encoding: super::embedding::Encoding::Cbor,
            sensors: std::collections::BTreeMap::new(),
        }
    }
}

/// `[mqtt.embeddings.sensors.<name>]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorEmbeddings {
    /// This sensor's mode.
    pub mode: EmbeddingMode,
    /// With `every_n`: publish one window in this many (default: `mqtt.embeddings.every_n`).
    #[serde(default)]
    pub every_n: Option<u64>,
}

impl EmbeddingsConfig {
    /// The mode and `every_n` of a sensor.
    pub fn for_sensor(&self, sensor: &str) -> (EmbeddingMode, u64) {
        match self.sensors.get(sensor) {
            Some(s) => (s.mode, s.every_n.unwrap_or(self.every_n)),
            None => (self.mode, self.every_n),
        }
    }
}

/// `[mqtt.homeassistant]`
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish device discovery (`{discovery_prefix}/device/{device.id}/config`).
    pub enabled: bool,
    /// Home Assistant's discovery prefix; its birth topic is `{discovery_prefix}/status`.
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

impl MqttConfig {
    /// Value checks of `[mqtt]`. `source_names` are the configured sensors (for `embeddings.sensors`).
    pub fn validate(&self, source_names: &[String], issues: &mut Scope<'_>) {
        let broker = super::parse_broker_url(&self.url);
        if self.enabled
            && let Err(e) = &broker
        {
            issues.push("url", e.clone());
        }
        if !is_slug(&self.prefix) {
            issues.push(
                "prefix",
                format!("{:?} is not a valid topic level: use [a-z0-9_-]", self.prefix),
            );
        }
        if self.qos > 2 {
            issues.push("qos", format!("must be 0, 1 or 2, got {}", self.qos));
        }
        if self.keep_alive_secs == 0 || self.keep_alive_secs > 65_535 {
            issues.push(
                "keep_alive_secs",
                format!("must be between 1 and 65535, got {}", self.keep_alive_secs),
            );
        }
        for (key, v) in [
            ("queue_messages", self.queue_messages),
            ("queue_events", self.queue_events),
            ("queue_embeddings", self.queue_embeddings),
        ] {
            if v == 0 || v > 1_000_000 {
                issues.push(key, format!("must be between 1 and 1000000, got {v}"));
            }
        }
        self.embeddings.validate(source_names, &mut issues.scope("embeddings"));
        if !is_slug(&self.homeassistant.discovery_prefix) {
            issues.push(
                "homeassistant.discovery_prefix",
                format!(
                    "{:?} is not a valid topic level: use [a-z0-9_-]",
                    self.homeassistant.discovery_prefix
                ),
            );
        }
        let tls_url = broker.is_ok_and(|u| u.tls);
        for (key, file) in [
            ("ca_file", &self.tls.ca_file),
            ("client_cert", &self.tls.client_cert),
            ("client_key", &self.tls.client_key),
        ] {
            if file.is_some() && !tls_url {
                issues.push(&format!("tls.{key}"), "only used with an mqtts:// url");
            }
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            issues.push("tls.client_cert", "client_cert and client_key go together");
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            issues.push("password_env", "set password_env or password_file, not both");
        }
        if (self.password_env.is_some() || self.password_file.is_some()) && self.username.is_none() {
            issues.push("username", "a password needs a username");
        }
    }
}

impl EmbeddingsConfig {
    fn validate(&self, source_names: &[String], issues: &mut Scope<'_>) {
        if self.every_n == 0 {
            issues.push("every_n", "must be at least 1");
        }
        for (name, e) in &self.sensors {
            if !source_names.contains(name) {
                issues.push(&format!("sensors.{name}"), format!("no source is named {name:?}"));
            }
            if e.every_n == Some(0) {
                issues.push(&format!("sensors.{name}.every_n"), "must be at least 1");
            }
        }
    }
}
