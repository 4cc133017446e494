//! The prompt-embedding cache: text-tower embeddings keyed by the tower's sha256 and the cleaned text, kept in
//! `{state_dir}/prompt-cache.json` so a restart or an unchanged prompt costs no inference.
//!
//! Texts arrive from the network (`prompts/set`, up to 256 new texts per update), so the cache is bounded: at
//! most `capacity` entries (default 4096), the least recently used evicted first and counted. The file holds the
//! same entries, oldest use first, so it is bounded too (a 1024-d embedding is 4 KiB of floats in memory, more as
//! JSON). The file is rewritten only when an entry was added; the use order of a run without new texts is kept in
//! memory only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::preprocess::text as text_pre;

/// Entries kept when the configuration does not say (`[runtime] prompt_cache_entries`).
pub const DEFAULT_CAPACITY: usize = 4096;

/// The file: entries in order of last use, oldest first (schema 2). Schema 1 files (a map, no order) are read
/// too.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    schema: u32,
    entries: Vec<(String, Vec<f32>)>,
}

#[derive(Debug, Deserialize)]
struct CacheFileV1 {
    entries: BTreeMap<String, Vec<f32>>,
}

#[derive(Debug)]
struct Slot {
    embedding: Vec<f32>,
    last_use: u64,
}

/// Prompt-embedding cache in a state directory, bounded by entry count (least recently used evicted).
#[derive(Debug)]
pub struct PromptCache {
    path: Option<PathBuf>,
    capacity: usize,
    slots: HashMap<String, Slot>,
    /// last use → key: the eviction order.
    order: BTreeMap<u64, String>,
    clock: u64,
    dirty: bool,
    evictions: Arc<AtomicU64>,
}

impl PromptCache {
    /// Opens (or starts) the cache in `state_dir` with the default capacity; `None` keeps it in memory only.
    pub fn open(state_dir: Option<&Path>) -> Self {
        Self::with_capacity(state_dir, DEFAULT_CAPACITY)
    }

    /// Opens (or starts) the cache holding at most `capacity` entries (at least 1). A corrupt cache file is
    /// ignored with a warning and rewritten; a file with more entries keeps the most recently used.
    pub fn with_capacity(state_dir: Option<&Path>, capacity: usize) -> Self {
        let path = state_dir.map(|d| d.join("prompt-cache.json"));
        let mut cache = Self {
            path,
            capacity: capacity.max(1),
            slots: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            dirty: false,
            evictions: Arc::new(AtomicU64::new(0)),
        };
        let entries = cache.path.as_deref().and_then(read_file).unwrap_or_default();
        let loaded = entries.len();
        for (key, embedding) in entries {
            cache.insert(key, embedding);
        }
        // Entries dropped while loading an oversized file are not evictions of this run.
        cache.evictions.store(0, Ordering::Relaxed);
        cache.dirty = loaded > cache.slots.len();
        cache
    }

    /// Hands the cache over (to a blocking task) and leaves an empty one in its place with the same file,
    /// capacity and eviction counter, so that if the task never gives the cache back (it panicked) the daemon goes
    /// on with a bounded, persisted cache that only lacks the entries (they are embedded again when used). No I/O:
    /// the caller may be on the async path.
    pub fn take(&mut self) -> PromptCache {
        let left = Self {
            path: self.path.clone(),
            capacity: self.capacity,
            slots: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            dirty: false,
            evictions: Arc::clone(&self.evictions),
        };
        std::mem::replace(self, left)
    }

    /// The key of `text` embedded by the text tower whose ONNX file has `model_sha`.
    pub fn key(model_sha: &str, text: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(model_sha.as_bytes());
        h.update([0]);
        h.update(text_pre::clean(text).as_bytes());
        crate::util::hex(&h.finalize())
    }

    /// The embedding under `key`, marking it used.
    pub fn get(&mut self, key: &str) -> Option<Vec<f32>> {
        self.clock += 1;
        let slot = self.slots.get_mut(key)?;
        self.order.remove(&slot.last_use);
        slot.last_use = self.clock;
        self.order.insert(self.clock, key.to_owned());
        Some(slot.embedding.clone())
    }

    /// Stores an embedding, evicting the least recently used entries beyond the capacity.
    pub fn insert(&mut self, key: String, embedding: Vec<f32>) {
        self.clock += 1;
        if let Some(old) = self.slots.insert(
            key.clone(),
            Slot {
                embedding,
                last_use: self.clock,
            },
        ) {
            self.order.remove(&old.last_use);
        }
        self.order.insert(self.clock, key);
        while self.slots.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.slots.remove(&oldest);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.dirty = true;
    }

