//! Embedding messages (`embedding/1`): self-describing CBOR with the vector as raw little-endian f16 or f32 bytes,
//! or the same fields as JSON with the vector in base64 (for clients without CBOR).
//!
//! CBOR layout: a definite-length map with text keys `schema, device, sensor, modality, seq, session, t0, t1,
//! t0_mono_ns, t1_mono_ns, model, event, dim, dtype, byteorder, normalized, vec`; `vec` is a byte string of
//! `dim × 2` (f16) or `dim × 4` (f32) bytes. The JSON form adds `"encoding": "base64"` and carries `vec` as
//! standard base64 with padding.

use base64::Engine as _;
use ciborium::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Element type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// IEEE 754 half precision: 2 bytes per element.
    #[default]
    F16,
    /// IEEE 754 single precision: 4 bytes per element.
    F32,
}

impl Dtype {
    fn as_str(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
        }
    }

    fn width(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// Payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// CBOR map, vector as a byte string.
    #[default]
    Cbor,
    /// JSON object, vector in base64.
    JsonBase64,
}

/// Schema id.
pub const EMBEDDING_SCHEMA: &str = "embedding/1";

/// One embedding message (before encoding).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingFrame {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Modality.
    pub modality: String,
    /// The sensor's window number (as in `labels/1`).
    pub seq: u64,
    /// Daemon start number.
    pub session: u64,
    /// Window start, RFC 3339.
    pub t0: String,
    /// Window end, RFC 3339.
    pub t1: String,
    /// Window start, monotonic nanoseconds.
    pub t0_mono_ns: u64,
    /// Window end, monotonic nanoseconds.
    pub t1_mono_ns: u64,
    /// Model id.
    pub model: String,
    /// Id of the event the window belongs to, if any.
    pub event: Option<String>,
    /// True when `vec` has unit L2 norm.
    pub normalized: bool,
    /// The vector.
    pub vec: Vec<f32>,
}

/// Why a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("embedding message: {0}")]
pub struct EncodeError(String);

