//! `sensebind evidence list|show|prune`: the event evidence on this device, for a field engineer.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::evidence::store::{Store, dir_name};

/// `sensebind evidence`
#[derive(Debug, Args)]
pub struct EvidenceArgs {
    /// The daemon's configuration file: its `[evidence]` gives the root and the retention limits.
    #[arg(long, short, default_value = "/etc/sensebind/sensebind.toml")]
    pub config: PathBuf,
    /// The evidence root itself (instead of the configuration's).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: EvidenceCommand,
}

/// `sensebind evidence ...`
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Every event with evidence, oldest first: id, last write, size, files.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One event: its `event.json` (the start and end messages, the windows' scores, the files).
    Show {
        /// The event id (as in `event/1` messages and `list`).
        id: String,
    },
    /// Apply retention now: the configuration's `max_bytes` and `max_age_days`, or the limits given.
    Prune {
        /// Keep at most this many bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Delete events older than this (0: no age limit).
        #[arg(long)]
        max_age_days: Option<f64>,
    },
}

/// The evidence root and its retention limits (`max_bytes`, `max_age_days`).
fn root_and_limits(args: &EvidenceArgs) -> anyhow::Result<(PathBuf, u64, f64)> {
    if let Some(root) = &args.root {
        let d = crate::evidence::EvidenceConfig::default();
        return Ok((root.clone(), d.max_bytes, d.max_age_days));
    }
    let options = crate::config::CheckOptions { environment: false };
    let loaded = crate::config::load_with(&args.config, options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = &loaded.config;
    let root = cfg.evidence.root(&loaded.base, &loaded.resolve(&cfg.runtime.state_dir));
    Ok((root, cfg.evidence.max_bytes, cfg.evidence.max_age_days))
}

/// Runs `sensebind evidence`; returns the exit code.
#[allow(clippy::print_stdout)]
pub fn run(args: &EvidenceArgs) -> anyhow::Result<u8> {
    let (root, max_bytes_cfg, max_age_cfg) = root_and_limits(args)?;
    let store = Store::new(root, max_bytes_cfg, max_age_cfg);
    match &args.command {
        EvidenceCommand::List { json } => {
            let events = store
                .list()
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", store.root().display()))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&events)?);
                return Ok(super::EXIT_OK);
            }
            println!("{:<40} {:<25} {:>10}  files", "event", "written", "bytes");
            for e in &events {
                println!(
                    "{:<40} {:<25} {:>10}  {}",
                    e.id,
                    e.modified_at,
                    e.bytes,
                    e.files.join(" ")
                );
            }
            let total: u64 = events.iter().map(|e| e.bytes).sum();
            println!(
                "{} events, {total} bytes under {}",
                events.len(),
                store.root().display()
            );
            Ok(super::EXIT_OK)
        }
        EvidenceCommand::Show { id } => {
            let path = store.root().join(dir_name(id)).join("event.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("no evidence of event {id:?} ({}: {e})", path.display()))?;
            println!("{}", text.trim_end());
            Ok(super::EXIT_OK)
        }
        EvidenceCommand::Prune {
            max_bytes,
            max_age_days,
        } => {
            let limits = Store::new(
                store.root().to_path_buf(),
                max_bytes.unwrap_or(max_bytes_cfg),
                max_age_days.unwrap_or(max_age_cfg),
            );
            let p = limits
                .prune()
                .map_err(|e| anyhow::anyhow!("cannot prune {}: {e}", store.root().display()))?;
            println!(
                "deleted {} events ({} bytes); {} events, {} bytes left under {}",
                p.events,
                p.bytes,
                p.events_left,
                p.bytes_left,
                store.root().display()
            );
            Ok(super::EXIT_OK)
        }
    }
}
