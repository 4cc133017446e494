//! The payload schemas in docs/schemas/ and the test validator: every schema parses and stays inside the keyword
//! subset the validator checks; the validator rejects what it must (negative cases for every keyword); realistic
//! payloads pass and broken ones fail with the right JSON pointer. Real published payloads are validated in
//! tests/mqtt_contract.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use common::schema::{load_schema, validate, validate_with};
use serde_json::json;

const ALL: [&str; 12] = [
    "event.schema.json",
    "labels.schema.json",
    "stats.schema.json",
    "info.schema.json",
    "config-state.schema.json",
    "prompts-state.schema.json",
    "cmd-response.schema.json",
    "embedding.schema.json",
    "ha-discovery.schema.json",
    "prompts-set.schema.json",
    "cmd.schema.json",
    "evidence-record.schema.json",
];

#[test]
fn every_schema_parses_and_uses_only_the_supported_keywords() {
    let listed = std::fs::read_to_string(common::root().join("docs/schemas/README.md")).unwrap();
    for name in ALL {
        let s = load_schema(name).unwrap();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}");
        assert!(s["title"].is_string() && s["description"].is_string(), "{name}");
        assert!(listed.contains(name), "{name} is not in docs/schemas/README.md");
        // Validating anything walks the schema; unsupported keywords are reported whatever the value.
        let err = validate(name, &json!(null)).unwrap_err();
        assert!(!err.contains("not supported"), "{name}: {err}");
    }
    let files = std::fs::read_dir(common::root().join("docs/schemas")).unwrap().count();
    assert_eq!(files, ALL.len() + 1, "a schema file is not covered here");
}

