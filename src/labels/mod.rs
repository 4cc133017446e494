//! Zero-shot labels: prompt embeddings, cached on disk, and ImageBind's scoring.
//!
//! Each prompt's texts are embedded once with the text tower (the average of its phrasings' embeddings). The
//! embeddings are cached in `{state_dir}/prompt-cache.json`, keyed by the text tower's sha256 and the cleaned text
//! (the tokenizer's normalisation), so a restart or an unchanged prompt costs no inference.
//!
//! Scoring follows ImageBind's zero-shot recipe (README: `softmax(emb[A] @ emb[text].T)`): the logit of a prompt
//! is the dot product of the window's embedding and the prompt's, both carrying their modality's scale, and the
//! score is the softmax over the prompts that apply to the window's modality and source. The cosine similarity is
//! reported beside it. A label is active when its score reaches its threshold.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub mod background;
pub mod cache;
pub mod exemplar;
pub mod prompt;
pub mod templates;
pub mod zscore;

pub use cache::PromptCache;
pub use prompt::{PromptConfig, PromptRole, ScoreMode, check_prompt};

use crate::encode::{EncodeError, Encoder};
use crate::modality::Modality;
use crate::preprocess::text::{self as text_pre, Tokenizer};
use crate::tensor::Tensor;

/// A prompt with its embedding.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Label id.
    pub id: String,
    /// The phrasings.
    pub texts: Vec<String>,
    /// Where it applies.
    pub config: PromptConfig,
    /// The prompt's embedding: the ensemble of its phrasings and exemplars.
    pub embedding: Vec<f32>,
    /// With `[labels] templates`: the embedding for windows of a modality, its phrasings put into that
    /// modality's templates. Modalities not here use `embedding`.
    pub by_modality: BTreeMap<Modality, Vec<f32>>,
}

impl Prompt {
    /// The embedding that windows of `modality` are scored against.
    pub fn embedding_for(&self, modality: Modality) -> &[f32] {
        self.by_modality.get(&modality).unwrap_or(&self.embedding)
    }
}

/// One label's score for a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    /// Label id.
    pub label: String,
    /// Softmax probability among the applicable prompts.
    pub score: f32,
    /// Cosine similarity between the window and the prompt.
    pub cosine: f32,
    /// Whether `score` reached the prompt's threshold (for `zscore`, decided by the controller).
    pub active: bool,
    /// How `score` was computed.
    pub mode: ScoreMode,
}

/// The active prompt set.
#[derive(Debug, Clone, Default)]
pub struct PromptSet {
    prompts: Vec<Prompt>,
    /// The shipped background prompts (`labels.default_background`), not part of the configuration.
    background: Vec<Prompt>,
}

impl PromptSet {
    /// A set of already embedded prompts.
    pub fn new(prompts: Vec<Prompt>) -> Self {
        Self {
            prompts,
            background: Vec::new(),
        }
    }

    /// The same set with the shipped background prompts `background`.
    #[must_use]
    pub fn with_background(mut self, background: Vec<Prompt>) -> Self {
        self.background = background;
        self
    }

    /// The configured prompts (labels and the configuration's own background prompts).
    pub fn prompts(&self) -> &[Prompt] {
        &self.prompts
    }

    /// The labels: configured prompts with `role = "label"`.
    pub fn labels(&self) -> impl Iterator<Item = &Prompt> {
        self.prompts.iter().filter(|p| p.config.role.is_label())
    }

    /// The shipped background prompts in use.
    pub fn shipped_background(&self) -> &[Prompt] {
        &self.background
    }

    /// Scores a window embedding; returns the `top_k` best labels (highest score first). The softmax runs over
    /// every applicable prompt, background prompts included; only labels are returned. A `cosine` label's score is
    /// its cosine; a `zscore` label's is its cosine too, standardised afterwards by the controller
    /// ([`zscore::ZScores`]), which also decides whether it is active.
    pub fn score(&self, embedding: &[f32], modality: Modality, source: &str, top_k: usize) -> Vec<LabelScore> {
        let applicable: Vec<&Prompt> = self
            .prompts
            .iter()
            .chain(&self.background)
            .filter(|p| p.config.applies_to(modality, source))
            .collect();
        if applicable.is_empty() {
            return Vec::new();
        }
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let wn = norm(embedding);
        let logits: Vec<f32> = applicable
            .iter()
            .map(|p| {
                p.embedding_for(modality)
                    .iter()
                    .zip(embedding)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f32 = exps.iter().sum();
        let mut scores: Vec<LabelScore> = applicable
            .iter()
            .zip(logits.iter().zip(&exps))
            .filter(|(p, _)| p.config.role.is_label())
            .map(|(p, (&logit, &e))| {
                let denom = wn * norm(p.embedding_for(modality));
                let cosine = if denom > 0.0 { logit / denom } else { 0.0 };
                let mode = p.config.mode;
                let score = match mode {
                    ScoreMode::Softmax if total > 0.0 => e / total,
                    ScoreMode::Softmax => 0.0,
                    ScoreMode::Cosine | ScoreMode::Zscore => cosine,
                };
                LabelScore {
                    label: p.id.clone(),
                    score,
                    cosine,
                    active: mode != ScoreMode::Zscore && score >= p.config.threshold,
                    mode,
                }
            })
            .collect();
        scores.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.label.cmp(&b.label)));
        scores.truncate(top_k.max(1));
        scores
    }
}

