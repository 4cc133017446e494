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
//! - Shutdown: everything still in the outbox is handed over and acknowledged, then `offline` is published and,
//!   once acknowledged too, DISCONNECT.
//! - Secrets (password, client key) are never logged: the settings' `Debug` redacts them.
//!
//! The decisions (phase, messages in flight, backoff, first-connect report, republication, shutdown) are made
//! by a pure state machine, [`state::ConnectionState`], unit-tested without a socket; [`run`] only carries them
//! out.

mod state;

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};

use self::state::{Action, ConnectionState, Ending, Event, Failure, FailureLog};
use super::{BrokerUrl, OutMessage, Outbox, Topics};
use crate::clock::{self, Timestamp};

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

/// Why the broker refused us, for errors that are configuration problems (login, client id, TLS); `None` for the
/// rest (network, broker away), which are worth retrying quietly.
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
///
/// A thin driver: it polls rumqttc's event loop, feeds what happens to the [`ConnectionState`] and carries out
/// the actions that come back.
pub async fn run(
    settings: MqttSettings,
    conn: Connection,
    stop: tokio::sync::watch::Receiver<bool>,
    deadline: Duration,
) {
    let (client, mut eventloop) = AsyncClient::new(options(&settings), CLIENT_CHANNEL);
    // Small QoS 1 messages (events, states) must not wait for Nagle's algorithm and the broker's delayed ACK.
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let mut driver = Driver {
        availability: settings.topics.availability(),
        settings,
        client,
        outbox: conn.outbox,
        stats: conn.stats,
        commands: conn.commands,
        first: conn.first,
        stop,
        state: ConnectionState::new(deadline),
    };
    while driver.turn(&mut eventloop).await.is_continue() {}
}

/// The connection's I/O around its [`ConnectionState`].
struct Driver {
    settings: MqttSettings,
    availability: String,
    client: AsyncClient,
    outbox: Arc<Outbox>,
    stats: Arc<MqttStats>,
    commands: tokio::sync::mpsc::Sender<Incoming>,
    first: Option<tokio::sync::oneshot::Sender<FirstConnect>>,
    stop: tokio::sync::watch::Receiver<bool>,
    state: ConnectionState,
}

impl Driver {
    /// One turn: hand messages over, let the state machine look at the stop and the outbox, then wait for the
    /// event loop, the outbox, the stop or the deadline.
    async fn turn(&mut self, eventloop: &mut EventLoop) -> ControlFlow<()> {
        let client_full = self.feed();
        if *self.stop.borrow() {
            self.quiet(Event::StopRequested);
        }
        let (outbox_closed, outbox_empty) = (self.outbox.is_closed(), self.outbox.is_empty());
        let actions = self.state.handle(
            clock::now(),
            Event::Tick {
                outbox_closed,
                outbox_empty,
            },
        );
        self.execute(actions).await?;
        let wait = self.state.wait(clock::now());
        // `ready()` returns at once for a closed, empty outbox: do not spin on it while the last messages go out.
        let can_feed = self.state.may_hand() && !client_full && !(self.outbox.is_closed() && self.outbox.is_empty());
        let watch_stop = !self.state.stop_requested();
        let polled = tokio::select! {
            event = eventloop.poll() => Some(event),
            () = self.outbox.ready(), if can_feed => None,
            _ = self.stop.changed(), if watch_stop => None,
            () = tokio::time::sleep(wait) => None,
        };
        match polled {
            Some(event) => self.on_event(event).await,
            None => ControlFlow::Continue(()),
        }
    }

    /// Hands queued messages to the client while the state machine allows it; true when the client's queue is
    /// full.
    fn feed(&mut self) -> bool {
        let now = clock::now();
        while self.state.may_hand() {
            let Some(msg) = self.outbox.pop() else {
                return false;
            };
            match self
                .client
                .try_publish(msg.topic.clone(), qos(msg.qos), msg.retain, msg.payload.clone())
            {
                Ok(()) => {
                    self.outbox.mark_sent(msg.class);
                    self.quiet_at(now, Event::Handed(msg));
                }
                Err(_) => {
                    self.outbox.unpop(msg);
                    return true;
                }
            }
        }
        false
    }

