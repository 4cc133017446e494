//! `sensebind eval`: zero-shot accuracy on a labelled dataset.
//!
//! The dataset is a folder of class folders (`DIR/<class>/<file>`) or a CSV of file and label, as ESC-50 ships
//! (`meta/esc50.csv`: `filename,fold,target,category,…`). Each class becomes one prompt whose phrasings are the
//! templates with the class name filled in (`_` read as a space), or its exemplars. Every file is embedded whole
//! (as `label` does without `--windows`) and scored against every class; the report has top-1 and top-5
//! accuracy, per-class recall (top-1) and the confusion matrix of top-1 predictions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

use super::Bench;
use crate::labels::PromptConfig;

/// One labelled file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The file.
    pub file: PathBuf,
    /// Its class.
    pub label: String,
}

/// The files of a class-folder dataset, `DIR/<class>/<file>`, sorted by class then file; hidden entries are
/// skipped.
pub fn read_folder(dir: &Path) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    for class_dir in sorted_entries(dir)? {
        if !class_dir.is_dir() {
            continue;
        }
        let label = name_of(&class_dir);
        for file in sorted_entries(&class_dir)? {
            if file.is_file() {
                items.push(Item {
                    file,
                    label: label.clone(),
                });
            }
        }
    }
    if items.is_empty() {
        bail!(
            "{}: no files in class folders (expected DIR/<class>/<file>)",
            dir.display()
        );
    }
    Ok(items)
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !name_of(p).starts_with('.'))
        .collect();
    entries.sort();
    Ok(entries)
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The files of a CSV dataset: a header line, then one file per line. The file column is `filename` or `file`
/// (else the first), the label column `category`, `label` or `class` (else the second). Files are relative to
/// `media_dir`. Fields are separated by commas, optionally in double quotes (no commas inside).
pub fn read_csv(csv: &Path, media_dir: &Path) -> anyhow::Result<Vec<Item>> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let split =
        |line: &str| -> Vec<String> { line.split(',').map(|f| f.trim().trim_matches('"').to_owned()).collect() };
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("{}: empty file", csv.display());
    };
    let header = split(header);
    let find = |names: &[&str], default: usize| {
        header
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
            .unwrap_or(default)
    };
    let (file_col, label_col) = (find(&["filename", "file"], 0), find(&["category", "label", "class"], 1));
    let mut items = Vec::new();
    for (i, line) in lines {
        let fields = split(line);
        let (Some(file), Some(label)) = (fields.get(file_col), fields.get(label_col)) else {
            bail!(
                "{} line {}: expected at least {} fields, got {}",
                csv.display(),
                i + 1,
                file_col.max(label_col) + 1,
                fields.len()
            );
        };
        if file.is_empty() || label.is_empty() {
            bail!("{} line {}: empty file name or label", csv.display(), i + 1);
        }
        items.push(Item {
            file: media_dir.join(file),
            label: label.clone(),
        });
    }
    if items.is_empty() {
        bail!("{}: no rows after the header", csv.display());
    }
    Ok(items)
}

/// The classes of a dataset, sorted.
pub fn classes(items: &[Item]) -> Vec<String> {
    let mut c: Vec<String> = items.iter().map(|i| i.label.clone()).collect();
    c.sort();
    c.dedup();
    c
}

/// One prompt per class: the templates with `{}` replaced by the class name (`_` as a space); a template without
/// `{}` gets the name appended. Classes in `without_texts` are left out: their exemplars make their prompts.
pub fn class_prompts(classes: &[String], templates: &[String], without_texts: &[String]) -> Vec<PromptConfig> {
    classes
        .iter()
        .filter(|c| !without_texts.contains(c))
        .map(|class| {
            let name = class.replace('_', " ");
            let texts = templates
                .iter()
                .map(|t| {
                    if t.contains("{}") {
                        t.replace("{}", &name)
                    } else {
                        format!("{t} {name}")
                    }
                })
                .collect();
            PromptConfig {
                text: None,
                texts,
                ..PromptConfig::new(class, "")
            }
        })
        .collect()
}

/// One file's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The file.
    pub file: String,
    /// Its true class.
    pub label: String,
    /// The best classes, best first (at most 5).
    pub predicted: Vec<String>,
}

/// The confusion matrix of top-1 predictions: `matrix[true][predicted]`, classes in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    /// Row and column order.
    pub classes: Vec<String>,
    /// Counts.
    pub matrix: Vec<Vec<u64>>,
}

/// `eval`'s report (its JSON as printed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Files evaluated.
    pub n: usize,
    /// Fraction whose best class is right.
    pub top1: f64,
    /// Fraction whose right class is among the best five.
    pub top5: f64,
    /// Per true class: the fraction of its files predicted right (top-1 recall).
    pub per_class: BTreeMap<String, f64>,
    /// Per file, in dataset order.
    pub predictions: Vec<Prediction>,
    /// Top-1 confusion matrix.
    pub confusion: Confusion,
}

/// Scores every file against the bench's class prompts.
pub fn evaluate(bench: &Bench, items: &[Item]) -> anyhow::Result<Report> {
    let mut predictions = Vec::with_capacity(items.len());
    // Class prompts are softmax prompts: nothing to standardise.
    let mut zscores = crate::labels::zscore::ZScores::default();
    for item in items {
        let scores = bench.label_file(&item.file, &mut zscores)?;
        predictions.push(Prediction {
            file: item.file.display().to_string(),
            label: item.label.clone(),
            predicted: scores.into_iter().take(5).map(|s| s.label).collect(),
        });
    }
    let mut classes = classes(items);
    for p in bench.prompts() {
        if !classes.contains(&p.id) {
            classes.push(p.id.clone());
        }
    }
    Ok(report(predictions, classes))
}

