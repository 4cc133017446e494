//! The evidence writer: a bounded job queue filled by the controller and one blocking thread, `evidence-writer`,
//! that reads the sensor's history, encodes the media and writes them with `event.json`.
//!
//! Overflow policy of [`JobQueue`]: **refuse the new job** and count it in `skipped_total` — the controller never
//! waits for the disk, and an event's messages go out whether or not its evidence could be written. A failed write
//! (a full or read-only disk) is logged (the first of a run, then every 100th), counted in `errors_total`, and kept
//! as `last_error` for `stats/1`; nothing else stops.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::history::Histories;
use super::media;
use super::store::Store;
use crate::clock::Timestamp;
use crate::modality::Modality;
use crate::sources::{FrameImage, Sample};

/// One window's score during an event, for `event.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ScorePoint {
    /// Window number.
    pub seq: u64,
    /// Window end, RFC 3339.
    pub t1: String,
    /// The label's score for the window.
    pub score: f32,
}

/// What a job writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JobKind {
    /// The snapshot: the sensor's frame at the end of the window that started the event.
    Snapshot {
        /// The window's end.
        at: Timestamp,
    },
    /// The clip of `[from, to]`.
    Clip {
        /// Pre-roll start.
        from: Timestamp,
        /// End.
        to: Timestamp,
    },
    /// Only `event.json` (the end arrived after the clip was written).
    Record,
}

/// One event's evidence job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Event id.
    pub id: String,
    /// Sensor.
    pub sensor: String,
    /// Label.
    pub label: String,
    /// What to write.
    pub kind: JobKind,
    /// The `start` message as published.
    pub start: serde_json::Value,
    /// The `end` message as published, once the event ended.
    pub end: Option<serde_json::Value>,
    /// The windows' scores so far.
    pub scores: Vec<ScorePoint>,
}

/// Counters of evidence writing (`stats/1` `evidence`).
#[derive(Debug, Default)]
pub struct EvidenceStats {
    /// Jobs accepted.
    pub jobs_total: AtomicU64,
    /// Jobs refused because the queue was full (that evidence is skipped).
    pub skipped_total: AtomicU64,
    /// Files written.
    pub files_total: AtomicU64,
    /// Bytes written.
    pub bytes_written_total: AtomicU64,
    /// Jobs that failed (disk full or read-only, nothing in the history, an encoder error).
    pub errors_total: AtomicU64,
    /// Events deleted by retention.
    pub deleted_total: AtomicU64,
    /// Bytes under the evidence root after the last write or prune.
    pub bytes_on_disk: AtomicU64,
    /// Events under the evidence root after the last write or prune.
    pub events_on_disk: AtomicU64,
    /// Snapshots published retained over MQTT.
    pub snapshots_published_total: AtomicU64,
    /// Snapshots larger than `snapshot_max_bytes`, not published.
    pub snapshots_oversize_total: AtomicU64,
    /// Time spent writing, microseconds.
    pub write_us_total: AtomicU64,
    /// The last error, for `stats/1`.
    pub last_error: Mutex<Option<String>>,
}

/// What has been written for an event, as the `evidence` object of its messages reports it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Written {
    /// The snapshot, relative to the evidence root.
    pub snapshot: Option<String>,
    /// The clip, relative to the evidence root.
    pub clip: Option<String>,
    /// Bytes written for the event so far.
    pub bytes: u64,
    /// Files and their sizes, relative to the event directory.
    #[serde(skip)]
    pub files: BTreeMap<String, u64>,
    /// Media details for `event.json` (frame rate, ranges, units).
    #[serde(skip)]
    pub media: serde_json::Map<String, serde_json::Value>,
}

/// The events with evidence in progress, shared by the writer (which fills it) and the controller (which reads it
/// for the messages). Bounded: at most [`MAX_TRACKED`] events, the oldest forgotten first.
#[derive(Debug, Default)]
pub struct EvidenceIndex {
    events: Mutex<VecDeque<(String, Written)>>,
}

