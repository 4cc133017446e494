//! Preprocessing speed, single-threaded. Peers (torchaudio, kaldi-native-fbank, Pillow + torchvision, the
//! reference tokenizer) are measured in the same run by `tools/bench_preprocess_peers.py`; figures are in
//! docs/BENCHMARKS.md.
//!
//! `cargo bench --bench preprocess`

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sensebind::preprocess::audio::{self, Waveform};
use sensebind::preprocess::fbank::Fbank;
use sensebind::preprocess::image::{decode_rgb, transform_image};
use sensebind::preprocess::text::Tokenizer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A deterministic 16 kHz test signal: two tones and a little noise.
fn signal(n: usize, rate: f32) -> Vec<f32> {
    let mut seed = 0x1234_5678u32;
    (0..n)
        .map(|i| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let t = i as f32 / rate;
            0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                + 0.1 * (2.0 * std::f32::consts::PI * 3000.0 * t).sin()
                + 0.01 * ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        })
        .collect()
}

fn bench_audio(c: &mut Criterion) {
    let fbank = Fbank::new();
    let clip = signal(32_000, 16_000.0);
    let mut g = c.benchmark_group("audio");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fbank_2s_clip", |b| {
        b.iter(|| black_box(fbank.compute(black_box(&clip))))
    });
    let five_s = Waveform {
        sample_rate: 16_000,
        channels: vec![signal(80_000, 16_000.0)],
    };
    g.bench_function("file_5s_16k_to_3x128x204", |b| {
        b.iter(|| black_box(audio::transform(black_box(&five_s), "bench").unwrap()))
    });
    let five_s_44k = signal(220_500, 44_100.0);
    g.bench_function("resample_5s_44k1_to_16k", |b| {
        b.iter(|| black_box(audio::resample(black_box(&five_s_44k), 44_100, 16_000)))
    });
    g.finish();
}

fn bench_image(c: &mut Criterion) {
    let bytes = std::fs::read(root().join("tests/fixtures/media/chelsea.png")).unwrap();
    let img = decode_rgb(&bytes, "chelsea.png").unwrap();
    let mut g = c.benchmark_group("image");
    g.throughput(Throughput::Elements(1));
    g.bench_function("resize_crop_normalize_451x300", |b| {
        b.iter(|| black_box(transform_image(black_box(&img))))
    });
    g.bench_function("decode_png_and_transform_451x300", |b| {
        b.iter(|| black_box(transform_image(&decode_rgb(black_box(&bytes), "chelsea.png").unwrap())))
    });
    g.finish();
}

fn bench_text(c: &mut Criterion) {
    let tok = Tokenizer::from_file(&root().join("models/imagebind-tiny/bpe_simple_vocab_16e6.txt.gz")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/preprocess/text/tokens.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<String> = cases.iter().map(|c| c["text"].as_str().unwrap().to_owned()).collect();
    let mut g = c.benchmark_group("text");
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("tokenize_fixture_strings", |b| {
        b.iter(|| {
            for t in &texts {
                black_box(tok.tokenize(black_box(t)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_audio, bench_image, bench_text);
criterion_main!(benches);
