//! Camera frame bytes → frames: pure conversions of V4L2 buffers into the frame types preprocessing consumes.
//!
//! One entry point, [`convert`], turns the bytes a V4L2 driver fills for one frame (`bytesused` of the dequeued
//! buffer) into a [`Frame`]: 8-bit RGB for colour and 8-bit grey cameras, 16-bit single channel for thermal
//! (`Y16`) and depth (`Z16`) cameras. Nothing here touches a device; the capture loop negotiates the format
//! (`VIDIOC_S_FMT`) and passes its `width`, `height` and `bytesperline` along with the buffer.
//!
//! | fourcc | layout (V4L2 uAPI "Image Formats") | output |
//! |---|---|---|
//! | `YUYV` | packed 4:2:2, `Y0 U Y1 V` for each pair of pixels | [`Frame::Rgb`], BT.601 limited range ([`yuv_to_rgb`]) |
//! | `MJPG` | one baseline JPEG per frame | [`Frame::Rgb`], decoded with zune-jpeg |
//! | `RGB3` | `R G B`, 8 bits each | [`Frame::Rgb`], copied |
//! | `GREY` | 8-bit luma | [`Frame::Rgb`], the value replicated to R, G and B |
//! | `Y16 ` | 16-bit little-endian luma | [`Frame::Gray16`], unscaled (thermal counts) |
//! | `Z16 ` | 16-bit little-endian depth | [`Frame::Gray16`], unscaled (device units, 0 = no data) |
//!
//! **Line stride.** Uncompressed formats may pad each line: `bytesperline` can exceed `width * bytes per pixel`
//! and the padding is skipped. A stride of 0 means tightly packed. The buffer must hold `stride * height` bytes;
//! `stride * (height - 1) + width * bpp` is accepted too (the last line's padding left off). Any other length is
//! an error, so a format mismatch between driver and caller cannot go unnoticed.
//!
//! **MJPEG quirks handled.** Bytes after the end-of-image marker (drivers that report the whole buffer) are
//! ignored; a frame without an end-of-image marker (a truncated USB transfer) is rejected rather than decoded
//! into a half-grey picture; frames that omit the Huffman tables (DHT), which UVC cameras may do because
//! MJPEG streams are defined to use the standard tables, get the tables of ITU-T T.81 Annex K inserted before
//! the scan. The stride does not apply to MJPEG and is ignored.
//!
//! Every length, dimension and marker is checked before it is used: no input can make these functions panic
//! (the tests feed them random buffers to check that), and sizes are bounded by [`MAX_DIMENSION`].

use std::fmt;

/// Largest width or height accepted, in pixels.
pub const MAX_DIMENSION: usize = 16_384;

/// Largest line stride accepted, in bytes (with [`MAX_DIMENSION`] lines the frame stays below 2 GiB, so no size
/// computation can overflow, even with a 32-bit `usize`).
pub const MAX_STRIDE: usize = 1 << 17;

/// Pixel formats by V4L2 fourcc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// `YUYV` (also called YUY2): packed YCbCr 4:2:2, `Y0 U Y1 V` for each pair of pixels.
    Yuyv,
    /// `MJPG`: motion JPEG, one JPEG image per frame.
    Mjpeg,
    /// `RGB3`: packed 8-bit `R G B`.
    Rgb3,
    /// `GREY`: 8-bit greyscale.
    Grey,
    /// `Y16 `: 16-bit little-endian greyscale (radiometric thermal counts on thermal cameras).
    Y16,
    /// `Z16 `: 16-bit little-endian depth in device units (0 = no data).
    Z16,
}

impl PixelFormat {
    /// Every supported format.
    pub const ALL: [Self; 6] = [Self::Yuyv, Self::Mjpeg, Self::Rgb3, Self::Grey, Self::Y16, Self::Z16];

    /// The format with this V4L2 fourcc (`b"YUYV"`, `b"MJPG"`, `b"RGB3"`, `b"GREY"`, `b"Y16 "`, `b"Z16 "`), or
    /// `None` for any other. `b"JPEG"` (`V4L2_PIX_FMT_JPEG`, which some drivers report for the same stream) is
    /// taken as [`PixelFormat::Mjpeg`].
    pub const fn from_fourcc(fourcc: [u8; 4]) -> Option<Self> {
        match &fourcc {
            b"YUYV" => Some(Self::Yuyv),
            b"MJPG" | b"JPEG" => Some(Self::Mjpeg),
            b"RGB3" => Some(Self::Rgb3),
            b"GREY" => Some(Self::Grey),
            b"Y16 " => Some(Self::Y16),
            b"Z16 " => Some(Self::Z16),
            _ => None,
        }
    }

    /// The format named `name` as [`PixelFormat::name`] writes it (case-insensitive; `JPEG` and `YUY2` are
    /// accepted as the same streams).
    pub fn from_name(name: &str) -> Option<Self> {
        let upper = name.trim().to_ascii_uppercase();
        match upper.as_str() {
            "YUY2" => Some(Self::Yuyv),
            _ => {
                let mut fourcc = [b' '; 4];
                let bytes = upper.as_bytes();
                if bytes.is_empty() || bytes.len() > 4 {
                    return None;
                }
                fourcc[..bytes.len()].copy_from_slice(bytes);
                Self::from_fourcc(fourcc)
            }
        }
    }

    /// The V4L2 fourcc, space-padded to four bytes as V4L2 defines it (`b"Y16 "`).
    pub const fn fourcc(self) -> [u8; 4] {
        match self {
            Self::Yuyv => *b"YUYV",
            Self::Mjpeg => *b"MJPG",
            Self::Rgb3 => *b"RGB3",
            Self::Grey => *b"GREY",
            Self::Y16 => *b"Y16 ",
            Self::Z16 => *b"Z16 ",
        }
    }

