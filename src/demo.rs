//! `sensebind demo`: the whole pipeline with zero set-up.
//!
//! Bundled tiny models, replay sources over the real recordings in `tests/fixtures/media` (one or more per
//! modality, `configs/demo.toml`), an embedded MQTT broker (rumqttd) on a free loopback port unless `--mqtt` names
//! one, and a live view: one line per label message, as a subscriber receives it.

#![allow(clippy::print_stdout)] // the live view is the demo's output

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::config::{self, LoadedConfig};
use crate::publish::Topics;
use crate::runtime::{self, RunOptions};

/// Where `configs/demo.toml` is: `$SENSEBIND_DEMO_CONFIG`, `./configs/demo.toml`, or the source tree.
pub fn demo_config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SENSEBIND_DEMO_CONFIG") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("configs/demo.toml");
    if local.is_file() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml")
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts rumqttd on `127.0.0.1:port` on its own thread; returns when it accepts connections.
///
/// rumqttd keeps every published message in a per-topic commit log of `max_segment_count` segments of
/// `max_segment_size` bytes, dropping the oldest segment when full; the log is what lets late subscribers catch
/// up. The log is per topic, so it bounds the broker's memory only at topics × count × size: at 2 × 1 MiB the demo's
/// eight topics let it grow by up to 16 MiB over the first half hour (6 MB in ten minutes, docs/BENCHMARKS.md
/// "Memory over a 10-minute demo"). At 2 × 64 KiB (a segment holds at least one message; label messages are
/// under 2 KiB) the bound is 1 MiB and is reached within the first minute.
pub fn start_embedded_broker(port: u16) -> anyhow::Result<()> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 1000
max_segment_size = 65536
max_segment_count = 2

[v4.1]
name = "sensebind-demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let cfg: rumqttd::Config = toml::from_str(&text).context("embedded broker configuration")?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "The embedded MQTT broker stopped.");
            }
        })
        .context("cannot start the embedded broker")?;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > until {
            anyhow::bail!("the embedded MQTT broker did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One line of the live view for a label message.
pub fn view_line(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let labels: Vec<String> = v["labels"]
        .as_array()?
        .iter()
        .map(|l| {
            format!(
                "{} {:.2}{}",
                l["label"].as_str().unwrap_or("?"),
                l["score"].as_f64().unwrap_or(0.0),
                if l["active"].as_bool() == Some(true) { "*" } else { "" }
            )
        })
        .collect();
    let time = v["t1"].as_str().unwrap_or("").get(11..23).unwrap_or("");
    Some(format!(
        "{time}  {:<8} {:<7} #{:<4} {}   ({:.0} ms)",
        v["sensor"].as_str().unwrap_or("?"),
        v["modality"].as_str().unwrap_or("?"),
        v["seq"].as_u64().unwrap_or(0),
        labels.join(" | "),
        v["latency_ms"].as_f64().unwrap_or(0.0)
    ))
}

/// Runs the demo; returns when the duration passes or Ctrl-C is pressed.
pub async fn run(
    duration: Option<Duration>,
    mqtt_url: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<u8> {
    let path = demo_config_path();
    let mut loaded: LoadedConfig = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    loaded.config.runtime.state_dir = std::env::temp_dir().join("sensebind-demo-state");
    let url = match mqtt_url {
        Some(u) => u,
        None => {
            let port = free_port().context("no free port for the embedded broker")?;
            start_embedded_broker(port)?;
            format!("mqtt://127.0.0.1:{port}")
        }
    };
    loaded.config.mqtt.url = url.clone();
    let broker = crate::publish::parse_broker_url(&url).map_err(|e| anyhow::anyhow!(e))?;
    let topics = Topics::new(&loaded.config.mqtt.prefix, &loaded.config.device.id);
    println!(
        "sensebind demo: {} sources, {} prompts, broker {url}",
        loaded.config.sources.len(),
        loaded.config.prompts.len()
    );
    println!("models: bundled imagebind-tiny (random weights: the labels show the pipeline working, not meaning)");
    println!(
        "listening on {} — one line per window: time, source, modality, seq, top labels (* = active)",
        topics.labels_filter()
    );

    // The live view: a subscriber like any other.
    let mut opts = MqttOptions::new(
        format!("sensebind-demo-view-{}", std::process::id()),
        broker.host,
        broker.port,
    );
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(topics.labels_filter(), QoS::AtMostOnce)
        .await
        .context("subscribing the live view")?;
    let viewer = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(line) = view_line(&p.payload) {
                        println!("{line}");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "Live view connection error.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    let options = RunOptions {
        duration,
        ..RunOptions::default()
    };
    let summary = runtime::run(&loaded, &options, stop).await?;
    // Let the last messages reach the view.
    tokio::time::sleep(Duration::from_millis(300)).await;
    viewer.abort();
    let snap = summary.metrics.snapshot(&loaded.config.device.id, Duration::ZERO);
    let encoded: u64 = snap.encoders.values().map(|e| e.windows_encoded_total).sum();
    let dropped: u64 = snap.encoders.values().map(|e| e.windows_dropped_total).sum();
    println!("done: {encoded} windows embedded and labelled, {dropped} dropped");
    Ok(if summary.stragglers.is_empty() { 0 } else { 1 })
}