/// Why prompts could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The text tower failed.
    #[error("embedding prompt {id:?}: {source}")]
    Encode {
        /// The prompt.
        id: String,
        /// What failed.
        #[source]
        source: EncodeError,
    },
    /// An exemplar could not be embedded (the message names the file).
    #[error("prompt {id:?}: exemplar {index}: {reason}")]
    Exemplar {
        /// The prompt.
        id: String,
        /// Its position in `exemplars`.
        index: usize,
        /// What failed.
        reason: String,
    },
}

/// What prompts are embedded with: the text tower, the templates, and the towers of exemplars.
#[derive(Clone, Copy)]
pub struct Embedder<'a> {
    /// The text tower.
    pub text: &'a dyn Encoder,
    /// Its sha256 (the cache key).
    pub text_sha: &'a str,
    /// CLIP BPE.
    pub tokenizer: &'a Tokenizer,
    /// Templates per modality (`[labels] templates`; empty: none).
    pub templates: &'a BTreeMap<Modality, Vec<String>>,
    /// The modalities of the windows scored (a prompt without `modalities` gets an embedding for each).
    pub modalities: &'a BTreeSet<Modality>,
    /// The towers of exemplars (`None`: a prompt with exemplars is an error).
    pub exemplars: Option<&'a exemplar::ExemplarTowers>,
}

impl<'a> Embedder<'a> {
    /// Just the text tower: no templates, no exemplars.
    pub fn text_only(text: &'a dyn Encoder, text_sha: &'a str, tokenizer: &'a Tokenizer) -> Self {
        static NO_TEMPLATES: BTreeMap<Modality, Vec<String>> = BTreeMap::new();
        static NO_MODALITIES: BTreeSet<Modality> = BTreeSet::new();
        Self {
            text,
            text_sha,
            tokenizer,
            templates: &NO_TEMPLATES,
            modalities: &NO_MODALITIES,
            exemplars: None,
        }
    }

    /// One text's embedding, from the cache or the tower.
    fn text_embedding(&self, id: &str, text: &str, cache: &mut PromptCache) -> Result<Vec<f32>, PromptError> {
        let dim = self.text.info().output_dim;
        let key = PromptCache::key(self.text_sha, text);
        if let Some(e) = cache.get(&key).filter(|e| e.len() == dim) {
            return Ok(e);
        }
        let e = embed_text(self.text, self.tokenizer, text).map_err(|source| PromptError::Encode {
            id: id.to_owned(),
            source,
        })?;
        cache.insert(key, e.clone());
        Ok(e)
    }

    /// One prompt: each text (through `templates`, ensembled) and each exemplar is one part of the ensemble.
    fn parts(
        &self,
        pc: &PromptConfig,
        templates: &[String],
        exemplars: &[Vec<f32>],
        cache: &mut PromptCache,
    ) -> Result<Vec<f32>, PromptError> {
        let dim = self.text.info().output_dim;
        let mut parts = Vec::new();
        for text in pc.all_texts() {
            if templates.is_empty() {
                parts.push(self.text_embedding(&pc.id, &text, cache)?);
                continue;
            }
            let filled = templates
                .iter()
                .map(|t| self.text_embedding(&pc.id, &templates::fill(t, &text), cache))
                .collect::<Result<Vec<_>, _>>()?;
            parts.push(ensemble(&filled, dim));
        }
        parts.extend(exemplars.iter().cloned());
        Ok(ensemble(&parts, dim))
    }
}

