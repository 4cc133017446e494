//! Environment checks: what the configuration needs from this machine — files it names, environment variables,
//! the model directory and its towers. `sensebind check --no-environment` skips them (a build host checks a
//! device's configuration without the device's secrets, recordings or models).

use super::LoadedConfig;
use super::sections::Parsed;
use crate::encode::options::resolve_library;
use crate::issues::Issues;
use crate::modality::Modality;

/// Appends every environment problem of the parts that deserialised to `issues`.
pub(super) fn check(loaded: &LoadedConfig, parsed: &Parsed, issues: &mut Issues) {
    let c = &loaded.config;
    let manifest = if parsed.models {
        if let Some(lib) = &c.models.onnxruntime.library {
            let resolved = resolve_library(&loaded.base, lib);
            if resolved.components().count() > 1 && !resolved.is_file() {
                issues.push(
                    "models.onnxruntime.library",
                    format!("{} does not exist", resolved.display()),
                );
            }
        }
        match crate::encode::ModelDir::open(&loaded.resolve(&c.models.dir)) {
            Ok(dir) => Some(dir),
            Err(e) => {
                issues.push("models.dir", e.to_string());
                None
            }
        }
    } else {
        None
    };
    if parsed.mqtt {
        mqtt(loaded, issues);
    }
    for (pos, s) in c.sources.iter().enumerate() {
        let i = parsed.source_index.get(pos).copied().unwrap_or(pos);
        for (j, full) in s.files(&loaded.base).iter().enumerate() {
            if !full.exists() {
                issues.push(
                    format!("sources[{i}].paths[{j}]"),
                    format!("{} does not exist", full.display()),
                );
            }
        }
        if let Some(dir) = &manifest
            && dir.tower(s.modality()).is_err()
        {
            issues.push(
                format!("sources[{i}].modality"),
                format!("the model directory has no {} tower", s.modality()),
            );
        }
    }
    if !c.prompts.is_empty()
        && let Some(dir) = &manifest
        && dir.tower(Modality::Text).is_err()
    {
        issues.push("prompts", "prompts need the model directory's text tower");
    }
    exemplars(loaded, parsed, manifest.as_ref(), issues);
}

/// Every exemplar file exists, its tower can be told, and the model directory has that tower.
fn exemplars(loaded: &LoadedConfig, parsed: &Parsed, manifest: Option<&crate::encode::ModelDir>, issues: &mut Issues) {
    for (pos, pr) in loaded.config.prompts.iter().enumerate() {
        let i = parsed.prompt_index.get(pos).copied().unwrap_or(pos);
        for (j, spec) in pr.exemplars.iter().enumerate() {
            let key = format!("prompts[{i}].exemplars[{j}]");
            let Some(path) = spec.path().map(|p| loaded.resolve(std::path::Path::new(p))) else {
                issues.push(
                    key,
                    "base64 exemplars are taken over prompts/set only; in a configuration file give a path",
                );
                continue;
            };
            // The file must exist even when its modality is given.
            if let Err(e) = std::fs::metadata(&path) {
                issues.push(key, format!("{}: {e}", path.display()));
                continue;
            }
            let modality = match spec.tower(&loaded.base) {
                Ok(m) => m,
                Err(e) => {
                    issues.push(key, e);
                    continue;
                }
            };
            if let Some(dir) = manifest
                && dir.tower(modality).is_err()
            {
                issues.push(key, format!("the model directory has no {modality} tower to embed it"));
            }
        }
    }
}

fn mqtt(loaded: &LoadedConfig, issues: &mut Issues) {
    let q = &loaded.config.mqtt;
    let tls_url = crate::publish::parse_broker_url(&q.url).is_ok_and(|u| u.tls);
    for (key, file) in [
        ("ca_file", &q.tls.ca_file),
        ("client_cert", &q.tls.client_cert),
        ("client_key", &q.tls.client_key),
    ] {
        if let Some(f) = file
            && tls_url
            && !loaded.resolve(f).is_file()
        {
            issues.push(
                format!("mqtt.tls.{key}"),
                format!("{} does not exist", loaded.resolve(f).display()),
            );
        }
    }
    if let Some(var) = &q.password_env
        && std::env::var_os(var).is_none()
    {
        issues.push(
            "mqtt.password_env",
            format!("the environment variable {var} is not set"),
        );
    }
    if let Some(f) = &q.password_file
        && !loaded.resolve(f).is_file()
    {
        issues.push(
            "mqtt.password_file",
            format!("{} does not exist", loaded.resolve(f).display()),
        );
    }
}
