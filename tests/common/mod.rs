//! Test harness: real mosquitto brokers (plain, TLS, password, ACL, persistent with kill/restart) on a free loopback
//! port, a test CA made with `openssl`, and MQTT subscribers (plain and persistent-session).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test binaries

pub mod schema;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A mosquitto process started for one test; killed on drop.
pub struct Mosquitto {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its working folder (config, log).
    pub dir: tempfile::TempDir,
    /// Saves its state to `dir` ([`Mosquitto::start_persistent`]).
    persistent: bool,
}

impl Mosquitto {
    /// Starts `mosquitto` (Debian's package; `tools/test` installs it) with anonymous access.
    pub fn start() -> Self {
        Self::start_with("allow_anonymous true\n")
    }

    /// Starts mosquitto with extra configuration lines.
    pub fn start_with(extra: &str) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), false, extra)
    }

    /// Starts mosquitto with anonymous access on a given port (one a daemon already tries to reach).
    pub fn start_on(port: u16) -> Self {
        Self::start_at(
            tempfile::tempdir().unwrap(),
            false,
            "allow_anonymous true\n",
            Some(port),
        )
    }

    /// Starts mosquitto with a TLS listener (the `certs` server certificate, clients checked against `certs.ca`),
    /// anonymous access allowed; with `require_client_cert` a client without a certificate from that CA is refused
    /// in the handshake. Connect to [`Mosquitto::tls_url`]: the server certificate names `127.0.0.1` and
    /// `localhost`, and [`Certs::tls_config`] gives the matching rumqttc settings.
    ///
    /// How rumqttc 0.25 reports failures (TLS 1.3): a server certificate it does not trust fails in `connect` as
    /// `ConnectionError::Tls(Io(.. InvalidCertificate(BadSignature)))`; a missing or foreign client certificate only
    /// shows as the server's alert while waiting for CONNACK: `ConnectionError::MqttState(Deserialization(Io(..
    /// AlertReceived(CertificateRequired))))`, or `AlertReceived(UnknownCA)`. The start-up probe (a bare TCP
    /// connect) leaves one `Client connection from 127.0.0.1 failed: ... unexpected eof` line in the log.
    pub fn start_tls(certs: &Certs, require_client_cert: bool) -> Self {
        let extra = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_client_cert}\n\
             use_identity_as_username false\nallow_anonymous true\n",
            certs.ca.display(),
            certs.server_cert.display(),
            certs.server_key.display(),
        );
        Self::start_with(&extra)
    }

    /// Starts mosquitto that only lets in `user` with `password` (`allow_anonymous false`, a `password_file` made by
    /// `mosquitto_passwd`). A wrong password or user is refused with CONNACK return code 5 (not authorized).
    pub fn start_password(user: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let extra = password_conf(dir.path(), user, password);
        Self::start_in(dir, false, &extra)
    }

    /// Like [`Mosquitto::start_password`], plus an `acl_file` holding `acl`, e.g.
    /// `"user u\ntopic readwrite sensebind/#\ntopic read status/#\ntopic deny sensebind/secret/#\n"`: what the
    /// file does not grant is denied, and `deny` lines win wherever they are. The log has every packet
    /// (`log_type all`), e.g. `Denied PUBLISH from ...`.
    ///
    /// What mosquitto 2.0 (2.0.11 to 2.0.20) does with an MQTT 3.1.1 client (checked with rumqttc 0.25):
    /// - a PUBLISH without write access is dropped and the connection stays up, and the client cannot tell: QoS 0
    ///   gets nothing back, QoS 1 still gets its PUBACK, QoS 2 its PUBREC and PUBCOMP;
    /// - SUBSCRIBE is never checked against the `acl_file`: every filter (`#`, topics without read access, topics
    ///   under `deny`) gets SUBACK with the granted QoS, never 0x80 (that needs an auth plugin such as dynamic
    ///   security); instead each message is checked for read access on delivery, so a filter without read access
    ///   just receives nothing.
    pub fn start_acl(user: &str, password: &str, acl: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let acl_path = dir.path().join("acl");
        std::fs::write(&acl_path, acl).unwrap();
        private(&acl_path);
        let extra = format!(
            "{}acl_file {}\nlog_type all\n",
            password_conf(dir.path(), user, password),
            acl_path.display()
        );
        Self::start_in(dir, false, &extra)
    }

    /// Like [`Mosquitto::start_acl`] (same `acl` text: `topic [read|write|readwrite|deny] <filter>` lines, `user`
    /// lines ignored) but enforced by mosquitto's dynamic-security plugin, which, unlike the `acl_file`, also checks
    /// SUBSCRIBE: a filter not inside a `read` grant, or inside a `deny`, gets SUBACK 0x80
    /// (`SubscribeReasonCode::Failure`). A denied PUBLISH is dropped as with the `acl_file` (QoS 1 still PUBACKed);
    /// a message is delivered only where the subscriber may read its topic. `user` logs in with `password`.
    pub fn start_dynsec(user: &str, password: &str, acl: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("dynamic-security.json");
        // `init` writes the user with a hashed password and an admin role; the role's ACLs are replaced below.
        let out = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&json)
            .args([user, password])
            .output()
            .expect("mosquitto_ctrl is installed (with mosquitto)");
        assert!(out.status.success(), "mosquitto_ctrl dynsec init failed: {out:?}");
        let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let mut acls = Vec::new();
        for line in acl.lines().map(str::trim) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (access, topic) = match words.as_slice() {
                ["topic", topic] => ("readwrite", *topic),
                ["topic", access, topic] => (*access, *topic),
                _ => continue,
            };
            let (types, allow): (&[&str], bool) = match access {
                "read" => (&["publishClientReceive", "subscribePattern"], true),
                "write" => (&["publishClientSend"], true),
                "readwrite" => (&["publishClientSend", "publishClientReceive", "subscribePattern"], true),
                "deny" => (
                    &["publishClientSend", "publishClientReceive", "subscribePattern"],
                    false,
                ),
                other => panic!("unknown ACL access {other:?} in {line:?}"),
            };
            for t in types {
                // Denials first: dynamic security checks a role's ACLs from the highest priority down.
                let priority = if allow { 0 } else { 10 };
                acls.push(serde_json::json!({"acltype": t, "topic": topic, "allow": allow, "priority": priority}));
            }
        }
        doc["roles"][0]["acls"] = serde_json::Value::Array(acls);
        doc["defaultACLAccess"] = serde_json::json!({
            "publishClientSend": false, "publishClientReceive": false, "subscribe": false, "unsubscribe": true
        });
        std::fs::write(&json, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        private(&json);
        let extra = format!(
            "allow_anonymous false\nplugin {}\nplugin_opt_config_file {}\nlog_type all\n",
            dynsec_plugin().display(),
            json.display()
        );
        Self::start_in(dir, false, &extra)
    }

    /// Starts mosquitto with anonymous access and persistence in its folder, saved after every change (a
    /// persistent session's connect or subscription, each queued message), so [`Mosquitto::kill9`] loses nothing
    /// the broker acknowledged and [`Mosquitto::restart`] brings the sessions and their queued messages back.
    pub fn start_persistent() -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), true, "allow_anonymous true\n")
    }

    fn start_in(dir: tempfile::TempDir, persistent: bool, extra: &str) -> Self {
        Self::start_at(dir, persistent, extra, None)
    }

    fn start_at(dir: tempfile::TempDir, persistent: bool, extra: &str, port: Option<u16>) -> Self {
        let persistence = if persistent {
            // `autosave_on_changes true` turns `autosave_interval` into a count of changes: with 1 the database is
            // written at the end of the main-loop pass that handled the change. (A time-based `autosave_interval 1`
            // saves once more than a whole second has passed: a SIGKILL 1 s after a SUBSCRIBE lost it.)
            format!(
                "persistence true\npersistence_location {}\nautosave_interval 1\nautosave_on_changes true\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let mut conf = format!("listener {port} 127.0.0.1\n{persistence}log_dest stderr\n{extra}");
        if is_root() {
            conf.push_str("user root\n");
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let child = spawn_mosquitto(dir.path());
        let mut m = Mosquitto {
            child,
            port,
            dir,
            persistent,
        };
        let until = Instant::now() + Duration::from_secs(10);
        match m.wait_ready(until) {
            Ok(()) => m,
            Err(true) => panic!("mosquitto exited: {}", m.log()),
            Err(false) => panic!("mosquitto did not start: {}", m.log()),
        }
    }

    /// Waits until the port accepts TCP connections; `Err(true)` if mosquitto exited, `Err(false)` on timeout.
    fn wait_ready(&mut self, until: Instant) -> Result<(), bool> {
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if self.child.try_wait().unwrap().is_some() {
                return Err(true);
            }
            if Instant::now() >= until {
                return Err(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills mosquitto with SIGKILL (no clean shutdown, no final save) and reaps it; the port and folder stay for
    /// [`Mosquitto::restart`]. A persistent broker first gets a [`Mosquitto::sync`], so the crash happens after the
    /// save of everything it acknowledged (a kill within a millisecond of a SUBACK otherwise catches the save half
    /// written, and the restarted broker has the session, `session_present` and all, without the subscription).
    pub fn kill9(&mut self) {
        if self.persistent && self.child.try_wait().unwrap().is_none() {
            self.sync();
        }
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }

    /// One MQTT round trip through the broker's single-threaded main loop (a throwaway clean-session CONNECT on a
    /// plain listener; any CONNACK, even a refusal, counts), which it only answers after finishing the previous pass,
    /// including that pass's save with [`Mosquitto::start_persistent`]'s settings. Returns whether a CONNACK came.
    pub fn sync(&self) -> bool {
        use std::io::Write;
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _set = s.set_read_timeout(Some(Duration::from_secs(5)));
        // CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client id "harness-sync"; then DISCONNECT.
        let mut connect = vec![0x10, 24, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 12];
        connect.extend_from_slice(b"harness-sync");
        let mut connack = [0u8; 4];
        let ok = s.write_all(&connect).is_ok() && s.read_exact(&mut connack).is_ok() && connack[0] == 0x20;
        let _sent = s.write_all(&[0xe0, 0]);
        ok
    }

    /// Starts mosquitto again (killing it first if it still runs) with the same configuration, port and folder, so a
    /// persistent broker reloads its sessions; returns once the port accepts connections.
    pub fn restart(&mut self) {
        self.kill9();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = spawn_mosquitto(self.dir.path());
            match self.wait_ready(until) {
                Ok(()) => return,
                // The port can be taken for a moment, e.g. as another socket's ephemeral port: try again.
                Err(true) if Instant::now() < until => std::thread::sleep(Duration::from_millis(200)),
                Err(true) => panic!("mosquitto exited on restart: {}", self.log()),
                Err(false) => panic!("mosquitto did not restart: {}", self.log()),
            }
        }
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

    /// `mqtts://127.0.0.1:{port}`, for a broker from [`Mosquitto::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// Whether the tests run as root (directory permissions do not stop root).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// Spawns `mosquitto -c {dir}/mosquitto.conf`, its stderr appended to `{dir}/mosquitto.log`.
fn spawn_mosquitto(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mosquitto.log"))
        .unwrap();
    Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mosquitto is installed (tools/test installs it)")
}

/// Writes `{dir}/passwd` with `mosquitto_passwd` and returns the configuration lines that require it.
fn password_conf(dir: &Path, user: &str, password: &str) -> String {
    let path = dir.join("passwd");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&path)
        .args([user, password])
        .output()
        .expect("mosquitto_passwd is installed (with mosquitto)");
    assert!(
        out.status.success() && path.exists(),
        "mosquitto_passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    private(&path);
    format!("allow_anonymous false\npassword_file {}\n", path.display())
}

/// Makes a file readable by its owner only (newer mosquitto warns about or refuses looser password and ACL files).
/// The owner is this process's user, the one mosquitto runs as (`user root` when root).
fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Where mosquitto's dynamic-security plugin is installed (Debian: `/usr/lib/<triplet>/`).
fn dynsec_plugin() -> PathBuf {
    let name = "mosquitto_dynamic_security.so";
    let mut candidates = vec![
        PathBuf::from("/usr/lib").join(name),
        PathBuf::from("/usr/local/lib").join(name),
    ];
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        candidates.extend(dirs.flatten().map(|d| d.path().join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("mosquitto's dynamic-security plugin is installed (Debian's mosquitto package has it)")
}

/// The installed mosquitto's version, e.g. `2.0.11`.
pub fn mosquitto_version() -> String {
    let out = Command::new("mosquitto")
        .arg("-h")
        .output()
        .expect("mosquitto is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("mosquitto version").trim().to_owned()
}

/// A fresh test CA with a server and a client certificate (EC P-256, SHA-256, X.509 v3), made with the `openssl`
/// command; the files live as long as this value.
pub struct Certs {
    /// The folder holding the files.
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM): `basicConstraints CA:TRUE`, `keyUsage keyCertSign`.
    pub ca: PathBuf,
    /// The CA's private key (PKCS#8 PEM), to sign more certificates.
    pub ca_key: PathBuf,
    /// The server certificate (PEM): CN `localhost`, `subjectAltName IP:127.0.0.1, DNS:localhost`,
    /// `extendedKeyUsage serverAuth`, not a CA.
    pub server_cert: PathBuf,
    /// The server's private key (PKCS#8 PEM).
    pub server_key: PathBuf,
    /// The client certificate (PEM): CN `sensebind-test`, `extendedKeyUsage clientAuth`, not a CA.
    pub client_cert: PathBuf,
    /// The client's private key (PKCS#8 PEM, which rumqttc's `TlsConfiguration::Simple` reads, as it does SEC1 and
    /// PKCS#1).
    pub client_key: PathBuf,
}

/// The `openssl` configuration: a minimal `[req]` (no system openssl.cnf needed) and the three extension sections.
const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Makes a fresh [`Certs`] with the `openssl` command (valid from now for two days).
pub fn make_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("openssl.cnf"), OPENSSL_CONF).unwrap();
    // Run in the folder with relative names, so the commands split on whitespace whatever the temp path.
    for name in ["ca", "server", "client"] {
        openssl(
            d,
            &format!("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}.key"),
        );
    }
    openssl(
        d,
        "req -config openssl.cnf -x509 -new -key ca.key -sha256 -days 2 -subj /CN=sensebind-test-CA \
         -extensions ca_ext -out ca.pem",
    );
    for (name, cn, serial) in [("server", "localhost", 2), ("client", "sensebind-test", 3)] {
        openssl(
            d,
            &format!("req -config openssl.cnf -new -key {name}.key -subj /CN={cn} -out {name}.csr"),
        );
        openssl(
            d,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 2 -sha256 \
                 -extfile openssl.cnf -extensions {name}_ext -out {name}.pem"
            ),
        );
    }
    Certs {
        ca: d.join("ca.pem"),
        ca_key: d.join("ca.key"),
        server_cert: d.join("server.pem"),
        server_key: d.join("server.key"),
        client_cert: d.join("client.pem"),
        client_key: d.join("client.key"),
        dir,
    }
}

/// Runs `openssl {args}` (split on whitespace) in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// rumqttc TLS settings that trust this CA, presenting the client certificate when `client_cert`; use with
    /// `MqttOptions::set_transport(rumqttc::Transport::tls_with_config(..))` and host `127.0.0.1` or `localhost`.
    pub fn tls_config(&self, client_cert: bool) -> rumqttc::TlsConfiguration {
        let client_auth = client_cert.then(|| {
            (
                std::fs::read(&self.client_cert).unwrap(),
                std::fs::read(&self.client_key).unwrap(),
            )
        });
        rumqttc::TlsConfiguration::Simple {
            ca: std::fs::read(&self.ca).unwrap(),
            alpn: None,
            client_auth,
        }
    }
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
    /// DUP flag as delivered (set on a QoS 1 redelivery of a message sent before but not acknowledged).
    pub dup: bool,
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
    /// The broker's port (for [`Subscriber::sync`]).
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to `127.0.0.1:port` and subscribes to `filter` (QoS 1); returns once subscribed.
    pub fn start(port: u16, filter: &str) -> Self {
        let id = format!("test-sub-{}-{}-{}", std::process::id(), port, next_id());
        Self::start_with_options(rumqttc::MqttOptions::new(id, "127.0.0.1", port), filter)
    }

    /// Like [`Subscriber::start`], logging in as `user` with `password` (for [`Mosquitto::start_password`] and
    /// [`Mosquitto::start_acl`]).
    pub fn start_with_login(port: u16, filter: &str, user: &str, password: &str) -> Self {
        let id = format!("test-sub-{}-{}-{user}-{}", std::process::id(), port, next_id());
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_credentials(user, password);
        Self::start_with_options(opts, filter)
    }

    /// Like [`Subscriber::start`] with the caller's connection options (client id, credentials, TLS transport from
    /// [`Certs::tls_config`], ...); keep-alive and packet sizes are set here.
    pub fn start_with_options(mut opts: rumqttc::MqttOptions, filter: &str) -> Self {
        let port = opts.broker_address().1;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s, f) = (Arc::clone(&messages), Arc::clone(&stop), filter.to_owned());
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("test-subscriber".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
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
                                    dup: p.dup,
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
            port,
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

    /// Publishes a marker message on `topic` (inside this subscriber's filter; on a plain listener) and waits until
    /// it has arrived: whatever the broker queued for this subscriber before it, such as the retained messages it
    /// sent on subscribe, has arrived by then too. Pick a topic nothing else reads or checks.
    pub fn sync(&self, topic: &str) {
        let marker = format!("marker-{}-{}", std::process::id(), next_id());
        publish(self.port, topic, marker.as_bytes(), false);
        assert!(
            self.wait_for(Duration::from_secs(10), |m| m
                .iter()
                .any(|r| r.topic == topic && r.payload == marker.as_bytes())),
            "the marker on {topic} did not come back"
        );
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

/// A subscriber with a persistent session (fixed client id, `clean_session(false)`, QoS 1) on its own thread; it
/// keeps polling through broker outages (an error: wait 200 ms and poll again, which reconnects) and never
/// subscribes again, relying on the broker's session, which also replays QoS 1 messages queued meanwhile.
/// QoS 1 means at least once: a message whose PUBACK was lost comes again (with `dup` set).
pub struct PersistentSubscriber {
    /// Messages so far.
    pub messages: Arc<Mutex<Vec<Received>>>,
    /// `session_present` of every CONNACK so far.
    connacks: Arc<Mutex<Vec<bool>>>,
    /// Asked to stay disconnected ([`PersistentSubscriber::disconnect`]).
    offline: Arc<AtomicBool>,
    /// The thread holds no connection while `offline`.
    parked: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PersistentSubscriber {
    /// Connects to `127.0.0.1:port` as `client_id` with a persistent session and subscribes to `filter` (QoS 1);
    /// returns once the SUBACK arrived.
    pub fn start_on(port: u16, client_id: &str, filter: &str) -> Self {
        Self::spawn(port, client_id, Some(filter.to_owned()))
    }

    /// Connects to `127.0.0.1:port` as `client_id` with a persistent session without subscribing (the session from
    /// an earlier [`PersistentSubscriber::start_on`] with that id keeps its subscriptions); returns once connected.
    pub fn attach(port: u16, client_id: &str) -> Self {
        Self::spawn(port, client_id, None)
    }

    fn spawn(port: u16, client_id: &str, filter: Option<String>) -> Self {
        let mut sub = PersistentSubscriber {
            messages: Arc::new(Mutex::new(Vec::new())),
            connacks: Arc::new(Mutex::new(Vec::new())),
            offline: Arc::new(AtomicBool::new(false)),
            parked: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        let (messages, connacks) = (Arc::clone(&sub.messages), Arc::clone(&sub.connacks));
        let (offline, parked, stop) = (Arc::clone(&sub.offline), Arc::clone(&sub.parked), Arc::clone(&sub.stop));
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_clean_session(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("test-persistent-subscriber".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let record = |p: &rumqttc::Publish| {
                        messages.lock().unwrap().push(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            dup: p.dup,
                            at: Instant::now(),
                        });
                    };
                    let mut ready = Some(ready_tx);
                    let wait_suback = filter.is_some();
                    let mut subscribe = filter;
                    let mut conn: Option<(rumqttc::AsyncClient, rumqttc::EventLoop)> = None;
                    while !stop.load(Ordering::SeqCst) {
                        if offline.load(Ordering::SeqCst) {
                            if let Some((client, mut events)) = conn.take() {
                                // Send DISCONNECT (the session stays), then drop the connection.
                                let _queued = client.try_disconnect();
                                let until = tokio::time::Instant::now() + Duration::from_secs(2);
                                while let Ok(Ok(ev)) = tokio::time::timeout_at(until, events.poll()).await {
                                    match ev {
                                        rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => record(&p),
                                        rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect) => break,
                                        _ => {}
                                    }
                                }
                            }
                            parked.store(true, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        parked.store(false, Ordering::SeqCst);
                        let (_client, events) = conn.get_or_insert_with(|| {
                            let (client, events) = rumqttc::AsyncClient::new(opts.clone(), 16);
                            if let Some(f) = subscribe.take() {
                                client.try_subscribe(f, rumqttc::QoS::AtLeastOnce).unwrap();
                            }
                            (client, events)
                        });
                        match tokio::time::timeout(Duration::from_millis(100), events.poll()).await {
                            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c)))) => {
                                connacks.lock().unwrap().push(c.session_present);
                                if !wait_suback && let Some(tx) = ready.take() {
                                    let _sent = tx.send(());
                                }
                            }
                            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) => {
                                if let Some(tx) = ready.take() {
                                    let _sent = tx.send(());
                                }
                            }
                            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => record(&p),
                            Ok(Ok(_)) | Err(_) => {}
                            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                });
            })
            .unwrap();
        sub.thread = Some(thread);
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("connected (and subscribed)");
        sub
    }

    /// How many times it connected (CONNACKs received): 1 after the start, one more per reconnect.
    pub fn connects(&self) -> usize {
        self.connacks.lock().unwrap().len()
    }

    /// `session_present` of every CONNACK so far (`false` first unless the broker already had this client's session;
    /// `true` on a reconnect that found the session).
    pub fn sessions_present(&self) -> Vec<bool> {
        self.connacks.lock().unwrap().clone()
    }

    /// Waits until it has connected `n` times in all, or the timeout passes; returns whether it did.
    pub fn wait_connects(&self, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.connects() < n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.connects() >= n
    }

    /// Sends DISCONNECT and stays disconnected (the broker keeps the session and queues QoS 1 messages for it) until
    /// [`PersistentSubscriber::reconnect`]; returns once the connection is closed.
    pub fn disconnect(&self) {
        self.offline.store(true, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(5);
        while !self.parked.load(Ordering::SeqCst) {
            assert!(Instant::now() < until, "the persistent subscriber did not disconnect");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connects again after [`PersistentSubscriber::disconnect`] (same client id, no new SUBSCRIBE); returns once
    /// the CONNACK arrived. Queued messages follow right after it: use [`PersistentSubscriber::wait_for`].
    pub fn reconnect(&self) {
        let n = self.connects();
        self.offline.store(false, Ordering::SeqCst);
        assert!(
            self.wait_connects(n + 1, Duration::from_secs(10)),
            "the persistent subscriber did not reconnect"
        );
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

impl Drop for PersistentSubscriber {
    /// Stops the thread, which drops the connection without DISCONNECT; the broker keeps the session.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _joined = t.join();
        }
    }
}

/// Publishes one message (QoS 1) and waits for the broker's acknowledgement.
pub fn publish(port: u16, topic: &str, payload: &[u8], retain: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut opts = rumqttc::MqttOptions::new(
            format!("test-pub-{}-{}", std::process::id(), next_id()),
            "127.0.0.1",
            port,
        );
        opts.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 4);
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < until, "no PUBACK for {topic}");
            if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) =
                tokio::time::timeout(Duration::from_millis(200), events.poll()).await
            {
                break;
            }
        }
        let _bye = client.disconnect().await;
        let _flush = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    });
}

/// Publishes one non-retained QoS 1 message.
pub fn publish_once(port: u16, topic: &str, payload: &[u8]) {
    publish(port, topic, payload, false);
}

/// A daemon configuration: device `device`, stats every second, the bundled tiny models, the broker at `url`;
/// `rest` follows the `[mqtt]` section's `url` line (more `[mqtt]` keys first, then sources, prompts, …).
pub fn daemon_config(device: &str, url: &str, state: &Path, rest: &str) -> String {
    format!(
        r#"
[device]
id = "{device}"
name = "Test rig"

[runtime]
state_dir = {state}
stats_interval_secs = 1

[models]
dir = {models}

# These tests pin the two-prompt softmax of the tiny models (walking_not_still); the shipped background prompts
# are tested on their own (tests/labels_daemon.rs).
[labels]
default_background = false

[mqtt]
url = "{url}"
{rest}
"#,
        state = toml_str(state),
        models = toml_str(&root().join("models/imagebind-tiny")),
    )
}

/// A configuration without MQTT (messages are only logged): device `device`, the bundled tiny models; `models`
/// goes into `[models]` after `dir`, and `rest` follows (sources, prompts, …).
pub fn offline_config(device: &str, state: &Path, models: &str, rest: &str) -> String {
    format!(
        r#"
[device]
id = "{device}"
[runtime]
state_dir = {state}
[models]
dir = {dir}
{models}
[labels]
default_background = false
[mqtt]
enabled = false
{rest}
"#,
        state = toml_str(state),
        dir = toml_str(&root().join("models/imagebind-tiny")),
    )
}

/// A synthetic IMU source named `imu0` (400 Hz) with 0.5 s windows every 0.1 s.
pub const FAST_IMU: &str = r#"
[[sources]]
type = "synthetic"
name = "imu0"
modality = "imu"
window_secs = 0.5
hop_secs = 0.1
"#;

/// A daemon configuration with one synthetic IMU (200 Hz, 0.5 s windows every 0.1 s) and events that react to a
/// single window; `mqtt_extra` goes into `[mqtt]`.
pub fn imu_config(device: &str, url: &str, state: &Path, mqtt_extra: &str, prompts: &str) -> String {
    daemon_config(
        device,
        url,
        state,
        &format!(
            r#"{mqtt_extra}

[events]
aggregate_windows = 1
onset_k = 1
onset_n = 1
hold_secs = 0.0
update_interval_secs = 3600

[[sources]]
type = "synthetic"
name = "imu0"
modality = "imu"
rate_hz = 200.0
window_secs = 0.5
hop_secs = 0.1

{prompts}"#
        ),
    )
}

/// Two prompts for [`imu_config`]'s synthetic IMU, both with threshold 0.5, so only the argmax of the two can fire:
/// with the tiny models `walking` scores 0.537 and `still` 0.463 on every window, so walking's events cycle every
/// `max_event_secs` and still never has one (a single prompt would score 1 whatever the window). New models may need
/// new prompts here.
pub fn walking_not_still(max_event_secs: f64) -> String {
    format!(
        r#"
[[prompts]]
id = "walking"
text = "a person walking"
threshold = 0.5
max_event_secs = {max_event_secs}

[[prompts]]
id = "still"
text = "a phone lying on a table"
threshold = 0.5
"#
    )
}

/// The `sources.{source}` objects of every `stats` message of `device` received so far.
pub fn source_stats(messages: &[Received], device: &str, source: &str) -> Vec<serde_json::Value> {
    let topic = format!("sensebind/{device}/stats");
    messages
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.json()["sources"][source].clone())
        .collect()
}