    /// Feeds an event that never calls for an action.
    fn quiet(&mut self, event: Event) {
        self.quiet_at(clock::now(), event);
    }

    fn quiet_at(&mut self, now: Timestamp, event: Event) {
        let actions = self.state.handle(now, event);
        debug_assert!(actions.is_empty(), "unexpected actions {actions:?}");
    }

    async fn on_event(&mut self, event: Result<rumqttc::Event, ConnectionError>) -> ControlFlow<()> {
        let event = match event {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => Event::ConnAck,
            Ok(rumqttc::Event::Incoming(Packet::SubAck(ack))) => {
                self.on_suback(&ack.return_codes);
                return ControlFlow::Continue(());
            }
            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                self.forward_command(p);
                return ControlFlow::Continue(());
            }
            Ok(rumqttc::Event::Outgoing(Outgoing::Publish(pkid))) => Event::Written(pkid),
            Ok(rumqttc::Event::Incoming(Packet::PubAck(ack))) => Event::Acked(ack.pkid),
            Ok(rumqttc::Event::Incoming(Packet::PubComp(ack))) => Event::Acked(ack.pkid),
            Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect)) => Event::DisconnectSent,
            Ok(_) => return ControlFlow::Continue(()),
            Err(e) => Event::Failed(Failure {
                error: e.to_string(),
                refusal: refusal(&e),
            }),
        };
        let actions = self.state.handle(clock::now(), event);
        self.execute(actions).await
    }

    /// Carries out `actions` in order, and those that their outcomes call for; `Break` ends the task.
    async fn execute(&mut self, actions: Vec<Action>) -> ControlFlow<()> {
        let mut todo = VecDeque::from(actions);
        while let Some(action) = todo.pop_front() {
            if let Some(outcome) = self.carry_out(action).await? {
                todo.extend(self.state.handle(clock::now(), outcome));
            }
        }
        ControlFlow::Continue(())
    }

    /// Carries out one action; returns the event it results in, if the state machine needs to know.
    async fn carry_out(&mut self, action: Action) -> ControlFlow<(), Option<Event>> {
        match action {
            Action::Connected { again } => self.connected(again),
            Action::ReportFirst(outcome) => {
                if let Some(tx) = self.first.take() {
                    let _receiver_gone = tx.send(outcome);
                }
            }
            Action::Subscribe => self.subscribe(),
            Action::Republish => {
                let n = self.outbox.republish_retained(&self.availability);
                self.stats.republished_total.fetch_add(n as u64, Ordering::Relaxed);
                return ControlFlow::Continue(Some(Event::RetainedQueued(n)));
            }
            Action::Acked => {
                self.stats.acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Action::RepublishDone { took } => {
                let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                self.stats.last_republish_ms.store(ms, Ordering::Relaxed);
                self.stats.republish_done_total.fetch_add(1, Ordering::Relaxed);
            }
            Action::Lost { error, log } => self.lost(&error, log),
            Action::Requeue(pending) => {
                tracing::debug!(
                    messages = pending.len(),
                    "Requeueing messages the broker did not acknowledge."
                );
                self.outbox.requeue(pending);
            }
            Action::Sleep(pause) => {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = self.stop.changed() => {}
                }
                return ControlFlow::Continue(Some(Event::BackoffOver));
            }
            Action::SayOffline => return ControlFlow::Continue(self.say_offline()),
            Action::Disconnect => {
                if self.client.try_disconnect().is_err() {
                    tracing::warn!("MQTT client queue full at shutdown; the broker's Last Will says offline.");
                }
            }
            Action::Finish(ending) => {
                self.finish(ending);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(None)
    }

    fn connected(&self, again: bool) {
        self.stats.connected.store(true, Ordering::SeqCst);
        self.stats.connects_total.fetch_add(1, Ordering::Relaxed);
        let broker = &self.settings.broker;
        if again {
            tracing::info!(broker = %broker.host, port = broker.port, "Reconnected to the MQTT broker.");
        } else {
            let tls = self.settings.tls.is_some() || broker.tls;
            tracing::info!(broker = %broker.host, port = broker.port, tls, "Connected to the MQTT broker.");
        }
    }

    /// Publishes `offline`, to be tracked until acknowledged like any message.
    fn say_offline(&self) -> Option<Event> {
        let offline = OutMessage::state(self.availability.clone(), "offline");
        match self
            .client
            .try_publish(offline.topic.clone(), QoS::AtLeastOnce, true, offline.payload.clone())
        {
            Ok(()) => Some(Event::Handed(offline)),
            Err(_) => {
                // Nothing is in flight, so the next turn's tick queues the DISCONNECT.
                tracing::warn!(topic = %self.availability, "MQTT client queue full at shutdown; `offline` was not published.");
                None
            }
        }
    }

    fn subscribe(&self) {
        if self.settings.subscriptions.is_empty() {
            return;
        }
        let filters = self
            .settings
            .subscriptions
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        if self.client.try_subscribe_many(filters).is_err() {
            tracing::warn!("Cannot queue the command subscriptions; commands will not arrive until the next connect.");
        }
    }

    fn lost(&self, error: &str, log: FailureLog) {
        self.stats.connected.store(false, Ordering::SeqCst);
        self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
        let broker = &self.settings.broker;
        match log {
            FailureLog::Refused(why) => {
                tracing::error!(broker = %broker.host, port = broker.port, "MQTT: {why}; retrying with backoff.");
            }
            FailureLog::First => {
                tracing::warn!(broker = %broker.host, port = broker.port, error, "MQTT connection failed; retrying with backoff.");
            }
            FailureLog::Again => tracing::debug!(error, "MQTT connection still failing."),
            FailureLog::WhileClosing => tracing::warn!(error, "MQTT connection lost during shutdown."),
        }
    }

    fn finish(&self, ending: Ending) {
        match ending {
            Ending::Disconnected => {
                self.stats.connected.store(false, Ordering::SeqCst);
                tracing::info!("Disconnected from the MQTT broker.");
            }
            Ending::Unreachable => tracing::warn!(
                queued = self.outbox.len(),
                "MQTT: the broker is unreachable at shutdown; queued messages are lost."
            ),
            Ending::LostWhileClosing => {}
            Ending::Deadline { waited, in_flight } => tracing::warn!(
                queued = self.outbox.len() + in_flight,
                waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                "MQTT: the outbox was not flushed and disconnected before the deadline."
            ),
        }
    }

    /// Records the filters the broker refused in the last SUBACK.
    fn on_suback(&self, codes: &[SubscribeReasonCode]) {
        let denied: Vec<String> = codes
            .iter()
            .zip(&self.settings.subscriptions)
            .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(_, f)| f.clone())
            .collect();
        if !denied.is_empty() {
            tracing::error!(filters = ?denied, "The broker refused these subscriptions (check its ACL); the commands on them will not arrive.");
        }
        if let Ok(mut d) = self.stats.subscriptions_denied.lock() {
            *d = denied;
        }
    }

    /// Forwards a command to the controller; drops and counts it when the controller's queue is full.
    fn forward_command(&self, p: rumqttc::Publish) {
        self.stats.commands_total.fetch_add(1, Ordering::Relaxed);
        let incoming = Incoming {
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            retain: p.retain,
        };
        if self.commands.try_send(incoming).is_err() {
            self.stats.commands_dropped_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %p.topic, "Command dropped: the controller's queue is full.");
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
    fn refusal_names_login_and_client_id_rejections_but_not_network_errors() {
        let refused = |code| refusal(&ConnectionError::ConnectionRefused(code));
        assert!(refused(ConnectReturnCode::BadUserNamePassword).is_some_and(|w| w.contains("user name or password")));
        assert!(refused(ConnectReturnCode::NotAuthorized).is_some_and(|w| w.contains("not authorised")));
        assert!(refused(ConnectReturnCode::BadClientId).is_some_and(|w| w.contains("client id")));
        assert_eq!(refused(ConnectReturnCode::ServiceUnavailable), None);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(refusal(&ConnectionError::Io(io)), None);
        assert_eq!(refusal(&ConnectionError::NetworkTimeout), None);
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
