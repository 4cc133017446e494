//! Bad input to the preprocessing: every case is a clear error that names the file and the problem, a non-zero
//! exit, and no panic; property tests throw random and mutated bytes at every decoder.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proptest::prelude::*;
use sensebind::preprocess::image::{decode_gray, decode_rgb};
use sensebind::preprocess::imu::{ImuConfig, parse as parse_imu};
use sensebind::preprocess::text::Tokenizer;
use sensebind::preprocess::{PreprocessConfig, audio, load};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn media(name: &str) -> PathBuf {
    root().join("tests/fixtures/media").join(name)
}

fn preprocess(modality: &str, input: &Path, out_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(["preprocess", "--modality", modality])
        .arg(input)
        .arg("--out")
        .arg(out_dir.join("out.npy"))
        .output()
        .unwrap()
}

fn assert_clean_failure(out: &Output, needles: &[&str]) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "expected exit 1:\n{all}");
    assert!(!all.contains("panicked"), "panicked:\n{all}");
    for n in needles {
        assert!(all.contains(n), "missing {n:?} in:\n{all}");
    }
}

/// A PCM16 WAV with `channels` channels of silence.
fn wav(channels: u16, rate: u32, frames: usize) -> Vec<u8> {
    let data_len = frames * usize::from(channels) * 2;
    let mut v = Vec::new();
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&channels.to_le_bytes());
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    v.extend_from_slice(&(channels * 2).to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&(data_len as u32).to_le_bytes());
    v.resize(v.len() + data_len, 0);
    v
}

#[test]
fn truncated_png_and_jpeg_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let png = std::fs::read(media("chelsea.png")).unwrap();
    let p = tmp.path().join("cut.png");
    std::fs::write(&p, &png[..png.len() / 2]).unwrap();
    assert_clean_failure(&preprocess("vision", &p, tmp.path()), &["cut.png", "PNG"]);
    let jpg = std::fs::read(media("franz-kafka.jpg")).unwrap();
    let p = tmp.path().join("cut.jpg");
    std::fs::write(&p, &jpg[..200]).unwrap();
    assert_clean_failure(&preprocess("vision", &p, tmp.path()), &["cut.jpg", "JPEG"]);
}

#[test]
fn empty_short_and_multichannel_audio_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    assert_clean_failure(
        &preprocess("audio", &empty, tmp.path()),
        &["empty.wav", "empty (0 bytes)"],
    );
    let header_only = tmp.path().join("header.wav");
    std::fs::write(&header_only, wav(1, 16000, 0)).unwrap();
    assert_clean_failure(
        &preprocess("audio", &header_only, tmp.path()),
        &["header.wav", "no samples"],
    );
    let short = tmp.path().join("short.wav");
    std::fs::write(&short, wav(1, 16000, 320)).unwrap(); // 20 ms
    assert_clean_failure(
        &preprocess("audio", &short, tmp.path()),
        &["short.wav", "20.0 ms", "at least 25 ms"],
    );
    let eight = tmp.path().join("eight.wav");
    std::fs::write(&eight, wav(8, 16000, 16000)).unwrap();
    assert_clean_failure(
        &preprocess("audio", &eight, tmp.path()),
        &["eight.wav", "8 channels", "mono or stereo"],
    );
    // A corrupt header's sample rate must not make the resampler allocate gigabytes (found by the fuzz test below).
    for (file, rate, needle) in [("slow.wav", 1, "outside"), ("odd.wav", 44_101, "not a standard rate")] {
        let p = tmp.path().join(file);
        std::fs::write(&p, wav(1, rate, 32_000)).unwrap();
        assert_clean_failure(
            &preprocess("audio", &p, tmp.path()),
            &[file, &format!("{rate} Hz"), needle],
        );
    }
    let garbage = tmp.path().join("noise.flac");
    std::fs::write(
        &garbage,
        (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    assert_clean_failure(&preprocess("audio", &garbage, tmp.path()), &["noise.flac"]);
}

#[test]
fn videos_without_frames_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    // Audio only: ffmpeg writes a valid MP4 that holds no video stream.
    let audio_only = tmp.path().join("audio_only.mp4");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=16000:cl=mono",
            "-t",
            "1",
            "-c:a",
            "aac",
        ])
        .arg(&audio_only)
        .status()
        .expect("ffmpeg is installed by tools/test");
    assert!(made.success());
    assert_clean_failure(
        &preprocess("vision", &audio_only, tmp.path()),
        &["audio_only.mp4", "no video stream"],
    );
    // Cut before the index: ffprobe cannot read it.
    let bytes = std::fs::read(media("carphone_pristine.mp4")).unwrap();
    let cut = tmp.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..4096]).unwrap();
    assert_clean_failure(&preprocess("vision", &cut, tmp.path()), &["cut.mp4"]);
    let junk = tmp.path().join("junk.mkv");
    std::fs::write(&junk, b"this is not a video at all").unwrap();
    assert_clean_failure(&preprocess("vision", &junk, tmp.path()), &["junk.mkv"]);
}

