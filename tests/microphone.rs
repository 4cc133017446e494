//! The microphone source on a real ALSA capture path: alsa-lib's `file` plugin reading a FIFO, made the ALSA
//! default through `$XDG_CONFIG_HOME/alsa/asoundrc`; a feeder thread writes a 1 kHz sine at −12 dBFS (made by
//! `sox`) into the FIFO at real-time pace, and the test checks the frequency, level and timing of what the
//! source captured, cut into windows by the daemon's own windower. Then the daemon itself captures from it.
//!
//! alsa-lib reads its configuration path from the environment when it first loads, so each test runs its
//! capture in a child process (this test binary, re-run for one test) with `XDG_CONFIG_HOME` set: the test
//! process itself never touches ALSA, and HOME is left alone (overriding it breaks rustup).
#![cfg(feature = "microphone")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::SourceRun;
use sensebind::modality::Modality;
use sensebind::sources::config::{MicSampleFormat, MicrophoneSourceConfig};
use sensebind::sources::microphone::MicrophoneSource;
use sensebind::sources::{Sample, SourceStats};
use sensebind::window::WindowSpec;
use sensebind::window::{RawWindowData, windower};

const RATE: u32 = 48_000;
const CHILD: &str = "SENSEBIND_TEST_ALSA_CHILD";

/// A FIFO-backed ALSA default capture device with a real-time feeder, for as long as it lives.
struct FifoMic {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl FifoMic {
    /// `raw`: mono s16le at 48 kHz, looped.
    fn start(raw: Vec<u8>) -> Self {
        Self::start_with(raw, 2)
    }

    /// `raw`: mono 48 kHz samples of `bytes_per_sample` bytes, looped.
    fn start_with(raw: Vec<u8>, bytes_per_sample: usize) -> Self {
        let bytes_per_sec = f64::from(RATE) * bytes_per_sample as f64;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("mic.fifo");
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        std::fs::create_dir_all(dir.path().join("alsa")).unwrap();
        std::fs::write(
            dir.path().join("alsa/asoundrc"),
            format!(
                "pcm.fifomic {{ type file; slave.pcm \"null\"; file \"/dev/null\"; infile \"{}\"; format \"raw\"\n\
                 hint {{ show on description \"FIFO test microphone\" }} }}\n\
                 pcm.!default {{ type asym; capture.pcm \"fifomic\"; playback.pcm \"null\" }}\n",
                fifo.display()
            ),
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // While `dir/pause` exists the feeder writes nothing (a device that stops delivering).
        let pause = dir.path().join("pause");
        // Opened read-write: there is always a writer, so alsa-lib's open never blocks and never sees EOF.
        let mut pipe = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
        let feeder = common::spawn_named(move || {
            let chunk = (RATE as usize / 100) * bytes_per_sample; // 10 ms
            let start = Instant::now();
            let mut sent = 0usize;
            let mut paused = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                if pause.exists() {
                    // A stalled device: nothing for as long as the pause file exists (polled every 10 ms).
                    std::thread::sleep(Duration::from_millis(10));
                    paused += Duration::from_millis(10);
                    continue;
                }
                let due = start + paused + Duration::from_secs_f64(sent as f64 / bytes_per_sec);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    // Part of the scenario: a microphone delivers in real time, and the test checks that pace.
                    std::thread::sleep(wait);
                }
                let at = sent % raw.len();
                let end = (at + chunk).min(raw.len());
                if pipe.write_all(&raw[at..end]).is_err() {
                    return;
                }
                sent += end - at;
            }
        });
        Self {
            dir,
            stop,
            feeder: Some(feeder),
        }
    }

    fn config_home(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FifoMic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The feeder may be blocked writing into a full pipe nobody reads any more: read once to free it. The
        // read returns data, or end-of-file once the feeder has exited and closed the last writer.
        if let Ok(mut r) = std::fs::File::open(self.dir.path().join("mic.fifo")) {
            let mut buf = vec![0u8; 1 << 17];
            let _read = std::io::Read::read(&mut r, &mut buf);
        }
        if let Some(f) = self.feeder.take() {
            let _joined = f.join();
        }
    }
}

