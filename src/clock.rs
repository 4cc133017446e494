//! Time: monotonic timestamps taken at the edge, wall-clock only at publish.
//!
//! A [`Timestamp`] is nanoseconds on the process's monotonic clock. Sources stamp samples as close to the
//! hardware as they can; windows carry the stamps of their first and last samples; the publisher converts to
//! wall-clock time (RFC 3339) using the offset measured when the clock was created.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Nanoseconds on the monotonic clock since the process's clock origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This timestamp plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Seconds as a float (for logs and rates).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
}

/// The process's monotonic clock and its anchor to wall-clock time.
#[derive(Debug)]
pub struct Clock {
    origin: Instant,
    wall_origin: SystemTime,
}

impl Clock {
    /// The process-wide clock (created on first use).
    pub fn global() -> &'static Clock {
        static CLOCK: OnceLock<Clock> = OnceLock::new();
        CLOCK.get_or_init(|| Clock {
            origin: Instant::now(),
            wall_origin: SystemTime::now(),
        })
    }

    /// Now, on the monotonic clock.
    pub fn now(&self) -> Timestamp {
        Timestamp(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// The wall-clock time of a monotonic timestamp.
    pub fn wall(&self, t: Timestamp) -> SystemTime {
        self.wall_origin + Duration::from_nanos(t.0)
    }
}

/// Now on the process clock.
pub fn now() -> Timestamp {
    Clock::global().now()
}

/// Maps a timestamp a driver took on the system's `CLOCK_MONOTONIC` (nanoseconds since boot: V4L2 buffers with
/// `V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`, ALSA status timestamps) onto the process clock, by how long ago it was.
/// A time in the future (a driver bug) maps to now.
pub fn from_system_monotonic(ns: u128) -> Timestamp {
    let raw_now = system_monotonic_ns();
    let ago = u64::try_from(raw_now.saturating_sub(ns)).unwrap_or(u64::MAX);
    let now = now();
    Timestamp(now.0.saturating_sub(ago))
}

/// `CLOCK_MONOTONIC` now, nanoseconds.
pub fn system_monotonic_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u128::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(t.tv_nsec).unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-08-20T10:11:12.345Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339 of a monotonic timestamp.
pub fn rfc3339_of(t: Timestamp) -> String {
    rfc3339(Clock::global().wall(t))
}

/// Where a component reads the time: injected, so tests can run it on scripted time.
pub trait TimeSource: Send + Sync {
    /// Now, on the monotonic clock.
    fn now(&self) -> Timestamp;

    /// Now, on the wall clock (for `ts`-like fields).
    fn wall_now(&self) -> SystemTime;
}

/// The process clock ([`now`]) and the system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessTime;

impl TimeSource for ProcessTime {
    fn now(&self) -> Timestamp {
        now()
    }

    fn wall_now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Time that moves only when told to (tests); wall time is the process clock's wall time of the scripted instant.
#[derive(Debug, Default)]
pub struct ScriptedTime {
    nanos: std::sync::atomic::AtomicU64,
}

impl ScriptedTime {
    /// Scripted time starting at `t`.
    pub fn new(t: Timestamp) -> Self {
        Self {
            nanos: std::sync::atomic::AtomicU64::new(t.0),
        }
    }

    /// Jumps to `t`.
    pub fn set(&self, t: Timestamp) {
        self.nanos.store(t.0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves on by `d`.
    pub fn advance(&self, d: Duration) {
        self.set(self.now().plus(d));
    }
}

impl TimeSource for ScriptedTime {
    fn now(&self) -> Timestamp {
        Timestamp(self.nanos.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn wall_now(&self) -> SystemTime {
        Clock::global().wall(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_monotonic_times_map_by_age() {
        // Times before the process clock's origin map to 0: let it run past the age tested.
        while now().0 < 100_000_000 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let raw = system_monotonic_ns();
        let before = now();
        let t = from_system_monotonic(raw - 50_000_000);
        let after = now();
        assert!(
            t.0 + 50_000_000 >= before.0.saturating_sub(1_000_000),
            "{t:?} {before:?}"
        );
        assert!(t.0 + 50_000_000 <= after.0 + 1_000_000, "{t:?} {after:?}");
        assert!(from_system_monotonic(raw + 10_000_000_000) <= now());
    }

    #[test]
    fn timestamps_are_monotonic_and_convert_to_wall_time() {
        let a = now();
        let b = now();
        assert!(b >= a);
        let s = rfc3339_of(a);
        assert!(s.ends_with('Z') && s.len() == 24, "{s}");
        assert_eq!(Timestamp(5).plus(Duration::from_nanos(7)), Timestamp(12));
        assert_eq!(Timestamp(5).since(Timestamp(9)), Duration::ZERO);
    }
}