#[test]
fn nan_depth_and_bad_imu_csv_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut v = vec![1.5f32; 300 * 200];
    v[200 * 3 + 7] = f32::NAN;
    let nan = tmp.path().join("nan.npy");
    sensebind::npy::write(&nan, &sensebind::tensor::Tensor::from_f32(vec![200, 300], v).unwrap()).unwrap();
    assert_clean_failure(
        &preprocess("depth", &nan, tmp.path()),
        &["nan.npy", "NaN", "row 2, column 7"],
    );

    let missing = tmp.path().join("missing.csv");
    std::fs::write(&missing, "time,acc_x,acc_y,acc_z,gyro_x,gyro_y\n0,1,2,3,4,5\n").unwrap();
    assert_clean_failure(
        &preprocess("imu", &missing, tmp.path()),
        &["missing.csv", "no gyro z column"],
    );
    let text = tmp.path().join("text.csv");
    std::fs::write(
        &text,
        "time,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n0,1,2,3,4,5,6\n0.01,1,2,oops,4,5,6\n",
    )
    .unwrap();
    assert_clean_failure(
        &preprocess("imu", &text, tmp.path()),
        &["text.csv", "line 3, column 4", "\"oops\""],
    );
    let no_time = tmp.path().join("no_time.csv");
    std::fs::write(&no_time, "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n1,2,3,4,5,6\n").unwrap();
    assert_clean_failure(&preprocess("imu", &no_time, tmp.path()), &["no_time.csv", "rate_hz"]);
}

#[test]
fn bad_parameters_are_reported_with_their_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let params = tmp.path().join("params.toml");
    std::fs::write(
        &params,
        "[depth]\nstd = 0.0\n[imu]\nwindow_secs = -1.0\nrate_hz = 0.0\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(["preprocess", "-m", "depth"])
        .arg(media("motorcycle_depth_mm_uint16.png"))
        .arg("--params")
        .arg(&params)
        .arg("--out")
        .arg(tmp.path().join("o.npy"))
        .output()
        .unwrap();
    assert_clean_failure(
        &out,
        &["depth.mean: std must be positive", "imu.window_secs", "imu.rate_hz"],
    );
    std::fs::write(&params, "[depth]\nbaseline = 0.1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(["preprocess", "-m", "depth"])
        .arg(media("motorcycle_depth_mm_uint16.png"))
        .arg("--params")
        .arg(&params)
        .arg("--out")
        .arg(tmp.path().join("o.npy"))
        .output()
        .unwrap();
    assert_clean_failure(&out, &["params.toml", "baseline"]);
}

#[test]
fn every_modality_preprocesses_a_real_recording() {
    let cfg = PreprocessConfig {
        imu: ImuConfig {
            rate_hz: Some(120.0),
            acc_columns: vec![],
            ..ImuConfig::default()
        },
        ..PreprocessConfig::default()
    };
    let cases = [
        (
            sensebind::modality::Modality::Depth,
            "motorcycle_depth_mm_uint16.png",
            vec![1, 224, 224],
        ),
        (
            sensebind::modality::Modality::Thermal,
            "flir_e60_moving_car_CC0.raw16.png",
            vec![1, 224, 224],
        ),
        (
            sensebind::modality::Modality::Thermal,
            "flir_e60_moving_car_CC0.jpg",
            vec![1, 224, 224],
        ),
        (
            sensebind::modality::Modality::Imu,
            "xsens_walking_lowerLeg_120Hz.txt",
            vec![6, 2000],
        ),
    ];
    for (m, file, shape) in cases {
        let t = load(m, &media(file), &cfg, None).unwrap();
        assert_eq!(t.shape(), &shape[..], "{file}");
        assert!(t.first_non_finite().is_none(), "{file}");
    }
}

fn valid_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("png", std::fs::read(media("camera.png")).unwrap()[..20_000].to_vec()),
        ("jpg", std::fs::read(media("franz-kafka.jpg")).unwrap()),
        ("wav", wav(2, 8000, 800)),
        ("flac", std::fs::read(media("misc_burp.flac")).unwrap()[..8000].to_vec()),
        ("oga", std::fs::read(media("bell.oga")).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        names_the_file(decode_rgb(&bytes, "random"), "random");
        names_the_file(decode_gray(&bytes, "random"), "random");
        names_the_file(audio::decode(bytes.clone(), "random.wav"), "random.wav");
        names_the_file(sensebind::npy::parse(&bytes, "random.npy"), "random.npy");
        let text = String::from_utf8_lossy(&bytes);
        names_the_file(parse_imu(&text, &ImuConfig { rate_hz: Some(100.0), ..ImuConfig::default() }, "random.csv"), "random.csv");
    }

    #[test]
    fn decoders_never_panic_on_mutated_files(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let files = valid_files();
        let (kind, mut bytes) = files[which].clone();
        for (at, value) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        match kind {
            "png" | "jpg" => {
                names_the_file(decode_rgb(&bytes, kind), kind);
                names_the_file(decode_gray(&bytes, kind), kind);
            }
            _ => {
                let name = format!("x.{kind}");
                if let Ok(w) = audio::decode(bytes, &name) {
                    names_the_file(audio::transform(&w, &name), &name);
                }
            }
        }
    }

    #[test]
    fn tokenizer_handles_any_text(text in "\\PC{0,200}") {
        let tok = tokenizer();
        let ids = tok.tokenize(&text);
        prop_assert_eq!(ids[0], 49406);
        prop_assert!(ids.contains(&49407));
    }
}

/// Success is fine; a failure must say which file it is about.
fn names_the_file<T, E: std::fmt::Display>(result: Result<T, E>, name: &str) {
    if let Err(e) = result {
        assert!(e.to_string().contains(name), "{e}");
    }
}

fn tokenizer() -> &'static Tokenizer {
    static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_file(&root().join("models/imagebind-tiny/bpe_simple_vocab_16e6.txt.gz")).unwrap()
    })
}