    /// The fourcc as text without its padding (`"YUYV"`, `"MJPG"`, `"RGB3"`, `"GREY"`, `"Y16"`, `"Z16"`), as
    /// `v4l2-ctl --list-formats` shows it; used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Yuyv => "YUYV",
            Self::Mjpeg => "MJPG",
            Self::Rgb3 => "RGB3",
            Self::Grey => "GREY",
            Self::Y16 => "Y16",
            Self::Z16 => "Z16",
        }
    }

    /// Bytes per pixel of an uncompressed format; `None` for MJPEG.
    const fn bytes_per_pixel(self) -> Option<usize> {
        match self {
            Self::Yuyv | Self::Y16 | Self::Z16 => Some(2),
            Self::Rgb3 => Some(3),
            Self::Grey => Some(1),
            Self::Mjpeg => None,
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A converted frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// 8-bit RGB, row-major, interleaved `R G B`, `width * height * 3` bytes (colour cameras: YUYV, MJPEG, RGB3;
    /// GREY replicated to 3 channels).
    Rgb {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// `width * height * 3` bytes.
        data: Vec<u8>,
    },
    /// 16-bit single channel, row-major, `width * height` samples (Y16: radiometric thermal counts, e.g. FLIR
    /// Lepton via PureThermal; Z16: depth in device units, e.g. RealSense, 0 = no data).
    Gray16 {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// `width * height` samples, unscaled.
        data: Vec<u16>,
    },
}

/// Why a frame could not be converted. Every message names the format and the frame's dimensions.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PixfmtError {
    /// Width or height is 0.
    #[error("{format} frame {width}x{height} has a zero dimension")]
    ZeroSize {
        /// The frame's format.
        format: PixelFormat,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// Width or height is above [`MAX_DIMENSION`].
    #[error("{format} frame {width}x{height} is too large: width and height must be at most {max}")]
    TooLarge {
        /// The frame's format.
        format: PixelFormat,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// The limit, [`MAX_DIMENSION`].
        max: usize,
    },
    /// A YUYV width that is odd (YUYV stores pixels in pairs).
    #[error("{format} frame {width}x{height} has an odd width: YUYV stores pixels in pairs, so the width must be even")]
    OddWidth {
        /// The frame's format.
        format: PixelFormat,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// A line stride (`bytesperline`) shorter than one line of pixels, or above [`MAX_STRIDE`].
    #[error(
        "{format} frame {width}x{height}: stride (bytesperline) {stride} is out of range: it must be 0 (packed) or \
         between {line} (one line of {width} pixels) and {max} bytes"
    )]
    Stride {
        /// The frame's format.
        format: PixelFormat,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// The stride given, in bytes.
        stride: usize,
        /// Bytes in one line of pixels without padding.
        line: usize,
        /// The limit, [`MAX_STRIDE`].
        max: usize,
    },
    /// A buffer whose length does not match the dimensions and stride.
    #[error(
        "{format} frame {width}x{height} with stride {stride}: expected {} bytes, got {got}",
        expected_bytes(.min, .expected)
    )]
    Size {
        /// The frame's format.
        format: PixelFormat,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// The stride used, in bytes (the packed line length when 0 was given).
        stride: usize,
        /// `stride * height`.
        expected: usize,
        /// The shortest length accepted: `expected` less the last line's padding.
        min: usize,
        /// The buffer's length.
        got: usize,
    },
    /// A compressed frame that cannot be decoded.
    #[error("{format} frame {width}x{height} ({got} bytes) cannot be decoded: {reason}")]
    Decode {
        /// The frame's format.
        format: PixelFormat,
        /// Width in pixels (as negotiated).
        width: usize,
        /// Height in pixels (as negotiated).
        height: usize,
        /// The buffer's length.
        got: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A compressed frame whose own dimensions differ from the negotiated ones.
    #[error("{format} frame is {got_width}x{got_height}, but {width}x{height} was negotiated")]
    Dimensions {
        /// The frame's format.
        format: PixelFormat,
        /// Width in pixels (as negotiated).
        width: usize,
        /// Height in pixels (as negotiated).
        height: usize,
        /// Width the frame's header declares.
        got_width: usize,
        /// Height the frame's header declares.
        got_height: usize,
    },
}

/// `"N"` or `"M to N"` for [`PixfmtError::Size`].
fn expected_bytes(min: &usize, expected: &usize) -> String {
    if min == expected {
        expected.to_string()
    } else {
        format!("{min} to {expected}")
    }
}

/// Converts one frame. `stride` = bytes per line as the driver reports it (bytesperline; may exceed
/// `width * bpp`: padding must be skipped); 0 means tightly packed. The stride is ignored for MJPEG.
///
/// # Errors
///
/// [`PixfmtError`] for a zero or too large dimension, an odd YUYV width, a stride out of range, a buffer whose
/// length does not match, or an MJPEG frame that cannot be decoded or has other dimensions than `width`×`height`.
pub fn convert(
    format: PixelFormat,
    width: usize,
    height: usize,
    stride: usize,
    bytes: &[u8],
) -> Result<Frame, PixfmtError> {
    if width == 0 || height == 0 {
        return Err(PixfmtError::ZeroSize { format, width, height });
    }
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(PixfmtError::TooLarge {
            format,
            width,
            height,
            max: MAX_DIMENSION,
        });
    }
    let Some(bpp) = format.bytes_per_pixel() else {
        return mjpeg_to_rgb(width, height, bytes);
    };
    if format == PixelFormat::Yuyv && !width.is_multiple_of(2) {
        return Err(PixfmtError::OddWidth { format, width, height });
    }
    let lines = Lines::new(format, width, height, bpp, stride, bytes)?;
    let pixels = width * height;
    Ok(match format {
        PixelFormat::Yuyv => {
            let mut data = Vec::with_capacity(pixels * 3);
            for line in lines {
                for pair in line.chunks_exact(4) {
                    if let &[y0, u, y1, v] = pair {
                        data.extend_from_slice(&yuv_to_rgb(y0, u, v));
                        data.extend_from_slice(&yuv_to_rgb(y1, u, v));
                    }
                }
            }
            Frame::Rgb { width, height, data }
        }
        PixelFormat::Rgb3 => {
            let mut data = Vec::with_capacity(pixels * 3);
            for line in lines {
                data.extend_from_slice(line);
            }
            Frame::Rgb { width, height, data }
        }
        PixelFormat::Grey => {
            let mut data = Vec::with_capacity(pixels * 3);
            for line in lines {
                data.extend(line.iter().flat_map(|&g| [g, g, g]));
            }
            Frame::Rgb { width, height, data }
        }
        PixelFormat::Y16 | PixelFormat::Z16 => {
            let mut data = Vec::with_capacity(pixels);
            for line in lines {
                data.extend(
                    line.chunks_exact(2)
                        .filter_map(|c| <[u8; 2]>::try_from(c).ok())
                        .map(u16::from_le_bytes),
                );
            }
            Frame::Gray16 { width, height, data }
        }
        PixelFormat::Mjpeg => return mjpeg_to_rgb(width, height, bytes),
    })
}

