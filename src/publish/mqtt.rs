//! The MQTT connection: one tokio task that polls rumqttc's event loop, feeds it from the [`Outbox`] and forwards
//! commands.
//!
//! - Last Will: `…/availability` = `offline`, QoS 1, retained. On every CONNACK the task subscribes to the command
//!   topics only, then republishes the whole retained state (availability `online` first, `info`, states,
//!   discovery) ahead of the queued events.
//! - Delivery: messages are handed to the client only while connected. The task remembers every QoS ≥ 1 message
//!   until the broker acknowledges it; when the connection drops, unacknowledged messages go back to the front of
//!   the outbox (rumqttc itself discards them, because a clean session has nothing to resume). A message may
//!   therefore arrive twice — never zero times unless the outbox overflowed, which is counted per class.
//! - Reconnects: after a connection error the task waits with jittered exponential backoff (0.5 s doubling to
//!   30 s, ±25 %) and polls again, which makes rumqttc reconnect.
//! - Start-up: the first connection attempt's outcome is reported; a login the broker rejects or a TLS failure is
//!   a start-up error, an unreachable broker is not (the daemon runs and keeps trying).
//! - Commands: publishes on the command topics are forwarded to the controller through a bounded channel (full:
//!   the command is dropped, counted and logged); retained commands are forwarded marked as retained, so the
//!   controller can refuse them.
//! - Shutdown: everything still in the outbox is handed over, `offline` is published, then DISCONNECT.
//! - Secrets (password, client key) are never logged: the settings' `Debug` redacts them.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};

use super::{BrokerUrl, Class, OutMessage, Outbox, Topics};

/// TLS material, read at start-up.
#[derive(Clone)]
pub struct TlsSettings {
    /// The client configuration (roots, client certificate).
    pub config: Arc<rustls::ClientConfig>,
    /// Where the roots came from (for logs): a file or `system`.
    pub roots: String,
    /// Whether a client certificate is presented.
    pub client_cert: bool,
}

/// Connection settings, resolved (password read from its environment variable or file).
#[derive(Clone)]
pub struct MqttSettings {
    /// Broker.
    pub broker: BrokerUrl,
    /// Client id.
    pub client_id: String,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// User name.
    pub username: Option<String>,
    /// Password (secret).
    pub password: Option<String>,
    /// TLS, for `mqtts://`.
    pub tls: Option<TlsSettings>,
    /// Topic names.
    pub topics: Topics,
    /// Filters to subscribe to (command topics, Home Assistant's birth topic).
    pub subscriptions: Vec<String>,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls_roots", &self.tls.as_ref().map(|t| t.roots.clone()))
            .field("tls_client_cert", &self.tls.as_ref().map(|t| t.client_cert))
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

/// Builds the TLS client configuration: the roots of `ca_file` (PEM) or the system's, and an optional client
/// certificate with its key. Errors name the file and what is wrong with it.
pub fn tls_settings(ca_file: Option<&Path>, client: Option<(&Path, &Path)>) -> Result<TlsSettings, String> {
    let read = |what: &str, p: &Path| {
        std::fs::read(p).map_err(|e| format!("mqtt.tls.{what}: cannot read {}: {e}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    let roots_from = match ca_file {
        Some(p) => {
            let pem = read("ca_file", p)?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("mqtt.tls.ca_file: {} is not valid PEM: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("mqtt.tls.ca_file: {} contains no certificate", p.display()));
            }
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "mqtt.tls.ca_file: none of the {ignored} certificates in {} could be parsed",
                    p.display()
                ));
            }
            p.display().to_string()
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "mqtts:// without mqtt.tls.ca_file needs the system's root certificates, and none were found ({} errors); install ca-certificates or set ca_file",
                    found.errors.len()
                ));
            }
            "system".to_owned()
        }
    };
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((cert_path, key_path)) => {
            let pem = read("client_cert", cert_path)?;
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("mqtt.tls.client_cert: {} is not valid PEM: {e}", cert_path.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "mqtt.tls.client_cert: {} contains no certificate",
                    cert_path.display()
                ));
            }
            let key_pem = read("client_key", key_path)?;
            let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .map_err(|e| format!("mqtt.tls.client_key: {} is not valid PEM: {e}", key_path.display()))?
                .ok_or_else(|| {
                    format!(
                        "mqtt.tls.client_key: {} contains no private key (PKCS#8, PKCS#1 or SEC1)",
                        key_path.display()
                    )
                })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "mqtt.tls.client_key: {} does not fit {}: {e}",
                    key_path.display(),
                    cert_path.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsSettings {
        config: Arc::new(config),
        roots: roots_from,
        client_cert: client.is_some(),
    })
}

