//! Publishing: topics, payloads, the prioritised bounded outbox, and the MQTT connection.
//!
//! Producers (the event controller, encoder workers, the stats task) never wait for the network: they push
//! [`OutMessage`]s into the [`Outbox`]. The outbox keeps four bounded queues, drained in priority order
//! ([`Class`]): state, events, telemetry (per-window labels, stats), embeddings. Overflow policy: **drop the oldest
//! message of the same class**, counted per class. Retained state is also kept as the current value per topic, so
//! a state message never needs to wait in a queue while the broker is away: on every (re)connection the MQTT task
//! ([`mqtt`]) republishes the whole retained state first, then the queued events with their original timestamps.

pub mod config;
pub mod embedding;
pub mod mqtt;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Topics under `{prefix}/{device}/` (docs/mqtt.md lists them all).
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    /// `{prefix}/{device}`.
    pub fn new(prefix: &str, device: &str) -> Self {
        Self {
            base: format!("{prefix}/{device}"),
        }
    }

    /// `{prefix}/{device}`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `…/availability` (retained `online`/`offline`; the Last Will).
    pub fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }

    /// `…/info` (retained).
    pub fn info(&self) -> String {
        format!("{}/info", self.base)
    }

    /// `…/config/state` (retained).
    pub fn config_state(&self) -> String {
        format!("{}/config/state", self.base)
    }

    /// `…/prompts/state` (retained).
    pub fn prompts_state(&self) -> String {
        format!("{}/prompts/state", self.base)
    }

    /// `…/prompts/set` (command).
    pub fn prompts_set(&self) -> String {
        format!("{}/prompts/set", self.base)
    }

    /// `…/sensor/{sensor}/status` (retained).
    pub fn sensor_status(&self, sensor: &str) -> String {
        format!("{}/sensor/{sensor}/status", self.base)
    }

    /// `…/sensor/{sensor}/enabled/state` (retained).
    pub fn sensor_enabled_state(&self, sensor: &str) -> String {
        format!("{}/sensor/{sensor}/enabled/state", self.base)
    }

    /// `…/sensor/{sensor}/enabled/set` (command).
    pub fn sensor_enabled_set(&self, sensor: &str) -> String {
        format!("{}/sensor/{sensor}/enabled/set", self.base)
    }

    /// `…/label/{label}/state` (retained `ON`/`OFF`).
    pub fn label_state(&self, label: &str) -> String {
        format!("{}/label/{label}/state", self.base)
    }

    /// `…/label/{label}/enabled/state` (retained).
    pub fn label_enabled_state(&self, label: &str) -> String {
        format!("{}/label/{label}/enabled/state", self.base)
    }

    /// `…/label/{label}/enabled/set` (command).
    pub fn label_enabled_set(&self, label: &str) -> String {
        format!("{}/label/{label}/enabled/set", self.base)
    }

    /// `…/events/{sensor}/{label}`.
    pub fn events(&self, sensor: &str, label: &str) -> String {
        format!("{}/events/{sensor}/{label}", self.base)
    }

    /// `…/snapshot/{sensor}/{label}`: the latest evidence snapshot (retained JPEG or PNG bytes).
    pub fn snapshot(&self, sensor: &str, label: &str) -> String {
        format!("{}/snapshot/{sensor}/{label}", self.base)
    }

    /// `…/embeddings/{sensor}`.
    pub fn embeddings(&self, sensor: &str) -> String {
        format!("{}/embeddings/{sensor}", self.base)
    }

    /// `…/labels/{source}`: one message per window.
    pub fn labels(&self, source: &str) -> String {
        format!("{}/labels/{source}", self.base)
    }

    /// `…/stats`.
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }

    /// `…/cmd` (command).
    pub fn cmd(&self) -> String {
        format!("{}/cmd", self.base)
    }

    /// `…/cmd/response`.
    pub fn cmd_response(&self) -> String {
        format!("{}/cmd/response", self.base)
    }

    /// `…/labels/#`, for subscribers.
    pub fn labels_filter(&self) -> String {
        format!("{}/labels/#", self.base)
    }

    /// The command topic `topic` is, if it is one of this device's (the inverse of [`Topics::prompts_set`],
    /// [`Topics::cmd`], [`Topics::sensor_enabled_set`] and [`Topics::label_enabled_set`]).
    pub fn command(&self, topic: &str) -> Option<CommandTopic> {
        let rest = topic.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["prompts", "set"] => Some(CommandTopic::PromptsSet),
            ["cmd"] => Some(CommandTopic::Cmd),
            ["sensor", name, "enabled", "set"] if !name.is_empty() => {
                Some(CommandTopic::SensorEnabled((*name).to_owned()))
            }
            ["label", name, "enabled", "set"] if !name.is_empty() => {
                Some(CommandTopic::LabelEnabled((*name).to_owned()))
            }
            _ => None,
        }
    }

    /// The filters the daemon subscribes to: its command topics only.
    pub fn command_filters(&self) -> Vec<String> {
        vec![
            self.cmd(),
            self.prompts_set(),
            format!("{}/sensor/+/enabled/set", self.base),
            format!("{}/label/+/enabled/set", self.base),
        ]
    }
}

