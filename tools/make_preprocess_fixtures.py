#!/usr/bin/env python3
"""Reference fixtures for the preprocessing parity tests (tests/preprocess_parity.rs).

Runs ImageBind's own loaders (`imagebind.data`, PyPI imagebind-unofficial 0.1.1, byte-identical to the official
repository) on inputs made from the real recordings in tests/fixtures/media and writes their outputs under
tests/fixtures/preprocess/. Three shims make the reference run on this environment exactly as the official
requirements would:

  - pytorchvideo's `ConstantClipsPerVideoSampler.__call__` is replaced by the version at the commit ImageBind pins
    (facebookresearch/pytorchvideo@6cdc929: clip starts at i * max(d - 2, 0) / (clips - 1)); the PyPI 0.1.5 wheel
    predates that fix and spaces clips by / clips;
  - `EncodedVideo.from_path` accepts the `sample_rate` keyword again (the pinned commit does; PyPI's does not, see
    ImageBind issue #102) and opens the file with decord, as upstream;
  - `torchaudio.load` reads with soundfile (libsndfile), returning float32 [channels, samples] normalised like
    torchaudio (PCM16 / 32768): this torchaudio build cannot decode files without torchcodec.

Outputs:
  text/tokens.json              >= 200 strings and their 77 token ids (trailing zeros trimmed)
  image/<name>.<png|jpg>        inputs (odd sizes; RGB, L, LA, P, RGBA, 1-bit, 4-bit, 16-bit gray/RGB, JPEG)
  image/<name>.ref.npy.gz       the reference tensor as the exact 8-bit values before ToTensor/Normalize
                                ([3,224,224] uint8; the script asserts that they reproduce the float tensor)
  image/chelsea.png.ref.f32.npy.gz one full float tensor, to check the normalisation itself
  audio/<name>.wav|flac|oga     inputs; audio/<name>.ref.npy.gz reference [3,1,128,204] float32
  audio/clips.json              the clip sample ranges the reference sampler picks, per input
  video/<name>.mp4              inputs; video/<name>.ref.json frame indices; video/<name>.grid.npy.gz the
                                [15,3,2,224,224] reference sampled every 7th row and column, plus one full crop (carphone)
  audio/<name>.decoded.npy.gz   soundfile's decoding of the compressed audio inputs (decoder comparison)

Usage: python tools/make_preprocess_fixtures.py  (from the repository root; needs tools/requirements.txt + decord)
"""

from __future__ import annotations

import gzip
import io
import json
import math
import pathlib
import random
import struct
import subprocess
import sys
import zlib
from fractions import Fraction

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
MEDIA = ROOT / "tests" / "fixtures" / "media"
OUT = ROOT / "tests" / "fixtures" / "preprocess"


# ---------------------------------------------------------------------------------------------------------------
# Shims (see the module docstring).
# ---------------------------------------------------------------------------------------------------------------
def install_shims():
    import torchvision.transforms._functional_tensor as ft

    sys.modules["torchvision.transforms.functional_tensor"] = ft
    import soundfile as sf
    import torch
    import torchaudio

    def sf_load(path, *args, **kwargs):
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), sr

    torchaudio.load = sf_load

    import pytorchvideo.data.clip_sampling as cs

    def pinned_call(self, last_clip_time, video_duration, annotation):
        max_possible_clip_start = Fraction(max(video_duration - self._clip_duration, 0))
        uniform_clip = Fraction(max_possible_clip_start, max(self._clips_per_video - 1, 1))
        clip_start_sec = uniform_clip * self._current_clip_index
        clip_index = self._current_clip_index
        aug_index = self._current_aug_index
        self._current_aug_index += 1
        if self._current_aug_index >= self._augs_per_clip:
            self._current_clip_index += 1
            self._current_aug_index = 0
        is_last_clip = False
        if (
            self._current_clip_index >= self._clips_per_video
            or uniform_clip * self._current_clip_index > max_possible_clip_start
        ):
            self._current_clip_index = 0
            is_last_clip = True
        if is_last_clip:
            self.reset()
        return cs.ClipInfo(clip_start_sec, clip_start_sec + self._clip_duration, clip_index, aug_index, is_last_clip)

    cs.ConstantClipsPerVideoSampler.__call__ = pinned_call

    import pytorchvideo.data.encoded_video as ev
    from pytorchvideo.data.encoded_video_decord import EncodedVideoDecord

    def from_path(file_path, decode_video=True, decode_audio=True, decoder="pyav", **other_args):
        with open(file_path, "rb") as fh:
            video_file = io.BytesIO(fh.read())
        return EncodedVideoDecord(video_file, pathlib.Path(file_path).name, decode_audio=decode_audio, **other_args)

    ev.EncodedVideo.from_path = staticmethod(from_path)


