//! The MQTT connection as a state machine: its [`Phase`], the messages in flight, the reconnect backoff, the
//! first-connect report, republication after a connect, and the shutdown decisions (flush, `offline`, deadline).
//!
//! Pure and synchronous: no socket, no clock, no shared state. The driver ([`super::run`]) polls rumqttc, turns
//! what happens into an [`Event`] stamped with the time, and carries out the [`Action`]s that come back, in order.
//! The tests below drive it with events alone.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::FirstConnect;
use crate::clock::Timestamp;
use crate::publish::{Class, OutMessage};

/// Most messages handed to the client and not yet acknowledged (rumqttc's default inflight window is 100).
pub(super) const MAX_UNACKED: usize = 80;
/// First reconnect pause; it doubles after every failure up to [`BACKOFF_MAX`], jittered ±25 %.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest reconnect pause (before jitter).
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the driver may wait for something to happen while no stop is pending.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Polling rumqttc, which (re)connects: before the first CONNACK and after every backoff.
    Connecting,
    /// The broker accepted the connection: messages may be handed over.
    Connected,
    /// The connection failed; no polling until `until`. `attempt` counts the failures since the last CONNACK.
    Backoff { until: Timestamp, attempt: u32 },
    /// Everything was acknowledged after a stop: `offline` was handed over at `since`; DISCONNECT follows its
    /// acknowledgement (`disconnecting` once it is queued).
    Closing { since: Timestamp, disconnecting: bool },
    /// Finished: the driver returns.
    Closed,
}

/// A failed or broken connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    /// The error, for logs and the first-connect report.
    pub error: String,
    /// Why the broker refused us (login, client id, TLS): a configuration error. `None` for network errors.
    pub refusal: Option<String>,
}

/// What happened, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// The broker accepted the connection (rumqttc reports a refused CONNACK as a [`Event::Failed`]).
    ConnAck,
    /// The driver queued this many retained state messages after [`Action::Republish`].
    RetainedQueued(usize),
    /// A message was handed to the client.
    Handed(OutMessage),
    /// rumqttc wrote the oldest handed message, with this packet id (0 for QoS 0).
    Written(u16),
    /// The broker acknowledged this packet id (PUBACK, or PUBCOMP for QoS 2).
    Acked(u16),
    /// The connection attempt failed or the connection broke.
    Failed(Failure),
    /// The pause of [`Action::Sleep`] is over (or a stop cut it short).
    BackoffOver,
    /// The daemon asked the connection to stop.
    StopRequested,
    /// A look at the outbox, once per turn of the driver: decides the flush, `offline` and the deadline.
    Tick { outbox_closed: bool, outbox_empty: bool },
    /// rumqttc wrote the DISCONNECT.
    DisconnectSent,
}

/// How a failure is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FailureLog {
    /// The broker refused us (error: a configuration problem).
    Refused(String),
    /// The first failure after a connect or at start (warning).
    First,
    /// Still failing, already logged (debug).
    Again,
    /// Lost while closing (warning); the task ends.
    WhileClosing,
}

/// Why the task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ending {
    /// DISCONNECT went out after the flush.
    Disconnected,
    /// Stop requested and the outbox closed while there is no connection: what is queued is lost.
    Unreachable,
    /// The connection broke while closing.
    LostWhileClosing,
    /// The shutdown deadline passed `waited` after the stop, with `in_flight` messages not acknowledged.
    Deadline { waited: Duration, in_flight: usize },
}

/// What the driver does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Count and log the connection; `again` after a failure that was logged.
    Connected { again: bool },
    /// Send the first attempt's outcome to whoever waits for it (at most once).
    ReportFirst(FirstConnect),
    /// Subscribe to the command topics.
    Subscribe,
    /// Queue the whole retained state ahead of everything, then report [`Event::RetainedQueued`].
    Republish,
    /// Count an acknowledged message.
    Acked,
    /// Every retained message queued after the last CONNACK is acknowledged, `took` after the CONNACK.
    RepublishDone { took: Duration },
    /// Count and log a failure.
    Lost { error: String, log: FailureLog },
    /// Put these unacknowledged messages back at the front of the outbox, oldest first.
    Requeue(Vec<OutMessage>),
    /// Wait this long before polling again (a stop may cut it short), then report [`Event::BackoffOver`].
    Sleep(Duration),
    /// Publish `offline` (retained) and report it as [`Event::Handed`], so that it is tracked until acknowledged.
    SayOffline,
    /// Queue the DISCONNECT.
    Disconnect,
    /// End the task.
    Finish(Ending),
}

