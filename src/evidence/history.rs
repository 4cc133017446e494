//! A sensor's recent past: the last `history_secs` of its raw samples, for the pre-roll of event clips.
//!
//! The window stage pushes every sample it drains from the source's ring (a frame is an `Arc` clone, never a copy
//! of its pixels; an audio block is copied once). Samples older than `history_secs` before the newest leave as
//! time passes; when the ring holds more than `max_bytes`, the oldest samples are dropped early and counted in
//! `dropped_total` (the clip's pre-roll is then shorter). The evidence writer reads a time range under the same
//! short lock, cloning `Arc`s.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::clock::Timestamp;
use crate::modality::Modality;
use crate::sources::{FrameImage, Sample};

/// Counters of one history ring.
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Samples pushed.
    pub pushed_total: AtomicU64,
    /// Samples dropped before their time because the ring reached `history_max_bytes`.
    pub dropped_total: AtomicU64,
    /// Bytes held now.
    pub bytes: AtomicU64,
    /// Bytes pushed since start (the history's write rate: bytes per second of history).
    pub bytes_total: AtomicU64,
}

#[derive(Debug, Default)]
struct Ring {
    items: VecDeque<(Sample, usize)>,
    bytes: usize,
}

/// One sensor's history ring.
#[derive(Debug)]
pub struct History {
    /// The sensor's modality.
    pub modality: Modality,
    /// Metres per unit of the sensor's raw depth values (depth sensors; raw PNGs are written in this unit).
    pub depth_unit_m: f64,
    keep_nanos: u64,
    max_bytes: usize,
    ring: Mutex<Ring>,
    /// Counters.
    pub stats: HistoryStats,
}

/// Approximate bytes a sample holds.
pub fn sample_bytes(s: &Sample) -> usize {
    match s {
        Sample::Frame { image, .. } => image.bytes(),
        Sample::Audio { samples, .. } => samples.len() * 4,
        Sample::Imu { .. } => 32,
        Sample::Text { text, .. } => text.len(),
    }
}

