//! The field engineer's test bench: `sensebind label` and `sensebind eval`.
//!
//! A [`Bench`] holds one modality's tower and a prompt set embedded exactly as the daemon embeds it
//! ([`labels::embed_prompts`], plus [`labels::exemplar`] prompts). It scores whole files (one embedding per file,
//! as `sensebind embed` gives) or the daemon's own windows of a recording ([`window::file_windows`]: the replay
//! source's samples through the daemon's windowers and [`window::prepare`]), with [`PromptSet::score`] — the
//! function the encoder workers call — so a window's scores are the ones the daemon publishes for it.
//!
//! - [`report`]: `label`'s table and JSON.
//! - [`timeline`]: `label --timeline`, per-window scores over time as a PNG.
//! - [`eval`]: zero-shot accuracy on a labelled folder or CSV.
//! - [`calibrate`]: thresholds for a target false-alarm rate from recordings without events.
//! - [`font`]: text for plotters without system fonts.

pub mod calibrate;
pub mod eval;
pub mod font;
pub mod report;
pub mod timeline;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};

use crate::clock::Timestamp;
use crate::encode::{Encoder, EngineOptions, ModelDir, ModelSource, engine};
use crate::labels::background::LabelsConfig;
use crate::labels::exemplar::{self, embed_file};
use crate::labels::zscore::{ZScores, standardise_scores};
use crate::labels::{
    Embedder, LabelScore, Prompt, PromptCache, PromptConfig, PromptSet, ScoreMode, embed_with_background, ensemble,
};
use crate::modality::Modality;
use crate::preprocess::PreprocessConfig;
use crate::preprocess::text::Tokenizer;
use crate::tensor::Tensor;
use crate::window::{PrepareContext, WindowSpec, file_windows, prepare};

/// How a bench loads its towers and reads files.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The model directory (with `manifest.toml`).
    pub model_dir: PathBuf,
    /// How the modality's tower runs.
    pub engine: EngineOptions,
    /// How the text tower runs (prompts).
    pub text_engine: EngineOptions,
    /// Depth, thermal and IMU parameters.
    pub preprocess: PreprocessConfig,
    /// The sensor name prompts are matched against (`[[prompts]] sources`).
    pub source: String,
    /// Most windows (or clips) per encoder call.
    pub max_batch: usize,
    /// Threshold of the prompts that exemplars make.
    pub exemplar_threshold: f32,
    /// Mode of the prompts that exemplars make.
    pub exemplar_mode: ScoreMode,
    /// The shipped background prompts the daemon adds (`[labels] default_background`).
    pub background: Vec<PromptConfig>,
    /// `[labels]`: the `zscore` warm-up and memory, the templates.
    pub labels: LabelsConfig,
    /// The configuration's folder: the prompts' relative exemplar paths start there.
    pub config_dir: PathBuf,
}

/// A prompt defined by a media file: `label` names the prompt it joins (or makes), else the file's stem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exemplar {
    /// The prompt's label.
    pub label: Option<String>,
    /// The media file, of the bench's modality.
    pub file: PathBuf,
}

impl Exemplar {
    /// Parses `LABEL=FILE` or `FILE`.
    pub fn parse(arg: &str) -> Self {
        match arg.split_once('=') {
            Some((label, file)) if !label.is_empty() && !label.contains('/') => Self {
                label: Some(label.to_owned()),
                file: PathBuf::from(file),
            },
            _ => Self {
                label: None,
                file: PathBuf::from(arg),
            },
        }
    }

    /// The label of the prompt it defines.
    pub fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map_or_else(|| self.file.display().to_string(), |s| s.to_string_lossy().into_owned())
        })
    }
}

/// One window's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowScores {
    /// The window's number in the file, from 0, as the daemon numbers a sensor's windows (`seq`).
    pub seq: u64,
    /// Its first sample, seconds from the file's start.
    pub t0_secs: f64,
    /// Its end, seconds from the file's start.
    pub t1_secs: f64,
    /// Every applicable prompt's score, highest first.
    pub scores: Vec<LabelScore>,
}