/// A command topic under `{prefix}/{device}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandTopic {
    /// `…/prompts/set`.
    PromptsSet,
    /// `…/cmd`.
    Cmd,
    /// `…/sensor/{sensor}/enabled/set`.
    SensorEnabled(String),
    /// `…/label/{label}/enabled/set`.
    LabelEnabled(String),
}

impl CommandTopic {
    /// The topic below `{prefix}/{device}/` (the `command` of `cmd-response/1`).
    pub fn name(&self) -> String {
        match self {
            Self::PromptsSet => "prompts/set".into(),
            Self::Cmd => "cmd".into(),
            Self::SensorEnabled(s) => format!("sensor/{s}/enabled/set"),
            Self::LabelEnabled(l) => format!("label/{l}/enabled/set"),
        }
    }
}

/// Priority class of a message; the outbox drains them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Availability, info, retained states, discovery, command responses.
    State = 0,
    /// Event lifecycle messages.
    Event = 1,
    /// Per-window labels and stats.
    Telemetry = 2,
    /// Window embeddings.
    Embedding = 3,
}

impl Class {
    /// Every class, highest priority first.
    pub const ALL: [Class; 4] = [Class::State, Class::Event, Class::Telemetry, Class::Embedding];

    /// Name in `stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::State => "state",
            Class::Event => "events",
            Class::Telemetry => "telemetry",
            Class::Embedding => "embeddings",
        }
    }
}

/// A message waiting for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// Topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Retained.
    pub retain: bool,
    /// Priority class.
    pub class: Class,
}

impl OutMessage {
    /// Retained state (QoS 1). An empty payload clears the topic on the broker.
    pub fn state(topic: String, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos: 1,
            retain: true,
            class: Class::State,
        }
    }

    /// A command response: state priority, QoS 1, not retained.
    pub fn response(topic: String, payload: Vec<u8>) -> Self {
        Self {
            topic,
            payload,
            qos: 1,
            retain: false,
            class: Class::State,
        }
    }

    /// An event message (QoS 1, never retained).
    pub fn event(topic: String, payload: Vec<u8>) -> Self {
        Self {
            topic,
            payload,
            qos: 1,
            retain: false,
            class: Class::Event,
        }
    }

    /// A label or stats message.
    pub fn telemetry(topic: String, payload: Vec<u8>, qos: u8) -> Self {
        Self {
            topic,
            payload,
            qos,
            retain: false,
            class: Class::Telemetry,
        }
    }

    /// An embedding message (QoS 0).
    pub fn embedding(topic: String, payload: Vec<u8>) -> Self {
        Self {
            topic,
            payload,
            qos: 0,
            retain: false,
            class: Class::Embedding,
        }
    }
}

/// Capacities of the outbox's queues, in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Non-retained state (command responses); retained state is kept per topic and needs no queue bound.
    pub state: usize,
    /// Events.
    pub events: usize,
    /// Labels and stats.
    pub telemetry: usize,
    /// Embeddings.
    pub embeddings: usize,
}

impl OutboxLimits {
    /// The same capacity for every class (tests).
    pub fn uniform(n: usize) -> Self {
        Self {
            state: n,
            events: n,
            telemetry: n,
            embeddings: n,
        }
    }

    fn of(&self, class: Class) -> usize {
        match class {
            Class::State => self.state,
            Class::Event => self.events,
            Class::Telemetry => self.telemetry,
            Class::Embedding => self.embeddings,
        }
        .max(1)
    }
}

