//! Audio: decoding, torchaudio's resampler, ImageBind's clip sampler and `waveform2melspec`.
//!
//! Reference: `imagebind/data.py:18-165` (`load_and_transform_audio_data`, `waveform2melspec`), pytorchvideo's
//! `ConstantClipsPerVideoSampler` at the commit ImageBind pins (6cdc929), `torchaudio.functional.resample`.
//!
//! Per file: decode to float32 channels (PCM `/32768` like torchaudio/libsndfile) → resample every channel to
//! 16 kHz if needed (windowed sinc, Hann, 6 zero crossings, roll-off 0.99) → 3 clips of 2 s at exact rational
//! starts `i · max(d − 2, 0) / 2` → per clip, in order, on the *shared* buffer: subtract the clip's mean over all
//! channels in place (so overlapping clips see earlier clips' subtractions, as upstream) → Kaldi fbank of the
//! first channel → pad with zeros or crop to 204 frames → `(x + 4.268) / 9.138` → `[3, 1, 128, 204]`.

use super::PreprocessError;
use super::fbank::{Fbank, MEL_BINS};

/// ImageBind's audio sample rate.
pub const SAMPLE_RATE: u32 = 16000;
/// Clip length in seconds.
pub const CLIP_SECS: u32 = 2;
/// Clips per file.
pub const CLIPS: usize = 3;
/// Frames per clip after padding/cropping.
pub const TARGET_FRAMES: usize = 204;
/// Normalisation mean (AudioSet statistics used by ImageBind).
pub const MEAN: f32 = -4.268;
/// Normalisation standard deviation.
pub const STD: f32 = 9.138;
/// Shortest signal that yields a frame: 25 ms at 16 kHz.
pub const MIN_SAMPLES: usize = 400;
/// Channels accepted: mono or stereo (ImageBind uses the first channel; the mean spans all channels).
pub const MAX_CHANNELS: usize = 2;

/// Decoded audio: one `Vec<f32>` per channel, all the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    /// Samples per second.
    pub sample_rate: u32,
    /// Channel-major samples in [-1, 1].
    pub channels: Vec<Vec<f32>>,
}

impl Waveform {
    /// Samples per channel.
    pub fn len(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes WAV, FLAC or Ogg Vorbis bytes with symphonia.
pub fn decode(bytes: Vec<u8>, name: &str) -> Result<Waveform, PreprocessError> {
    use symphonia::core::audio::SampleBuffer;
    use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
    use symphonia::core::errors::Error as SymError;
    use symphonia::core::formats::FormatOptions;
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;
    use symphonia::core::probe::Hint;

    if bytes.is_empty() {
        return Err(PreprocessError::decode(name, "the file is empty (0 bytes)"));
    }
    let stream = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = std::path::Path::new(name).extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions {
                enable_gapless: true,
                ..FormatOptions::default()
            },
            &MetadataOptions::default(),
        )
        .map_err(|e| PreprocessError::decode(name, format!("not a WAV, FLAC or Ogg Vorbis file: {e}")))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| PreprocessError::decode(name, "no audio track"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let sample_rate = params
        .sample_rate
        .ok_or_else(|| PreprocessError::decode(name, "the audio track declares no sample rate"))?;
    check_rate(sample_rate).map_err(|e| PreprocessError::invalid(name, e))?;
    let declared_channels = params.channels.map(|c| c.count());
    if let Some(n) = declared_channels.filter(|&n| n > MAX_CHANNELS) {
        return Err(PreprocessError::invalid(
            name,
            format!(
                "{n} channels; sensebind takes mono or stereo audio (ImageBind embeds the first channel) — \
                 extract the channel you want first, e.g. `sox in.wav out.wav remix 1`"
            ),
        ));
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| PreprocessError::decode(name, format!("unsupported audio codec: {e}")))?;
    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut sample_buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => return Err(PreprocessError::decode(name, format!("corrupt audio stream: {e}"))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(e)) => {
                return Err(PreprocessError::decode(name, format!("corrupt audio packet: {e}")));
            }
            Err(e) => return Err(PreprocessError::decode(name, format!("cannot decode audio: {e}"))),
        };
        let spec = *decoded.spec();
        let n_ch = spec.channels.count();
        if n_ch > MAX_CHANNELS {
            return Err(PreprocessError::invalid(
                name,
                format!("{n_ch} channels; sensebind takes mono or stereo audio (ImageBind embeds the first channel)"),
            ));
        }
        let buf = sample_buf.get_or_insert_with(|| SampleBuffer::new(decoded.capacity() as u64, spec));
        if buf.capacity() < decoded.capacity() * n_ch {
            *buf = SampleBuffer::new(decoded.capacity() as u64, spec);
        }
        buf.copy_planar_ref(decoded);
        let frames = buf.samples().len() / n_ch.max(1);
        if channels.is_empty() {
            channels = vec![Vec::new(); n_ch];
        }
        if channels.len() != n_ch {
            return Err(PreprocessError::decode(
                name,
                "the channel count changes inside the stream",
            ));
        }
        for (c, ch) in channels.iter_mut().enumerate() {
            ch.extend_from_slice(&buf.samples()[c * frames..(c + 1) * frames]);
        }
    }
    if channels.is_empty() || channels[0].is_empty() {
        return Err(PreprocessError::invalid(name, "the audio holds no samples"));
    }
    if let Some((i, _)) = channels.iter().flatten().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(PreprocessError::decode(
            name,
            format!("sample {i} is not a finite number"),
        ));
    }
    Ok(Waveform { sample_rate, channels })
}

