//! Prompt templates per modality: CLIP's prompt engineering. A prompt's text is put into every template of the
//! modality of the window it scores ("glass breaking" → "the sound of glass breaking." for a microphone, "a photo
//! of glass breaking." for a camera) and the filled texts are ensembled, so one prompt reads naturally for every
//! sensor it applies to. `[labels] templates`: `false` (default) uses the texts as written, `true` the shipped
//! sets below, a table `{ audio = ["..."], vision = ["..."] }` exactly those (other modalities: none). A prompt
//! opts out with `templates = false`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::issues::Scope;
use crate::modality::Modality;

/// `[labels] templates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TemplatesConfig {
    /// `true`: the shipped sets; `false`: none.
    Shipped(bool),
    /// Templates per modality, `{}` standing for the prompt's text.
    Custom(BTreeMap<Modality, Vec<String>>),
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        Self::Shipped(false)
    }
}

impl TemplatesConfig {
    /// False for the default (`false`), so it is left out when written.
    pub fn is_off(&self) -> bool {
        *self == Self::Shipped(false)
    }

    /// The templates in use, by modality.
    pub fn resolve(&self) -> BTreeMap<Modality, Vec<String>> {
        match self {
            Self::Shipped(false) => BTreeMap::new(),
            Self::Shipped(true) => Modality::ALL
                .iter()
                .map(|&m| (m, shipped(m).iter().map(|t| (*t).to_owned()).collect::<Vec<_>>()))
                .filter(|(_, t)| !t.is_empty())
                .collect(),
            Self::Custom(map) => map.clone(),
        }
    }

    /// Value checks: every template holds `{}` once, at most 16 per modality, each under 500 bytes.
    pub fn validate(&self, issues: &mut Scope<'_>) {
        let Self::Custom(map) = self else { return };
        for (m, list) in map {
            if list.len() > 16 {
                issues.push(
                    &format!("templates.{m}"),
                    format!("{} templates; at most 16", list.len()),
                );
            }
            for (i, t) in list.iter().enumerate() {
                if t.matches("{}").count() != 1 || t.len() > 500 {
                    issues.push(
                        &format!("templates.{m}[{i}]"),
                        format!("{t:?}: a template holds {{}} exactly once and is under 500 bytes"),
                    );
                }
            }
        }
    }
}

/// The shipped templates of a modality (after CLIP's and ImageBind's zero-shot templates).
pub fn shipped(modality: Modality) -> &'static [&'static str] {
    match modality {
        Modality::Vision => &["a photo of {}.", "a blurry photo of {}.", "a video frame showing {}."],
        Modality::Audio => &["the sound of {}.", "a recording of {}.", "{} can be heard."],
        Modality::Depth => &["a depth photo of {}.", "a depth map showing {}."],
        Modality::Thermal => &["a thermal photo of {}.", "an infrared image of {}."],
        Modality::Imu | Modality::Text => &[],
    }
}

/// `template` with `text` in place of `{}`.
pub fn fill(template: &str, text: &str) -> String {
    template.replacen("{}", text, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sets_fill_every_modality_with_a_template() {
        let t = TemplatesConfig::Shipped(true).resolve();
        assert_eq!(
            fill(&t[&Modality::Audio][0], "glass breaking"),
            "the sound of glass breaking."
        );
        assert!(!t.contains_key(&Modality::Imu), "IMU windows have no phrasing to add");
        assert!(TemplatesConfig::default().resolve().is_empty());
    }

    #[test]
    fn custom_templates_need_one_placeholder() {
        let c: TemplatesConfig = toml::from_str::<BTreeMap<String, TemplatesConfig>>(
            "t = { audio = [\"the sound of {}\", \"no placeholder\"] }",
        )
        .unwrap()
        .remove("t")
        .unwrap();
        let mut issues = crate::issues::Issues::new();
        c.validate(&mut issues.scope("labels"));
        let v = issues.into_vec();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].path, "labels.templates.audio[1]");
    }
}