/// A thread with a name (clippy.toml forbids unnamed ones).
pub fn spawn_named<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new().name("test-worker".into()).spawn(f).unwrap()
}

/// A source running on its own thread into a ring, as the daemon runs it.
pub struct SourceRun {
    /// The source's counters.
    pub stats: Arc<sensebind::sources::SourceStats>,
    consumer: sensebind::ring::RingConsumer<sensebind::sources::Sample>,
    stop: sensebind::sources::StopFlag,
    handle: Option<std::thread::JoinHandle<Result<(), sensebind::sources::SourceError>>>,
}

impl SourceRun {
    /// Starts `source` with a ring of 4096 samples.
    pub fn start(mut source: impl sensebind::sources::Source + 'static) -> Self {
        let (producer, consumer) = sensebind::ring::ring(4096);
        let stats = Arc::new(sensebind::sources::SourceStats::default());
        let mut out = sensebind::sources::SourceOutput::new(producer, None, Arc::clone(&stats));
        let stop = sensebind::sources::StopFlag::new();
        let flag = stop.clone();
        let handle = spawn_named(move || source.run(&mut out, &flag));
        Self {
            stats,
            consumer,
            stop,
            handle: Some(handle),
        }
    }

    /// Moves the samples in the ring into `into`.
    pub fn drain(&self, into: &mut Vec<sensebind::sources::Sample>) {
        self.consumer.drain_into(into);
    }