/// The lines of an uncompressed frame without their padding, after checking stride and length.
struct Lines<'a> {
    rows: std::slice::Chunks<'a, u8>,
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(
        format: PixelFormat,
        width: usize,
        height: usize,
        bpp: usize,
        stride: usize,
        bytes: &'a [u8],
    ) -> Result<Self, PixfmtError> {
        // width <= MAX_DIMENSION and bpp <= 3, so this cannot overflow; stride * height is below 2^31.
        let line = width * bpp;
        if stride != 0 && (stride < line || stride > MAX_STRIDE) {
            return Err(PixfmtError::Stride {
                format,
                width,
                height,
                stride,
                line,
                max: MAX_STRIDE,
            });
        }
        let stride = if stride == 0 { line } else { stride };
        let expected = stride * height;
        let min = expected - (stride - line);
        let got = bytes.len();
        if got < min || got > expected {
            return Err(PixfmtError::Size {
                format,
                width,
                height,
                stride,
                expected,
                min,
                got,
            });
        }
        Ok(Self {
            rows: bytes.chunks(stride),
            line,
        })
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // Every chunk holds at least `line` bytes (checked in `new`); `get` keeps that a non-panicking fact.
        self.rows.next().and_then(|row| row.get(..self.line))
    }
}

/// One YCbCr sample (BT.601, limited range) to 8-bit R'G'B', clamped to 0..=255.
///
/// ITU-R BT.601-7 (Kr = 0.299, Kb = 0.114; Y' in 16..=235, Cb/Cr in 16..=240, the quantisation V4L2 uses by
/// default for YUYV from UVC webcams: `V4L2_YCBCR_ENC_601`, `V4L2_QUANTIZATION_LIM_RANGE`):
///
/// ```text
/// R = 1.164 (Y - 16)                     + 1.596 (Cr - 128)
/// G = 1.164 (Y - 16) - 0.392 (Cb - 128) - 0.813 (Cr - 128)
/// B = 1.164 (Y - 16) + 2.017 (Cb - 128)
/// ```
///
/// (1.164 = 255/219, 1.596 = 1.402·255/224, 0.392 = 0.344136·255/224, 0.813 = 0.714136·255/224,
/// 2.017 = 1.772·255/224), computed in 8-bit fixed point, the integer form Microsoft gives in "Recommended 8-Bit
/// YUV Formats for Video Rendering" (coefficients ×256, rounded):
///
/// ```text
/// C = Y - 16, D = Cb - 128, E = Cr - 128
/// R = clamp((298 C           + 409 E + 128) >> 8)
/// G = clamp((298 C - 100 D   - 208 E + 128) >> 8)
/// B = clamp((298 C + 516 D           + 128) >> 8)
/// ```
pub fn yuv_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16) + 128;
    let d = i32::from(cb) - 128;
    let e = i32::from(cr) - 128;
    [
        clamp_u8((c + 409 * e) >> 8),
        clamp_u8((c - 100 * d - 208 * e) >> 8),
        clamp_u8((c + 516 * d) >> 8),
    ]
}

/// `v` clamped to 0..=255.
fn clamp_u8(v: i32) -> u8 {
    u8::try_from(v.clamp(0, 255)).unwrap_or(u8::MAX)
}

/// JPEG markers this module looks at (ITU-T T.81 Table B.1).
mod marker {
    /// Start of image.
    pub const SOI: u8 = 0xD8;
    /// End of image.
    pub const EOI: u8 = 0xD9;
    /// Start of scan.
    pub const SOS: u8 = 0xDA;
    /// Define Huffman table(s).
    pub const DHT: u8 = 0xC4;
    /// Temporary use in arithmetic coding; stands alone (no length).
    pub const TEM: u8 = 0x01;
}

/// The standard Huffman tables of ITU-T T.81 Annex K.3 (Tables K.3 to K.6) as one DHT segment: luminance DC
/// (class 0, id 0), chrominance DC (0, 1), luminance AC (1, 0), chrominance AC (1, 1). These are the tables the
/// MJPEG definitions (OpenDML AVI, UVC payload) prescribe for frames that carry none.
#[rustfmt::skip]
const DEFAULT_DHT: [u8; 420] = [
    0xFF, marker::DHT, 0x01, 0xA2, // DHT marker, segment length 418
    // Table K.3, luminance DC: class 0, id 0; the number of codes of each length 1..=16, then the 12 values.
    0x00,
    0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B,
    // Table K.4, chrominance DC: class 0, id 1.
    0x01,
    0x00, 0x03, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B,
    // Table K.5, luminance AC: class 1, id 0; 162 values.
    0x10,
    0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05, 0x05, 0x04, 0x04, 0x00, 0x00, 0x01, 0x7D,
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
    0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
    // Table K.6, chrominance AC: class 1, id 1; 162 values.
    0x11,
    0x00, 0x02, 0x01, 0x02, 0x04, 0x04, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x00, 0x01, 0x02, 0x77,
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
    0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
    0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
    0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
    0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
    0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
    0xF9, 0xFA,
];

/// Where the parts of a JPEG stream are.
#[derive(Debug, PartialEq, Eq)]
struct JpegLayout {
    /// Offset of the first SOS marker.
    first_sos: usize,
    /// Whether a DHT segment comes before the first SOS.
    has_dht: bool,
    /// Offset just past the EOI marker: the stream's end, anything after it is not part of the image.
    end: usize,
}

