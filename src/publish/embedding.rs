//! Embedding messages (`embedding/1`): the wire format of the vectors published on `P/embeddings/{sensor}`.
//!
//! **CBOR** (the default): one definite-length map with text keys, in this order: `schema` (`"embedding/1"`),
//! `device`, `sensor`, `modality`, `seq`, `session`, `t0`, `t1`, `t0_mono_ns`, `t1_mono_ns`, `model`, `event` (text
//! or null), `dim` (uint), `dtype` (`"f16"` | `"f32"`), `byteorder` (`"le"`), `normalized` (bool), `vec`. `vec` is a
//! CBOR byte string (major type 2) of `dim × 2` (f16) or `dim × 4` (f32) bytes: the elements as little-endian IEEE
//! 754 half or single precision values.
//!
//! **JSON + base64** (for clients without CBOR): the same fields as one JSON object, plus `"encoding": "base64"`
//! (just before `vec`), with `vec` as standard base64 (with padding) of the same little-endian bytes.
//!
//! f16 elements are rounded to nearest, ties to even (`half::f16::from_f32`). NaN, infinities and values beyond the
//! f16 range (|x| ≥ 65520, which would round to infinity) are refused with the element's index: embeddings are unit
//! vectors, so such values are garbage and must not reach subscribers.
//!
//! [`decode`] reads both encodings (a payload whose first non-whitespace byte is `{` is JSON, anything else CBOR),
//! checks every field's type, the schema id, the byte order and the length of `vec` against `dim` and `dtype`, and
//! ignores keys it does not know (so later minor additions stay readable).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ciborium::Value;
use half::slice::HalfFloatSliceExt as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Element type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// IEEE 754 half precision, 2 bytes per element (`"f16"`).
    #[default]
    F16,
    /// IEEE 754 single precision, 4 bytes per element (`"f32"`).
    F32,
}

impl Dtype {
    /// The name on the wire: `"f16"` or `"f32"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
        }
    }

    /// Bytes per element: 2 or 4.
    pub fn width(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// Payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// A CBOR map, the vector as a byte string (`"cbor"`).
    #[default]
    Cbor,
    /// A JSON object, the vector in base64 (`"json_base64"`).
    JsonBase64,
}

/// Schema id.
pub const EMBEDDING_SCHEMA: &str = "embedding/1";

/// The only byte order on the wire.
const BYTEORDER: &str = "le";

/// One embedding message (before encoding).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingFrame {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Modality of the sensor (`audio`, `vision`, …).
    pub modality: String,
    /// Window sequence number of the sensor (the same as in `labels/1` messages).
    pub seq: u64,
    /// Daemon start number (increments per start).
    pub session: u64,
    /// Window start, RFC 3339 (passed through as given).
    pub t0: String,
    /// Window end, RFC 3339 (passed through as given).
    pub t1: String,
    /// Window start, monotonic clock, nanoseconds.
    pub t0_mono_ns: u64,
    /// Window end, monotonic clock, nanoseconds.
    pub t1_mono_ns: u64,
    /// Model id, e.g. `imagebind-tiny@4666527c18b7`.
    pub model: String,
    /// Id of the event this window belongs to, if any.
    pub event: Option<String>,
    /// True when `vec` has unit L2 norm.
    pub normalized: bool,
    /// The embedding; its length is `dim` on the wire.
    pub vec: Vec<f32>,
}