/// The metrics of a list of predictions over `classes` (true and predicted ones).
pub fn report(predictions: Vec<Prediction>, classes: Vec<String>) -> Report {
    let index = |c: &str| classes.iter().position(|x| x == c);
    let mut matrix = vec![vec![0u64; classes.len()]; classes.len()];
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for p in &predictions {
        let hit1 = p.predicted.first() == Some(&p.label);
        top1 += usize::from(hit1);
        top5 += usize::from(p.predicted.iter().take(5).any(|c| c == &p.label));
        let e = per.entry(p.label.clone()).or_default();
        e.0 += usize::from(hit1);
        e.1 += 1;
        if let (Some(t), Some(Some(q))) = (index(&p.label), p.predicted.first().map(|c| index(c))) {
            matrix[t][q] += 1;
        }
    }
    let n = predictions.len();
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Report {
        n,
        top1: frac(top1, n),
        top5: frac(top5, n),
        per_class: per.into_iter().map(|(c, (hit, all))| (c, frac(hit, all))).collect(),
        predictions,
        confusion: Confusion { classes, matrix },
    }
}

/// The report as text: accuracy, per-class recall, and the confusion matrix (for at most 20 classes; else the
/// most frequent confusions).
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "{} files, {} classes\ntop-1 {:.1} %   top-5 {:.1} %\n\nper-class recall (top-1)\n",
        r.n,
        r.per_class.len(),
        r.top1 * 100.0,
        r.top5 * 100.0
    );
    let width = r
        .per_class
        .keys()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 40);
    for (class, recall) in &r.per_class {
        out += &format!("  {class:<width$}  {:>5.1} %\n", recall * 100.0);
    }
    let c = &r.confusion;
    if c.classes.len() <= 20 {
        out += "\nconfusion (rows: true class, columns: predicted, in the order above)\n";
        let w = width;
        for (i, row) in c.matrix.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>4}")).collect();
            out += &format!("  {:<w$} {}\n", c.classes[i], cells.join(""));
        }
    } else {
        let mut off: Vec<(u64, usize, usize)> = Vec::new();
        for (i, row) in c.matrix.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if i != j && v > 0 {
                    off.push((v, i, j));
                }
            }
        }
        off.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        out += "\nmost frequent confusions (true → predicted)\n";
        for (v, i, j) in off.into_iter().take(20) {
            out += &format!("  {:>4}  {} → {}\n", v, c.classes[i], c.classes[j]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(label: &str, predicted: &[&str]) -> Prediction {
        Prediction {
            file: format!("{label}.wav"),
            label: label.into(),
            predicted: predicted.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn metrics_count_top1_top5_recall_and_confusions() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        let r = report(
            vec![
                p("a", &["a", "b"]),
                p("a", &["b", "a"]),
                p("b", &["c", "a"]),
                p("c", &["c"]),
            ],
            classes,
        );
        assert_eq!(r.n, 4);
        assert!((r.top1 - 0.5).abs() < 1e-12);
        assert!((r.top5 - 0.75).abs() < 1e-12);
        assert_eq!(r.per_class["a"], 0.5);
        assert_eq!(r.per_class["b"], 0.0);
        assert_eq!(r.confusion.matrix, vec![vec![1, 1, 0], vec![0, 0, 1], vec![0, 0, 1]]);
        let text = render(&r);
        assert!(text.contains("top-1 50.0 %   top-5 75.0 %"), "{text}");
    }

    #[test]
    fn csv_datasets_read_esc50_columns_and_folders_read_class_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("esc50.csv");
        std::fs::write(
            &csv,
            "filename,fold,target,category,esc10,src_file,take\n1-100032-A-0.wav,1,0,dog,True,100032,A\n\n1-1-A-1.wav,1,1,\"rooster\",False,1,A\n",
        )
        .unwrap();
        let items = read_csv(&csv, Path::new("/data/audio")).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].file, Path::new("/data/audio/1-1-A-1.wav"));
        assert_eq!(items[1].label, "rooster");
        std::fs::write(&csv, "filename,category\nx.wav\n").unwrap();
        let e = read_csv(&csv, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("esc50.csv line 2"), "{e}");

        let root = tmp.path().join("set");
        for (class, file) in [("cat", "1.png"), ("cat", "2.png"), ("dog", "1.png"), (".git", "x")] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            std::fs::write(root.join(class).join(file), b"").unwrap();
        }
        let items = read_folder(&root).unwrap();
        assert_eq!(
            items.iter().map(|i| i.label.as_str()).collect::<Vec<_>>(),
            ["cat", "cat", "dog"]
        );
        assert_eq!(classes(&items), ["cat", "dog"]);
        let prompts = class_prompts(
            &classes(&items),
            &["a photo of a {}.".into(), "a".into()],
            &["dog".into()],
        );
        assert_eq!(prompts.len(), 1);
        assert_eq!(prompts[0].all_texts(), ["a photo of a cat.", "a cat"]);
    }
}
