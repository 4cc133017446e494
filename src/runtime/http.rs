//! The `[metrics]` HTTP endpoint: a small HTTP/1.1 responder on tokio's `TcpListener` for three paths.
//!
//! - `GET /metrics`: the Prometheus text format ([`super::exposition`]);
//! - `GET /healthz`: 200 while the process is alive and its loops turn, else 503 with the reason;
//! - `GET /readyz`: 200 once models are loaded, the pipeline runs and (MQTT on) the broker is connected, else 503
//!   with the reason ([`super::health`]).
//!
//! `HEAD` works on each; other methods get 405, other paths 404. One request per connection (`Connection: close`).
//! Bounded everywhere: at most [`Limits::max_connections`] connections are served at once (more wait in the
//! kernel's accept backlog), a request head over [`Limits::max_head_bytes`] gets 431, a head not complete within
//! [`Limits::read_timeout`] gets 408, and writing the answer has a deadline too. No crate was needed: hyper is only
//! in the tree through rumqttd's console, and three GET paths do not need a framework.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::exposition;
use super::health::Health;
use crate::config::MetricsConfig;

/// The bounds of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and headers) read; a longer one gets 431.
    pub max_head_bytes: usize,
    /// Longest wait for a complete request head; then 408.
    pub read_timeout: Duration,
    /// Longest time writing the answer may take.
    pub write_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections: 8,
        }
    }
}

/// How long a closed connection is drained of what the client still sends (so the kernel does not reset it before
/// the client has read the answer), and how much is read at most.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The running server; dropping it stops it (the accept loop, every open connection and the heartbeat).
#[derive(Debug)]
pub struct MetricsServer {
    local: SocketAddr,
    health: Arc<Health>,
    accept: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: a free port; see [`MetricsServer::local_addr`]) and serves until dropped.
    pub async fn start(addr: SocketAddr, health: &Arc<Health>, limits: Limits) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok(Self {
            local,
            health: Arc::clone(health),
            accept: tokio::spawn(accept_loop(listener, Arc::clone(health), limits)),
            heartbeat: tokio::spawn(Arc::clone(health).beat_forever()),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What it reports.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.heartbeat.abort();
    }
}

/// Starts the server of a `[metrics]` section (none without one). Called before the models load, so `/healthz`
/// answers during start-up.
pub async fn start(config: Option<&MetricsConfig>, health: &Arc<Health>) -> anyhow::Result<Option<MetricsServer>> {
    let Some(config) = config else { return Ok(None) };
    let addr = config.address().map_err(|e| anyhow::anyhow!("metrics.listen: {e}"))?;
    let server = MetricsServer::start(addr, health, Limits::default())
        .await
        .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
    tracing::info!(address = %server.local_addr(), "Serving /metrics, /healthz and /readyz.");
    Ok(Some(server))
}

async fn accept_loop(listener: TcpListener, health: Arc<Health>, limits: Limits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    // Owns the connection tasks: aborting this loop aborts them.
    let mut connections = tokio::task::JoinSet::new();
    let mut warned: Option<Instant> = None;
    loop {
        while connections.try_join_next().is_some() {}
        // Taken before accepting: while every permit is out, new connections wait in the kernel's backlog.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let health = Arc::clone(&health);
                connections.spawn(async move {
                    let _permit = permit;
                    serve(stream, &health, limits).await;
                });
            }
            Err(e) => {
                // Out of file descriptors, mostly: log once a minute, retry shortly.
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "Cannot accept a metrics connection; retrying.");
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers one request and closes the connection.
async fn serve(mut stream: TcpStream, health: &Health, limits: Limits) {
    let response = match tokio::time::timeout(limits.read_timeout, read_head(&mut stream, limits.max_head_bytes)).await
    {
        Err(_elapsed) => Response::text(408, "request head not received in time\n"),
        Ok(Err(HeadError::TooLarge)) => {
            Response::text(431, format!("request head over {} bytes\n", limits.max_head_bytes))
        }
        Ok(Err(HeadError::Incomplete)) => Response::text(400, "incomplete request head\n"),
        Ok(Err(HeadError::Closed | HeadError::Io)) => return,
        Ok(Ok(head)) => match parse_request(&head) {
            Ok(request) => respond(&request, health),
            Err(e) => Response::text(e.status(), format!("{e}\n")),
        },
    };
    tracing::debug!(status = response.status, "Answered a metrics request.");
    let bytes = response.to_bytes();
    let written = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        let _drained = tokio::time::timeout(LINGER, drain(&mut stream)).await;
    }
}

