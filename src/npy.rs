//! Reading and writing NumPy `.npy` files (format versions 1.0, 2.0 and 3.0).
//!
//! Only what the model tooling needs: little-endian `f4`/`f8`/`i4`/`i8` (and `u1`, `u2`) in C order.
//! `f8` is narrowed to `f32` and integer types widen to `i64`. Everything that input can reach returns a
//! [`NpyError`] that names the problem; nothing here panics on a malformed file.

use std::io::{Read, Write};
use std::path::Path;

use crate::tensor::{Tensor, TensorData};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Refuse absurd headers instead of allocating for them.
const MAX_HEADER_LEN: usize = 1 << 20;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened, read or written.
    #[error("{op} {path}: {cause}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The OS error (part of the message, so not chained as a source).
        cause: std::io::Error,
    },
    /// The bytes are not a valid `.npy` file.
    #[error("{path} is not a valid .npy file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A valid `.npy` file whose contents this tool cannot use.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The file.
        path: String,
        /// What is not supported.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Descr {
    F4,
    F8,
    I4,
    I8,
    U1,
    U2,
}

impl Descr {
    fn parse(s: &str) -> Option<Self> {
        // '<' little-endian, '|' not applicable (single byte), '=' native (little-endian on every target we build).
        let (order, code) = s.split_at(s.len().min(1));
        let little = matches!(order, "<" | "=" | "|");
        if !little {
            return None;
        }
        Some(match code {
            "f4" => Descr::F4,
            "f8" => Descr::F8,
            "i4" => Descr::I4,
            "i8" => Descr::I8,
            "u1" => Descr::U1,
            "u2" => Descr::U2,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Descr::F4 | Descr::I4 => 4,
            Descr::F8 | Descr::I8 => 8,
            Descr::U1 => 1,
            Descr::U2 => 2,
        }
    }
}

/// Reads a `.npy` file into a [`Tensor`].
pub fn read(path: &Path) -> Result<Tensor, NpyError> {
    let bytes = std::fs::read(path).map_err(|cause| NpyError::Io {
        op: "cannot read",
        path: path.display().to_string(),
        cause,
    })?;
    parse(&bytes, &path.display().to_string())
}

/// Parses the bytes of a `.npy` file; `name` is used in error messages.
pub fn parse(bytes: &[u8], name: &str) -> Result<Tensor, NpyError> {
    let format = |reason: String| NpyError::Format {
        path: name.to_owned(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(format("missing the \\x93NUMPY magic bytes".into()));
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| format("truncated header length".into()))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format(format!("unknown format version {v}"))),
    };
    if header_len > MAX_HEADER_LEN {
        return Err(format(format!("header length {header_len} is implausibly large")));
    }
    let header_end = header_start + header_len;
    let header = bytes
        .get(header_start..header_end)
        .ok_or_else(|| format(format!("file ends inside the {header_len}-byte header")))?;
    let header = std::str::from_utf8(header).map_err(|_| format("header is not text".into()))?;
    let dict = parse_header(header).map_err(|e| format(format!("header {header:?}: {e}")))?;
    if dict.fortran_order {
        return Err(NpyError::Unsupported {
            path: name.to_owned(),
            reason: "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        });
    }
    let descr = Descr::parse(&dict.descr).ok_or_else(|| NpyError::Unsupported {
        path: name.to_owned(),
        reason: format!(
            "element type {:?} is not supported (use little-endian float32, float64, int32, int64, uint8 or uint16)",
            dict.descr
        ),
    })?;
    let count = dict
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format(format!("shape {:?} overflows", dict.shape)))?;
    let body = &bytes[header_end..];
    let needed = count
        .checked_mul(descr.size())
        .ok_or_else(|| format(format!("shape {:?} overflows", dict.shape)))?;
    if body.len() < needed {
        return Err(format(format!(
            "data is truncated: shape {:?} needs {needed} bytes, the file has {}",
            dict.shape,
            body.len()
        )));
    }
    let body = &body[..needed];
    let data = match descr {
        Descr::F4 => TensorData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Descr::F8 => TensorData::F32(
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
        ),
        Descr::I4 => TensorData::I64(
            body.chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        Descr::I8 => TensorData::I64(
            body.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Descr::U1 => TensorData::F32(body.iter().map(|&b| f32::from(b)).collect()),
        Descr::U2 => TensorData::F32(
            body.chunks_exact(2)
                .map(|c| f32::from(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
    };
    Tensor::new(dict.shape, data).map_err(|e| format(e.to_string()))
}

/// Writes a tensor as a version 1.0 `.npy` file (`<f4` or `<i8`).
pub fn write(path: &Path, tensor: &Tensor) -> Result<(), NpyError> {
    let bytes = to_bytes(tensor);
    let mut f = std::fs::File::create(path).map_err(|cause| NpyError::Io {
        op: "cannot create",
        path: path.display().to_string(),
        cause,
    })?;
    f.write_all(&bytes).map_err(|cause| NpyError::Io {
        op: "cannot write",
        path: path.display().to_string(),
        cause,
    })
}

/// Serialises a tensor as the bytes of a version 1.0 `.npy` file.
pub fn to_bytes(tensor: &Tensor) -> Vec<u8> {
    let descr = match tensor.data() {
        TensorData::F32(_) => "<f4",
        TensorData::I64(_) => "<i8",
    };
    let shape = match tensor.shape() {
        [] => "()".to_owned(),
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending the header with '\n' as NumPy does.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + tensor.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // The header is short (shape of at most a handful of dims), so it always fits in u16.
    out.extend_from_slice(&u16::try_from(header.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match tensor.data() {
        TensorData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out
}

/// Reads exactly the bytes of a `.npy` stream (for callers holding a reader rather than a path).
pub fn read_from(mut reader: impl Read, name: &str) -> Result<Tensor, NpyError> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|cause| NpyError::Io {
        op: "cannot read",
        path: name.to_owned(),
        cause,
    })?;
    parse(&bytes, name)
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of a `.npy` header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> Result<Header, String> {
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.trim_end().strip_suffix('}'))
        .ok_or("not a dict literal")?;
    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after_key) = take_quoted(rest).ok_or("expected a quoted key")?;
        let after_colon = after_key
            .trim_start()
            .strip_prefix(':')
            .ok_or("expected ':' after a key")?;
        let value_src = after_colon.trim_start();
        let consumed = match key {
            "descr" => {
                let (v, after) = take_quoted(value_src).ok_or("descr must be a quoted string")?;
                descr = Some(v.to_owned());
                after
            }
            "fortran_order" => {
                if let Some(after) = value_src.strip_prefix("False") {
                    fortran_order = Some(false);
                    after
                } else if let Some(after) = value_src.strip_prefix("True") {
                    fortran_order = Some(true);
                    after
                } else {
                    return Err("fortran_order must be True or False".into());
                }
            }
            "shape" => {
                let inner_src = value_src.strip_prefix('(').ok_or("shape must be a tuple")?;
                let close = inner_src.find(')').ok_or("unterminated shape tuple")?;
                let dims = inner_src[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim_end_matches('L').parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| "shape holds a non-integer")?;
                shape = Some(dims);
                &inner_src[close + 1..]
            }
            other => return Err(format!("unexpected key {other:?}")),
        };
        rest = consumed.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Header {
        descr: descr.ok_or("missing 'descr'")?,
        fortran_order: fortran_order.ok_or("missing 'fortran_order'")?,
        shape: shape.ok_or("missing 'shape'")?,
    })
}

/// Takes a `'…'` or `"…"` string from the front of `s`, returning it and the remainder.
fn take_quoted(s: &str) -> Option<(&str, &str)> {
    let quote = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &s[1..];
    let end = rest.find(quote)?;
    Some((&rest[..end], &rest[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_f32_and_i64() {
        let t = Tensor::from_f32(vec![2, 3], vec![1.0, -2.5, 3.0, 4.0, 5.0, f32::MAX]).unwrap();
        assert_eq!(parse(&to_bytes(&t), "t").unwrap(), t);
        let t = Tensor::from_i64(vec![1, 77], (0..77).collect()).unwrap();
        assert_eq!(parse(&to_bytes(&t), "t").unwrap(), t);
        let scalar = Tensor::from_f32(vec![], vec![7.0]).unwrap();
        assert_eq!(parse(&to_bytes(&scalar), "t").unwrap(), scalar);
    }

    #[test]
    fn header_is_64_byte_aligned() {
        let t = Tensor::from_f32(vec![4], vec![0.0; 4]).unwrap();
        let bytes = to_bytes(&t);
        assert_eq!((bytes.len() - 16) % 64, 0);
    }

    #[test]
    fn npy_parses_numpy_written_header() {
        // Exactly what numpy 2.x writes for np.zeros((2,), dtype='<f8').
        let mut bytes = b"\x93NUMPY\x01\x00v\x00".to_vec();
        let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }".to_owned();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        bytes[8] = header.len() as u8;
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.5f64.to_le_bytes());
        bytes.extend_from_slice(&(-2.0f64).to_le_bytes());
        let t = parse(&bytes, "x").unwrap();
        assert_eq!(t.shape(), &[2]);
        assert_eq!(t.as_f32().unwrap(), &[1.5, -2.0]);
    }

    #[test]
    fn npy_errors_name_the_problem() {
        let t = Tensor::from_f32(vec![8], vec![0.0; 8]).unwrap();
        let bytes = to_bytes(&t);
        let err = parse(&bytes[..bytes.len() - 3], "cut.npy").unwrap_err().to_string();
        assert!(err.contains("cut.npy") && err.contains("truncated"), "{err}");
        let err = parse(b"hello world", "x.npy").unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");
        let mut bad = bytes.clone();
        let at = bad.windows(3).position(|w| w == b"<f4").unwrap();
        bad[at] = b'>';
        let err = parse(&bad, "be.npy").unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
    }

    #[test]
    fn npy_never_panics_on_prefixes() {
        let t = Tensor::from_i64(vec![3, 2], vec![1, 2, 3, 4, 5, 6]).unwrap();
        let bytes = to_bytes(&t);
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n], "p").is_err(), "prefix {n} parsed");
        }
    }
}
