//! Value checks: each deserialised section is validated by the component that owns it, then the checks that
//! span sections (unique names, references between sources, prompts and embeddings).

use std::collections::BTreeSet;

use super::Config;
use super::sections::Parsed;
use crate::issues::Issues;
use crate::labels::check_prompt;
use crate::modality::Modality;
use crate::util::is_slug;

/// Appends every value problem of the parts that deserialised to `issues`.
pub(super) fn validate(c: &Config, parsed: &Parsed, issues: &mut Issues) {
    if parsed.device && !is_slug(&c.device.id) {
        issues.push(
            "device.id",
            format!(
                "{:?} is not a valid id: use lower-case letters, digits, '_' and '-'",
                c.device.id
            ),
        );
    }
    if parsed.runtime {
        runtime(&c.runtime, issues);
    }
    if parsed.models {
        c.models.validate(&mut issues.scope("models"));
    }
    let all_names = source_names(c, parsed);
    if parsed.mqtt {
        c.mqtt.validate(&all_names, &mut issues.scope("mqtt"));
    }
    if parsed.events {
        c.events.validate(&mut issues.scope("events"));
    }
    if parsed.labels {
        c.labels.validate(&mut issues.scope("labels"));
    }
    if parsed.evidence {
        c.evidence.validate(&mut issues.scope("evidence"));
    }
    if parsed.preprocess {
        c.preprocess.depth.validate(&mut issues.scope("preprocess.depth"));
        c.preprocess.thermal.validate(&mut issues.scope("preprocess.thermal"));
        c.preprocess.imu.validate(&mut issues.scope("preprocess.imu"));
    }
    if let Some(m) = c.metrics.as_ref().filter(|_| parsed.metrics)
        && let Err(e) = m.address()
    {
        issues.push("metrics.listen", e);
    }
    sources(c, parsed, issues);
    prompts(c, parsed, &all_names, issues);
    if parsed.fusions {
        fusions(c, &all_names, issues);
    }
}

/// `[[fusions]]`: each entry, unique ids, and the reserved sensor name `fused`.
fn fusions(c: &Config, all_names: &[String], issues: &mut Issues) {
    let labels: Vec<String> = c
        .prompts
        .iter()
        .filter(|p| p.role.is_label())
        .map(|p| p.id.clone())
        .collect();
    let mut ids = BTreeSet::new();
    for (i, f) in c.fusions.iter().enumerate() {
        let mut scope = issues.scope(&format!("fusions[{i}]"));
        f.validate(&labels, all_names, &mut scope);
        if !ids.insert(f.id.clone()) {
            scope.push("id", format!("{:?} is used by another fusion", f.id));
        }
    }
    let reserved = crate::events::fusion::FUSED;
    if !c.fusions.is_empty() && all_names.iter().any(|n| n == reserved) {
        issues.push(
            "sources",
            format!(
                "a source named {reserved:?} clashes with the fused events' topics (events/{reserved}/…); rename it"
            ),
        );
    }
}

fn runtime(r: &super::RuntimeConfig, issues: &mut Issues) {
    let mut s = issues.scope("runtime");
    if r.top_k == 0 {
        s.push("top_k", "must be at least 1");
    }
    if !(r.stats_interval_secs == 0.0 || (r.stats_interval_secs.is_finite() && r.stats_interval_secs >= 1.0)) {
        s.push(
            "stats_interval_secs",
            format!("must be 0 (off) or at least 1, got {}", r.stats_interval_secs),
        );
    }
    if !(r.ring_secs.is_finite() && r.ring_secs >= 0.1 && r.ring_secs <= 3600.0) {
        s.push(
            "ring_secs",
            format!("must be between 0.1 and 3600 seconds, got {}", r.ring_secs),
        );
    }
    if r.ring_max_bytes < 1 << 20 {
        s.push("ring_max_bytes", "must be at least 1 MiB (1048576)");
    }
    if !(16..=1_000_000).contains(&r.prompt_cache_entries) {
        s.push(
            "prompt_cache_entries",
            format!("must be between 16 and 1000000, got {}", r.prompt_cache_entries),
        );
    }
}

/// Every configured sensor name, those of entries that did not deserialise included (for references).
fn source_names(c: &Config, parsed: &Parsed) -> Vec<String> {
    c.sources
        .iter()
        .map(|s| s.name().to_owned())
        .chain(parsed.other_source_names.iter().cloned())
        .collect()
}

fn sources(c: &Config, parsed: &Parsed, issues: &mut Issues) {
    let mut names = BTreeSet::new();
    for (pos, s) in c.sources.iter().enumerate() {
        let i = parsed.source_index.get(pos).copied().unwrap_or(pos);
        let mut scope = issues.scope(&format!("sources[{i}]"));
        s.validate(&mut scope);
        if is_slug(s.name()) && !names.insert(s.name().to_owned()) {
            scope.push("name", format!("{:?} is used by another source", s.name()));
        }
    }
}

fn prompts(c: &Config, parsed: &Parsed, all_names: &[String], issues: &mut Issues) {
    let known: Vec<(String, Modality)> = c.sources.iter().map(|s| (s.name().to_owned(), s.modality())).collect();
    let mut ids = BTreeSet::new();
    for (pos, pr) in c.prompts.iter().enumerate() {
        let i = parsed.prompt_index.get(pos).copied().unwrap_or(pos);
        let mut scope = issues.scope(&format!("prompts[{i}]"));
        check_prompt(pr, &c.events, &known, all_names, &mut scope);
        if let Some(o) = &pr.evidence {
            c.evidence
                .params(Some(o))
                .validate(c.evidence.history_secs, &mut scope.scope("evidence"));
        }
        if is_slug(&pr.id) && !ids.insert(pr.id.clone()) {
            scope.push("id", format!("{:?} is used by another prompt", pr.id));
        }
    }
}
