//! Capture cost per sensor at native rates, each next to the plain tool that captures the same stream:
//!
//! | sensor | sensebind source | peer, same stream, same run |
//! |---|---|---|
//! | camera 640×480 YUY2 30 fps, thermal 160×120 GRAY16 9 fps, depth 848×480 GRAY16 30 fps | `gstreamer` (`videotestsrc is-live=true`), frames converted to the modality's image | `gst-launch-1.0` on the same pipeline into `fakesink` (GStreamer converting vision frames to RGB itself) |
//! | microphone 48 kHz mono s16 | `microphone` (cpal on ALSA's file plugin reading a FIFO fed in real time) | `arecord` on the same ALSA device into `/dev/null` |
//! | IMU CSV 400 Hz, WitMotion 200 Hz | `serial` on a socat pty | `cat` on the same kind of pty into `/dev/null` |
//!
//! CPU is the scheduler's runtime of every thread (`/proc/<pid>/task/*/schedstat`) over the run, as a share of
//! one core — for sensebind every thread but the benchmark's own loop that drains the ring (the window stage's
//! job in the daemon): the source thread, and the driver's threads (GStreamer's streaming threads, cpal's
//! capture thread). For audio it also reports the capture callback's own time and the latency from capture to the
//! source's ring (the capture delay ALSA reports + the callback + the source thread's 10 ms poll).
//!
//! ```text
//! cargo run --release --example capture_bench -- [SECONDS]      (default 20 per scenario)
//! ```
//!
//! Needs `gst-launch-1.0` (gstreamer1.0-tools), `arecord` (alsa-utils), `socat`, `mkfifo`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sensebind::modality::Modality;
use sensebind::ring::ring;
use sensebind::sources::config::{GstreamerSourceConfig, MicSampleFormat, MicrophoneSourceConfig, SerialProtocol};
use sensebind::sources::{Sample, Source, SourceOutput, SourceStats, StopFlag};