/// Messages handed to the client: in order until rumqttc writes them, then by packet id until acknowledged.
#[derive(Debug, Default)]
struct InFlight {
    written_order: u64,
    handed: VecDeque<OutMessage>,
    unacked: BTreeMap<u16, (u64, OutMessage)>,
}

impl InFlight {
    fn len(&self) -> usize {
        self.handed.len() + self.unacked.len()
    }

    /// The oldest handed message was written as `pkid`: QoS ≥ 1 waits for its acknowledgement, QoS 0 is done.
    fn written(&mut self, pkid: u16) {
        if let Some(msg) = self.handed.pop_front()
            && msg.qos > 0
        {
            self.written_order += 1;
            self.unacked.insert(pkid, (self.written_order, msg));
        }
    }

    /// Everything not acknowledged, oldest first (written in write order, then handed); clears the tracking.
    fn take_all(&mut self) -> Vec<OutMessage> {
        let mut sent: Vec<(u64, OutMessage)> = std::mem::take(&mut self.unacked).into_values().collect();
        sent.sort_by_key(|(order, _)| *order);
        sent.into_iter()
            .map(|(_, m)| m)
            .chain(std::mem::take(&mut self.handed))
            .collect()
    }
}

/// Jittered exponential backoff.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
            attempt: 0,
        }
    }
}

impl Backoff {
    /// The pause after one more failure at `now`, and the failure's number. The jitter (0.75–1.25) comes from
    /// the nanoseconds of `now`, so the same times give the same pauses.
    fn failed(&mut self, now: Timestamp) -> (Duration, u32) {
        let jitter = 0.75 + 0.5 * (now.0 % 1000) as f64 / 1000.0;
        let pause = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        (pause, self.attempt)
    }
}

/// The connection's state; see the module documentation.
#[derive(Debug)]
pub(super) struct ConnectionState {
    phase: Phase,
    in_flight: InFlight,
    backoff: Backoff,
    first_reported: bool,
    /// A failure was logged since the last CONNACK.
    failing: bool,
    /// Since the last CONNACK, and how many retained messages are still to be acknowledged.
    republish: Option<(Timestamp, usize)>,
    stop_seen: Option<Timestamp>,
    deadline: Duration,
}

impl ConnectionState {
    /// A connection about to make its first attempt; after a stop it ends within `deadline`.
    pub(super) fn new(deadline: Duration) -> Self {
        Self {
            phase: Phase::Connecting,
            in_flight: InFlight::default(),
            backoff: Backoff::default(),
            first_reported: false,
            failing: false,
            republish: None,
            stop_seen: None,
            deadline,
        }
    }

    /// The phase now.
    #[cfg(test)]
    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// Messages handed to the client and not acknowledged yet.
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether the driver may hand one more message to the client.
    pub(super) fn may_hand(&self) -> bool {
        self.phase == Phase::Connected && self.in_flight.len() < MAX_UNACKED
    }

    /// Whether a stop was requested.
    pub(super) fn stop_requested(&self) -> bool {
        self.stop_seen.is_some()
    }

    /// How long the driver may wait for something to happen: the time left before the deadline once a stop was
    /// requested.
    pub(super) fn wait(&self, now: Timestamp) -> Duration {
        self.stop_seen
            .map_or(IDLE_WAIT, |since| self.deadline.saturating_sub(now.since(since)))
    }

    /// Takes in what happened at `now`; returns what to do, in order.
    pub(super) fn handle(&mut self, now: Timestamp, event: Event) -> Vec<Action> {
        if self.phase == Phase::Closed {
            return Vec::new();
        }
        match event {
            Event::ConnAck => self.connected(),
            Event::RetainedQueued(n) => {
                self.republish = (n > 0).then_some((now, n));
                Vec::new()
            }
            Event::Handed(msg) => {
                self.in_flight.handed.push_back(msg);
                Vec::new()
            }
            Event::Written(pkid) => {
                self.in_flight.written(pkid);
                Vec::new()
            }
            Event::Acked(pkid) => self.acked(now, pkid),
            Event::Failed(failure) => self.failed(now, failure),
            Event::BackoffOver => {
                if let Phase::Backoff { .. } = self.phase {
                    self.phase = Phase::Connecting;
                }
                Vec::new()
            }
            Event::StopRequested => {
                self.stop_seen.get_or_insert(now);
                Vec::new()
            }
            Event::Tick {
                outbox_closed,
                outbox_empty,
            } => self.tick(now, outbox_closed, outbox_empty),
            Event::DisconnectSent => {
                self.phase = Phase::Closed;
                vec![Action::Finish(Ending::Disconnected)]
            }
        }
    }

