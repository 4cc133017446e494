//! `sensebind label`'s output: a ranked table per file (or a table of windows), or JSON.
//!
//! JSON: an array with one object per file, `{"file", "scores": [{"label", "score", "cos", "mode", "active"}…]}` highest score
//! first, or with windows `{"file", "windows": [{"seq", "t0", "t1", "scores": […]}…]}` with `t0`/`t1` in seconds
//! from the file's start and `seq` the daemon's window number.

use serde::Serialize;

use super::WindowScores;
use crate::labels::{LabelScore, ScoreMode};

/// One label's score as `label --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreJson {
    /// The prompt's label (its text, or its id from a configuration).
    pub label: String,
    /// The score (softmax probability in the default mode).
    pub score: f32,
    /// Cosine similarity of the embedding and the prompt.
    pub cos: f32,
    /// The scale of `score`: `softmax`, `cosine` or `zscore`.
    pub mode: ScoreMode,
    /// Whether `score` reached the prompt's threshold (one window; the daemon's events add hysteresis).
    pub active: bool,
}

impl From<&LabelScore> for ScoreJson {
    fn from(s: &LabelScore) -> Self {
        Self {
            label: s.label.clone(),
            score: s.score,
            cos: s.cosine,
            mode: s.mode,
            active: s.active,
        }
    }
}

/// A whole file's scores.
#[derive(Debug, Clone, Serialize)]
pub struct FileJson {
    /// The file as given.
    pub file: String,
    /// Highest score first.
    pub scores: Vec<ScoreJson>,
}

/// One window's scores.
#[derive(Debug, Clone, Serialize)]
pub struct WindowJson {
    /// The daemon's window number for this recording.
    pub seq: u64,
    /// First sample, seconds from the file's start.
    pub t0: f64,
    /// Window end, seconds from the file's start.
    pub t1: f64,
    /// Highest score first.
    pub scores: Vec<ScoreJson>,
}

/// A file's windows.
#[derive(Debug, Clone, Serialize)]
pub struct FileWindowsJson {
    /// The file as given.
    pub file: String,
    /// In order.
    pub windows: Vec<WindowJson>,
}

/// The JSON object of a whole file.
pub fn file_json(file: &str, scores: &[LabelScore]) -> FileJson {
    FileJson {
        file: file.to_owned(),
        scores: scores.iter().map(ScoreJson::from).collect(),
    }
}

/// The JSON object of a file's windows.
pub fn windows_json(file: &str, windows: &[WindowScores]) -> FileWindowsJson {
    FileWindowsJson {
        file: file.to_owned(),
        windows: windows
            .iter()
            .map(|w| WindowJson {
                seq: w.seq,
                t0: w.t0_secs,
                t1: w.t1_secs,
                scores: w.scores.iter().map(ScoreJson::from).collect(),
            })
            .collect(),
    }
}

/// A ranked table of a file's scores.
pub fn file_table(file: &str, scores: &[LabelScore]) -> String {
    let width = scores
        .iter()
        .map(|s| s.label.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 60);
    let mut out = format!("{file}\n");
    out += &format!("  {:>3}  {:<width$}  {:>7}  {:>7}\n", "#", "label", "score", "cos");
    for (i, s) in scores.iter().enumerate() {
        out += &format!(
            "  {:>3}  {:<width$}  {:>7.4}  {:>7.4}{}\n",
            i + 1,
            clip(&s.label, width),
            s.score,
            s.cosine,
            if s.active { "  active" } else { "" }
        );
    }
    out
}

/// A table of a file's windows: one row per window, one score column per label (`labels`, in prompt order); the
/// best label of each window is marked `*`.
pub fn windows_table(file: &str, windows: &[WindowScores], labels: &[String]) -> String {
    const COL: usize = 14;
    let mut out = format!("{file}: {} windows\n", windows.len());
    let mut header = format!("  {:>5}  {:>8}  {:>8}", "seq", "t0 s", "t1 s");
    for l in labels {
        header += &format!("  {:>COL$}", clip(l, COL));
    }
    out += &format!("{header}\n");
    for w in windows {
        let best = w.scores.first().map(|s| s.label.as_str());
        let mut row = format!("  {:>5}  {:>8.3}  {:>8.3}", w.seq, w.t0_secs, w.t1_secs);
        for l in labels {
            let cell = match w.scores.iter().find(|s| &s.label == l) {
                Some(s) => format!("{}{:.4}", if best == Some(l.as_str()) { "*" } else { "" }, s.score),
                None => "-".to_owned(),
            };
            row += &format!("  {cell:>COL$}");
        }
        out += &format!("{row}\n");
    }
    out
}

/// At most `n` characters, the end replaced by `…` when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut c: String = s.chars().take(n.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(label: &str, score: f32) -> LabelScore {
        LabelScore {
            label: label.into(),
            score,
            cosine: score / 10.0,
            active: score >= 0.5,
            mode: ScoreMode::Softmax,
        }
    }

    #[test]
    fn tables_rank_files_and_mark_each_windows_best_label() {
        let t = file_table("a.wav", &[ls("a dog barking", 0.75), ls("glass", 0.25)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a.wav");
        assert!(
            lines[2].contains("1  a dog barking") && lines[2].ends_with("active"),
            "{t}"
        );
        assert!(lines[3].contains("2  glass") && lines[3].contains("0.2500"), "{t}");
        let w = WindowScores {
            seq: 0,
            t0_secs: 0.0,
            t1_secs: 1.0,
            scores: vec![ls("b", 0.6), ls("a", 0.4)],
        };
        let t = windows_table("a.wav", &[w], &["a".into(), "b".into()]);
        assert!(
            t.lines().nth(2).unwrap().trim_end().ends_with("0.4000         *0.6000"),
            "{t}"
        );
        let json = serde_json::to_value(windows_json("a.wav", &[])).unwrap();
        assert_eq!(json, serde_json::json!({"file": "a.wav", "windows": []}));
    }
}