/// Lowest input rate accepted: below it a header is far more likely corrupt than real.
pub const MIN_RATE: u32 = 1_000;
/// Highest input rate accepted (the highest rate common audio hardware offers).
pub const MAX_RATE: u32 = 768_000;
/// Largest resampling kernel table (in f32s, 64 MiB) a rate may need. Exact sinc resampling builds one kernel per
/// output phase of the gcd-reduced ratio, so a rate sharing little with 16 kHz (44 101 Hz: 16 000 phases of 44 135
/// taps, 2.8 GB) would exhaust memory; every standard rate needs under 300 000.
const MAX_KERNEL_FLOATS: u64 = 1 << 24;

/// Whether `rate` Hz can be resampled to 16 kHz within the bounds above; the error says why not and what to do.
pub fn check_rate(rate: u32) -> Result<(), String> {
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(format!(
            "sample rate {rate} Hz is outside {MIN_RATE}..={MAX_RATE} Hz (a corrupt header?)"
        ));
    }
    let g = gcd(u64::from(rate), u64::from(SAMPLE_RATE));
    let (orig, new) = (u64::from(rate) / g, u64::from(SAMPLE_RATE) / g);
    let width = (6.0 * orig as f64 / (orig.min(new) as f64 * 0.99)).ceil() as u64;
    let floats = new * (2 * width + orig);
    if floats > MAX_KERNEL_FLOATS {
        return Err(format!(
            "sample rate {rate} Hz is not a standard rate: resampling it exactly to {SAMPLE_RATE} Hz needs a \
             {} MB kernel table; convert the file first, e.g. `sox in.wav -r 16000 out.wav`",
            floats * 4 / 1_000_000
        ));
    }
    Ok(())
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `torchaudio.functional.resample(x, orig, new)` with its defaults (sinc_interp_hann, width 6, roll-off 0.99).
pub fn resample(signal: &[f32], orig: u32, new: u32) -> Vec<f32> {
    if orig == new || signal.is_empty() {
        return signal.to_vec();
    }
    let g = gcd(u64::from(orig), u64::from(new));
    let (orig, new) = ((u64::from(orig) / g) as usize, (u64::from(new) / g) as usize);
    let (kernels, width) = sinc_kernels(orig, new);
    let taps = 2 * width + orig;
    let len = signal.len();
    // Zero padding (width, width + orig), then conv1d with stride `orig`: `new` phases per input step.
    let padded_len = len + 2 * width + orig;
    let at = |i: usize| -> f32 {
        if i < width || i >= width + len {
            0.0
        } else {
            signal[i - width]
        }
    };
    let steps = (padded_len - taps) / orig + 1;
    // target_length = ceil(float32(new * len / orig)), as torch.as_tensor makes a float32 tensor.
    let target = ((new as f64 * len as f64 / orig as f64) as f32).ceil() as usize;
    // Each output is a float32 sum in tap order (what matches torch best: independent orders disagree on the
    // near-silent bands). Speed comes from running LANES outputs' sums side by side, not from reordering them.
    const LANES: usize = 8;
    let interior = |step: usize| step * orig >= width && step * orig + taps <= width + len;
    // Kernels as [tap][phase], for the many-phases case.
    let mut transposed = vec![0f32; taps * new];
    for phase in 0..new {
        for t in 0..taps {
            transposed[t * new + phase] = kernels[phase * taps + t];
        }
    }
    let mut grid = vec![0f32; steps * new];
    let mut step = 0;
    while step < steps {
        let block = LANES.min(steps - step);
        if new >= LANES && interior(step) {
            // Many phases (e.g. 44.1 → 16 kHz: 160): one step at a time, all phases side by side.
            let base = step * orig - width;
            let row = &mut grid[step * new..(step + 1) * new];
            row.iter_mut().for_each(|v| *v = 0.0);
            for (t, &x) in signal[base..base + taps].iter().enumerate() {
                for (acc, &w) in row.iter_mut().zip(&transposed[t * new..(t + 1) * new]) {
                    *acc += x * w;
                }
            }
            step += 1;
            continue;
        } else if (0..block).all(|j| interior(step + j)) {
            // Few phases (e.g. 48 → 16 kHz: 1): LANES consecutive steps side by side.
            for phase in 0..new {
                let k = &kernels[phase * taps..(phase + 1) * taps];
                let mut acc = [0f32; LANES];
                for (t, &w) in k.iter().enumerate() {
                    for (j, a) in acc.iter_mut().enumerate().take(block) {
                        *a += signal[(step + j) * orig - width + t] * w;
                    }
                }
                for (j, &a) in acc.iter().enumerate().take(block) {
                    grid[(step + j) * new + phase] = a;
                }
            }
        } else {
            for j in 0..block {
                let base = (step + j) * orig;
                for phase in 0..new {
                    let k = &kernels[phase * taps..(phase + 1) * taps];
                    grid[(step + j) * new + phase] = k.iter().enumerate().fold(0.0, |a, (t, w)| a + at(base + t) * w);
                }
            }
        }
        step += block;
    }
    grid.truncate(target);
    grid
}