/// Embeds the configured prompts, using and filling the cache.
///
/// A prompt with several phrasings is an ensemble, done as CLIP's prompt ensembling: each phrasing's embedding is
/// normalised, the unit vectors are averaged and the mean is normalised again, then scaled back to the text
/// tower's output norm (its logit scale). A plain average of the scaled embeddings would be shorter than any of
/// them, so an ensemble would score systematically lower than a one-text prompt; this way two identical texts
/// give exactly the one-text embedding. Each exemplar (a media file embedded by its own tower, on the text scale)
/// is one more part of the ensemble. With templates, each text is first ensembled over the templates of the
/// window's modality ("the sound of {}"), one embedding per modality the prompt applies to.
pub fn embed_prompts(
    configs: &[PromptConfig],
    embedder: &Embedder<'_>,
    cache: &mut PromptCache,
) -> Result<PromptSet, PromptError> {
    let mut prompts = Vec::with_capacity(configs.len());
    for pc in configs {
        let mut exemplars = Vec::with_capacity(pc.exemplars.len());
        for (index, spec) in pc.exemplars.iter().enumerate() {
            let towers = embedder.exemplars.ok_or_else(|| PromptError::Exemplar {
                id: pc.id.clone(),
                index,
                reason: "exemplars cannot be embedded here".into(),
            })?;
            exemplars.push(towers.embed(spec, cache).map_err(|reason| PromptError::Exemplar {
                id: pc.id.clone(),
                index,
                reason,
            })?);
        }
        let embedding = embedder.parts(pc, &[], &exemplars, cache)?;
        let mut by_modality = BTreeMap::new();
        let targets = if pc.modalities.is_empty() {
            embedder.modalities.iter().copied().collect()
        } else {
            pc.modalities.clone()
        };
        for m in targets {
            match embedder.templates.get(&m) {
                Some(t) if pc.templates && !t.is_empty() && !pc.all_texts().is_empty() => {
                    by_modality.insert(m, embedder.parts(pc, t, &exemplars, cache)?);
                }
                _ => {}
            }
        }
        prompts.push(Prompt {
            id: pc.id.clone(),
            texts: pc.all_texts(),
            config: pc.clone(),
            embedding,
            by_modality,
        });
    }
    Ok(PromptSet::new(prompts))
}

/// [`embed_prompts`] for the configured prompts and the shipped background prompts `background` together.
pub fn embed_with_background(
    configs: &[PromptConfig],
    background: &[PromptConfig],
    embedder: &Embedder<'_>,
    cache: &mut PromptCache,
) -> Result<PromptSet, PromptError> {
    let set = embed_prompts(configs, embedder, cache)?;
    let shipped = embed_prompts(background, embedder, cache)?;
    Ok(set.with_background(shipped.prompts))
}

/// One text through the text tower.
fn embed_text(encoder: &dyn Encoder, tokenizer: &Tokenizer, text: &str) -> Result<Vec<f32>, EncodeError> {
    let ids = Tensor::from_i64(vec![1, text_pre::CONTEXT_LENGTH], tokenizer.tokenize(text).to_vec()).map_err(|e| {
        EncodeError::Run {
            model: "text".into(),
            reason: e.to_string(),
        }
    })?;
    let out = encoder.encode(&ids)?;
    Ok(out.as_f32().unwrap_or_default().to_vec())
}

