//! Preprocessing against ImageBind's own loaders, on fixtures made by `tools/make_preprocess_fixtures.py`.
//!
//! Tolerances (from the preprocessing issue): token ids exact; PNG images ≤ 1e-4; audio ≤ 1e-4 at 16 kHz and
//! ≤ 2e-3 where resampling or a lossy codec is involved; clip boundaries exact. Differences that are only recorded
//! (JPEG decoding) are printed and bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test helpers and reports

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sensebind::modality::Modality;
use sensebind::npy;
use sensebind::preprocess::audio::{clip_ranges, resample};
use sensebind::preprocess::image::{CLIP_MEAN, CLIP_STD};
use sensebind::preprocess::text::Tokenizer;
use sensebind::preprocess::video::{clip_frames, probe};
use sensebind::preprocess::{PreprocessConfig, load};
use sensebind::tensor::Tensor;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures(kind: &str) -> PathBuf {
    root().join("tests/fixtures/preprocess").join(kind)
}

fn read_gz_npy(path: &Path) -> Tensor {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    npy::parse(&bytes, &path.display().to_string()).unwrap()
}

fn inputs(kind: &str) -> BTreeMap<String, PathBuf> {
    let text = std::fs::read_to_string(fixtures(kind).join("inputs.json")).unwrap();
    let map: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    map.into_iter().map(|(k, v)| (k, root().join(v))).collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn token_ids_are_exact_on_every_fixture_string() {
    let tok = Tokenizer::from_file(&root().join("models/imagebind-tiny/bpe_simple_vocab_16e6.txt.gz")).unwrap();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures("text").join("tokens.json")).unwrap()).unwrap();
    assert!(cases.len() >= 200, "only {} strings", cases.len());
    let mut failures = Vec::new();
    let (mut exact, mut mojibake, mut mojibake_same) = (0, 0, 0);
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let mut want: Vec<i64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        want.resize(77, 0);
        let got = tok.tokenize(text);
        if case["mojibake_repair"].as_bool() == Some(true) {
            // ftfy's mojibake repair is not ported (docs/preprocessing.md): reported, not required.
            mojibake += 1;
            mojibake_same += usize::from(got[..] == want[..]);
            continue;
        }
        if got[..] == want[..] {
            exact += 1;
        } else {
            failures.push(format!("{text:?}\n  got  {:?}\n  want {:?}", &got[..], want));
        }
    }
    println!("tokens: {exact} exact; {mojibake} strings where ftfy repairs mojibake ({mojibake_same} equal anyway)");
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(exact >= 200, "only {exact} strings compared exactly");
    assert!(
        mojibake <= 8,
        "{mojibake} strings hit ftfy's mojibake repair; the fixture should exercise the port"
    );
}

/// The reference float tensor from its exact 8-bit values: `(u8 / 255 - mean) / std` in f32, as torchvision.
fn image_from_u8(u8s: &[f32]) -> Vec<f32> {
    let plane = 224 * 224;
    u8s.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i / plane;
            (v / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        })
        .collect()
}

#[test]
fn images_match_pillow_and_torchvision() {
    let cfg = PreprocessConfig::default();
    let mut report = Vec::new();
    for (name, path) in inputs("image") {
        let got = load(Modality::Vision, &path, &cfg, None).unwrap();
        assert_eq!(got.shape(), &[3, 224, 224], "{name}");
        let want = image_from_u8(
            read_gz_npy(&fixtures("image").join(format!("{name}.ref.npy.gz")))
                .as_f32()
                .unwrap(),
        );
        let err = max_abs(got.as_f32().unwrap(), &want);
        let is_jpeg = name.ends_with(".jpg");
        report.push(format!("{name}: max-abs {err:.3e}"));
        if is_jpeg {
            // zune-jpeg vs libjpeg-turbo: a few levels of 255 at most (≤ 6/255/0.26 after normalisation).
            assert!(err <= 0.09, "{name}: JPEG difference {err}");
        } else {
            assert!(err <= 1e-4, "{name}: max-abs {err}");
        }
    }
    println!("image parity:\n  {}", report.join("\n  "));
}