impl History {
    /// An empty ring keeping `secs` seconds and at most `max_bytes`.
    pub fn new(modality: Modality, secs: f64, max_bytes: u64, depth_unit_m: f64) -> Self {
        Self {
            modality,
            depth_unit_m,
            keep_nanos: (secs.max(0.0) * 1e9) as u64,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            ring: Mutex::new(Ring::default()),
            stats: HistoryStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        match self.ring.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Adds a sample (clone it: frames are `Arc`s); never blocks for long (the writer holds the lock only to clone).
    pub fn push(&self, sample: Sample) {
        let size = sample_bytes(&sample);
        let newest = sample.time().0;
        let mut ring = self.lock();
        ring.items.push_back((sample, size));
        ring.bytes += size;
        let horizon = newest.saturating_sub(self.keep_nanos);
        let mut dropped = 0;
        while let Some((front, sz)) = ring.items.front() {
            let expired = front.time().0 < horizon;
            if !expired && ring.bytes <= self.max_bytes {
                break;
            }
            if !expired {
                dropped += 1;
            }
            ring.bytes -= *sz;
            ring.items.pop_front();
        }
        let bytes = ring.bytes;
        drop(ring);
        self.stats.pushed_total.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_total.fetch_add(size as u64, Ordering::Relaxed);
        self.stats.bytes.store(bytes as u64, Ordering::Relaxed);
        if dropped > 0 {
            self.stats.dropped_total.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// The samples with times in `[from, to]`, oldest first (an audio block is included when it overlaps).
    pub fn range(&self, from: Timestamp, to: Timestamp) -> Vec<Sample> {
        let ring = self.lock();
        ring.items
            .iter()
            .filter(|(s, _)| {
                let t = s.time();
                let end = match s {
                    Sample::Audio { samples, rate_hz, .. } if *rate_hz > 0 => {
                        Timestamp(t.0 + (samples.len() as u64 * 1_000_000_000) / u64::from(*rate_hz))
                    }
                    _ => t,
                };
                end >= from && t <= to
            })
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The newest frame at or before `at`, else the oldest after it.
    pub fn frame_at(&self, at: Timestamp) -> Option<(Timestamp, FrameImage)> {
        let ring = self.lock();
        let frames = ring.items.iter().filter_map(|(s, _)| match s {
            Sample::Frame { t, image } => Some((*t, image.clone())),
            _ => None,
        });
        let mut best: Option<(Timestamp, FrameImage)> = None;
        for (t, image) in frames {
            match &best {
                _ if t <= at => best = Some((t, image)),
                None => return Some((t, image)),
                Some(_) => break,
            }
        }
        best
    }

    /// Samples held now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every sensor's history, by sensor name (shared by the window stages, the writer and stats).
#[derive(Debug, Default)]
pub struct Histories {
    by_sensor: RwLock<BTreeMap<String, Arc<History>>>,
}

impl Histories {
    /// Registers (or replaces) a sensor's ring.
    pub fn insert(&self, sensor: &str, history: Arc<History>) {
        match self.by_sensor.write() {
            Ok(mut m) => m.insert(sensor.to_owned(), history),
            Err(poisoned) => poisoned.into_inner().insert(sensor.to_owned(), history),
        };
    }

    /// Forgets a removed sensor.
    pub fn remove(&self, sensor: &str) {
        match self.by_sensor.write() {
            Ok(mut m) => m.remove(sensor),
            Err(poisoned) => poisoned.into_inner().remove(sensor),
        };
    }

    /// A sensor's ring.
    pub fn get(&self, sensor: &str) -> Option<Arc<History>> {
        match self.by_sensor.read() {
            Ok(m) => m.get(sensor).cloned(),
            Err(poisoned) => poisoned.into_inner().get(sensor).cloned(),
        }
    }

    /// Every ring, by sensor name.
    pub fn all(&self) -> BTreeMap<String, Arc<History>> {
        match self.by_sensor.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::image::RgbImage;

    fn frame(t_ms: u64, fill: u8) -> Sample {
        Sample::Frame {
            t: Timestamp(t_ms * 1_000_000),
            image: FrameImage::Rgb(Arc::new(RgbImage {
                width: 4,
                height: 4,
                planes: [vec![fill; 16], vec![0; 16], vec![0; 16]],
            })),
        }
    }

    #[test]
    fn keeps_the_last_seconds_and_shares_frames() {
        let h = History::new(Modality::Vision, 1.0, 1 << 20, 0.001);
        for i in 0..30 {
            h.push(frame(i * 100, i as u8));
        }
        // 2.9 s newest, keep 1 s: 1.9 .. 2.9 s.
        assert_eq!(h.len(), 11);
        assert_eq!(h.stats.dropped_total.load(Ordering::Relaxed), 0);
        let got = h.range(Timestamp(2_000_000_000), Timestamp(2_500_000_000));
        assert_eq!(got.len(), 6);
        let (t, _) = h.frame_at(Timestamp(2_450_000_000)).unwrap();
        assert_eq!(t, Timestamp(2_400_000_000));
        // The same Arc, not a copy.
        let s = frame(3000, 7);
        let Sample::Frame {
            image: FrameImage::Rgb(a),
            ..
        } = &s
        else {
            unreachable!()
        };
        let a = Arc::clone(a);
        h.push(s);
        assert_eq!(Arc::strong_count(&a), 2);
    }

    #[test]
    fn the_byte_cap_drops_oldest_and_counts() {
        // Each frame 48 bytes; 100 bytes hold 2.
        let h = History::new(Modality::Vision, 100.0, 100, 0.001);
        for i in 0..5 {
            h.push(frame(i, 0));
        }
        assert_eq!(h.len(), 2);
        assert_eq!(h.stats.dropped_total.load(Ordering::Relaxed), 3);
        assert_eq!(h.stats.bytes.load(Ordering::Relaxed), 96);
    }
}
