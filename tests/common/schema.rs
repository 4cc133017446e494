//! A small JSON Schema validator for the payload schemas in `docs/schemas/` (draft 2020-12, the keyword subset
//! those schemas use). Any other keyword is an error, so a schema cannot silently stop being checked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// The keywords the validator understands (annotations included).
pub const KEYWORDS: [&str; 26] = [
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "title",
    "description",
    "examples",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "oneOf",
    "anyOf",
    "minItems",
    "maxItems",
    "default",
];

fn schemas() -> &'static Mutex<HashMap<String, Value>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Value>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The parsed schema file `docs/schemas/{name}`.
pub fn load_schema(name: &str) -> Result<Value, String> {
    let mut cache = schemas().lock().map_err(|e| e.to_string())?;
    if let Some(v) = cache.get(name) {
        return Ok(v.clone());
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schemas")
        .join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    cache.insert(name.to_owned(), v.clone());
    Ok(v)
}

/// Validates `value` against `docs/schemas/{schema_file}`; every violation, each with the JSON pointer of the value.
pub fn validate(schema_file: &str, value: &Value) -> Result<(), String> {
    let root = load_schema(schema_file)?;
    validate_with(&root, value).map_err(|errors| format!("{schema_file}: {}", errors.join("; ")))
}

/// Validates against an in-memory schema (the unit tests of the validator).
pub fn validate_with(root: &Value, value: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    check(root, root, value, "", &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn type_ok(t: &str, v: &Value) -> Result<bool, String> {
    Ok(match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0) && v.is_number(),
        other => return Err(format!("unknown type {other:?}")),
    })
}

fn check(root: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let here = if at.is_empty() { "/" } else { at };
    let Some(s) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            errors.push(format!("{here}: not allowed"));
        }
        return;
    };
    for key in s.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            errors.push(format!(
                "{here}: schema keyword {key:?} is not supported by the test validator"
            ));
        }
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix("#/$defs/")
            .and_then(|name| root.get("$defs").and_then(|d| d.get(name)));
        match target {
            Some(t) => check(root, t, v, at, errors),
            None => errors.push(format!("{here}: unresolvable $ref {r:?}")),
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        match types
            .iter()
            .map(|t| type_ok(t, v))
            .collect::<Result<Vec<bool>, String>>()
        {
            Ok(oks) if oks.iter().any(|&b| b) => {}
            Ok(_) => {
                errors.push(format!("{here}: {v} is not of type {}", types.join(" or ")));
                return;
            }
            Err(e) => errors.push(format!("{here}: {e}")),
        }
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        errors.push(format!("{here}: {v} is not {c}"));
    }
    if let Some(Value::Array(options)) = s.get("enum")
        && !options.contains(v)
    {
        errors.push(format!("{here}: {v} is not one of {}", Value::Array(options.clone())));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errors.push(format!("{here}: {v} is below minimum {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errors.push(format!("{here}: {v} is above maximum {max}"));
        }
        if let Some(min) = s.get("exclusiveMinimum").and_then(Value::as_f64)
            && n <= min
        {
            errors.push(format!("{here}: {v} is not above {min}"));
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(format!("{here}: {len} characters, fewer than {min}"));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(format!("{here}: {len} characters, more than {max}"));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(p) {
                Ok(re) if re.is_match(text) => {}
                Ok(_) => errors.push(format!("{here}: {text:?} does not match {p:?}")),
                Err(e) => errors.push(format!("{here}: bad pattern {p:?}: {e}")),
            }
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(min) = s.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            errors.push(format!("{here}: {} items, fewer than {min}", items.len()));
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            errors.push(format!("{here}: {} items, more than {max}", items.len()));
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(root, item_schema, item, &format!("{at}/{i}"), errors);
            }
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(Value::Array(required)) = s.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    errors.push(format!("{here}: required field {r:?} is missing"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, child) in obj {
            let path = format!("{at}/{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(root, ps, child, &path, errors),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => errors.push(format!("{here}: field {k:?} is not allowed")),
                    Some(extra @ Value::Object(_)) => check(root, extra, child, &path, errors),
                    _ => {}
                },
            }
        }
    }
    for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(Value::Array(options)) = s.get(key) {
            let passing = options
                .iter()
                .filter(|o| {
                    let mut e = Vec::new();
                    check(root, o, v, at, &mut e);
                    e.is_empty()
                })
                .count();
            if (exactly_one && passing != 1) || (!exactly_one && passing == 0) {
                errors.push(format!("{here}: {passing} of the {key} alternatives match"));
            }
        }
    }
}

/// The schema file of a published topic, by its segments after `{prefix}/{device}/`; `None` for non-JSON topics.
pub fn schema_for_topic(topic: &str) -> Option<&'static str> {
    let parts: Vec<&str> = topic.split('/').collect();
    if parts.len() == 4 && parts[0] == "homeassistant" && parts[1] == "device" && parts[3] == "config" {
        return Some("ha-discovery.schema.json");
    }
    let rest = parts.get(2..)?;
    Some(match rest {
        ["events", _, _] => "event.schema.json",
        ["labels", _] => "labels.schema.json",
        ["stats"] => "stats.schema.json",
        ["info"] => "info.schema.json",
        ["config", "state"] => "config-state.schema.json",
        ["prompts", "state"] => "prompts-state.schema.json",
        ["cmd", "response"] => "cmd-response.schema.json",
        _ => return None,
    })
}