/// One modality's tower with an embedded prompt set.
pub struct Bench {
    modality: Modality,
    encoder: Arc<dyn Encoder>,
    prompts: PromptSet,
    /// `zscore` warm-up and memory, in windows.
    zscore: (u64, u64),
    prepare: PrepareContext,
    source: String,
    max_batch: usize,
}

impl Bench {
    /// Loads the tower of `modality` (and the text tower when there are text prompts), embeds `prompts` as the
    /// daemon does and adds the exemplars: an exemplar whose label is a prompt's id joins that prompt (one more
    /// phrasing in its ensemble), any other makes a prompt of its own.
    pub fn new(
        modality: Modality,
        setup: &Setup,
        prompts: &[PromptConfig],
        exemplars: &[Exemplar],
    ) -> anyhow::Result<Self> {
        let dir = ModelDir::open(&setup.model_dir)
            .with_context(|| format!("opening the model directory {}", setup.model_dir.display()))?;
        let encoder = engine::load(ModelSource::Dir(&dir), modality, &setup.engine)
            .with_context(|| format!("loading the {modality} tower from {}", setup.model_dir.display()))?;
        let background = &setup.background;
        let tokenizer = if !prompts.is_empty() || !background.is_empty() || modality == Modality::Text {
            dir.verify_bpe_checksum()?;
            Some(Arc::new(Tokenizer::from_file(&dir.path(&dir.manifest().bpe))?))
        } else {
            None
        };
        // In memory and unbounded: it only holds this run's texts, whose embeddings an exemplar's ensemble needs.
        let mut cache = PromptCache::with_capacity(None, usize::MAX);
        let mut set: Vec<Building> = Vec::new();
        let mut shipped: Vec<Prompt> = Vec::new();
        if let Some(tok) = tokenizer
            .as_deref()
            .filter(|_| !prompts.is_empty() || !background.is_empty())
        {
            let text: Arc<dyn Encoder> = if modality == Modality::Text {
                Arc::clone(&encoder)
            } else {
                engine::load(ModelSource::Dir(&dir), Modality::Text, &setup.text_engine)
                    .with_context(|| format!("loading the text tower from {}", setup.model_dir.display()))?
            };
            let sha = &dir.tower(Modality::Text)?.sha256;
            let exemplar_towers = exemplar_towers(&dir, setup, (modality, &encoder), tokenizer.as_ref(), prompts)?;
            let templates = setup.labels.templates.resolve();
            let modalities = [modality].into();
            let embedder = Embedder {
                templates: &templates,
                modalities: &modalities,
                exemplars: Some(&exemplar_towers),
                ..Embedder::text_only(text.as_ref(), sha, tok)
            };
            let embedded = embed_with_background(prompts, background, &embedder, &mut cache)?;
            for p in embedded.prompts() {
                let texts = p
                    .texts
                    .iter()
                    .filter_map(|t| cache.get(&PromptCache::key(sha, t)))
                    .collect();
                set.push(Building {
                    prompt: p.clone(),
                    texts,
                    exemplars: Vec::new(),
                });
            }
            shipped = embedded.shipped_background().to_vec();
        }
        if !exemplars.is_empty() {
            let scale = dir
                .tower(Modality::Text)
                .context("exemplars are put on the text tower's scale")?
                .scale;
            add_exemplars(
                &mut set,
                exemplars,
                scale,
                (setup.exemplar_threshold, setup.exemplar_mode),
                |file| {
                    embed_file(
                        encoder.as_ref(),
                        file,
                        &setup.preprocess,
                        tokenizer.as_deref(),
                        setup.max_batch,
                    )
                },
            )?;
        }
        let dim = encoder.info().output_dim;
        let prompts = set.into_iter().map(|b| b.finish(dim)).collect();
        Ok(Self {
            modality,
            prompts: PromptSet::new(prompts).with_background(shipped),
            zscore: (setup.labels.zscore_warmup_windows, setup.labels.zscore_memory_windows),
            prepare: PrepareContext {
                preprocess: setup.preprocess.clone(),
                tokenizer,
            },
            encoder,
            source: setup.source.clone(),
            max_batch: setup.max_batch.max(1),
        })
    }

