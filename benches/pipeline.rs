//! The sensor edge at native rates: capture → ring → window, per modality, one iteration = one second of stream.
//! The time per iteration divided by one second is the share of one core the stage needs.
//!
//! Rates (the daemon's targets): video 640×480 RGB at 30 fps, audio 48 kHz in 10 ms blocks, IMU at 1 kHz, depth
//! 640×480 at 30 fps, thermal 640×480 16-bit at 30 fps. "Capture" is the copy a driver hands over (a new frame
//! buffer or sample block per item); the window stage is the daemon's windower. Preprocessing of the windows
//! (resize, fbank, ...) is measured separately (`prepare/*`), per window.
//!
//! `cargo bench --bench pipeline`; figures in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sensebind::clock::Timestamp;
use sensebind::modality::Modality;
use sensebind::preprocess::depth::DepthMap;
use sensebind::preprocess::image::{GrayImage, RgbImage};
use sensebind::ring::ring;
use sensebind::sources::{FrameImage, Sample};
use sensebind::window::WindowSpec;
use sensebind::window::{PrepareContext, RawWindow, prepare, windower};

const W: usize = 640;
const H: usize = 480;

/// One second of a stream: `n` items produced by `make(i)`, pushed through a ring and cut into windows.
fn one_second(modality: Modality, spec: WindowSpec, n: u64, make: &dyn Fn(u64) -> Sample, t_offset: &mut u64) -> usize {
    let (mut prod, cons) = ring::<Sample>(4 * n as usize + 2);
    let mut cutter = windower(modality, spec);
    let (mut drained, mut windows) = (Vec::new(), Vec::new());
    for i in 0..n {
        prod.push(make(*t_offset + i));
        // The window stage wakes every 10 ms of stream.
        if i % (n / 100).max(1) == 0 {
            cons.drain_into(&mut drained);
            for s in drained.drain(..) {
                cutter.push(s, &mut windows);
            }
        }
    }
    cons.drain_into(&mut drained);
    for s in drained.drain(..) {
        cutter.push(s, &mut windows);
    }
    *t_offset += n;
    windows.len()
}

fn bench_edge(c: &mut Criterion) {
    let rgb = RgbImage {
        width: W,
        height: H,
        planes: [vec![90u8; W * H], vec![120u8; W * H], vec![200u8; W * H]],
    };
    let depth = DepthMap {
        width: W,
        height: H,
        metres: vec![2.5f32; W * H],
    };
    let thermal = GrayImage {
        width: W,
        height: H,
        bit_depth: 16,
        samples: vec![21_000u16; W * H],
    };
    let mut g = c.benchmark_group("edge_1s");
    g.sample_size(20);
    let spec = |w: f64, h: f64| WindowSpec {
        window_secs: w,
        hop_secs: h,
    };
    let mut t = 0u64;
    g.bench_function("vision_640x480_30fps", |b| {
        b.iter(|| {
            black_box(one_second(
                Modality::Vision,
                spec(2.0, 1.0),
                30,
                &|i| Sample::Frame {
                    t: Timestamp(i * 33_333_333),
                    image: FrameImage::Rgb(Arc::new(rgb.clone())),
                },
                &mut t,
            ))
        })
    });
    let mut t = 0u64;
    g.bench_function("audio_48k_10ms_blocks", |b| {
        b.iter(|| {
            black_box(one_second(
                Modality::Audio,
                spec(2.0, 1.0),
                100,
                &|i| Sample::Audio {
                    t: Timestamp(i * 10_000_000),
                    rate_hz: 48_000,
                    samples: vec![0.01f32; 480],
                },
                &mut t,
            ))
        })
    });
    let mut t = 0u64;
    g.bench_function("imu_1khz", |b| {
        b.iter(|| {
            black_box(one_second(
                Modality::Imu,
                spec(5.0, 1.0),
                1000,
                &|i| Sample::Imu {
                    t: Timestamp(i * 1_000_000),
                    values: [0.1, 0.2, 9.8, 0.0, 0.0, 0.1],
                },
                &mut t,
            ))
        })
    });
    let mut t = 0u64;
    g.bench_function("depth_640x480_30fps", |b| {
        b.iter(|| {
            black_box(one_second(
                Modality::Depth,
                spec(1.0, 1.0),
                30,
                &|i| Sample::Frame {
                    t: Timestamp(i * 33_333_333),
                    image: FrameImage::Depth(Arc::new(depth.clone())),
                },
                &mut t,
            ))
        })
    });
    let mut t = 0u64;
    g.bench_function("thermal_640x480_30fps", |b| {
        b.iter(|| {
            black_box(one_second(
                Modality::Thermal,
                spec(1.0, 1.0),
                30,
                &|i| Sample::Frame {
                    t: Timestamp(i * 33_333_333),
                    image: FrameImage::Gray(Arc::new(thermal.clone())),
                },
                &mut t,
            ))
        })
    });
    g.finish();
}

