//! `sensebind bench`: per-tower encoder latency and throughput.
//!
//! Inputs are deterministic pseudo-random tensors of the tower's shape (text: plausible token ids ending in EOT),
//! so runs are comparable across machines and backends. Figures are wall-clock per `encode` call.

use std::time::{Duration, Instant};

use crate::encode::{EncodeError, Encoder, EncoderInfo};
use crate::tensor::{DType, ShapeMismatch, Tensor};

/// How long and how often to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Untimed calls before measuring.
    pub warmup: usize,
    /// At least this many timed calls.
    pub min_iters: usize,
    /// At most this many timed calls.
    pub max_iters: usize,
    /// Stop after this much measuring time once `min_iters` is reached.
    pub target: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            warmup: 1,
            min_iters: 5,
            max_iters: 200,
            target: Duration::from_secs(3),
        }
    }
}

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// The tower.
    pub modality: String,
    /// The backend (`wgpu-f16`: wgpu with f16 weights).
    pub backend: String,
    /// The tower's weight precision in its manifest (`f32`, `int8`).
    pub precision: String,
    /// Model id.
    pub model: String,
    /// Engine threads.
    pub threads: usize,
    /// Clips per call.
    pub batch: usize,
    /// Timed calls.
    pub iters: usize,
    /// Median latency per call, milliseconds.
    pub p50_ms: f64,
    /// 95th-percentile latency per call, milliseconds.
    pub p95_ms: f64,
    /// Clips per second at the median latency.
    pub clips_per_s: f64,
}

/// Measures one encoder at one batch size.
pub fn bench_encoder(
    encoder: &dyn Encoder,
    batch: usize,
    threads: usize,
    options: &BenchOptions,
) -> Result<BenchRow, EncodeError> {
    let input = synthetic_batch(encoder.info(), batch, 0x5eed).map_err(|e| EncodeError::Run {
        model: encoder.info().model_id.clone(),
        reason: e.to_string(),
    })?;
    for _ in 0..options.warmup {
        encoder.encode(&input)?;
    }
    let mut samples = Vec::new();
    let started = Instant::now();
    while samples.len() < options.max_iters && (samples.len() < options.min_iters || started.elapsed() < options.target)
    {
        let t = Instant::now();
        encoder.encode(&input)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let p50 = percentile(&samples, 0.50);
    let p95 = percentile(&samples, 0.95);
    let info = encoder.info();
    Ok(BenchRow {
        modality: info.modality.to_string(),
        backend: encoder.backend().to_string(),
        precision: "f32".into(),
        model: info.model_id.clone(),
        threads,
        batch,
        iters: samples.len(),
        p50_ms: p50,
        p95_ms: p95,
        clips_per_s: if p50 > 0.0 { batch as f64 * 1e3 / p50 } else { 0.0 },
    })
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A deterministic input batch of the encoder's shape.
pub fn synthetic_batch(info: &EncoderInfo, batch: usize, seed: u64) -> Result<Tensor, ShapeMismatch> {
    let mut rng = XorShift(seed | 1);
    let row: usize = info.input_shape.iter().product();
    let mut shape = vec![batch];
    shape.extend_from_slice(&info.input_shape);
    match info.input_dtype {
        DType::F32 => {
            let data = (0..batch * row).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            Tensor::from_f32(shape, data)
        }
        DType::I64 => {
            // Text: SOT, a dozen ordinary tokens, EOT, zero padding.
            let mut data = vec![0i64; batch * row];
            for r in 0..batch {
                let ids = &mut data[r * row..(r + 1) * row];
                if row >= 14 {
                    ids[0] = 49406;
                    for id in ids.iter_mut().take(13).skip(1) {
                        *id = 256 + (rng.next_u64() % 40_000) as i64;
                    }
                    ids[13] = 49407;
                }
            }
            Tensor::from_i64(shape, data)
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.95), 10.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