    /// The modality scored.
    pub fn modality(&self) -> Modality {
        self.modality
    }

    /// The labels that apply to this bench's windows (background prompts aside), in their order.
    pub fn prompts(&self) -> Vec<&Prompt> {
        self.prompts
            .labels()
            .filter(|p| p.config.applies_to(self.modality, &self.source))
            .collect()
    }

    /// How many prompts share a window's softmax: the applicable labels and background prompts.
    pub fn softmax_size(&self) -> usize {
        self.prompts
            .prompts()
            .iter()
            .chain(self.prompts.shipped_background())
            .filter(|p| p.config.applies_to(self.modality, &self.source))
            .count()
    }

    /// Scores one embedding against every applicable prompt, labels highest first, as an encoder worker does and
    /// then the controller: `zscore` labels are standardised by `zscores`, the running statistics of the windows
    /// scored before (a fresh [`ZScores`] per recording).
    pub fn score(&self, embedding: &[f32], zscores: &mut ZScores) -> Vec<LabelScore> {
        let scores = self.prompts.score(embedding, self.modality, &self.source, usize::MAX);
        let threshold_of = |label: &str| {
            self.prompts
                .labels()
                .find(|p| p.id == label)
                .map_or(f32::INFINITY, |p| p.config.threshold)
        };
        let (warmup, memory) = self.zscore;
        standardise_scores(zscores, &self.source, &scores, threshold_of, warmup, memory)
    }

    /// A whole file's embedding, as `sensebind embed` gives it.
    pub fn embed_file(&self, file: &Path) -> anyhow::Result<Vec<f32>> {
        Ok(embed_file(
            self.encoder.as_ref(),
            file,
            &self.prepare.preprocess,
            self.prepare.tokenizer.as_deref(),
            self.max_batch,
        )?)
    }

    /// A whole file's scores; `zscores`: the statistics of the files scored before (each file one window).
    pub fn label_file(&self, file: &Path, zscores: &mut ZScores) -> anyhow::Result<Vec<LabelScore>> {
        Ok(self.score(&self.embed_file(file)?, zscores))
    }

    /// The scores of the daemon's windows of a recording (`spec`; `rate_hz` paces image sequences and text).
    /// A window that cannot be preprocessed is skipped without a number, as the daemon skips it.
    pub fn label_windows(&self, file: &Path, spec: WindowSpec, rate_hz: f64) -> anyhow::Result<Vec<WindowScores>> {
        let mut pending: Vec<(Timestamp, Timestamp, Tensor)> = Vec::new();
        let mut out = Vec::new();
        let mut failed: Option<anyhow::Error> = None;
        let mut skipped: (usize, Option<String>) = (0, None);
        let mut zscores = ZScores::default();
        let cut = file_windows(
            self.modality,
            spec,
            file,
            &self.prepare.preprocess,
            rate_hz,
            &mut |raw| {
                match prepare(&raw, &self.prepare) {
                    Ok(input) => pending.push((raw.t0, raw.t1, input)),
                    Err(e) => {
                        skipped.0 += 1;
                        skipped
                            .1
                            .get_or_insert(format!("at {:.3} s: {e}", raw.t0.0 as f64 / 1e9));
                    }
                }
                if pending.len() >= self.max_batch
                    && let Err(e) = self.score_batch(&mut pending, &mut out, &mut zscores)
                {
                    failed = Some(e);
                    return false;
                }
                true
            },
        );
        if let Some(e) = failed {
            return Err(e.context(format!("embedding the windows of {}", file.display())));
        }
        cut.map_err(|e| anyhow!("{e}"))?; // read_samples names the file
        self.score_batch(&mut pending, &mut out, &mut zscores)
            .with_context(|| format!("embedding the windows of {}", file.display()))?;
        if let (n @ 1.., Some(first)) = &skipped {
            tracing::warn!(file = %file.display(), windows = n, first = %first, "Windows that cannot be preprocessed were skipped, as the daemon skips them.");
        }
        if out.is_empty() {
            bail!(
                "{}: no window ({} s every {} s) fits in the recording{}",
                file.display(),
                spec.window_secs,
                spec.hop_secs,
                if skipped.0 > 0 {
                    format!("; {} could not be preprocessed", skipped.0)
                } else {
                    String::new()
                }
            );
        }
        Ok(out)
    }

