//! A serial IMU through a real pty pair (`socat`): CSV lines with garbage in between reach the daemon through the
//! `serialport` crate and come out as labelled windows; killing socat (unplug) marks the source offline, a new
//! pair at the same path (replug) brings it back, and the daemon never stops.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Mosquitto, Subscriber, root, toml_str};

/// `socat` joining two ptys, reachable as `dir/imu` (the daemon's end) and `dir/feed` (the test's end).
struct PtyPair {
    child: Child,
}

impl PtyPair {
    fn start(dir: &Path) -> Self {
        // Links left by an earlier pair may or may not exist.
        let _stale_imu = std::fs::remove_file(dir.join("imu"));
        let _stale_feed = std::fs::remove_file(dir.join("feed"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dir.join("imu").display()))
            .arg(format!("pty,raw,echo=0,link={}", dir.join("feed").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (apt-get install socat)");
        common::wait_until(Duration::from_secs(5), "socat's ptys", || {
            dir.join("imu").exists() && dir.join("feed").exists()
        });
        Self { child }
    }

    /// Unplugs: socat exits and both ptys disappear.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// Writes CSV readings (200 a second, every 25th line garbage) into `feed` until told to stop or the pty goes.
fn feeder(feed: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::Builder::new()
        .name("feeder".into())
        .spawn(move || {
            let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&feed) else {
                return 0;
            };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = n as f32 / 200.0;
                let line = if n % 25 == 24 {
                    "\u{1}\u{2}garbage\u{ff};;\n".to_owned()
                } else {
                    format!(
                        "{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}\n",
                        (t * 6.0).sin(),
                        0.1,
                        9.81,
                        0.0,
                        (t * 3.0).cos(),
                        0.0
                    )
                };
                if f.write_all(line.as_bytes()).is_err() {
                    break;
                }
                n += 1;
                // Part of the scenario: a device sending at its own pace (about 192 lines a second).
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
        .unwrap()
}

fn imu_stats(sub: &Subscriber) -> Vec<serde_json::Value> {
    common::source_stats(&sub.snapshot(), "serial", "imu0")
}

#[test]
fn csv_imu_over_a_pty_survives_garbage_unplug_and_replug() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let config = tmp.path().join("serial.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[device]
id = "serial"
[runtime]
state_dir = {state}
stats_interval_secs = 1
[models]
dir = {models}
backend = "tract"
[mqtt]
url = "{url}"
[[sources]]
type = "serial"
name = "imu0"
modality = "imu"
path = {path}
rate_hz = 200.0
window_secs = 1.0
hop_secs = 0.5
[[prompts]]
id = "walking"
text = "a person walking"
[[prompts]]
id = "still"
text = "a phone lying on a table"
"#,
            state = toml_str(&tmp.path().join("state")),
            models = toml_str(&root().join("models/imagebind-tiny")),
            url = broker.url(),
            path = toml_str(&tmp.path().join("imu")),
        ),
    )
    .unwrap();
    let sub = Subscriber::start(broker.port, "sensebind/serial/#");
    let pair = PtyPair::start(tmp.path());
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(["run", "--config"])
        .arg(&config)
        .env("SENSEBIND_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();

    // Plugged in: readings flow, garbage is counted, windows are labelled.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = feeder(tmp.path().join("feed"), Arc::clone(&stop));
    let flowing = sub.wait_for(Duration::from_secs(30), |msgs| {
        msgs.iter().any(|m| m.topic == "sensebind/serial/labels/imu0")
            && msgs.iter().filter(|m| m.topic == "sensebind/serial/stats").any(|m| {
                let s = &m.json()["sources"]["imu0"];
                s["online"] == true
                    && s["samples_total"].as_u64() > Some(200)
                    && s["garbage_bytes_total"].as_u64() > Some(0)
            })
    });
    assert!(flowing, "no labelled IMU windows: {:?}\n{}", imu_stats(&sub), log());

    // Unplugged: the source goes offline, the daemon keeps running.
    pair.kill();
    writer.join().unwrap();
    let offline = sub.wait_for(Duration::from_secs(10), |_| {
        imu_stats(&sub)
            .last()
            .is_some_and(|s| s["online"] == false && s["lost_total"] == 1)
    });
    assert!(offline, "not offline after unplug: {:?}\n{}", imu_stats(&sub), log());
    // The retained sensor status follows.
    let status = |want: &[u8]| {
        sub.wait_for(Duration::from_secs(5), |m| {
            m.iter()
                .rev()
                .find(|r| r.topic == "sensebind/serial/sensor/imu0/status")
                .is_some_and(|r| r.payload == want)
        })
    };
    assert!(status(b"offline"), "sensor status not offline");
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon stopped:\n{}", log());
    let before = imu_stats(&sub).last().unwrap()["samples_total"].as_u64().unwrap();

    // Replugged at the same path: online again, readings resume.
    let _pair = PtyPair::start(tmp.path());
    let writer = feeder(tmp.path().join("feed"), Arc::clone(&stop));
    let back = sub.wait_for(Duration::from_secs(20), |_| {
        imu_stats(&sub)
            .last()
            .is_some_and(|s| s["online"] == true && s["samples_total"].as_u64() > Some(before + 200))
    });
    assert!(back, "not back after replug: {:?}\n{}", imu_stats(&sub), log());
    assert!(status(b"online"), "sensor status not online again");
    // Right after the replug the readings that queued in the pty arrive in a burst; then the rate settles.
    let settled = sub.wait_for(Duration::from_secs(10), |_| {
        imu_stats(&sub)
            .last()
            .and_then(|s| s["rate_hz"].as_f64())
            .is_some_and(|r| (100.0..=260.0).contains(&r))
    });
    assert!(
        settled,
        "measured rate not near the 192 readings/s fed: {:?}",
        imu_stats(&sub).last()
    );
    assert_eq!(
        imu_stats(&sub).last().unwrap()["gaps_total"],
        0,
        "no gap yet: the outage is a loss, not a gap"
    );

    // The device stays open but goes quiet for 1.2 s: one gap of about that length.
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Part of the scenario: the quiet spell whose length the gap statistics must report.
    std::thread::sleep(Duration::from_millis(1200));
    stop.store(false, Ordering::Relaxed);
    let writer = feeder(tmp.path().join("feed"), Arc::clone(&stop));
    let gap = sub.wait_for(Duration::from_secs(10), |_| {
        imu_stats(&sub)
            .last()
            .is_some_and(|s| s["gaps_total"] == 1 && s["max_gap_ms"].as_u64() >= Some(1000))
    });
    assert!(gap, "gap not reported: {:?}", imu_stats(&sub).last());
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let ok = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < until, "no exit after SIGTERM:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", log());
    assert!(log().contains("Lost the serial IMU; reopening."), "{}", log());
}