/// Connection counters and state shared with `stats`.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Connected now.
    pub connected: AtomicBool,
    /// CONNACKs received.
    pub connects_total: AtomicU64,
    /// Connection errors.
    pub errors_total: AtomicU64,
    /// QoS ≥ 1 messages the broker acknowledged.
    pub acked_total: AtomicU64,
    /// Commands received on the command topics.
    pub commands_total: AtomicU64,
    /// Commands dropped because the controller's queue was full.
    pub commands_dropped_total: AtomicU64,
    /// Retained messages republished after connects.
    pub republished_total: AtomicU64,
    /// From the last CONNACK until the broker had acknowledged every retained state message, milliseconds.
    pub last_republish_ms: AtomicU64,
    /// Republications completed (every retained message acknowledged).
    pub republish_done_total: AtomicU64,
    /// Filters the broker refused (ACL), from the last SUBACK.
    pub subscriptions_denied: Mutex<Vec<String>>,
}

/// A publish received on a command topic.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// The broker delivered it as a retained message.
    pub retain: bool,
}

/// How the first connection attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstConnect {
    /// Connected.
    Connected,
    /// The broker cannot be reached (yet); the task keeps trying.
    Unreachable(String),
    /// The broker rejected us (login, TLS): a configuration error.
    Rejected(String),
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Largest payload accepted from the broker. Bigger packets break the connection (rumqttc), so the limit is
/// generous; the controller applies its own, smaller limits with a precise error.
pub const MAX_INCOMING_PACKET: usize = 4 << 20;

/// Builds the client options (Last Will included).
pub fn options(s: &MqttSettings) -> MqttOptions {
    let mut o = MqttOptions::new(s.client_id.clone(), s.broker.host.clone(), s.broker.port);
    o.set_keep_alive(s.keep_alive.max(Duration::from_secs(1)));
    o.set_clean_session(true);
    o.set_last_will(LastWill::new(
        s.topics.availability(),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    o.set_max_packet_size(MAX_INCOMING_PACKET, 1 << 20);
    if let Some(u) = &s.username {
        o.set_credentials(u.clone(), s.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &s.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::clone(
            &tls.config,
        ))));
    } else if s.broker.tls {
        o.set_transport(Transport::tls_with_default_config());
    }
    o
}

/// Capacity of rumqttc's own request channel.
const CLIENT_CHANNEL: usize = 64;
/// Most messages handed to the client and not yet acknowledged (rumqttc's default inflight window is 100).
const MAX_UNACKED: usize = 80;

/// What the connection needs besides its settings.
pub struct Connection {
    /// Messages to publish.
    pub outbox: Arc<Outbox>,
    /// Counters.
    pub stats: Arc<MqttStats>,
    /// Where commands go.
    pub commands: tokio::sync::mpsc::Sender<Incoming>,
    /// Receives the first connection attempt's outcome.
    pub first: Option<tokio::sync::oneshot::Sender<FirstConnect>>,
}

/// Messages handed to the client: in order, until rumqttc writes them (then keyed by packet id until acked).
#[derive(Default)]
struct Tracking {
    written_order: u64,
    handed: VecDeque<OutMessage>,
    unacked: BTreeMap<u16, (u64, OutMessage)>,
}

impl Tracking {
    fn len(&self) -> usize {
        self.handed.len() + self.unacked.len()
    }

    /// Everything not acknowledged, oldest first; clears the tracking.
    fn take_all(&mut self) -> Vec<OutMessage> {
        let mut sent: Vec<(u64, OutMessage)> = std::mem::take(&mut self.unacked).into_values().collect();
        sent.sort_by_key(|(order, _)| *order);
        sent.into_iter()
            .map(|(_, m)| m)
            .chain(std::mem::take(&mut self.handed))
            .collect()
    }
}

fn refusal(e: &ConnectionError) -> Option<String> {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            Some("the broker rejected the user name or password".into())
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
            Some("the broker refused the login (not authorised)".into())
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => {
            Some("the broker rejected the client id".into())
        }
        ConnectionError::Tls(t) => Some(format!("TLS failed: {t}")),
        _ => None,
    }
}

