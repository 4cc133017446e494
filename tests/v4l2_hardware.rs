//! V4L2 cameras on real hardware. CI machines have no video device (no videodev module, no loopback), so these
//! tests are `#[ignore]`d; run them on a device with a camera (README, "Hardware tests"):
//!
//! ```text
//! SENSEBIND_V4L2_DEVICE=/dev/video0 cargo test --release --test v4l2_hardware -- --ignored --test-threads=1
//! ```
//!
//! `SENSEBIND_V4L2_MODALITY` (`vision`, default; `depth` for a Z16 camera; `thermal` for Y16/GREY) picks the
//! kind of camera; `SENSEBIND_V4L2_REPLUG=1` also runs the unplug/replug test, which asks you to pull the camera
//! out and plug it back in. What runs everywhere: the device-missing paths below (not ignored).
#![cfg(feature = "v4l2")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::SourceRun;
use sensebind::modality::Modality;
use sensebind::sources::config::V4l2SourceConfig;
use sensebind::sources::v4l2::{V4l2Source, offered_modes};
use sensebind::sources::{FrameImage, Sample, SourceStats};

fn device() -> String {
    std::env::var("SENSEBIND_V4L2_DEVICE").unwrap_or_else(|_| "/dev/video0".into())
}

fn modality() -> Modality {
    match std::env::var("SENSEBIND_V4L2_MODALITY").as_deref() {
        Ok("depth") => Modality::Depth,
        Ok("thermal") => Modality::Thermal,
        _ => Modality::Vision,
    }
}

fn config(device: &str) -> V4l2SourceConfig {
    V4l2SourceConfig {
        name: "cam0".into(),
        modality: modality(),
        device: device.into(),
        format: None,
        width: None,
        height: None,
        rate_hz: None,
        buffers: 4,
        depth_unit_m: 0.001,
        window_secs: None,
        hop_secs: None,
        gate: None,
    }
}

/// Runs the source until `until` holds or `secs` pass; returns the samples with their arrival times, and the
/// counters.
fn run(
    c: V4l2SourceConfig,
    secs: f64,
    until: impl Fn(&[Sample], &SourceStats) -> bool,
) -> (Vec<(Sample, sensebind::clock::Timestamp)>, Arc<SourceStats>) {
    let run = SourceRun::start(V4l2Source::new(c));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let (mut got, mut plain, mut batch) = (Vec::new(), Vec::new(), Vec::new());
    while Instant::now() < end {
        run.drain(&mut batch);
        let now = sensebind::clock::now();
        plain.extend(batch.iter().cloned());
        got.extend(batch.drain(..).map(|s| (s, now)));
        if until(&plain, &run.stats) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = Arc::clone(&run.stats);
    let now = sensebind::clock::now();
    got.extend(run.finish().into_iter().map(|s| (s, now)));
    (got, stats)
}

#[test]
fn a_missing_camera_stays_offline_and_is_retried() {
    let (got, stats) = run(config("/dev/video-sensebind-missing"), 1.0, |_, _| false);
    assert!(got.is_empty());
    assert!(stats.offline.load(Ordering::Relaxed));
    assert_eq!(stats.lost_total.load(Ordering::Relaxed), 0);
    let (got, stats) = run(config("No Such Camera"), 0.5, |_, _| false);
    assert!(got.is_empty() && stats.offline.load(Ordering::Relaxed));
}

#[test]
#[ignore = "needs a V4L2 camera: SENSEBIND_V4L2_DEVICE=/dev/videoN"]
fn the_camera_lists_its_modes() {
    let dev = v4l::Device::with_path(device()).unwrap();
    let modes = offered_modes(&dev, None).unwrap();
    eprintln!("{}", sensebind::sources::camera::describe_modes(&modes));
    assert!(!modes.is_empty());
}

#[test]
#[ignore = "needs a V4L2 camera: SENSEBIND_V4L2_DEVICE=/dev/videoN"]
fn frames_stream_at_the_negotiated_rate_with_driver_timestamps() {
    let (got, stats) = run(config(&device()), 5.0, |_, _| false);
    let frames: Vec<(u64, u64, &FrameImage)> = got
        .iter()
        .filter_map(|(s, arrived)| match s {
            Sample::Frame { t, image } => Some((t.0, arrived.0, image)),
            _ => None,
        })
        .collect();
    eprintln!(
        "{} frames, rate {:.1} Hz, overruns {}",
        frames.len(),
        stats.rate_hz(),
        stats.overrun_samples_total.load(Ordering::Relaxed)
    );
    assert!(frames.len() > 10, "frames: {}", frames.len());
    assert!(frames.windows(2).all(|p| p[1].0 > p[0].0), "capture times increase");
    for (t, arrived, _) in &frames {
        let age_ms = arrived.saturating_sub(*t) as f64 / 1e6;
        assert!(
            *t <= *arrived && age_ms < 500.0,
            "a frame captured {age_ms:.0} ms before it was read"
        );
    }
    let (w, h) = match frames[0].2 {
        FrameImage::Rgb(i) => (i.width, i.height),
        FrameImage::Gray(g) => (g.width, g.height),
        FrameImage::Depth(d) => (d.width, d.height),
    };
    assert!(w > 0 && h > 0);
    assert_eq!(
        stats.errors_total.load(Ordering::Relaxed),
        0,
        "frames that did not convert"
    );
}

#[test]
#[ignore = "needs a V4L2 camera: SENSEBIND_V4L2_DEVICE=/dev/videoN"]
fn an_impossible_mode_is_refused_with_the_modes_offered() {
    let mut c = config(&device());
    c.width = Some(7);
    c.height = Some(5);
    let (got, stats) = run(c, 1.0, |_, _| false);
    assert!(got.is_empty() && stats.offline.load(Ordering::Relaxed));
}

#[test]
#[ignore = "needs a USB camera and a person: SENSEBIND_V4L2_REPLUG=1"]
fn an_unplugged_camera_goes_offline_and_comes_back() {
    if std::env::var_os("SENSEBIND_V4L2_REPLUG").is_none() {
        eprintln!("skipped: set SENSEBIND_V4L2_REPLUG=1 to run");
        return;
    }
    eprintln!("Unplug the camera now, wait two seconds, and plug it back in (60 s).");
    let (got, stats) = run(config(&device()), 60.0, |s, st| {
        st.lost_total.load(Ordering::Relaxed) >= 1 && !st.offline.load(Ordering::Relaxed) && s.len() > 100
    });
    assert!(stats.lost_total.load(Ordering::Relaxed) >= 1, "never lost");
    assert!(!stats.offline.load(Ordering::Relaxed), "not back");
    assert!(got.len() > 100);
}
