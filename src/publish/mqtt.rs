//! The MQTT connection: one tokio task that polls rumqttc's event loop and feeds it from the [`Outbox`].
//!
//! - Last Will: `…/availability` = `offline`, QoS 1, retained; `online` (QoS 1, retained) after every CONNACK.
//! - Reconnects: after a connection error the task waits with jittered exponential backoff (0.5 s doubling to
//!   30 s, ±25 %) and polls again, which makes rumqttc reconnect. Messages keep queueing in the outbox meanwhile.
//! - Shutdown: everything still in the outbox is handed over, `offline` is published, then DISCONNECT; the task
//!   keeps polling until the DISCONNECT is written or the deadline passes.
//! - The password is never logged (the settings' `Debug` redacts it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};

use super::{BrokerUrl, OutMessage, Outbox, Topics};

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
    /// Topic names.
    pub topics: Topics,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Connection counters.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Connected now.
    pub connected: AtomicBool,
    /// CONNACKs received.
    pub connects_total: AtomicU64,
    /// Connection errors.
    pub errors_total: AtomicU64,
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

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
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let (Some(u), Some(p)) = (&s.username, &s.password) {
        o.set_credentials(u.clone(), p.clone());
    } else if let Some(u) = &s.username {
        o.set_credentials(u.clone(), String::new());
    }
    if s.broker.tls {
        o.set_transport(Transport::tls_with_default_config());
    }
    o
}

/// Capacity of rumqttc's own request channel; the outbox holds the real backlog.
const CLIENT_CHANNEL: usize = 64;

/// Runs the connection until `stop` is raised and the outbox is closed and drained; then says `offline` and
/// disconnects within `deadline` of the stop.
pub async fn run(
    settings: MqttSettings,
    outbox: Arc<Outbox>,
    stats: Arc<MqttStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    deadline: Duration,
) {
    let (client, mut eventloop) = AsyncClient::new(options(&settings), CLIENT_CHANNEL);
    let availability = settings.topics.availability();
    let mut backoff = Duration::from_millis(500);
    let mut logged_error = false;
    let mut stopping_since: Option<Instant> = None;
    let mut stop_seen: Option<Instant> = None;
    loop {
        // Hand queued messages to the client until its channel is full.
        let mut client_full = false;
        while let Some(msg) = outbox.pop() {
            match client.try_publish(msg.topic.clone(), qos(msg.qos), msg.retain, msg.payload.clone()) {
                Ok(()) => {
                    outbox.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    outbox.unpop(msg);
                    client_full = true;
                    break;
                }
            }
        }
        if *stop.borrow() && stop_seen.is_none() {
            stop_seen = Some(Instant::now());
        }
        if stopping_since.is_none() && *stop.borrow() && outbox.is_closed() && outbox.is_empty() {
            stopping_since = Some(Instant::now());
            let offline = client.try_publish(availability.clone(), QoS::AtLeastOnce, true, "offline");
            let bye = client.try_disconnect();
            if offline.is_err() || bye.is_err() {
                tracing::warn!(topic = %availability, "MQTT client queue full at shutdown; the broker's Last Will says offline.");
            }
        }
        if let Some(since) = stop_seen.filter(|s| s.elapsed() >= deadline) {
            tracing::warn!(
                queued = outbox.len(),
                waited_ms = since.elapsed().as_millis() as u64,
                "MQTT: the outbox was not flushed and disconnected before the deadline."
            );
            break;
        }
        let wait = stop_seen.map_or(Duration::from_secs(3600), |s| deadline.saturating_sub(s.elapsed()));
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    stats.connected.store(true, Ordering::SeqCst);
                    stats.connects_total.fetch_add(1, Ordering::Relaxed);
                    backoff = Duration::from_millis(500);
                    if logged_error {
                        tracing::info!(broker = %settings.broker.host, port = settings.broker.port, "Reconnected to the MQTT broker.");
                    } else {
                        tracing::info!(broker = %settings.broker.host, port = settings.broker.port, code = ?ack.code, "Connected to the MQTT broker.");
                    }
                    logged_error = false;
                    if stopping_since.is_none()
                        && client.try_publish(availability.clone(), QoS::AtLeastOnce, true, "online").is_err()
                    {
                        tracing::warn!(topic = %availability, "Cannot queue the online message.");
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    stats.connected.store(false, Ordering::SeqCst);
                    tracing::info!("Disconnected from the MQTT broker.");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    stats.connected.store(false, Ordering::SeqCst);
                    stats.errors_total.fetch_add(1, Ordering::Relaxed);
                    if stopping_since.is_some() {
                        tracing::warn!(error = %e, "MQTT connection lost during shutdown.");
                        break;
                    }
                    if logged_error {
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
            () = outbox.ready(), if stopping_since.is_none() && !client_full => {}
            _ = stop.changed(), if stopping_since.is_none() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Publishes `msg` directly (used by tests and the demo viewer's helpers).
pub fn out(topic: String, payload: Vec<u8>, qos: u8, retain: bool) -> OutMessage {
    OutMessage {
        topic,
        payload,
        qos,
        retain,
    }
}
