//! The command line: verbs, their flags and help, and exit codes.
//!
//! Exit codes (sysexits-style): 0 ok, 1 runtime failure, 2 usage error, 64 bad configuration.
//! Verbs print their results on stdout; logs go to stderr through `tracing`.

#![allow(clippy::print_stdout)] // printing results is what these verbs are for

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod evidence;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::bench::{BenchOptions, bench_encoder};
use crate::encode::engine::{self, ModelSource};
use crate::encode::verify::verify_dir;
use crate::encode::{Backend, EngineOptions, ExecutionProviderConfig, OnnxRuntimeConfig};
use crate::encode::{Encoder, ModelDir, embed};
use crate::modality::Modality;
use crate::npy;
use crate::preprocess::text::{CONTEXT_LENGTH, Tokenizer};
use crate::preprocess::{self, PreprocessConfig};
use crate::tensor::Tensor;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: a runtime failure (bad input, a failed check, an I/O error).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad command-line usage (clap also uses 2).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: bad configuration (EX_USAGE = 64 in sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// sensebind: bind every sensor into one ImageBind embedding space and label it over MQTT.
#[derive(Debug, Parser)]
#[command(name = "sensebind", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter for stderr (e.g. `info`, `sensebind=debug`); overrides SENSEBIND_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Zero set-up demonstration: bundled models, replayed real recordings, an embedded MQTT broker, a live view.
    Demo(DemoArgs),
    /// Run the daemon.
    Run(RunArgs),
    /// Validate a configuration: prints every error with its key path and line; exit 64 when invalid.
    Check(CheckArgs),
    /// Print the JSON Schema of the configuration file.
    Schema,
    /// Embed inputs offline: media files, texts or preprocessed `.npy` tensors into `[N, dim]` embeddings.
    ///
    /// A media file is preprocessed as `sensebind preprocess` does (a video or an audio file gives one row: the
    /// mean of its clips, as ImageBind). With `--text`, each INPUT is a prompt.
    /// Each INPUT ending in `.npy` is a model input tensor in ImageBind's loader layout, batch first:
    /// vision `[B,3,224,224]` images, `[B,3,2,224,224]` clips or `[B,15,3,2,224,224]` videos; text `[B,77]` ids;
    /// audio `[B,1,128,204]` clips or `[B,3,1,128,204]` files; depth/thermal `[B,1,224,224]`; imu `[B,6,2000]`.
    /// A tensor without the batch dimension is accepted where that is unambiguous; `--unbatched` says every
    /// input is one item without it (as `sensebind preprocess` writes). Multi-clip rows are averaged as
    /// ImageBind does. Output rows follow the inputs in order.
    Embed(EmbedArgs),
    /// Model directories: verify checksums and self-test vectors.
    Models {
        /// What to do with the models.
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Encoder latency and throughput per tower (p50/p95 per call, clips per second).
    Bench(BenchArgs),
    /// Write exactly the tensor ImageBind's data loader gives for a media file (without the batch dimension).
    ///
    /// vision: PNG/JPEG → [3,224,224], video (anything FFmpeg reads) → [15,3,2,224,224]; audio (WAV/FLAC/Ogg) →
    /// [3,1,128,204]; depth (16-bit PNG in mm, or .npy in metres) → [1,224,224]; thermal (8/16-bit PNG, JPEG) →
    /// [1,224,224]; imu (CSV/TSV) → [6,2000]; text (a file, one prompt per line) → [N,77].
    Preprocess(PreprocessArgs),
    /// CLIP BPE token ids of texts, 77 per text, exactly as ImageBind's tokenizer gives them.
    Tokenize(TokenizeArgs),
    /// Score media files against prompts, as the daemon would: a ranked table per file, or per window.
    ///
    /// Prompts come from `--prompt` (labels are the texts), `--exemplar` files (media of the same modality that
    /// define a label, alone or with its texts) and the `[[prompts]]` of a `--config` (labels are their ids).
    /// With `--windows` each file is cut into the daemon's windows (the source's window settings from the
    /// configuration, else the defaults) and every window is scored; `--timeline` draws those scores over time.
    /// docs/prompts.md explains the scores.
    Label(LabelArgs),
    /// Zero-shot accuracy on a labelled dataset: `DIR/<class>/<file>` or a CSV of file and label (ESC-50's
    /// meta/esc50.csv): one prompt per class from the templates, top-1, top-5, per-class recall, confusion matrix.
    Eval(EvalArgs),
    /// Thresholds for a target false-alarm rate: scores recordings that contain no events as the daemon would,
    /// replays each label's scores through the daemon's event logic, and prints the `[[prompts]]` tables with the
    /// lowest thresholds that start at most the allowed number of events on them (docs/prompts.md).
    Calibrate(CalibrateArgs),
    /// List the capture devices: cameras (V4L2 nodes with their formats, sizes and rates), audio inputs (ALSA
    /// capture PCMs and cpal device ids) and serial ports with their stable `/dev/serial/by-id/` links. Nothing
    /// is streamed.
    Devices(DevicesArgs),
    /// Event evidence on this device (`[evidence]`): list the events with snapshots and clips, show one event's
    /// record (`event.json`), or apply retention now (`prune`).
    Evidence(evidence::EvidenceArgs),
}

/// `sensebind devices`
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read sysfs/procfs/dev under this folder instead of `/` (tests, or a copied tree from another machine).
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
}

/// `sensebind preprocess`
#[derive(Debug, Args)]
pub struct PreprocessArgs {
    /// The modality of the input.
    #[arg(long, short)]
    pub modality: Modality,
    /// The media file.
    pub input: PathBuf,
    /// Output `.npy` file.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub params: ParamsArgs,
}

/// Preprocessing parameters shared by `preprocess` and `embed`.
#[derive(Debug, Args)]
pub struct ParamsArgs {
    /// TOML file with `[depth]`, `[thermal]` and `[imu]` tables (see docs/preprocessing.md).
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// IMU input rate when the file has no time column (overrides the params file).
    #[arg(long, value_name = "HZ")]
    pub imu_rate_hz: Option<f64>,
    /// Model directory whose BPE vocabulary tokenizes text (default: the bundled models).
    #[arg(long = "vocab-model", value_name = "DIR")]
    pub vocab_model: Option<PathBuf>,
}

/// `sensebind tokenize`
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Texts to tokenize.
    #[arg(required = true)]
    pub texts: Vec<String>,
    /// Print one JSON array holding an array of 77 ids per text.
    #[arg(long)]
    pub json: bool,
    /// Model directory whose BPE vocabulary to use (default: the bundled models).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
}

/// `sensebind models ...`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Check every tower: sha256 against the manifest, then its stored self-test vector against PyTorch's output.
    Verify {
        /// Model directory (default: the bundled models/imagebind-tiny).
        dir: Option<PathBuf>,
        /// Engine threads per tower.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        backends: BackendArgs,
    },
}

