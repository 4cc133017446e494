#!/usr/bin/env bash
# Makes the camera-frame fixtures of src/sources/pixfmt.rs (tests/fixtures/pixfmt/) from the real images in
# tests/fixtures/media/. Needs bash, coreutils (od, tr, sed) and ffmpeg; the committed files were made with
# ffmpeg 5.1.9 (Debian 12). Run from anywhere:
#
#   tools/make_pixfmt_fixtures.sh            # (re)writes tests/fixtures/pixfmt/*, except README.md
#
# -bitexact keeps version strings out of the JPEG files, so a rerun with the same ffmpeg gives the same bytes.
#
# The raw files are what a V4L2 driver hands over for each fourcc, tightly packed (bytesperline = width * bpp):
#   astronaut_64x48.rgb24             reference RGB (RGB3): astronaut.png scaled to 64x48 (bicubic)
#   astronaut_64x48.yuyv              YUYV (YUY2) made from that reference, BT.601 limited range
#   astronaut_64x48.gray              GREY made from that reference (BT.601 luma, full range)
#   astronaut_64x48_yuvj422p.mjpg     MJPG as UVC cameras send it: baseline 4:2:2, standard (Annex K) Huffman tables
#   astronaut_64x48_yuvj422p_nodht.mjpg  the same frame with its DHT segment removed (cameras that omit it)
#   astronaut_64x48_yuvj420p_optimal.mjpg  MJPG 4:2:0 with ffmpeg's per-image optimal Huffman tables
#   motorcycle_depth_crop64x48_x320_y240.z16   Z16: 64x48 crop of the 16-bit depth PNG, little-endian u16
#   flir_e60_crop64x48_x128_y88.y16   Y16: 64x48 crop of the FLIR E60 16-bit raw counts, little-endian u16
#
# The 16-bit frames are cropped, not scaled, so that every value is a real sensor value (scaling would
# interpolate across the depth map's 0 = "no data" holes); the tests compare them with the source PNGs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
media="$root/tests/fixtures/media"
out="$root/tests/fixtures/pixfmt"
mkdir -p "$out"

ff() { ffmpeg -hide_banner -loglevel error -nostdin -y "$@"; }

# Colour: one scaled RGB reference, and every other colour format converted from those exact bytes.
ff -i "$media/astronaut.png" -vf scale=64:48:flags=bicubic -f rawvideo -pix_fmt rgb24 "$out/astronaut_64x48.rgb24"
raw_rgb=(-f rawvideo -pix_fmt rgb24 -video_size 64x48 -i "$out/astronaut_64x48.rgb24")
ff "${raw_rgb[@]}" -vf scale=out_color_matrix=bt601:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int \
    -f rawvideo -pix_fmt yuyv422 "$out/astronaut_64x48.yuyv"
ff "${raw_rgb[@]}" -vf scale=flags=accurate_rnd -f rawvideo -pix_fmt gray "$out/astronaut_64x48.gray"
ff "${raw_rgb[@]}" -vf scale=flags=accurate_rnd+full_chroma_int -c:v mjpeg -pix_fmt yuvj422p -q:v 2 \
    -huffman default -bitexact -f mjpeg "$out/astronaut_64x48_yuvj422p.mjpg"
ff "${raw_rgb[@]}" -vf scale=flags=accurate_rnd+full_chroma_int -c:v mjpeg -pix_fmt yuvj420p -q:v 2 \
    -huffman optimal -bitexact -f mjpeg "$out/astronaut_64x48_yuvj420p_optimal.mjpg"

# Remove every DHT segment (marker FF C4 + 2-byte big-endian length) that precedes the first SOS (FF DA).
strip_dht() {
    local in="$1" dst="$2" hex pos=4 marker len out_hex=""
    hex="$(od -An -v -tx1 "$in" | tr -d ' \n')"
    [[ "${hex:0:4}" == "ffd8" ]] || { echo "strip_dht: $in is not a JPEG" >&2; exit 1; }
    out_hex="ffd8"
    while :; do
        marker="${hex:pos:4}"
        [[ "${marker:0:2}" == "ff" ]] || { echo "strip_dht: no marker at byte $((pos / 2))" >&2; exit 1; }
        if [[ "$marker" == "ffda" ]]; then
            out_hex+="${hex:pos}"
            break
        fi
        len=$((16#${hex:pos+4:4}))
        [[ "$marker" == "ffc4" ]] || out_hex+="${hex:pos:4+2*len}"
        pos=$((pos + 4 + 2 * len))
    done
    # printf's %b understands \xHH escapes: turn the hex string back into bytes.
    printf '%b' "$(sed 's/../\\x&/g' <<<"$out_hex")" >"$dst"
}
strip_dht "$out/astronaut_64x48_yuvj422p.mjpg" "$out/astronaut_64x48_yuvj422p_nodht.mjpg"

# 16-bit: crop the PNGs (big-endian gray16) and write little-endian u16, as V4L2 Y16 / Z16 buffers are.
ff -i "$media/motorcycle_depth_mm_uint16.png" -vf crop=64:48:320:240 -f rawvideo -pix_fmt gray16le \
    "$out/motorcycle_depth_crop64x48_x320_y240.z16"
ff -i "$media/flir_e60_moving_car_CC0.raw16.png" -vf crop=64:48:128:88 -f rawvideo -pix_fmt gray16le \
    "$out/flir_e60_crop64x48_x128_y88.y16"

ls -l "$out"
