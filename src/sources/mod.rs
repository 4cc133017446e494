//! Sensors: everything that produces timestamped samples into a ring buffer.
//!
//! A source runs on its own named thread. It stamps each sample with the monotonic clock as close to its origin
//! as it can, and pushes it into the source's ring ([`crate::ring`]): the push never blocks, and when the window
//! stage falls behind the oldest samples are dropped and counted. Sources stop when the shutdown flag is raised.
//!
//! Implementations: [`replay`] (recorded files at their real pace), [`synthetic`] (test signals) and
//! [`serial`] (IMUs on a serial port), and behind cargo features (all on in the shipped build) `v4l2` cameras,
//! `gstreamer` pipelines and `microphone`s through cpal. Camera sources share [`camera`] and [`pixfmt`].

pub mod build;
pub mod camera;
pub mod config;
#[cfg(feature = "gstreamer")]
pub mod gstreamer;
#[cfg(feature = "microphone")]
pub mod microphone;
pub mod pixfmt;
pub mod replay;
pub mod serial;
pub mod synthetic;
#[cfg(feature = "v4l2")]
pub mod v4l2;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::preprocess::depth::DepthMap;
use crate::preprocess::image::{GrayImage, RgbImage};
use crate::ring::RingProducer;

/// One image-like frame.
#[derive(Debug, Clone)]
pub enum FrameImage {
    /// Colour (vision).
    Rgb(Arc<RgbImage>),
    /// One channel with its native range (thermal).
    Gray(Arc<GrayImage>),
    /// Metric depth (depth).
    Depth(Arc<DepthMap>),
}

impl FrameImage {
    /// Approximate memory held, in bytes.
    pub fn bytes(&self) -> usize {
        match self {
            FrameImage::Rgb(i) => i.width * i.height * 3,
            FrameImage::Gray(i) => i.samples.len() * 2,
            FrameImage::Depth(d) => d.metres.len() * 4,
        }
    }
}

/// A sample in a source's ring.
#[derive(Debug, Clone)]
pub enum Sample {
    /// A frame captured at `t`.
    Frame {
        /// Capture time.
        t: Timestamp,
        /// The frame.
        image: FrameImage,
    },
    /// Consecutive audio samples (first channel) starting at `t`.
    Audio {
        /// Time of the first sample.
        t: Timestamp,
        /// Samples per second.
        rate_hz: u32,
        /// Samples in [-1, 1].
        samples: Vec<f32>,
    },
    /// One IMU reading: acc x, y, z (m/s²), gyro x, y, z (rad/s).
    Imu {
        /// Measurement time.
        t: Timestamp,
        /// The six channels.
        values: [f32; 6],
    },
    /// A line of text.
    Text {
        /// Arrival time.
        t: Timestamp,
        /// The text.
        text: String,
    },
}

impl Sample {
    /// The sample's timestamp.
    pub fn time(&self) -> Timestamp {
        match self {
            Sample::Frame { t, .. } | Sample::Audio { t, .. } | Sample::Imu { t, .. } | Sample::Text { t, .. } => *t,
        }
    }

    /// The same sample stamped with `t` (a recording's offsets restamped with the clock as it is played).
    pub fn with_time(mut self, time: Timestamp) -> Self {
        match &mut self {
            Sample::Frame { t, .. } | Sample::Audio { t, .. } | Sample::Imu { t, .. } | Sample::Text { t, .. } => {
                *t = time;
            }
        }
        self
    }
}

/// The stop signal every component watches.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once raised.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early (returns true) when the flag is raised.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = std::time::Instant::now() + d;
        loop {
            if self.is_raised() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= end {
                return false;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }
}

/// Per-source counters, shared with the window stage and stats.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Samples (frames, audio blocks, IMU readings, lines) produced.
    pub samples_total: AtomicU64,
    /// Files or items that could not be read (the source skipped them).
    pub errors_total: AtomicU64,
    /// Bytes a device sent that did not decode (skipped; the decoder resynchronised).
    pub garbage_bytes_total: AtomicU64,
    /// Times the device was lost (read error, end of stream) after being open.
    pub lost_total: AtomicU64,
    /// The device is not open right now (hardware sources; recordings are never offline).
    pub offline: AtomicBool,
    /// Samples per second over the last full second, in milli-hertz.
    pub rate_mhz: AtomicU64,
    /// When the last sample was pushed (monotonic ns; 0 before the first).
    pub last_push_ns: AtomicU64,
    /// Gaps in the sample timestamps longer than the source's gap threshold (sources with a nominal rate).
    pub gaps_total: AtomicU64,
    /// The longest such gap, milliseconds.
    pub max_gap_ms: AtomicU64,
    /// Samples the device delivered that the source had to drop before they reached the ring (a microphone's
    /// capture buffer full, a driver reporting an overrun).
    pub overrun_samples_total: AtomicU64,
    /// Windows of this sensor scored against the prompts (counted by the controller; the systemd watchdog's
    /// measure of progress).
    pub windows_scored_total: AtomicU64,
    /// Of those, windows a gate found unchanged, scored with the previous embedding (counted by the controller).
    pub windows_gated_total: AtomicU64,
}

