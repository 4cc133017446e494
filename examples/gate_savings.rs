//! Measures what gates (`[sources.gate]`, `window::gate`) save on the bundled recordings: each recording is cut into
//! the daemon's windows (`window::file_windows`, the modality's default window and hop), the gate decides on each
//! window as the window stage does, and the tower is timed on every window and on the windows the gate lets through.
//!
//! `cargo run --release --example gate_savings -- [--model DIR|FILE.onnx] [--modality M] [--backend B] [--threads N]`
//!
//! Without `--model`, the bundled tiny towers (models/imagebind-tiny). `--model FILE.onnx` times one tower
//! (`--modality` says which: the real-size towers of docs/BENCHMARKS.md). Used for docs/BENCHMARKS.md ("Gates").

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use sensebind::clock::Timestamp;
use sensebind::encode::engine::{self, ModelSource};
use sensebind::encode::manifest::ModelDir;
use sensebind::encode::{Backend, EngineOptions};
use sensebind::modality::Modality;
use sensebind::preprocess::PreprocessConfig;
use sensebind::preprocess::imu::ColumnRef;
use sensebind::sources::Sample;
use sensebind::sources::config::WindowSpec;
use sensebind::sources::replay::read_samples;
use sensebind::tensor::Tensor;
use sensebind::window::gate::{self, Gate, GateConfig};
use sensebind::window::{PrepareContext, prepare, windower};
use sensebind::window::{RawWindow, RawWindowData};

/// Seconds of stream per recording.
const STREAM_SECS: u64 = 60;

/// The recordings and the gate each is measured with (the thresholds docs/configuration.md suggests).
fn recordings() -> Vec<(Modality, &'static str, GateConfig, u64)> {
    let audio = GateConfig {
        min_dbfs: Some(-50.0),
        ..GateConfig::default()
    };
    let frames = GateConfig {
        min_frame_diff: Some(0.01),
        ..GateConfig::default()
    };
    let imu = GateConfig {
        min_imu_variance: Some(0.05),
        ..GateConfig::default()
    };
    vec![
        (Modality::Vision, "carphone_pristine.mp4", frames, 0),
        (Modality::Vision, "astronaut.png", frames, 0),
        (Modality::Audio, "loop_amen.flac", audio, 0),
        (Modality::Audio, "ambi_piano.flac", audio, 0),
        (Modality::Audio, "bell.oga", audio, 0),
        (Modality::Audio, "misc_burp.flac", audio, 0),
        // A doorbell: the bell, then 10 s of silence, again and again.
        (Modality::Audio, "bell.oga", audio, 10),
        (Modality::Imu, "xsens_walking_lowerLeg_120Hz.txt", imu, 0),
    ]
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = arg(&args, "--model").map_or_else(|| root.join("models/imagebind-tiny"), PathBuf::from);
    let only: Option<Modality> = arg(&args, "--modality").map(|m| m.parse().expect("--modality"));
    let backend: Backend = arg(&args, "--backend").map_or(Backend::Tract, |b| b.parse().expect("--backend"));
    let threads: usize = arg(&args, "--threads").map_or(1, |t| t.parse().expect("--threads"));
    let mut preprocess = PreprocessConfig::default();
    // The bundled IMU recording's columns (as tests/daemon.rs configures them).
    let names = |n: [&str; 3]| n.map(|s| ColumnRef::Name(s.to_owned())).to_vec();
    preprocess.imu.acc_columns = names(["Acc_X", "Acc_Y", "Acc_Z"]);
    preprocess.imu.gyro_columns = names(["Gyr_X", "Gyr_Y", "Gyr_Z"]);
    preprocess.imu.rate_hz = Some(120.0);
    let cx = PrepareContext {
        preprocess: preprocess.clone(),
        tokenizer: None,
    };
    let options = EngineOptions {
        backend,
        threads,
        ..EngineOptions::default()
    };
    println!("| recording | modality | windows | gated | tower ms, every window | tower ms, ungated only | saved |");
    println!("|---|---|---|---|---|---|---|");
    for (modality, file, gate, silence_secs) in recordings() {
        if only.is_some_and(|m| m != modality) {
            continue;
        }
        let encoder = if model.extension().is_some_and(|e| e == "onnx") {
            engine::load(ModelSource::Onnx(&model), modality, &options).expect("tower")
        } else {
            let dir = ModelDir::open(&model).expect("model directory");
            engine::load(ModelSource::Dir(&dir), modality, &options).expect("tower")
        };
        let path = root.join("tests/fixtures/media").join(file);
        let (inputs, gated) = windows(modality, &path, gate, silence_secs, &preprocess, &cx);
        // One untimed call, then every window one by one (the daemon's batch of one when it keeps up).
        encoder.encode(&Tensor::stack(&inputs[..1]).unwrap()).unwrap();
        let mut all_ms = 0.0;
        let mut open_ms = 0.0;
        for (input, &g) in inputs.iter().zip(&gated) {
            let t = Instant::now();
            encoder
                .encode(&Tensor::stack(std::slice::from_ref(input)).unwrap())
                .unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            all_ms += ms;
            if !g {
                open_ms += ms;
            }
        }
        let n_gated = gated.iter().filter(|&&g| g).count();
        println!(
            "| {file}{} | {modality} | {} | {n_gated} | {all_ms:.0} | {open_ms:.0} | {:.0} % |",
            if silence_secs > 0 {
                format!(" + {silence_secs} s silence")
            } else {
                String::new()
            },
            inputs.len(),
            100.0 * (all_ms - open_ms) / all_ms.max(f64::MIN_POSITIVE)
        );
    }
}

