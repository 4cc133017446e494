//! Model directories: `manifest.toml` + one ONNX file per modality + the BPE vocabulary.
//!
//! The manifest is written by `tools/export_imagebind.py`. It names each tower's file and sha256, its input
//! (name, per-clip shape, dtype), output dimension and scale, the architecture it was exported with, a self-test
//! pair, and the preprocessing constants. See `docs/models.md`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::EncodeError;
use crate::modality::Modality;
use crate::tensor::DType;
use crate::util::hex;

/// The manifest file name inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// `manifest.toml`, as written by the exporter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version (1).
    pub schema: u32,
    /// Model name, e.g. `imagebind-tiny`.
    pub name: String,
    /// Where the weights came from: `checkpoint`, `tiny` or `random`.
    pub source: String,
    /// Seed of the random weights (`tiny`, `random`).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Dimension of the joint embedding space (1024 for ImageBind).
    pub embed_dim: usize,
    /// ONNX opset of the exported graphs.
    pub opset: u32,
    /// The tool that wrote the directory.
    pub exporter: String,
    /// The ImageBind code the graphs were built from.
    pub imagebind: String,
    /// The PyTorch version that exported them.
    pub torch: String,
    /// The CLIP BPE vocabulary file.
    pub bpe: String,
    /// Its sha256.
    pub bpe_sha256: String,
    /// One entry per exported modality.
    pub towers: BTreeMap<Modality, TowerManifest>,
}

/// One modality's entry in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerManifest {
    /// ONNX file, relative to the model directory.
    pub file: String,
    /// sha256 of the ONNX file, lower-case hex.
    pub sha256: String,
    /// Name of the graph input.
    pub input_name: String,
    /// Per-clip input shape (without the batch dimension).
    pub input_shape: Vec<usize>,
    /// Input element type.
    pub input_dtype: DType,
    /// Name of the graph output.
    pub output_name: String,
    /// Embedding dimension.
    pub output_dim: usize,
    /// The modality's logit scale baked into the output (the embedding's L2 norm per clip).
    pub scale: f32,
    /// Transformer width.
    pub width: usize,
    /// Transformer blocks.
    pub blocks: usize,
    /// Attention heads.
    pub heads: usize,
    /// External weights file for graphs above protobuf's 2 GB limit.
    #[serde(default)]
    pub external_data: Option<String>,
    /// sha256 of the external weights file.
    #[serde(default)]
    pub external_data_sha256: Option<String>,
    /// Self-test input (`.npy`, in ImageBind's loader layout, batch first).
    #[serde(default)]
    pub selftest_input: Option<String>,
    /// PyTorch's output for the self-test input (`.npy`, `[B, output_dim]`).
    #[serde(default)]
    pub selftest_output: Option<String>,
    /// Maximum absolute difference the self-test accepts.
    #[serde(default)]
    pub selftest_tolerance: Option<f32>,
    /// The numbers the weights are stored in: `f32` (the default) or `int8` (`tools/quantize.py`: the MatMul/Gemm
    /// weights quantised, activations quantised at run time; the self-test then compares by cosine).
    #[serde(default)]
    pub precision: Precision,
    /// Preprocessing constants (see `docs/preprocessing.md`); interpreted by the preprocessing module.
    #[serde(default)]
    pub preprocess: toml::Table,
}

/// A tower's weight precision (`precision` in the manifest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    /// 32-bit floats: the exporter's graph as PyTorch computes it.
    #[default]
    F32,
    /// Dynamic int8 quantisation of the MatMul/Gemm weights (`tools/quantize.py`); an approximation of the f32
    /// tower (embedding cosine ≥ 0.99 expected), fast on ONNX Runtime's CPU provider.
    Int8,
}

impl Precision {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Precision {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "f32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            other => Err(format!(
                "precision {other:?} is not supported: use \"f32\" or \"int8\" (this build runs those two)"
            )),
        }
    }
}

impl From<Precision> for String {
    fn from(p: Precision) -> Self {
        p.as_str().to_owned()
    }
}

/// An opened model directory.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
    manifest: Manifest,
}

