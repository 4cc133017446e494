//! Does publishing window embeddings as f16 keep the prompt ranking? For every bundled recording of every sensor
//! modality, the bundled towers' window embedding is compared with a few hundred prompt embeddings (ImageNet class
//! names for images, AudioSet class names for sound, both for the other sensors) once in f32 and once after the
//! embedding went through the f16 CBOR message and back, as a subscriber receives it. The figures printed here are
//! the ones in docs/mqtt.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // test code

mod common;

use std::sync::Arc;

use common::{media, root};
use sensebind::encode::{Encoder, EngineOptions};
use sensebind::modality::Modality;
use sensebind::preprocess::PreprocessConfig;
use sensebind::preprocess::text::{CONTEXT_LENGTH, Tokenizer};
use sensebind::publish::embedding::{self, Dtype, EmbeddingFrame, Encoding};
use sensebind::tensor::Tensor;

fn encoder(m: Modality) -> Arc<dyn Encoder> {
    sensebind::cli::load_encoder(
        Some(&root().join("models/imagebind-tiny")),
        m,
        &EngineOptions::default(),
    )
    .unwrap()
}

/// One input in ImageBind's loader layout (images as 2-frame clips, several clips averaged), as `embed` does.
fn embed(enc: &dyn Encoder, input: Tensor) -> Vec<f32> {
    let batch = Tensor::stack(&[input]).unwrap();
    sensebind::encode::embed(enc, &batch, 8)
        .unwrap()
        .as_f32()
        .unwrap()
        .to_vec()
}

fn prompts(file: &str, column: Option<usize>, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(media(file).trim_matches('"')).unwrap();
    text.lines()
        .skip(usize::from(column.is_some()))
        .filter_map(|l| match column {
            Some(c) => l.split(',').nth(c).map(|s| s.trim_matches('"').to_owned()),
            None => Some(l.trim().to_owned()),
        })
        .filter(|s| !s.is_empty())
        .take(n)
        .collect()
}

fn normalize(v: &[f32]) -> Vec<f32> {
    embedding::l2_normalize(v)
}

fn ranking(window: &[f32], prompts: &[Vec<f32>]) -> (Vec<usize>, Vec<f32>) {
    let cos: Vec<f32> = prompts
        .iter()
        .map(|p| p.iter().zip(window).map(|(a, b)| a * b).sum())
        .collect();
    let mut order: Vec<usize> = (0..cos.len()).collect();
    order.sort_by(|&a, &b| cos[b].total_cmp(&cos[a]).then(a.cmp(&b)));
    (order, cos)
}

#[test]
fn f16_embeddings_keep_the_prompt_ranking_on_the_bundled_models() {
    let model_dir = sensebind::encode::ModelDir::open(&root().join("models/imagebind-tiny")).unwrap();
    let tokenizer = Tokenizer::from_file(&model_dir.path(&model_dir.manifest().bpe)).unwrap();
    let text = encoder(Modality::Text);
    let mut texts = prompts("imagenet_classes.txt", None, 200);
    texts.extend(prompts("yamnet_class_map.csv", Some(2), 200));
    let prompt_embs: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            let ids = Tensor::from_i64(vec![CONTEXT_LENGTH], tokenizer.tokenize(t).to_vec()).unwrap();
            normalize(&embed(text.as_ref(), ids))
        })
        .collect();
    use sensebind::preprocess::imu::ColumnRef;
    let mut cfg = PreprocessConfig::default();
    let names = |v: [&str; 3]| v.iter().map(|s| ColumnRef::Name((*s).to_owned())).collect();
    cfg.imu.acc_columns = names(["Acc_X", "Acc_Y", "Acc_Z"]);
    cfg.imu.gyro_columns = names(["Gyr_X", "Gyr_Y", "Gyr_Z"]);
    cfg.imu.rate_hz = Some(120.0);
    let inputs = [
        (Modality::Vision, "astronaut.png"),
        (Modality::Vision, "camera.png"),
        (Modality::Vision, "chelsea.png"),
        (Modality::Vision, "franz-kafka.jpg"),
        (Modality::Vision, "flir_e60_moving_car_CC0.jpg"),
        (Modality::Audio, "ambi_piano.flac"),
        (Modality::Audio, "bell.oga"),
        (Modality::Audio, "loop_amen.flac"),
        (Modality::Audio, "misc_burp.flac"),
        (Modality::Depth, "motorcycle_depth_mm_uint16.png"),
        (Modality::Thermal, "flir_e60_moving_car_CC0.raw16.png"),
        (Modality::Thermal, "flir_e60_moving_car_CC0.jpg"),
        (Modality::Imu, "xsens_walking_lowerLeg_120Hz.txt"),
    ];
    let (mut top1, mut top5, mut full, mut max_dcos, mut windows) = (0, 0, 0, 0f32, 0);
    let mut swaps = 0usize;
    let mut max_gap = 0f32;
    for (m, file) in inputs {
        let enc = encoder(m);
        let path = std::path::PathBuf::from(media(file).trim_matches('"'));
        let input = sensebind::preprocess::load::load(m, &path, &cfg, None).unwrap();
        let emb = embed(enc.as_ref(), input);
        let dim = enc.info().output_dim;
        for clip in emb.chunks(dim) {
            let f32_vec = normalize(clip);
            let frame = EmbeddingFrame {
                device: "d".into(),
                sensor: "s".into(),
                modality: m.to_string(),
                seq: 0,
                session: 1,
                t0: "2026-11-28T00:00:00.000Z".into(),
                t1: "2026-11-28T00:00:01.000Z".into(),
                t0_mono_ns: 0,
                t1_mono_ns: 1,
                model: enc.info().model_id.clone(),
                event: None,
                normalized: true,
                vec: f32_vec.clone(),
            };
            let bytes = embedding::encode(&frame, Dtype::F16, Encoding::Cbor).unwrap();
            let (received, _) = embedding::decode(&bytes).unwrap();
            let (a, ca) = ranking(&f32_vec, &prompt_embs);
            let (b, cb) = ranking(&received.vec, &prompt_embs);
            windows += 1;
            top1 += usize::from(a[0] == b[0]);
            top5 += usize::from(a[..5] == b[..5]);
            full += usize::from(a == b);
            swaps += a.iter().zip(&b).filter(|(x, y)| x != y).count();
            // The f32 cosine gap between the prompts f16 put in each other's place.
            for (x, y) in a.iter().zip(&b).filter(|(x, y)| x != y) {
                max_gap = max_gap.max((ca[*x] - ca[*y]).abs());
            }
            max_dcos = ca.iter().zip(&cb).map(|(x, y)| (x - y).abs()).fold(max_dcos, f32::max);
        }
    }
    eprintln!(
        "f16 vs f32 over {windows} windows × {} prompts: top-1 identical {top1}/{windows}, top-5 identical {top5}/{windows}, \
         full ranking identical {full}/{windows} ({swaps} rank positions differ in all, between prompts at most {max_gap:.2e} apart in f32 cosine), \
         max |Δcos| {max_dcos:.2e}",
        texts.len()
    );
    assert!(windows >= 13);
    assert_eq!(top1, windows, "f16 changed the best prompt");
    assert_eq!(top5, windows, "f16 changed the top five");
    assert!(max_dcos < 2e-3, "{max_dcos}");
    // Only near-ties move: prompts closer than twice the f16 rounding of the cosine.
    assert!(max_gap <= 2.0 * max_dcos + 1e-7, "gap {max_gap} vs {max_dcos}");
}