    /// Stops the source, checks it ended without an error, and returns what was left in the ring.
    pub fn finish(mut self) -> Vec<sensebind::sources::Sample> {
        self.stop.raise();
        if let Some(h) = self.handle.take() {
            h.join().unwrap().unwrap();
        }
        let mut rest = Vec::new();
        self.drain(&mut rest);
        rest
    }

    /// Runs `source` for `secs`, or until `until` holds for the samples so far; returns them and the counters.
    pub fn run_for(
        source: impl sensebind::sources::Source + 'static,
        secs: f64,
        until: impl Fn(&[sensebind::sources::Sample], &sensebind::sources::SourceStats) -> bool,
    ) -> (Vec<sensebind::sources::Sample>, Arc<sensebind::sources::SourceStats>) {
        let run = Self::start(source);
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut samples = Vec::new();
        while Instant::now() < end {
            run.drain(&mut samples);
            if until(&samples, &run.stats) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = Arc::clone(&run.stats);
        samples.extend(run.finish());
        (samples, stats)
    }
}

/// A `sensebind run` child process with its log file; killed on drop.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its stderr.
    pub log_path: PathBuf,
}

impl Daemon {
    /// Writes `config_text` to `{dir}/{name}.toml` and runs the daemon on it (stderr to `{dir}/{name}.log`).
    pub fn start(dir: &Path, name: &str, config_text: &str, env: &[(&str, &str)]) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, config_text).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sensebind"));
        cmd.args(["run", "--config"])
            .arg(&config)
            .args(["--shutdown-timeout-secs", "5"])
            .env("SENSEBIND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log_path: log,
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal (`-TERM`, `-KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for the exit, up to `within`.
    pub fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then asserts a clean exit within 10 s.
    pub fn stop(&mut self) {
        self.signal("-TERM");
        let status = self.wait(Duration::from_secs(10)).expect("exits after SIGTERM");
        assert!(status.success(), "exit {status:?}:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` if `within` passes first. For a state the test can
/// look at directly (a file, a counter, a log line); messages have [`Subscriber::wait_for`].
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < until, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the last `sensebind/{device}/availability` message so far says `offline`. A daemon stopping cleanly
/// publishes it after everything else it had to send (final stats included), so once it is here, so is the rest.
pub fn said_offline(msgs: &[Received], device: &str) -> bool {
    let topic = format!("sensebind/{device}/availability");
    msgs.iter()
        .rev()
        .find(|m| m.topic == topic)
        .is_some_and(|m| m.payload == b"offline")
}

/// Checks the scores of a `labels/1` message that lists every prompt that applies to its window (`prompts` of
/// them, at least two: with a single prompt the softmax is 1 whatever the window, so nothing could fail): each score
/// within [0, 1], highest first, summing to 1 (so no more than one is 1: in f32 a softmax rounds to exactly 1 and
/// almost 0 once a logit leads by about 17, as a caption against text prompts does), and every cosine within
/// [-1, 1]. Returns the labels in order.
pub fn check_scores(v: &serde_json::Value, prompts: usize) -> Vec<(String, f64)> {
    assert!(prompts >= 2, "scores need two prompts to mean anything");
    let labels = v["labels"].as_array().unwrap_or_else(|| panic!("no labels: {v}"));
    assert_eq!(labels.len(), prompts, "one label per applicable prompt: {v}");
    let scored: Vec<(String, f64)> = labels
        .iter()
        .map(|l| (l["label"].as_str().unwrap().to_owned(), l["score"].as_f64().unwrap()))
        .collect();
    for (l, (_, score)) in labels.iter().zip(&scored) {
        assert!((0.0..=1.0).contains(score), "{v}");
        assert!(l["cosine"].as_f64().unwrap().abs() <= 1.0 + 1e-5, "{v}");
    }
    assert!(scored.windows(2).all(|w| w[0].1 >= w[1].1), "highest score first: {v}");
    // A softmax over the applicable prompts: the labels' scores sum to 1, or less when background prompts (never
    // listed) take part.
    let sum: f64 = scored.iter().map(|(_, s)| s).sum();
    assert!(
        sum > 0.0 && sum <= 1.0 + 1e-4,
        "the scores are part of a softmax, summing to at most 1, not {sum}: {v}"
    );
    scored
}

/// A number unique in this test process (client ids: two clients with one id keep kicking each other off).
pub fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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

/// Datagrams received on a notification socket, with when they came.
pub struct Listener {
    socket: std::os::unix::net::UnixDatagram,
    /// Where it listens (`NOTIFY_SOCKET`).
    pub path: PathBuf,
    /// Every message with when it came.
    pub got: Vec<(Instant, String)>,
}

impl Listener {
    /// Binds `{dir}/notify.sock`.
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        Listener {
            socket,
            path,
            got: Vec::new(),
        }
    }

    /// Reads for `secs`, or until a message contains `until`.
    pub fn read(&mut self, within: Duration, until: &str) -> bool {
        let end = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = text.contains(until);
                self.got.push((Instant::now(), text));
                if done {
                    return true;
                }
            }
        }
        false
    }

    /// `WATCHDOG=1` pings from `from` on.
    pub fn pings_after(&self, from: Instant) -> Vec<Instant> {
        self.got
            .iter()
            .filter(|(t, m)| *t >= from && m.contains("WATCHDOG=1"))
            .map(|(t, _)| *t)
            .collect()
    }

    /// When a message containing `what` first came.
    pub fn first(&self, what: &str) -> Option<Instant> {
        self.got.iter().find(|(_, m)| m.contains(what)).map(|(t, _)| *t)
    }
}