fn bench_prepare(c: &mut Criterion) {
    let cx = PrepareContext {
        preprocess: Default::default(),
        tokenizer: None,
    };
    let rgb = Arc::new(RgbImage {
        width: W,
        height: H,
        planes: [
            (0..W * H).map(|i| (i % 251) as u8).collect(),
            (0..W * H).map(|i| (i % 241) as u8).collect(),
            (0..W * H).map(|i| (i % 239) as u8).collect(),
        ],
    });
    let mut g = c.benchmark_group("prepare");
    g.sample_size(20);
    let clip = RawWindow {
        t0: Timestamp(0),
        t1: Timestamp(0),
        data: sensebind::window::RawWindowData::Clip([FrameImage::Rgb(Arc::clone(&rgb)), FrameImage::Rgb(rgb)]),
    };
    g.bench_function("vision_clip_640x480", |b| {
        b.iter(|| black_box(prepare(&clip, &cx).unwrap()))
    });
    let audio = RawWindow {
        t0: Timestamp(0),
        t1: Timestamp(0),
        data: sensebind::window::RawWindowData::Audio {
            rate_hz: 48_000,
            samples: (0..96_000).map(|i| (i as f32 * 0.05).sin() * 0.2).collect(),
        },
    };
    g.bench_function("audio_2s_48k", |b| b.iter(|| black_box(prepare(&audio, &cx).unwrap())));
    let depth = RawWindow {
        t0: Timestamp(0),
        t1: Timestamp(0),
        data: sensebind::window::RawWindowData::Frame(FrameImage::Depth(Arc::new(DepthMap {
            width: W,
            height: H,
            metres: (0..W * H).map(|i| 1.0 + (i % 640) as f32 / 100.0).collect(),
        }))),
    };
    g.bench_function("depth_640x480", |b| b.iter(|| black_box(prepare(&depth, &cx).unwrap())));
    let imu = RawWindow {
        t0: Timestamp(0),
        t1: Timestamp(0),
        data: sensebind::window::RawWindowData::Imu {
            time_s: (0..5000).map(|i| i as f64 / 1000.0).collect(),
            values: (0..5000).map(|i| [i as f32 * 0.001; 6]).collect(),
            window_secs: 5.0,
        },
    };
    g.bench_function("imu_5s_1khz", |b| b.iter(|| black_box(prepare(&imu, &cx).unwrap())));
    g.finish();
}

/// Serial IMU decoding: 10 000 CSV lines and 10 000 WitMotion reading pairs (acceleration + angular-rate frames),
/// fed in 64-byte reads as a UART driver hands them over.
fn bench_serial(c: &mut Criterion) {
    use sensebind::preprocess::imu::{AccUnit, GyroUnit};
    use sensebind::sources::serial::{Decoded, Decoder, LineDecoder, WitMotionDecoder};
    let csv: Vec<u8> = (0..10_000)
        .flat_map(|i| {
            format!(
                "{:.4},0.1021,9.8066,{:.5},-0.0312,0.0040\n",
                (i as f32 * 0.01).sin(),
                i as f32 * 1e-4
            )
            .into_bytes()
        })
        .collect();
    let mut wit = Vec::new();
    for i in 0..10_000i32 {
        for kind in [0x51u8, 0x52] {
            let mut f = vec![0x55, kind];
            for v in [(i % 3000) as i16, 120, 2048] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&[0, 0]);
            f.push(f.iter().fold(0u8, |s, &b| s.wrapping_add(b)));
            wit.extend(f);
        }
    }
    let mut g = c.benchmark_group("serial");
    g.sample_size(20);
    g.bench_function("csv_10k_lines", |b| {
        b.iter(|| {
            let mut d = LineDecoder::new(
                [0, 1, 2],
                Some([3, 4, 5]),
                AccUnit::MetresPerSecond2,
                GyroUnit::RadPerSecond,
            );
            let mut out = Decoded::default();
            for chunk in csv.chunks(64) {
                d.feed(chunk, &mut out);
            }
            assert_eq!(out.readings.len(), 10_000);
            black_box(out)
        })
    });
    g.bench_function("witmotion_10k_readings", |b| {
        b.iter(|| {
            let mut d = WitMotionDecoder::new();
            let mut out = Decoded::default();
            for chunk in wit.chunks(64) {
                d.feed(chunk, &mut out);
            }
            assert_eq!(out.readings.len(), 10_000);
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_edge, bench_prepare, bench_serial);
criterion_main!(benches);