/// Why a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum EncodeError {
    /// An element is NaN or infinite.
    NotFinite {
        /// Index of the element in `vec`.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// An element is finite but beyond the f16 range (it would round to infinity).
    OutOfF16Range {
        /// Index of the element in `vec`.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// `vec` is empty (`dim` must be at least 1).
    EmptyVector,
    /// The serializer failed (not expected when writing to memory).
    Serialize(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::NotFinite { index, value } => {
                write!(f, "embedding message: vec[{index}] is {value}, not a finite number")
            }
            EncodeError::OutOfF16Range { index, value } => write!(
                f,
                "embedding message: vec[{index}] = {value} is outside the f16 range (±{})",
                half::f16::MAX
            ),
            EncodeError::EmptyVector => write!(f, "embedding message: vec is empty"),
            EncodeError::Serialize(e) => write!(f, "embedding message: cannot serialize: {e}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// The vector scaled to unit L2 norm (the norm is summed in f64). A vector whose norm is zero or not finite (all
/// zeros, or containing NaN or infinity) is returned unchanged.
pub fn l2_normalize(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
    } else {
        v.to_vec()
    }
}

/// The elements as little-endian bytes of `dtype`; refuses non-finite values and values beyond the f16 range, naming
/// the first offending element.
fn vec_bytes(v: &[f32], dtype: Dtype) -> Result<Vec<u8>, EncodeError> {
    if v.is_empty() {
        return Err(EncodeError::EmptyVector);
    }
    let not_finite = v.iter().position(|x| !x.is_finite());
    match dtype {
        Dtype::F32 => {
            if let Some(index) = not_finite {
                return Err(EncodeError::NotFinite { index, value: v[index] });
            }
            Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        Dtype::F16 => {
            // Converted as a slice (F16C where the CPU has it), round to nearest even like `f16::from_f32`.
            let mut h = vec![half::f16::ZERO; v.len()];
            h.convert_from_f32_slice(v);
            // A finite f32 that became infinite is beyond the f16 range; NaN and ±inf stay what they were.
            let first_bad = h.iter().position(|x| !x.is_finite());
            match (not_finite, first_bad) {
                (Some(index), bad) if bad.is_none_or(|b| index <= b) => {
                    Err(EncodeError::NotFinite { index, value: v[index] })
                }
                (_, Some(index)) => Err(EncodeError::OutOfF16Range { index, value: v[index] }),
                _ => Ok(h.iter().flat_map(|x| x.to_le_bytes()).collect()),
            }
        }
    }
}

/// The JSON form, fields in wire order.
#[derive(Serialize)]
struct JsonMessage<'a> {
    schema: &'static str,
    device: &'a str,
    sensor: &'a str,
    modality: &'a str,
    seq: u64,
    session: u64,
    t0: &'a str,
    t1: &'a str,
    t0_mono_ns: u64,
    t1_mono_ns: u64,
    model: &'a str,
    event: Option<&'a str>,
    dim: usize,
    dtype: Dtype,
    byteorder: &'static str,
    normalized: bool,
    encoding: &'static str,
    vec: String,
}

/// Encodes a frame as `embedding/1` with the vector in `dtype`, as CBOR or as JSON with the vector in base64.
///
/// Fails when `vec` is empty, when an element is NaN or infinite, or (with [`Dtype::F16`]) beyond the f16 range; the error names the
/// element's index.
pub fn encode(frame: &EmbeddingFrame, dtype: Dtype, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
    let bytes = vec_bytes(&frame.vec, dtype)?;
    match encoding {
        Encoding::Cbor => {
            let text = |s: &str| Value::Text(s.to_owned());
            let uint = |n: u64| Value::Integer(n.into());
            let entry = |k: &str, v: Value| (text(k), v);
            let map = vec![
                entry("schema", text(EMBEDDING_SCHEMA)),
                entry("device", text(&frame.device)),
                entry("sensor", text(&frame.sensor)),
                entry("modality", text(&frame.modality)),
                entry("seq", uint(frame.seq)),
                entry("session", uint(frame.session)),
                entry("t0", text(&frame.t0)),
                entry("t1", text(&frame.t1)),
                entry("t0_mono_ns", uint(frame.t0_mono_ns)),
                entry("t1_mono_ns", uint(frame.t1_mono_ns)),
                entry("model", text(&frame.model)),
                entry("event", frame.event.as_deref().map_or(Value::Null, text)),
                entry("dim", uint(frame.vec.len() as u64)),
                entry("dtype", text(dtype.as_str())),
                entry("byteorder", text(BYTEORDER)),
                entry("normalized", Value::Bool(frame.normalized)),
                entry("vec", Value::Bytes(bytes)),
            ];
            let mut out = Vec::with_capacity(frame.vec.len() * dtype.width() + 320);
            ciborium::into_writer(&Value::Map(map), &mut out).map_err(|e| EncodeError::Serialize(e.to_string()))?;
            Ok(out)
        }
        Encoding::JsonBase64 => {
            let msg = JsonMessage {
                schema: EMBEDDING_SCHEMA,
                device: &frame.device,
                sensor: &frame.sensor,
                modality: &frame.modality,
                seq: frame.seq,
                session: frame.session,
                t0: &frame.t0,
                t1: &frame.t1,
                t0_mono_ns: frame.t0_mono_ns,
                t1_mono_ns: frame.t1_mono_ns,
                model: &frame.model,
                event: frame.event.as_deref(),
                dim: frame.vec.len(),
                dtype,
                byteorder: BYTEORDER,
                normalized: frame.normalized,
                encoding: "base64",
                vec: BASE64.encode(&bytes),
            };
            serde_json::to_vec(&msg).map_err(|e| EncodeError::Serialize(e.to_string()))
        }
    }
}

/// A decoded field, either encoding.
enum Field {
    Text(String),
    Uint(u64),
    Bool(bool),
    Null,
    Bytes(Vec<u8>),
    /// Anything else, by a short description for error messages.
    Other(&'static str),
}

impl Field {
    fn kind(&self) -> &'static str {
        match self {
            Field::Text(_) => "text",
            Field::Uint(_) => "an unsigned integer",
            Field::Bool(_) => "a bool",
            Field::Null => "null",
            Field::Bytes(_) => "a byte string",
            Field::Other(k) => k,
        }
    }

    fn from_cbor(v: Value) -> Field {
        match v {
            Value::Text(s) => Field::Text(s),
            Value::Integer(i) => u64::try_from(i).map_or(Field::Other("a negative integer"), Field::Uint),
            Value::Bool(b) => Field::Bool(b),
            Value::Null => Field::Null,
            Value::Bytes(b) => Field::Bytes(b),
            Value::Float(_) => Field::Other("a float"),
            Value::Array(_) => Field::Other("an array"),
            Value::Map(_) => Field::Other("a map"),
            Value::Tag(..) => Field::Other("a tagged item"),
            _ => Field::Other("an unsupported CBOR item"),
        }
    }

    fn from_json(v: serde_json::Value) -> Field {
        match v {
            serde_json::Value::String(s) => Field::Text(s),
            serde_json::Value::Number(n) => n
                .as_u64()
                .map_or(Field::Other("a negative or fractional number"), Field::Uint),
            serde_json::Value::Bool(b) => Field::Bool(b),
            serde_json::Value::Null => Field::Null,
            serde_json::Value::Array(_) => Field::Other("an array"),
            serde_json::Value::Object(_) => Field::Other("an object"),
        }
    }
}

/// The fields of one message, taken out one by one.
struct Fields(BTreeMap<String, Field>);

impl Fields {
    fn take(&mut self, key: &str) -> Result<Field, String> {
        self.0.remove(key).ok_or_else(|| format!("missing field {key:?}"))
    }

    fn wrong(key: &str, want: &str, got: &Field) -> String {
        format!("field {key:?} must be {want}, found {}", got.kind())
    }

    fn text(&mut self, key: &str) -> Result<String, String> {
        match self.take(key)? {
            Field::Text(s) => Ok(s),
            other => Err(Self::wrong(key, "text", &other)),
        }
    }

    fn opt_text(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.take(key)? {
            Field::Text(s) => Ok(Some(s)),
            Field::Null => Ok(None),
            other => Err(Self::wrong(key, "text or null", &other)),
        }
    }

    fn uint(&mut self, key: &str) -> Result<u64, String> {
        match self.take(key)? {
            Field::Uint(n) => Ok(n),
            other => Err(Self::wrong(key, "an unsigned integer", &other)),
        }
    }

    fn bool(&mut self, key: &str) -> Result<bool, String> {
        match self.take(key)? {
            Field::Bool(b) => Ok(b),
            other => Err(Self::wrong(key, "a bool", &other)),
        }
    }
}

/// The top-level CBOR map as fields; `vec` must be a byte string.
fn cbor_fields(bytes: &[u8]) -> Result<Fields, String> {
    let mut rest = bytes;
    let value: Value = ciborium::from_reader(&mut rest).map_err(|e| match e {
        ciborium::de::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!(
                "truncated CBOR: the payload ({} bytes) ends inside an item",
                bytes.len()
            )
        }
        ciborium::de::Error::Io(io) => format!("cannot read CBOR: {io}"),
        ciborium::de::Error::Syntax(at) => format!("not valid CBOR: syntax error at byte {at}"),
        ciborium::de::Error::Semantic(Some(at), m) => format!("not valid CBOR: {m} (item at byte {at})"),
        ciborium::de::Error::Semantic(None, m) => format!("not valid CBOR: {m}"),
        ciborium::de::Error::RecursionLimitExceeded => "not valid CBOR: nested too deeply".to_owned(),
    })?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes of trailing data after the CBOR map ({} bytes)",
            rest.len(),
            bytes.len() - rest.len()
        ));
    }
    let Value::Map(entries) = value else {
        return Err(format!(
            "the CBOR item is {}, expected a map",
            Field::from_cbor(value).kind()
        ));
    };
    let mut map = BTreeMap::new();
    for (k, v) in entries {
        let Value::Text(k) = k else {
            return Err(format!(
                "a CBOR map key is {}, expected text",
                Field::from_cbor(k).kind()
            ));
        };
        let v = Field::from_cbor(v);
        if k == "vec" && !matches!(v, Field::Bytes(_)) {
            return Err(format!("field \"vec\" must be a CBOR byte string, found {}", v.kind()));
        }
        if map.contains_key(&k) {
            return Err(format!("duplicate key {k:?}"));
        }
        map.insert(k, v);
    }
    Ok(Fields(map))
}