/// Which backends run the towers (`embed`, `models verify`, `bench`).
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Backends, comma-separated: auto, tract, onnxruntime, wgpu. `embed` takes one (default auto); `models verify`
    /// and `bench` default to every backend that can run here.
    #[arg(long = "backend", value_delimiter = ',', value_name = "BACKEND", value_parser = parse_backend)]
    pub backends: Vec<Backend>,
    /// The ONNX Runtime library (default: $ORT_DYLIB_PATH, else libonnxruntime.so on the loader's search path).
    #[arg(long, value_name = "FILE")]
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime execution providers in order of preference, comma-separated: tensorrt, tensorrt-fp16, cuda, cpu.
    #[arg(long, value_delimiter = ',', default_value = "cpu", value_parser = ExecutionProviderConfig::from_name)]
    pub ort_providers: Vec<ExecutionProviderConfig>,
    /// Let ONNX Runtime's threads spin between calls (ONNX Runtime's own default; sensebind's is off).
    #[arg(long)]
    pub ort_spinning: bool,
    /// wgpu: the adapter to use (part of its name, as `sensebind devices` lists it).
    #[arg(long, value_name = "NAME")]
    pub wgpu_adapter: Option<String>,
    /// wgpu: linear-layer weights in f16 (adapters with shader-f16).
    #[arg(long)]
    pub wgpu_f16: bool,
}

/// `--mode` values.
fn parse_mode(s: &str) -> Result<crate::labels::ScoreMode, String> {
    use crate::labels::ScoreMode;
    match s {
        "softmax" => Ok(ScoreMode::Softmax),
        "cosine" => Ok(ScoreMode::Cosine),
        "zscore" => Ok(ScoreMode::Zscore),
        other => Err(format!("{other:?} is not a score mode: softmax, cosine or zscore")),
    }
}

/// `--backend` values: the configuration's names (`Backend` itself stays free of clap).
fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse()
}

impl BackendArgs {
    fn onnxruntime(&self) -> OnnxRuntimeConfig {
        OnnxRuntimeConfig {
            library: self.ort_library.clone(),
            execution_providers: self.ort_providers.clone(),
            intra_op_spinning: self.ort_spinning,
        }
    }

    /// Options for one backend; TensorRT engines are cached under `$XDG_CACHE_HOME/sensebind/tensorrt`.
    fn options(&self, backend: Backend, threads: usize) -> EngineOptions {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        EngineOptions {
            backend,
            threads,
            onnxruntime: self.onnxruntime(),
            cache_dir: cache.map(|c| c.join("sensebind/tensorrt")),
            wgpu_adapter: self.wgpu_adapter.clone(),
            wgpu_f16: self.wgpu_f16,
            ..EngineOptions::default()
        }
    }

    /// The single backend `embed` uses.
    fn single(&self) -> anyhow::Result<Backend> {
        match self.backends.as_slice() {
            [] => Ok(Backend::Auto),
            [one] => Ok(*one),
            _ => bail!("--backend takes one backend here"),
        }
    }

    /// The backends to compare (`models verify`, `bench`): those asked for, else every one that can run here.
    /// Each comes with why it cannot run, if it cannot.
    fn to_compare(&self) -> Vec<(Backend, Result<(), String>)> {
        let available = engine::available_backends(&self.onnxruntime());
        if self.backends.is_empty() {
            return available;
        }
        let mut seen = std::collections::BTreeSet::new();
        self.backends
            .iter()
            .copied()
            .filter(|b| seen.insert(*b))
            .map(|b| {
                let status = available
                    .iter()
                    .find(|(a, _)| *a == b)
                    .map_or(Ok(()), |(_, s)| s.clone());
                (b, status)
            })
            .collect()
    }
}

/// `sensebind demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Publish to this broker instead of starting an embedded one (mqtt://host:port).
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
}

/// `sensebind run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Longest time the shutdown may take (drain queues, publish, say offline) before exiting anyway.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub shutdown_timeout_secs: f64,
    /// Stop by itself after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
}

/// `sensebind check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Check the file's values only: not whether the files it names exist, its environment variables are set,
    /// or the model directory has the towers (for a build host without the device's secrets and models).
    #[arg(long)]
    pub no_environment: bool,
}

/// `sensebind embed`
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// The modality of the inputs.
    #[arg(long, short)]
    pub modality: Modality,
    /// A model directory (with manifest.toml) or a bare ONNX file of one tower (default: the bundled tiny models).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Input files.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output file: `.npy` (`[N, dim]` f32) or `.json`.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Every `.npy` input is a single item without the batch dimension.
    #[arg(long)]
    pub unbatched: bool,
    /// The inputs are texts to embed (with `--modality text`), not files.
    #[arg(long)]
    pub text: bool,
    #[command(flatten)]
    pub params: ParamsArgs,
    /// Engine threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Most clips per encoder call.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    #[command(flatten)]
    pub backends: BackendArgs,
}

/// Where `label` and `eval` get their towers, preprocessing and window settings.
#[derive(Debug, Clone, Args)]
pub struct BenchModelArgs {
    /// A daemon configuration: its model directory and tower settings, `[preprocess]`, `[[prompts]]` and the
    /// window settings of its source of this modality.
    #[arg(long, short, conflicts_with_all = ["model", "params"])]
    pub config: Option<PathBuf>,
    /// A model directory (default: the bundled tiny models).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The sensor whose window settings and prompts apply (default: the configuration's first source of this
    /// modality).
    #[arg(long, value_name = "NAME", requires = "config")]
    pub source: Option<String>,
    /// TOML file with `[depth]`, `[thermal]` and `[imu]` tables (with `--model`).
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// Engine threads (with `--model`).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Most windows or clips per encoder call.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    #[command(flatten)]
    pub backends: BackendArgs,
}

