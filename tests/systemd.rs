//! The service under systemd: the unit passes `systemd-analyze verify` silently and its security rating, and the
//! daemon speaks the notification protocol over a real datagram socket — READY once the pipeline runs, watchdog
//! pings every half period while windows are scored (also with a sensor unplugged), none while the pipeline is
//! stalled, STOPPING on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, FAST_IMU, Listener, longest_gap, offline_config, root, toml_str};

/// The unit with its binary paths pointing at this build (`verify` checks that ExecStart exists).
fn unit_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("systemd/sensebind.service")).unwrap();
    let path = dir.join("sensebind.service");
    std::fs::write(
        &path,
        text.replace("/usr/bin/sensebind", env!("CARGO_BIN_EXE_sensebind")),
    )
    .unwrap();
    path
}

#[test]
fn the_unit_verifies_without_a_word_and_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit_copy(tmp.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (install `systemd`)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // verify exits 0 on unknown keys and bad values, so any output at all is a failure.
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"));
    assert!(score <= 3.0, "exposure {score} > 3.0: {line}");
}

#[test]
fn ready_then_watchdog_pings_while_a_sensor_is_unplugged_then_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let mut listener = Listener::bind(tmp.path());
    let unplugged = format!(
        "[[sources]]\ntype = \"serial\"\nname = \"unplugged\"\nmodality = \"imu\"\npath = {}\n",
        toml_str(&tmp.path().join("no-such-tty"))
    );
    let prompts = "[[prompts]]\nid = \"walking\"\ntext = \"a person walking\"\n\
                   [[prompts]]\nid = \"still\"\ntext = \"a person sitting still\"\n";
    let config = offline_config(
        "sd",
        &tmp.path().join("state"),
        "",
        &format!("{FAST_IMU}{unplugged}{prompts}"),
    );
    let sock = listener.path.display().to_string();
    let mut d = Daemon::start(
        tmp.path(),
        "sd",
        &config,
        &[("NOTIFY_SOCKET", sock.as_str()), ("WATCHDOG_USEC", "1000000")],
    );
    assert!(
        listener.read(Duration::from_secs(60), "READY=1"),
        "no READY=1:\n{}",
        d.log()
    );
    assert!(
        d.log().contains("Pipeline running."),
        "READY before the pipeline ran:\n{}",
        d.log()
    );
    let ready = listener.first("READY=1").unwrap();
    // Three seconds of running with the serial sensor offline (its port does not exist).
    listener.read(Duration::from_secs(3), "no such message");
    let pings = listener.pings_after(ready);
    assert!(pings.len() >= 5, "{} pings in 3 s: {:?}", pings.len(), listener.got);
    // Half the 1 s watchdog period, with room for scheduling.
    assert!(
        longest_gap(&pings) <= Duration::from_millis(650),
        "gap {:?}",
        longest_gap(&pings)
    );
    let status = listener
        .got
        .iter()
        .rev()
        .find(|(_, m)| m.contains("STATUS=Running"))
        .unwrap();
    assert!(status.1.contains("1 sensors scoring, 1 offline"), "{}", status.1);
    assert!(listener.first("STATUS=Loading models").is_some_and(|t| t < ready));
    d.signal("-TERM");
    assert!(
        listener.read(Duration::from_secs(10), "STOPPING=1"),
        "no STOPPING=1: {:?}",
        listener.got
    );
    let status = d.wait(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
}

/// An encoder that takes far longer than the stall limit: windows stop being scored while the sensor stays
/// online, so the pings stop (and `STATUS=Stalled` says which sensor) until the encoder catches up.
#[test]
fn watchdog_pings_stop_while_the_pipeline_is_stalled() {
    let tmp = tempfile::tempdir().unwrap();
    let mut listener = Listener::bind(tmp.path());
    let text = offline_config(
        "stall",
        &tmp.path().join("state"),
        "max_batch = 1\nqueue_windows = 1",
        FAST_IMU,
    );
    let path = tmp.path().join("stall.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = sensebind::config::load(&path).unwrap();
    let notifier =
        sensebind::runtime::systemd::Notifier::new(&listener.path, Some(Duration::from_millis(400))).unwrap();
    let options = sensebind::runtime::RunOptions {
        duration: Some(Duration::from_secs(6)),
        shutdown_timeout: Duration::from_secs(20),
        // Every window takes 3 s to embed: far beyond the stall limit (2 × 0.5 s + 4 × 0.1 s = 1.4 s).
        encoder_delay: Some(Duration::from_secs(3)),
        notifier: Some(Arc::new(notifier)),
        reload_signal: None,
    };
    let run = common::spawn_named(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(sensebind::runtime::run(&loaded, &options, std::future::pending()))
            .unwrap()
    });
    listener.read(Duration::from_secs(30), "STOPPING=1");
    let summary = run.join().unwrap();
    assert!(summary.stragglers.is_empty(), "{:?}", summary.stragglers);
    let ready = listener.first("READY=1").expect("READY=1");
    let stalled = listener.first("STATUS=Stalled").expect("a Stalled status");
    assert!(
        listener
            .got
            .iter()
            .any(|(_, m)| m.contains("Stalled") && m.contains("imu0")),
        "{:?}",
        listener.got
    );
    let pings = listener.pings_after(ready);
    // Pings until the stall was seen, then a silence far longer than the 400 ms watchdog period.
    assert!(
        pings.first().is_some_and(|&t| t < stalled),
        "no ping before the stall: {:?}",
        listener.got
    );
    assert!(longest_gap(&pings) >= Duration::from_millis(1500), "{:?}", listener.got);
    assert!(
        !pings
            .iter()
            .any(|&t| t > stalled && t < stalled + Duration::from_millis(800)),
        "pinged while stalled: {:?}",
        listener.got
    );
}