def save_gz(path: pathlib.Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))


# ---------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------
def text_cases() -> list[dict]:
    cases = [
        "A dog.", "A car", "A bird", "a photo of a dog", "glass breaking", "a person falling",
        "the sound of glass breaking", "A person falling down the stairs.", "dog barking in the distance",
        "a baby crying", "footsteps on a wooden floor", "water running from a tap", "a door slamming shut",
        "an alarm clock ringing", "someone knocking on the door", "a cat meowing", "thunder and heavy rain",
        "a car engine starting", "people talking in a crowded room", "a smoke detector beeping",
        "Hello, world!!!", "what's up?", "it's fine", "they'll come", "I'd say", "we've done it", "you're late",
        "I'm here", "'s start", "don't stop", "rock'n'roll", "e-mail me @ 9am", "C++ and C#", "key=value; x<y",
        "(parenthesis) [brackets] {braces}", "quote \"inside\" text", "backslash \\ and slash /",
        "café", "naïve façade", "Ünïcödé tëxt", "日本語のテキスト", "中文测试", "한국어 문장", "Ελληνικά γράμματα",
        "русский текст", "עברית", "العربية", "हिन्दी", "ภาษาไทย", "🐶🐱 emoji", "👍🏽 thumbs", "👨‍👩‍👧 family",
        "e\u0301 combining", "ﬁne ﬂour ﬀ", "ＬＯＵＤ　ＮＯＩＳＥ", "ｶﾀｶﾅ halfwidth", "“smart” ‘quotes’",
        "it’s a test", "İstanbul", "ΣΑΣ ΟΔΟΣ", "Straße", "Ǆemal", "ŉ apostrophe n", "K kelvin ﬅ",
        "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt;", "&#39;quoted&#39;", "&#x27;hex&#x27;", "&copy; 2024",
        "a&nbsp;b", "&notanentity;", "&amp;amp;amp;", "fish &amp chips", "&lt;tag&gt; with < literal",
        "a &#128; b", "&#0; zero", "&#xD800; surrogate", "&#1114112; too big", "&NTILDE; upper", "&Eacute;cole",
        "&eacute;&egrave;", "&hellip;", "&mdash; dash", "&#8364;uro", "&notit;", "&ampx", "5 &lt 6 &gt 4",
        "  leading space", "trailing space  ", "multi   space", "tab\there", "new\nline", "\u00a0nbsp",
        "\u3000ideographic space", "\x1cfile separator\x1f", "\u200bzero\u200bwidth", "\u2028line\u2029para",
        "\x00null\x07bell", "\x1b[31mred\x1b[0m", "\u0085next line", "\u0080c1 \u0093control\u0094",
        "\ufeffbom", "\r\nwindows\r\nlines", "\u206adeprecated", "\ufff9annotation\ufffb",
        "dog " * 100, "1234567890", "3.14159", "2024-01-01T10:11:12Z", "$100 and 100%", "#hashtag @user",
        "", " ", "\n", "\t\t", "<|startoftext|>", "<|endoftext|> in the middle", "<|ENDOFTEXT|>",
        "a" * 200, "supercalifragilisticexpialidocious", "ALL CAPS PROMPT", "MiXeD CaSe",
        "The quick brown fox jumps over the lazy dog while the industrious beaver builds an elaborate dam "
        "across the winding river that flows through the ancient forest near the snow-capped mountains "
        "under a brilliant crimson sunset sky filled with migrating geese.",
    ]
    # Real vocabulary from the shared class lists: ImageNet and AudioSet names.
    imagenet = (MEDIA / "imagenet_classes.txt").read_text().splitlines() if (MEDIA / "imagenet_classes.txt").exists() else []
    rng = random.Random(1234)
    cases += [f"a photo of a {c.strip()}." for c in rng.sample(imagenet, min(80, len(imagenet)))]
    audioset = [
        line.split(",", 2)[2].strip().strip('"')
        for line in (MEDIA / "yamnet_class_map.csv").read_text().splitlines()[1:]
    ] if (MEDIA / "yamnet_class_map.csv").exists() else []
    cases += [f"the sound of {c.lower()}" for c in rng.sample(audioset, min(80, len(audioset)))]
    # Seeded random mixtures of words, digits, punctuation and letters from many scripts.
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`"
        "éèêëàâäôöùûüçñßøåæœÉÀÇÑ" "αβγδεζηθλμπσω" "абвгдежзийклмн" "あいうえおカタカナ漢字" "가나다라" "٠١٢٣" "€£¥©®™°±×÷"
    )
    for _ in range(60):
        n = rng.randint(1, 60)
        cases.append("".join(rng.choice(alphabet) for _ in range(n)))
    return [{"text": t} for t in cases]


def make_text(out: pathlib.Path) -> None:
    from imagebind import data

    import ftfy

    cases = text_cases()
    # Deliberate mojibake (UTF-8 read as Latin-1/Windows-1252): ftfy repairs it; sensebind does not port that
    # heuristic (docs/preprocessing.md), so these are tagged and the test reports rather than requires them.
    cases += [{"text": t} for t in ["sÃ³", "voilÃ  le travail", "âœ” No problems", "cafÃ© au lait"]]
    ids = data.load_and_transform_text([c["text"] for c in cases], "cpu").numpy()
    for c in cases:
        if ftfy.fix_text(c["text"]) != ftfy.fix_text(c["text"], fix_encoding=False):
            c["mojibake_repair"] = True
    for c, row in zip(cases, ids):
        row = [int(v) for v in row]
        while row and row[-1] == 0:
            row.pop()
        c["ids"] = row
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokens.json").write_text(json.dumps(cases, ensure_ascii=True, indent=0))
    print(f"text: {len(cases)} strings")


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------
def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path: pathlib.Path, rows: list[bytes], width: int, height: int, bit_depth: int, color_type: int,
              palette: bytes | None = None) -> None:
    """A minimal PNG writer for the layouts Pillow cannot save (16-bit RGB, 4-bit gray)."""
    raw = b"".join(b"\x00" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    if palette:
        out += png_chunk(b"PLTE", palette)
    out += png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    path.write_bytes(out)


def make_images(out: pathlib.Path) -> None:
    from PIL import Image

    from imagebind import data

    out.mkdir(parents=True, exist_ok=True)
    chelsea = Image.open(MEDIA / "chelsea.png").convert("RGB")
    camera = Image.open(MEDIA / "camera.png")  # L
    astronaut = Image.open(MEDIA / "astronaut.png").convert("RGB")
    inputs = {}
    inputs["chelsea.png"] = MEDIA / "chelsea.png"  # 451x300 RGB, as shipped
    astronaut.crop((40, 60, 341, 287)).save(out / "astronaut_301x227.png")
    camera.crop((10, 20, 267, 409)).save(out / "camera_L_257x389.png")
    la = Image.merge("LA", [camera.crop((0, 0, 300, 231)), camera.crop((100, 100, 400, 331))])
    la.save(out / "camera_LA_300x231.png")
    rgba = astronaut.crop((0, 0, 333, 250)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((333, 250)))
    rgba.save(out / "astronaut_RGBA_333x250.png")
    chelsea.crop((100, 40, 325, 265)).quantize(colors=64, dither=Image.Dither.NONE).save(out / "chelsea_P_225x225.png")
    chelsea.crop((0, 0, 224, 224)).save(out / "chelsea_224x224.png")
    chelsea.crop((200, 100, 300, 180)).save(out / "chelsea_upsample_100x80.png")
    camera.crop((0, 0, 227, 300)).point(lambda v: 255 if v > 110 else 0).convert("1").save(out / "camera_1bit_227x300.png")
    chelsea.crop((10, 10, 240, 239)).quantize(colors=16, dither=Image.Dither.NONE).save(
        out / "chelsea_P4_230x229.png", bits=4
    )
    # 16-bit grayscale (Pillow: I;16, clipped to 255 on convert("RGB")): the depth map in millimetres.
    Image.open(MEDIA / "motorcycle_depth_mm_uint16.png").crop((0, 0, 301, 250)).save(out / "depth_I16_301x250.png")
    # 16-bit RGB (Pillow keeps the high byte) and 4-bit grayscale, written by hand.
    a16 = np.asarray(astronaut.crop((0, 0, 260, 230)), dtype=np.uint16) * 257 + 3
    write_png(out / "astronaut_RGB16_260x230.png", [r.astype(">u2").tobytes() for r in a16], 260, 230, 16, 2)
    g4 = (np.asarray(camera.crop((0, 0, 250, 240))) >> 4).astype(np.uint8)
    rows4 = [bytes((int(r[i]) << 4) | (int(r[i + 1]) if i + 1 < len(r) else 0) for i in range(0, len(r), 2)) for r in g4]
    write_png(out / "camera_gray4_250x240.png", rows4, 250, 240, 4, 0)
    # JPEG: the real portrait as shipped, Pillow-encoded colour (4:2:0) and grayscale files.
    inputs["franz-kafka.jpg"] = MEDIA / "franz-kafka.jpg"
    chelsea.save(out / "chelsea_q90.jpg", quality=90)
    camera.crop((0, 0, 300, 257)).save(out / "camera_gray_q85.jpg", quality=85)
    for p in sorted(out.iterdir()):
        if p.suffix in (".png", ".jpg") and ".ref" not in p.name:
            inputs[p.name] = p
    for name, path in sorted(inputs.items()):
        x = data.load_and_transform_vision_data([str(path)], "cpu")[0].numpy()
        mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)[:, None, None]
        std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)[:, None, None]
        u8 = np.rint((x * std + mean) * 255).astype(np.uint8)
        again = ((u8.astype(np.float32) / np.float32(255)) - mean) / std
        assert np.array_equal(again, x), f"{name}: 8-bit recovery is not exact"
        save_gz(out / f"{name}.ref.npy.gz", u8)
        if name == "chelsea.png":
            save_gz(out / "chelsea.png.ref.f32.npy.gz", x)
    (out / "inputs.json").write_text(json.dumps({k: str(v.relative_to(ROOT)) for k, v in sorted(inputs.items())}, indent=1))
    print(f"image: {len(inputs)} inputs")


# ---------------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------------
def make_audio(out: pathlib.Path) -> None:
    import soundfile as sf
    import torch
    import torchaudio

    from imagebind import data
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

    out.mkdir(parents=True, exist_ok=True)
    amen, sr = sf.read(MEDIA / "loop_amen.flac", dtype="float32", always_2d=True)  # 44.1 kHz stereo
    piano, _ = sf.read(MEDIA / "ambi_piano.flac", dtype="float32", always_2d=True)
    amen16 = torchaudio.functional.resample(torch.from_numpy(amen.T.copy()), sr, 16000).numpy().T
    piano16 = torchaudio.functional.resample(torch.from_numpy(piano.T.copy()), sr, 16000).numpy().T
    inputs = {}
    for secs, src, tag in [(0.5, amen16, "amen"), (1.3, amen16, "amen"), (2.0, piano16, "piano"), (7.3, None, "mix")]:
        n = int(round(secs * 16000))
        if src is None:
            sig = np.concatenate([piano16[:, :1], amen16[:, :1]])[:n]  # 7.3 s: piano then amen, mono
        else:
            sig = src[:n, :1]
        name = f"{tag}_16k_{str(secs).replace('.', 'p')}s.wav"
        sf.write(out / name, sig, 16000, subtype="PCM_16")
        inputs[name] = out / name
    sf.write(out / "amen_16k_stereo_2p6s.wav", amen16[: int(2.6 * 16000)], 16000, subtype="PCM_16")
    inputs["amen_16k_stereo_2p6s.wav"] = out / "amen_16k_stereo_2p6s.wav"
    sf.write(out / "amen_44k1_stereo_3p1s.wav", amen[: int(3.1 * 44100)], 44100, subtype="PCM_16")
    inputs["amen_44k1_stereo_3p1s.wav"] = out / "amen_44k1_stereo_3p1s.wav"
    piano48 = torchaudio.functional.resample(torch.from_numpy(piano.T.copy()), sr, 48000).numpy().T
    sf.write(out / "piano_48k_mono_2p5s.wav", piano48[: int(2.5 * 48000), :1], 48000, subtype="PCM_16")
    inputs["piano_48k_mono_2p5s.wav"] = out / "piano_48k_mono_2p5s.wav"
    for shipped in ["bell.oga", "misc_burp.flac"]:
        inputs[shipped] = MEDIA / shipped
    clips = {}
    for name, path in sorted(inputs.items()):
        x = data.load_and_transform_audio_data([str(path)], "cpu")[0].numpy()
        save_gz(out / f"{name}.ref.npy.gz", x.astype(np.float32))
        info = sf.info(str(path))
        n16 = info.frames if info.samplerate == 16000 else math.ceil(np.float32(16000 * info.frames / info.samplerate))
        sampler = ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)
        points = data.get_clip_timepoints(sampler, n16 / 16000)
        clips[name] = {"samples_16k": n16, "ranges": [[int(s * 16000), int(e * 16000)] for s, e in points]}
        if path.suffix in (".oga", ".flac"):
            decoded, _ = sf.read(str(path), dtype="float32", always_2d=True)
            save_gz(out / f"{name}.decoded.npy.gz", np.ascontiguousarray(decoded.T))
    (out / "clips.json").write_text(json.dumps(clips, indent=1))
    (out / "inputs.json").write_text(json.dumps({k: str(v.relative_to(ROOT)) for k, v in sorted(inputs.items())}, indent=1))
    print(f"audio: {len(inputs)} inputs")


# ---------------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------------
def make_video(out: pathlib.Path) -> None:
    import decord

    from imagebind import data

    out.mkdir(parents=True, exist_ok=True)
    # A portrait, 1.5 s clip of the shipped sequence (shorter than a 2 s clip), H.264 yuv420p.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(MEDIA / "carphone_pristine.mp4"), "-t", "1.5", "-vf", "transpose=1",
         "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-an", str(out / "carphone_portrait_1p5s.mp4")],
        check=True,
    )
    inputs = {"carphone_pristine.mp4": MEDIA / "carphone_pristine.mp4", "carphone_portrait_1p5s.mp4": out / "carphone_portrait_1p5s.mp4"}
    for name, path in inputs.items():
        x = data.load_and_transform_video_data([str(path)], "cpu")[0].numpy()  # [15,3,2,224,224]
        vr = decord.VideoReader(str(path))
        fps, n = vr.get_avg_fps(), len(vr)
        duration = n / fps
        from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

        points = data.get_clip_timepoints(ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=5), duration)
        frames = []
        for s, e in points:
            a = math.ceil(fps * s)
            b = min(math.ceil(fps * e), n)
            frames.append([a, b - 1])
        (out / f"{name}.ref.json").write_text(json.dumps({"fps": fps, "frames": n, "clip_frames": frames}))
        save_gz(out / f"{name}.grid.npy.gz", np.ascontiguousarray(x[:, :, :, ::7, ::7]))
        if name == "carphone_pristine.mp4":
            save_gz(out / f"{name}.crop7.npy.gz", np.ascontiguousarray(x[7]))
    (out / "inputs.json").write_text(json.dumps({k: str(v.relative_to(ROOT)) for k, v in sorted(inputs.items())}, indent=1))
    print(f"video: {len(inputs)} inputs")


def main() -> int:
    install_shims()
    make_text(OUT / "text")
    make_images(OUT / "image")
    make_audio(OUT / "audio")
    make_video(OUT / "video")
    return 0


if __name__ == "__main__":
    sys.exit(main())
