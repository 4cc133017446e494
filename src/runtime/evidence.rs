//! Evidence at run time: the sensors' history rings and the `evidence-writer` thread (`crate::evidence`).
//!
//! Started before the sources (their window stages feed the histories) when `[evidence]` or any prompt enables
//! evidence; stopped after the controller (its last events' clips are written): the queue closes, the writer
//! finishes what is queued within the shutdown deadline, and is named as a straggler otherwise.

use std::sync::Arc;

use crate::config::LoadedConfig;
use crate::evidence::EvidenceConfig;
use crate::evidence::history::{Histories, History};
use crate::evidence::store::Store;
use crate::evidence::writer::{self, JobQueue, Writer};
use crate::publish::{OutMessage, Outbox, Topics};

/// The running evidence stage.
pub struct EvidenceStage {
    /// `[evidence]` as started (a reload's changes wait for a restart).
    pub config: EvidenceConfig,
    /// Every sensor's history.
    pub histories: Arc<Histories>,
    /// The writer's queue (the controller fills it).
    pub queue: Arc<JobQueue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for EvidenceStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceStage")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Makes and registers the history ring of each source started (a reload's too).
#[derive(Debug, Clone)]
pub struct HistoryMaker {
    histories: Arc<Histories>,
    secs: f64,
    max_bytes: u64,
}

impl HistoryMaker {
    /// A new history ring for a sensor, registered under its name (replacing a previous one).
    pub fn make(
        &self,
        sc: &crate::sources::config::SourceConfig,
        preprocess: &crate::preprocess::PreprocessConfig,
    ) -> Arc<History> {
        use crate::sources::config::SourceConfig;
        let unit = match sc {
            SourceConfig::V4l2(c) => c.depth_unit_m,
            SourceConfig::Gstreamer(c) => c.depth_unit_m,
            _ => preprocess.depth.png_unit_m,
        };
        let h = Arc::new(History::new(sc.modality(), self.secs, self.max_bytes, unit));
        self.histories.insert(sc.name(), Arc::clone(&h));
        h
    }

    /// Forgets a removed sensor's ring.
    pub fn remove(&self, sensor: &str) {
        self.histories.remove(sensor);
    }
}

impl EvidenceStage {
    /// Starts the writer when any event may write evidence; `None` otherwise.
    pub fn start(loaded: &LoadedConfig, topics: &Topics, outbox: &Arc<Outbox>) -> anyhow::Result<Option<Self>> {
        let cfg = &loaded.config;
        let e = &cfg.evidence;
        if !e.any_enabled(cfg.prompts.iter().map(|p| p.evidence.as_ref())) {
            return Ok(None);
        }
        let root = e.root(&loaded.base, &loaded.resolve(&cfg.runtime.state_dir));
        let store = Store::new(root.clone(), e.max_bytes, e.max_age_days);
        let histories = Arc::new(Histories::default());
        // Overflow policy: a full queue refuses the new job (that evidence is skipped and counted).
        let queue = Arc::new(JobQueue::new(e.queue));
        let (topics, outbox) = (topics.clone(), Arc::clone(outbox));
        let sink: writer::SnapshotSink = Box::new(move |sensor: &str, label: &str, bytes: Vec<u8>| {
            outbox.push(OutMessage::state(topics.snapshot(sensor, label), bytes));
        });
        let w = Writer {
            store,
            histories: Arc::clone(&histories),
            jpeg_quality: e.jpeg_quality,
            clip_fps: e.clip_fps,
            publish_snapshots: e.publish_snapshots.clone(),
            snapshot_max_bytes: e.snapshot_max_bytes,
            sink,
        };
        let thread = writer::spawn(w, Arc::clone(&queue))
            .map_err(|err| anyhow::anyhow!("cannot start thread evidence-writer: {err}"))?;
        tracing::info!(root = %root.display(), "Event evidence on.");
        Ok(Some(Self {
            config: e.clone(),
            histories,
            queue,
            thread: Some(thread),
        }))
    }

    /// The counters `stats` and `/metrics` read: the writer's queue and the histories.
    pub fn counters(&self) -> (Arc<crate::evidence::writer::EvidenceStats>, Arc<Histories>) {
        (Arc::clone(&self.queue.stats), Arc::clone(&self.histories))
    }

    /// What the controller needs: the writer's queue and the configuration.
    pub fn controller_setup(&self) -> crate::control::evidence::EvidenceSetup {
        crate::control::evidence::EvidenceSetup {
            queue: Arc::clone(&self.queue),
            config: self.config.clone(),
        }
    }

    /// What the window stages need to keep histories.
    pub fn history_maker(&self) -> HistoryMaker {
        HistoryMaker {
            histories: Arc::clone(&self.histories),
            secs: self.config.history_secs,
            max_bytes: self.config.history_max_bytes,
        }
    }

    /// Closes the queue and waits (until `deadline`) for the writer to finish; returns its name if it did not.
    pub async fn shutdown(mut self, deadline: tokio::time::Instant) -> Option<String> {
        self.queue.close();
        let thread = self.thread.take()?;
        let join = tokio::task::spawn_blocking(move || thread.join());
        match tokio::time::timeout_at(deadline, join).await {
            Ok(_) => None,
            Err(_) => Some("evidence-writer".into()),
        }
    }
}