#[derive(Debug, Default)]
struct Queues {
    /// Current retained value of every state topic (payload, QoS); empty payloads are not kept.
    retained: BTreeMap<String, (Vec<u8>, u8)>,
    queues: [VecDeque<OutMessage>; 4],
}

/// Per-class counters.
#[derive(Debug, Default)]
pub struct ClassCounters {
    /// Messages accepted.
    pub enqueued: AtomicU64,
    /// Dropped because the class's queue was full.
    pub dropped: AtomicU64,
    /// Handed to the MQTT client (again after a reconnect, if they were not acknowledged).
    pub sent: AtomicU64,
    /// Retained state replaced by a newer value of the same topic before it was sent (not a loss: the newest
    /// value is what subscribers get).
    pub superseded: AtomicU64,
}

/// The bounded, prioritised queue between producers and the MQTT task.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Queues>,
    limits: OutboxLimits,
    notify: tokio::sync::Notify,
    closed: AtomicBool,
    /// Counters per class, indexed by `Class as usize`.
    pub classes: [ClassCounters; 4],
    /// Messages put back because the connection dropped before the broker acknowledged them.
    pub requeued: AtomicU64,
}

impl Outbox {
    /// An outbox with these capacities.
    pub fn new(limits: OutboxLimits) -> Self {
        Self {
            inner: Mutex::new(Queues::default()),
            limits,
            notify: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            classes: Default::default(),
            requeued: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn counters(&self, class: Class) -> &ClassCounters {
        &self.classes[class as usize]
    }

    /// Queues a message; never blocks. Retained state replaces any queued value of the same topic; other classes
    /// drop (and count) their oldest message when full.
    pub fn push(&self, msg: OutMessage) {
        let class = msg.class;
        let mut superseded = 0;
        let dropped = {
            let mut q = self.lock();
            if msg.retain && class == Class::State {
                if msg.payload.is_empty() {
                    q.retained.remove(&msg.topic);
                } else {
                    q.retained.insert(msg.topic.clone(), (msg.payload.clone(), msg.qos));
                }
                let before = q.queues[0].len();
                q.queues[0].retain(|m| !(m.retain && m.topic == msg.topic));
                superseded = (before - q.queues[0].len()) as u64;
                q.queues[0].push_back(msg);
                false
            } else {
                let cap = self.limits.of(class);
                let queue = &mut q.queues[class as usize];
                let dropped = if queue.len() >= cap {
                    // State never drops a retained message to make room: those are kept per topic anyway.
                    match queue.iter().position(|m| !m.retain) {
                        Some(i) => queue.remove(i).is_some(),
                        None => false,
                    }
                } else {
                    false
                };
                queue.push_back(msg);
                dropped
            }
        };
        let c = self.counters(class);
        c.enqueued.fetch_add(1, Ordering::Relaxed);
        if dropped {
            c.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if superseded > 0 {
            c.superseded.fetch_add(superseded, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// Takes the next message: the oldest of the highest-priority class that has one.
    pub fn pop(&self) -> Option<OutMessage> {
        let mut q = self.lock();
        q.queues.iter_mut().find_map(VecDeque::pop_front)
    }

    /// Puts a message just taken with [`Outbox::pop`] back at the front of its class (it could not be handed over).
    pub fn unpop(&self, msg: OutMessage) {
        let class = msg.class as usize;
        self.lock().queues[class].push_front(msg);
    }

    /// Puts back messages the broker did not acknowledge (oldest first), ahead of everything queued in their
    /// class (counted as enqueued again); a class over its capacity then drops its oldest. Retained state is skipped: [`Outbox::republish_retained`] sends its current value anyway.
    pub fn requeue(&self, msgs: Vec<OutMessage>) {
        let mut dropped = [0u64; 4];
        let mut again = [0u64; 4];
        let mut n = 0;
        {
            let mut q = self.lock();
            for msg in msgs.into_iter().rev() {
                if msg.retain && msg.class == Class::State {
                    continue;
                }
                let class = msg.class;
                q.queues[class as usize].push_front(msg);
                again[class as usize] += 1;
                n += 1;
            }
            // Drop-oldest, as for any push: the requeued messages are the oldest of their class.
            for class in Class::ALL {
                let cap = self.limits.of(class);
                let queue = &mut q.queues[class as usize];
                while queue.len() > cap {
                    match queue.iter().position(|m| !m.retain) {
                        Some(i) => {
                            queue.remove(i);
                            dropped[class as usize] += 1;
                        }
                        None => break,
                    }
                }
            }
        }
        self.requeued.fetch_add(n, Ordering::Relaxed);
        for class in Class::ALL {
            // Counted as accepted again, so that enqueued = sent + dropped + superseded + queued holds.
            self.counters(class)
                .enqueued
                .fetch_add(again[class as usize], Ordering::Relaxed);
            if dropped[class as usize] > 0 {
                self.counters(class)
                    .dropped
                    .fetch_add(dropped[class as usize], Ordering::Relaxed);
            }
        }
        self.notify.notify_one();
    }

    /// Queues the current value of every retained state topic ahead of everything else (after a connect).
    /// `first` (the availability topic) goes first. Returns how many were queued.
    pub fn republish_retained(&self, first: &str) -> usize {
        let n = {
            let mut q = self.lock();
            let Queues { retained, queues } = &mut *q;
            let state = &mut queues[0];
            let before = state.len();
            state.retain(|m| !m.retain);
            let replaced = (before - state.len()) as u64;
            self.counters(Class::State)
                .superseded
                .fetch_add(replaced, Ordering::Relaxed);
            let mut all: Vec<OutMessage> = retained
                .iter()
                .map(|(topic, (payload, qos))| OutMessage {
                    topic: topic.clone(),
                    payload: payload.clone(),
                    qos: *qos,
                    retain: true,
                    class: Class::State,
                })
                .collect();
            all.sort_by_key(|m| m.topic != first);
            let n = all.len();
            for m in all.into_iter().rev() {
                state.push_front(m);
            }
            self.counters(Class::State)
                .enqueued
                .fetch_add(n as u64, Ordering::Relaxed);
            n
        };
        self.notify.notify_one();
        n
    }

    /// The retained value of `topic`, if any.
    pub fn retained(&self, topic: &str) -> Option<Vec<u8>> {
        self.lock().retained.get(topic).map(|(p, _)| p.clone())
    }

    /// Counts a message handed to the MQTT client.
    pub fn mark_sent(&self, class: Class) {
        self.counters(class).sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.lock().queues.iter().map(VecDeque::len).sum()
    }

    /// Messages waiting per class.
    pub fn lens(&self) -> [usize; 4] {
        let q = self.lock();
        [0, 1, 2, 3].map(|i| q.queues[i].len())
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages dropped, all classes.
    pub fn dropped_total(&self) -> u64 {
        self.classes.iter().map(|c| c.dropped.load(Ordering::Relaxed)).sum()
    }

    /// Messages handed over, all classes.
    pub fn sent_total(&self) -> u64 {
        self.classes.iter().map(|c| c.sent.load(Ordering::Relaxed)).sum()
    }

    /// Waits until a message may be available (or the outbox is closed).
    pub async fn ready(&self) {
        if !self.is_empty() || self.is_closed() {
            return;
        }
        self.notify.notified().await;
    }

    /// No more messages will be pushed; wakes the consumer.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS (`mqtts://`).
    pub tls: bool,
}

/// Parses `mqtt://host[:port]` (also `tcp://`) or `mqtts://host[:port]` (also `ssl://`).
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a broker URL; use mqtt://host:port or mqtts://host:port"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(format!("unknown scheme {other:?} in {url:?}; use mqtt:// or mqtts://")),
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') || hostport.contains('@') {
        return Err(format!(
            "{url:?}: give only host and port (credentials go in username/password_env)"
        ));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{url:?}: {p:?} is not a port number"))?;
            (h.trim_start_matches('[').trim_end_matches(']').to_owned(), port)
        }
        _ => (hostport.to_owned(), if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(BrokerUrl { host, port, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_drops_oldest_per_class_and_counts() {
        let o = Outbox::new(OutboxLimits::uniform(2));
        for i in 0..5u8 {
            o.push(OutMessage::telemetry("t".into(), vec![i], 0));
        }
        o.push(OutMessage::embedding("e".into(), vec![9]));
        assert_eq!(o.classes[Class::Telemetry as usize].dropped.load(Ordering::Relaxed), 3);
        assert_eq!(o.classes[Class::Embedding as usize].dropped.load(Ordering::Relaxed), 0);
        assert_eq!(o.pop().map(|m| m.payload), Some(vec![3]));
        assert_eq!(o.pop().map(|m| m.payload), Some(vec![4]));
        assert_eq!(o.pop().map(|m| m.payload), Some(vec![9]));
        assert!(o.pop().is_none());
    }

    #[test]
    fn outbox_drains_by_priority_and_keeps_retained_state_per_topic() {
        let o = Outbox::new(OutboxLimits::uniform(100));
        o.push(OutMessage::embedding("e".into(), vec![1]));
        o.push(OutMessage::telemetry("t".into(), vec![2], 0));
        o.push(OutMessage::event("ev".into(), vec![3]));
        o.push(OutMessage::state("s/a".into(), "ON"));
        o.push(OutMessage::state("s/a".into(), "OFF"));
        o.push(OutMessage::state("avail".into(), "online"));
        let order: Vec<String> = std::iter::from_fn(|| o.pop()).map(|m| m.topic).collect();
        assert_eq!(
            order,
            ["s/a", "avail", "ev", "t", "e"],
            "one s/a message: the latest value"
        );
        assert_eq!(o.retained("s/a"), Some(b"OFF".to_vec()));
        // After a reconnect the whole retained state goes first, availability leading.
        o.push(OutMessage::event("ev".into(), vec![4]));
        assert_eq!(o.republish_retained("avail"), 2);
        let order: Vec<String> = std::iter::from_fn(|| o.pop()).map(|m| m.topic).collect();
        assert_eq!(order, ["avail", "s/a", "ev"]);
        // An empty retained payload clears the topic.
        o.push(OutMessage::state("s/a".into(), Vec::new()));
        assert_eq!(o.retained("s/a"), None);
    }

    #[test]
    fn requeued_messages_go_first_in_their_class_within_capacity() {
        let o = Outbox::new(OutboxLimits::uniform(3));
        o.push(OutMessage::event("new".into(), vec![3]));
        o.push(OutMessage::event("newer".into(), vec![4]));
        o.requeue(vec![
            OutMessage::event("old1".into(), vec![1]),
            OutMessage::event("old2".into(), vec![2]),
            OutMessage::state("retained".into(), "x"),
        ]);
        let order: Vec<String> = std::iter::from_fn(|| o.pop()).map(|m| m.topic).collect();
        assert_eq!(
            order,
            ["old2", "new", "newer"],
            "capacity 3: the oldest is dropped, retained skipped"
        );
        assert_eq!(o.classes[Class::Event as usize].dropped.load(Ordering::Relaxed), 1);
        assert_eq!(o.requeued.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn command_topics_parse_back_to_what_built_them() {
        let t = Topics::new("sensebind", "dev");
        let cases = [
            (t.prompts_set(), CommandTopic::PromptsSet),
            (t.cmd(), CommandTopic::Cmd),
            (t.sensor_enabled_set("imu0"), CommandTopic::SensorEnabled("imu0".into())),
            (
                t.label_enabled_set("walking"),
                CommandTopic::LabelEnabled("walking".into()),
            ),
        ];
        for (topic, want) in cases {
            assert_eq!(format!("sensebind/dev/{}", want.name()), topic);
            assert_eq!(t.command(&topic), Some(want), "{topic}");
        }
        for other in [
            t.cmd_response(),
            t.label_enabled_state("x"),
            "sensebind/dev2/cmd".into(),
            "sensebind/devcmd".into(),
            "sensebind/dev/sensor//enabled/set".into(),
            "sensebind/dev/sensor/a/b/enabled/set".into(),
        ] {
            assert_eq!(t.command(&other), None, "{other}");
        }
    }

    #[test]
    fn broker_urls_parse_with_defaults_and_errors() {
        assert_eq!(
            parse_broker_url("mqtt://broker.local").unwrap(),
            BrokerUrl {
                host: "broker.local".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(parse_broker_url("mqtts://10.0.0.2:8884").unwrap().port, 8884);
        assert!(parse_broker_url("mqtts://h").unwrap().tls);
        assert!(parse_broker_url("http://h").is_err());
        assert!(parse_broker_url("mqtt://h:notaport").is_err());
        assert!(parse_broker_url("mqtt://user:pw@h").is_err());
        assert!(parse_broker_url("h:1883").is_err());
    }
}
