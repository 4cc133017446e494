//! MQTT figures for docs/BENCHMARKS.md, measured against a real mosquitto on loopback (started here):
//! bytes per embedding message (CBOR f16/f32, JSON+base64 f16/f32, 1024-d), publish throughput through sensebind's
//! outbox and connection task (QoS 0 embeddings, QoS 1 events), and the time from a restarted broker to all
//! retained state republished.
//!
//! `cargo run --release --example mqtt_bench [-- MESSAGES RETAINED]` (defaults 20000 and 200).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sensebind::publish::embedding::{self, Dtype, EmbeddingFrame, Encoding};
use sensebind::publish::mqtt::{self, Connection, MqttSettings, MqttStats};
use sensebind::publish::{BrokerUrl, OutMessage, Outbox, OutboxLimits, Topics};

fn start_broker(dir: &std::path::Path, port: u16) -> Child {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nuser root\n{}",
            // BROKER_NODELAY=1: mosquitto's set_tcp_nodelay (its acknowledgements then skip Nagle's delay).
            if std::env::var_os("BROKER_NODELAY").is_some() { "set_tcp_nodelay true\n" } else { "" }
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn frame() -> EmbeddingFrame {
    let mut v: Vec<f32> = (0..1024).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    v = embedding::l2_normalize(&v);
    EmbeddingFrame {
        device: "dock-07".into(),
        sensor: "mic0".into(),
        modality: "audio".into(),
        seq: 98765,
        session: 12,
        t0: "2026-11-28T17:51:27.170Z".into(),
        t1: "2026-11-28T17:51:29.170Z".into(),
        t0_mono_ns: 2_710_000_000,
        t1_mono_ns: 4_710_000_000,
        model: "imagebind-huge@0123456789ab".into(),
        event: None,
        normalized: true,
        vec: v,
    }
}

/// Counts messages on `filter` (QoS 1 subscription).
fn counter(port: u16, filter: &str) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let (count, filter) = (Arc::clone(&n), filter.to_owned());
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("bench-subscriber".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut opts = rumqttc::MqttOptions::new(format!("bench-sub-{port}"), "127.0.0.1", port);
                opts.set_max_packet_size(1 << 20, 1 << 20);
                opts.set_inflight(1000);
                let (client, mut ev) = rumqttc::AsyncClient::new(opts, 100);
                let mut net = ev.network_options();
                net.set_tcp_nodelay(true);
                ev.set_network_options(net);
                client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.unwrap();
                let mut ready = Some(ready_tx);
                loop {
                    match ev.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            if let Some(tx) = ready.take() {
                                tx.send(()).unwrap();
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            });
        });
    spawned.unwrap();
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    n
}