/// CLIP-style ensemble of scaled embeddings: normalise each, average, normalise, and scale by their mean norm.
/// Zero vectors are left out; no usable vector gives zeros.
pub fn ensemble(embeddings: &[Vec<f32>], dim: usize) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut sum = vec![0f32; dim];
    let (mut scale, mut used) = (0f32, 0u32);
    for e in embeddings.iter().filter(|e| e.len() == dim) {
        let n = norm(e);
        if !(n.is_finite() && n > 0.0) {
            continue;
        }
        sum.iter_mut().zip(e).for_each(|(s, x)| *s += x / n);
        scale += n;
        used += 1;
    }
    let n = norm(&sum);
    if used == 0 || !(n.is_finite() && n > 0.0) {
        return vec![0.0; dim];
    }
    let scale = scale / used as f32;
    sum.iter_mut().for_each(|s| *s = *s / n * scale);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(id: &str, emb: Vec<f32>, modalities: Vec<Modality>) -> Prompt {
        let config = PromptConfig {
            modalities,
            threshold: 0.6,
            ..PromptConfig::new(id, id)
        };
        Prompt {
            id: id.into(),
            texts: vec![id.into()],
            config,
            embedding: emb,
            by_modality: BTreeMap::new(),
        }
    }

    #[test]
    fn scores_are_a_softmax_of_scaled_dot_products() {
        let set = PromptSet::new(vec![
            prompt("a", vec![10.0, 0.0], vec![]),
            prompt("b", vec![0.0, 10.0], vec![]),
            prompt("c", vec![0.0, 10.0], vec![Modality::Depth]),
        ]);
        let s = set.score(&[0.6, 0.8], Modality::Audio, "mic", 5);
        assert_eq!(s.len(), 2, "c applies to depth only");
        assert_eq!(s[0].label, "b");
        let (eb, ea) = (8.0f32.exp(), 6.0f32.exp());
        assert!((s[0].score - eb / (ea + eb)).abs() < 1e-6);
        assert!((s[0].cosine - 0.8).abs() < 1e-6);
        assert!(s[0].active && !s[1].active);
        assert_eq!(set.score(&[0.6, 0.8], Modality::Audio, "mic", 1).len(), 1);
    }

    #[test]
    fn an_ensemble_of_identical_texts_is_exactly_the_one_text_embedding() {
        let e = vec![3.0f32, -4.0, 12.0, 0.5];
        let one = ensemble(std::slice::from_ref(&e), 4);
        let two = ensemble(&[e.clone(), e.clone()], 4);
        assert_eq!(one, two);
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n(&one) - n(&e)).abs() < 1e-5, "keeps the tower's scale");
        assert!(one.iter().zip(&e).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn an_ensemble_keeps_the_scale_and_scores_like_its_phrasings() {
        // Two orthogonal phrasings with the text tower's scale 10: a plain mean has norm 7.07 and would score every
        // window lower than a one-text prompt; the ensemble keeps norm 10 along their bisector.
        let (a, b) = (vec![10.0f32, 0.0, 0.0], vec![0.0f32, 10.0, 0.0]);
        let ens = ensemble(&[a.clone(), b.clone()], 3);
        let norm: f32 = ens.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 10.0).abs() < 1e-4, "{norm}");
        assert!((ens[0] - ens[1]).abs() < 1e-6 && ens[2] == 0.0);
        // A window along the bisector: the ensemble beats either phrasing alone.
        let set = PromptSet::new(vec![
            Prompt {
                embedding: ens,
                ..prompt("both", vec![], vec![])
            },
            prompt("other", vec![0.0, 0.0, 10.0], vec![]),
        ]);
        let w = [0.707f32, 0.707, 0.0];
        let s = set.score(&w, Modality::Audio, "mic", 2);
        assert_eq!(s[0].label, "both");
        assert!((s[0].cosine - 1.0).abs() < 1e-3, "{}", s[0].cosine);
        assert_eq!(ensemble(&[vec![0.0; 3]], 3), vec![0.0; 3], "a zero vector is left out");
    }

    #[test]
    fn background_prompts_take_part_in_the_softmax_and_are_never_returned() {
        let alone = PromptSet::new(vec![prompt("knock", vec![10.0, 0.0], vec![])]);
        let s = alone.score(&[0.0, 1.0], Modality::Audio, "mic", 5);
        assert_eq!(s[0].score, 1.0, "one prompt alone always scores 1");
        let mut quiet = prompt("quiet", vec![0.0, 10.0], vec![]);
        quiet.config.role = PromptRole::Background;
        let with_user_bg = PromptSet::new(vec![prompt("knock", vec![10.0, 0.0], vec![]), quiet.clone()]);
        let shipped = PromptSet::new(vec![prompt("knock", vec![10.0, 0.0], vec![])]).with_background(vec![quiet]);
        for set in [with_user_bg, shipped] {
            let s = set.score(&[0.0, 1.0], Modality::Audio, "mic", 5);
            assert_eq!(s.len(), 1, "only the label is returned: {s:?}");
            assert_eq!(s[0].label, "knock");
            let want = 1.0 / (1.0 + 10f32.exp());
            assert!((s[0].score - want).abs() < 1e-6, "{}", s[0].score);
            assert!(!s[0].active);
            assert_eq!(set.labels().count(), 1);
        }
    }

    #[test]
    fn cosine_and_zscore_labels_score_their_cosine() {
        let mut raw = prompt("raw", vec![10.0, 0.0], vec![]);
        raw.config.mode = ScoreMode::Cosine;
        raw.config.threshold = 0.5;
        let mut z = prompt("z", vec![0.0, 10.0], vec![]);
        z.config.mode = ScoreMode::Zscore;
        z.config.threshold = -1.0;
        let set = PromptSet::new(vec![raw, z]);
        let s = set.score(&[0.6, 0.8], Modality::Audio, "mic", 5);
        let by = |l: &str| s.iter().find(|x| x.label == l).unwrap().clone();
        assert!((by("raw").score - 0.6).abs() < 1e-6 && by("raw").active);
        assert_eq!(by("raw").mode, ScoreMode::Cosine);
        assert!((by("z").score - 0.8).abs() < 1e-6);
        assert!(!by("z").active, "the controller decides once standardised");
    }
}