/// Reads and discards what the client still sends, until it closes or [`LINGER_BYTES`].
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// Why no request head was read.
#[derive(Debug)]
enum HeadError {
    /// The client closed before sending anything.
    Closed,
    /// The client closed in the middle of the head.
    Incomplete,
    /// Over the limit without an end.
    TooLarge,
    /// The connection failed.
    Io,
}

/// Reads up to the blank line that ends the request head (`\r\n\r\n`, or a bare `\n\n`); returns the head
/// without it. Anything after it (a body) is left unread.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(if head.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Incomplete
            });
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head, from) {
            if end > max {
                return Err(HeadError::TooLarge);
            }
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > max {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends (the index of the blank line), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    (0..tail.len()).find_map(|i| {
        let rest = &tail[i..];
        (rest.starts_with(b"\r\n\r\n") || rest.starts_with(b"\n\n")).then_some(from + i)
    })
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The path, without a query string.
    path: &'a str,
}

/// A request line that is not HTTP/1.x.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum ParseError {
    #[error("malformed request line: expected `METHOD /path HTTP/1.1`")]
    Malformed,
    #[error("HTTP version not supported: use HTTP/1.1 or HTTP/1.0")]
    Version,
}

impl ParseError {
    fn status(&self) -> u16 {
        match self {
            ParseError::Malformed => 400,
            ParseError::Version => 505,
        }
    }
}

/// Reads the request line of `head` (the headers are not needed and are not looked at).
fn parse_request(head: &[u8]) -> Result<Request<'_>, ParseError> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return Err(ParseError::Malformed);
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(ParseError::Version),
        _ => return Err(ParseError::Malformed),
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Request { method, path })
}

/// The answer to a well-formed request.
fn respond(request: &Request<'_>, health: &Health) -> Response {
    let head_only = request.method == "HEAD";
    let known = matches!(request.path, "/metrics" | "/healthz" | "/readyz");
    let mut response = if !known {
        Response::text(404, "not found: try /metrics, /healthz or /readyz\n")
    } else if !matches!(request.method, "GET" | "HEAD") {
        let mut r = Response::text(405, "method not allowed: use GET or HEAD\n");
        r.allow = true;
        r
    } else {
        match request.path {
            "/metrics" => match exposition::render(health) {
                Ok(text) => Response {
                    content_type: exposition::CONTENT_TYPE,
                    ..Response::text(200, text)
                },
                Err(_) => Response::text(500, "cannot render the metrics\n"),
            },
            "/healthz" => match health.liveness() {
                Ok(()) => Response::text(200, "ok\n"),
                Err(why) => Response::text(503, format!("unhealthy: {why}\n")),
            },
            _ => match health.readiness() {
                Ok(()) => Response::text(200, "ready\n"),
                Err(why) => Response::text(503, format!("not ready: {why}\n")),
            },
        }
    };
    response.head_only = head_only;
    response
}