/// `sensebind label`
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// The modality of the inputs.
    #[arg(long, short)]
    pub modality: Modality,
    /// Media files.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// A prompt; its label is its text (repeatable).
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// A media file defining a label: `LABEL=FILE` joins the prompt labelled LABEL (or makes it), a bare FILE makes
    /// a prompt labelled by the file's stem (repeatable).
    #[arg(long = "exemplar", value_name = "[LABEL=]FILE")]
    pub exemplars: Vec<String>,
    /// A background prompt (repeatable): part of every window's softmax, never listed ("silence", "an empty
    /// room"); a `--exemplar` labelled with its text joins it.
    #[arg(long = "background", value_name = "TEXT")]
    pub backgrounds: Vec<String>,
    /// Leave out the shipped background prompts the daemon adds by default (`[labels] default_background`).
    #[arg(long)]
    pub no_default_background: bool,
    /// Score mode of the labels: softmax (default), cosine or zscore (docs/prompts.md). Overrides the modes of
    /// the configuration's prompts too.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<crate::labels::ScoreMode>,
    /// `zscore` labels: windows before a score counts (overrides `[labels] zscore_warmup_windows`, default 50).
    #[arg(long, value_name = "N")]
    pub zscore_warmup_windows: Option<u64>,
    /// Threshold of the `--prompt` and `--exemplar` labels, on the mode's scale (the timeline's dashed line;
    /// default 0.5, the daemon's).
    #[arg(long, value_name = "SCORE")]
    pub threshold: Option<f32>,
    /// Cut each file into the daemon's windows and score every window.
    #[arg(long)]
    pub windows: bool,
    /// Window length in seconds (overrides the source's or the default).
    #[arg(long, value_name = "SECS")]
    pub window_secs: Option<f64>,
    /// Seconds between windows (overrides the source's or the default).
    #[arg(long, value_name = "SECS")]
    pub hop_secs: Option<f64>,
    /// Images or text lines per second in a sequence (a replay source's `rate_hz`; default 1).
    #[arg(long, value_name = "HZ")]
    pub rate_hz: Option<f64>,
    /// Draw the per-window scores of every prompt over time into this PNG (implies --windows; with several
    /// inputs, each file's stem is added to the name).
    #[arg(long, value_name = "PNG")]
    pub timeline: Option<PathBuf>,
    /// Print a JSON array, one object per file.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: BenchModelArgs,
}

/// `sensebind calibrate`
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The modality of the recordings.
    #[arg(long, short)]
    pub modality: Modality,
    /// Recordings that contain none of the labels' events (a quiet night, an empty room).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Target false alarms per hour: the recordings may start at most this × their hours events (rounded down).
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub false_alarms_per_hour: f64,
    /// A prompt to calibrate besides the configuration's; its label is its text (repeatable).
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// A background prompt (repeatable).
    #[arg(long = "background", value_name = "TEXT")]
    pub backgrounds: Vec<String>,
    /// Leave out the shipped background prompts.
    #[arg(long)]
    pub no_default_background: bool,
    /// Score mode of every label (overrides the configuration's).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub mode: Option<crate::labels::ScoreMode>,
    /// `zscore` labels: windows before a score counts.
    #[arg(long, value_name = "N")]
    pub zscore_warmup_windows: Option<u64>,
    /// Window length in seconds (overrides the source's or the default).
    #[arg(long, value_name = "SECS")]
    pub window_secs: Option<f64>,
    /// Seconds between windows (overrides the source's or the default).
    #[arg(long, value_name = "SECS")]
    pub hop_secs: Option<f64>,
    /// Images or text lines per second in a sequence (default 1).
    #[arg(long, value_name = "HZ")]
    pub rate_hz: Option<f64>,
    /// Also write the snippet to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print JSON (`prompts`: each label's outcome; `upsert`: the calibrated prompts, as `prompts/set` takes them).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: BenchModelArgs,
}

impl CalibrateArgs {
    /// The same prompts, windows and towers as `label` arguments.
    fn as_label_args(&self) -> LabelArgs {
        LabelArgs {
            modality: self.modality,
            inputs: self.inputs.clone(),
            prompts: self.prompts.clone(),
            exemplars: Vec::new(),
            backgrounds: self.backgrounds.clone(),
            no_default_background: self.no_default_background,
            mode: self.mode,
            zscore_warmup_windows: self.zscore_warmup_windows,
            threshold: None,
            windows: true,
            window_secs: self.window_secs,
            hop_secs: self.hop_secs,
            rate_hz: self.rate_hz,
            timeline: None,
            json: self.json,
            model: self.model.clone(),
        }
    }
}

/// `sensebind eval`
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// `DIR` with one folder of files per class, or a CSV of file and label (a header line; the `filename`/`file`
    /// and `category`/`label`/`class` columns, else the first two).
    pub dataset: PathBuf,
    /// The modality of the files.
    #[arg(long, short)]
    pub modality: Modality,
    /// Where a CSV's files are (default: the CSV's folder; for ESC-50's meta/esc50.csv, the audio/ folder
    /// beside meta/).
    #[arg(long, value_name = "DIR")]
    pub media_dir: Option<PathBuf>,
    /// Prompt templates, `{}` standing for the class name (repeatable; several are ensembled). Default by
    /// modality: "a photo of a {}.", "the sound of a {}.", ...
    #[arg(long = "template", value_name = "TEXT")]
    pub templates: Vec<String>,
    /// `CLASS=FILE`: a media file defining the class, with its templates or, with `--exemplars-only`, instead.
    #[arg(long = "exemplar", value_name = "CLASS=FILE")]
    pub exemplars: Vec<String>,
    /// Classes with exemplars get no template texts.
    #[arg(long)]
    pub exemplars_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: BenchModelArgs,
}

/// `sensebind bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model directory (default: the bundled tiny models).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Towers to measure (repeatable; default: every tower in the directory).
    #[arg(long, short)]
    pub modality: Vec<Modality>,
    /// Batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub batch: Vec<usize>,
    /// Engine thread counts to compare (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub threads: Vec<usize>,
    /// Measuring time per configuration, seconds (at least --min-iters calls).
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Fewest timed calls per configuration.
    #[arg(long, default_value_t = 5)]
    pub min_iters: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// tract: batch sizes that get a plan optimised for that fixed size (0 = none; others use the symbolic-batch
    /// plan).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch_plans: Vec<usize>,
    #[command(flatten)]
    pub backends: BackendArgs,
}

/// Parses the command line, runs the verb and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            if let Err(io) = e.print() {
                tracing::warn!(error = %io, "Cannot print the usage message.");
            }
            return ExitCode::from(code);
        }
    };
    crate::telemetry::init(cli.log.as_deref(), default_log_filter(&cli.command));
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_error(&e);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Prints a verb's final error once, with its chain of causes, as `sensebind: error: ...`.
#[allow(clippy::print_stderr)]
fn report_error(e: &anyhow::Error) {
    eprintln!("sensebind: error: {e:#}");
}

fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Demo(_) => "warn,rumqttd=off",
        Command::Run(_) => "info",
        _ => "warn",
    }
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Demo(args) => demo(&args),
        Command::Run(args) => run_daemon(&args),
        Command::Check(args) => check(&args),
        Command::Schema => {
            print!("{}", crate::config::json_schema());
            Ok(EXIT_OK)
        }
        Command::Embed(args) => embed_cmd(&args),
        Command::Models {
            command:
                ModelsCommand::Verify {
                    dir,
                    threads,
                    json,
                    backends,
                },
        } => models_verify(dir.as_deref(), threads, json, &backends),
        Command::Bench(args) => bench_cmd(&args),
        Command::Preprocess(args) => preprocess_cmd(&args),
        Command::Tokenize(args) => tokenize_cmd(&args),
        Command::Label(args) => label_cmd(&args),
        Command::Eval(args) => eval_cmd(&args),
        Command::Calibrate(args) => calibrate_cmd(&args),
        Command::Evidence(args) => evidence::run(&args),
        Command::Devices(args) => {
            let mut found = crate::devices::list(&args.root);
            if args.root == std::path::Path::new("/") {
                crate::devices::query_drivers(&mut found);
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print!("{}", crate::devices::render(&found));
            }
            Ok(EXIT_OK)
        }
    }
}

