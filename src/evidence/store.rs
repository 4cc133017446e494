//! The evidence root on disk: one directory per event, named by its id, holding the media and `event.json`.
//!
//! Files are written to a temporary name and renamed, so a reader (or a crash) never sees half a file.
//! Retention: events older than `max_age_days` go first, then the oldest (by last write) until the root holds at
//! most `max_bytes`. It runs when the writer starts and after each write.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One event's directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    /// Event id (the directory's name).
    pub id: String,
    /// The directory.
    pub path: PathBuf,
    /// Bytes of its files.
    pub bytes: u64,
    /// Last write.
    #[serde(skip)]
    pub modified: SystemTime,
    /// Last write, RFC 3339.
    pub modified_at: String,
    /// Files, relative to the directory.
    pub files: Vec<String>,
}

/// What a prune deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Events deleted.
    pub events: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Bytes left.
    pub bytes_left: u64,
    /// Events left.
    pub events_left: u64,
}

/// The evidence root and its limits.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    max_bytes: u64,
    max_age: Option<Duration>,
}

/// A file-name-safe form of an event id (ids are built from slugs; anything else becomes `_`).
pub fn dir_name(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

impl Store {
    /// The store at `root` with its limits (`max_age_days` 0: none).
    pub fn new(root: PathBuf, max_bytes: u64, max_age_days: f64) -> Self {
        let max_age =
            (max_age_days > 0.0 && max_age_days.is_finite()).then(|| Duration::from_secs_f64(max_age_days * 86_400.0));
        Self {
            root,
            max_bytes,
            max_age,
        }
    }

    /// The evidence root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `{id}/{name}`, relative to the root.
    pub fn relative(id: &str, name: &str) -> String {
        format!("{}/{name}", dir_name(id))
    }

    /// Writes `{root}/{id}/{name}` (through a temporary file); returns its size.
    pub fn write(&self, id: &str, name: &str, bytes: &[u8]) -> std::io::Result<u64> {
        let path = self.root.join(dir_name(id)).join(name);
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ));
        std::fs::write(&tmp, bytes)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            if let Err(cleanup) = std::fs::remove_file(&tmp) {
                tracing::debug!(path = %tmp.display(), error = %cleanup, "Cannot remove a temporary evidence file.");
            }
            return Err(e);
        }
        Ok(bytes.len() as u64)
    }

    /// Every stored event, oldest first.
    pub fn list(&self) -> std::io::Result<Vec<StoredEvent>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let path = entry.path();
            let mut files = Vec::new();
            let (mut bytes, mut modified) = (0, entry.metadata()?.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            walk(&path, &path, &mut files, &mut bytes, &mut modified)?;
            files.sort();
            out.push(StoredEvent {
                id: entry.file_name().to_string_lossy().into_owned(),
                path,
                bytes,
                modified,
                modified_at: crate::clock::rfc3339(modified),
                files,
            });
        }
        out.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Deletes events past `max_age_days`, then the oldest until at most `max_bytes` remain.
    pub fn prune(&self) -> std::io::Result<Pruned> {
        self.prune_to(self.max_bytes, self.max_age)
    }

    /// [`Store::prune`] with explicit limits (`sensebind evidence prune`).
    pub fn prune_to(&self, max_bytes: u64, max_age: Option<Duration>) -> std::io::Result<Pruned> {
        let events = self.list()?;
        let mut total: u64 = events.iter().map(|e| e.bytes).sum();
        let now = SystemTime::now();
        let mut p = Pruned::default();
        let mut left = events.len() as u64;
        for e in &events {
            let too_old = max_age.is_some_and(|age| now.duration_since(e.modified).unwrap_or_default() > age);
            if !too_old && total <= max_bytes {
                break;
            }
            std::fs::remove_dir_all(&e.path)?;
            total -= e.bytes;
            left -= 1;
            p.events += 1;
            p.bytes += e.bytes;
        }
        // Ages are not sorted by size: a later event may be old too only if its write time is; the list is by time.
        p.bytes_left = total;
        p.events_left = left;
        Ok(p)
    }
}

fn walk(
    base: &Path,
    dir: &Path,
    files: &mut Vec<String>,
    bytes: &mut u64,
    modified: &mut SystemTime,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(base, &entry.path(), files, bytes, modified)?;
            continue;
        }
        *bytes += meta.len();
        if let Ok(m) = meta.modified() {
            *modified = (*modified).max(m);
        }
        if let Ok(rel) = entry.path().strip_prefix(base) {
            files.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_deletes_oldest_until_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf(), 2500, 0.0);
        for i in 0..5 {
            store.write(&format!("1-cam-x-{i}"), "a.bin", &[0u8; 1000]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let p = store.prune().unwrap();
        assert_eq!(p.events, 3);
        let left: Vec<String> = store.list().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(left, ["1-cam-x-3", "1-cam-x-4"]);
        assert_eq!(p.bytes_left, 2000);
    }

    #[test]
    fn prune_deletes_events_past_their_age_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf(), 1 << 30, 30.0);
        store.write("1-cam-x-1", "a.bin", &[0u8; 10]).unwrap();
        store.write("1-cam-x-2", "a.bin", &[0u8; 10]).unwrap();
        let old = SystemTime::now() - Duration::from_secs(40 * 86_400);
        let event = dir.path().join("1-cam-x-1");
        for path in [event.join("a.bin"), event.clone()] {
            std::fs::File::open(&path).unwrap().set_modified(old).unwrap();
        }
        let p = store.prune().unwrap();
        assert_eq!((p.events, p.events_left), (1, 1));
        assert!(!event.exists());
    }

    #[test]
    fn ids_cannot_leave_the_root() {
        assert_eq!(dir_name("../etc"), "_.._etc");
        assert_eq!(dir_name("1-cam/x-2"), "1-cam_x-2");
    }
}