/// Scheduler runtime of every thread of `pid`, nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Scheduler runtime of `pid`'s threads other than the calling thread (the benchmark's own drain loop) and the
/// benchmark's feeder threads (which play the device).
fn cpu_ns_but_me(pid: u32) -> u64 {
    // /proc/thread-self → "<pid>/task/<tid>"
    let me: Option<i32> = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok());
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| t.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) != me)
        .filter(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            !matches!(comm.trim(), "bench-imu-feed" | "bench-feeder" | "bench-count")
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU share of one core a child process used over `secs` (after `warmup`).
fn peer_cpu(mut child: Child, warmup: f64, secs: f64) -> f64 {
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let pid = child.id();
    let (c0, t0) = (cpu_ns(pid), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let share = (cpu_ns(pid) - c0) as f64 / t0.elapsed().as_nanos() as f64;
    let _killed = child.kill();
    let _reaped = child.wait();
    share
}

struct Run {
    cpu: f64,
    samples: u64,
    rate: f64,
    latencies_ms: Vec<f64>,
    stats: Arc<SourceStats>,
}

/// Runs a source for `secs` after `warmup`, draining its ring every 2 ms like the window stage would.
fn run_source(mut source: Box<dyn Source>, warmup: f64, secs: f64) -> Run {
    let (producer, consumer) = ring(8192);
    let stats = Arc::new(SourceStats::default());
    let mut out = SourceOutput::new(producer, None, Arc::clone(&stats));
    let stop = StopFlag::new();
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("bench-source".into())
        .spawn(move || source.run(&mut out, &flag))
        .unwrap();
    let pid = std::process::id();
    let mut drained = Vec::new();
    let mut latencies_ms = Vec::new();
    let warm_until = Instant::now() + Duration::from_secs_f64(warmup);
    let mut measuring: Option<(u64, Instant, u64)> = None;
    let end = warm_until + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
        consumer.drain_into(&mut drained);
        let now = sensebind::clock::now();
        if Instant::now() >= warm_until {
            let m = measuring.get_or_insert_with(|| {
                (
                    cpu_ns_but_me(pid),
                    Instant::now(),
                    stats.samples_total.load(Ordering::Relaxed),
                )
            });
            let _ = m;
            for s in &drained {
                // Audio: age of the block's last sample when the window stage could first see it.
                if let Sample::Audio { t, rate_hz, samples } = s {
                    let last = t.0 + (samples.len().saturating_sub(1) as u64) * 1_000_000_000 / u64::from(*rate_hz);
                    latencies_ms.push(now.0.saturating_sub(last) as f64 / 1e6);
                }
            }
        }
        drained.clear();
    }
    let (c0, t0, s0) = measuring.unwrap();
    let cpu = (cpu_ns_but_me(pid) - c0) as f64 / t0.elapsed().as_nanos() as f64;
    let samples = stats.samples_total.load(Ordering::Relaxed) - s0;
    let rate = samples as f64 / t0.elapsed().as_secs_f64();
    stop.raise();
    handle.join().unwrap().unwrap();
    Run {
        cpu,
        samples,
        rate,
        latencies_ms,
        stats,
    }
}

fn pct(v: f64) -> String {
    format!("{:.2} %", v * 100.0)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn cameras(secs: f64) {
    let cases = [
        (
            "vision 640×480 YUY2 30 fps",
            Modality::Vision,
            "videotestsrc is-live=true pattern=ball ! video/x-raw,format=YUY2,width=640,height=480,framerate=30/1",
            "videoconvert ! video/x-raw,format=RGB ! fakesink sync=true",
        ),
        (
            "thermal 160×120 GRAY16 9 fps",
            Modality::Thermal,
            "videotestsrc is-live=true pattern=ball ! video/x-raw,format=GRAY16_LE,width=160,height=120,framerate=9/1",
            "fakesink sync=true",
        ),
        (
            "depth 848×480 GRAY16 30 fps",
            Modality::Depth,
            "videotestsrc is-live=true pattern=ball ! video/x-raw,format=GRAY16_LE,width=848,height=480,framerate=30/1",
            "fakesink sync=true",
        ),
    ];
    for (label, modality, pipeline, peer_sink) in cases {
        let config = GstreamerSourceConfig {
            name: "cam".into(),
            modality,
            pipeline: pipeline.into(),
            rate_hz: None,
            depth_unit_m: 0.001,
            window_secs: None,
            hop_secs: None,
            gate: None,
        };
        let source = sensebind::sources::gstreamer::GstreamerSource::new(config).unwrap();
        let ours = run_source(Box::new(source), 2.0, secs);
        let peer = Command::new("gst-launch-1.0")
            .arg("-q")
            .args(format!("{pipeline} ! {peer_sink}").split_whitespace())
            .stdout(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0 (gstreamer1.0-tools)");
        let peer = peer_cpu(peer, 2.0, secs);
        println!(
            "| {label} | {:.1} fps | {} | {} | {} |",
            ours.rate,
            pct(ours.cpu),
            pct(peer),
            ours.stats.errors_total.load(Ordering::Relaxed)
        );
    }
}

/// A FIFO-backed ALSA default capture device (as in tests/microphone.rs) fed a 1 kHz tone in real time.
fn fifo_mic(dir: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let fifo = dir.join("mic.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::create_dir_all(dir.join("alsa")).unwrap();
    std::fs::write(
        dir.join("alsa/asoundrc"),
        format!(
            "pcm.fifomic {{ type file; slave.pcm \"null\"; file \"/dev/null\"; infile \"{}\"; format \"raw\" }}\n\
             pcm.!default {{ type asym; capture.pcm \"fifomic\"; playback.pcm \"null\" }}\n",
            fifo.display()
        ),
    )
    .unwrap();
    let mut pipe = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    std::thread::Builder::new()
        .name("bench-feeder".into())
        .spawn(move || {
            let tone: Vec<u8> = (0..48_000)
                .flat_map(|i| {
                    let v = (f64::from(i) * 2.0 * std::f64::consts::PI * 1000.0 / 48_000.0).sin() * 8000.0;
                    (v as i16).to_le_bytes()
                })
                .collect();
            let start = Instant::now();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(sent as f64 / 96_000.0);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let at = sent % tone.len();
                if pipe.write_all(&tone[at..at + 960]).is_err() {
                    return;
                }
                sent += 960;
            }
        })
        .unwrap()
}

fn microphone_child(secs: f64) {
    let config = MicrophoneSourceConfig {
        name: "mic".into(),
        modality: Modality::Audio,
        device: "default".into(),
        rate_hz: Some(48_000),
        channels: Some(1),
        channel: 0,
        sample_format: Some(MicSampleFormat::I16),
        window_secs: None,
        hop_secs: None,
        gate: None,
    };
    let source = sensebind::sources::microphone::MicrophoneSource::new(config);
    let cb = source.callback_stats();
    // The FIFO's 64 KiB prefill arrives in a burst at the start: warm up past it.
    let s0 = Arc::clone(&cb);
    let before = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mark = Arc::clone(&before);
    // Samples per second from the callback's own count over the measured part.
    let sampler = std::thread::Builder::new()
        .name("bench-count".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            mark.store(s0.samples.load(Ordering::Relaxed), Ordering::Relaxed);
        })
        .unwrap();
    let mut run = run_source(Box::new(source), 3.0, secs);
    let _joined = sampler.join();
    let per_sec = (cb.samples.load(Ordering::Relaxed) - before.load(Ordering::Relaxed)) as f64 / secs;
    run.rate = per_sec;
    let calls = cb.callbacks.load(Ordering::Relaxed).max(1);
    println!(
        "MIC {:.0} {} {:.2} {:.1} {:.1} {:.2} {:.2} {:.2} {} {}",
        run.rate,
        run.samples,
        run.cpu * 100.0,
        cb.busy_ns.load(Ordering::Relaxed) as f64 / calls as f64 / 1000.0,
        cb.max_ns.load(Ordering::Relaxed) as f64 / 1000.0,
        cb.capture_delay_ns.load(Ordering::Relaxed) as f64 / calls as f64 / 1e6,
        quantile(&mut run.latencies_ms, 0.5),
        quantile(&mut run.latencies_ms, 0.99),
        run.stats.overrun_samples_total.load(Ordering::Relaxed),
        calls,
    );
}

fn microphone(secs: f64) {
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = fifo_mic(dir.path(), Arc::clone(&stop));
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--mic-child", &secs.to_string()])
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("MIC "))
        .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    let f: Vec<&str> = line.split_whitespace().collect();
    let peer = Command::new("arecord")
        .args([
            "-q",
            "-D",
            "default",
            "-f",
            "S16_LE",
            "-r",
            "48000",
            "-c",
            "1",
            "-t",
            "raw",
            "/dev/null",
        ])
        .env("XDG_CONFIG_HOME", dir.path())
        .spawn()
        .expect("arecord (alsa-utils)");
    let peer = peer_cpu(peer, 3.0, secs);
    stop.store(true, Ordering::Relaxed);
    if let Ok(mut r) = std::fs::File::open(dir.path().join("mic.fifo")) {
        let mut buf = vec![0u8; 1 << 17];
        let _read = std::io::Read::read(&mut r, &mut buf);
    }
    let _joined = feeder.join();
    println!(
        "| microphone 48 kHz mono s16 | {} samples/s | {} % | {} | 0 |",
        f[1],
        f[3],
        pct(peer)
    );
    println!();
    println!(
        "audio: {} callbacks, callback {} µs average, {} µs max; capture delay ALSA reported {} ms average; \
         capture → source ring p50 {} ms, p99 {} ms (to the end of each block; the source thread polls every 10 ms); \
         overrun samples {}",
        f[10], f[4], f[5], f[6], f[7], f[8], f[9]
    );
}

/// socat joining two ptys `dir/imu` and `dir/feed`.
fn pty_pair(dir: &Path) -> Child {
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", dir.join("imu").display()))
        .arg(format!("pty,raw,echo=0,link={}", dir.join("feed").display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat");
    let until = Instant::now() + Duration::from_secs(5);
    while !(dir.join("imu").exists() && dir.join("feed").exists()) {
        assert!(Instant::now() < until, "socat made no ptys");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Writes readings into `feed` at `rate_hz` until `stop`.
fn imu_feeder(
    feed: &Path,
    protocol: SerialProtocol,
    rate_hz: f64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let mut port = std::fs::OpenOptions::new().write(true).open(feed).unwrap();
    std::thread::Builder::new()
        .name("bench-imu-feed".into())
        .spawn(move || {
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs_f64(n as f64 / rate_hz);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let bytes = match protocol {
                    SerialProtocol::Csv => format!(
                        "{:.4},{:.4},9.8066,0.0100,-0.0200,0.0030\n",
                        (n as f64 * 0.01).sin(),
                        (n as f64 * 0.01).cos()
                    )
                    .into_bytes(),
                    SerialProtocol::Witmotion => {
                        let mut out = Vec::with_capacity(22);
                        for kind in [0x51u8, 0x52] {
                            let mut f = vec![0x55, kind, 0x10, 0x00, 0x20, 0x00, 0x00, 0x08, 0x00, 0x00];
                            let sum = f.iter().fold(0u8, |a, &b| a.wrapping_add(b));
                            f.push(sum);
                            out.extend(f);
                        }
                        out
                    }
                };
                if port.write_all(&bytes).is_err() {
                    return;
                }
                n += 1;
            }
        })
        .unwrap()
}

fn serial(secs: f64) {
    for (label, protocol, rate) in [
        ("IMU CSV 400 Hz", SerialProtocol::Csv, 400.0),
        ("IMU WitMotion 200 Hz", SerialProtocol::Witmotion, 200.0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut socat = pty_pair(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = imu_feeder(&dir.path().join("feed"), protocol, rate, Arc::clone(&stop));
        let mut config: sensebind::sources::config::SerialSourceConfig = toml::from_str(&format!(
            "name = \"imu\"\nmodality = \"imu\"\npath = {:?}\nrate_hz = {rate}\n",
            dir.path().join("imu").display().to_string()
        ))
        .unwrap();
        config.protocol = protocol;
        let ours = run_source(
            Box::new(sensebind::sources::serial::SerialImuSource::new(config)),
            1.0,
            secs,
        );
        let peer = Command::new("cat")
            .arg(dir.path().join("imu"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let peer = peer_cpu(peer, 1.0, secs);
        stop.store(true, Ordering::Relaxed);
        let _killed = socat.kill();
        let _reaped = socat.wait();
        let _joined = feeder.join();
        println!(
            "| {label} | {:.0} readings/s | {} | {} | {} |",
            ours.rate,
            pct(ours.cpu),
            pct(peer),
            ours.stats.garbage_bytes_total.load(Ordering::Relaxed)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--mic-child") {
        microphone_child(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20.0));
        return;
    }
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20.0);
    eprintln!("capture_bench: {secs} s per scenario");
    println!("| sensor | delivered | sensebind CPU (all threads) | peer CPU | errors |");
    println!("|---|---|---|---|---|");
    cameras(secs);
    serial(secs);
    microphone(secs);
}
