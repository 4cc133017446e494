//! `sensebind demo`: the whole pipeline with zero set-up.
//!
//! Bundled tiny models, replay sources over the real recordings in `tests/fixtures/media` (one or more per
//! modality, `configs/demo.toml`), an embedded MQTT broker (rumqttd) on a free loopback port unless `--mqtt` names
//! one, and a live view: one line per label message, as a subscriber receives it.
//!
//! Installed from the `.deb`, the same files live under `/usr/share/sensebind` (`demo/demo.toml`, `demo/media/`,
//! `models/imagebind-tiny/`; `tools/package-deb`), found from the executable's own path (`demo_config_path`).

#![allow(clippy::print_stdout)] // the live view is the demo's output

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::config::{self, LoadedConfig};
use crate::publish::Topics;
use crate::runtime::{self, RunOptions};

/// Names a demo configuration file, used as given (a missing file is reported by `config::load`).
pub const DEMO_CONFIG_ENV: &str = "SENSEBIND_DEMO_CONFIG";
/// Names an installed data directory (what the package puts in `/usr/share/sensebind`), used as given.
pub const DATA_DIR_ENV: &str = "SENSEBIND_DATA_DIR";
/// The installed data directory under the executable's prefix (`/usr/bin/sensebind` → `/usr/share/sensebind`).
pub const DATA_DIR_UNDER_PREFIX: &str = "share/sensebind";
/// The demo's configuration inside a data directory; its paths lead to `../models/imagebind-tiny` and `media/`.
pub const DEMO_CONFIG_IN_DATA_DIR: &str = "demo/demo.toml";

/// Where the demo's configuration is, the first that applies:
///
/// 1. `$SENSEBIND_DEMO_CONFIG`;
/// 2. `$SENSEBIND_DATA_DIR/demo/demo.toml`;
/// 3. `./configs/demo.toml` (a source checkout), if it exists;
/// 4. `<prefix>/share/sensebind/demo/demo.toml` for an executable `<prefix>/bin/sensebind` (the installed
///    package), if it exists;
/// 5. `configs/demo.toml` in the source tree this binary was built from, if it exists.
///
/// None found is an error naming every place looked at.
pub fn demo_config_path() -> anyhow::Result<PathBuf> {
    find_demo_config(
        std::env::var_os(DEMO_CONFIG_ENV).map(PathBuf::from),
        std::env::var_os(DATA_DIR_ENV).map(PathBuf::from),
        std::env::current_exe().ok().as_deref(),
        Path::new(env!("CARGO_MANIFEST_DIR")),
        |p| p.is_file(),
    )
    .map_err(|tried| {
        let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        anyhow::anyhow!(
            "the demo's configuration was not found (looked at {}); set {DATA_DIR_ENV} to the directory the \
             package installs as /usr/share/sensebind, or {DEMO_CONFIG_ENV} to a demo.toml",
            tried.join(", ")
        )
    })
}

/// `demo_config_path` with its inputs given; `Err` lists the candidates looked at.
fn find_demo_config(
    demo_config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    exe: Option<&Path>,
    source_tree: &Path,
    is_file: impl Fn(&Path) -> bool,
) -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(p) = demo_config {
        return Ok(p);
    }
    if let Some(dir) = data_dir {
        return Ok(dir.join(DEMO_CONFIG_IN_DATA_DIR));
    }
    let candidates: Vec<PathBuf> = [
        Some(PathBuf::from("configs/demo.toml")),
        exe.and_then(Path::parent)
            .and_then(Path::parent)
            .map(|prefix| prefix.join(DATA_DIR_UNDER_PREFIX).join(DEMO_CONFIG_IN_DATA_DIR)),
        Some(source_tree.join("configs/demo.toml")),
    ]
    .into_iter()
    .flatten()
    .collect();
    match candidates.iter().find(|p| is_file(p)) {
        Some(p) => Ok(p.clone()),
        None => Err(candidates),
    }
}

/// A path as shown to the user: without `..` where it exists.
fn shown(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
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
    let path = demo_config_path()?;
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
    println!("config: {}", shown(&path).display());
    println!(
        "models: bundled imagebind-tiny in {} (random weights: the labels show the pipeline working, not meaning)",
        shown(&loaded.resolve(&loaded.config.models.dir)).display()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn find(
        demo: Option<&str>,
        data: Option<&str>,
        exe: Option<&str>,
        files: &[&str],
    ) -> Result<PathBuf, Vec<PathBuf>> {
        find_demo_config(
            demo.map(PathBuf::from),
            data.map(PathBuf::from),
            exe.map(Path::new),
            Path::new("/src/sensebind"),
            |p| files.iter().any(|f| Path::new(f) == p),
        )
    }

    #[test]
    fn the_environment_wins_even_over_existing_files() {
        let all = ["configs/demo.toml", "/usr/share/sensebind/demo/demo.toml"];
        assert_eq!(
            find(Some("/x/my.toml"), Some("/data"), Some("/usr/bin/sensebind"), &all),
            Ok(PathBuf::from("/x/my.toml"))
        );
        assert_eq!(
            find(None, Some("/data"), Some("/usr/bin/sensebind"), &all),
            Ok(PathBuf::from("/data/demo/demo.toml"))
        );
    }

    #[test]
    fn a_checkout_then_the_installed_package_then_the_source_tree() {
        let exe = Some("/opt/x/usr/bin/sensebind");
        let installed = "/opt/x/usr/share/sensebind/demo/demo.toml";
        let source = "/src/sensebind/configs/demo.toml";
        assert_eq!(
            find(None, None, exe, &["configs/demo.toml", installed, source]),
            Ok(PathBuf::from("configs/demo.toml"))
        );
        assert_eq!(
            find(None, None, exe, &[installed, source]),
            Ok(PathBuf::from(installed))
        );
        assert_eq!(find(None, None, exe, &[source]), Ok(PathBuf::from(source)));
        assert_eq!(find(None, None, None, &[source]), Ok(PathBuf::from(source)));
    }

    #[test]
    fn nothing_found_names_every_place_looked_at() {
        let tried = find(None, None, Some("/usr/bin/sensebind"), &[]).unwrap_err();
        assert_eq!(
            tried,
            vec![
                PathBuf::from("configs/demo.toml"),
                PathBuf::from("/usr/share/sensebind/demo/demo.toml"),
                PathBuf::from("/src/sensebind/configs/demo.toml"),
            ]
        );
    }
}