/// The bundled tiny models: `$SENSEBIND_MODELS`, then `./models/imagebind-tiny`, then next to the executable
/// (`../share/sensebind/models/imagebind-tiny`), then the source tree this binary was built from.
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SENSEBIND_MODELS") {
        return PathBuf::from(dir);
    }
    let candidates = [
        Some(PathBuf::from("models/imagebind-tiny")),
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|p| p.join("../share/sensebind/models/imagebind-tiny"))),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/imagebind-tiny")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join(crate::encode::manifest::MANIFEST_FILE).is_file())
        .unwrap_or_else(|| PathBuf::from("models/imagebind-tiny"))
}

fn secs(v: Option<f64>, flag: &str) -> anyhow::Result<Option<std::time::Duration>> {
    v.map(|s| {
        if s.is_finite() && s >= 0.0 {
            Ok(std::time::Duration::from_secs_f64(s))
        } else {
            bail!("{flag} must be a non-negative number of seconds, got {s}")
        }
    })
    .transpose()
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sensebind-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Watches SIGINT and SIGTERM from now on and returns a future that completes on either. Installed first thing
/// (before the configuration is read or anything starts), so a signal during start-up is a clean stop with exit
/// 0, never the default action that kills the process.
fn install_signals(rt: &tokio::runtime::Runtime) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let _context = rt.enter();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _interrupted = tokio::signal::ctrl_c().await;
        })
    }
}

/// Watches SIGHUP from now on (before the configuration is read, so a SIGHUP during start-up is a reload once the
/// pipeline runs, never the default action that kills the process); each one notifies the returned `Notify`.
fn install_reload_signal(rt: &tokio::runtime::Runtime) -> anyhow::Result<std::sync::Arc<tokio::sync::Notify>> {
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let _context = rt.enter();
        let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let n = std::sync::Arc::clone(&notify);
        rt.spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: the configuration will be reloaded.");
                n.notify_one();
            }
        });
    }
    #[cfg(not(unix))]
    let _ = rt;
    Ok(notify)
}

/// Ends the runtime without waiting for blocking work abandoned at a stop during start-up (a tower still
/// loading): the process is exiting.
fn close_runtime(rt: tokio::runtime::Runtime) {
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
}

fn demo(args: &DemoArgs) -> anyhow::Result<u8> {
    let duration = secs(args.duration, "--duration")?;
    let rt = tokio_runtime()?;
    let stop = install_signals(&rt)?;
    let code = rt.block_on(crate::demo::run(duration, args.mqtt.clone(), stop));
    close_runtime(rt);
    code
}

fn run_daemon(args: &RunArgs) -> anyhow::Result<u8> {
    let rt = tokio_runtime()?;
    let stop = install_signals(&rt)?;
    let reload = install_reload_signal(&rt)?;
    let loaded = match crate::config::load(&args.config) {
        Ok(l) => l,
        Err(e) => {
            report_config_errors(&e);
            return Ok(EXIT_CONFIG);
        }
    };
    let options = crate::runtime::RunOptions {
        shutdown_timeout: secs(Some(args.shutdown_timeout_secs), "--shutdown-timeout-secs")?
            .unwrap_or(std::time::Duration::from_secs(10)),
        duration: secs(args.duration, "--duration")?,
        encoder_delay: None,
        notifier: crate::runtime::systemd::Notifier::from_env().map(std::sync::Arc::new),
        reload_signal: Some(reload),
    };
    let summary = rt.block_on(crate::runtime::run(&loaded, &options, stop));
    close_runtime(rt);
    let summary = summary?;
    Ok(if summary.stragglers.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILURE
    })
}

#[allow(clippy::print_stderr)]
fn report_config_errors(e: &crate::config::ConfigErrors) {
    eprint!("sensebind: {e}");
}

fn check(args: &CheckArgs) -> anyhow::Result<u8> {
    let options = crate::config::CheckOptions {
        environment: !args.no_environment,
    };
    match crate::config::load_with(&args.config, options) {
        Ok(l) => {
            let c = &l.config;
            println!(
                "{}: ok — device {}, {} sources, {} prompts, broker {}",
                args.config.display(),
                c.device.id,
                c.sources.len(),
                c.prompts.len(),
                if c.mqtt.enabled {
                    c.mqtt.url.as_str()
                } else {
                    "disabled"
                }
            );
            Ok(EXIT_OK)
        }
        Err(e) => {
            report_config_errors(&e);
            Ok(EXIT_CONFIG)
        }
    }
}

