//! The GStreamer camera source on real pipelines: `videotestsrc` through `videoconvert` into the appsink, the
//! frames converted by our pixel-format code; a pipeline that ends is restarted; a pipeline that does not parse
//! is refused with GStreamer's reason.
#![cfg(feature = "gstreamer")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::SourceRun;

use sensebind::modality::Modality;
use sensebind::sources::config::GstreamerSourceConfig;
use sensebind::sources::gstreamer::GstreamerSource;
use sensebind::sources::{FrameImage, Sample};

fn config(modality: Modality, pipeline: &str) -> GstreamerSourceConfig {
    GstreamerSourceConfig {
        name: "cam0".into(),
        modality,
        pipeline: pipeline.into(),
        rate_hz: Some(30.0),
        depth_unit_m: 0.001,
        window_secs: None,
        hop_secs: None,
        gate: None,
    }
}

fn frames(samples: &[Sample]) -> Vec<(u64, FrameImage)> {
    samples
        .iter()
        .filter_map(|s| match s {
            Sample::Frame { t, image } => Some((t.0, image.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn live_yuy2_frames_arrive_at_their_rate_and_convert_as_gstreamer_converts_them() {
    let c = config(
        Modality::Vision,
        "videotestsrc is-live=true pattern=smpte ! video/x-raw,format=YUY2,width=320,height=240,framerate=30/1",
    );
    let (samples, stats) = SourceRun::run_for(GstreamerSource::new(c).unwrap(), 2.0, |_, _| false);
    let f = frames(&samples);
    assert!((50..=62).contains(&f.len()), "{} frames in 2 s at 30 fps", f.len());
    assert!(!stats.offline.load(Ordering::Relaxed));
    for pair in f.windows(2) {
        let step_ms = (pair[1].0 - pair[0].0) as f64 / 1e6;
        assert!((20.0..=50.0).contains(&step_ms), "frame step {step_ms} ms");
    }
    let FrameImage::Rgb(ours) = &f[5].1 else {
        panic!("vision frames are RGB")
    };
    assert_eq!((ours.width, ours.height), (320, 240));

    // The same bars generated as RGB by GStreamer itself: our YUYV conversion must reproduce them. Only the top
    // three quarters (colour bars and the reversed strip): the bottom has −I/+Q patches defined in YIQ, outside
    // the RGB gamut, and a noise patch.
    let c = config(
        Modality::Vision,
        "videotestsrc is-live=true pattern=smpte ! video/x-raw,format=RGB,width=320,height=240,framerate=30/1",
    );
    let (samples, _) = SourceRun::run_for(GstreamerSource::new(c).unwrap(), 3.0, |s, _| !s.is_empty());
    let FrameImage::Rgb(theirs) = &frames(&samples)[0].1 else {
        panic!("RGB")
    };
    let mut total = 0u64;
    let mut worst = 0u8;
    // YUY2 shares chroma between two pixels, so a bar edge at an odd column mixes two colours: compare the
    // pixels inside uniform runs (same colour as both neighbours in GStreamer's frame).
    let rows = 180;
    let mut compared = 0u64;
    for y in 0..rows {
        for x in 1..319 {
            let at = |p: &Vec<u8>, x: usize| p[y * 320 + x];
            let uniform = theirs
                .planes
                .iter()
                .all(|p| at(p, x - 1) == at(p, x) && at(p, x + 1) == at(p, x));
            if !uniform {
                continue;
            }
            compared += 1;
            for (a, b) in ours.planes.iter().zip(&theirs.planes) {
                let d = at(a, x).abs_diff(at(b, x));
                total += u64::from(d);
                worst = worst.max(d);
            }
        }
    }
    assert!(compared > 300 * rows as u64, "compared {compared} pixels");
    let mean = total as f64 / (compared as f64 * 3.0);
    assert!(mean < 0.5 && worst <= 2, "mean |diff| {mean:.2}, worst {worst}");
    let px = |x: usize, y: usize| {
        [
            ours.planes[0][y * 320 + x],
            ours.planes[1][y * 320 + x],
            ours.planes[2][y * 320 + x],
        ]
    };
    assert_eq!(px(20, 40), [255, 255, 255], "white bar");
    assert_eq!(px(66, 40), [255, 255, 0], "yellow bar");
}

#[test]
fn other_formats_are_converted_by_videoconvert_and_16_bit_frames_feed_thermal_and_depth() {
    // BGRx is not an appsink format: videoconvert gives RGB (odd width: lines padded to 4 bytes).
    let c = config(
        Modality::Vision,
        "videotestsrc is-live=true pattern=red ! video/x-raw,format=BGRx,width=161,height=120,framerate=30/1",
    );
    let (samples, _) = SourceRun::run_for(GstreamerSource::new(c).unwrap(), 3.0, |s, _| s.len() >= 3);
    let FrameImage::Rgb(img) = &frames(&samples)[0].1 else {
        panic!("RGB")
    };
    assert_eq!((img.width, img.height), (161, 120));
    assert!(
        img.planes[0].iter().all(|&r| r == 255) && img.planes[1].iter().all(|&g| g == 0),
        "red everywhere"
    );

    // I420 at an odd width: videoconvert picks YUY2, stored one pixel wider, cropped back.
    let c = config(
        Modality::Vision,
        "videotestsrc is-live=true pattern=blue ! video/x-raw,format=I420,width=161,height=120,framerate=30/1",
    );
    let (samples, stats) = SourceRun::run_for(GstreamerSource::new(c).unwrap(), 3.0, |s, _| s.len() >= 3);
    assert_eq!(stats.errors_total.load(Ordering::Relaxed), 0);
    let FrameImage::Rgb(img) = &frames(&samples)[0].1 else {
        panic!("RGB")
    };
    assert_eq!((img.width, img.height, img.planes[2].len()), (161, 120, 161 * 120));
    assert!(
        img.planes[2].iter().all(|&b| b > 240) && img.planes[0].iter().all(|&r| r < 16),
        "blue everywhere"
    );

    let c = config(
        Modality::Thermal,
        "videotestsrc is-live=true pattern=white ! video/x-raw,format=GRAY16_LE,width=160,height=120,framerate=9/1",
    );
    let (samples, _) = SourceRun::run_for(GstreamerSource::new(c).unwrap(), 3.0, |s, _| !s.is_empty());
    let FrameImage::Gray(g) = &frames(&samples)[0].1 else {
        panic!("thermal frames are one channel")
    };
    assert_eq!((g.width, g.height, g.bit_depth), (160, 120, 16));
    // videotestsrc's white in GRAY16 is 0xEBEB (235 of 255, both bytes): the raw counts arrive untouched.
    assert!(
        g.samples.iter().all(|&v| v == g.samples[0] && v > 0xE000),
        "white: {}",
        g.samples[0]
    );

    let c = GstreamerSourceConfig {
        depth_unit_m: 0.0001,
        ..config(
            Modality::Depth,
            "videotestsrc is-live=true pattern=white ! video/x-raw,format=GRAY16_LE,width=64,height=48,framerate=15/1",
        )
    };
    let (samples, _) = SourceRun::run_for(GstreamerSource::new(c).unwrap(), 3.0, |s, _| !s.is_empty());
    let FrameImage::Depth(d) = &frames(&samples)[0].1 else {
        panic!("depth frames are metric")
    };
    assert_eq!((d.width, d.height), (64, 48));
    // Full scale (65535 or thereabouts) × 0.1 mm.
    assert!(d.metres.iter().all(|&m| (6.0..=6.6).contains(&m)), "{}", d.metres[0]);
}

#[test]
fn a_pipeline_that_ends_goes_offline_and_is_restarted() {
    // 15 frames at 30 fps: the stream ends after half a second, every time.
    let c = config(
        Modality::Vision,
        "videotestsrc is-live=true num-buffers=15 ! video/x-raw,format=RGB,width=64,height=48,framerate=30/1",
    );
    let (samples, stats) = SourceRun::run_for(GstreamerSource::new(c).unwrap(), 8.0, |_, st| {
        st.lost_total.load(Ordering::Relaxed) >= 2
    });
    let lost = stats.lost_total.load(Ordering::Relaxed);
    assert!(lost >= 2, "restarts: {lost}");
    let f = frames(&samples);
    assert!(f.len() >= 30, "frames from at least two runs: {}", f.len());
    let times: Vec<f64> = f.iter().map(|x| x.0 as f64 / 1e6).collect();
    assert!(
        f.windows(2).all(|p| p[1].0 > p[0].0),
        "times increase across restarts: {times:?}"
    );
}

#[test]
fn a_pipeline_that_does_not_parse_is_refused_with_the_reason() {
    let e = GstreamerSource::new(config(Modality::Vision, "nosuchelement0 ! videoflip")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("source cam0: pipeline \"nosuchelement0 ! videoflip\" does not parse:"),
        "{text}"
    );
    assert!(text.contains("nosuchelement0"), "{text}");
}

#[test]
fn a_source_that_fails_at_run_time_stays_offline_and_keeps_retrying() {
    // Parses, but fails when it starts: the file does not exist.
    let c = config(
        Modality::Vision,
        "filesrc location=/nonexistent/sensebind.mjpeg ! decodebin",
    );
    let (samples, stats) = SourceRun::run_for(GstreamerSource::new(c).unwrap(), 1.5, |_, _| false);
    assert!(samples.is_empty());
    assert!(stats.offline.load(Ordering::Relaxed));
    assert_eq!(stats.lost_total.load(Ordering::Relaxed), 0, "never open, so never lost");
}

/// The daemon runs a GStreamer camera end to end: frames → clips → the vision tower → labels over MQTT, with the
/// sensor online at its frame rate.
#[test]
fn the_daemon_labels_a_gstreamer_camera() {
    let broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = common::Subscriber::start(broker.port, "sensebind/#");
    let config = common::daemon_config(
        "cam-rig",
        &broker.url(),
        &dir.path().join("state"),
        r#"
[[sources]]
type = "gstreamer"
name = "cam0"
modality = "vision"
pipeline = "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1"
rate_hz = 15.0
window_secs = 1.0
hop_secs = 0.5

[[prompts]]
id = "ball"
text = "a white ball moving"

[[prompts]]
id = "dog"
text = "a dog barking"
"#,
    );
    let mut daemon = common::Daemon::start(dir.path(), "cam", &config, &[]);
    let ok = sub.wait_for(Duration::from_secs(30), |msgs| {
        msgs.iter().any(|m| m.topic == "sensebind/cam-rig/labels/cam0")
            && common::source_stats(msgs, "cam-rig", "cam0").iter().any(|s| {
                s["online"] == true
                    && s["windows_total"].as_u64() >= Some(2)
                    && s["rate_hz"].as_f64().is_some_and(|r| (13.0..=17.0).contains(&r))
                    && s["gaps_total"] == 0
            })
    });
    let stats = common::source_stats(&sub.snapshot(), "cam-rig", "cam0");
    assert!(ok, "no labelled camera windows: {stats:?}\n{}", daemon.log());
    for m in sub
        .snapshot()
        .iter()
        .filter(|m| m.topic == "sensebind/cam-rig/labels/cam0")
    {
        common::check_scores(&m.json(), 2);
    }
    daemon.stop();
}