/// Every keyword anywhere in a schema (properties, items, branches, `$defs`), with its JSON pointer.
fn keywords(schema: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    let Some(obj) = schema.as_object() else { return };
    for (k, v) in obj {
        out.push((at.to_owned(), k.clone()));
        match k.as_str() {
            "properties" | "$defs" => {
                for (name, sub) in v.as_object().into_iter().flatten() {
                    keywords(sub, &format!("{at}/{k}/{name}"), out);
                }
            }
            "items" | "additionalProperties" => keywords(v, &format!("{at}/{k}"), out),
            "oneOf" | "anyOf" => {
                for (i, sub) in v.as_array().into_iter().flatten().enumerate() {
                    keywords(sub, &format!("{at}/{k}/{i}"), out);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn every_nested_schema_stays_inside_the_validated_subset_and_is_described() {
    for name in ALL {
        let s = load_schema(name).unwrap();
        let mut found = Vec::new();
        keywords(&s, "", &mut found);
        for (at, k) in &found {
            assert!(
                common::schema::KEYWORDS.contains(&k.as_str()),
                "{name}{at}: keyword {k:?} is not validated"
            );
        }
        // Every property says what it is.
        let mut stack = vec![(String::new(), s.clone())];
        while let Some((at, node)) = stack.pop() {
            for (prop, sub) in node["properties"].as_object().into_iter().flatten() {
                assert!(
                    sub.get("description").is_some() || sub.get("$ref").is_some(),
                    "{name}{at}/properties/{prop} has no description"
                );
                stack.push((format!("{at}/properties/{prop}"), sub.clone()));
            }
            for key in ["items", "additionalProperties"] {
                if node[key].is_object() {
                    stack.push((format!("{at}/{key}"), node[key].clone()));
                }
            }
            for key in ["oneOf", "anyOf"] {
                for (i, sub) in node[key].as_array().into_iter().flatten().enumerate() {
                    stack.push((format!("{at}/{key}/{i}"), sub.clone()));
                }
            }
        }
    }
}

#[test]
fn the_validator_rejects_what_each_keyword_forbids() {
    let schema = json!({
        "$defs": { "slug": { "type": "string", "pattern": "^[a-z]+$", "maxLength": 5 } },
        "type": "object",
        "properties": {
            "a": { "$ref": "#/$defs/slug" },
            "n": { "type": "integer", "minimum": 1, "maximum": 3 },
            "x": { "type": ["number", "null"], "exclusiveMinimum": 0 },
            "e": { "enum": ["p", "q", null] },
            "c": { "const": 7 },
            "l": { "type": "array", "items": { "type": "boolean" }, "minItems": 1, "maxItems": 2 },
            "o": { "oneOf": [{ "type": "string" }, { "type": "string", "minLength": 2 }] },
            "y": { "anyOf": [{ "type": "null" }, { "type": "integer" }] },
            "m": { "type": "object", "additionalProperties": { "type": "integer" } }
        },
        "required": ["a"],
        "additionalProperties": false
    });
    let ok = json!({"a": "abc", "n": 2, "x": null, "e": null, "c": 7, "l": [true], "o": "z", "y": 3, "m": {"k": 1}});
    assert_eq!(validate_with(&schema, &ok), Ok(()));
    let cases = [
        (json!({"n": 2}), "/: required field \"a\" is missing"),
        (json!({"a": "ABC"}), "/a: \"ABC\" does not match"),
        (json!({"a": "abcdef"}), "/a: 6 characters, more than 5"),
        (json!({"a": 3}), "/a: 3 is not of type string"),
        (json!({"a": "a", "n": 2.5}), "/n: 2.5 is not of type integer"),
        (json!({"a": "a", "n": 4}), "/n: 4 is above maximum 3"),
        (json!({"a": "a", "n": 0}), "/n: 0 is below minimum 1"),
        (json!({"a": "a", "x": 0}), "/x: 0 is not above 0"),
        (json!({"a": "a", "e": "r"}), "/e: \"r\" is not one of"),
        (json!({"a": "a", "c": 8}), "/c: 8 is not 7"),
        (json!({"a": "a", "l": []}), "/l: 0 items, fewer than 1"),
        (json!({"a": "a", "l": [true, true, true]}), "/l: 3 items, more than 2"),
        (json!({"a": "a", "l": [1]}), "/l/0: 1 is not of type boolean"),
        (json!({"a": "a", "o": "zz"}), "/o: 2 of the oneOf alternatives match"),
        (json!({"a": "a", "y": "s"}), "/y: 0 of the anyOf alternatives match"),
        (json!({"a": "a", "m": {"k": "v"}}), "/m/k: \"v\" is not of type integer"),
        (json!({"a": "a", "zz": 1}), "/: field \"zz\" is not allowed"),
    ];
    for (value, want) in cases {
        let errors = validate_with(&schema, &value).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{value}: want {want:?}, got {errors:?}"
        );
    }
    let unknown = json!({ "type": "object", "patternProperties": {} });
    let e = validate_with(&unknown, &json!({})).unwrap_err();
    assert!(e[0].contains("\"patternProperties\" is not supported"), "{e:?}");
    let dangling = json!({ "$ref": "#/$defs/nope" });
    assert!(validate_with(&dangling, &json!(1)).unwrap_err()[0].contains("unresolvable"));
}

fn event() -> serde_json::Value {
    json!({
        "schema": "event/1", "type": "start", "id": "3-mic0-glass_break-1", "device": "dock-07", "sensor": "mic0",
        "modality": "audio", "label": "glass_break", "prompt": "the sound of glass breaking", "score": 0.71,
        "peak": 0.71, "cos": 0.274, "thresholds": {"on": 0.6, "off": 0.48, "mode": "softmax"}, "runner_up": [{"label": "bell", "score": 0.2}],
        "window": {"seq": 12, "t0": "2026-11-28T10:11:10.345Z", "t1": "2026-11-28T10:11:12.345Z", "latency_ms": 46.0},
        "start_time": "2026-11-28T10:11:12.345Z", "end_time": null, "end_reason": null, "duration_s": null,
        "ts": "2026-11-28T10:11:12.391Z", "seq": 0, "session": 3, "model": "imagebind-tiny@0123456789ab", "config_rev": 0
    })
}

#[test]
fn realistic_payloads_pass_and_broken_ones_fail_at_the_right_place() {
    validate("event.schema.json", &event()).unwrap();
    let mut end = event();
    end["type"] = json!("end");
    end["end_reason"] = json!("quiet");
    end["end_time"] = json!("2026-11-28T10:11:22.345Z");
    end["duration_s"] = json!(10.0);
    end["window"] = json!(null);
    end["cos"] = json!(null);
    validate("event.schema.json", &end).unwrap();
    let broken = [
        ("type", json!("begin"), "/type"),
        ("score", json!("high"), "/score"),
        ("thresholds", json!({"on": 0.6, "off": 0.48}), "/thresholds"),
        ("end_reason", json!("bored"), "/end_reason"),
        ("ts", json!("yesterday"), "/ts: \"yesterday\" does not match"),
        ("sensor", json!("Mic 0"), "/sensor"),
        ("extra", json!(1), "field \"extra\" is not allowed"),
    ];
    for (key, value, want) in broken {
        let mut v = event();
        v[key] = value;
        let e = validate("event.schema.json", &v).unwrap_err();
        assert!(e.contains(want), "{key}: want {want:?} in {e}");
    }
    let mut missing = event();
    missing.as_object_mut().unwrap().remove("id");
    assert!(
        validate("event.schema.json", &missing)
            .unwrap_err()
            .contains("required field \"id\"")
    );

    let stub = json!({"p": "binary_sensor"});
    let full = json!({"p": "switch", "unique_id": "d_x", "name": "x", "ent_cat": "config", "cmd_t": "a/b",
        "stat_t": "a/c", "pl_on": "ON", "pl_off": "OFF"});
    let disc = json!({"dev": {"ids": ["d"], "name": "D", "mf": "sensebind", "mdl": "sensebind", "sw": "0.1.0"},
        "o": {"name": "sensebind", "sw": "0.1.0"}, "avty": [{"t": "sensebind/d/availability"}], "qos": 1,
        "cmps": {"label-x": stub, "label_switch-x": full}});
    validate("ha-discovery.schema.json", &disc).unwrap();
    let mut bad = disc.clone();
    bad["cmps"]["label-y"] = json!({"p": "light"});
    assert!(
        validate("ha-discovery.schema.json", &bad)
            .unwrap_err()
            .contains("/cmps/label-y")
    );
}

#[test]
fn input_schemas_agree_with_what_the_daemon_accepts() {
    // prompts/set: the schema accepts the example of docs/mqtt.md and refuses unknown keys, like the daemon.
    let update = json!({"request_id": "r-42", "rev_expected": 3, "delete": ["dog_bark"],
        "upsert": [{"id": "glass_break", "text": "the sound of glass breaking", "modalities": ["audio"],
                    "threshold": 0.6, "off_threshold": 0.45, "hold_secs": 5}]});
    validate("prompts-set.schema.json", &update).unwrap();
    for u in update["upsert"].as_array().unwrap() {
        let parsed: sensebind::labels::PromptConfig = serde_json::from_value(u.clone()).unwrap();
        assert_eq!(parsed.id, "glass_break");
    }
    let mut unknown = update.clone();
    unknown["upsert"][0]["colour"] = json!("red");
    assert!(
        validate("prompts-set.schema.json", &unknown)
            .unwrap_err()
            .contains("\"colour\" is not allowed")
    );
    assert!(serde_json::from_value::<sensebind::labels::PromptConfig>(unknown["upsert"][0].clone()).is_err());
    // Every key of a [[prompts]] entry is in the schema, and nothing else.
    let config_schema: serde_json::Value = serde_json::from_str(&sensebind::config::json_schema()).unwrap();
    let mut config_keys: Vec<String> = config_schema["$defs"]["PromptConfig"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let ours = load_schema("prompts-set.schema.json").unwrap();
    let mut schema_keys: Vec<String> = ours["properties"]["upsert"]["items"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    config_keys.sort();
    schema_keys.sort();
    assert_eq!(schema_keys, config_keys);
    validate("cmd.schema.json", &json!({"cmd": "rebirth", "request_id": "1"})).unwrap();
    assert!(validate("cmd.schema.json", &json!({"cmd": "reboot"})).is_err());
}

#[test]
fn the_json_form_of_an_embedding_message_matches_its_schema() {
    use sensebind::publish::embedding::{Dtype, EmbeddingFrame, Encoding, encode, l2_normalize};
    let frame = EmbeddingFrame {
        device: "dock-07".into(),
        sensor: "mic0".into(),
        modality: "audio".into(),
        seq: 4,
        session: 2,
        t0: "2026-11-28T10:11:10.345Z".into(),
        t1: "2026-11-28T10:11:12.345Z".into(),
        t0_mono_ns: 1,
        t1_mono_ns: 2,
        model: "imagebind-tiny@0123456789ab".into(),
        event: Some("2-mic0-glass_break-1".into()),
        normalized: true,
        vec: l2_normalize(&[1.0, 2.0, 3.0, 4.0]),
    };
    for dtype in [Dtype::F16, Dtype::F32] {
        let bytes = encode(&frame, dtype, Encoding::JsonBase64).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        validate("embedding.schema.json", &v).unwrap();
    }
}