fn models_verify(dir: Option<&Path>, threads: usize, json: bool, backends: &BackendArgs) -> anyhow::Result<u8> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_model_dir);
    let mut report: Option<crate::encode::verify::VerifyReport> = None;
    let mut skipped: Vec<(Backend, String)> = Vec::new();
    let mut unavailable_asked = false;
    for (backend, status) in backends.to_compare() {
        if let Err(why) = status {
            if !backends.backends.is_empty() && backend != Backend::Auto {
                unavailable_asked = true;
            }
            skipped.push((backend, why));
            continue;
        }
        let options = backends.options(backend, threads);
        let one = verify_dir(&dir, &options).with_context(|| format!("verifying {}", dir.display()))?;
        match &mut report {
            Some(r) => r.towers.extend(one.towers),
            None => report = Some(one),
        }
    }
    let Some(report) = report else {
        let reasons: Vec<String> = skipped
            .iter()
            .map(|(backend, why)| format!("the {backend} backend is unavailable: {why}"))
            .collect();
        bail!("{}", reasons.join("; "));
    };
    if json {
        let mut doc = serde_json::to_value(&report)?;
        doc["skipped"] = skipped
            .iter()
            .map(|(backend, why)| serde_json::json!({ "backend": backend, "reason": why }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("model {} ({})", report.model, dir.display());
        println!(
            "{} bpe      sha256 {}",
            if report.bpe_ok { "PASS" } else { "FAIL" },
            if report.bpe_ok { "ok" } else { "mismatch or missing" }
        );
        for t in &report.towers {
            let err = match (t.precision, t.max_abs_error, t.min_cosine) {
                (crate::encode::Precision::Int8, Some(e), Some(c)) => format!(
                    "int8: cosine {c:.4} to f32 (at least {}), max-abs {e:.2e}, {} rows",
                    crate::encode::verify::INT8_MIN_COSINE,
                    t.rows
                ),
                (_, Some(e), _) => format!("max-abs {e:.2e} (tolerance {:.0e}, {} rows)", t.tolerance, t.rows),
                _ => String::new(),
            };
            println!(
                "{} {:<8} {:<11} {err} {}",
                if t.passed { "PASS" } else { "FAIL" },
                t.modality.as_str(),
                t.backend,
                if t.passed { String::new() } else { t.detail.clone() }
            );
        }
        for (backend, why) in &skipped {
            println!("SKIP {backend} backend: {why}");
        }
    }
    Ok(if report.passed() && !unavailable_asked {
        EXIT_OK
    } else {
        EXIT_FAILURE
    })
}

/// Loads an encoder from a model directory or a bare ONNX file.
pub fn load_encoder(
    model: Option<&Path>,
    modality: Modality,
    options: &EngineOptions,
) -> anyhow::Result<std::sync::Arc<dyn Encoder>> {
    let path = model.map(Path::to_path_buf).unwrap_or_else(default_model_dir);
    let encoder = if path.is_dir() {
        let dir = ModelDir::open(&path)?;
        engine::load(ModelSource::Dir(&dir), modality, options)?
    } else {
        engine::load(ModelSource::Onnx(&path), modality, options)?
    };
    Ok(encoder)
}

fn embed_cmd(args: &EmbedArgs) -> anyhow::Result<u8> {
    let out_kind = OutputKind::from_path(&args.out)?;
    let options = args.backends.options(args.backends.single()?, args.threads);
    let encoder = load_encoder(args.model.as_deref(), args.modality, &options)?;
    let mut rows: Vec<(String, usize)> = Vec::new();
    let mut embeddings: Vec<f32> = Vec::new();
    let dim = encoder.info().output_dim;
    let inputs = EmbedInputs::new(args)?;
    for input in &args.inputs {
        let name = input.display().to_string();
        let (tensor, unbatched) = inputs.read(input).with_context(|| format!("embedding {name}"))?;
        let emb = embed_any(encoder.as_ref(), tensor, unbatched || args.unbatched, args.max_batch)
            .with_context(|| format!("embedding {name}"))?;
        let n = emb.shape()[0];
        embeddings.extend_from_slice(emb.as_f32().unwrap_or_default());
        rows.extend((0..n).map(|i| (name.clone(), i)));
    }
    let result = Tensor::from_f32(vec![rows.len(), dim], embeddings)?;
    match out_kind {
        OutputKind::Npy => npy::write(&args.out, &result)?,
        OutputKind::Json => {
            let values = result.as_f32().unwrap_or_default();
            let doc = serde_json::json!({
                "schema": "embeddings/1",
                "modality": args.modality,
                "model": encoder.info().model_id,
                "backend": encoder.backend(),
                "dim": dim,
                "rows": rows.iter().enumerate().map(|(i, (input, index))| serde_json::json!({
                    "input": input,
                    "index": index,
                    "embedding": &values[i * dim..(i + 1) * dim],
                })).collect::<Vec<_>>(),
            });
            let text = serde_json::to_string(&doc)?;
            std::fs::write(&args.out, text).with_context(|| format!("cannot write {}", args.out.display()))?;
        }
    }
    println!(
        "wrote {} embeddings of dimension {dim} ({}, {}) to {}",
        rows.len(),
        encoder.info().model_id,
        encoder.backend(),
        args.out.display()
    );
    Ok(EXIT_OK)
}

#[derive(Debug, Clone, Copy)]
enum OutputKind {
    Npy,
    Json,
}

impl OutputKind {
    fn from_path(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => Ok(Self::Npy),
            Some("json") => Ok(Self::Json),
            _ => bail!("--out {} must end in .npy or .json", path.display()),
        }
    }
}

/// Reads `embed`'s inputs: texts, `.npy` tensors or media files.
struct EmbedInputs {
    modality: Modality,
    text: bool,
    config: PreprocessConfig,
    tokenizer: Option<Tokenizer>,
}

impl EmbedInputs {
    fn new(args: &EmbedArgs) -> anyhow::Result<Self> {
        if args.text && args.modality != Modality::Text {
            bail!(
                "--text embeds prompts and needs --modality text (got --modality {})",
                args.modality
            );
        }
        let config = load_params(&args.params)?;
        let tokenizer = if args.modality == Modality::Text {
            let vocab_dir = args
                .params
                .vocab_model
                .clone()
                .or_else(|| args.model.clone().filter(|p| p.is_dir()))
                .unwrap_or_else(default_model_dir);
            Some(load_tokenizer(&vocab_dir)?)
        } else {
            None
        };
        Ok(Self {
            modality: args.modality,
            text: args.text,
            config,
            tokenizer,
        })
    }

    /// The tensor for one input, and whether it lacks the batch dimension.
    fn read(&self, input: &Path) -> anyhow::Result<(Tensor, bool)> {
        if self.text {
            let tokenizer = self.tokenizer.as_ref().context("no tokenizer")?;
            let text = input.to_string_lossy();
            return Ok((
                Tensor::from_i64(vec![1, CONTEXT_LENGTH], tokenizer.tokenize(&text).to_vec())?,
                false,
            ));
        }
        if input.extension().and_then(|e| e.to_str()) == Some("npy") {
            return Ok((npy::read(input)?, false));
        }
        let tensor = preprocess::load(self.modality, input, &self.config, self.tokenizer.as_ref())?;
        // Text files give [N, 77] (already a batch); everything else is one item.
        Ok((tensor, self.modality != Modality::Text))
    }
}

/// Loads the preprocessing parameters: a TOML file, then command-line overrides; validates them.
fn load_params(args: &ParamsArgs) -> anyhow::Result<PreprocessConfig> {
    let mut config = match &args.params {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<PreprocessConfig>(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => PreprocessConfig::default(),
    };
    if let Some(rate) = args.imu_rate_hz {
        config.imu.rate_hz = Some(rate);
    }
    let mut issues = crate::issues::Issues::new();
    config.depth.validate(&mut issues.scope("depth"));
    config.thermal.validate(&mut issues.scope("thermal"));
    config.imu.validate(&mut issues.scope("imu"));
    if !issues.is_empty() {
        let errors: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
        bail!("invalid preprocessing parameters:\n  {}", errors.join("\n  "));
    }
    Ok(config)
}

/// The tokenizer of a model directory (its manifest's BPE file, checksum verified).
fn load_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    let model_dir = ModelDir::open(dir)?;
    model_dir.verify_bpe_checksum()?;
    Ok(Tokenizer::from_file(&model_dir.path(&model_dir.manifest().bpe))?)
}

fn preprocess_cmd(args: &PreprocessArgs) -> anyhow::Result<u8> {
    if args.out.extension().and_then(|e| e.to_str()) != Some("npy") {
        bail!("--out {} must end in .npy", args.out.display());
    }
    let config = load_params(&args.params)?;
    let tokenizer = if args.modality == Modality::Text {
        Some(load_tokenizer(
            &args.params.vocab_model.clone().unwrap_or_else(default_model_dir),
        )?)
    } else {
        None
    };
    let tensor = preprocess::load(args.modality, &args.input, &config, tokenizer.as_ref())?;
    npy::write(&args.out, &tensor)?;
    println!(
        "wrote {} {:?} to {}",
        tensor.dtype(),
        tensor.shape(),
        args.out.display()
    );
    Ok(EXIT_OK)
}