/// torchaudio's `_get_sinc_resample_kernel` for gcd-reduced rates: `new` kernels of `2·width + orig` taps.
fn sinc_kernels(orig: usize, new: usize) -> (Vec<f32>, usize) {
    const ZEROS: f64 = 6.0;
    const ROLLOFF: f64 = 0.99;
    let base_freq = orig.min(new) as f64 * ROLLOFF;
    let width = (ZEROS * orig as f64 / base_freq).ceil() as usize;
    let taps = 2 * width + orig;
    let scale = base_freq / orig as f64;
    let mut kernels = Vec::with_capacity(new * taps);
    for phase in 0..new {
        for j in 0..taps {
            // Computed in float32 like torchaudio (the waveform's dtype).
            let idx = (j as f32 - width as f32) / orig as f32;
            let t = (-(phase as f32) / new as f32 + idx) * base_freq as f32;
            let t = t.clamp(-ZEROS as f32, ZEROS as f32);
            let window = (t * std::f32::consts::PI / ZEROS as f32 / 2.0).cos().powi(2);
            let tp = t * std::f32::consts::PI;
            let sinc = if tp == 0.0 { 1.0 } else { tp.sin() / tp };
            kernels.push(sinc * (window * scale as f32));
        }
    }
    (kernels, width)
}