impl ModelDir {
    /// Opens `dir/manifest.toml`, checking that it parses and names consistent towers.
    pub fn open(dir: &Path) -> Result<Self, EncodeError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|cause| EncodeError::Io {
            op: "cannot read the model manifest",
            path: path.clone(),
            cause,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| EncodeError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if manifest.schema != 1 {
            return Err(EncodeError::Manifest {
                path,
                reason: format!(
                    "manifest schema {} is not supported (this build reads schema 1)",
                    manifest.schema
                ),
            });
        }
        for (modality, tower) in &manifest.towers {
            if tower.output_dim != manifest.embed_dim {
                return Err(EncodeError::Manifest {
                    path,
                    reason: format!(
                        "towers.{modality}.output_dim is {} but embed_dim is {}",
                        tower.output_dim, manifest.embed_dim
                    ),
                });
            }
        }
        Ok(Self {
            root: dir.to_path_buf(),
            manifest,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The modalities this directory has towers for, in ImageBind's order.
    pub fn modalities(&self) -> Vec<Modality> {
        Modality::ALL
            .into_iter()
            .filter(|m| self.manifest.towers.contains_key(m))
            .collect()
    }

    /// The manifest entry of one tower.
    pub fn tower(&self, modality: Modality) -> Result<&TowerManifest, EncodeError> {
        self.manifest.towers.get(&modality).ok_or_else(|| EncodeError::NoTower {
            modality,
            dir: self.root.clone(),
        })
    }

    /// Resolves a path named in the manifest.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// A stable identifier for the tower's weights: `name@sha256-prefix`.
    pub fn model_id(&self, modality: Modality) -> Result<String, EncodeError> {
        let tower = self.tower(modality)?;
        Ok(format!(
            "{}@{}",
            self.manifest.name,
            &tower.sha256[..tower.sha256.len().min(12)]
        ))
    }

    /// Verifies the sha256 of a tower's ONNX file (and external weights, if any).
    pub fn verify_tower_checksum(&self, modality: Modality) -> Result<(), EncodeError> {
        let tower = self.tower(modality)?;
        verify_sha256(&self.path(&tower.file), &tower.sha256)?;
        if let Some(data) = &tower.external_data {
            let expected = tower
                .external_data_sha256
                .as_deref()
                .ok_or_else(|| EncodeError::Manifest {
                    path: self.root.join(MANIFEST_FILE),
                    reason: format!("towers.{modality}.external_data has no external_data_sha256"),
                })?;
            verify_sha256(&self.path(data), expected)?;
        }
        Ok(())
    }

    /// Verifies the sha256 of the BPE vocabulary.
    pub fn verify_bpe_checksum(&self) -> Result<(), EncodeError> {
        verify_sha256(&self.path(&self.manifest.bpe), &self.manifest.bpe_sha256)
    }
}

/// Computes the sha256 of a file as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, EncodeError> {
    let io_err = |cause| EncodeError::Io {
        op: "cannot read",
        path: path.to_path_buf(),
        cause,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Fails with [`EncodeError::Checksum`] unless `path` hashes to `expected`.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), EncodeError> {
    if !path.exists() {
        return Err(EncodeError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    verify_sha256_in(path, expected, cache_root().as_deref())
}

/// The user's cache folder: `$XDG_CACHE_HOME`, else `~/.cache`.
fn cache_root() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
}

/// [`verify_sha256`] remembering verified files under `cache` (`None`: hash every time).
fn verify_sha256_in(path: &Path, expected: &str, cache: Option<&Path>) -> Result<(), EncodeError> {
    let memo = cache.and_then(|c| checksum_memo(c, path));
    if memo.as_ref().is_some_and(|(file, stamp)| {
        std::fs::read_to_string(file).is_ok_and(|s| s.trim().eq_ignore_ascii_case(&format!("{stamp} {expected}")))
    }) {
        return Ok(());
    }
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(EncodeError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_owned(),
            actual,
        });
    }
    if let Some((file, stamp)) = memo {
        // Best effort: without a writable cache the next start hashes again.
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&file, format!("{stamp} {actual}\n")));
        if let Err(e) = written {
            tracing::debug!(file = %file.display(), error = %e, "Cannot record a verified checksum.");
        }
    }
    Ok(())
}