fn tokenize_cmd(args: &TokenizeArgs) -> anyhow::Result<u8> {
    let tokenizer = load_tokenizer(&args.model.clone().unwrap_or_else(default_model_dir))?;
    let ids: Vec<[i64; CONTEXT_LENGTH]> = args.texts.iter().map(|t| tokenizer.tokenize(t)).collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&ids.iter().map(|a| a.to_vec()).collect::<Vec<_>>())?
        );
    } else {
        for row in &ids {
            println!("{}", row.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
        }
    }
    Ok(EXIT_OK)
}

/// Embeds a tensor that may lack its batch dimension.
fn embed_any(encoder: &dyn Encoder, tensor: Tensor, unbatched: bool, max_batch: usize) -> anyhow::Result<Tensor> {
    let with_batch = |t: Tensor| {
        let mut shape = vec![1];
        shape.extend_from_slice(t.shape());
        t.reshape(shape)
    };
    if unbatched {
        return Ok(embed(encoder, &with_batch(tensor)?, max_batch)?);
    }
    match embed(encoder, &tensor, max_batch) {
        Ok(e) => Ok(e),
        Err(first @ crate::encode::EncodeError::InputShape { .. }) => {
            // No batch-first reading fits; try it as one item without the batch dimension.
            embed(encoder, &with_batch(tensor)?, max_batch).map_err(|_| first.into())
        }
        Err(e) => Err(e.into()),
    }
}

fn bench_cmd(args: &BenchArgs) -> anyhow::Result<u8> {
    let dir_path = args.model.clone().unwrap_or_else(default_model_dir);
    let dir = ModelDir::open(&dir_path)?;
    let modalities = if args.modality.is_empty() {
        dir.modalities()
    } else {
        args.modality.clone()
    };
    let options = BenchOptions {
        target: std::time::Duration::from_secs_f64(args.secs.max(0.0)),
        min_iters: args.min_iters.max(1),
        ..BenchOptions::default()
    };
    if !args.json {
        println!("model {} ({})", dir.manifest().name, dir_path.display());
        println!(
            "{:<8} {:<11} {:<9} {:>7} {:>5} {:>6} {:>10} {:>10} {:>10}",
            "tower", "backend", "precision", "threads", "batch", "iters", "p50 ms", "p95 ms", "clips/s"
        );
    }
    let backends = args.backends.to_compare();
    for &modality in &modalities {
        for (backend, status) in &backends {
            if let Err(why) = status {
                if modality == modalities[0] {
                    tracing::warn!(backend = %backend, reason = %why, "Skipping a backend that cannot run here.");
                }
                continue;
            }
            for &threads in &args.threads {
                // wgpu plans every benched batch size, so a batch of 8 is one call, not two of 4.
                let mut batch_plans = args.batch_plans.clone();
                if *backend == Backend::Wgpu {
                    batch_plans.extend(args.batch.iter().copied());
                }
                let engine_options = EngineOptions {
                    batch_plans,
                    max_batch: args.batch.iter().copied().max().unwrap_or(1),
                    ..args.backends.options(*backend, threads)
                };
                let encoder = engine::load(ModelSource::Dir(&dir), modality, &engine_options)?;
                let precision = dir.tower(modality).map_or("f32", |t| t.precision.as_str());
                for &batch in &args.batch {
                    let mut row = bench_encoder(encoder.as_ref(), batch.max(1), threads, &options)?;
                    row.precision = precision.to_owned();
                    if args.json {
                        println!("{}", serde_json::to_string(&row)?);
                    } else {
                        println!(
                            "{:<8} {:<11} {:<9} {:>7} {:>5} {:>6} {:>10.2} {:>10.2} {:>10.1}",
                            row.modality,
                            row.backend,
                            row.precision,
                            row.threads,
                            row.batch,
                            row.iters,
                            row.p50_ms,
                            row.p95_ms,
                            row.clips_per_s
                        );
                    }
                }
            }
        }
    }
    Ok(EXIT_OK)
}

/// What `label` and `eval` run with.
struct BenchContext {
    setup: crate::zeroshot::Setup,
    /// The configuration's prompts (none with `--model`).
    prompts: Vec<crate::labels::PromptConfig>,
    /// The configuration's `[events]` (the defaults with `--model`).
    events: crate::events::EventsConfig,
    spec: crate::window::WindowSpec,
    rate_hz: f64,
}

/// The towers, preprocessing, prompts and window settings of `--config` or `--model`. `Ok(Err(code))`: the
/// configuration is invalid (its errors are printed).
fn bench_context(
    args: &BenchModelArgs,
    modality: Modality,
    (threshold, mode): (f32, crate::labels::ScoreMode),
) -> anyhow::Result<Result<BenchContext, u8>> {
    use crate::labels::background::LabelsConfig;
    use crate::window::WindowSpec;
    use crate::zeroshot::Setup;
    let Some(path) = &args.config else {
        let options = args.backends.options(args.backends.single()?, args.threads);
        let params = ParamsArgs {
            params: args.params.clone(),
            imu_rate_hz: None,
            vocab_model: None,
        };
        return Ok(Ok(BenchContext {
            setup: Setup {
                model_dir: args.model.clone().unwrap_or_else(default_model_dir),
                engine: options.clone(),
                text_engine: options,
                preprocess: load_params(&params)?,
                source: modality.to_string(),
                max_batch: args.max_batch,
                exemplar_threshold: threshold,
                exemplar_mode: mode,
                background: LabelsConfig::default().background(&[modality].into()),
                labels: LabelsConfig::default(),
                config_dir: std::env::current_dir().unwrap_or_default(),
            },
            prompts: Vec::new(),
            events: crate::events::EventsConfig::default(),
            spec: WindowSpec::for_modality(modality, None, None),
            rate_hz: 1.0,
        }));
    };
    let options = crate::config::CheckOptions { environment: false };
    let loaded = match crate::config::load_with(path, options) {
        Ok(l) => l,
        Err(e) => {
            report_config_errors(&e);
            return Ok(Err(EXIT_CONFIG));
        }
    };
    let c = &loaded.config;
    let source = match &args.source {
        Some(name) => {
            let s = c
                .sources
                .iter()
                .find(|s| s.name() == name)
                .with_context(|| format!("{}: no source is named {name:?}", path.display()))?;
            if s.modality() != modality {
                bail!(
                    "{}: source {name:?} is a {} source, not {modality}",
                    path.display(),
                    s.modality()
                );
            }
            Some(s)
        }
        None => c.sources.iter().find(|s| s.modality() == modality),
    };
    let rate_hz = match source {
        Some(crate::sources::config::SourceConfig::Replay(r)) => r.rate_hz.unwrap_or(1.0),
        _ => 1.0,
    };
    Ok(Ok(BenchContext {
        setup: Setup {
            model_dir: loaded.resolve(&c.models.dir),
            engine: loaded.engine_options(modality),
            text_engine: loaded.engine_options(Modality::Text),
            preprocess: c.preprocess.clone(),
            source: source.map_or_else(|| modality.to_string(), |s| s.name().to_owned()),
            max_batch: args.max_batch,
            exemplar_threshold: threshold,
            exemplar_mode: mode,
            // As the daemon: the shipped sets of every source modality (runtime::plan).
            background: c.labels.background(&c.sources.iter().map(|s| s.modality()).collect()),
            labels: c.labels.clone(),
            config_dir: loaded.base.clone(),
        },
        prompts: c.prompts.clone(),
        events: c.events.clone(),
        spec: source.map_or_else(|| WindowSpec::for_modality(modality, None, None), |s| s.window()),
        rate_hz,
    }))
}