/// Most events an [`EvidenceIndex`] keeps.
pub const MAX_TRACKED: usize = 256;

impl EvidenceIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, Written)>> {
        match self.events.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// What has been written for `id`.
    pub fn get(&self, id: &str) -> Option<Written> {
        self.lock().iter().find(|(i, _)| i == id).map(|(_, w)| w.clone())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Written)) -> Written {
        let mut events = self.lock();
        if !events.iter().any(|(i, _)| i == id) {
            events.push_back((id.to_owned(), Written::default()));
            while events.len() > MAX_TRACKED {
                events.pop_front();
            }
        }
        let mut out = Written::default();
        if let Some((_, w)) = events.iter_mut().find(|(i, _)| i == id) {
            f(w);
            out = w.clone();
        }
        out
    }
}

/// The bounded queue in front of the writer (overflow: the new job is refused and counted).
#[derive(Debug)]
pub struct JobQueue {
    inner: Mutex<VecDeque<Job>>,
    ready: Condvar,
    capacity: usize,
    closed: AtomicBool,
    /// Counters.
    pub stats: Arc<EvidenceStats>,
    /// What has been written.
    pub index: Arc<EvidenceIndex>,
}

impl JobQueue {
    /// A queue of `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            stats: Arc::new(EvidenceStats::default()),
            index: Arc::new(EvidenceIndex::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// True when a job would be accepted now (the controller is the only producer, so it still will be).
    pub fn has_room(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && self.lock().len() < self.capacity
    }

    /// Queues a job; a full (or closed) queue refuses it and counts it as skipped.
    pub fn push(&self, job: Job) -> bool {
        let mut q = self.lock();
        if q.len() >= self.capacity || self.closed.load(Ordering::SeqCst) {
            drop(q);
            self.stats.skipped_total.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(event = %job.id, "Evidence queue full; skipping this evidence.");
            return false;
        }
        q.push_back(job);
        drop(q);
        self.stats.jobs_total.fetch_add(1, Ordering::Relaxed);
        self.ready.notify_one();
        true
    }

    /// Lets the writer finish what is queued and end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }

    /// The next job if one is queued (tests).
    pub fn pop_now(&self) -> Option<Job> {
        self.lock().pop_front()
    }

    /// The next job; `None` once closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if let Some(j) = q.pop_front() {
                return Some(j);
            }
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            q = match self.ready.wait(q) {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }
}

/// A retained snapshot to publish: sensor, label, bytes.
pub type SnapshotSink = Box<dyn Fn(&str, &str, Vec<u8>) + Send>;

/// What the writer thread needs.
pub struct Writer {
    /// The evidence root and its limits.
    pub store: Store,
    /// The sensors' histories.
    pub histories: Arc<Histories>,
    /// JPEG quality.
    pub jpeg_quality: u8,
    /// Vision clip rate (0: measured).
    pub clip_fps: f64,
    /// Modalities whose snapshots are published.
    pub publish_snapshots: Vec<Modality>,
    /// Largest snapshot published.
    pub snapshot_max_bytes: usize,
    /// Where snapshots are published.
    pub sink: SnapshotSink,
}

impl Writer {
    /// Runs on the writer thread until the queue is closed and empty.
    pub fn run(self, queue: &JobQueue) {
        let stats = Arc::clone(&queue.stats);
        self.prune(&stats);
        while let Some(job) = queue.pop() {
            let started = std::time::Instant::now();
            if let Err(e) = self.handle(&job, &queue.index, &stats) {
                fail(&stats, &job.id, &e);
            }
            self.prune(&stats);
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            stats.write_us_total.fetch_add(us, Ordering::Relaxed);
        }
    }