    fn connected(&mut self) -> Vec<Action> {
        if let Phase::Closing { .. } = self.phase {
            return Vec::new();
        }
        self.phase = Phase::Connected;
        self.backoff = Backoff::default();
        let mut actions = vec![Action::Connected {
            again: std::mem::take(&mut self.failing),
        }];
        if !std::mem::replace(&mut self.first_reported, true) {
            actions.push(Action::ReportFirst(FirstConnect::Connected));
        }
        actions.extend([Action::Subscribe, Action::Republish]);
        actions
    }

    fn acked(&mut self, now: Timestamp, pkid: u16) -> Vec<Action> {
        let Some((_, msg)) = self.in_flight.unacked.remove(&pkid) else {
            return Vec::new();
        };
        let mut actions = vec![Action::Acked];
        if msg.retain
            && msg.class == Class::State
            && let Some((since, left)) = self.republish.as_mut()
        {
            *left = left.saturating_sub(1);
            if *left == 0 {
                actions.push(Action::RepublishDone {
                    took: now.since(*since),
                });
                self.republish = None;
            }
        }
        actions
    }

    fn failed(&mut self, now: Timestamp, failure: Failure) -> Vec<Action> {
        let closing = matches!(self.phase, Phase::Closing { .. });
        let log = match &failure.refusal {
            _ if closing => FailureLog::WhileClosing,
            Some(why) => FailureLog::Refused(why.clone()),
            None if self.failing => FailureLog::Again,
            None => FailureLog::First,
        };
        let mut actions = vec![Action::Lost {
            error: failure.error.clone(),
            log,
        }];
        let pending = self.in_flight.take_all();
        if !pending.is_empty() {
            actions.push(Action::Requeue(pending));
        }
        self.republish = None;
        if !std::mem::replace(&mut self.first_reported, true) {
            actions.push(Action::ReportFirst(match failure.refusal {
                Some(why) => FirstConnect::Rejected(why),
                None => FirstConnect::Unreachable(failure.error),
            }));
        }
        if closing {
            self.phase = Phase::Closed;
            actions.push(Action::Finish(Ending::LostWhileClosing));
            return actions;
        }
        self.failing = true;
        let (pause, attempt) = self.backoff.failed(now);
        self.phase = Phase::Backoff {
            until: now.plus(pause),
            attempt,
        };
        actions.push(Action::Sleep(pause));
        actions
    }