#[test]
fn image_normalisation_is_bit_exact() {
    let got = load(
        Modality::Vision,
        &root().join("tests/fixtures/media/chelsea.png"),
        &PreprocessConfig::default(),
        None,
    )
    .unwrap();
    let want = read_gz_npy(&fixtures("image").join("chelsea.png.ref.f32.npy.gz"));
    assert_eq!(got.as_f32().unwrap(), want.as_f32().unwrap());
}

#[test]
fn audio_matches_torchaudio_and_the_clip_sampler() {
    let clips: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures("audio").join("clips.json")).unwrap()).unwrap();
    let cfg = PreprocessConfig::default();
    let mut report = Vec::new();
    for (name, path) in inputs("audio") {
        // Clip boundaries: exact.
        let entry = &clips[&name];
        let n16 = entry["samples_16k"].as_u64().unwrap() as usize;
        let want_ranges: Vec<(usize, usize)> = entry["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize))
            .collect();
        assert_eq!(clip_ranges(n16, 16000, 2, 3), want_ranges, "{name} clip ranges");
        // Features.
        let got = load(Modality::Audio, &path, &cfg, None).unwrap();
        assert_eq!(got.shape(), &[3, 1, 128, 204], "{name}");
        let want = read_gz_npy(&fixtures("audio").join(format!("{name}.ref.npy.gz")));
        let (g, w) = (got.as_f32().unwrap(), want.as_f32().unwrap());
        let err = max_abs(g, w);
        // Above 2.6x the log floor (log-energy > -15) the reference is stable; right at the floor its own float32
        // FFT noise is 1.9e-4 (torch f32 vs f64 on the same input), so there the bound is 3e-4.
        let above_floor = g
            .iter()
            .zip(w)
            .filter(|&(_, &r)| r * 9.138 - 4.268 > -15.0)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let at_16k_pcm = name.contains("_16k_") && name.ends_with(".wav");
        report.push(format!("{name}: max-abs {err:.3e}, above the floor {above_floor:.3e}"));
        if at_16k_pcm {
            assert!(above_floor <= 1e-4, "{name}: max-abs {above_floor} above the floor");
            assert!(err <= 3e-4, "{name}: max-abs {err} at the floor");
        } else {
            assert!(err <= 2e-3, "{name}: max-abs {err} (resampled or lossy)");
        }
    }
    println!("audio parity:\n  {}", report.join("\n  "));
}

#[test]
fn compressed_audio_decodes_like_libsndfile() {
    for name in ["bell.oga", "misc_burp.flac"] {
        let bytes = std::fs::read(root().join("tests/fixtures/media").join(name)).unwrap();
        let wave = sensebind::preprocess::audio::decode(bytes, name).unwrap();
        let want = read_gz_npy(&fixtures("audio").join(format!("{name}.decoded.npy.gz")));
        let (channels, n) = (want.shape()[0], want.shape()[1]);
        assert_eq!(wave.channels.len(), channels, "{name}");
        assert_eq!(wave.len(), n, "{name}: sample count");
        let got: Vec<f32> = wave.channels.concat();
        let err = max_abs(&got, want.as_f32().unwrap());
        println!("{name}: symphonia vs libsndfile max-abs {err:.3e}");
        // FLAC is lossless: identical. Vorbis decoders may differ in the last bits of the float output.
        let tolerance = if name.ends_with(".flac") { 0.0 } else { 1e-4 };
        assert!(err <= tolerance, "{name}: {err}");
    }
}

#[test]
fn resampling_is_torchaudio_length_for_common_rates() {
    for (rate, n) in [(44100u32, 136_710usize), (48000, 120_000), (22050, 1), (8000, 12_345)] {
        let out = resample(&vec![0.25; n], rate, 16000);
        let want = ((16000.0 * n as f64 / f64::from(rate)) as f32).ceil() as usize;
        assert_eq!(out.len(), want, "{rate} Hz × {n}");
    }
}