impl SourceStats {
    /// The measured rate in Hz: 0 when no sample arrived for two seconds.
    pub fn rate_hz(&self) -> f64 {
        let last = self.last_push_ns.load(Ordering::Relaxed);
        if last == 0 || crate::clock::now().0.saturating_sub(last) > 2_000_000_000 {
            return 0.0;
        }
        self.rate_mhz.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

/// Where a source puts its samples: the ring's producer plus a wake-up for the window thread. It also measures the
/// sample rate and, for sources that declare a nominal rate, gaps in the sample timestamps.
#[derive(Debug)]
pub struct SourceOutput {
    ring: RingProducer<Sample>,
    wake: Option<std::thread::Thread>,
    stats: Arc<SourceStats>,
    rate_window: (std::time::Instant, u64),
    last_t: Option<crate::clock::Timestamp>,
    gap_after: Option<Duration>,
}

impl SourceOutput {
    /// Wraps a ring producer; `wake` is the thread to unpark after each push.
    pub fn new(ring: RingProducer<Sample>, wake: Option<std::thread::Thread>, stats: Arc<SourceStats>) -> Self {
        Self {
            ring,
            wake,
            stats,
            rate_window: (std::time::Instant::now(), 0),
            last_t: None,
            gap_after: None,
        }
    }

    /// Declares the source's nominal rate: a step between consecutive sample timestamps longer than five periods
    /// (at least 100 ms) is then counted as a gap.
    pub fn expect_rate(&mut self, rate_hz: f64) {
        if rate_hz.is_finite() && rate_hz > 0.0 {
            self.gap_after = Some(Duration::from_secs_f64((5.0 / rate_hz).max(0.1)));
        }
    }

    /// Pushes a sample; never blocks (the ring drops its oldest sample when full).
    pub fn push(&mut self, sample: Sample) {
        self.stats.samples_total.fetch_add(1, Ordering::Relaxed);
        let t = sample.time();
        if let (Some(prev), Some(gap)) = (self.last_t, self.gap_after) {
            let step = t.since(prev);
            if step > gap {
                self.stats.gaps_total.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .max_gap_ms
                    .fetch_max(u64::try_from(step.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
        }
        self.last_t = Some(t);
        let (since, count) = &mut self.rate_window;
        *count += 1;
        let elapsed = since.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let mhz = (*count as f64 * 1000.0 / elapsed.as_secs_f64()) as u64;
            self.stats.rate_mhz.store(mhz, Ordering::Relaxed);
            self.rate_window = (std::time::Instant::now(), 0);
        }
        self.stats
            .last_push_ns
            .store(crate::clock::now().0.max(1), Ordering::Relaxed);
        self.ring.push(sample);
        if let Some(t) = &self.wake {
            t.unpark();
        }
    }

    /// The counters this output writes (for a driver callback that counts on its own).
    pub fn stats_handle(&self) -> Arc<SourceStats> {
        Arc::clone(&self.stats)
    }

    /// Records a skipped item.
    pub fn error(&self) {
        self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Records bytes a device sent that did not decode.
    pub fn garbage(&self, bytes: u64) {
        if bytes > 0 {
            self.stats.garbage_bytes_total.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Records that the device was lost.
    pub fn lost(&self) {
        self.stats.lost_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the device open or not. A device that comes back starts a new stream: the outage is counted in
    /// `lost_total`, not as a gap.
    pub fn set_online(&mut self, online: bool) {
        self.stats.offline.store(!online, Ordering::Relaxed);
        if online {
            self.last_t = None;
            self.rate_window = (std::time::Instant::now(), 0);
        }
    }
}

/// Why a source stopped for good.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: {reason}")]
pub struct SourceError {
    /// The source.
    pub source_name: String,
    /// What went wrong.
    pub reason: String,
}

/// A sensor.
pub trait Source: Send {
    /// Produces samples into `out` until `stop` is raised or the source is exhausted (a replay without looping).
    fn run(&mut self, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), SourceError>;
}

/// First wait before reopening a lost device; doubles on every failure up to [`REOPEN_BACKOFF_MAX`].
pub const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between attempts to reopen a device.
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The life of a hardware source: open the device, stream from it until it fails, and reopen it with a capped
/// backoff ([`REOPEN_BACKOFF_MIN`] doubling to [`REOPEN_BACKOFF_MAX`]; back to the minimum after a device that
/// streamed for longer than the maximum) until `stop` is raised.
///
/// `open` returns the open device and a description for the log; `stream` runs until `stop` (`Ok`) or until
/// the device fails, ends or stalls (`Err` with why). A panic inside either (a driver crate's bug, e.g. the `v4l`
/// crate unwrapping a device name that is not UTF-8) is caught and handled like a failure, so the source keeps
/// retrying instead of dying. The sensor is online exactly while a device is open; a
/// device lost after opening is counted in `lost_total`. The first failure to open is a warning naming why;
/// repeated failures are logged at debug level until the device has been open again.
pub fn run_with_reopen<D>(
    name: &str,
    kind: &str,
    out: &mut SourceOutput,
    stop: &StopFlag,
    mut open: impl FnMut(&mut SourceOutput) -> Result<(D, String), String>,
    mut stream: impl FnMut(&mut D, &mut SourceOutput, &StopFlag) -> Result<(), String>,
) {
    let mut backoff = REOPEN_BACKOFF_MIN;
    let mut warned = false;
    while !stop.is_raised() {
        let opened = std::time::Instant::now();
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open(out)))
            .unwrap_or_else(|p| Err(format!("the driver panicked: {}", crate::util::panic_message(&p))));
        match attempt {
            Ok((mut device, description)) => {
                out.set_online(true);
                tracing::info!(source = %name, device = %description, "Opened the {kind}.");
                warned = false;
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream(&mut device, out, stop)))
                    .unwrap_or_else(|p| Err(format!("the driver panicked: {}", crate::util::panic_message(&p))));
                if let Err(reason) = result {
                    out.lost();
                    out.set_online(false);
                    tracing::warn!(source = %name, device = %description, reason = %reason, retry_in = ?backoff, "Lost the {kind}; reopening.");
                } else {
                    break;
                }
            }
            Err(reason) => {
                out.set_online(false);
                if warned {
                    tracing::debug!(source = %name, reason = %reason, retry_in = ?backoff, "Cannot open the {kind}.");
                } else {
                    tracing::warn!(source = %name, reason = %reason, retry_in = ?backoff, "Cannot open the {kind}; retrying (further failures are logged at debug level).");
                    warned = true;
                }
            }
        }
        if opened.elapsed() > REOPEN_BACKOFF_MAX {
            backoff = REOPEN_BACKOFF_MIN;
        }
        if stop.sleep(backoff) {
            break;
        }
        backoff = (backoff * 2).min(REOPEN_BACKOFF_MAX);
    }
}

/// Paces a loop at real time: `wait_until(offset)` sleeps until `offset` after the pacer's start.
#[derive(Debug)]
pub struct Pacer {
    start: std::time::Instant,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// Starts the pacer now.
    pub fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
        }
    }

    /// Sleeps until `offset` after the start; true if interrupted by `stop`.
    pub fn wait_until(&self, offset: Duration, stop: &StopFlag) -> bool {
        let due = self.start + offset;
        let now = std::time::Instant::now();
        if due > now {
            stop.sleep(due - now)
        } else {
            stop.is_raised()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A driver that panics while opening, then while streaming, then streams until stopped: the source is
    /// offline, then online, counts one loss, and keeps going.
    #[test]
    fn driver_panics_are_failures_and_the_source_reopens() {
        let (producer, _consumer) = crate::ring::ring(4);
        let stats = Arc::new(SourceStats::default());
        let mut out = SourceOutput::new(producer, None, Arc::clone(&stats));
        let stop = StopFlag::new();
        let attempts = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), Arc::clone(&attempts));
        let handle = std::thread::Builder::new()
            .name("test-reopen".into())
            .spawn(move || {
                run_with_reopen(
                    "dev0",
                    "test device",
                    &mut out,
                    &flag,
                    |_| {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        assert!(n != 0, "a driver bug while opening");
                        Ok((n, format!("attempt {n}")))
                    },
                    |n, _, stop| {
                        assert!(*n != 1, "a driver bug while streaming");
                        while !stop.sleep(Duration::from_millis(10)) {}
                        Ok(())
                    },
                );
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while attempts.load(Ordering::SeqCst) < 3 {
            assert!(std::time::Instant::now() < until, "no third attempt");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(!stats.offline.load(Ordering::Relaxed), "online on the third attempt");
        assert_eq!(
            stats.lost_total.load(Ordering::Relaxed),
            1,
            "the panic while streaming is one loss"
        );
        stop.raise();
        assert!(handle.join().is_ok(), "the source thread itself never panics");
    }
}