/// Where a verified checksum of `path` is remembered, and the file's identity it is valid for: device, inode,
/// size, and modification and change times in nanoseconds. Any write to the file, a replacement or a `touch`
/// /// changes the change time, so a stale memo never matches and the file is hashed again. This spares a 345 MB
/// tower's 0.39 s of hashing at every `sensebind embed` (docs/BENCHMARKS.md "Start-up of one `sensebind embed`").
/// Memos live in `<cache>/sensebind/verified`; `None` on systems without inode numbers.
fn checksum_memo(cache: &Path, path: &Path) -> Option<(PathBuf, String)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let canonical = std::fs::canonicalize(path).ok()?;
        let m = std::fs::metadata(&canonical).ok()?;
        // A file changed in the last two seconds is not remembered: on a file system with coarse timestamps a
        // second change within the same tick would keep the stamp (git's "racily clean" problem).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if m.ctime() + 2 > now || m.mtime() + 2 > now {
            return None;
        }
        let stamp = format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
        let key = hex(&Sha256::digest(canonical.as_os_str().as_encoded_bytes()));
        Some((cache.join("sensebind/verified").join(key), stamp))
    }
    #[cfg(not(unix))]
    {
        let _ = (cache, path);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_checksum_is_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let p = dir.path().join("tower.onnx");
        std::fs::write(&p, b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify_sha256_in(&p, good, Some(&cache)).unwrap();
        assert!(
            !cache.exists(),
            "a file changed in the last two seconds is not remembered"
        );
        std::thread::sleep(std::time::Duration::from_millis(2100));
        verify_sha256_in(&p, good, Some(&cache)).unwrap();
        let memos: Vec<_> = std::fs::read_dir(cache.join("sensebind/verified")).unwrap().collect();
        assert_eq!(memos.len(), 1, "the verified file is remembered");
        // Remembered: the same file verifies, a different expectation does not ride on the memo.
        verify_sha256_in(&p, good, Some(&cache)).unwrap();
        assert!(matches!(
            verify_sha256_in(&p, &"0".repeat(64), Some(&cache)),
            Err(EncodeError::Checksum { .. })
        ));
        // Same size, new content: the memo no longer matches and the mismatch is found.
        std::fs::write(&p, b"abd").unwrap();
        assert!(checksum_memo(&cache, &p).is_none(), "just changed");
        let err = verify_sha256_in(&p, good, Some(&cache)).unwrap_err();
        assert!(matches!(err, EncodeError::Checksum { .. }), "{err}");
        // Without a cache every call hashes.
        std::fs::write(&p, b"abc").unwrap();
        verify_sha256_in(&p, good, None).unwrap();
    }

    #[test]
    fn sha256_matches_known_vector() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(verify_sha256(&p, "00").is_err());
    }

    const HEAD: &str = "schema = 1\nname='x'\nsource='tiny'\nembed_dim=4\nopset=18\nexporter=''\nimagebind=''\n\
        torch=''\nbpe='b'\nbpe_sha256='0'\n";
    const TOWER: &str = "[towers.audio]\nfile='a.onnx'\nsha256='0'\ninput_name='audio'\ninput_shape=[1,128,204]\n\
        input_dtype='f32'\noutput_name='embedding'\noutput_dim=4\nscale=20.0\nwidth=8\nblocks=1\nheads=1\n";

    #[test]
    fn precision_defaults_to_f32_reads_int8_and_refuses_anything_else_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let open = |extra: &str| {
            std::fs::write(dir.path().join(MANIFEST_FILE), format!("{HEAD}{TOWER}{extra}")).unwrap();
            ModelDir::open(dir.path())
        };
        let tower = |d: ModelDir| d.tower(Modality::Audio).unwrap().precision;
        assert_eq!(tower(open("").unwrap()), Precision::F32);
        assert_eq!(tower(open("precision = 'f32'\n").unwrap()), Precision::F32);
        assert_eq!(tower(open("precision = 'int8'\n").unwrap()), Precision::Int8);
        let err = open("precision = 'int4'\n").unwrap_err().to_string();
        assert!(
            err.contains("manifest.toml") && err.contains("\"int4\" is not supported") && err.contains("int8"),
            "{err}"
        );
        assert!(err.contains("precision"), "the key is named: {err}");
    }

    #[test]
    fn manifest_rejects_unknown_keys_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            "schema = 1\nname='x'\nsource='tiny'\nembed_dim=4\nopset=18\nexporter=''\nimagebind=''\ntorch=''\n\
             bpe='b'\nbpe_sha256='0'\ncolour='red'\n[towers]\n",
        )
        .unwrap();
        let err = ModelDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("manifest.toml"), "{err}");
    }
}