/// The recording's windows as tower inputs, and whether the gate closed on each: the file played in a loop (as a
/// replay source plays it) for `STREAM_SECS`, cut with the modality's default window and hop.
fn windows(
    modality: Modality,
    path: &Path,
    gate: GateConfig,
    silence_secs: u64,
    preprocess: &PreprocessConfig,
    cx: &PrepareContext,
) -> (Vec<Tensor>, Vec<bool>) {
    let mut samples = Vec::new();
    read_samples(modality, path, preprocess, 1.0, &mut |s| {
        samples.push(s);
        true
    })
    .expect("recording");
    if let Some(Sample::Audio {
        t,
        rate_hz,
        samples: last,
    }) = samples.last().cloned().filter(|_| silence_secs > 0)
    {
        let start = t.0 + last.len() as u64 * 1_000_000_000 / u64::from(rate_hz);
        for i in 0..silence_secs * 10 {
            let t = Timestamp(start + i * 100_000_000);
            let block = vec![0.0; rate_hz as usize / 10];
            samples.push(Sample::Audio {
                t,
                rate_hz,
                samples: block,
            });
        }
    }
    let time = |s: &Sample| match s {
        Sample::Frame { t, .. } | Sample::Audio { t, .. } | Sample::Imu { t, .. } | Sample::Text { t, .. } => t.0,
    };
    // One loop: the last sample's time plus one sample period (frame, IMU reading or audio block).
    let period = samples
        .windows(2)
        .last()
        .map_or(1_000_000_000, |w| time(&w[1]) - time(&w[0]));
    let length = samples.last().map_or(0, time) + period;
    let mut cutter = windower(modality, WindowSpec::for_modality(modality, None, None));
    let mut gate = Gate::new(gate);
    let (mut raws, mut inputs, mut gated) = (Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0;
    let (mut previous, mut measures) = (None, Vec::new());
    while offset < STREAM_SECS * 1_000_000_000 {
        for s in &samples {
            let mut s = s.clone();
            match &mut s {
                Sample::Frame { t, .. } | Sample::Audio { t, .. } | Sample::Imu { t, .. } | Sample::Text { t, .. } => {
                    *t = Timestamp(t.0 + offset);
                }
            }
            cutter.push(s, &mut raws);
        }
        for w in raws.drain(..) {
            if let Some(m) = measure(&w, previous.as_ref()) {
                measures.push(m);
            }
            previous = Some(w.clone());
            let seq = inputs.len() as u64;
            gated.push(gate.check(&w, seq).is_some());
            inputs.push(prepare(&w, cx).expect("window"));
        }
        offset += length;
    }
    measures.sort_by(f64::total_cmp);
    if let (Some(lo), Some(hi)) = (measures.first(), measures.last()) {
        let mid = measures[measures.len() / 2];
        println!(
            "<!-- {}: measure min {lo:.4} median {mid:.4} max {hi:.4} -->",
            path.display()
        );
    }
    (inputs, gated)
}

/// The gate's measure of a window: dBFS, the largest IMU channel variance, or the mean frame difference from the
/// previous window.
fn measure(w: &RawWindow, previous: Option<&RawWindow>) -> Option<f64> {
    match (&w.data, previous.map(|p| &p.data)) {
        (RawWindowData::Audio { samples, .. }, _) => Some(gate::dbfs(samples)),
        (RawWindowData::Imu { values, .. }, _) => Some(gate::imu_variance(values)),
        (RawWindowData::Clip([a, b]), Some(RawWindowData::Clip([pa, pb]))) => {
            Some((gate::frame_diff(a, pa)? + gate::frame_diff(b, pb)?) / 2.0)
        }
        _ => None,
    }
}