/// Sample ranges `[start, end)` of ImageBind's clips for `n` samples at `rate` Hz: pytorchvideo's
/// `ConstantClipsPerVideoSampler(clip_duration, clips)` at ImageBind's pinned commit, with exact rationals.
pub fn clip_ranges(n: usize, rate: u32, clip_secs: u32, clips: usize) -> Vec<(usize, usize)> {
    let duration = n as f64 / f64::from(rate);
    let max_start = (duration - f64::from(clip_secs)).max(0.0);
    let divisor = clips.saturating_sub(1).max(1) as u128;
    (0..clips)
        .map(|i| {
            let start = floor_scaled(max_start, i as u128 * u128::from(rate), divisor);
            let end_secs_num = u128::from(clip_secs) * u128::from(rate);
            // int((start_sec + clip) * rate) = floor(start_sec * rate) + clip * rate (clip*rate is an integer).
            let end = start.saturating_add(end_secs_num as usize);
            (start, end)
        })
        .collect()
}

/// `floor(x * mul / div)` computed exactly for a finite non-negative f64 `x` (Python's Fraction(x) arithmetic).
pub(crate) fn floor_scaled(x: f64, mul: u128, div: u128) -> usize {
    if x <= 0.0 || div == 0 {
        return 0;
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mantissa, e2) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp - 1075)
    };
    // x = mantissa * 2^e2
    let num = u128::from(mantissa).checked_mul(mul);
    match num {
        Some(num) if e2 >= 0 => {
            let shifted = num.checked_shl(e2 as u32).unwrap_or(u128::MAX);
            (shifted / div).min(usize::MAX as u128) as usize
        }
        Some(num) => {
            let shift = (-e2) as u32;
            // floor(floor(num / 2^shift) / div) == floor(num / (2^shift * div)) for positive integers.
            if shift >= 128 {
                0
            } else {
                ((num >> shift) / div) as usize
            }
        }
        None => (x * mul as f64 / div as f64).floor() as usize,
    }
}

/// One clip of 16 kHz mono audio → `[1][128][204]` values: ImageBind's `waveform2melspec` + Normalize (mean
/// subtraction over the clip, Kaldi fbank, zero-pad or crop to 204 frames, `(x + 4.268) / 9.138`). The streaming
/// windows use this; a 2 s window gives exactly the tensor of each clip of a 2 s file.
pub fn clip_features(mut clip: Vec<f32>) -> Result<Vec<f32>, PreprocessError> {
    if clip.len() < MIN_SAMPLES {
        return Err(PreprocessError::invalid(
            "audio window",
            format!("{} samples; a filterbank frame needs {MIN_SAMPLES}", clip.len()),
        ));
    }
    let mean = (clip.iter().map(|&x| f64::from(x)).sum::<f64>() / clip.len() as f64) as f32;
    clip.iter_mut().for_each(|x| *x -= mean);
    thread_local! {
        static FBANK: Fbank = Fbank::new();
    }
    let feats = FBANK.with(|f| f.compute(&clip));
    let frames = feats.len() / MEL_BINS;
    let mut out = Vec::with_capacity(MEL_BINS * TARGET_FRAMES);
    for m in 0..MEL_BINS {
        for t in 0..TARGET_FRAMES {
            let v = if t < frames { feats[t * MEL_BINS + m] } else { 0.0 };
            out.push((v - MEAN) / STD);
        }
    }
    Ok(out)
}