/// The window settings after `--window-secs`/`--hop-secs`, checked as a source's are. A new window length without
/// a hop takes the default hop for it.
fn window_overrides(cx: &BenchContext, args: &LabelArgs) -> anyhow::Result<(crate::window::WindowSpec, f64)> {
    let mut spec = cx.spec;
    if let Some(w) = args.window_secs {
        spec = crate::window::WindowSpec::for_modality(args.modality, Some(w), None);
    }
    if let Some(h) = args.hop_secs {
        spec.hop_secs = h;
    }
    if !(spec.window_secs.is_finite() && spec.window_secs > 0.0 && spec.window_secs <= 600.0) {
        bail!("the window must be between 0 and 600 seconds, got {}", spec.window_secs);
    }
    if !(spec.hop_secs.is_finite() && spec.hop_secs >= 0.01 && spec.hop_secs <= 3600.0) {
        bail!("the hop must be between 0.01 and 3600 seconds, got {}", spec.hop_secs);
    }
    let rate_hz = args.rate_hz.unwrap_or(cx.rate_hz);
    if !(rate_hz.is_finite() && rate_hz > 0.0 && rate_hz <= 1000.0) {
        bail!("--rate-hz must be between 0 and 1000, got {rate_hz}");
    }
    Ok((spec, rate_hz))
}

/// `label`'s prompts: the configuration's (their modes replaced by `--mode`), then `--prompt` and `--background`.
fn label_prompts(args: &LabelArgs, cx: &mut BenchContext) -> anyhow::Result<()> {
    use crate::labels::{PromptConfig, PromptRole, ScoreMode};
    let mode = args.mode.unwrap_or(ScoreMode::Softmax);
    if let Some(mode) = args.mode {
        cx.prompts.iter_mut().for_each(|p| p.mode = mode);
    }
    let threshold = args.threshold.unwrap_or(0.5);
    if !mode.threshold_range().contains(&threshold) {
        let range = mode.threshold_range();
        bail!(
            "--threshold must be between {} and {} in mode {}, got {threshold}",
            range.start(),
            range.end(),
            mode.as_str()
        );
    }
    for (text, role) in args
        .prompts
        .iter()
        .map(|t| (t, PromptRole::Label))
        .chain(args.backgrounds.iter().map(|t| (t, PromptRole::Background)))
    {
        if text.trim().is_empty() || text.len() > 2000 {
            bail!("{text:?}: a prompt is 1 to 2000 bytes of text");
        }
        cx.prompts.push(PromptConfig {
            threshold,
            mode,
            role,
            ..PromptConfig::new(text, text)
        });
    }
    cx.setup.exemplar_threshold = threshold;
    cx.setup.exemplar_mode = mode;
    if args.no_default_background {
        cx.setup.background.clear();
    }
    if let Some(n) = args.zscore_warmup_windows {
        if !(2..=1_000_000).contains(&n) {
            bail!("--zscore-warmup-windows must be between 2 and 1000000, got {n}");
        }
        cx.setup.labels.zscore_warmup_windows = n;
    }
    Ok(())
}