/// The length field of the marker segment at `at` (`FF xx LL LL`): the offset just past the segment.
fn segment_end(bytes: &[u8], at: usize) -> Result<usize, String> {
    let len = match bytes.get(at.saturating_add(2)..at.saturating_add(4)) {
        Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
        _ => return Err(format!("the stream ends inside the marker segment at byte {at}")),
    };
    if len < 2 {
        return Err(format!("the marker segment at byte {at} has an invalid length {len}"));
    }
    let end = at.saturating_add(2).saturating_add(len);
    if end > bytes.len() {
        return Err(format!(
            "the marker segment at byte {at} ({len} bytes) runs past the end: the frame is truncated"
        ));
    }
    Ok(end)
}

/// Walks the marker segments (T.81 Annex B) to the first scan, then the entropy-coded data to the EOI marker.
fn jpeg_layout(bytes: &[u8]) -> Result<JpegLayout, String> {
    if !bytes.starts_with(&[0xFF, marker::SOI]) {
        return Err("not a JPEG: no SOI marker (FF D8) at the start".to_string());
    }
    // Header: marker segments up to the first SOS.
    let mut at = 2;
    let mut has_dht = false;
    let (first_sos, mut scan) = loop {
        match bytes.get(at) {
            None => return Err("the stream ends before the first scan (no SOS marker)".to_string()),
            Some(0xFF) => {}
            Some(other) => return Err(format!("expected a marker at byte {at}, found 0x{other:02X}")),
        }
        // Any number of 0xFF fill bytes may precede a marker.
        while bytes.get(at.saturating_add(1)) == Some(&0xFF) {
            at = at.saturating_add(1);
        }
        let Some(&code) = bytes.get(at.saturating_add(1)) else {
            return Err("the stream ends before the first scan (no SOS marker)".to_string());
        };
        match code {
            marker::TEM | 0xD0..=0xD7 => at = at.saturating_add(2),
            marker::SOI | marker::EOI | 0x00 => {
                return Err(format!(
                    "unexpected marker FF {code:02X} at byte {at} before the first scan"
                ));
            }
            marker::SOS => break (at, segment_end(bytes, at)?),
            _ => {
                has_dht |= code == marker::DHT;
                at = segment_end(bytes, at)?;
            }
        }
    };
    // Entropy-coded data: 0xFF is followed by 0x00 (stuffing), a restart marker, fill bytes or a marker; the
    // marker segments that may sit between the scans of a progressive image are skipped whole.
    loop {
        let Some(ff) = bytes.get(scan..).and_then(|rest| rest.iter().position(|&b| b == 0xFF)) else {
            return Err("no EOI marker (FF D9) after the scan: the frame is truncated".to_string());
        };
        let at = scan.saturating_add(ff);
        match bytes.get(at.saturating_add(1)) {
            None => return Err("no EOI marker (FF D9) after the scan: the frame is truncated".to_string()),
            Some(0x00 | 0xD0..=0xD7) => scan = at.saturating_add(2),
            Some(0xFF) => scan = at.saturating_add(1),
            Some(&marker::EOI) => {
                return Ok(JpegLayout {
                    first_sos,
                    has_dht,
                    end: at.saturating_add(2),
                });
            }
            Some(_) => scan = segment_end(bytes, at)?,
        }
    }
}