/// ImageBind's `load_and_transform_audio_data` for one decoded file → `[3][1][128][204]` values.
pub fn transform(wave: &Waveform, name: &str) -> Result<Vec<f32>, PreprocessError> {
    let mut channels: Vec<Vec<f32>> = wave
        .channels
        .iter()
        .map(|c| resample(c, wave.sample_rate, SAMPLE_RATE))
        .collect();
    let n = channels.first().map_or(0, Vec::len);
    if n < MIN_SAMPLES {
        return Err(PreprocessError::invalid(
            name,
            format!(
                "{:.1} ms of audio; ImageBind needs at least 25 ms ({MIN_SAMPLES} samples at 16 kHz) for one \
                 filterbank frame",
                n as f64 * 1000.0 / f64::from(SAMPLE_RATE)
            ),
        ));
    }
    let fbank = Fbank::new();
    let mut out = Vec::with_capacity(CLIPS * MEL_BINS * TARGET_FRAMES);
    for (start, end) in clip_ranges(n, SAMPLE_RATE, CLIP_SECS, CLIPS) {
        let (start, end) = (start.min(n), end.min(n));
        // `waveform -= waveform.mean()` on the clip view: mean over all channels, in place on the shared buffer.
        let count = (end - start) * channels.len();
        let sum: f64 = channels
            .iter()
            .map(|c| c[start..end].iter().map(|&x| f64::from(x)).sum::<f64>())
            .sum();
        let mean = (sum / count.max(1) as f64) as f32;
        for c in channels.iter_mut() {
            c[start..end].iter_mut().for_each(|x| *x -= mean);
        }
        let feats = fbank.compute(&channels[0][start..end]);
        let frames = feats.len() / MEL_BINS;
        if frames == 0 {
            return Err(PreprocessError::invalid(
                name,
                format!("clip [{start}, {end}) holds fewer than {MIN_SAMPLES} samples"),
            ));
        }
        // [frames][128] → [128][204]: transpose, pad with zeros or crop, then normalise.
        for m in 0..MEL_BINS {
            for t in 0..TARGET_FRAMES {
                let v = if t < frames { feats[t * MEL_BINS + m] } else { 0.0 };
                out.push((v - MEAN) / STD);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_ranges_match_the_specs_examples() {
        assert_eq!(
            clip_ranges(80000, 16000, 2, 3),
            vec![(0, 32000), (24000, 56000), (48000, 80000)]
        );
        assert_eq!(
            clip_ranges(41764, 16000, 2, 3),
            vec![(0, 32000), (4882, 36882), (9764, 41764)]
        );
        assert_eq!(clip_ranges(16000, 16000, 2, 3), vec![(0, 32000); 3]);
        assert_eq!(
            clip_ranges(160000, 16000, 2, 3),
            vec![(0, 32000), (64000, 96000), (128000, 160000)]
        );
    }

    #[test]
    fn floor_scaled_is_exact() {
        assert_eq!(floor_scaled(0.5, 3, 1), 1);
        assert_eq!(floor_scaled(0.1, 10, 1), 1); // 0.1 is slightly above 1/10 in binary
        assert_eq!(floor_scaled(0.3, 10, 1), 2); // 0.3 is slightly below 3/10
        assert_eq!(floor_scaled(1e300, 1, 1), usize::MAX);
    }

    #[test]
    fn standard_rates_pass_and_odd_rates_are_named() {
        for rate in [
            8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 192000, 384000,
        ] {
            assert_eq!(check_rate(rate), Ok(()), "{rate}");
        }
        for rate in [0, 1, 999, 44101, 47999, 1_000_000] {
            let err = check_rate(rate).unwrap_err();
            assert!(err.contains(&format!("{rate} Hz")), "{err}");
        }
    }

    #[test]
    fn resample_length_matches_torchaudio() {
        assert_eq!(resample(&vec![0.0; 44100], 44100, 16000).len(), 16000);
        assert_eq!(resample(&vec![0.0; 48000 * 3 + 7], 48000, 16000).len(), 48003);
        let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(resample(&x, 16000, 16000), x);
    }

    #[test]
    fn resampling_keeps_a_low_tone() {
        let x: Vec<f32> = (0..48000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48000.0).sin())
            .collect();
        let y = resample(&x, 48000, 16000);
        for (i, v) in y.iter().enumerate().skip(100).take(15000) {
            let want = (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16000.0).sin();
            assert!((v - want).abs() < 2e-3, "{i}: {v} vs {want}");
        }
    }
}