/// The longest time between two instants.
pub fn longest_gap(times: &[Instant]) -> Duration {
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// Runs the daemon offline for 3 s on the bundled bell recording (an audio source `mic`, two prompts) with `models`
/// as the `[models]` section's body (its `dir` and any other keys, tables after them), and checks that the audio
/// tower encoded at least three windows, failed none and scored every one. Returns the backend it ran on.
pub fn run_bell_offline(state: &Path, models: &str) -> Option<&'static str> {
    let config = format!(
        r#"
[device]
id = "bell"
[runtime]
state_dir = {state}
stats_interval_secs = 0
[models]
{models}
[mqtt]
enabled = false
[[sources]]
type = "replay"
name = "mic"
modality = "audio"
paths = [{bell}]
window_secs = 1.0
hop_secs = 0.5
[[prompts]]
id = "bell"
text = "a bell ringing"
[[prompts]]
id = "dog"
text = "a dog barking"
"#,
        state = toml_str(&state.join("state")),
        bell = toml_str(&root().join("tests/fixtures/media/bell.oga")),
    );
    let path = state.join("bell.toml");
    std::fs::write(&path, config).unwrap();
    let loaded = sensebind::config::load(&path).unwrap();
    let options = sensebind::runtime::RunOptions {
        duration: Some(Duration::from_secs(3)),
        shutdown_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt
        .block_on(sensebind::runtime::run(&loaded, &options, std::future::pending()))
        .unwrap();
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let enc = &summary.metrics.encoders[&sensebind::modality::Modality::Audio];
    assert!(r(&enc.windows_encoded_total) >= 3, "{}", r(&enc.windows_encoded_total));
    assert_eq!(r(&enc.windows_failed_total), 0);
    let sources = summary.metrics.sources();
    assert_eq!(
        r(&sources["mic"].source.windows_scored_total),
        r(&enc.windows_encoded_total)
    );
    enc.backend.get().copied()
}