/// Decodes one MJPEG frame to RGB with zune-jpeg, after cutting it at its EOI and adding the default Huffman
/// tables when it has none.
///
/// The decoder options are those `preprocess::image` decodes JPEG files with (output colour space RGB, zune's
/// defaults otherwise, not strict), so a frame decodes to the same pixels as the same JPEG read from a file; the
/// size limits are [`MAX_DIMENSION`], and the header's dimensions are checked against the negotiated ones before
/// the image is decoded.
fn mjpeg_to_rgb(width: usize, height: usize, bytes: &[u8]) -> Result<Frame, PixfmtError> {
    use zune_jpeg::JpegDecoder;
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;

    let format = PixelFormat::Mjpeg;
    let got = bytes.len();
    let decode_error = |reason: String| PixfmtError::Decode {
        format,
        width,
        height,
        got,
        reason,
    };
    let layout = jpeg_layout(bytes).map_err(decode_error)?;
    let image = bytes
        .get(..layout.end)
        .ok_or_else(|| decode_error("EOI marker past the end of the buffer".to_string()))?;
    let with_tables;
    let image = if layout.has_dht {
        image
    } else {
        let (header, scan) = image
            .split_at_checked(layout.first_sos)
            .ok_or_else(|| decode_error("SOS marker past the end of the buffer".to_string()))?;
        with_tables = [header, &DEFAULT_DHT, scan].concat();
        with_tables.as_slice()
    };

    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_DIMENSION)
        .set_max_height(MAX_DIMENSION);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(image), options);
    decoder
        .decode_headers()
        .map_err(|e| decode_error(format!("invalid JPEG header: {e:?}")))?;
    let (got_width, got_height) = decoder
        .dimensions()
        .ok_or_else(|| decode_error("JPEG without a frame header".to_string()))?;
    if (got_width, got_height) != (width, height) {
        return Err(PixfmtError::Dimensions {
            format,
            width,
            height,
            got_width,
            got_height,
        });
    }
    let data = decoder
        .decode()
        .map_err(|e| decode_error(format!("invalid JPEG data: {e:?}")))?;
    let expected = width * height * 3;
    if data.len() != expected {
        return Err(decode_error(format!(
            "decoded to {} bytes instead of {expected} (width x height x 3)",
            data.len()
        )));
    }
    Ok(Frame::Rgb { width, height, data })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const W: usize = 64;
    const H: usize = 48;

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pixfmt")
            .join(name);
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (made by tools/make_pixfmt_fixtures.sh)", path.display()))
    }

    /// The 16-bit samples of a grayscale PNG in tests/fixtures/media (PNG stores them big-endian), cropped.
    fn png16_crop(name: &str, x0: usize, y0: usize, w: usize, h: usize) -> Vec<u16> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/media")
            .join(name);
        let file = std::fs::File::open(&path).unwrap();
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::IDENTITY);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.color_type, info.bit_depth),
            (png::ColorType::Grayscale, png::BitDepth::Sixteen)
        );
        let width = info.width as usize;
        assert!(x0 + w <= width && y0 + h <= info.height as usize);
        let mut out = Vec::with_capacity(w * h);
        for y in y0..y0 + h {
            let row = &buf[y * info.line_size..(y + 1) * info.line_size];
            for x in x0..x0 + w {
                out.push(u16::from_be_bytes([row[2 * x], row[2 * x + 1]]));
            }
        }
        out
    }

    fn rgb(frame: Frame) -> (usize, usize, Vec<u8>) {
        match frame {
            Frame::Rgb { width, height, data } => (width, height, data),
            other => panic!("expected RGB, got {other:?}"),
        }
    }

    fn gray16(frame: Frame) -> (usize, usize, Vec<u16>) {
        match frame {
            Frame::Gray16 { width, height, data } => (width, height, data),
            other => panic!("expected Gray16, got {other:?}"),
        }
    }

    /// (mean, max) absolute difference.
    fn abs_err(a: &[u8], b: &[u8]) -> (f64, u8) {
        assert_eq!(a.len(), b.len());
        let mut sum = 0u64;
        let mut max = 0u8;
        for (&x, &y) in a.iter().zip(b) {
            let d = x.abs_diff(y);
            sum += u64::from(d);
            max = max.max(d);
        }
        (sum as f64 / a.len() as f64, max)
    }

    /// BT.601 luma of interleaved RGB, rounded.
    fn luma(rgb: &[u8]) -> Vec<u8> {
        rgb.chunks_exact(3)
            .map(|p| (0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])).round() as u8)
            .collect()
    }

    /// Inserts `pad` bytes of `fill` after each `line` bytes.
    fn pad_lines(tight: &[u8], line: usize, pad: usize, fill: u8) -> Vec<u8> {
        tight
            .chunks_exact(line)
            .flat_map(|l| l.iter().copied().chain(std::iter::repeat_n(fill, pad)))
            .collect()
    }

    /// Knuth's MMIX linear congruential generator; the high bits are used.
    struct Lcg(u64);

    impl Lcg {
        fn next_u32(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 32) as u32
        }
        fn below(&mut self, n: usize) -> usize {
            self.next_u32() as usize % n
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next_u32() as u8).collect()
        }
    }

    #[test]
    fn fourcc_round_trips_and_names() {
        for format in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_fourcc(format.fourcc()), Some(format));
            assert_eq!(format.to_string(), format.name());
            assert_eq!(format.name().as_bytes(), format.fourcc().trim_ascii_end());
        }
        assert_eq!(PixelFormat::from_fourcc(*b"Y16 "), Some(PixelFormat::Y16));
        assert_eq!(PixelFormat::from_fourcc(*b"Z16 "), Some(PixelFormat::Z16));
        assert_eq!(PixelFormat::from_fourcc(*b"JPEG"), Some(PixelFormat::Mjpeg));
        assert_eq!(PixelFormat::from_fourcc(*b"Y16\0"), None);
        assert_eq!(PixelFormat::from_fourcc(*b"NV12"), None);
        assert_eq!(PixelFormat::from_fourcc(*b"yuyv"), None);
    }

    #[test]
    fn yuv_to_rgb_matches_bt601_limited_range() {
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(yuv_to_rgb(126, 128, 128), [128, 128, 128]);
        // 75% colour bars (ITU-R BT.801 levels): red Y=65 Cb=100 Cr=212 → (191, 0, 0) ±1.
        let red = yuv_to_rgb(65, 100, 212);
        assert!(red[0].abs_diff(191) <= 1 && red[1] <= 1 && red[2] <= 1, "{red:?}");
        // Out-of-range inputs clamp instead of wrapping.
        assert_eq!(yuv_to_rgb(0, 0, 0)[0], 0);
        assert_eq!(yuv_to_rgb(255, 255, 255)[2], 255);
    }

    #[test]
    fn yuyv_matches_ffmpeg_rgb24_of_the_same_image() {
        let reference = fixture("astronaut_64x48.rgb24");
        let (w, h, data) = rgb(convert(PixelFormat::Yuyv, W, H, 0, &fixture("astronaut_64x48.yuyv")).unwrap());
        assert_eq!((w, h, data.len()), (W, H, W * H * 3));
        let (mean, max) = abs_err(&data, &reference);
        let (luma_mean, luma_max) = abs_err(&luma(&data), &luma(&reference));
        println!("YUYV vs rgb24: RGB mean {mean:.3} max {max}; luma mean {luma_mean:.3} max {luma_max}");
        assert!(luma_mean < 3.0 && luma_max < 40, "luma mean {luma_mean} max {luma_max}");
        assert!(mean < 4.0, "RGB mean {mean}");
    }

    #[test]
    fn yuyv_skips_stride_padding() {
        let tight = fixture("astronaut_64x48.yuyv");
        let expected = convert(PixelFormat::Yuyv, W, H, 0, &tight).unwrap();
        let padded = pad_lines(&tight, W * 2, 32, 0x80);
        assert_eq!(convert(PixelFormat::Yuyv, W, H, W * 2 + 32, &padded).unwrap(), expected);
        // The last line's padding may be left off.
        let short = &padded[..padded.len() - 32];
        assert_eq!(convert(PixelFormat::Yuyv, W, H, W * 2 + 32, short).unwrap(), expected);
        // A stride equal to the line is the same as 0.
        assert_eq!(convert(PixelFormat::Yuyv, W, H, W * 2, &tight).unwrap(), expected);
    }

    #[test]
    fn mjpeg_matches_ffmpeg_rgb24_of_the_same_image() {
        let reference = fixture("astronaut_64x48.rgb24");
        // Quality 2 (ffmpeg -q:v 2). The RGB error is mostly chroma subsampling on a small, detailed image: 4:2:0
        // halves the chroma vertically as well, so it is allowed a little more than the 4:2:2 UVC cameras send.
        for (name, max_rgb_mean) in [
            ("astronaut_64x48_yuvj422p.mjpg", 4.0),
            ("astronaut_64x48_yuvj420p_optimal.mjpg", 5.0),
        ] {
            let (w, h, data) = rgb(convert(PixelFormat::Mjpeg, W, H, 0, &fixture(name)).unwrap());
            assert_eq!((w, h, data.len()), (W, H, W * H * 3));
            let (mean, max) = abs_err(&data, &reference);
            let (luma_mean, luma_max) = abs_err(&luma(&data), &luma(&reference));
            println!("{name} vs rgb24: RGB mean {mean:.3} max {max}; luma mean {luma_mean:.3} max {luma_max}");
            assert!(mean < max_rgb_mean, "{name}: RGB mean {mean}");
            assert!(
                luma_mean < 3.0 && luma_max < 40,
                "{name}: luma mean {luma_mean} max {luma_max}"
            );
        }
    }

    #[test]
    fn mjpeg_decodes_like_preprocess_jpeg_decoding() {
        // The same zune-jpeg call as preprocess::image::jpeg_to_rgb, on the same file.
        use zune_jpeg::JpegDecoder;
        use zune_jpeg::zune_core::bytestream::ZCursor;
        use zune_jpeg::zune_core::colorspace::ColorSpace;
        use zune_jpeg::zune_core::options::DecoderOptions;
        let bytes = fixture("astronaut_64x48_yuvj422p.mjpg");
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_max_width(1 << 15)
            .set_max_height(1 << 15);
        let direct = JpegDecoder::new_with_options(ZCursor::new(&bytes[..]), options)
            .decode()
            .unwrap();
        assert_eq!(rgb(convert(PixelFormat::Mjpeg, W, H, 0, &bytes).unwrap()).2, direct);
    }

    #[test]
    fn default_huffman_tables_are_the_annex_k_tables_ffmpeg_writes() {
        // ffmpeg -huffman default writes T.81 Annex K tables (libavcodec/jpegtables.c) in one DHT segment.
        let bytes = fixture("astronaut_64x48_yuvj422p.mjpg");
        let at = bytes.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
        assert_eq!(&bytes[at..at + DEFAULT_DHT.len()], &DEFAULT_DHT[..]);
    }

    #[test]
    fn mjpeg_without_huffman_tables_gets_the_default_ones() {
        let with = fixture("astronaut_64x48_yuvj422p.mjpg");
        let without = fixture("astronaut_64x48_yuvj422p_nodht.mjpg");
        assert!(
            !without.windows(2).any(|w| w == [0xFF, 0xC4]),
            "fixture still has a DHT segment"
        );
        let layout = jpeg_layout(&without).unwrap();
        assert!(!layout.has_dht);
        assert_eq!(layout.end, without.len());
        let expected = convert(PixelFormat::Mjpeg, W, H, 0, &with).unwrap();
        assert_eq!(convert(PixelFormat::Mjpeg, W, H, 0, &without).unwrap(), expected);
        // zune-jpeg alone fills in default tables only for frames with an "AVI1" APP0 segment (as in AVI files);
        // this frame has none, so without the inserted tables it fails.
        let decode = |bytes: &[u8]| {
            use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
            let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
            zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options).decode()
        };
        let plain = decode(&without);
        println!(
            "zune-jpeg alone on the DHT-less frame: {:?}",
            plain.as_ref().map(Vec::len)
        );
        assert!(plain.is_err());
        // With an AVI1 segment zune-jpeg uses its own copy of the Annex K tables: the same pixels as ours.
        let avi1 = [
            &without[..2],
            &[0xFF, 0xE0, 0x00, 0x10],
            b"AVI1\0",
            &[0; 9],
            &without[2..],
        ]
        .concat();
        assert_eq!(rgb(expected).2, decode(&avi1).unwrap());
        assert_eq!(
            rgb(convert(PixelFormat::Mjpeg, W, H, 0, &avi1).unwrap()).2,
            decode(&avi1).unwrap()
        );
    }

    #[test]
    fn mjpeg_ignores_bytes_after_eoi() {
        let clean = fixture("astronaut_64x48_yuvj422p.mjpg");
        let expected = convert(PixelFormat::Mjpeg, W, H, 0, &clean).unwrap();
        let mut rng = Lcg(7);
        let mut zeros = clean.clone();
        zeros.resize(clean.len() + 4096, 0);
        let mut garbage = clean.clone();
        garbage.extend(rng.bytes(4096));
        garbage.extend([0xFF, 0xD8, 0xFF, 0xD9, 0xFF]);
        for (what, bytes) in [("zeros", zeros), ("random bytes", garbage)] {
            assert_eq!(
                convert(PixelFormat::Mjpeg, W, H, 0, &bytes).unwrap(),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn mjpeg_truncated_or_garbage_is_a_decode_error() {
        let clean = fixture("astronaut_64x48_yuvj422p.mjpg");
        let mut rng = Lcg(11);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("random", rng.bytes(3000)),
            ("SOI only", vec![0xFF, 0xD8]),
            ("half a frame", clean[..clean.len() / 2].to_vec()),
            ("no EOI", clean[..clean.len() - 2].to_vec()),
            ("first 600 bytes", clean[..600].to_vec()),
        ];
        for (what, bytes) in cases {
            match convert(PixelFormat::Mjpeg, W, H, 0, &bytes) {
                Err(e @ PixfmtError::Decode { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("MJPG frame 64x48") && msg.contains(&format!("({} bytes)", bytes.len())));
                    println!("{what}: {msg}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn mjpeg_with_other_dimensions_is_an_error() {
        let err = convert(
            PixelFormat::Mjpeg,
            640,
            480,
            0,
            &fixture("astronaut_64x48_yuvj422p.mjpg"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PixfmtError::Dimensions {
                format: PixelFormat::Mjpeg,
                width: 640,
                height: 480,
                got_width: 64,
                got_height: 48
            }
        );
        assert_eq!(err.to_string(), "MJPG frame is 64x48, but 640x480 was negotiated");
    }

    #[test]
    fn rgb3_is_copied_without_stride_padding() {
        let tight = fixture("astronaut_64x48.rgb24");
        assert_eq!(rgb(convert(PixelFormat::Rgb3, W, H, 0, &tight).unwrap()).2, tight);
        for pad in [1, 13, 64] {
            let padded = pad_lines(&tight, W * 3, pad, 0xEE);
            assert_eq!(
                rgb(convert(PixelFormat::Rgb3, W, H, W * 3 + pad, &padded).unwrap()).2,
                tight
            );
            let short = &padded[..padded.len() - pad];
            assert_eq!(
                rgb(convert(PixelFormat::Rgb3, W, H, W * 3 + pad, short).unwrap()).2,
                tight
            );
        }
    }

    #[test]
    fn grey_is_replicated_exactly() {
        let grey = fixture("astronaut_64x48.gray");
        let expected: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
        assert_eq!(
            rgb(convert(PixelFormat::Grey, W, H, 0, &grey).unwrap()),
            (W, H, expected.clone())
        );
        let padded = pad_lines(&grey, W, 3, 0x11);
        assert_eq!(
            rgb(convert(PixelFormat::Grey, W, H, W + 3, &padded).unwrap()).2,
            expected
        );
        // It is the luma of the colour reference (ffmpeg's BT.601 full-range gray).
        let (mean, max) = abs_err(&grey, &luma(&fixture("astronaut_64x48.rgb24")));
        println!("GREY vs luma of rgb24: mean {mean:.3} max {max}");
        assert!(max <= 2, "max {max}");
    }

    #[test]
    fn z16_matches_the_depth_png_exactly() {
        let expected = png16_crop("motorcycle_depth_mm_uint16.png", 320, 240, W, H);
        let raw = fixture("motorcycle_depth_crop64x48_x320_y240.z16");
        let (w, h, data) = gray16(convert(PixelFormat::Z16, W, H, 0, &raw).unwrap());
        assert_eq!((w, h), (W, H));
        assert_eq!(data, expected);
        // A real depth crop: holes (0 = no data) and a spread of distances (millimetres).
        let holes = data.iter().filter(|&&d| d == 0).count();
        let (lo, hi) = data
            .iter()
            .filter(|&&d| d != 0)
            .fold((u16::MAX, 0), |(lo, hi), &d| (lo.min(d), hi.max(d)));
        println!("Z16 crop: {holes} holes, depth {lo}..={hi} mm");
        assert!(holes > 0 && holes < W * H && lo < hi);
        // Stride padding is skipped.
        let padded = pad_lines(&raw, W * 2, 8, 0xFF);
        assert_eq!(
            gray16(convert(PixelFormat::Z16, W, H, W * 2 + 8, &padded).unwrap()).2,
            expected
        );
    }

    #[test]
    fn y16_matches_the_thermal_png_exactly() {
        let expected = png16_crop("flir_e60_moving_car_CC0.raw16.png", 128, 88, W, H);
        let raw = fixture("flir_e60_crop64x48_x128_y88.y16");
        let (w, h, data) = gray16(convert(PixelFormat::Y16, W, H, 0, &raw).unwrap());
        assert_eq!((w, h), (W, H));
        assert_eq!(data, expected);
        assert!(
            data.iter().any(|&v| v > 0xFF),
            "values above 255 exercise the high byte"
        );
        // Little-endian: swapping the bytes of the buffer changes every value that is not a palindrome.
        let swapped: Vec<u8> = raw.chunks_exact(2).flat_map(|c| [c[1], c[0]]).collect();
        assert_ne!(
            gray16(convert(PixelFormat::Y16, W, H, 0, &swapped).unwrap()).2,
            expected
        );
    }

    #[test]
    fn zero_and_oversized_dimensions_are_rejected() {
        for format in PixelFormat::ALL {
            for (w, h) in [(0, 48), (64, 0), (0, 0)] {
                let err = convert(format, w, h, 0, &[0; 64]).unwrap_err();
                assert_eq!(
                    err,
                    PixfmtError::ZeroSize {
                        format,
                        width: w,
                        height: h
                    }
                );
                assert!(err.to_string().contains(&format!("{format} frame {w}x{h}")), "{err}");
            }
            for (w, h) in [(MAX_DIMENSION + 2, 2), (2, MAX_DIMENSION + 1), (usize::MAX, usize::MAX)] {
                let err = convert(format, w, h, 0, &[]).unwrap_err();
                assert!(
                    matches!(err, PixfmtError::TooLarge { max: MAX_DIMENSION, .. }),
                    "{err:?}"
                );
            }
        }
        // The limit itself is accepted (the buffer is then the problem).
        let err = convert(PixelFormat::Grey, MAX_DIMENSION, 1, 0, &[]).unwrap_err();
        assert!(
            matches!(
                err,
                PixfmtError::Size {
                    expected: MAX_DIMENSION,
                    got: 0,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn odd_yuyv_width_is_rejected() {
        let err = convert(PixelFormat::Yuyv, 63, 48, 0, &[0; 63 * 48 * 2]).unwrap_err();
        assert_eq!(
            err,
            PixfmtError::OddWidth {
                format: PixelFormat::Yuyv,
                width: 63,
                height: 48
            }
        );
        assert!(
            err.to_string().starts_with("YUYV frame 63x48 has an odd width"),
            "{err}"
        );
        // Other formats take odd widths.
        assert!(convert(PixelFormat::Rgb3, 63, 2, 0, &[0; 63 * 2 * 3]).is_ok());
    }

    #[test]
    fn short_and_long_buffers_name_expected_and_got() {
        let yuyv = fixture("astronaut_64x48.yuyv");
        let err = convert(PixelFormat::Yuyv, W, H, 0, &yuyv[..yuyv.len() - 1]).unwrap_err();
        assert_eq!(
            err,
            PixfmtError::Size {
                format: PixelFormat::Yuyv,
                width: W,
                height: H,
                stride: 128,
                expected: 6144,
                min: 6144,
                got: 6143
            }
        );
        assert_eq!(
            err.to_string(),
            "YUYV frame 64x48 with stride 128: expected 6144 bytes, got 6143"
        );
        let mut long = yuyv.clone();
        long.push(0);
        assert!(matches!(
            convert(PixelFormat::Yuyv, W, H, 0, &long),
            Err(PixfmtError::Size {
                expected: 6144,
                got: 6145,
                ..
            })
        ));
        // With padding, the range is named.
        let err = convert(PixelFormat::Y16, 4, 2, 10, &[0; 17]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Y16 frame 4x2 with stride 10: expected 18 to 20 bytes, got 17"
        );
        let err = convert(PixelFormat::Z16, 4, 2, 10, &[0; 21]).unwrap_err();
        assert!(
            matches!(
                err,
                PixfmtError::Size {
                    min: 18,
                    expected: 20,
                    got: 21,
                    ..
                }
            ),
            "{err:?}"
        );
        // Wrong size for each uncompressed format.
        for format in [PixelFormat::Rgb3, PixelFormat::Grey, PixelFormat::Y16, PixelFormat::Z16] {
            assert!(matches!(
                convert(format, W, H, 0, &yuyv[..100]),
                Err(PixfmtError::Size { got: 100, .. })
            ));
        }
        assert!(matches!(
            convert(PixelFormat::Grey, W, H, 0, &[]),
            Err(PixfmtError::Size { got: 0, .. })
        ));
    }

    #[test]
    fn stride_out_of_range_is_rejected() {
        let err = convert(PixelFormat::Rgb3, 64, 48, 191, &[0; 191 * 48]).unwrap_err();
        assert_eq!(
            err,
            PixfmtError::Stride {
                format: PixelFormat::Rgb3,
                width: 64,
                height: 48,
                stride: 191,
                line: 192,
                max: MAX_STRIDE
            }
        );
        assert!(
            err.to_string().contains("stride (bytesperline) 191 is out of range"),
            "{err}"
        );
        assert!(matches!(
            convert(PixelFormat::Grey, 2, 2, usize::MAX, &[0; 4]),
            Err(PixfmtError::Stride { stride: usize::MAX, .. })
        ));
        assert!(matches!(
            convert(PixelFormat::Grey, 2, 2, MAX_STRIDE + 1, &[0; 4]),
            Err(PixfmtError::Stride { .. })
        ));
        // MJPEG ignores the stride.
        assert!(convert(PixelFormat::Mjpeg, W, H, 1, &fixture("astronaut_64x48_yuvj422p.mjpg")).is_ok());
    }

    /// Converts `bytes` and checks the outcome: Ok with the right size, or an error naming the format.
    fn check_converts_or_rejects(
        format: PixelFormat,
        width: usize,
        height: usize,
        stride: usize,
        bytes: &[u8],
    ) -> bool {
        match convert(format, width, height, stride, bytes) {
            Ok(Frame::Rgb {
                width: w,
                height: h,
                data,
            }) => {
                assert_eq!((w, h, data.len()), (width, height, width * height * 3));
                true
            }
            Ok(Frame::Gray16 {
                width: w,
                height: h,
                data,
            }) => {
                assert_eq!((w, h, data.len()), (width, height, width * height));
                true
            }
            Err(e) => {
                assert!(e.to_string().contains(format.name()), "{e}");
                false
            }
        }
    }

    /// Random small dimensions, strides and buffers of random length for the uncompressed formats: every call
    /// returns (no panic), Ok with the right size or an error.
    #[test]
    fn random_raw_buffers_never_panic() {
        let mut rng = Lcg(0x5EED);
        for format in PixelFormat::ALL.into_iter().filter(|&f| f != PixelFormat::Mjpeg) {
            let bpp = format.bytes_per_pixel().unwrap();
            let mut ok = 0;
            for _ in 0..10_000 {
                let (width, height) = (rng.below(17), rng.below(17));
                let line = width * bpp;
                let stride = match rng.below(4) {
                    0 => 0,
                    1 => line,
                    2 => line + rng.below(9),
                    _ => rng.below(64),
                };
                let packed = stride.max(line) * height;
                let len = match rng.below(3) {
                    0 => packed,
                    1 => packed.saturating_sub(stride.max(line)) + line,
                    _ => rng.below(2 * packed + 16),
                };
                let bytes = rng.bytes(len);
                ok += usize::from(check_converts_or_rejects(format, width, height, stride, &bytes));
            }
            println!("{format}: {ok} of 10000 random frames converted, the rest rejected");
            assert!(ok > 0, "{format}: the generator never produced a valid frame");
        }
    }

    /// Random bytes behind a JPEG start, and real frames (with and without DHT) with a few bytes changed and
    /// maybe cut short, with random or the true dimensions: every call returns (no panic).
    #[test]
    fn random_mjpeg_frames_never_panic() {
        let mut rng = Lcg(0xC0FFEE);
        let frames = [
            fixture("astronaut_64x48_yuvj422p.mjpg"),
            fixture("astronaut_64x48_yuvj422p_nodht.mjpg"),
        ];
        let mut ok = 0;
        for _ in 0..10_000 {
            let (mut width, mut height) = (rng.below(17), rng.below(17));
            let bytes = if rng.below(3) == 0 {
                let n = rng.below(256);
                [&[0xFF, 0xD8, 0xFF][..], &rng.bytes(n)].concat()
            } else {
                if rng.below(4) != 0 {
                    (width, height) = (W, H);
                }
                let mut frame = frames[rng.below(2)].clone();
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(frame.len());
                    frame[at] = rng.next_u32() as u8;
                }
                if rng.below(4) == 0 {
                    frame.truncate(rng.below(frame.len()));
                }
                frame
            };
            ok += usize::from(check_converts_or_rejects(PixelFormat::Mjpeg, width, height, 0, &bytes));
        }
        println!("MJPG: {ok} of 10000 random or damaged frames decoded, the rest rejected");
        assert!(ok > 0);
    }
}