/// A 1 kHz sine at −12 dBFS peak, 48 kHz mono s16le, made by sox.
fn sine_raw(dir: &Path) -> Vec<u8> {
    sine_raw_as(dir, "16", "signed-integer")
}

/// The same tone with `bits` bits per sample in sox's `encoding` (little-endian).
fn sine_raw_as(dir: &Path, bits: &str, encoding: &str) -> Vec<u8> {
    let out = dir.join(format!("sine1k-{bits}-{encoding}.raw"));
    let ok = Command::new("sox")
        .args([
            "-n", "-r", "48000", "-c", "1", "-b", bits, "-e", encoding, "-L", "-t", "raw",
        ])
        .arg(&out)
        .args(["synth", "1", "sine", "1000", "gain", "-12"])
        .status()
        .expect("sox is installed (tools/install-deps installs it)")
        .success();
    assert!(ok, "sox failed");
    std::fs::read(out).unwrap()
}

/// Re-runs this test binary for test `name` with the FIFO microphone as ALSA's default.
fn run_child(name: &str, mic: &FifoMic) {
    run_child_with(name, mic, &[]);
}

fn run_child_with(name: &str, mic: &FifoMic, env: &[(&str, &str)]) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("XDG_CONFIG_HOME", mic.config_home())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {name} failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn mic_config(device: &str) -> MicrophoneSourceConfig {
    MicrophoneSourceConfig {
        name: "mic0".into(),
        modality: Modality::Audio,
        device: device.into(),
        rate_hz: Some(RATE),
        channels: Some(1),
        channel: 0,
        sample_format: Some(MicSampleFormat::I16),
        window_secs: None,
        hop_secs: None,
        gate: None,
    }
}

/// Power of `samples` at `freq` (Goertzel), normalised so a sine of amplitude A at `freq` gives its mean square
/// A²/2.
fn goertzel(samples: &[f32], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power / (samples.len() as f64).powi(2)
}

#[test]
fn captures_a_1khz_sine_at_minus_12_dbfs_into_windows() {
    if !in_child() {
        let dir = tempfile::tempdir().unwrap();
        let mic = FifoMic::start(sine_raw(dir.path()));
        run_child("captures_a_1khz_sine_at_minus_12_dbfs_into_windows", &mic);
        return;
    }
    let source = MicrophoneSource::new(mic_config("default"));
    let callbacks = source.callback_stats();
    let started = Instant::now();
    let (samples, stats) = SourceRun::run_for(source, 4.0, |_, _| false);
    let elapsed = started.elapsed().as_secs_f64();

    let blocks: Vec<(u64, u32, &Vec<f32>)> = samples
        .iter()
        .filter_map(|s| match s {
            Sample::Audio { t, rate_hz, samples } => Some((t.0, *rate_hz, samples)),
            _ => None,
        })
        .collect();
    assert!(!blocks.is_empty(), "no audio captured");
    assert!(blocks.iter().all(|b| b.1 == RATE));
    let total: usize = blocks.iter().map(|b| b.2.len()).sum();
    // Real-time pace (the FIFO's 64 KiB prefill arrives early: up to 0.7 s extra).
    let secs = total as f64 / f64::from(RATE);
    assert!(
        secs > elapsed - 1.5 && secs < elapsed + 1.0,
        "{secs:.2} s of audio in {elapsed:.2} s"
    );
    assert_eq!(stats.overrun_samples_total.load(Ordering::Relaxed), 0);
    // Block times increase, and the stream's time span matches its sample count once past the prefill burst.
    assert!(blocks.windows(2).all(|p| p[1].0 > p[0].0), "block times increase");
    let cb = callbacks.callbacks.load(Ordering::Relaxed);
    assert!(cb > 10, "callbacks: {cb}");

    // Cut 1 s windows with the daemon's windower and check each one after the first.
    let mut cutter = windower(
        Modality::Audio,
        WindowSpec {
            window_secs: 1.0,
            hop_secs: 1.0,
        },
    );
    let mut windows = Vec::new();
    for s in samples {
        cutter.push(s, &mut windows);
    }
    assert!(windows.len() >= 2, "windows: {}", windows.len());
    for w in windows.iter().skip(1) {
        let RawWindowData::Audio { rate_hz, samples } = &w.data else {
            panic!("audio windows")
        };
        let rate = f64::from(*rate_hz);
        let rms = (samples.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / samples.len() as f64).sqrt();
        let peak_dbfs = 20.0 * (rms * std::f64::consts::SQRT_2).log10();
        assert!((peak_dbfs + 12.0).abs() < 0.3, "level {peak_dbfs:.2} dBFS");
        let at_1k = goertzel(samples, 1000.0, rate);
        for other in [500.0, 900.0, 1100.0, 2000.0, 3000.0] {
            let p = goertzel(samples, other, rate);
            assert!(p < at_1k * 1e-3, "{other} Hz has {p:e} against {at_1k:e} at 1 kHz");
        }
        // All the window's power is in the tone: A²/2 with A = 10^(−12/20) = 0.251, i.e. 0.0315.
        assert!((at_1k / 0.0315 - 1.0).abs() < 0.07, "1 kHz power {at_1k}");
        let span = w.t1.0.saturating_sub(w.t0.0) as f64 / 1e9;
        assert!((span - 1.0).abs() < 0.05, "window spans {span:.3} s");
    }
}

