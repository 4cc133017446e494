//! Encoder workers: one named thread per modality, fed by a bounded window queue.
//!
//! Overflow policy of the [`WindowQueue`]: **drop the oldest window** and count it — when inference falls behind,
//! fresh windows are worth more than stale ones, and capture never waits. A worker takes up to `max_batch`
//! windows (across the sources of its modality), waiting at most `max_wait` for a batch to fill, runs the tower
//! once, scores each window against the prompts and queues one label message per window.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::clock::Timestamp;
use crate::control::{ControlStats, Scored};
use crate::encode::Encoder;
use crate::labels::PromptSet;
use crate::modality::Modality;
use crate::tensor::Tensor;

/// A preprocessed window on its way to an encoder.
#[derive(Debug, Clone)]
pub struct Window {
    /// Source name.
    pub source: Arc<str>,
    /// Modality.
    pub modality: Modality,
    /// Per-source sequence number.
    pub seq: u64,
    /// Time of the first sample.
    pub t0: Timestamp,
    /// Time of the window's end.
    pub t1: Timestamp,
    /// The tower's per-clip input (no batch dimension).
    pub input: Tensor,
    /// Which start of the source's window stage cut it (a source restarted by a reload numbers its windows anew).
    pub run: u64,
    /// Set by the source's gate: the window is unchanged since window `seq` of the same run, whose embedding the
    /// worker reuses when it has it (`window::gate`).
    pub gated_after: Option<u64>,
}

/// Counters of one modality's queue and worker.
#[derive(Debug, Default)]
pub struct EncoderStats {
    /// The backend running the tower (`tract`, `onnxruntime`), set once it is loaded.
    pub backend: std::sync::OnceLock<&'static str>,
    /// Windows queued.
    pub windows_queued_total: AtomicU64,
    /// Windows dropped because the queue was full.
    pub windows_dropped_total: AtomicU64,
    /// Windows embedded.
    pub windows_encoded_total: AtomicU64,
    /// Windows lost to an inference error.
    pub windows_failed_total: AtomicU64,
    /// Windows a gate found unchanged: the source's last embedding was reused, the tower did not run for them.
    pub windows_gated_total: AtomicU64,
    /// Encoder calls.
    pub batches_total: AtomicU64,
    /// Total inference time, microseconds.
    pub infer_us_total: AtomicU64,
    /// Encoder calls by duration (`/metrics`).
    pub infer_latency: LatencyHistogram,
    /// Windows waiting in the queue now.
    pub queued: AtomicU64,
    /// Scored windows handed to the controller.
    pub messages_total: AtomicU64,
}

/// Upper bounds of [`LatencyHistogram`]'s buckets, microseconds: 0.5 ms (a tiny tower) to 10 s (a large tower on a
/// slow CPU); slower calls fall in the last, unbounded bucket.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// Durations counted in fixed buckets ([`LATENCY_BUCKETS_US`] and one above them), lock-free: recording is one
/// atomic add. The sum is kept by the owner (`EncoderStats::infer_us_total`).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn record(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of each bucket (not cumulative): durations above the previous bound and at or below this one, for
    /// each bound of [`LATENCY_BUCKETS_US`], then those above the last bound.
    pub fn counts(&self) -> [u64; LATENCY_BUCKETS_US.len() + 1] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// The bounded queue in front of an encoder.
#[derive(Debug)]
pub struct WindowQueue {
    inner: Mutex<VecDeque<Window>>,
    ready: Condvar,
    capacity: usize,
    closed: AtomicBool,
    stats: Arc<EncoderStats>,
}