    /// Cached entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Entries evicted since the cache was opened (shared with `stats`).
    pub fn evictions(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.evictions)
    }

    /// Writes the cache if it changed (atomically: a temporary file renamed over the old one).
    pub fn save(&mut self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = CacheFile {
            schema: 2,
            entries: self
                .order
                .values()
                .filter_map(|k| self.slots.get(k).map(|s| (k.clone(), s.embedding.clone())))
                .collect(),
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&file).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)?;
        self.dirty = false;
        Ok(())
    }
}

/// The entries of a cache file, oldest use first; `None` (with a warning) when it cannot be used.
fn read_file(path: &Path) -> Option<Vec<(String, Vec<f32>)>> {
    let bytes = std::fs::read(path).ok()?;
    let schema = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("schema").and_then(serde_json::Value::as_u64));
    let entries = match schema {
        Some(2) => serde_json::from_slice::<CacheFile>(&bytes).ok().map(|f| f.entries),
        Some(1) => serde_json::from_slice::<CacheFileV1>(&bytes)
            .ok()
            .map(|f| f.entries.into_iter().collect()),
        _ => None,
    };
    if entries.is_none() {
        tracing::warn!(path = %path.display(), "Ignoring an unreadable prompt cache; it will be rebuilt.");
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(i: usize) -> Vec<f32> {
        vec![i as f32; 4]
    }

    #[test]
    fn issue_12_cache_evicts_the_least_recently_used_beyond_its_capacity() {
        let mut c = PromptCache::with_capacity(None, 3);
        for i in 0..3 {
            c.insert(format!("k{i}"), emb(i));
        }
        assert!(c.get("k0").is_some(), "k0 is now the most recently used");
        c.insert("k3".into(), emb(3));
        assert_eq!(c.len(), 3);
        assert!(c.get("k1").is_none(), "k1 was the least recently used");
        assert!(c.get("k0").is_some() && c.get("k2").is_some() && c.get("k3").is_some());
        assert_eq!(c.evictions().load(Ordering::Relaxed), 1);
    }

    #[test]
    fn issue_12_cache_fed_many_texts_stays_bounded_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = PromptCache::with_capacity(Some(dir.path()), 100);
        // 40 updates of 256 new texts each, as `prompts/set` allows.
        for i in 0..40 * 256 {
            c.insert(PromptCache::key("sha", &format!("text {i}")), vec![0.5; 1024]);
        }
        c.save().unwrap();
        assert_eq!(c.len(), 100);
        assert_eq!(c.evictions().load(Ordering::Relaxed), 40 * 256 - 100);
        let bytes = std::fs::metadata(dir.path().join("prompt-cache.json")).unwrap().len();
        assert!(bytes < 100 * 6 * 1024, "the file holds 100 entries only: {bytes} bytes");
        let mut again = PromptCache::with_capacity(Some(dir.path()), 100);
        assert_eq!(again.len(), 100);
        let newest = PromptCache::key("sha", &format!("text {}", 40 * 256 - 1));
        assert!(
            again.get(&newest).is_some(),
            "the most recent entries survive a restart"
        );
        let oldest = PromptCache::key("sha", "text 0");
        assert!(again.get(&oldest).is_none());
    }

    #[test]
    fn a_taken_cache_leaves_an_empty_bounded_one_on_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = PromptCache::with_capacity(Some(dir.path()), 2);
        c.insert("saved".into(), emb(1));
        c.save().unwrap();
        c.insert("unsaved".into(), emb(2));
        c.insert("third".into(), emb(3));
        let taken = c.take();
        assert_eq!(taken.len(), 2);
        assert!(c.is_empty(), "no entries, and the file was not read");
        c.insert("x".into(), emb(4));
        c.insert("y".into(), emb(5));
        c.insert("z".into(), emb(6));
        assert_eq!(c.len(), 2, "same capacity");
        assert_eq!(taken.evictions().load(Ordering::Relaxed), 2, "one shared counter");
        c.save().unwrap();
        assert_eq!(PromptCache::with_capacity(Some(dir.path()), 9).len(), 2, "same file");
    }

    #[test]
    fn cache_reads_schema_1_files_and_shrinks_oversized_ones_to_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let entries: BTreeMap<String, Vec<f32>> = (0..10).map(|i| (format!("k{i}"), emb(i))).collect();
        let v1 = serde_json::json!({ "schema": 1, "entries": entries });
        std::fs::write(dir.path().join("prompt-cache.json"), v1.to_string()).unwrap();
        let mut c = PromptCache::with_capacity(Some(dir.path()), 4);
        assert_eq!(c.len(), 4);
        assert_eq!(c.evictions().load(Ordering::Relaxed), 0);
        c.save().unwrap();
        assert_eq!(PromptCache::with_capacity(Some(dir.path()), 100).len(), 4);
        std::fs::write(dir.path().join("prompt-cache.json"), b"{not json").unwrap();
        assert!(PromptCache::open(Some(dir.path())).is_empty());
    }
}