    /// Embeds the pending windows in one call, as an encoder worker does, and scores each.
    fn score_batch(
        &self,
        pending: &mut Vec<(Timestamp, Timestamp, Tensor)>,
        out: &mut Vec<WindowScores>,
        zscores: &mut ZScores,
    ) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let inputs: Vec<Tensor> = pending.iter().map(|p| p.2.clone()).collect();
        let embeddings = self.encoder.encode(&Tensor::stack(&inputs)?)?;
        let dim = self.encoder.info().output_dim;
        let values = embeddings.as_f32().context("the tower gave no f32 embeddings")?;
        for (row, (t0, t1, _)) in values.chunks_exact(dim).zip(pending.drain(..)) {
            out.push(WindowScores {
                seq: out.len() as u64,
                t0_secs: t0.0 as f64 / 1e9,
                t1_secs: t1.0 as f64 / 1e9,
                scores: self.score(row, zscores),
            });
        }
        Ok(())
    }
}

/// The towers that embed the configuration's exemplars: the bench's own, and any other the exemplars need (loaded
/// here, as the daemon loads them).
fn exemplar_towers(
    dir: &ModelDir,
    setup: &Setup,
    (modality, encoder): (Modality, &Arc<dyn Encoder>),
    tokenizer: Option<&Arc<Tokenizer>>,
    prompts: &[PromptConfig],
) -> anyhow::Result<exemplar::ExemplarTowers> {
    let mut towers = std::collections::BTreeMap::new();
    towers.insert(modality, (Arc::clone(encoder), dir.tower(modality)?.sha256.clone()));
    for spec in prompts.iter().flat_map(|p| &p.exemplars) {
        let m = spec.tower(&setup.config_dir).map_err(|e| anyhow!("exemplar {e}"))?;
        if let std::collections::btree_map::Entry::Vacant(slot) = towers.entry(m) {
            let engine = if m == Modality::Text {
                &setup.text_engine
            } else {
                &setup.engine
            };
            let enc = engine::load(ModelSource::Dir(dir), m, engine)
                .with_context(|| format!("loading the {m} tower for an exemplar"))?;
            slot.insert((enc, dir.tower(m)?.sha256.clone()));
        }
    }
    Ok(exemplar::ExemplarTowers {
        towers,
        preprocess: setup.preprocess.clone(),
        tokenizer: tokenizer.cloned(),
        base_dir: setup.config_dir.clone(),
        text_scale: dir.tower(Modality::Text)?.scale,
        max_batch: setup.max_batch.max(1),
    })
}

/// A prompt being put together: its text embeddings (as `embed_prompts` made them) and its exemplars'.
struct Building {
    prompt: Prompt,
    texts: Vec<Vec<f32>>,
    exemplars: Vec<Vec<f32>>,
}