#[test]
fn a_missing_device_is_retried_offline_and_named() {
    if !in_child() {
        let dir = tempfile::tempdir().unwrap();
        let mic = FifoMic::start(sine_raw(dir.path()));
        run_child("a_missing_device_is_retried_offline_and_named", &mic);
        return;
    }
    let source = MicrophoneSource::new(mic_config("no-such-microphone"));
    let err = source.probe().unwrap_err();
    assert!(
        err.starts_with("no input device matches \"no-such-microphone\"; inputs: "),
        "{err}"
    );
    assert!(err.contains("fifomic"), "the listing names the inputs: {err}");
    let run = SourceRun::start(source);
    common::wait_until(Duration::from_secs(5), "the missing microphone marked offline", || {
        run.stats.offline.load(Ordering::Relaxed)
    });
    let stats = Arc::clone(&run.stats);
    run.finish();
    assert_eq!(stats.samples_total.load(Ordering::Relaxed), 0);

    // A format the device cannot give is refused with what it offers.
    let mut bad = mic_config("fifomic");
    bad.channels = Some(1);
    bad.channel = 3;
    let err = MicrophoneSource::new(bad).probe().unwrap_err();
    assert!(err.contains("channel 3 does not exist with 1 channels"), "{err}");
}

/// The daemon captures from the microphone: the sensor is online at its device rate and windows are embedded.
#[test]
fn the_daemon_captures_and_embeds_microphone_windows() {
    if !in_child() {
        let dir = tempfile::tempdir().unwrap();
        let mic = FifoMic::start(sine_raw(dir.path()));
        run_child("the_daemon_captures_and_embeds_microphone_windows", &mic);
        return;
    }
    let broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = common::Subscriber::start(broker.port, "sensebind/#");
    let config = common::daemon_config(
        "mic-rig",
        &broker.url(),
        &dir.path().join("state"),
        r#"
[[sources]]
type = "microphone"
name = "mic0"
modality = "audio"
device = "default"
rate_hz = 48000
channels = 1
sample_format = "i16"
window_secs = 1.0
hop_secs = 0.5

[[prompts]]
id = "tone"
text = "a pure tone"

[[prompts]]
id = "dog"
text = "a dog barking"
"#,
    );
    let mut daemon = common::Daemon::start(dir.path(), "mic", &config, &[]);
    let ok = sub.wait_for(Duration::from_secs(20), |msgs| {
        common::source_stats(msgs, "mic-rig", "mic0")
            .iter()
            .any(|s| s["online"] == true && s["windows_total"].as_u64() >= Some(4) && s["overrun_samples_total"] == 0)
    });
    let stats = common::source_stats(&sub.snapshot(), "mic-rig", "mic0");
    assert!(ok, "no microphone windows: {stats:?}\n{}", daemon.log());
    let labels: Vec<serde_json::Value> = sub
        .snapshot()
        .iter()
        .filter(|m| m.topic == "sensebind/mic-rig/labels/mic0")
        .map(common::Received::json)
        .collect();
    assert!(!labels.is_empty(), "no labels for the microphone");
    for v in &labels {
        common::check_scores(v, 2);
    }
    daemon.stop();
}

