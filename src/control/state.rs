//! The runtime state file `{state_dir}/runtime-state.json`: prompts accepted over MQTT, switches, the session
//! counter and the events in progress, so a restart keeps the prompts and closes the events a crash left open.
//!
//! The controller never writes the file itself: it hands each new state to a [`StateWriter`], a named thread
//! behind a one-slot mailbox (**latest wins**: a state not yet written is replaced by the newer one, which
//! contains it), so a slow SD card never holds up windows, ticks or commands. Each write goes to a temporary file
//! that is flushed and renamed over the old one, so the file is always either the old or the new state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};

use crate::labels::PromptConfig;

/// An event a crash may have left open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenEvent {
    /// Sensor.
    pub sensor: String,
    /// Modality.
    pub modality: String,
    /// Label.
    pub label: String,
    /// Prompt text.
    pub prompt: String,
    /// Start, RFC 3339.
    pub start_time: String,
    /// Last message number sent.
    pub seq: u64,
    /// Peak score.
    pub peak: f32,
}

/// `{state_dir}/runtime-state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeState {
    /// Format version.
    pub schema: u32,
    /// Daemon starts so far.
    pub session: u64,
    /// Configuration revision.
    pub config_rev: u64,
    /// Hash of the configuration file's prompts when `prompts` was saved.
    pub prompts_base: String,
    /// Prompts accepted over MQTT (replace the file's while the file's are unchanged).
    pub prompts: Option<Vec<PromptConfig>>,
    /// Sensors switched off.
    pub disabled_sensors: BTreeSet<String>,
    /// Labels switched off.
    pub disabled_labels: BTreeSet<String>,
    /// Labels whose retained topics were published.
    pub published_labels: BTreeSet<String>,
    /// Events started and not ended, by id.
    pub open_events: BTreeMap<String, OpenEvent>,
    /// Running cosine statistics of `zscore` labels, by `sensor/label`.
    #[serde(default)]
    pub zscores: BTreeMap<String, crate::labels::zscore::Running>,
}

/// The runtime state and its file.
#[derive(Debug)]
pub struct StateFile {
    path: Option<PathBuf>,
    /// The state.
    pub state: RuntimeState,
}

impl StateFile {
    /// Reads `{dir}/runtime-state.json` (an unreadable file is logged and replaced); `None` keeps it in memory.
    pub fn open(dir: Option<&Path>) -> Self {
        let path = dir.map(|d| d.join("runtime-state.json"));
        let state = match path.as_ref().map(|p| (p, std::fs::read(p))) {
            Some((p, Ok(bytes))) => match serde_json::from_slice::<RuntimeState>(&bytes) {
                Ok(s) if s.schema == 1 => s,
                Ok(_) | Err(_) => {
                    tracing::warn!(path = %p.display(), "Ignoring an unreadable runtime state file; runtime prompt changes and open events in it are lost.");
                    RuntimeState::default()
                }
            },
            _ => RuntimeState::default(),
        };
        Self {
            path,
            state: RuntimeState { schema: 1, ..state },
        }
    }

    /// The file, unless the state is kept in memory only.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Writes the state now, on this thread (the controller uses a [`StateWriter`] instead); failures are logged.
    pub fn save(&self) {
        if let (Some(path), Some(bytes)) = (&self.path, serialize(&self.state)) {
            write_atomic(path, &bytes);
        }
    }
}

fn serialize(state: &RuntimeState) -> Option<Vec<u8>> {
    serde_json::to_vec_pretty(state)
        .inspect_err(|e| tracing::error!(error = %e, "Cannot serialise the runtime state; it is not saved."))
        .ok()
}

/// Writes `bytes` to a temporary file next to `path`, flushes it and renames it over `path`; failures are logged.
fn write_atomic(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "Cannot save the runtime state.");
    }
}

/// Hash of a prompt list (to notice that the configuration file's prompts changed).
pub fn prompts_hash(prompts: &[PromptConfig]) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(prompts).unwrap_or_default();
    crate::util::hex(&Sha256::digest(&bytes))[..16].to_owned()
}

/// The one-slot mailbox between the controller and the writer thread.
#[derive(Debug, Default)]
struct Mailbox {
    slot: Mutex<Slot>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    /// The newest state not yet written.
    latest: Option<Vec<u8>>,
    /// No more states will come: write what is there and stop.
    closed: bool,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        match self.slot.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Saves runtime states off the controller's task: a named thread (`state-writer`) fed by a one-slot, latest-wins
/// mailbox.
#[derive(Debug)]
pub(crate) struct StateWriter {
    path: Option<PathBuf>,
    mailbox: Arc<Mailbox>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StateWriter {
    /// A writer for `path` (`None`: nothing is written). If its thread cannot start, states are written inline.
    pub(crate) fn spawn(path: Option<&Path>) -> Self {
        let mailbox = Arc::new(Mailbox::default());
        let thread = path.and_then(|p| {
            let (mb, p) = (Arc::clone(&mailbox), p.to_owned());
            std::thread::Builder::new()
                .name("state-writer".into())
                .spawn(move || write_loop(&mb, &p))
                .inspect_err(|e| tracing::warn!(error = %e, "Cannot start the state writer thread; writing the runtime state inline."))
                .ok()
        });
        Self {
            path: path.map(Path::to_owned),
            mailbox,
            thread,
        }
    }

    /// Queues `state` for writing, replacing a state still waiting.
    pub(crate) fn save(&self, state: &RuntimeState) {
        let Some(path) = &self.path else { return };
        let Some(bytes) = serialize(state) else { return };
        if self.thread.is_none() {
            write_atomic(path, &bytes);
            return;
        }
        let replaced = self.mailbox.lock().latest.replace(bytes).is_some();
        if replaced {
            tracing::trace!("A newer runtime state replaced one not yet written.");
        }
        self.mailbox.ready.notify_one();
    }

    fn close(&self) {
        self.mailbox.lock().closed = true;
        self.mailbox.ready.notify_one();
    }

    /// Writes what is waiting and stops the thread; returns when the file is written.
    pub(crate) async fn finish(mut self) {
        self.close();
        if let Some(thread) = self.thread.take() {
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    tracing::error!("The state writer thread failed; the last runtime state may not be saved.")
                }
            }
        }
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        // The thread writes what is waiting, then ends by itself.
        self.close();
    }
}

fn write_loop(mailbox: &Mailbox, path: &Path) {
    loop {
        let (bytes, closed) = {
            let mut slot = mailbox.lock();
            while slot.latest.is_none() && !slot.closed {
                slot = match mailbox.ready.wait(slot) {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            (slot.latest.take(), slot.closed)
        };
        if let Some(bytes) = bytes {
            write_atomic(path, &bytes);
        }
        if closed && mailbox.lock().latest.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_writer_keeps_the_latest_state_and_writes_it_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::open(Some(dir.path()));
        let writer = StateWriter::spawn(file.path());
        for session in 1..=50 {
            writer.save(&RuntimeState {
                schema: 1,
                session,
                ..RuntimeState::default()
            });
        }
        writer.finish().await;
        let again = StateFile::open(Some(dir.path()));
        assert_eq!(again.state.session, 50, "the last state is on disk");
        assert!(
            !dir.path().join("runtime-state.json.tmp").exists(),
            "no temporary file is left"
        );
        // In memory only: nothing is written, nothing fails.
        let none = StateWriter::spawn(None);
        none.save(&RuntimeState::default());
        none.finish().await;
    }
}