impl Building {
    /// The prompt; with exemplars, its embedding is the ensemble of its texts' and its exemplars' embeddings
    /// (each exemplar one more phrasing). Without, it is exactly the daemon's.
    fn finish(self, dim: usize) -> Prompt {
        let mut prompt = self.prompt;
        if !self.exemplars.is_empty() {
            let parts: Vec<Vec<f32>> = self.texts.into_iter().chain(self.exemplars).collect();
            prompt.embedding = ensemble(&parts, dim);
            // `--exemplar` files join the prompt's untemplated texts.
            prompt.by_modality.clear();
        }
        prompt
    }
}

/// Embeds each exemplar (`embed`), puts it on the text scale and adds it to the prompt of its label, making an
/// exemplar-only prompt for a new label.
fn add_exemplars(
    set: &mut Vec<Building>,
    exemplars: &[Exemplar],
    text_scale: f32,
    (threshold, mode): (f32, ScoreMode),
    mut embed: impl FnMut(&Path) -> Result<Vec<f32>, exemplar::ExemplarError>,
) -> anyhow::Result<()> {
    for ex in exemplars {
        let raw = embed(&ex.file)?;
        let e = exemplar::as_prompt(&raw, text_scale)
            .ok_or_else(|| anyhow!("{}: its embedding is zero or not finite", ex.file.display()))?;
        let label = ex.label();
        match set.iter_mut().find(|b| b.prompt.id == label) {
            Some(b) => b.exemplars.push(e),
            None => {
                let config = PromptConfig {
                    text: None,
                    threshold,
                    mode,
                    ..PromptConfig::new(&label, "")
                };
                set.push(Building {
                    prompt: Prompt {
                        id: label,
                        texts: Vec::new(),
                        config,
                        embedding: Vec::new(),
                        by_modality: std::collections::BTreeMap::new(),
                    },
                    texts: Vec::new(),
                    exemplars: vec![e],
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exemplar_arguments_name_their_prompt_or_take_the_file_stem() {
        assert_eq!(
            Exemplar::parse("bell=clips/door.wav"),
            Exemplar {
                label: Some("bell".into()),
                file: "clips/door.wav".into()
            }
        );
        let plain = Exemplar::parse("clips/door.wav");
        assert_eq!(plain.label, None);
        assert_eq!(plain.label(), "door");
        assert_eq!(Exemplar::parse("a/b=c.wav").label, None, "a path with = is a file");
    }

    #[test]
    fn an_exemplar_joins_its_prompt_or_makes_one() {
        let text = Prompt {
            id: "bell".into(),
            texts: vec!["a bell".into()],
            config: PromptConfig::new("bell", "a bell"),
            embedding: vec![10.0, 0.0],
            by_modality: std::collections::BTreeMap::new(),
        };
        let mut set = vec![Building {
            prompt: text,
            texts: vec![vec![10.0, 0.0]],
            exemplars: Vec::new(),
        }];
        let exemplars = [Exemplar::parse("bell=x.wav"), Exemplar::parse("dog.wav")];
        add_exemplars(&mut set, &exemplars, 10.0, (0.5, ScoreMode::Softmax), |f| {
            Ok(if f == Path::new("x.wav") {
                vec![0.0, 0.5]
            } else {
                vec![3.0, 4.0]
            })
        })
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set[0].exemplars, vec![vec![0.0, 10.0]], "on the text scale");
        assert_eq!(set[1].prompt.id, "dog");
        let zero = add_exemplars(
            &mut set,
            &[Exemplar::parse("z.wav")],
            10.0,
            (0.5, ScoreMode::Softmax),
            |_| Ok(vec![0.0, 0.0]),
        );
        assert!(zero.unwrap_err().to_string().contains("z.wav"));
        let built: Vec<Prompt> = set.into_iter().map(|b| b.finish(2)).collect();
        let h = 10.0 / 2f32.sqrt();
        assert!((built[0].embedding[0] - h).abs() < 1e-4 && (built[0].embedding[1] - h).abs() < 1e-4);
        assert!((built[1].embedding[0] - 6.0).abs() < 1e-4 && (built[1].embedding[1] - 8.0).abs() < 1e-4);
    }
}
