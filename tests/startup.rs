//! Stopping during start-up (issue 12): systemd sends SIGTERM whenever it likes, so the daemon must exit 0 at any
//! moment after `main` starts, and start-up work (models, the text tower, the broker's first answer) must never
//! hold the async runtime hostage.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Daemon, daemon_config, wait_until};

/// A broker that accepts the TCP connection and never answers: the daemon waits for its first CONNACK (up to
/// 15 s) — a start-up phase long enough to signal into.
fn silent_broker() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("mqtt://{}", listener.local_addr().unwrap());
    (listener, url)
}

fn imu_source() -> &'static str {
    r#"
[[sources]]
type = "synthetic"
name = "imu0"
modality = "imu"
[[prompts]]
id = "walking"
text = "a person walking"
[[prompts]]
id = "still"
text = "a person sitting still"
"#
}

#[test]
fn issue_12_sigterm_while_waiting_for_the_broker_exits_0_at_once() {
    let (_broker, url) = silent_broker();
    let tmp = tempfile::tempdir().unwrap();
    let config = daemon_config("startup", &url, &tmp.path().join("state"), imu_source());
    let mut d = Daemon::start(tmp.path(), "startup", &config, &[]);
    // Models are loaded and the prompts embedded before the broker is awaited.
    wait_until(Duration::from_secs(60), "prompts embedded", || {
        d.log().contains("Prompts embedded.")
    });
    let sent = Instant::now();
    d.signal("-TERM");
    let status = d.wait(Duration::from_secs(5)).expect("exits soon after SIGTERM");
    // Before the fix the signal handlers were installed only once the pipeline ran: SIGTERM killed the process
    // (no exit code, signal 15), or it went on waiting for the broker.
    assert_eq!(status.code(), Some(0), "exit {status:?}:\n{}", d.log());
    assert!(sent.elapsed() < Duration::from_secs(3), "took {:?}", sent.elapsed());
    assert!(d.log().contains("Stopped during start-up"), "{}", d.log());
}

#[test]
fn issue_12_sigterm_right_after_start_exits_0() {
    let (_broker, url) = silent_broker();
    let tmp = tempfile::tempdir().unwrap();
    let config = daemon_config("early", &url, &tmp.path().join("state"), imu_source());
    let mut d = Daemon::start(tmp.path(), "early", &config, &[]);
    // As soon as the process logs anything it is past `main`'s first lines; the signal lands while the
    // configuration is read or the models load.
    wait_until(Duration::from_secs(30), "the first log line", || {
        d.log().contains("Starting sensebind")
    });
    d.signal("-TERM");
    let status = d.wait(Duration::from_secs(10)).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit {status:?}:\n{}", d.log());
}

/// The text tower embeds the start-up prompts on the blocking pool: with a current-thread runtime (one thread for
/// every task), a stop request during a long embedding is still seen at once.
#[test]
fn issue_12_prompt_embedding_at_start_up_does_not_block_the_async_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts: String = (0..12)
        .map(|i| format!("[[prompts]]\nid = \"p{i}\"\ntext = \"prompt number {i}\"\n"))
        .collect();
    let sources = "[[sources]]\ntype = \"synthetic\"\nname = \"imu0\"\nmodality = \"imu\"\n";
    let text = common::offline_config("embed", &tmp.path().join("state"), "", &format!("{sources}{prompts}"));
    let path = tmp.path().join("embed.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = sensebind::config::load(&path).unwrap();
    let options = sensebind::runtime::RunOptions {
        shutdown_timeout: Duration::from_secs(5),
        duration: None,
        // 12 prompts × 500 ms: six seconds of text tower at start-up.
        encoder_delay: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let stop_after = common::spawn_named(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(tx);
    });
    let summary = rt
        .block_on(sensebind::runtime::run(&loaded, &options, async {
            let _stopped = rx.await;
        }))
        .unwrap();
    let took = started.elapsed();
    rt.shutdown_background();
    stop_after.join().unwrap();
    assert!(summary.stopped_during_startup);
    assert!(summary.stragglers.is_empty(), "{:?}", summary.stragglers);
    // Before the fix the embedding ran inside the async function and the stop could only be seen after it.
    assert!(took < Duration::from_secs(4), "stopping took {took:?}");
}

/// A source that cannot start once the publisher runs (a replay folder with no files): the daemon stops what it
/// started, says `offline` on the broker, and exits 1 naming the source.
#[test]
fn a_source_that_cannot_start_stops_the_rest_and_says_why() {
    let broker = common::Mosquitto::start();
    let sub = common::Subscriber::start(broker.port, "sensebind/broken/#");
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let rest = format!(
        "[[sources]]\ntype = \"synthetic\"\nname = \"imu0\"\nmodality = \"imu\"\n\
         [[sources]]\ntype = \"replay\"\nname = \"rec\"\nmodality = \"audio\"\npaths = [{}]\n",
        common::toml_str(&empty)
    );
    let config = daemon_config("broken", &broker.url(), &tmp.path().join("state"), &rest);
    let mut d = Daemon::start(tmp.path(), "broken", &config, &[]);
    let status = d.wait(Duration::from_secs(60)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", d.log());
    assert!(d.log().contains("no files to replay"), "{}", d.log());
    assert!(!d.log().contains("Still running"), "{}", d.log());
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| common::said_offline(m, "broken")),
        "no offline on the broker: {:?}",
        sub.snapshot().iter().map(|r| r.topic.clone()).collect::<Vec<_>>()
    );
}