fn settings(port: u16, client: &str) -> MqttSettings {
    MqttSettings {
        broker: BrokerUrl {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        },
        client_id: client.into(),
        keep_alive: Duration::from_secs(30),
        username: None,
        password: None,
        tls: None,
        topics: Topics::new("sensebind", "bench"),
        subscriptions: Vec::new(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages: u64 = args.get(1).map_or(20_000, |a| a.parse().unwrap());
    let retained: usize = args.get(2).map_or(200, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = start_broker(dir.path(), port);

    println!("## Bytes per 1024-d embedding message");
    let f = frame();
    for (dtype, enc) in [
        (Dtype::F16, Encoding::Cbor),
        (Dtype::F32, Encoding::Cbor),
        (Dtype::F16, Encoding::JsonBase64),
        (Dtype::F32, Encoding::JsonBase64),
    ] {
        let bytes = embedding::encode(&f, dtype, enc).unwrap();
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(embedding::encode(&f, dtype, enc).unwrap());
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{enc:?} {dtype:?}: {} bytes, encode {us:.1} µs", bytes.len());
    }

    println!("## Publish throughput (sensebind outbox → connection task → mosquitto → one subscriber)");
    let payload = embedding::encode(&f, Dtype::F16, Encoding::Cbor).unwrap();
    let event = serde_json::to_vec(&serde_json::json!({
        "schema": "event/1", "type": "start", "id": "12-mic0-glass_break-1", "device": "dock-07", "sensor": "mic0",
        "modality": "audio", "label": "glass_break", "prompt": "the sound of glass breaking", "score": 0.71,
        "peak": 0.71, "cos": 0.274, "thresholds": {"on": 0.6, "off": 0.45}, "runner_up": [{"label": "door", "score": 0.12}],
        "window": {"seq": 18342, "t0": "2026-08-20T10:11:10.345Z", "t1": "2026-08-20T10:11:12.345Z", "latency_ms": 46.0},
        "start_time": "2026-08-20T10:11:12.345Z", "end_time": null, "end_reason": null, "duration_s": null,
        "ts": "2026-08-20T10:11:12.391Z", "seq": 0, "session": 12, "model": "imagebind-huge@0123456789ab", "config_rev": 3
    }))
    .unwrap();
    for (name, qos1) in [("embeddings, QoS 0, CBOR f16", false), ("events, QoS 1, JSON", true)] {
        let topic = if qos1 {
            "sensebind/bench/events/mic0/glass"
        } else {
            "sensebind/bench/embeddings/mic0"
        };
        let received = counter(port, topic);
        let outbox = Arc::new(Outbox::new(OutboxLimits::uniform(messages as usize + 10)));
        let stats = Arc::new(MqttStats::default());
        let (cmd_tx, _cmd_rx) = tokio::sync::mpsc::channel(4);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(mqtt::run(
            settings(port, &format!("bench-{qos1}")),
            Connection {
                outbox: Arc::clone(&outbox),
                stats: Arc::clone(&stats),
                commands: cmd_tx,
                first: None,
            },
            stop_rx,
            Duration::from_secs(60),
        ));
        while !stats.connected.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let bytes = if qos1 { event.len() } else { payload.len() };
        let acked_before = stats.acked_total.load(Ordering::Relaxed);
        let t = Instant::now();
        for _ in 0..messages {
            outbox.push(if qos1 {
                OutMessage::event(topic.into(), event.clone())
            } else {
                OutMessage::embedding(topic.into(), payload.clone())
            });
        }
        // QoS 0: until the subscriber has every message. QoS 1: until the broker acknowledged every message (the
        // subscriber's own QoS 1 rate is mosquitto's business: 20 in flight per client by default).
        let done = || {
            if qos1 {
                stats.acked_total.load(Ordering::Relaxed) - acked_before >= messages
            } else {
                received.load(Ordering::Relaxed) >= messages
            }
        };
        while !done() && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = t.elapsed().as_secs_f64();
        let got = if qos1 {
            stats.acked_total.load(Ordering::Relaxed) - acked_before
        } else {
            received.load(Ordering::Relaxed)
        };
        println!(
            "{name}: {got}/{messages} {} in {secs:.2} s = {:.0} msg/s, {:.1} MB/s ({bytes} bytes each)",
            if qos1 {
                "acknowledged by the broker"
            } else {
                "received by the subscriber"
            },
            got as f64 / secs,
            got as f64 * bytes as f64 / secs / 1e6
        );
        println!(
            "  handed over {}, queued {}, acked {}, connects {}, errors {}, requeued {}",
            outbox.sent_total(),
            outbox.len(),
            stats.acked_total.load(Ordering::Relaxed) - acked_before,
            stats.connects_total.load(Ordering::Relaxed),
            stats.errors_total.load(Ordering::Relaxed),
            outbox.requeued.load(Ordering::Relaxed)
        );
        outbox.close();
        stop_tx.send(true).unwrap();
        let _finished = tokio::time::timeout(Duration::from_secs(5), task).await.is_ok();
    }

    // The peer, in the same run: mosquitto's own C client publishing the same event lines (`mosquitto_pub -l`:
    // one message per stdin line; it disconnects once every QoS 1 message is acknowledged).
    for qos in ["0", "1"] {
        let lines: Vec<u8> = (0..messages)
            .flat_map(|_| event.iter().copied().chain(std::iter::once(b'\n')))
            .collect();
        let t = Instant::now();
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "sensebind/bench/peer",
                "-q",
                qos,
                "-l",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub (mosquitto-clients)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&lines).unwrap();
        }
        let status = child.wait().unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "peer: mosquitto_pub -q {qos} -l, same {} byte events: {messages} in {secs:.2} s = {:.0} msg/s ({status})",
            event.len(),
            messages as f64 / secs
        );
    }

    println!("## Broker restart → all retained state republished ({retained} retained topics)");
    let outbox = Arc::new(Outbox::new(OutboxLimits::uniform(10_000)));
    let stats = Arc::new(MqttStats::default());
    let (cmd_tx, _cmd_rx) = tokio::sync::mpsc::channel(4);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let topics = Topics::new("sensebind", "bench");
    outbox.push(OutMessage::state(topics.availability(), "online"));
    for i in 0..retained {
        outbox.push(OutMessage::state(topics.label_state(&format!("label{i}")), "OFF"));
    }
    tokio::spawn(mqtt::run(
        settings(port, "bench-retained"),
        Connection {
            outbox: Arc::clone(&outbox),
            stats: Arc::clone(&stats),
            commands: cmd_tx,
            first: None,
        },
        stop_rx,
        Duration::from_secs(10),
    ));
    while stats.republish_done_total.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..3 {
        broker.kill().unwrap();
        broker.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let connects = stats.connects_total.load(Ordering::Relaxed);
        let done = stats.republish_done_total.load(Ordering::Relaxed);
        let t = Instant::now();
        broker = start_broker(dir.path(), port);
        let up = t.elapsed();
        while stats.connects_total.load(Ordering::Relaxed) == connects {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let reconnect = t.elapsed();
        while stats.republish_done_total.load(Ordering::Relaxed) == done && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "round {round}: broker accepting after {:.0} ms; daemon reconnected after {:.0} ms (backoff); all {} retained acknowledged {} ms after CONNACK; total {:.0} ms",
            up.as_secs_f64() * 1e3,
            reconnect.as_secs_f64() * 1e3,
            retained + 1,
            stats.last_republish_ms.load(Ordering::Relaxed),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    broker.kill().unwrap();
    broker.wait().unwrap();
}