fn label_cmd(args: &LabelArgs) -> anyhow::Result<u8> {
    use crate::labels::ScoreMode;
    use crate::zeroshot::{Bench, Exemplar, report, timeline};
    let mut cx = match bench_context(&args.model, args.modality, (0.5, ScoreMode::Softmax))? {
        Ok(cx) => cx,
        Err(code) => return Ok(code),
    };
    let (spec, rate_hz) = window_overrides(&cx, args)?;
    label_prompts(args, &mut cx)?;
    let exemplars: Vec<Exemplar> = args.exemplars.iter().map(|e| Exemplar::parse(e)).collect();
    if cx.prompts.is_empty() && exemplars.is_empty() {
        bail!("no prompts: give --prompt TEXT or --exemplar FILE, or a --config with [[prompts]]");
    }
    let bench = Bench::new(args.modality, &cx.setup, &cx.prompts, &exemplars)?;
    let prompts: Vec<(String, f32, ScoreMode)> = bench
        .prompts()
        .iter()
        .map(|p| (p.id.clone(), p.config.threshold, p.config.mode))
        .collect();
    if prompts.is_empty() {
        bail!(
            "none of the labels applies to {} windows of source {:?} (their role, modalities and sources keys)",
            args.modality,
            cx.setup.source
        );
    }
    if bench.softmax_size() == 1 && prompts.iter().any(|p| p.2 == ScoreMode::Softmax) {
        tracing::warn!("With a single prompt every softmax score is 1; add another prompt or a --background.");
    }
    let labels: Vec<String> = prompts.iter().map(|p| p.0.clone()).collect();
    let mut docs = Vec::new();
    // Whole files in zscore mode: each file is one window of the same sensor, in the order given.
    let mut zscores = crate::labels::zscore::ZScores::default();
    for input in &args.inputs {
        let name = input.display().to_string();
        if !(args.windows || args.timeline.is_some()) {
            let scores = bench.label_file(input, &mut zscores)?;
            if args.json {
                docs.push(serde_json::to_value(report::file_json(&name, &scores))?);
            } else {
                println!("{}", report::file_table(&name, &scores));
            }
            continue;
        }
        let windows = bench.label_windows(input, spec, rate_hz)?;
        if let Some(png) = &args.timeline {
            let path = timeline_path(png, input, args.inputs.len());
            let title = format!(
                "{name}: {} windows of {} s every {} s",
                args.modality, spec.window_secs, spec.hop_secs
            );
            let duration = windows.iter().map(|w| w.t1_secs).fold(0.0, f64::max);
            timeline::write(&path, &title, &timeline::series(&windows, &prompts), duration)?;
            if !args.json {
                println!("wrote {}", path.display());
            }
        }
        if args.json {
            docs.push(serde_json::to_value(report::windows_json(&name, &windows))?);
        } else {
            println!("{}", report::windows_table(&name, &windows, &labels));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    }
    Ok(EXIT_OK)
}

fn calibrate_cmd(args: &CalibrateArgs) -> anyhow::Result<u8> {
    use crate::zeroshot::Bench;
    use crate::zeroshot::calibrate::{self, Series};
    use std::collections::BTreeMap;
    if !(args.false_alarms_per_hour.is_finite() && args.false_alarms_per_hour >= 0.0) {
        bail!(
            "--false-alarms-per-hour must be 0 or more, got {}",
            args.false_alarms_per_hour
        );
    }
    let largs = args.as_label_args();
    let mut cx = match bench_context(&largs.model, args.modality, (0.5, crate::labels::ScoreMode::Softmax))? {
        Ok(cx) => cx,
        Err(code) => return Ok(code),
    };
    let (spec, rate_hz) = window_overrides(&cx, &largs)?;
    label_prompts(&largs, &mut cx)?;
    let bench = Bench::new(args.modality, &cx.setup, &cx.prompts, &[])?;
    let labels: Vec<crate::labels::PromptConfig> = bench.prompts().iter().map(|p| p.config.clone()).collect();
    if labels.is_empty() {
        bail!(
            "no label applies to {} windows of source {:?}: give --prompt TEXT or a --config with [[prompts]]",
            args.modality,
            cx.setup.source
        );
    }
    let mut series: BTreeMap<String, Vec<Series>> = BTreeMap::new();
    let mut secs = 0.0;
    for input in &args.inputs {
        let windows = bench.label_windows(input, spec, rate_hz)?;
        secs += windows.iter().map(|w| w.t1_secs).fold(0.0, f64::max);
        for p in &labels {
            let s: Series = windows
                .iter()
                .filter_map(|w| w.scores.iter().find(|x| x.label == p.id).map(|x| (w.t1_secs, x.score)))
                .collect();
            series.entry(p.id.clone()).or_default().push(s);
        }
    }
    let hours = secs / 3600.0;
    let allowed = calibrate::allowed_events(args.false_alarms_per_hour, hours);
    let results: Vec<_> = labels
        .iter()
        .map(|p| {
            let c = calibrate::calibrate(p, &cx.events, series.get(&p.id).map_or(&[][..], |v| v), allowed);
            let calibrated = calibrate::with_threshold(p, c.threshold);
            (c, calibrated)
        })
        .collect();
    let text = if args.json {
        // A struct rather than `json!`, which would widen the f32 thresholds (0.0010000000474974513).
        #[derive(serde::Serialize)]
        struct Report<'a> {
            recordings: usize,
            hours: f64,
            false_alarms_per_hour: f64,
            allowed_events: usize,
            prompts: Vec<&'a calibrate::Calibrated>,
            upsert: Vec<&'a crate::labels::PromptConfig>,
        }
        serde_json::to_string_pretty(&Report {
            recordings: args.inputs.len(),
            hours,
            false_alarms_per_hour: args.false_alarms_per_hour,
            allowed_events: allowed,
            prompts: results.iter().map(|r| &r.0).collect(),
            upsert: results.iter().map(|r| &r.1).collect(),
        })?
    } else {
        calibrate::snippet(
            &results,
            (args.inputs.len(), hours),
            (args.false_alarms_per_hour, allowed),
        )?
    };
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{text}\n")).with_context(|| format!("writing {}", out.display()))?;
    }
    let unreached: Vec<&str> = results
        .iter()
        .filter(|r| !r.0.reachable)
        .map(|r| r.0.id.as_str())
        .collect();
    if unreached.is_empty() {
        Ok(EXIT_OK)
    } else {
        tracing::error!(labels = ?unreached, "No threshold reaches the target for these labels: even the highest starts too many events on the recordings.");
        Ok(EXIT_FAILURE)
    }
}

/// The timeline of `input`: `png` itself for a single input, else `png`'s stem, `-`, the input's stem, `.png`.
fn timeline_path(png: &Path, input: &Path, inputs: usize) -> PathBuf {
    if inputs <= 1 {
        return png.to_path_buf();
    }
    let stem = png
        .file_stem()
        .map_or_else(|| "timeline".into(), |s| s.to_string_lossy().into_owned());
    let input_stem = input
        .file_stem()
        .map_or_else(|| "input".into(), |s| s.to_string_lossy().into_owned());
    png.with_file_name(format!("{stem}-{input_stem}.png"))
}

/// `eval`'s default prompt template for a modality.
fn default_template(modality: Modality) -> &'static str {
    match modality {
        Modality::Vision => "a photo of a {}.",
        Modality::Audio => "the sound of a {}.",
        Modality::Depth => "a depth photo of a {}.",
        Modality::Thermal => "a thermal photo of a {}.",
        Modality::Imu | Modality::Text => "{}",
    }
}

fn eval_cmd(args: &EvalArgs) -> anyhow::Result<u8> {
    use crate::zeroshot::{Bench, Exemplar, eval};
    let mut cx = match bench_context(&args.model, args.modality, (0.5, crate::labels::ScoreMode::Softmax))? {
        Ok(cx) => cx,
        Err(code) => return Ok(code),
    };
    // Classes compete only with each other, as in ImageBind's zero-shot evaluation.
    cx.setup.background.clear();
    let items = if args.dataset.is_dir() {
        eval::read_folder(&args.dataset)?
    } else {
        let media = args
            .media_dir
            .clone()
            .unwrap_or_else(|| default_media_dir(&args.dataset));
        eval::read_csv(&args.dataset, &media)?
    };
    let mut exemplars = Vec::new();
    for arg in &args.exemplars {
        let e = Exemplar::parse(arg);
        if e.label.is_none() {
            bail!("--exemplar {arg}: give the class it defines, CLASS=FILE");
        }
        exemplars.push(e);
    }
    let templates = if args.templates.is_empty() {
        vec![default_template(args.modality).to_owned()]
    } else {
        args.templates.clone()
    };
    let without: Vec<String> = if args.exemplars_only {
        exemplars.iter().map(Exemplar::label).collect()
    } else {
        Vec::new()
    };
    let prompts = eval::class_prompts(&eval::classes(&items), &templates, &without);
    let bench = Bench::new(args.modality, &cx.setup, &prompts, &exemplars)?;
    let report = eval::evaluate(&bench, &items)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", eval::render(&report));
    }
    Ok(EXIT_OK)
}

/// A CSV's media folder: ESC-50's `audio/` beside its `meta/` folder, else the CSV's own folder.
fn default_media_dir(csv: &Path) -> PathBuf {
    let dir = csv.parent().unwrap_or(Path::new(".")).to_path_buf();
    let audio = dir.join("../audio");
    if dir.file_name().is_some_and(|n| n == "meta") && audio.is_dir() {
        audio
    } else {
        dir
    }
}