#[test]
fn video_matches_decord_and_pytorchvideo() {
    let cfg = PreprocessConfig::default();
    for (name, path) in inputs("video") {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures("video").join(format!("{name}.ref.json"))).unwrap())
                .unwrap();
        let info = probe(&path).unwrap();
        assert_eq!(
            info.frames as u64,
            meta["frames"].as_u64().unwrap(),
            "{name} frame count"
        );
        assert!((info.fps - meta["fps"].as_f64().unwrap()).abs() < 1e-9, "{name} fps");
        let want_frames: Vec<(usize, usize)> = meta["clip_frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
            .collect();
        assert_eq!(
            clip_frames(info.fps, info.frames, 2, 5).unwrap(),
            want_frames,
            "{name} clip frames"
        );

        let got = load(Modality::Vision, &path, &cfg, None).unwrap();
        assert_eq!(got.shape(), &[15, 3, 2, 224, 224], "{name}");
        let g = got.as_f32().unwrap();
        let grid = read_gz_npy(&fixtures("video").join(format!("{name}.grid.npy.gz")));
        let gw = grid.shape()[4];
        let mut sub = Vec::with_capacity(grid.len());
        for block in 0..15 * 3 * 2 {
            for y in (0..224).step_by(7) {
                for x in (0..224).step_by(7) {
                    sub.push(g[block * 224 * 224 + y * 224 + x]);
                }
            }
        }
        assert_eq!(gw, 32);
        let err = max_abs(&sub, grid.as_f32().unwrap());
        println!("{name}: grid max-abs {err:.3e}");
        assert!(err <= 1e-4, "{name}: grid max-abs {err}");
        let crop = fixtures("video").join(format!("{name}.crop7.npy.gz"));
        if crop.exists() {
            let want = read_gz_npy(&crop);
            let per = 3 * 2 * 224 * 224;
            let err = max_abs(&g[7 * per..8 * per], want.as_f32().unwrap());
            assert!(err <= 1e-4, "{name}: crop 7 max-abs {err}");
        }
    }
}

#[test]
fn manifest_preprocessing_constants_match_the_code() {
    use sensebind::encode::ModelDir;
    use sensebind::preprocess::{audio as a, depth::DepthConfig, imu::ImuConfig, thermal::ThermalConfig};
    let dir = ModelDir::open(&root().join("models/imagebind-tiny")).unwrap();
    let pre = |m: Modality| dir.tower(m).unwrap().preprocess.clone();
    let f = |t: &toml::Table, k: &str| t[k].as_float().unwrap_or_else(|| t[k].as_integer().unwrap() as f64);
    let vision = pre(Modality::Vision);
    for c in 0..3 {
        assert_eq!(vision["mean"][c].as_float().unwrap() as f32, CLIP_MEAN[c]);
        assert_eq!(vision["std"][c].as_float().unwrap() as f32, CLIP_STD[c]);
    }
    let audio = pre(Modality::Audio);
    assert_eq!(f(&audio, "mean") as f32, a::MEAN);
    assert_eq!(f(&audio, "std") as f32, a::STD);
    assert_eq!(f(&audio, "sample_rate_hz") as u32, a::SAMPLE_RATE);
    assert_eq!(f(&audio, "clips") as usize, a::CLIPS);
    assert_eq!(f(&audio, "target_frames") as usize, a::TARGET_FRAMES);
    let text = pre(Modality::Text);
    assert_eq!(f(&text, "sot_token") as i64, sensebind::preprocess::text::SOT);
    assert_eq!(f(&text, "eot_token") as i64, sensebind::preprocess::text::EOT);
    let depth = pre(Modality::Depth);
    let d = DepthConfig::default();
    assert_eq!(f(&depth, "baseline_m") as f32, d.baseline_m);
    assert_eq!(f(&depth, "focal_px") as f32, d.focal_px);
    assert_eq!(f(&depth, "min_depth_m") as f32, d.min_depth_m);
    assert_eq!(f(&depth, "max_depth_m") as f32, d.max_depth_m);
    assert_eq!(f(&depth, "png_unit_m"), d.png_unit_m);
    let thermal = pre(Modality::Thermal);
    let t = ThermalConfig::default();
    assert_eq!(thermal["scaling"].as_str(), Some("auto"));
    assert_eq!(f(&thermal, "low_percentile") as f32, t.low_percentile);
    assert_eq!(f(&thermal, "high_percentile") as f32, t.high_percentile);
    let imu = pre(Modality::Imu);
    let i = ImuConfig::default();
    assert_eq!(f(&imu, "samples") as usize, i.samples);
    assert_eq!(f(&imu, "window_secs"), i.window_secs);
}