    /// After a stop: flush, then `offline` once everything is acknowledged, then DISCONNECT once `offline` is; give
    /// up when the broker is away and nothing more will come, or at the deadline.
    ///
    /// Waiting for the acknowledgements matters: a client that closes its socket while the broker's PUBACKs are
    /// still coming makes the broker see an error rather than the DISCONNECT (mosquitto 2.0 logs "disconnected due
    /// to out of memory"), and the broker then drops what it had not read yet and sends the Last Will.
    fn tick(&mut self, now: Timestamp, outbox_closed: bool, outbox_empty: bool) -> Vec<Action> {
        let Some(since) = self.stop_seen else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        match self.phase {
            Phase::Connecting | Phase::Backoff { .. } if outbox_closed => {
                self.phase = Phase::Closed;
                return vec![Action::Finish(Ending::Unreachable)];
            }
            Phase::Connected if outbox_closed && outbox_empty && self.in_flight.len() == 0 => {
                self.phase = Phase::Closing {
                    since: now,
                    disconnecting: false,
                };
                actions.push(Action::SayOffline);
            }
            Phase::Closing {
                since: offline_at,
                disconnecting: false,
            } if self.in_flight.len() == 0 => {
                self.phase = Phase::Closing {
                    since: offline_at,
                    disconnecting: true,
                };
                actions.push(Action::Disconnect);
            }
            _ => {}
        }
        let waited = now.since(since);
        if waited >= self.deadline {
            self.phase = Phase::Closed;
            actions.push(Action::Finish(Ending::Deadline {
                waited,
                in_flight: self.in_flight.len(),
            }));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(5);

    /// A time whose jitter factor is exactly 1 (nanoseconds ≡ 500 mod 1000).
    fn at(ms: u64) -> Timestamp {
        Timestamp(ms * 1_000_000 + 500)
    }

    fn event(n: u8) -> OutMessage {
        OutMessage::event(format!("ev/{n}"), vec![n])
    }

    fn lost(error: &str) -> Event {
        Event::Failed(Failure {
            error: error.into(),
            refusal: None,
        })
    }

    fn refused(why: &str) -> Event {
        Event::Failed(Failure {
            error: "Connection refused".into(),
            refusal: Some(why.into()),
        })
    }

    fn tick(closed: bool, empty: bool) -> Event {
        Event::Tick {
            outbox_closed: closed,
            outbox_empty: empty,
        }
    }

    fn connected() -> ConnectionState {
        let mut s = ConnectionState::new(DEADLINE);
        s.handle(at(0), Event::ConnAck);
        s
    }

    /// Hands `msgs` over and has rumqttc write them with packet ids from `first_pkid`.
    fn hand_and_write(s: &mut ConnectionState, msgs: &[OutMessage], first_pkid: u16) {
        for (i, m) in msgs.iter().enumerate() {
            assert!(s.may_hand());
            assert!(s.handle(at(1), Event::Handed(m.clone())).is_empty());
            s.handle(at(1), Event::Written(first_pkid.wrapping_add(i as u16)));
        }
    }

    fn requeued(actions: &[Action]) -> Vec<OutMessage> {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Requeue(m) => Some(m.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn sleep_of(actions: &[Action]) -> Option<Duration> {
        actions.iter().find_map(|a| match a {
            Action::Sleep(d) => Some(*d),
            _ => None,
        })
    }

    #[test]
    fn connack_reports_connected_first_then_subscribes_and_republishes() {
        let mut s = ConnectionState::new(DEADLINE);
        assert_eq!(s.phase(), Phase::Connecting);
        assert!(!s.may_hand(), "nothing is handed over before the CONNACK");
        let actions = s.handle(at(0), Event::ConnAck);
        assert_eq!(
            actions,
            [
                Action::Connected { again: false },
                Action::ReportFirst(FirstConnect::Connected),
                Action::Subscribe,
                Action::Republish,
            ]
        );
        assert_eq!(s.phase(), Phase::Connected);
        assert!(s.may_hand());
    }

    #[test]
    fn reconnect_republishes_again_without_a_second_first_report() {
        let mut s = connected();
        s.handle(at(10), lost("reset by peer"));
        s.handle(at(600), Event::BackoffOver);
        let actions = s.handle(at(700), Event::ConnAck);
        assert_eq!(
            actions,
            [Action::Connected { again: true }, Action::Subscribe, Action::Republish]
        );
        let again = s.handle(at(800), lost("reset"));
        assert!(!again.iter().any(|a| matches!(a, Action::ReportFirst(_))));
    }

    #[test]
    fn hand_over_stops_at_the_unacknowledged_window() {
        let mut s = connected();
        let msgs: Vec<OutMessage> = (0..MAX_UNACKED).map(|i| event(i as u8)).collect();
        hand_and_write(&mut s, &msgs, 1);
        assert_eq!(s.in_flight(), MAX_UNACKED);
        assert!(!s.may_hand(), "window full");
        assert_eq!(s.handle(at(2), Event::Acked(1)), [Action::Acked]);
        assert!(s.may_hand(), "one acknowledgement opens the window again");
    }

    #[test]
    fn pubacks_clear_in_flight_and_unknown_ids_are_ignored() {
        let mut s = connected();
        hand_and_write(&mut s, &[event(1), event(2)], 7);
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.handle(at(2), Event::Acked(8)), [Action::Acked]);
        assert_eq!(s.handle(at(2), Event::Acked(8)), [], "a second PUBACK counts nothing");
        assert_eq!(s.handle(at(2), Event::Acked(99)), []);
        assert_eq!(s.handle(at(2), Event::Acked(7)), [Action::Acked]);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(requeued(&s.handle(at(3), lost("eof"))), []);
    }

    #[test]
    fn qos0_messages_leave_tracking_once_written() {
        let mut s = connected();
        let embedding = OutMessage::embedding("emb".into(), vec![0]);
        s.handle(at(1), Event::Handed(embedding.clone()));
        assert_eq!(s.in_flight(), 1);
        s.handle(at(1), Event::Written(0));
        assert_eq!(s.in_flight(), 0, "QoS 0 is never acknowledged");
    }

    #[test]
    fn disconnect_requeues_exactly_the_unacknowledged_messages_in_order() {
        let mut s = connected();
        // Packet ids wrap: the order is the write order, not the id order.
        let written = [event(1), event(2), event(3), event(4)];
        hand_and_write(&mut s, &written, u16::MAX - 1);
        s.handle(at(2), Event::Acked(u16::MAX)); // event 2
        // Handed over, not yet written by rumqttc.
        s.handle(at(2), Event::Handed(event(5)));
        s.handle(at(2), Event::Handed(event(6)));
        let actions = s.handle(at(3), lost("connection reset"));
        assert_eq!(requeued(&actions), [event(1), event(3), event(4), event(5), event(6)]);
        assert_eq!(s.in_flight(), 0);
        assert!(matches!(s.phase(), Phase::Backoff { attempt: 1, .. }));
        assert!(!s.may_hand());
    }

    #[test]
    fn failures_back_off_doubling_to_the_cap_and_reset_after_a_connack() {
        let mut s = connected();
        let mut pauses = Vec::new();
        for i in 0..9u64 {
            let now = at(1000 * i);
            let actions = s.handle(now, lost("refused"));
            let pause = sleep_of(&actions).unwrap_or_default();
            assert_eq!(
                s.phase(),
                Phase::Backoff {
                    until: now.plus(pause),
                    attempt: i as u32 + 1
                }
            );
            assert_eq!(s.handle(now.plus(pause), Event::BackoffOver), []);
            assert_eq!(s.phase(), Phase::Connecting);
            pauses.push(pause.as_millis());
        }
        assert_eq!(pauses, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        s.handle(at(100_000), Event::ConnAck);
        let actions = s.handle(at(100_001), lost("reset"));
        assert_eq!(sleep_of(&actions), Some(BACKOFF_FIRST));
        assert!(matches!(s.phase(), Phase::Backoff { attempt: 1, .. }));
    }

    #[test]
    fn backoff_jitter_stays_within_a_quarter() {
        for nanos in [0, 1, 499, 999] {
            let mut s = ConnectionState::new(DEADLINE);
            let pause = sleep_of(&s.handle(Timestamp(nanos), lost("x"))).unwrap_or_default();
            assert!(
                pause >= BACKOFF_FIRST.mul_f64(0.75) && pause < BACKOFF_FIRST.mul_f64(1.25),
                "{pause:?}"
            );
        }
    }

    #[test]
    fn rejected_first_attempt_reports_rejected_and_keeps_retrying() {
        let mut s = ConnectionState::new(DEADLINE);
        let actions = s.handle(at(0), refused("the broker rejected the user name or password"));
        let why = "the broker rejected the user name or password".to_owned();
        assert_eq!(
            actions,
            [
                Action::Lost {
                    error: "Connection refused".into(),
                    log: FailureLog::Refused(why.clone()),
                },
                Action::ReportFirst(FirstConnect::Rejected(why)),
                Action::Sleep(BACKOFF_FIRST),
            ]
        );
    }

    #[test]
    fn unreachable_first_attempt_is_reported_once() {
        let mut s = ConnectionState::new(DEADLINE);
        let first = s.handle(at(0), lost("connection refused (os error 111)"));
        let reports: Vec<&Action> = first.iter().filter(|a| matches!(a, Action::ReportFirst(_))).collect();
        assert_eq!(
            reports,
            [&Action::ReportFirst(FirstConnect::Unreachable(
                "connection refused (os error 111)".into()
            ))]
        );
        s.handle(at(600), Event::BackoffOver);
        let second = s.handle(at(700), lost("connection refused (os error 111)"));
        assert!(!second.iter().any(|a| matches!(a, Action::ReportFirst(_))));
        s.handle(at(2000), Event::BackoffOver);
        let connack = s.handle(at(2100), Event::ConnAck);
        assert!(!connack.iter().any(|a| matches!(a, Action::ReportFirst(_))));
    }

    #[test]
    fn failures_are_logged_loudly_once_then_quietly_until_a_connack() {
        let mut s = connected();
        let log_of = |actions: Vec<Action>| {
            actions.into_iter().find_map(|a| match a {
                Action::Lost { log, .. } => Some(log),
                _ => None,
            })
        };
        assert_eq!(log_of(s.handle(at(1), lost("a"))), Some(FailureLog::First));
        assert_eq!(log_of(s.handle(at(2), lost("b"))), Some(FailureLog::Again));
        assert_eq!(
            log_of(s.handle(at(3), refused("bad login"))),
            Some(FailureLog::Refused("bad login".into())),
            "a refusal is an error every time"
        );
        s.handle(at(4), Event::ConnAck);
        assert_eq!(log_of(s.handle(at(5), lost("c"))), Some(FailureLog::First));
    }

    #[test]
    fn republish_is_done_when_every_retained_state_is_acknowledged() {
        let mut s = connected();
        s.handle(at(10), Event::RetainedQueued(2));
        let online = OutMessage::state("p/d/availability".into(), "online");
        let info = OutMessage::state("p/d/info".into(), "{}");
        hand_and_write(&mut s, &[online, event(1), info], 1);
        assert_eq!(s.handle(at(20), Event::Acked(1)), [Action::Acked]);
        assert_eq!(
            s.handle(at(25), Event::Acked(2)),
            [Action::Acked],
            "an event is not state"
        );
        assert_eq!(
            s.handle(at(52), Event::Acked(3)),
            [
                Action::Acked,
                Action::RepublishDone {
                    took: Duration::from_millis(42)
                }
            ]
        );
    }

    #[test]
    fn republish_cut_by_a_disconnect_is_never_reported_done() {
        let mut s = connected();
        s.handle(at(10), Event::RetainedQueued(1));
        hand_and_write(&mut s, &[OutMessage::state("p/d/info".into(), "{}")], 1);
        s.handle(at(11), lost("reset"));
        s.handle(at(600), Event::BackoffOver);
        s.handle(at(700), Event::ConnAck);
        s.handle(at(700), Event::RetainedQueued(0));
        hand_and_write(&mut s, &[OutMessage::state("p/d/info".into(), "{}")], 1);
        assert_eq!(s.handle(at(720), Event::Acked(1)), [Action::Acked]);
    }

    #[test]
    fn tick_without_a_stop_does_nothing_and_waits_idle() {
        let mut s = ConnectionState::new(DEADLINE);
        assert_eq!(s.handle(at(0), tick(true, true)), []);
        assert_eq!(s.wait(at(0)), IDLE_WAIT);
        assert!(!s.stop_requested());
    }

    #[test]
    fn stop_while_connected_flushes_then_says_offline_and_disconnects() {
        let mut s = connected();
        s.handle(at(100), Event::StopRequested);
        assert!(s.stop_requested());
        assert_eq!(s.wait(at(1100)), DEADLINE - Duration::from_secs(1));
        assert_eq!(
            s.handle(at(100), tick(false, true)),
            [],
            "the outbox may still get messages"
        );
        assert_eq!(s.handle(at(200), tick(true, false)), [], "messages still queued");
        s.handle(at(300), Event::Handed(event(1)));
        assert_eq!(
            s.handle(at(300), tick(true, true)),
            [],
            "rumqttc has not written it yet"
        );
        s.handle(at(310), Event::Written(1));
        assert_eq!(
            s.handle(at(315), tick(true, true)),
            [],
            "written, not acknowledged: closing the socket now can lose it at the broker"
        );
        assert_eq!(s.handle(at(318), Event::Acked(1)), [Action::Acked]);
        assert_eq!(s.handle(at(320), tick(true, true)), [Action::SayOffline]);
        assert_eq!(
            s.phase(),
            Phase::Closing {
                since: at(320),
                disconnecting: false
            }
        );
        assert!(!s.may_hand());
        // The driver published `offline` and reports it handed; it is tracked like any message.
        assert_eq!(
            s.handle(at(321), Event::Handed(OutMessage::state("a".into(), "offline"))),
            []
        );
        assert_eq!(s.handle(at(322), tick(true, true)), [], "offline is said once");
        s.handle(at(323), Event::Written(2));
        assert_eq!(s.handle(at(324), tick(true, true)), [], "offline not acknowledged yet");
        assert_eq!(s.handle(at(325), Event::Acked(2)), [Action::Acked]);
        assert_eq!(s.handle(at(326), tick(true, true)), [Action::Disconnect]);
        assert_eq!(s.handle(at(327), tick(true, true)), [], "DISCONNECT is queued once");
        assert_eq!(
            s.handle(at(340), Event::DisconnectSent),
            [Action::Finish(Ending::Disconnected)]
        );
        assert_eq!(s.phase(), Phase::Closed);
    }

    #[test]
    fn stop_while_disconnected_ends_once_the_outbox_is_closed() {
        let mut s = ConnectionState::new(DEADLINE);
        s.handle(at(0), lost("no route to host"));
        s.handle(at(100), Event::StopRequested);
        assert_eq!(s.handle(at(100), tick(false, false)), []);
        assert_eq!(
            s.handle(at(200), tick(true, false)),
            [Action::Finish(Ending::Unreachable)]
        );
        assert_eq!(s.phase(), Phase::Closed);
    }

    #[test]
    fn stop_while_disconnected_with_the_outbox_open_ends_at_the_deadline() {
        let mut s = ConnectionState::new(DEADLINE);
        s.handle(at(0), Event::StopRequested);
        assert_eq!(s.handle(at(4999), tick(false, true)), []);
        assert_eq!(s.wait(at(4999)), Duration::from_millis(1));
        assert_eq!(
            s.handle(at(5000), tick(false, true)),
            [Action::Finish(Ending::Deadline {
                waited: DEADLINE,
                in_flight: 0
            })]
        );
        assert_eq!(s.wait(at(6000)), Duration::ZERO);
    }

    #[test]
    fn flush_that_outlasts_the_deadline_ends_with_the_count_in_flight() {
        let mut s = connected();
        hand_and_write(&mut s, &[event(1), event(2)], 1);
        s.handle(at(1000), Event::StopRequested);
        assert_eq!(
            s.handle(at(1000), tick(true, true)),
            [],
            "waits for the acknowledgements"
        );
        assert_eq!(
            s.handle(at(6000), tick(true, true)),
            [Action::Finish(Ending::Deadline {
                waited: DEADLINE,
                in_flight: 2
            })]
        );
    }

    #[test]
    fn failure_while_closing_ends_instead_of_backing_off() {
        let mut s = connected();
        s.handle(at(10), Event::StopRequested);
        assert_eq!(s.handle(at(10), tick(true, true)), [Action::SayOffline]);
        let offline = OutMessage::state("a".into(), "offline");
        s.handle(at(11), Event::Handed(offline.clone()));
        s.handle(at(12), Event::Written(1));
        let actions = s.handle(at(20), lost("broken pipe"));
        assert_eq!(
            actions,
            [
                Action::Lost {
                    error: "broken pipe".into(),
                    log: FailureLog::WhileClosing
                },
                Action::Requeue(vec![offline]),
                Action::Finish(Ending::LostWhileClosing),
            ]
        );
        assert_eq!(s.phase(), Phase::Closed);
    }

    #[test]
    fn failure_while_waiting_for_the_last_acknowledgements_requeues_and_ends_unreachable() {
        let mut s = connected();
        hand_and_write(&mut s, &[event(1)], 1);
        s.handle(at(10), Event::StopRequested);
        assert_eq!(s.handle(at(10), tick(true, true)), []);
        let actions = s.handle(at(20), lost("broken pipe"));
        assert_eq!(actions[1], Action::Requeue(vec![event(1)]));
        assert_eq!(
            s.handle(at(30), tick(true, false)),
            [Action::Finish(Ending::Unreachable)]
        );
    }

    #[test]
    fn closed_connection_ignores_every_event() {
        let mut s = connected();
        s.handle(at(0), Event::DisconnectSent);
        for e in [
            Event::ConnAck,
            lost("x"),
            Event::StopRequested,
            tick(true, true),
            Event::Handed(event(1)),
        ] {
            assert_eq!(s.handle(at(1), e), []);
        }
        assert_eq!(s.phase(), Phase::Closed);
    }
}
