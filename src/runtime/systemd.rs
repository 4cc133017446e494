//! systemd integration: the `sd_notify` protocol (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`) and a
//! watchdog fed by pipeline progress.
//!
//! The notification socket is the datagram socket systemd names in `NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket); without it (not run by systemd) nothing is sent. `WATCHDOG_USEC` (and `WATCHDOG_PID`, when
//! set, naming this process) asks for `WATCHDOG=1` at least that often; the daemon pings every half of it, but only
//! while the pipeline makes progress: every enabled sensor that is online has had a window scored recently. A
//! stalled pipeline therefore stops the pings and systemd restarts the service; an unplugged camera (offline) or
//! a sensor switched off over MQTT does not.
//!
//! A notification that cannot be sent is logged at debug level and never stops the daemon.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::control::SensorInfo;

/// Where and how often to tell systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for through `NOTIFY_SOCKET` and `WATCHDOG_USEC`, if any.
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0)
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id())
            })
            .map(Duration::from_micros);
        match Self::new(std::path::Path::new(&path), watchdog) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = %path.to_string_lossy(), error = %e, "Cannot use systemd's notification socket.");
                None
            }
        }
    }

    /// A notifier sending to `socket` (a path, or `@name` for an abstract socket) that pings a watchdog of
    /// `watchdog`, if given.
    pub fn new(socket: &std::path::Path, watchdog: Option<Duration>) -> std::io::Result<Self> {
        let addr = socket_addr(socket)?;
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            addr,
            watchdog,
        })
    }

    /// The watchdog period systemd asked for.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (`READY=1`, `STATUS=…`, one or more `KEY=value` lines).
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!(error = %e, "Cannot notify systemd.");
        }
    }

    /// `STATUS=…` (one line: newlines are replaced).
    pub fn status(&self, text: &str) {
        self.notify(&format!("STATUS={}\n", text.replace('\n', " ")));
    }
}

#[cfg(target_os = "linux")]
fn socket_addr(socket: &std::path::Path) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match socket.as_os_str().as_bytes() {
        [b'@', name @ ..] => std::os::unix::net::SocketAddr::from_abstract_name(name),
        _ => std::os::unix::net::SocketAddr::from_pathname(socket),
    }
}

#[cfg(not(target_os = "linux"))]
fn socket_addr(socket: &std::path::Path) -> std::io::Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_pathname(socket)
}

/// Whether the pipeline makes progress: per sensor, when a window was last scored.
#[derive(Debug)]
pub struct Progress {
    sensors: Vec<Watched>,
}

#[derive(Debug)]
struct Watched {
    sensor: SensorInfo,
    limit: Duration,
    seen: u64,
    since: Instant,
}

/// What a progress check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// Every enabled, online sensor had a window scored within its limit.
    Progressing {
        /// Sensors watched (enabled and online).
        scoring: usize,
        /// Sensors offline (device gone) or switched off.
        idle: usize,
    },
    /// These sensors (name, seconds since their last scored window) are enabled and online but stuck.
    Stalled(Vec<(String, u64)>),
}

impl Progress {
    /// Watches `sensors` from `now`. A sensor stalls when no window of it was scored for twice its window plus four
    /// hops (a window has to fill, then wait for a batch and inference), and never sooner than `floor`.
    pub fn new(sensors: &[SensorInfo], floor: Duration, now: Instant) -> Self {
        Self {
            sensors: sensors
                .iter()
                .map(|s| Watched {
                    limit: Duration::from_secs_f64((2.0 * s.window_secs + 4.0 * s.hop_secs).clamp(0.0, 86_400.0))
                        .max(floor),
                    seen: s.stats.windows_scored_total.load(Ordering::Relaxed),
                    sensor: s.clone(),
                    since: now,
                })
                .collect(),
        }
    }

    /// Looks at every sensor at `now`.
    pub fn check(&mut self, now: Instant) -> Health {
        let (mut scoring, mut idle, mut stalled) = (0, 0, Vec::new());
        for w in &mut self.sensors {
            let scored = w.sensor.stats.windows_scored_total.load(Ordering::Relaxed);
            let watched = w.sensor.enabled.load(Ordering::Relaxed) && !w.sensor.stats.offline.load(Ordering::Relaxed);
            if scored != w.seen || !watched {
                // Progress, or not expected to progress: the clock starts again when it is watched again.
                w.seen = scored;
                w.since = now;
            }
            if !watched {
                idle += 1;
                continue;
            }
            scoring += 1;
            let quiet = now.saturating_duration_since(w.since);
            if quiet > w.limit {
                stalled.push((w.sensor.name.clone(), quiet.as_secs()));
            }
        }
        if stalled.is_empty() {
            Health::Progressing { scoring, idle }
        } else {
            Health::Stalled(stalled)
        }
    }
}