/// The JSON object as fields; `encoding` must be `"base64"` and `vec` base64 text, which is decoded here.
fn json_fields(bytes: &[u8]) -> Result<Fields, String> {
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid JSON object: {e}"))?;
    let mut f = Fields(obj.into_iter().map(|(k, v)| (k, Field::from_json(v))).collect());
    let encoding = f.text("encoding")?;
    if encoding != "base64" {
        return Err(format!("encoding is {encoding:?}, expected \"base64\""));
    }
    let b64 = f.text("vec")?;
    let raw = BASE64
        .decode(b64.as_bytes())
        .map_err(|e| format!("field \"vec\" is not standard base64: {e}"))?;
    f.0.insert("vec".to_owned(), Field::Bytes(raw));
    Ok(f)
}

/// Little-endian `dtype` bytes as f32, checked against `dim`; refuses NaN and infinities.
fn vec_from_bytes(bytes: &[u8], dim: u64, dtype: Dtype) -> Result<Vec<f32>, String> {
    let want = usize::try_from(dim)
        .ok()
        .and_then(|d| d.checked_mul(dtype.width()))
        .filter(|&w| w == bytes.len());
    if want.is_none() {
        let expected = u128::from(dim) * dtype.width() as u128;
        return Err(format!(
            "vec has {} bytes, expected {expected} for dim {dim} {}",
            bytes.len(),
            dtype.as_str()
        ));
    }
    let v: Vec<f32> = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(format!("vec[{i}] is {x}, not a finite number"));
    }
    Ok(v)
}

