//! Publishing: payloads, the bounded outbox, and the MQTT connection.
//!
//! Producers (encoder workers, the stats task) never wait for the network: they push [`OutMessage`]s into the
//! [`Outbox`], a bounded queue whose overflow policy is **drop the oldest message** (counted in `dropped`). The MQTT
//! task ([`mqtt`]) takes messages from the outbox and hands them to the client; while the broker is unreachable
//! the outbox absorbs the backlog up to its capacity.

pub mod mqtt;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use crate::labels::LabelScore;

/// Topics under `{prefix}/{device}/`.
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

    /// `…/availability` (retained `online`/`offline`; the Last Will).
    pub fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }

    /// `…/labels/{source}`: one message per window.
    pub fn labels(&self, source: &str) -> String {
        format!("{}/labels/{source}", self.base)
    }

    /// `…/stats`.
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }

    /// `…/labels/#`, for subscribers.
    pub fn labels_filter(&self) -> String {
        format!("{}/labels/#", self.base)
    }
}

/// A label message: one window's top labels. Payload schema `labels/1` (docs/mqtt.md).
#[derive(Debug, Clone, Serialize)]
pub struct LabelMessage {
    /// Payload schema id.
    pub schema: &'static str,
    /// Device id.
    pub device: String,
    /// Source name.
    pub source: String,
    /// Modality of the source.
    pub modality: String,
    /// Per-source window sequence number, from 0, without gaps except for dropped windows.
    pub seq: u64,
    /// Time of the window's first sample (RFC 3339, UTC).
    pub t0: String,
    /// Time of the window's end.
    pub t1: String,
    /// `t0` on the monotonic clock, nanoseconds.
    pub t0_mono_ns: u64,
    /// `t1` on the monotonic clock, nanoseconds.
    pub t1_mono_ns: u64,
    /// When the message was made (RFC 3339).
    pub ts: String,
    /// From the window's end to this message, milliseconds.
    pub latency_ms: f64,
    /// Model id (`name@sha256-prefix`) of the tower that embedded the window.
    pub model: String,
    /// The best labels, highest score first.
    pub labels: Vec<LabelScore>,
}

/// Schema id of [`LabelMessage`].
pub const LABELS_SCHEMA: &str = "labels/1";

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
}

/// The bounded queue between producers and the MQTT task. Overflow: drop the oldest, count it.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<OutMessage>>,
    capacity: usize,
    notify: tokio::sync::Notify,
    closed: AtomicBool,
    /// Messages accepted.
    pub enqueued: AtomicU64,
    /// Messages dropped because the outbox was full.
    pub dropped: AtomicU64,
    /// Messages handed to the MQTT client.
    pub sent: AtomicU64,
}

impl Outbox {
    /// An outbox for `capacity` messages (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::with_capacity(capacity.clamp(1, 4096))),
            capacity: capacity.max(1),
            notify: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            enqueued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<OutMessage>> {
        match self.queue.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues a message; never blocks. Drops (and counts) the oldest when full.
    pub fn push(&self, msg: OutMessage) {
        {
            let mut q = self.lock();
            if q.len() >= self.capacity {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(msg);
        }
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Takes the oldest message, if any.
    pub fn pop(&self) -> Option<OutMessage> {
        self.lock().pop_front()
    }

    /// Puts a message back at the front (it could not be handed over yet).
    pub fn unpop(&self, msg: OutMessage) {
        self.lock().push_front(msg);
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn outbox_drops_oldest_and_counts() {
        let o = Outbox::new(2);
        for i in 0..5u8 {
            o.push(OutMessage {
                topic: "t".into(),
                payload: vec![i],
                qos: 0,
                retain: false,
            });
        }
        assert_eq!(o.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(o.pop().map(|m| m.payload), Some(vec![3]));
        assert_eq!(o.pop().map(|m| m.payload), Some(vec![4]));
        assert!(o.pop().is_none());
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
