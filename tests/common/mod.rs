//! Test harness: a real mosquitto broker on a free loopback port, and an MQTT subscriber.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test binaries

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A mosquitto process started for one test; killed on drop.
pub struct Mosquitto {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its working folder (config, log).
    pub dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` (Debian's package; `tools/test` installs it) with anonymous access.
    pub fn start() -> Self {
        Self::start_with("allow_anonymous true\n")
    }

    /// Starts mosquitto with extra configuration lines.
    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = format!("listener {port} 127.0.0.1\npersistence false\nlog_dest stderr\n{extra}");
        if is_root() {
            conf.push_str("user root\n");
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (tools/test installs it)");
        let mut m = Mosquitto { child, port, dir };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(m.child.try_wait().unwrap().is_none(), "mosquitto exited: {}", m.log());
            assert!(Instant::now() < until, "mosquitto did not start: {}", m.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("mosquitto.log")) {
            let _read = f.read_to_string(&mut s);
        }
        s
    }

    /// `mqtt://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained flag as delivered.
    pub retain: bool,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// A subscriber running on its own thread, collecting every message on `filter`.
pub struct Subscriber {
    /// Messages so far.
    pub messages: Arc<Mutex<Vec<Received>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to `127.0.0.1:port` and subscribes to `filter` (QoS 1); returns once subscribed.
    pub fn start(port: u16, filter: &str) -> Self {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s, f) = (Arc::clone(&messages), Arc::clone(&stop), filter.to_owned());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("test-subscriber".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let id = format!("test-sub-{}-{}", std::process::id(), port);
                    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
                    opts.set_keep_alive(Duration::from_secs(5));
                    opts.set_max_packet_size(1 << 20, 1 << 20);
                    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
                    client.subscribe(f, rumqttc::QoS::AtLeastOnce).await.unwrap();
                    let mut ready = Some(ready_tx);
                    while !s.load(std::sync::atomic::Ordering::SeqCst) {
                        let ev = tokio::time::timeout(Duration::from_millis(100), events.poll()).await;
                        match ev {
                            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => {
                                if let Some(tx) = ready.take() {
                                    let _sent = tx.send(());
                                }
                            }
                            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                                m.lock().unwrap().push(Received {
                                    topic: p.topic.clone(),
                                    payload: p.payload.to_vec(),
                                    retain: p.retain,
                                    at: Instant::now(),
                                });
                            }
                            Ok(Ok(_)) | Err(_) => {}
                            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                });
            })
            .unwrap();
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscribed");
        Subscriber {
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// A copy of what arrived so far.
    pub fn snapshot(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the messages so far, or the timeout passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if pred(&self.snapshot()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pred(&self.snapshot())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path inside `tests/fixtures/media`, as a TOML string literal.
pub fn media(name: &str) -> String {
    toml_str(&root().join("tests/fixtures/media").join(name))
}

/// A path as a TOML basic string.
pub fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}
