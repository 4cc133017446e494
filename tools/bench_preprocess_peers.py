#!/usr/bin/env python3
"""Peer figures for the preprocessing benchmarks (benches/preprocess.rs), one thread, same inputs.

  fbank of a 2 s clip: torchaudio.compliance.kaldi.fbank (ImageBind's call) and kaldi-native-fbank (120 bins:
  it refuses ImageBind's 128 on a 512-point FFT)
  ImageBind's audio loader on a 5 s 16 kHz signal (from the in-memory waveform)
  image resize + centre crop + ToTensor + Normalize: Pillow + torchvision on the decoded chelsea.png
  tokenizer: ImageBind's SimpleTokenizer on the fixture strings, with a warm and a cold BPE cache

Prints one line per figure: name, median time per call, calls per second.
Usage: python tools/bench_preprocess_peers.py
"""

import json
import math
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def signal(n, rate):
    seed = 0x12345678
    out = np.empty(n, dtype=np.float32)
    for i in range(n):
        seed = (seed * 1664525 + 1013904223) & 0xFFFFFFFF
        t = i / rate
        out[i] = 0.3 * math.sin(2 * math.pi * 440 * t) + 0.1 * math.sin(2 * math.pi * 3000 * t) + 0.01 * ((seed >> 8) / (1 << 24) - 0.5)
    return out


def measure(name, fn, secs=3.0, per_call=1):
    fn()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < secs or len(samples) < 10:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    med = sorted(samples)[len(samples) // 2]
    print(json.dumps({"name": name, "median_us": round(med * 1e6, 2), "per_s": round(per_call / med, 1), "iters": len(samples)}), flush=True)


def main():
    import torch

    torch.set_num_threads(1)
    import torchaudio
    import torchvision.transforms._functional_tensor as ft

    sys.modules["torchvision.transforms.functional_tensor"] = ft
    from PIL import Image
    from torchvision import transforms

    clip = torch.from_numpy(signal(32000, 16000.0))[None]
    kw = dict(htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning", num_mel_bins=128,
              dither=0.0, frame_length=25, frame_shift=10)
    measure("torchaudio kaldi.fbank 2 s", lambda: torchaudio.compliance.kaldi.fbank(clip, **kw))
    try:
        import kaldi_native_fbank as knf

        opts = knf.FbankOptions()
        opts.frame_opts.dither = 0.0
        opts.frame_opts.window_type = "hanning"
        opts.frame_opts.samp_freq = 16000
        # kaldi-native-fbank, like Kaldi, refuses 128 bins on a 512-point FFT (the lowest filters would hold no
        # FFT bin); torchaudio computes them anyway. 120 is the most it accepts: nearly the same work.
        opts.mel_opts.num_bins = 120
        x = clip[0].numpy().tolist()

        def knf_run():
            f = knf.OnlineFbank(opts)
            f.accept_waveform(16000, x)
            f.input_finished()
            return [f.get_frame(i) for i in range(f.num_frames_ready)]

        measure("kaldi-native-fbank 2 s (120 bins)", knf_run)
    except ImportError:
        print(json.dumps({"name": "kaldi-native-fbank 2 s", "skipped": "not installed"}))

    from imagebind import data

    five = torch.from_numpy(signal(80000, 16000.0))[None]

    def imagebind_audio():
        sampler = data.ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)
        w = five.clone()
        points = data.get_clip_timepoints(sampler, w.size(1) / 16000)
        clips = [data.waveform2melspec(w[:, int(s * 16000):int(e * 16000)], 16000, 128, 204) for s, e in points]
        norm = transforms.Normalize(mean=-4.268, std=9.138)
        return torch.stack([norm(c) for c in clips])

    measure("imagebind audio loader 5 s (from waveform)", imagebind_audio)

    img = Image.open(ROOT / "tests/fixtures/media/chelsea.png").convert("RGB")
    tf = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)),
    ])
    measure("Pillow + torchvision resize/crop/normalize 451x300", lambda: tf(img))
    measure("Pillow decode + torchvision transform 451x300",
            lambda: tf(Image.open(ROOT / "tests/fixtures/media/chelsea.png").convert("RGB")))

    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    texts = [c["text"] for c in json.loads((ROOT / "tests/fixtures/preprocess/text/tokens.json").read_text())]
    tok = SimpleTokenizer(bpe_path=str(ROOT / "models/imagebind-tiny/bpe_simple_vocab_16e6.txt.gz"))
    measure("imagebind SimpleTokenizer, warm cache (strings)", lambda: [tok(t) for t in texts], per_call=len(texts))

    def cold():
        tok.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        return [tok(t) for t in texts]

    measure("imagebind SimpleTokenizer, cold cache (strings)", cold, per_call=len(texts))


if __name__ == "__main__":
    main()