/// Runs the connection until `stop` is raised and the outbox is closed and drained; then says `offline` and
/// disconnects within `deadline` of the stop.
pub async fn run(
    settings: MqttSettings,
    mut conn: Connection,
    mut stop: tokio::sync::watch::Receiver<bool>,
    deadline: Duration,
) {
    let (outbox, stats) = (Arc::clone(&conn.outbox), Arc::clone(&conn.stats));
    let (client, mut eventloop) = AsyncClient::new(options(&settings), CLIENT_CHANNEL);
    // Small QoS 1 messages (events, states) must not wait for Nagle's algorithm and the broker's delayed ACK.
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let availability = settings.topics.availability();
    let mut backoff = Duration::from_millis(500);
    let mut logged_error = false;
    let mut connected = false;
    let mut track = Tracking::default();
    let mut republish: Option<(Instant, usize)> = None;
    let mut stopping_since: Option<Instant> = None;
    let mut stop_seen: Option<Instant> = None;
    loop {
        // Hand queued messages to the client while connected, within the unacknowledged window.
        let mut client_full = false;
        while connected && stopping_since.is_none() && track.len() < MAX_UNACKED {
            let Some(msg) = outbox.pop() else { break };
            match client.try_publish(msg.topic.clone(), qos(msg.qos), msg.retain, msg.payload.clone()) {
                Ok(()) => {
                    outbox.mark_sent(msg.class);
                    track.handed.push_back(msg);
                }
                Err(_) => {
                    outbox.unpop(msg);
                    client_full = true;
                    break;
                }
            }
        }
        let window_full = track.len() >= MAX_UNACKED;
        if *stop.borrow() && stop_seen.is_none() {
            stop_seen = Some(Instant::now());
        }
        let drained = outbox.is_closed() && outbox.is_empty() && track.handed.is_empty();
        let unreachable = !connected && stop_seen.is_some() && outbox.is_closed();
        if stopping_since.is_none() && *stop.borrow() && (drained || unreachable) {
            if unreachable {
                tracing::warn!(
                    queued = outbox.len(),
                    "MQTT: the broker is unreachable at shutdown; queued messages are lost."
                );
                break;
            }
            stopping_since = Some(Instant::now());
            let offline = client.try_publish(availability.clone(), QoS::AtLeastOnce, true, "offline");
            let bye = client.try_disconnect();
            if offline.is_err() || bye.is_err() {
                tracing::warn!(topic = %availability, "MQTT client queue full at shutdown; the broker's Last Will says offline.");
            }
        }
        if let Some(since) = stop_seen.filter(|s| s.elapsed() >= deadline) {
            tracing::warn!(
                queued = outbox.len() + track.len(),
                waited_ms = since.elapsed().as_millis() as u64,
                "MQTT: the outbox was not flushed and disconnected before the deadline."
            );
            break;
        }
        let wait = stop_seen.map_or(Duration::from_secs(3600), |s| deadline.saturating_sub(s.elapsed()));
        // `ready()` returns at once for a closed, empty outbox: do not spin on it while the last messages go out.
        let drained_outbox = outbox.is_closed() && outbox.is_empty();
        let can_feed = connected && stopping_since.is_none() && !client_full && !window_full && !drained_outbox;
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    stats.connected.store(true, Ordering::SeqCst);
                    stats.connects_total.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::from_millis(500);
                    if logged_error {
                        tracing::info!(broker = %settings.broker.host, port = settings.broker.port, "Reconnected to the MQTT broker.");
                    } else {
                        tracing::info!(broker = %settings.broker.host, port = settings.broker.port, tls = settings.tls.is_some() || settings.broker.tls, "Connected to the MQTT broker.");
                    }
                    logged_error = false;
                    if let Some(tx) = conn.first.take() {
                        let _receiver_gone = tx.send(FirstConnect::Connected);
                    }
                    if !settings.subscriptions.is_empty() {
                        let filters = settings
                            .subscriptions
                            .iter()
                            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                        if client.try_subscribe_many(filters).is_err() {
                            tracing::warn!("Cannot queue the command subscriptions; commands will not arrive until the next connect.");
                        }
                    }
                    let n = outbox.republish_retained(&availability);
                    stats.republished_total.fetch_add(n as u64, Ordering::Relaxed);
                    republish = (n > 0).then(|| (Instant::now(), n));
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let denied: Vec<String> = ack
                        .return_codes
                        .iter()
                        .zip(&settings.subscriptions)
                        .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                        .map(|(_, f)| f.clone())
                        .collect();
                    if !denied.is_empty() {
                        tracing::error!(filters = ?denied, "The broker refused these subscriptions (check its ACL); the commands on them will not arrive.");
                    }
                    if let Ok(mut d) = stats.subscriptions_denied.lock() {
                        *d = denied;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    stats.commands_total.fetch_add(1, Ordering::Relaxed);
                    let incoming = Incoming { topic: p.topic.clone(), payload: p.payload.to_vec(), retain: p.retain };
                    if conn.commands.try_send(incoming).is_err() {
                        stats.commands_dropped_total.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %p.topic, "Command dropped: the controller's queue is full.");
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(msg) = track.handed.pop_front()
                        && msg.qos > 0
                    {
                        track.written_order += 1;
                        track.unacked.insert(pkid, (track.written_order, msg));
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => acked(&mut track, ack.pkid, &stats, &mut republish),
                Ok(Event::Incoming(Packet::PubComp(ack))) => acked(&mut track, ack.pkid, &stats, &mut republish),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    stats.connected.store(false, Ordering::SeqCst);
                    tracing::info!("Disconnected from the MQTT broker.");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    connected = false;
                    stats.connected.store(false, Ordering::SeqCst);
                    stats.errors_total.fetch_add(1, Ordering::Relaxed);
                    let pending = track.take_all();
                    if !pending.is_empty() {
                        tracing::debug!(messages = pending.len(), "Requeueing messages the broker did not acknowledge.");
                        outbox.requeue(pending);
                    }
                    republish = None;
                    if let Some(tx) = conn.first.take() {
                        let outcome = match refusal(&e) {
                            Some(why) => FirstConnect::Rejected(why),
                            None => FirstConnect::Unreachable(e.to_string()),
                        };
                        let _receiver_gone = tx.send(outcome);
                    }
                    if stopping_since.is_some() {
                        tracing::warn!(error = %e, "MQTT connection lost during shutdown.");
                        break;
                    }
                    if let Some(why) = refusal(&e) {
                        tracing::error!(broker = %settings.broker.host, port = settings.broker.port, "MQTT: {why}; retrying with backoff.");
                        logged_error = true;
                    } else if logged_error {
                        tracing::debug!(error = %e, "MQTT connection still failing.");
                    } else {
                        tracing::warn!(broker = %settings.broker.host, port = settings.broker.port, error = %e, "MQTT connection failed; retrying with backoff.");
                        logged_error = true;
                    }
                    let jitter = 0.75 + 0.5 * (crate::clock::now().0 % 1000) as f64 / 1000.0;
                    let pause = backoff.mul_f64(jitter);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            },
            () = outbox.ready(), if can_feed => {}
            _ = stop.changed(), if stopping_since.is_none() && stop_seen.is_none() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn acked(track: &mut Tracking, pkid: u16, stats: &MqttStats, republish: &mut Option<(Instant, usize)>) {
    let Some((_, msg)) = track.unacked.remove(&pkid) else {
        return;
    };
    stats.acked_total.fetch_add(1, Ordering::Relaxed);
    if msg.retain
        && msg.class == Class::State
        && let Some((since, left)) = republish.as_mut()
    {
        *left = left.saturating_sub(1);
        if *left == 0 {
            stats
                .last_republish_ms
                .store(since.elapsed().as_millis() as u64, Ordering::Relaxed);
            stats.republish_done_total.fetch_add(1, Ordering::Relaxed);
            *republish = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_that_are_missing_or_not_pem_are_errors_naming_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("nope.pem");
        let e = tls_settings(Some(&missing), None).err().unwrap_or_default();
        assert!(
            e.starts_with("mqtt.tls.ca_file: cannot read") && e.contains("nope.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        let e = tls_settings(Some(&junk), None).err().unwrap_or_default();
        assert!(e.contains("contains no certificate"), "{e}");
        // A client key file without a key.
        if let Ok(system) = tls_settings(None, None) {
            assert_eq!(system.roots, "system");
            let e = tls_settings(None, Some((&junk, &junk))).err().unwrap_or_default();
            assert!(e.starts_with("mqtt.tls.client_cert"), "{e}");
        }
    }

    #[test]
    fn settings_debug_never_shows_the_password() {
        let s = MqttSettings {
            broker: BrokerUrl {
                host: "h".into(),
                port: 1,
                tls: false,
            },
            client_id: "c".into(),
            keep_alive: Duration::from_secs(1),
            username: Some("u".into()),
            password: Some("hunter2-secret".into()),
            tls: None,
            topics: Topics::new("p", "d"),
            subscriptions: Vec::new(),
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
    }
}