    fn prune(&self, stats: &EvidenceStats) {
        match self.store.prune() {
            Ok(p) => {
                stats.deleted_total.fetch_add(p.events, Ordering::Relaxed);
                stats.bytes_on_disk.store(p.bytes_left, Ordering::Relaxed);
                stats.events_on_disk.store(p.events_left, Ordering::Relaxed);
            }
            // A root that cannot be listed: the jobs fail too, and are counted there.
            Err(e) if stats.errors_total.load(Ordering::Relaxed) > 0 => {
                tracing::debug!(root = %self.store.root().display(), error = %e, "Cannot apply evidence retention.");
            }
            Err(e) => fail(stats, "retention", &format!("{}: {e}", self.store.root().display())),
        }
    }

    fn handle(&self, job: &Job, index: &EvidenceIndex, stats: &EvidenceStats) -> Result<(), String> {
        let history = self
            .histories
            .get(&job.sensor)
            .ok_or_else(|| format!("sensor {} has no history", job.sensor))?;
        let files = match job.kind {
            JobKind::Snapshot { at } => self.snapshot(job, history.as_ref(), at)?,
            JobKind::Clip { from, to } => self.clip(history.as_ref(), from, to)?,
            JobKind::Record => Encoded::default(),
        };
        let mut written = Vec::new();
        for (name, bytes) in &files.files {
            let n = self
                .store
                .write(&job.id, name, bytes)
                .map_err(|e| format!("{name}: {e}"))?;
            stats.files_total.fetch_add(1, Ordering::Relaxed);
            stats.bytes_written_total.fetch_add(n, Ordering::Relaxed);
            written.push((name.clone(), n));
        }
        let state = index.update(&job.id, |w| {
            for (name, n) in &written {
                w.files.insert(name.clone(), *n);
            }
            if let Some(s) = &files.snapshot {
                w.snapshot = Some(Store::relative(&job.id, s));
            }
            if let Some(c) = &files.clip {
                w.clip = Some(Store::relative(&job.id, c));
            }
            w.media.extend(files.media.clone());
            w.bytes = w.files.values().sum();
        });
        let record = serde_json::json!({
            "schema": "evidence/1",
            "id": job.id,
            "sensor": job.sensor,
            "label": job.label,
            "modality": history.modality.to_string(),
            "start": job.start,
            "end": job.end,
            "scores": job.scores,
            "snapshot": state.snapshot,
            "clip": state.clip,
            "files": state.files,
            "media": state.media,
        });
        let text = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
        let n = self
            .store
            .write(&job.id, "event.json", &text)
            .map_err(|e| format!("event.json: {e}"))?;
        stats.files_total.fetch_add(1, Ordering::Relaxed);
        stats.bytes_written_total.fetch_add(n, Ordering::Relaxed);
        if let Some((bytes, _)) = files
            .publish
            .filter(|_| self.publish_snapshots.contains(&history.modality))
        {
            if bytes.len() <= self.snapshot_max_bytes {
                (self.sink)(&job.sensor, &job.label, bytes);
                stats.snapshots_published_total.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.snapshots_oversize_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn snapshot(&self, job: &Job, h: &super::history::History, at: Timestamp) -> Result<Encoded, String> {
        let (t, image) = h
            .frame_at(at)
            .ok_or_else(|| format!("no frame of {} in its history for the snapshot", job.sensor))?;
        let mut e = Encoded::default();
        e.media.insert("snapshot_t_mono_ns".into(), t.0.into());
        match image {
            FrameImage::Rgb(img) => {
                let jpg = media::jpeg(&img, self.jpeg_quality).map_err(|e| e.to_string())?;
                e.add("snapshot.jpg", jpg.clone());
                e.snapshot = Some("snapshot.jpg".into());
                e.publish = Some((jpg, "image/jpeg"));
            }
            FrameImage::Depth(d) => {
                let (colour, range, raw) = media::depth_pngs(&d, h.depth_unit_m).map_err(|e| e.to_string())?;
                e.false_colour(range, "m", Some(h.depth_unit_m));
                e.add("snapshot.png", colour.clone());
                e.add("snapshot-raw.png", raw);
                e.snapshot = Some("snapshot.png".into());
                e.publish = Some((colour, "image/png"));
            }
            FrameImage::Gray(g) => {
                let (colour, range, raw) = media::thermal_pngs(&g).map_err(|e| e.to_string())?;
                e.false_colour(range, "raw", None);
                e.add("snapshot.png", colour.clone());
                e.add("snapshot-raw.png", raw);
                e.snapshot = Some("snapshot.png".into());
                e.publish = Some((colour, "image/png"));
            }
        }
        Ok(e)
    }

    fn clip(&self, h: &super::history::History, from: Timestamp, to: Timestamp) -> Result<Encoded, String> {
        let samples = h.range(from, to);
        if samples.is_empty() {
            return Err("nothing in the sensor's history for the clip".into());
        }
        let mut e = Encoded::default();
        e.media.insert("clip_from_mono_ns".into(), from.0.into());
        e.media.insert("clip_to_mono_ns".into(), to.0.into());
        match h.modality {
            Modality::Vision => self.vision_clip(&samples, to, &mut e)?,
            Modality::Audio => audio_clip(&samples, from, to, &mut e)?,
            Modality::Imu => {
                let readings: Vec<(u64, [f32; 6])> = samples
                    .iter()
                    .filter_map(|s| match s {
                        Sample::Imu { t, values } if *t >= from => Some((t.0, *values)),
                        _ => None,
                    })
                    .collect();
                e.media.insert("readings".into(), readings.len().into());
                e.add("clip.csv", media::imu_csv(&readings));
                e.clip = Some("clip.csv".into());
            }
            Modality::Depth | Modality::Thermal => raw_frames_clip(&samples, from, h.depth_unit_m, &mut e)?,
            Modality::Text => return Err("text sensors have no clips".into()),
        }
        Ok(e)
    }

    /// MJPEG at a constant rate: each tick shows the newest frame captured by then.
    fn vision_clip(&self, samples: &[Sample], to: Timestamp, e: &mut Encoded) -> Result<(), String> {
        let frames: Vec<(Timestamp, &crate::preprocess::image::RgbImage)> = samples
            .iter()
            .filter_map(|s| match s {
                Sample::Frame {
                    t,
                    image: FrameImage::Rgb(img),
                } => Some((*t, img.as_ref())),
                _ => None,
            })
            .collect();
        let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
            return Err("no frames in the sensor's history for the clip".into());
        };
        let fps = if self.clip_fps > 0.0 {
            self.clip_fps
        } else {
            nominal_fps(frames.iter().map(|f| f.0))
        };
        let end = to.0.max(last.0.0);
        let ticks = ((end - first.0.0) as f64 / 1e9 * fps).floor() as usize + 1;
        let (w, h) = (first.1.width, first.1.height);
        let mut jpegs: Vec<Option<Vec<u8>>> = vec![None; frames.len()];
        let mut order = Vec::with_capacity(ticks);
        let mut i = 0;
        for k in 0..ticks {
            let tick = first.0.0 + (k as f64 / fps * 1e9) as u64;
            while i + 1 < frames.len() && frames[i + 1].0.0 <= tick {
                i += 1;
            }
            if jpegs[i].is_none() {
                let img = frames[i].1;
                // A frame of another size (the camera was reconfigured) repeats the previous one.
                if (img.width, img.height) == (w, h) {
                    jpegs[i] = Some(media::jpeg(img, self.jpeg_quality).map_err(|e| e.to_string())?);
                }
            }
            let shown = (0..=i).rev().find(|j| jpegs[*j].is_some()).unwrap_or(i);
            order.push(shown);
        }
        let refs: Vec<&[u8]> = order.iter().filter_map(|&j| jpegs[j].as_deref()).collect();
        e.media.insert("fps".into(), fps.into());
        e.media.insert("frames".into(), refs.len().into());
        e.media.insert("frames_captured".into(), frames.len().into());
        e.media.insert("width".into(), w.into());
        e.media.insert("height".into(), h.into());
        e.add("clip.avi", media::avi_mjpeg(&refs, w, h, fps));
        e.clip = Some("clip.avi".into());
        Ok(())
    }
}

/// The camera's rate from its frames' times: the median interval between consecutive frames, so that frames
/// dropped under load (gaps in the times) do not lower it; the clip repeats the last frame over a gap instead.
/// 1 fps when fewer than two frames have distinct times.
fn nominal_fps(times: impl Iterator<Item = Timestamp>) -> f64 {
    let times: Vec<u64> = times.map(|t| t.0).collect();
    let mut gaps: Vec<u64> = times
        .windows(2)
        .filter_map(|w| w[1].checked_sub(w[0]))
        .filter(|g| *g > 0)
        .collect();
    if gaps.is_empty() {
        return 1.0;
    }
    let mid = gaps.len() / 2;
    let (_, median, _) = gaps.select_nth_unstable(mid);
    (1e9 / *median as f64).clamp(0.1, 240.0)
}

/// The audio samples in `[from, to]`, as WAV at the device rate.
fn audio_clip(samples: &[Sample], from: Timestamp, to: Timestamp, e: &mut Encoded) -> Result<(), String> {
    let mut rate = 0;
    let mut out = Vec::new();
    for s in samples {
        let Sample::Audio { t, rate_hz, samples } = s else {
            continue;
        };
        if rate == 0 {
            rate = *rate_hz;
        }
        if *rate_hz != rate || *rate_hz == 0 {
            continue;
        }
        let ns_per = 1e9 / f64::from(*rate_hz);
        for (i, v) in samples.iter().enumerate() {
            let ti = t.0 + (i as f64 * ns_per) as u64;
            if ti >= from.0 && ti <= to.0 {
                out.push(*v);
            }
        }
    }
    if out.is_empty() {
        return Err("no audio in the sensor's history for the clip".into());
    }
    e.media.insert("rate_hz".into(), rate.into());
    e.media.insert("channels".into(), 1.into());
    e.media.insert("samples".into(), out.len().into());
    e.add("clip.wav", media::wav(&out, rate));
    e.clip = Some("clip.wav".into());
    Ok(())
}

/// Depth and thermal clips: every frame's raw 16-bit PNG under `clip/` and `clip/frames.csv` with their times.
fn raw_frames_clip(samples: &[Sample], from: Timestamp, unit_m: f64, e: &mut Encoded) -> Result<(), String> {
    let mut csv = String::from("index,t_mono_ns,t_s,file\n");
    let mut n = 0;
    for s in samples {
        let Sample::Frame { t, image } = s else { continue };
        if *t < from {
            continue;
        }
        let png = match image {
            FrameImage::Depth(d) => media::png_gray16(d.width, d.height, &media::depth_raw(d, unit_m)),
            FrameImage::Gray(g) => media::png_gray16(g.width, g.height, &g.samples),
            FrameImage::Rgb(_) => continue,
        }
        .map_err(|e| e.to_string())?;
        let name = format!("clip/{n:06}.png");
        csv.push_str(&format!(
            "{n},{},{:.6},{name}\n",
            t.0,
            (t.0.saturating_sub(from.0)) as f64 / 1e9
        ));
        e.add(&name, png);
        n += 1;
    }
    if n == 0 {
        return Err("no frames in the sensor's history for the clip".into());
    }
    e.media.insert("frames".into(), n.into());
    e.add("clip/frames.csv", csv.into_bytes());
    e.clip = Some("clip/frames.csv".into());
    Ok(())
}

/// Counts a failure, keeps it as `last_error`, and logs the first and every 100th.
fn fail(stats: &EvidenceStats, what: &str, error: &str) {
    let n = stats.errors_total.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(100) {
        tracing::error!(event = %what, error = %error, errors = n + 1, "Cannot write event evidence; the event's messages are published without it (further errors are counted in stats).");
    }
    if let Ok(mut last) = stats.last_error.lock() {
        *last = Some(format!("{what}: {error}"));
    }
}

/// Files a job produced.
#[derive(Default)]
struct Encoded {
    files: Vec<(String, Vec<u8>)>,
    snapshot: Option<String>,
    clip: Option<String>,
    publish: Option<(Vec<u8>, &'static str)>,
    media: serde_json::Map<String, serde_json::Value>,
}

impl Encoded {
    fn add(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.push((name.to_owned(), bytes));
    }

    fn false_colour(&mut self, range: [f32; 2], unit: &str, raw_unit_m: Option<f64>) {
        self.media.insert("colour_map".into(), "inferno".into());
        self.media.insert(
            "colour_range".into(),
            serde_json::json!({ "min": range[0], "max": range[1], "unit": unit }),
        );
        if let Some(u) = raw_unit_m {
            self.media.insert("raw_unit_m".into(), u.into());
        }
    }
}

/// Starts the writer on its thread (`evidence-writer`).
pub fn spawn(writer: Writer, queue: Arc<JobQueue>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("evidence-writer".into())
        .spawn(move || writer.run(&queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            sensor: "cam0".into(),
            label: "x".into(),
            kind: JobKind::Record,
            start: serde_json::json!({}),
            end: None,
            scores: Vec::new(),
        }
    }

    #[test]
    fn the_clip_rate_is_the_cameras_even_when_frames_were_dropped() {
        let period = 33_366_700u64; // 29.97 fps
        // 100 frames with every fourth one dropped: the mean rate is 22.5 fps, the camera's is 29.97.
        let times = (0..100u64).filter(|i| i % 4 != 3).map(|i| Timestamp(i * period));
        assert!((nominal_fps(times) - 29.97).abs() < 0.01);
        assert_eq!(nominal_fps([Timestamp(5), Timestamp(5)].into_iter()), 1.0);
        assert_eq!(nominal_fps(std::iter::empty()), 1.0);
    }

    #[test]
    fn a_full_queue_refuses_and_counts_without_waiting() {
        let q = JobQueue::new(2);
        assert!(q.push(job("a")) && q.push(job("b")));
        assert!(!q.has_room());
        let started = std::time::Instant::now();
        assert!(!q.push(job("c")));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        assert_eq!(q.stats.skipped_total.load(Ordering::Relaxed), 1);
        assert_eq!(q.stats.jobs_total.load(Ordering::Relaxed), 2);
        q.close();
        assert_eq!(q.pop().map(|j| j.id), Some("a".into()));
        assert_eq!(q.pop().map(|j| j.id), Some("b".into()));
        assert!(q.pop().is_none(), "closed and empty");
    }

    #[test]
    fn a_written_event_is_described_from_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let histories = Arc::new(Histories::default());
        let h = Arc::new(super::super::history::History::new(Modality::Imu, 10.0, 1 << 20, 0.001));
        for i in 0..50u64 {
            h.push(Sample::Imu {
                t: Timestamp(i * 10_000_000),
                values: [i as f32; 6],
            });
        }
        histories.insert("imu0", h);
        let w = Writer {
            store: Store::new(dir.path().to_path_buf(), 1 << 30, 0.0),
            histories,
            jpeg_quality: 80,
            clip_fps: 0.0,
            publish_snapshots: Vec::new(),
            snapshot_max_bytes: 0,
            sink: Box::new(|_, _, _| {}),
        };
        let q = JobQueue::new(4);
        let mut j = job("1-imu0-x-1");
        j.sensor = "imu0".into();
        j.kind = JobKind::Clip {
            from: Timestamp(100_000_000),
            to: Timestamp(200_000_000),
        };
        assert!(q.push(j));
        q.close();
        w.run(&q);
        let written = q.index.get("1-imu0-x-1").unwrap();
        assert_eq!(written.clip.as_deref(), Some("1-imu0-x-1/clip.csv"));
        let csv = std::fs::read_to_string(dir.path().join("1-imu0-x-1/clip.csv")).unwrap();
        // 100 ms to 200 ms at 100 Hz: 11 readings and the header.
        assert_eq!(csv.lines().count(), 12, "{csv}");
        assert_eq!(q.stats.errors_total.load(Ordering::Relaxed), 0);
        assert!(dir.path().join("1-imu0-x-1/event.json").exists());
    }
}
