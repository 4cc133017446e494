//! # sensebind
//!
//! An edge daemon that binds every sensor on a device into one ImageBind embedding space and labels it over
//! MQTT. Data flows through these modules:
//!
//! ```text
//! sources ─► ring buffers ─► windows ─► preprocess ─► encode ─► labels ─► publish
//! ```
//!
//! - [`modality`]: the six ImageBind modality names used everywhere.
//! - [`tensor`] and [`npy`]: the array type that moves between stages, and `.npy` files.
//! - [`preprocess`]: ImageBind-exact preprocessing of every modality (media files → model input tensors).
//! - [`encode`]: model directories (manifest, checksums), the [`encode::Encoder`] trait, the tract backend,
//!   `models verify`.
//! - [`bench`]: encoder latency and throughput.
//! - [`zeroshot`]: the test bench behind `sensebind label` and `sensebind eval`.
//! - [`cli`]: the `sensebind` command line; [`telemetry`]: logging.
//!
//! See `ARCHITECTURE.md` for the module map and the threading model.

pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod devices;
pub mod encode;
pub mod events;
pub mod evidence;
pub mod issues;
pub mod labels;
pub mod modality;
pub mod npy;
pub mod preprocess;
pub mod publish;
pub mod ring;
pub mod runtime;
pub mod sources;
pub mod telemetry;
pub mod tensor;
pub mod util;
pub mod window;
pub mod zeroshot;