impl WindowQueue {
    /// A queue of `capacity` windows.
    pub fn new(capacity: usize, stats: Arc<EncoderStats>) -> Self {
        Self {
            inner: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Window>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues a window; never blocks; drops (and counts) the oldest when full. Returns the dropped window, if any.
    pub fn push(&self, w: Window) -> Option<Window> {
        let dropped = {
            let mut q = self.lock();
            let dropped = if q.len() >= self.capacity { q.pop_front() } else { None };
            q.push_back(w);
            self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
            dropped
        };
        self.stats.windows_queued_total.fetch_add(1, Ordering::Relaxed);
        if dropped.is_some() {
            self.stats.windows_dropped_total.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_one();
        dropped
    }

    /// No more windows will come; the worker drains what is queued and stops.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }

    /// Windows waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` windows: waits for the first, then up to `max_wait` for more. Empty means closed and drained.
    pub fn pop_batch(&self, max: usize, max_wait: Duration) -> Vec<Window> {
        let mut q = self.lock();
        while q.is_empty() {
            if self.closed.load(Ordering::SeqCst) {
                return Vec::new();
            }
            q = match self.ready.wait_timeout(q, Duration::from_millis(200)) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        let deadline = Instant::now() + max_wait;
        while q.len() < max && !self.closed.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = match self.ready.wait_timeout(q, deadline - now) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        let n = q.len().min(max.max(1));
        let batch = q.drain(..n).collect();
        self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
        batch
    }
}

/// What a worker needs.
pub struct WorkerContext {
    /// The tower.
    pub encoder: Arc<dyn Encoder>,
    /// The prompts (swappable at run time).
    pub prompts: Arc<RwLock<Arc<PromptSet>>>,
    /// Where scored windows go (bounded; when full the newest window is dropped and counted in
    /// `ControlStats::scored_dropped_total`).
    pub scored: tokio::sync::mpsc::Sender<Scored>,
    /// The controller's counters.
    pub control: Arc<ControlStats>,
    /// Most windows per call.
    pub max_batch: usize,
    /// Longest wait for a batch to fill.
    pub max_wait: Duration,
    /// Counters.
    pub stats: Arc<EncoderStats>,
}

/// The last embedding of each source, which gated windows reuse.
#[derive(Debug, Default)]
struct LastEmbedded {
    by_source: HashMap<Arc<str>, Embedded>,
}

#[derive(Debug)]
struct Embedded {
    run: u64,
    seq: u64,
    embedding: Arc<[f32]>,
}

/// Most sources remembered; past it the map is cleared (only a reload loop inventing names gets there).
const LAST_EMBEDDED_MAX: usize = 4096;

impl LastEmbedded {
    /// True when `w` is gated and its source's last embedding is of its reference window or a later one.
    fn covers(&self, w: &Window) -> bool {
        let Some(reference) = w.gated_after else { return false };
        self.by_source
            .get(&w.source)
            .is_some_and(|e| e.run == w.run && e.seq >= reference)
    }
}

/// Which windows of a batch reuse an embedding (`true`) rather than run the tower: gated windows whose reference
/// was embedded before or is embedded earlier in this batch.
fn reuse_plan(batch: &[Window], last: &LastEmbedded) -> Vec<bool> {
    let mut in_batch: HashMap<&str, (u64, u64)> = HashMap::new();
    batch
        .iter()
        .map(|w| {
            let reuse = match (w.gated_after, in_batch.get(&*w.source)) {
                (None, _) => false,
                (Some(reference), Some(&(run, seq))) => run == w.run && seq >= reference,
                (Some(_), None) => last.covers(w),
            };
            if !reuse {
                in_batch.insert(&w.source, (w.run, w.seq));
            }
            reuse
        })
        .collect()
}

/// Runs the tower on the windows of `batch` that `reuse` does not cover; `Ok(None)` when it has nothing to run.
fn encode_batch(batch: &[Window], reuse: &[bool], cx: &WorkerContext) -> Result<Option<Tensor>, String> {
    let inputs: Vec<Tensor> = batch
        .iter()
        .zip(reuse)
        .filter(|(_, r)| !**r)
        .map(|(w, _)| w.input.clone())
        .collect();
    if inputs.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    let result = Tensor::stack(&inputs)
        .map_err(|e| e.to_string())
        .and_then(|t| cx.encoder.encode(&t).map_err(|e| e.to_string()));
    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    cx.stats.batches_total.fetch_add(1, Ordering::Relaxed);
    cx.stats.infer_us_total.fetch_add(elapsed_us, Ordering::Relaxed);
    cx.stats.infer_latency.record(elapsed_us);
    match result {
        Ok(e) => {
            cx.stats
                .windows_encoded_total
                .fetch_add(inputs.len() as u64, Ordering::Relaxed);
            Ok(Some(e))
        }
        Err(reason) => {
            cx.stats
                .windows_failed_total
                .fetch_add(inputs.len() as u64, Ordering::Relaxed);
            tracing::error!(modality = %cx.encoder.info().modality, windows = inputs.len(), error = %reason, "Inference failed; these windows are lost.");
            Err(reason)
        }
    }
}

/// The worker loop: runs until the queue is closed and drained.
pub fn run_worker(queue: &WindowQueue, cx: &WorkerContext) {
    let mut last = LastEmbedded::default();
    loop {
        let batch = queue.pop_batch(cx.max_batch, cx.max_wait);
        if batch.is_empty() {
            break;
        }
        let reuse = reuse_plan(&batch, &last);
        let embeddings = encode_batch(&batch, &reuse, cx);
        let dim = cx.encoder.info().output_dim;
        let values = match &embeddings {
            Ok(Some(e)) => e.as_f32().unwrap_or_default(),
            _ => &[],
        };
        let prompts = match cx.prompts.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        let model: Arc<str> = Arc::from(cx.encoder.info().model_id.as_str());
        let mut row = 0;
        for (w, &reused) in batch.iter().zip(&reuse) {
            let embedding = if reused {
                // The reference was embedded (plan), unless this batch's inference failed.
                match last.by_source.get(&w.source).filter(|_| last.covers(w)) {
                    Some(e) => Arc::clone(&e.embedding),
                    None => {
                        cx.stats.windows_failed_total.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            } else {
                let Some(emb) = values.get(row * dim..(row + 1) * dim) else {
                    row += 1;
                    continue; // Lost with the failed call (counted there).
                };
                row += 1;
                let embedding: Arc<[f32]> = Arc::from(emb);
                let (run, seq) = (w.run, w.seq);
                let e = Embedded {
                    run,
                    seq,
                    embedding: Arc::clone(&embedding),
                };
                last.by_source.insert(Arc::clone(&w.source), e);
                embedding
            };
            if reused {
                cx.stats.windows_gated_total.fetch_add(1, Ordering::Relaxed);
            }
            let scored = Scored {
                source: Arc::clone(&w.source),
                modality: w.modality,
                seq: w.seq,
                t0: w.t0,
                t1: w.t1,
                model: Arc::clone(&model),
                labels: prompts.score(&embedding, w.modality, &w.source, usize::MAX),
                embedding: embedding.to_vec(),
                gated: reused,
            };
            match cx.scored.try_send(scored) {
                Ok(()) => {
                    cx.stats.messages_total.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    cx.control.scored_dropped_total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if last.by_source.len() > LAST_EMBEDDED_MAX {
            // Between batches: the next gated window of each source is embedded again.
            last.by_source.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(seq: u64) -> Window {
        Window {
            source: Arc::from("s"),
            modality: Modality::Imu,
            seq,
            t0: Timestamp(0),
            t1: Timestamp(0),
            input: Tensor::from_f32(vec![1], vec![0.0]).unwrap(),
            run: 0,
            gated_after: None,
        }
    }

    fn gated(seq: u64, run: u64, after: Option<u64>) -> Window {
        Window {
            run,
            gated_after: after,
            ..window(seq)
        }
    }

    #[test]
    fn reuse_plan_reuses_only_an_embedded_reference_of_the_same_run() {
        let mut last = LastEmbedded::default();
        // Nothing embedded yet: a gated window is encoded; the next one reuses it within the batch.
        let batch = [gated(0, 1, None), gated(1, 1, Some(0)), gated(2, 1, Some(0))];
        assert_eq!(reuse_plan(&batch, &last), vec![false, true, true]);
        let first_gated_without_reference = [gated(5, 1, Some(4)), gated(6, 1, Some(4))];
        assert_eq!(reuse_plan(&first_gated_without_reference, &last), vec![false, true]);
        last.by_source.insert(
            Arc::from("s"),
            Embedded {
                run: 1,
                seq: 7,
                embedding: Arc::from(vec![0.0f32]),
            },
        );
        // Reference 7 was embedded; reference 9 was not (dropped); another run never reuses.
        let later = [gated(8, 1, Some(7)), gated(10, 1, Some(9)), gated(11, 1, Some(9))];
        assert_eq!(reuse_plan(&later, &last), vec![true, false, true]);
        assert_eq!(reuse_plan(&[gated(0, 2, Some(0))], &last), vec![false]);
    }

    #[test]
    fn window_queue_drops_oldest_and_batches() {
        let stats = Arc::new(EncoderStats::default());
        let q = WindowQueue::new(3, Arc::clone(&stats));
        for i in 0..5 {
            q.push(window(i));
        }
        assert_eq!(stats.windows_dropped_total.load(Ordering::Relaxed), 2);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 3);
        let b = q.pop_batch(2, Duration::ZERO);
        assert_eq!(b.iter().map(|w| w.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 1);
        q.close();
        assert_eq!(q.pop_batch(8, Duration::from_millis(50)).len(), 1);
        assert!(q.pop_batch(8, Duration::from_millis(50)).is_empty());
        assert_eq!(stats.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn latency_histogram_counts_each_duration_in_the_first_bucket_that_holds_it() {
        let h = LatencyHistogram::default();
        // At a bound, just above it, far above the last one.
        for us in [0, 500, 501, 1_000, 10_000_000, 10_000_001, u64::MAX] {
            h.record(us);
        }
        let c = h.counts();
        assert_eq!(c[0], 2, "0 and 500 µs are ≤ 0.5 ms");
        assert_eq!(c[1], 2, "501 and 1000 µs are in (0.5 ms, 1 ms]");
        assert_eq!(c[LATENCY_BUCKETS_US.len() - 1], 1, "10 s is in the last bounded bucket");
        assert_eq!(c[LATENCY_BUCKETS_US.len()], 2, "above 10 s: the unbounded bucket");
        assert_eq!(c.iter().sum::<u64>(), 7, "every duration counted once: {c:?}");
    }
}