/// An answer.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    /// Says `Allow: GET, HEAD` (405).
    allow: bool,
    /// Headers only (`HEAD`).
    head_only: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
            head_only: false,
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.reason(),
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlStats;
    use crate::publish::mqtt::MqttStats;

    async fn server(limits: Limits) -> MetricsServer {
        let health = Arc::new(Health::new(
            true,
            &Arc::new(MqttStats::default()),
            &Arc::new(ControlStats::default()),
        ));
        MetricsServer::start("127.0.0.1:0".parse().unwrap(), &health, limits)
            .await
            .unwrap()
    }

    /// Sends `request` as it is and reads the whole answer (the server closes the connection).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    fn status(answer: &str) -> &str {
        answer.split("\r\n").next().unwrap()
    }

    fn body(answer: &str) -> &str {
        answer.split_once("\r\n\r\n").unwrap().1
    }

    #[test]
    fn request_lines_are_parsed_strictly() {
        let ok = |m, p| Ok(Request { method: m, path: p });
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x"),
            ok("GET", "/metrics")
        );
        assert_eq!(parse_request(b"HEAD /readyz?verbose=1 HTTP/1.0"), ok("HEAD", "/readyz"));
        assert_eq!(parse_request(b"GET /healthz HTTP/1.1\nHost: x"), ok("GET", "/healthz"));
        for bad in [
            &b""[..],
            b"GET",
            b"GET /metrics",
            b"GET  /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
            b"get /metrics HTTP/1.1",
            b"GET metrics HTTP/1.1",
            b"GET http://host/metrics HTTP/1.1",
            b"GET /metrics FTP/1.0",
            b"\xff\xfe /metrics HTTP/1.1",
        ] {
            assert_eq!(
                parse_request(bad),
                Err(ParseError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_request(b"GET /metrics HTTP/2.0"), Err(ParseError::Version));
    }

    #[tokio::test]
    async fn the_three_paths_answer_and_others_do_not() {
        let s = server(Limits::default()).await;
        let a = s.local_addr();
        let healthz = exchange(a, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status(&healthz), "HTTP/1.1 200 OK", "{healthz}");
        assert!(healthz.contains("\r\nConnection: close\r\n"), "{healthz}");
        assert_eq!(body(&healthz), "ok\n");
        let readyz = exchange(a, b"GET /readyz HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&readyz), "HTTP/1.1 503 Service Unavailable", "{readyz}");
        assert_eq!(body(&readyz), "not ready: loading models\n");
        let metrics = exchange(a, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(status(&metrics), "HTTP/1.1 200 OK", "{metrics}");
        assert!(
            metrics.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{metrics}"
        );
        assert!(body(&metrics).contains("\nsensebind_ready 0\n"), "{metrics}");
        let head = exchange(a, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&head), "HTTP/1.1 200 OK", "{head}");
        assert_eq!(body(&head), "", "HEAD has no body");
        let unknown = exchange(a, b"GET /admin HTTP/1.1\r\n\r\n").await;
        assert_eq!(status(&unknown), "HTTP/1.1 404 Not Found", "{unknown}");
        let post = exchange(a, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").await;
        assert_eq!(status(&post), "HTTP/1.1 405 Method Not Allowed", "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
    }

    #[tokio::test]
    async fn malformed_requests_get_400_or_505() {
        let s = server(Limits::default()).await;
        let a = s.local_addr();
        for (request, expected) in [
            (&b"NONSENSE\r\n\r\n"[..], "HTTP/1.1 400 Bad Request"),
            (b"GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request"),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                "HTTP/1.1 400 Bad Request",
            ),
            (
                b"GET /metrics HTTP/3\r\n\r\n",
                "HTTP/1.1 505 HTTP Version Not Supported",
            ),
            // The client gives up half-way through the head.
            (b"GET /metrics HTTP/1.1\r\nHost:", "HTTP/1.1 400 Bad Request"),
        ] {
            let mut c = TcpStream::connect(a).await.unwrap();
            c.write_all(request).await.unwrap();
            c.shutdown().await.unwrap();
            let mut out = Vec::new();
            c.read_to_end(&mut out).await.unwrap();
            let answer = String::from_utf8(out).unwrap();
            assert_eq!(status(&answer), expected, "{request:?}: {answer}");
        }
    }

    #[tokio::test]
    async fn an_oversized_head_gets_431_and_the_answer_still_arrives() {
        let limits = Limits::default();
        let s = server(limits).await;
        let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while request.len() <= limits.max_head_bytes + 4096 {
            request
                .extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let answer = exchange(s.local_addr(), &request).await;
        assert_eq!(
            status(&answer),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "{answer}"
        );
        // A head just under the limit is fine.
        let mut request = b"GET /healthz HTTP/1.1\r\nX-Padding: ".to_vec();
        request.resize(limits.max_head_bytes - 4, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        let answer = exchange(s.local_addr(), &request).await;
        assert_eq!(status(&answer), "HTTP/1.1 200 OK", "{answer}");
    }

    #[tokio::test]
    async fn a_silent_client_gets_408_and_holds_one_of_the_bounded_slots_until_then() {
        let limits = Limits {
            read_timeout: Duration::from_millis(300),
            max_connections: 1,
            ..Limits::default()
        };
        let s = server(limits).await;
        let a = s.local_addr();
        let started = Instant::now();
        // Connected first, so accepted first (the accept backlog is first in, first out): it takes the only slot.
        let mut silent = TcpStream::connect(a).await.unwrap();
        let second = tokio::spawn(async move {
            let answer = exchange(a, b"GET /healthz HTTP/1.1\r\n\r\n").await;
            (answer, started.elapsed())
        });
        let mut out = Vec::new();
        silent.read_to_end(&mut out).await.unwrap();
        let silent_done = started.elapsed();
        drop(silent);
        let answer = String::from_utf8(out).unwrap();
        assert_eq!(status(&answer), "HTTP/1.1 408 Request Timeout", "{answer}");
        assert!(silent_done >= Duration::from_millis(300), "{silent_done:?}");
        let (answer, second_done) = second.await.unwrap();
        assert_eq!(status(&answer), "HTTP/1.1 200 OK", "{answer}");
        assert!(
            second_done >= silent_done,
            "the second connection was served ({second_done:?}) before the only slot was free ({silent_done:?})"
        );
    }

    #[tokio::test]
    async fn dropping_the_server_closes_the_port() {
        let s = server(Limits::default()).await;
        let a = s.local_addr();
        drop(s);
        // The aborted accept task drops the listener when the runtime next polls it.
        let until = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(a).await.is_ok() {
            assert!(Instant::now() < until, "still listening on {a}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