/// Pings the watchdog while the pipeline progresses and keeps `STATUS=` current; runs until aborted.
pub async fn watch(notifier: Arc<Notifier>, mut progress: Progress, mqtt_connected: impl Fn() -> Option<bool>) {
    let every = notifier
        .watchdog()
        .map_or(Duration::from_secs(5), |w| (w / 2).max(Duration::from_millis(10)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_stalled = false;
    loop {
        tick.tick().await;
        let mqtt = match mqtt_connected() {
            Some(true) => "; MQTT connected",
            Some(false) => "; MQTT disconnected",
            None => "",
        };
        match progress.check(Instant::now()) {
            Health::Progressing { scoring, idle } => {
                if was_stalled {
                    tracing::info!("The pipeline makes progress again; watchdog pings resume.");
                    was_stalled = false;
                }
                let ping = if notifier.watchdog().is_some() {
                    "WATCHDOG=1\n"
                } else {
                    ""
                };
                notifier.notify(&format!(
                    "{ping}STATUS=Running: {scoring} sensors scoring, {idle} offline or off{mqtt}\n"
                ));
            }
            Health::Stalled(stuck) => {
                let list: Vec<String> = stuck.iter().map(|(n, s)| format!("{n} ({s} s)")).collect();
                if !was_stalled {
                    tracing::error!(sensors = ?list, "No window scored recently on these online sensors; the watchdog is no longer pinged.");
                    was_stalled = true;
                }
                notifier.status(&format!("Stalled: no window scored recently on {}", list.join(", ")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::sources::SourceStats;

    fn sensor(name: &str) -> SensorInfo {
        SensorInfo {
            name: name.into(),
            modality: crate::modality::Modality::Imu,
            window_secs: 1.0,
            hop_secs: 0.5,
            stats: Arc::new(SourceStats::default()),
            enabled: Arc::new(AtomicBool::new(true)),
        }
    }

    #[test]
    fn a_sensor_without_scored_windows_stalls_after_its_limit() {
        let (a, b) = (sensor("a"), sensor("b"));
        let t0 = Instant::now();
        let mut p = Progress::new(&[a.clone(), b.clone()], Duration::from_secs(1), t0);
        // Limit: 2 × 1 s + 4 × 0.5 s = 4 s.
        assert_eq!(
            p.check(t0 + Duration::from_secs(3)),
            Health::Progressing { scoring: 2, idle: 0 }
        );
        a.stats.windows_scored_total.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            p.check(t0 + Duration::from_secs(4)),
            Health::Progressing { scoring: 2, idle: 0 }
        );
        assert_eq!(
            p.check(t0 + Duration::from_secs(5)),
            Health::Stalled(vec![("b".into(), 5)])
        );
    }

    #[test]
    fn offline_or_disabled_sensors_do_not_stall() {
        let (a, b) = (sensor("a"), sensor("b"));
        let t0 = Instant::now();
        let mut p = Progress::new(&[a.clone(), b.clone()], Duration::from_secs(1), t0);
        a.stats.offline.store(true, Ordering::Relaxed);
        b.enabled.store(false, Ordering::Relaxed);
        assert_eq!(
            p.check(t0 + Duration::from_secs(60)),
            Health::Progressing { scoring: 0, idle: 2 }
        );
        // Back online: its clock starts again then.
        a.stats.offline.store(false, Ordering::Relaxed);
        assert_eq!(
            p.check(t0 + Duration::from_secs(62)),
            Health::Progressing { scoring: 1, idle: 1 }
        );
        assert!(matches!(p.check(t0 + Duration::from_secs(67)), Health::Stalled(_)));
    }

    #[test]
    fn notifications_reach_a_datagram_socket_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(&path, Some(Duration::from_secs(2))).unwrap();
        n.notify("READY=1\n");
        n.status("two\nlines");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=two lines\n");
        assert_eq!(n.watchdog(), Some(Duration::from_secs(2)));
    }
}