/// Captures `secs` seconds from the default device opened as `config` says; returns the audio blocks' samples.
fn capture(config: MicrophoneSourceConfig, secs: f64) -> (Vec<f32>, Arc<SourceStats>) {
    let (samples, stats) = SourceRun::run_for(MicrophoneSource::new(config), secs, |_, _| false);
    let audio = samples
        .into_iter()
        .flat_map(|s| match s {
            Sample::Audio { samples, .. } => samples,
            _ => Vec::new(),
        })
        .collect();
    (audio, stats)
}

/// i16, i32 and f32 streams of the same tone all arrive as the same floats.
#[test]
fn every_sample_format_reads_the_same_tone() {
    if !in_child() {
        for (bits, encoding, format) in [
            ("16", "signed-integer", "i16"),
            ("32", "signed-integer", "i32"),
            ("32", "floating-point", "f32"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let bytes = bits.parse::<usize>().unwrap() / 8;
            let mic = FifoMic::start_with(sine_raw_as(dir.path(), bits, encoding), bytes);
            run_child_with(
                "every_sample_format_reads_the_same_tone",
                &mic,
                &[("SENSEBIND_TEST_FORMAT", format)],
            );
        }
        return;
    }
    let format = match std::env::var("SENSEBIND_TEST_FORMAT").as_deref() {
        Ok("i32") => MicSampleFormat::I32,
        Ok("f32") => MicSampleFormat::F32,
        _ => MicSampleFormat::I16,
    };
    let mut config = mic_config("default");
    config.sample_format = Some(format);
    let (audio, stats) = capture(config, 2.5);
    assert!(audio.len() > 48_000, "{format:?}: {} samples", audio.len());
    assert_eq!(stats.overrun_samples_total.load(Ordering::Relaxed), 0);
    let tail = &audio[audio.len() - 48_000..];
    let peak = tail.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let peak_dbfs = 20.0 * f64::from(peak).log10();
    assert!((peak_dbfs + 12.0).abs() < 0.2, "{format:?}: peak {peak_dbfs:.2} dBFS");
    let at_1k = goertzel(tail, 1000.0, f64::from(RATE));
    assert!((at_1k / 0.0315 - 1.0).abs() < 0.07, "{format:?}: 1 kHz power {at_1k}");
}

/// A device that stops delivering is closed after 2 s (offline, counted as lost) and reopened; when it delivers
/// again the sensor is back online and samples flow.
#[test]
fn a_stalled_device_goes_offline_and_comes_back() {
    if !in_child() {
        let dir = tempfile::tempdir().unwrap();
        let mic = FifoMic::start(sine_raw(dir.path()));
        run_child("a_stalled_device_goes_offline_and_comes_back", &mic);
        return;
    }
    let pause = std::path::PathBuf::from(std::env::var_os("XDG_CONFIG_HOME").unwrap()).join("pause");
    let run = SourceRun::start(MicrophoneSource::new(mic_config("default")));
    let stats = Arc::clone(&run.stats);
    let wait =
        |what: &str, secs: u64, cond: &dyn Fn() -> bool| common::wait_until(Duration::from_secs(secs), what, cond);
    let samples = || stats.samples_total.load(Ordering::Relaxed);
    wait("samples", 5, &|| samples() > 50);
    std::fs::write(&pause, b"").unwrap();
    wait("offline", 8, &|| stats.offline.load(Ordering::Relaxed));
    assert_eq!(stats.lost_total.load(Ordering::Relaxed), 1);
    std::fs::remove_file(&pause).unwrap();
    let before = samples();
    wait("back online", 15, &|| {
        !stats.offline.load(Ordering::Relaxed) && samples() > before + 50
    });
    run.finish();
}