/// Decodes an `embedding/1` message in either encoding (JSON when the first non-whitespace byte is `{`, CBOR
/// otherwise) and returns the frame with the element type it was sent in. Errors say what is wrong, e.g. `vec has
/// 2047 bytes, expected 2048 for dim 1024 f16`. Unknown keys are ignored.
pub fn decode(bytes: &[u8]) -> Result<(EmbeddingFrame, Dtype), String> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let mut f = match first {
        None => return Err("empty payload".to_owned()),
        Some(b'{') => json_fields(bytes)?,
        Some(_) => cbor_fields(bytes)?,
    };
    let schema = f.text("schema")?;
    if schema != EMBEDDING_SCHEMA {
        return Err(format!("schema is {schema:?}, expected {EMBEDDING_SCHEMA:?}"));
    }
    let dtype = match f.text("dtype")?.as_str() {
        "f16" => Dtype::F16,
        "f32" => Dtype::F32,
        other => return Err(format!("unknown dtype {other:?} (expected \"f16\" or \"f32\")")),
    };
    let byteorder = f.text("byteorder")?;
    if byteorder != BYTEORDER {
        return Err(format!("byteorder is {byteorder:?}, expected \"le\""));
    }
    let dim = f.uint("dim")?;
    if dim == 0 {
        return Err("dim is 0, expected at least 1".to_owned());
    }
    let raw = match f.take("vec")? {
        Field::Bytes(b) => b,
        other => return Err(Fields::wrong("vec", "a byte string", &other)),
    };
    let vec = vec_from_bytes(&raw, dim, dtype)?;
    let frame = EmbeddingFrame {
        device: f.text("device")?,
        sensor: f.text("sensor")?,
        modality: f.text("modality")?,
        seq: f.uint("seq")?,
        session: f.uint("session")?,
        t0: f.text("t0")?,
        t1: f.text("t1")?,
        t0_mono_ns: f.uint("t0_mono_ns")?,
        t1_mono_ns: f.uint("t1_mono_ns")?,
        model: f.text("model")?,
        event: f.opt_text("event")?,
        normalized: f.bool("normalized")?,
        vec,
    };
    Ok((frame, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 17] = [
        "schema",
        "device",
        "sensor",
        "modality",
        "seq",
        "session",
        "t0",
        "t1",
        "t0_mono_ns",
        "t1_mono_ns",
        "model",
        "event",
        "dim",
        "dtype",
        "byteorder",
        "normalized",
        "vec",
    ];

    /// A deterministic unit vector with a spread of magnitudes, including a few tiny elements (f16 subnormals).
    fn unit(dim: usize) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15_u64;
        let v: Vec<f32> = (0..dim)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let x = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 97 == 0 { x * 1e-4 } else { x }
            })
            .collect();
        l2_normalize(&v)
    }

    /// Realistic field values (event null).
    fn frame(dim: usize) -> EmbeddingFrame {
        EmbeddingFrame {
            device: "dock-07".into(),
            sensor: "mic0".into(),
            modality: "audio".into(),
            seq: 98_765,
            session: 12,
            t0: "2026-11-28T17:51:27.170Z".into(),
            t1: "2026-11-28T17:51:29.170Z".into(),
            t0_mono_ns: 183_002_710_000_000,
            t1_mono_ns: 183_004_710_000_000,
            model: "imagebind-huge@0123456789ab".into(),
            event: None,
            normalized: true,
            vec: unit(dim),
        }
    }

    fn cbor_map(bytes: &[u8]) -> Vec<(Value, Value)> {
        match ciborium::from_reader::<Value, _>(bytes).unwrap() {
            Value::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    fn to_cbor(map: Vec<(Value, Value)>) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&Value::Map(map), &mut out).unwrap();
        out
    }

    fn set(map: &mut [(Value, Value)], key: &str, v: Value) {
        let e = map.iter_mut().find(|(k, _)| k == &Value::Text(key.into())).unwrap();
        e.1 = v;
    }

    fn json_obj(bytes: &[u8]) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn round_trips_both_encodings_and_dtypes() {
        for event in [None, Some("12-mic0-glass_break-3".to_owned())] {
            let f = EmbeddingFrame { event, ..frame(1024) };
            for enc in [Encoding::Cbor, Encoding::JsonBase64] {
                let (g, d) = decode(&encode(&f, Dtype::F32, enc).unwrap()).unwrap();
                assert_eq!(d, Dtype::F32);
                assert_eq!(g, f, "f32 is exact ({enc:?})");

                let (h, d) = decode(&encode(&f, Dtype::F16, enc).unwrap()).unwrap();
                assert_eq!(d, Dtype::F16);
                assert_eq!(
                    EmbeddingFrame {
                        vec: vec![],
                        ..h.clone()
                    },
                    EmbeddingFrame {
                        vec: vec![],
                        ..f.clone()
                    }
                );
                assert_eq!(h.vec.len(), f.vec.len());
                let (mut err2, mut dot) = (0.0f64, 0.0f64);
                for (&a, &b) in h.vec.iter().zip(&f.vec) {
                    // Half an f16 ulp: 2^-11 relative for normal values, 2^-25 absolute in the subnormal range.
                    assert!((a - b).abs() <= b.abs() * 4.9e-4 + 3e-8, "{a} vs {b}");
                    err2 += f64::from(a - b).powi(2);
                    dot += f64::from(a) * f64::from(b);
                }
                assert!(err2.sqrt() <= 1e-3, "relative L2 error {}", err2.sqrt());
                assert!(dot >= 1.0 - 1e-6, "cosine {dot}");
            }
        }
    }

    #[test]
    fn cbor_is_a_map_in_key_order_with_the_vector_as_a_byte_string() {
        for (dtype, width) in [(Dtype::F16, 2), (Dtype::F32, 4)] {
            let f = frame(1024);
            let bytes = encode(&f, dtype, Encoding::Cbor).unwrap();
            assert_eq!(bytes[0], 0xa0 | 17, "definite-length map (major type 5) of 17 pairs");
            let m = cbor_map(&bytes);
            let keys: Vec<_> = m.iter().map(|(k, _)| k.as_text().unwrap()).collect();
            assert_eq!(keys, KEYS);
            assert_eq!(m[0].1, Value::Text("embedding/1".into()));
            assert_eq!(m[11].1, Value::Null, "event");
            assert_eq!(m[12].1, Value::Integer(1024.into()), "dim");
            assert_eq!(m[13].1, Value::Text(dtype.as_str().into()));
            assert_eq!(m[14].1, Value::Text("le".into()));
            let Value::Bytes(v) = &m[16].1 else {
                panic!("vec is not a byte string: {:?}", m[16].1)
            };
            assert_eq!(v.len(), 1024 * width);
            // The raw header of the byte string: major type 2, two-byte length.
            let n = (1024 * width) as u16;
            let header = [0x59, (n >> 8) as u8, n as u8];
            assert_eq!(&bytes[bytes.len() - v.len() - 3..bytes.len() - v.len()], header);
            // Little-endian IEEE 754.
            let want: Vec<u8> = match dtype {
                Dtype::F16 => f
                    .vec
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
                    .collect(),
                Dtype::F32 => f.vec.iter().flat_map(|&x| x.to_bits().to_le_bytes()).collect(),
            };
            assert_eq!(v, &want);
        }
    }

    #[test]
    fn json_has_the_same_fields_plus_encoding_and_padded_base64() {
        let f = EmbeddingFrame {
            event: Some("e1".into()),
            ..frame(7)
        };
        let bytes = encode(&f, Dtype::F16, Encoding::JsonBase64).unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with(r#"{"schema":"embedding/1","device":"dock-07","sensor":"mic0","#),
            "{text}"
        );
        // Key order as in the CBOR form, `encoding` just before `vec`.
        let mut at = 0;
        for k in KEYS.iter().take(16).chain(&["encoding", "vec"]) {
            let p = text.find(&format!("\"{k}\":")).unwrap();
            assert!(p >= at, "{k} out of order in {text}");
            at = p;
        }
        let obj = json_obj(&bytes);
        assert_eq!(obj.len(), 18);
        assert_eq!(obj["encoding"], "base64");
        assert_eq!(obj["dtype"], "f16");
        assert_eq!(obj["dim"], 7);
        assert_eq!(obj["event"], "e1");
        let b64 = obj["vec"].as_str().unwrap();
        assert_eq!(b64.len(), 20, "14 bytes → 20 characters with padding");
        assert!(b64.ends_with('='));
        let raw = BASE64.decode(b64).unwrap();
        let want: Vec<u8> = f
            .vec
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(raw, want);
        let null = encode(&frame(3), Dtype::F32, Encoding::JsonBase64).unwrap();
        assert_eq!(json_obj(&null)["event"], serde_json::Value::Null);
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        let mut f = frame(4);
        let ulp = 2f32.powi(-10);
        // Halfway between 1 and 1+ulp → 1 (even); halfway between 1+ulp and 1+2ulp → 1+2ulp (even); max is exact.
        f.vec = vec![1.0 + ulp / 2.0, 1.0 + 1.5 * ulp, 65504.0, -65519.0];
        let (g, _) = decode(&encode(&f, Dtype::F16, Encoding::Cbor).unwrap()).unwrap();
        assert_eq!(g.vec, [1.0, 1.0 + 2.0 * ulp, 65504.0, -65504.0]);
    }

    #[test]
    fn non_finite_and_out_of_range_elements_are_refused_by_index() {
        for enc in [Encoding::Cbor, Encoding::JsonBase64] {
            for dtype in [Dtype::F16, Dtype::F32] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut f = frame(8);
                    f.vec[3] = bad;
                    let e = encode(&f, dtype, enc).unwrap_err();
                    assert!(matches!(e, EncodeError::NotFinite { index: 3, .. }), "{e:?}");
                    assert!(e.to_string().contains("vec[3]"), "{e}");
                }
            }
            let mut f = frame(8);
            f.vec[5] = -1e6;
            let e = encode(&f, Dtype::F16, enc).unwrap_err();
            assert_eq!(e, EncodeError::OutOfF16Range { index: 5, value: -1e6 });
            assert_eq!(
                e.to_string(),
                "embedding message: vec[5] = -1000000 is outside the f16 range (±65504)"
            );
            f.vec[5] = 65520.0;
            assert!(matches!(
                encode(&f, Dtype::F16, enc),
                Err(EncodeError::OutOfF16Range { index: 5, .. })
            ));
            assert!(encode(&f, Dtype::F32, enc).is_ok(), "f32 carries it");
        }
    }

    #[test]
    fn the_first_bad_element_is_named_and_slice_conversion_matches_from_f32() {
        let mut f = frame(8);
        f.vec[2] = 1e5;
        f.vec[5] = f32::NAN;
        assert!(matches!(
            encode(&f, Dtype::F16, Encoding::Cbor),
            Err(EncodeError::OutOfF16Range { index: 2, .. })
        ));
        f.vec.swap(2, 5);
        assert!(matches!(
            encode(&f, Dtype::F16, Encoding::Cbor),
            Err(EncodeError::NotFinite { index: 2, .. })
        ));
        // Every 4099th finite f32 bit pattern within the f16 range: bulk conversion == `f16::from_f32`.
        let v: Vec<f32> = (0..u32::MAX / 4099)
            .map(|i| f32::from_bits(i * 4099))
            .filter(|x| x.is_finite() && x.abs() < 65504.0)
            .collect();
        let mut f = frame(0);
        f.vec = v;
        let Ok(bytes) = vec_bytes(&f.vec, Dtype::F16) else {
            panic!("in range")
        };
        for (c, &x) in bytes.chunks_exact(2).zip(&f.vec) {
            assert_eq!(
                u16::from_le_bytes([c[0], c[1]]),
                half::f16::from_f32(x).to_bits(),
                "{x}"
            );
        }
    }

    #[test]
    fn truncated_cbor_is_rejected_at_every_length() {
        let good = encode(&frame(16), Dtype::F16, Encoding::Cbor).unwrap();
        assert!(decode(&good).is_ok());
        for n in 0..good.len() {
            let e = decode(&good[..n]).unwrap_err();
            if n > 0 {
                assert!(e.contains("truncated CBOR"), "{n}: {e}");
            }
        }
        assert_eq!(
            decode(&good[..good.len() - 3]).unwrap_err(),
            format!(
                "truncated CBOR: the payload ({} bytes) ends inside an item",
                good.len() - 3
            )
        );
        assert_eq!(decode(b"").unwrap_err(), "empty payload");
        let mut long = good.clone();
        long.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode(&long).unwrap_err(),
            format!("2 bytes of trailing data after the CBOR map ({} bytes)", good.len())
        );
    }

    #[test]
    fn wrong_vec_length_is_reported_precisely() {
        let good = encode(&frame(1024), Dtype::F16, Encoding::Cbor).unwrap();
        let mut m = cbor_map(&good);
        let Value::Bytes(v) = &m[16].1 else { panic!() };
        let short = v[..2047].to_vec();
        set(&mut m, "vec", Value::Bytes(short));
        assert_eq!(
            decode(&to_cbor(m)).unwrap_err(),
            "vec has 2047 bytes, expected 2048 for dim 1024 f16"
        );

        let json = String::from_utf8(encode(&frame(8), Dtype::F32, Encoding::JsonBase64).unwrap()).unwrap();
        let more = json.replace("\"dim\":8", "\"dim\":9");
        assert_eq!(
            decode(more.as_bytes()).unwrap_err(),
            "vec has 32 bytes, expected 36 for dim 9 f32"
        );
        let huge = json.replace("\"dim\":8", &format!("\"dim\":{}", u64::MAX));
        assert_eq!(
            decode(huge.as_bytes()).unwrap_err(),
            format!(
                "vec has 32 bytes, expected {} for dim {} f32",
                u128::from(u64::MAX) * 4,
                u64::MAX
            )
        );
        // f32 bytes labelled f16: twice the expected length.
        let relabel = json.replace("\"dtype\":\"f32\"", "\"dtype\":\"f16\"");
        assert_eq!(
            decode(relabel.as_bytes()).unwrap_err(),
            "vec has 32 bytes, expected 16 for dim 8 f16"
        );
    }

    #[test]
    fn bad_fields_are_rejected_with_a_reason() {
        let good = encode(&frame(4), Dtype::F16, Encoding::Cbor).unwrap();
        let with = |key: &str, v: Value| {
            let mut m = cbor_map(&good);
            set(&mut m, key, v);
            decode(&to_cbor(m)).unwrap_err()
        };
        assert_eq!(
            with("dtype", Value::Text("bf16".into())),
            "unknown dtype \"bf16\" (expected \"f16\" or \"f32\")"
        );
        assert_eq!(
            with("schema", Value::Text("embedding/2".into())),
            "schema is \"embedding/2\", expected \"embedding/1\""
        );
        assert_eq!(
            with("byteorder", Value::Text("be".into())),
            "byteorder is \"be\", expected \"le\""
        );
        assert_eq!(
            with("seq", Value::Integer((-1).into())),
            "field \"seq\" must be an unsigned integer, found a negative integer"
        );
        assert_eq!(
            with("event", Value::Integer(3.into())),
            "field \"event\" must be text or null, found an unsigned integer"
        );
        assert_eq!(
            with("normalized", Value::Null),
            "field \"normalized\" must be a bool, found null"
        );
        assert_eq!(
            with("device", Value::Bytes(vec![1])),
            "field \"device\" must be text, found a byte string"
        );
        assert_eq!(
            with("vec", Value::Array(vec![Value::Float(0.5); 4])),
            "field \"vec\" must be a CBOR byte string, found an array"
        );
        assert_eq!(
            with("vec", Value::Text("AAAAAAAAAAA=".into())),
            "field \"vec\" must be a CBOR byte string, found text"
        );

        for key in KEYS {
            let mut m = cbor_map(&good);
            m.retain(|(k, _)| k != &Value::Text(key.into()));
            assert_eq!(
                decode(&to_cbor(m)).unwrap_err(),
                format!("missing field {key:?}"),
                "CBOR"
            );
            let mut o = json_obj(&encode(&frame(4), Dtype::F16, Encoding::JsonBase64).unwrap());
            o.remove(key);
            let bytes = serde_json::to_vec(&o).unwrap();
            assert_eq!(decode(&bytes).unwrap_err(), format!("missing field {key:?}"), "JSON");
        }

        let mut dup = cbor_map(&good);
        dup.insert(2, (Value::Text("seq".into()), Value::Integer(1.into())));
        assert_eq!(decode(&to_cbor(dup)).unwrap_err(), "duplicate key \"seq\"");
        let mut int_key = cbor_map(&good);
        int_key.push((Value::Integer(1.into()), Value::Null));
        assert_eq!(
            decode(&to_cbor(int_key)).unwrap_err(),
            "a CBOR map key is an unsigned integer, expected text"
        );
        let mut extra = cbor_map(&good);
        extra.push((Value::Text("later".into()), Value::Float(1.5)));
        assert!(decode(&to_cbor(extra)).is_ok(), "unknown keys are ignored");
        let mut arr = Vec::new();
        ciborium::into_writer(&Value::Array(vec![]), &mut arr).unwrap();
        assert_eq!(decode(&arr).unwrap_err(), "the CBOR item is an array, expected a map");
        let mut nan = cbor_map(&good);
        set(&mut nan, "vec", Value::Bytes([0, 0, 0, 0, 0x00, 0x7e, 0, 0].to_vec()));
        assert_eq!(decode(&to_cbor(nan)).unwrap_err(), "vec[2] is NaN, not a finite number");
    }

    #[test]
    fn bad_json_is_rejected_with_a_reason() {
        let json = String::from_utf8(encode(&frame(4), Dtype::F16, Encoding::JsonBase64).unwrap()).unwrap();
        assert!(decode(format!("  \n{json}").as_bytes()).is_ok(), "leading whitespace");
        let e = decode(&json.as_bytes()[..json.len() - 1]).unwrap_err();
        assert!(e.starts_with("not a valid JSON object: EOF"), "{e}");
        let e = decode(json.replace("\"f16\"", "\"f64\"").as_bytes()).unwrap_err();
        assert_eq!(e, "unknown dtype \"f64\" (expected \"f16\" or \"f32\")");
        let e = decode(json.replace("\"base64\"", "\"hex\"").as_bytes()).unwrap_err();
        assert_eq!(e, "encoding is \"hex\", expected \"base64\"");
        let o = json_obj(json.as_bytes());
        let b64 = o["vec"].as_str().unwrap();
        let e = decode(json.replace(b64, &b64[..b64.len() - 1]).as_bytes()).unwrap_err();
        assert!(e.starts_with("field \"vec\" is not standard base64"), "{e}");
        let e = decode(json.replace("\"seq\":98765", "\"seq\":98765.5").as_bytes()).unwrap_err();
        assert_eq!(
            e,
            "field \"seq\" must be an unsigned integer, found a negative or fractional number"
        );
        let e = decode(json.replace("\"normalized\":true", "\"normalized\":\"yes\"").as_bytes()).unwrap_err();
        assert_eq!(e, "field \"normalized\" must be a bool, found text");
        let e = decode(b"{}").unwrap_err();
        assert_eq!(e, "missing field \"encoding\"");
    }

    #[test]
    fn garbage_never_panics() {
        let good = encode(&frame(32), Dtype::F32, Encoding::Cbor).unwrap();
        let mut s = 0x2545_f491_4f6c_dd1d_u64;
        let mut still_valid = 0;
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..3 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let i = (s % b.len() as u64) as usize;
                b[i] = (s >> 32) as u8;
            }
            still_valid += usize::from(decode(&b).is_ok());
        }
        assert!(still_valid < 2000, "some mutations must break the message");
        // A byte string that claims 2^63 bytes must fail without allocating them.
        let e = decode(&[0xa1, 0x63, b'v', b'e', b'c', 0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(e.contains("truncated CBOR"), "{e}");
    }

    #[test]
    fn l2_normalize_gives_unit_norm_and_leaves_zero_alone() {
        let v = l2_normalize(&[3.0, 4.0]);
        assert_eq!(v, [0.6, 0.8]);
        let u = unit(1024);
        let n: f64 = u.iter().map(|&x| f64::from(x).powi(2)).sum();
        assert!((n - 1.0).abs() < 1e-6, "{n}");
        assert_eq!(l2_normalize(&[0.0, 0.0]), [0.0, 0.0]);
        assert!(l2_normalize(&[]).is_empty());
        assert_eq!(
            l2_normalize(&[1e30, 1e30])[0],
            std::f32::consts::FRAC_1_SQRT_2,
            "no overflow"
        );
    }

    #[test]
    fn dtype_and_encoding_serde_names_and_defaults() {
        assert_eq!(serde_json::to_string(&Dtype::F16).unwrap(), "\"f16\"");
        assert_eq!(serde_json::to_string(&Dtype::F32).unwrap(), "\"f32\"");
        assert_eq!(serde_json::to_string(&Encoding::Cbor).unwrap(), "\"cbor\"");
        assert_eq!(serde_json::to_string(&Encoding::JsonBase64).unwrap(), "\"json_base64\"");
        assert_eq!(
            serde_json::from_str::<Encoding>("\"json_base64\"").unwrap(),
            Encoding::JsonBase64
        );
        assert_eq!((Dtype::default(), Encoding::default()), (Dtype::F16, Encoding::Cbor));
        let schema = serde_json::to_string(&schemars::schema_for!(Encoding)).unwrap();
        assert!(schema.contains("json_base64"), "{schema}");
    }

    #[test]
    fn empty_vector_is_refused() {
        let f = frame(0);
        for enc in [Encoding::Cbor, Encoding::JsonBase64] {
            assert_eq!(encode(&f, Dtype::F16, enc), Err(EncodeError::EmptyVector));
        }
        let mut m = cbor_map(&encode(&frame(2), Dtype::F32, Encoding::Cbor).unwrap());
        set(&mut m, "dim", Value::Integer(0.into()));
        set(&mut m, "vec", Value::Bytes(vec![]));
        assert_eq!(decode(&to_cbor(m)).unwrap_err(), "dim is 0, expected at least 1");
    }

    /// Bytes per 1024-d message with realistic field values (event null).
    #[test]
    fn sizes() {
        let f = frame(1024);
        let size = |dtype, enc| encode(&f, dtype, enc).unwrap().len();
        let cbor16 = size(Dtype::F16, Encoding::Cbor);
        let cbor32 = size(Dtype::F32, Encoding::Cbor);
        let json16 = size(Dtype::F16, Encoding::JsonBase64);
        let json32 = size(Dtype::F32, Encoding::JsonBase64);
        eprintln!(
            "1024-d embedding message: CBOR f16 {cbor16} B, CBOR f32 {cbor32} B, JSON+base64 f16 {json16} B, JSON+base64 f32 {json32} B"
        );
        // Payload: 2048 / 4096 bytes raw, 2732 / 5464 base64 characters; the rest is keys and field values.
        assert!((2048 + 200..2048 + 320).contains(&cbor16), "{cbor16}");
        assert_eq!(cbor32, cbor16 + 2048);
        assert!((2732 + 300..2732 + 420).contains(&json16), "{json16}");
        assert_eq!(json32, json16 + 5464 - 2732);
    }
}
