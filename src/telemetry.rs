//! Logging: `tracing` to stderr, filtered by `--log`, then `SENSEBIND_LOG`, then the verb's default.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls are ignored).
pub fn init(flag: Option<&str>, default: &str) {
    // ONNX Runtime's own messages (target `ort`) are chatty at info: every graph transformer, every session
    // option. They show from warn on unless the filter names `ort` itself (e.g. `info,ort=info`).
    let quiet_ort = |f: String| {
        if f.split(',').any(|d| d.trim().starts_with("ort")) {
            f
        } else {
            format!("{f},ort=warn")
        }
    };
    let filter = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("SENSEBIND_LOG").ok())
        .and_then(|f| EnvFilter::try_new(quiet_ort(f)).ok())
        .unwrap_or_else(|| EnvFilter::new(quiet_ort(default.to_owned())));
    // Err only when a subscriber is already installed (tests, or a second call): keep the first.
    let _already_installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init()
        .is_err();
}