/// The vector scaled to unit length (unchanged if it is all zeros).
pub fn l2_normalize(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

fn vec_bytes(v: &[f32], dtype: Dtype) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(v.len() * dtype.width());
    for (i, &x) in v.iter().enumerate() {
        if !x.is_finite() {
            return Err(EncodeError(format!("element {i} is {x}")));
        }
        match dtype {
            Dtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
            Dtype::F16 => {
                let h = half::f16::from_f32(x);
                if !h.is_finite() {
                    return Err(EncodeError(format!("element {i} ({x}) is outside the f16 range")));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    Ok(out)
}

/// Encodes a frame.
pub fn encode(frame: &EmbeddingFrame, dtype: Dtype, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    let bytes = vec_bytes(&frame.vec, dtype)?;
    match encoding {
        Encoding::Cbor => {
            let text = |s: &str| Value::Text(s.to_owned());
            let int = |n: u64| Value::Integer(n.into());
            let map = vec![
                (text("schema"), text(EMBEDDING_SCHEMA)),
                (text("device"), text(&frame.device)),
                (text("sensor"), text(&frame.sensor)),
                (text("modality"), text(&frame.modality)),
                (text("seq"), int(frame.seq)),
                (text("session"), int(frame.session)),
                (text("t0"), text(&frame.t0)),
                (text("t1"), text(&frame.t1)),
                (text("t0_mono_ns"), int(frame.t0_mono_ns)),
                (text("t1_mono_ns"), int(frame.t1_mono_ns)),
                (text("model"), text(&frame.model)),
                (text("event"), frame.event.as_deref().map_or(Value::Null, text)),
                (text("dim"), int(frame.vec.len() as u64)),
                (text("dtype"), text(dtype.as_str())),
                (text("byteorder"), text("le")),
                (text("normalized"), Value::Bool(frame.normalized)),
                (text("vec"), Value::Bytes(bytes)),
            ];
            let mut out = Vec::with_capacity(frame.vec.len() * dtype.width() + 400);
            ciborium::into_writer(&Value::Map(map), &mut out).map_err(|e| EncodeError(e.to_string()))?;
            Ok(out)
        }
        Encoding::JsonBase64 => {
            let v = serde_json::json!({
                "schema": EMBEDDING_SCHEMA,
                "device": frame.device,
                "sensor": frame.sensor,
                "modality": frame.modality,
                "seq": frame.seq,
                "session": frame.session,
                "t0": frame.t0,
                "t1": frame.t1,
                "t0_mono_ns": frame.t0_mono_ns,
                "t1_mono_ns": frame.t1_mono_ns,
                "model": frame.model,
                "event": frame.event,
                "dim": frame.vec.len(),
                "dtype": dtype.as_str(),
                "byteorder": "le",
                "normalized": frame.normalized,
                "encoding": "base64",
                "vec": base64::engine::general_purpose::STANDARD.encode(&bytes),
            });
            serde_json::to_vec(&v).map_err(|e| EncodeError(e.to_string()))
        }
    }
}

fn from_bytes(bytes: &[u8], dim: usize, dtype: Dtype) -> Result<Vec<f32>, String> {
    let want = dim * dtype.width();
    if bytes.len() != want {
        return Err(format!(
            "vec has {} bytes, expected {want} for dim {dim} {}",
            bytes.len(),
            dtype.as_str()
        ));
    }
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    })
}

/// Decodes either encoding (JSON starts with `{`); errors say what is wrong.
pub fn decode(bytes: &[u8]) -> Result<(EmbeddingFrame, Dtype), String> {
    let json: serde_json::Value = if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?
    } else {
        let v: Value = ciborium::from_reader(bytes).map_err(|e| format!("not valid CBOR: {e}"))?;
        let Value::Map(entries) = v else {
            return Err("the CBOR item is not a map".into());
        };
        let mut obj = serde_json::Map::new();
        for (k, v) in entries {
            let Value::Text(k) = k else {
                return Err("a CBOR map key is not text".into());
            };
            let v = match v {
                Value::Text(s) => serde_json::Value::String(s),
                Value::Integer(i) => serde_json::Value::from(u64::try_from(i).map_err(|_| format!("{k} is negative"))?),
                Value::Bool(b) => serde_json::Value::Bool(b),
                Value::Null => serde_json::Value::Null,
                Value::Bytes(b) => serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
                other => return Err(format!("{k} has an unexpected CBOR type: {other:?}")),
            };
            obj.insert(k, v);
        }
        serde_json::Value::Object(obj)
    };
    let s = |k: &str| -> Result<String, String> {
        json.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("missing or non-text field {k:?}"))
    };
    let u = |k: &str| -> Result<u64, String> {
        json.get(k)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("missing or non-integer field {k:?}"))
    };
    if s("schema")? != EMBEDDING_SCHEMA {
        return Err(format!("schema is {:?}, expected {EMBEDDING_SCHEMA:?}", s("schema")?));
    }
    let dtype = match s("dtype")?.as_str() {
        "f16" => Dtype::F16,
        "f32" => Dtype::F32,
        other => return Err(format!("unknown dtype {other:?}")),
    };
    if s("byteorder")? != "le" {
        return Err("byteorder must be \"le\"".into());
    }
    let dim = usize::try_from(u("dim")?).map_err(|_| "dim too large".to_owned())?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s("vec")?)
        .map_err(|e| format!("vec is not base64: {e}"))?;
    let frame = EmbeddingFrame {
        device: s("device")?,
        sensor: s("sensor")?,
        modality: s("modality")?,
        seq: u("seq")?,
        session: u("session")?,
        t0: s("t0")?,
        t1: s("t1")?,
        t0_mono_ns: u("t0_mono_ns")?,
        t1_mono_ns: u("t1_mono_ns")?,
        model: s("model")?,
        event: json.get("event").and_then(|v| v.as_str()).map(str::to_owned),
        normalized: json
            .get("normalized")
            .and_then(serde_json::Value::as_bool)
            .ok_or("missing field \"normalized\"")?,
        vec: from_bytes(&raw, dim, dtype)?,
    };
    Ok((frame, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dim: usize) -> EmbeddingFrame {
        let v: Vec<f32> = (0..dim).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        EmbeddingFrame {
            device: "dock-07".into(),
            sensor: "mic0".into(),
            modality: "audio".into(),
            seq: 98765,
            session: 12,
            t0: "2026-11-28T17:51:27.170Z".into(),
            t1: "2026-11-28T17:51:29.170Z".into(),
            t0_mono_ns: 2_710_000_000,
            t1_mono_ns: 4_710_000_000,
            model: "imagebind-huge@0123456789ab".into(),
            event: Some("12-mic0-glass-1".into()),
            normalized: true,
            vec: l2_normalize(&v),
        }
    }

    #[test]
    fn round_trips_both_encodings_and_dtypes() {
        let f = frame(1024);
        for enc in [Encoding::Cbor, Encoding::JsonBase64] {
            let (g, d) = decode(&encode(&f, Dtype::F32, enc).unwrap()).unwrap();
            assert_eq!((g.clone(), d), (f.clone(), Dtype::F32), "{enc:?}");
            let (h, d) = decode(&encode(&f, Dtype::F16, enc).unwrap()).unwrap();
            assert_eq!(d, Dtype::F16);
            assert_eq!(h.event, f.event);
            for (a, b) in h.vec.iter().zip(&f.vec) {
                assert!((a - b).abs() <= 1e-3 * b.abs().max(1e-2), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn cbor_is_a_map_with_the_vector_as_a_byte_string() {
        let bytes = encode(&frame(1024), Dtype::F16, Encoding::Cbor).unwrap();
        assert_eq!(bytes[0] & 0xe0, 0xa0, "major type 5 (map)");
        let v: Value = ciborium::from_reader(bytes.as_slice()).unwrap();
        let Value::Map(m) = v else { panic!("not a map") };
        let vec = m
            .iter()
            .find(|(k, _)| k == &Value::Text("vec".into()))
            .map(|(_, v)| v.clone());
        assert!(matches!(vec, Some(Value::Bytes(b)) if b.len() == 2048));
        assert_eq!(m[0], (Value::Text("schema".into()), Value::Text("embedding/1".into())));
    }

    #[test]
    fn sizes_per_1024_d_message() {
        let f = EmbeddingFrame {
            event: None,
            ..frame(1024)
        };
        let size = |d, e| encode(&f, d, e).unwrap().len();
        let (c16, c32) = (size(Dtype::F16, Encoding::Cbor), size(Dtype::F32, Encoding::Cbor));
        let (j16, j32) = (
            size(Dtype::F16, Encoding::JsonBase64),
            size(Dtype::F32, Encoding::JsonBase64),
        );
        assert!((2048..2400).contains(&c16), "{c16}");
        assert!((4096..4500).contains(&c32), "{c32}");
        assert!((2731..3200).contains(&j16), "{j16}");
        assert!((5462..5900).contains(&j32), "{j32}");
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let f = frame(8);
        let mut nan = f.clone();
        nan.vec[3] = f32::NAN;
        assert!(
            encode(&nan, Dtype::F32, Encoding::Cbor)
                .unwrap_err()
                .to_string()
                .contains("element 3")
        );
        let mut big = f.clone();
        big.vec[1] = 1e6;
        assert!(
            encode(&big, Dtype::F16, Encoding::Cbor)
                .unwrap_err()
                .to_string()
                .contains("f16 range")
        );
        let good = encode(&f, Dtype::F16, Encoding::Cbor).unwrap();
        assert!(decode(&good[..good.len() - 3]).unwrap_err().contains("CBOR"));
        let json = String::from_utf8(encode(&f, Dtype::F32, Encoding::JsonBase64).unwrap()).unwrap();
        let short = json.replace("\"dim\":8", "\"dim\":9");
        assert!(
            decode(short.as_bytes())
                .unwrap_err()
                .contains("expected 36 for dim 9 f32")
        );
        let dt = json.replace("\"dtype\":\"f32\"", "\"dtype\":\"f64\"");
        assert!(decode(dt.as_bytes()).unwrap_err().contains("unknown dtype"));
        let missing = json.replace("\"sensor\":\"mic0\",", "");
        assert!(decode(missing.as_bytes()).unwrap_err().contains("sensor"));
    }
}
