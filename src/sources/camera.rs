//! What every camera source shares: which pixel formats suit which modality, and turning a converted frame
//! ([`pixfmt::Frame`]) into the [`FrameImage`] the window stage takes.
//!
//! | modality | formats | becomes |
//! |---|---|---|
//! | vision | MJPG, YUYV, RGB3, GREY | 8-bit RGB (GREY replicated to three channels) |
//! | thermal | Y16, GREY | one channel with its native range (16- or 8-bit); the thermal preprocessing scales it |
//! | depth | Z16, Y16 | metres: samples × `depth_unit_m`, 0 = no data |

use std::sync::Arc;

use crate::modality::Modality;
use crate::preprocess::depth::DepthMap;
use crate::preprocess::image::GrayImage;

use super::FrameImage;
use super::pixfmt::{self, Frame, PixelFormat};

/// True when frames in `format` can feed the `modality` tower.
pub fn format_suits(format: PixelFormat, modality: Modality) -> bool {
    preferred_formats(modality).contains(&format)
}

/// The formats a camera source asks for, in order of preference (vision prefers MJPG: the smallest transfer at a
/// given size, so USB cameras reach their highest modes in it).
pub fn preferred_formats(modality: Modality) -> &'static [PixelFormat] {
    match modality {
        Modality::Vision => &[
            PixelFormat::Mjpeg,
            PixelFormat::Yuyv,
            PixelFormat::Rgb3,
            PixelFormat::Grey,
        ],
        Modality::Thermal => &[PixelFormat::Y16, PixelFormat::Grey],
        Modality::Depth => &[PixelFormat::Z16, PixelFormat::Y16],
        Modality::Audio | Modality::Imu | Modality::Text => &[],
    }
}

/// Why a frame could not become an image.
#[derive(Debug, thiserror::Error)]
pub enum CameraFrameError {
    /// The bytes did not convert.
    #[error(transparent)]
    Pixfmt(#[from] pixfmt::PixfmtError),
    /// The format does not suit the modality.
    #[error("{format} frames cannot feed the {modality} tower")]
    Unsuited {
        /// The frame's format.
        format: PixelFormat,
        /// The source's modality.
        modality: Modality,
    },
}

/// Converts camera frames for one source.
#[derive(Debug, Clone, Copy)]
pub struct FrameConverter {
    /// The source's modality.
    pub modality: Modality,
    /// depth: metres per 16-bit unit.
    pub depth_unit_m: f64,
}

impl FrameConverter {
    /// Converts one frame's bytes (`stride` = bytes per line, 0 = packed) to the modality's image.
    ///
    /// # Errors
    ///
    /// [`CameraFrameError`] when the format does not suit the modality or the bytes do not convert.
    pub fn convert(
        &self,
        format: PixelFormat,
        width: usize,
        height: usize,
        stride: usize,
        bytes: &[u8],
    ) -> Result<FrameImage, CameraFrameError> {
        if !format_suits(format, self.modality) {
            return Err(CameraFrameError::Unsuited {
                format,
                modality: self.modality,
            });
        }
        let frame = pixfmt::convert(format, width, height, stride, bytes)?;
        Ok(match (self.modality, frame) {
            (Modality::Thermal, Frame::Rgb { width, height, data }) => FrameImage::Gray(Arc::new(GrayImage {
                width,
                height,
                bit_depth: 8,
                samples: data.iter().step_by(3).map(|&g| u16::from(g)).collect(),
            })),
            (Modality::Thermal, Frame::Gray16 { width, height, data }) => FrameImage::Gray(Arc::new(GrayImage {
                width,
                height,
                bit_depth: 16,
                samples: data,
            })),
            (Modality::Depth, Frame::Gray16 { width, height, data }) => FrameImage::Depth(Arc::new(DepthMap {
                width,
                height,
                metres: data
                    .iter()
                    .map(|&v| (f64::from(v) * self.depth_unit_m) as f32)
                    .collect(),
            })),
            (_, Frame::Rgb { width, height, data }) => FrameImage::Rgb(Arc::new(
                crate::preprocess::video::rgb_from_interleaved(&data, width, height),
            )),
            (modality, Frame::Gray16 { .. }) => return Err(CameraFrameError::Unsuited { format, modality }),
        })
    }
}

/// Pushes a converted frame, or counts the frame that did not convert (`errors_total`) and logs the first such
/// error of the stream (`logged` remembers it).
pub fn push_frame(
    out: &mut super::SourceOutput,
    source: &str,
    logged: &mut bool,
    t: crate::clock::Timestamp,
    image: Result<FrameImage, impl std::fmt::Display>,
) {
    match image {
        Ok(image) => out.push(super::Sample::Frame { t, image }),
        Err(e) => {
            out.error();
            if !*logged {
                tracing::warn!(source = %source, error = %e, "Cannot convert a frame; skipping (further errors are counted).");
                *logged = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_map_to_the_modalities_images() {
        let vision = FrameConverter {
            modality: Modality::Vision,
            depth_unit_m: 0.001,
        };
        let yuyv = [235u8, 128, 16, 128]; // one white and one black pixel
        let FrameImage::Rgb(img) = vision.convert(PixelFormat::Yuyv, 2, 1, 0, &yuyv).unwrap() else {
            panic!("vision gives RGB")
        };
        assert_eq!(img.planes[0], vec![255, 0]);
        assert_eq!(img.planes[2], vec![255, 0]);
        let err = vision.convert(PixelFormat::Z16, 1, 1, 0, &[1, 0]).unwrap_err();
        assert_eq!(err.to_string(), "Z16 frames cannot feed the vision tower");

        let depth = FrameConverter {
            modality: Modality::Depth,
            depth_unit_m: 0.001,
        };
        let FrameImage::Depth(d) = depth.convert(PixelFormat::Z16, 2, 1, 0, &[0xE8, 0x03, 0, 0]).unwrap() else {
            panic!("depth gives a depth map")
        };
        assert_eq!(d.metres, vec![1.0, 0.0]);

        let thermal = FrameConverter {
            modality: Modality::Thermal,
            depth_unit_m: 0.001,
        };
        let FrameImage::Gray(g) = thermal.convert(PixelFormat::Y16, 1, 1, 0, &[0x34, 0x12]).unwrap() else {
            panic!("thermal gives one channel")
        };
        assert_eq!((g.bit_depth, g.samples[0]), (16, 0x1234));
        let FrameImage::Gray(g) = thermal.convert(PixelFormat::Grey, 2, 1, 0, &[7, 9]).unwrap() else {
            panic!("thermal gives one channel")
        };
        assert_eq!((g.bit_depth, g.samples.clone()), (8, vec![7, 9]));
        assert!(thermal.convert(PixelFormat::Yuyv, 2, 1, 0, &yuyv).is_err());
    }

    #[test]
    fn format_names_parse() {
        assert_eq!(PixelFormat::from_name("yuy2"), Some(PixelFormat::Yuyv));
        assert_eq!(PixelFormat::from_name("Y16"), Some(PixelFormat::Y16));
        assert_eq!(PixelFormat::from_name("MJPG"), Some(PixelFormat::Mjpeg));
        assert_eq!(PixelFormat::from_name("NV12"), None);
        assert_eq!(PixelFormat::from_name("TOOLONG"), None);
    }
}

/// Frame rates a device offers for one format and size.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rates {
    /// These rates (frames per second).
    Discrete(Vec<f64>),
    /// Any rate in this range.
    Range {
        /// Lowest.
        min: f64,
        /// Highest.
        max: f64,
    },
    /// The device did not say.
    Unknown,
}

impl Rates {
    fn offers(&self, want: f64) -> bool {
        let close = |r: f64| (r - want).abs() <= want * 0.01;
        match self {
            Rates::Discrete(v) => v.iter().any(|&r| close(r)),
            Rates::Range { min, max } => want >= min * 0.99 && want <= max * 1.01,
            Rates::Unknown => true,
        }
    }

    fn highest(&self) -> Option<f64> {
        match self {
            Rates::Discrete(v) => v
                .iter()
                .copied()
                .fold(None, |a, r| Some(a.map_or(r, |a: f64| a.max(r)))),
            Rates::Range { max, .. } => Some(*max),
            Rates::Unknown => None,
        }
    }
}

impl std::fmt::Display for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fps = |r: f64| {
            if (r - r.round()).abs() < 0.005 {
                format!("{r:.0}")
            } else {
                format!("{r:.2}")
            }
        };
        match self {
            Rates::Discrete(v) => {
                let list: Vec<String> = v.iter().map(|&r| fps(r)).collect();
                write!(f, "{} fps", list.join("/"))
            }
            Rates::Range { min, max } => write!(f, "{}–{} fps", fps(*min), fps(*max)),
            Rates::Unknown => f.write_str("? fps"),
        }
    }
}

/// One mode a camera offers: a format at a size, with its rates.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OfferedMode {
    /// The fourcc as text (`YUYV`, `MJPG`, also formats this program cannot use).
    pub format: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Rates at this size.
    pub rates: Rates,
}

/// What a camera source asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModeRequest {
    /// The source's modality.
    pub modality: Modality,
    /// A format, or the modality's preferred ones in order.
    pub format: Option<PixelFormat>,
    /// A size, or the largest up to 1920 wide.
    pub size: Option<(u32, u32)>,
    /// A rate, or the highest at that size.
    pub rate_hz: Option<f64>,
}

/// The mode chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChosenMode {
    /// Format.
    pub format: PixelFormat,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Rate to ask for (`None`: the device's only or unknown rate).
    pub rate_hz: Option<f64>,
}

/// The widest frame chosen when no size is configured (larger frames cost conversion time and are shrunk to
/// 224 px anyway).
pub const DEFAULT_MAX_WIDTH: u32 = 1920;

/// `"MJPG 1920x1080 30/15 fps; YUYV 640x480 30 fps"`: the modes, for error messages and `sensebind devices`.
pub fn describe_modes(modes: &[OfferedMode]) -> String {
    if modes.is_empty() {
        return "no capture modes".into();
    }
    modes
        .iter()
        .map(|m| format!("{} {}x{} {}", m.format, m.width, m.height, m.rates))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Picks the mode for `want` among `offered`.
///
/// # Errors
///
/// A message naming what was asked for and listing every mode the device offers.
pub fn choose_mode(offered: &[OfferedMode], want: &ModeRequest) -> Result<ChosenMode, String> {
    let formats: Vec<PixelFormat> = match want.format {
        Some(f) => vec![f],
        None => preferred_formats(want.modality).to_vec(),
    };
    for format in &formats {
        let mut fits: Vec<&OfferedMode> = offered
            .iter()
            .filter(|m| PixelFormat::from_name(&m.format) == Some(*format))
            .filter(|m| want.size.is_none_or(|(w, h)| (m.width, m.height) == (w, h)))
            .filter(|m| want.rate_hz.is_none_or(|r| m.rates.offers(r)))
            .collect();
        if fits.is_empty() {
            continue;
        }
        // Largest area within the default width, else the smallest; then the highest rate.
        let area = |m: &OfferedMode| u64::from(m.width) * u64::from(m.height);
        let within: Vec<&OfferedMode> = fits.iter().copied().filter(|m| m.width <= DEFAULT_MAX_WIDTH).collect();
        if !within.is_empty() {
            fits = within;
            fits.sort_by(|a, b| {
                area(b).cmp(&area(a)).then(
                    b.rates
                        .highest()
                        .unwrap_or(0.0)
                        .total_cmp(&a.rates.highest().unwrap_or(0.0)),
                )
            });
        } else {
            fits.sort_by_key(|m| area(m));
        }
        let m = fits[0];
        return Ok(ChosenMode {
            format: *format,
            width: m.width,
            height: m.height,
            rate_hz: want.rate_hz.or_else(|| m.rates.highest()),
        });
    }
    let mut asked = Vec::new();
    asked.push(match want.format {
        Some(f) => f.name().to_owned(),
        None => {
            let names: Vec<&str> = formats.iter().map(|f| f.name()).collect();
            format!("any of {}", names.join("/"))
        }
    });
    if let Some((w, h)) = want.size {
        asked.push(format!("{w}x{h}"));
    }
    if let Some(r) = want.rate_hz {
        asked.push(format!("{r} fps"));
    }
    Err(format!(
        "the device offers no mode with {}; it offers: {}",
        asked.join(" at "),
        describe_modes(offered)
    ))
}

#[cfg(test)]
mod mode_tests {
    use super::*;

    fn mode(format: &str, width: u32, height: u32, rates: &[f64]) -> OfferedMode {
        OfferedMode {
            format: format.into(),
            width,
            height,
            rates: Rates::Discrete(rates.to_vec()),
        }
    }

    fn webcam() -> Vec<OfferedMode> {
        vec![
            mode("YUYV", 640, 480, &[30.0, 15.0]),
            mode("YUYV", 1920, 1080, &[5.0]),
            mode("MJPG", 640, 480, &[30.0]),
            mode("MJPG", 1920, 1080, &[30.0, 15.0]),
            mode("MJPG", 3840, 2160, &[15.0]),
            mode("H264", 1920, 1080, &[30.0]),
        ]
    }

    fn ask(modality: Modality) -> ModeRequest {
        ModeRequest {
            modality,
            format: None,
            size: None,
            rate_hz: None,
        }
    }

    #[test]
    fn defaults_prefer_mjpg_at_the_largest_size_up_to_1920() {
        let m = choose_mode(&webcam(), &ask(Modality::Vision)).unwrap();
        assert_eq!(
            (m.format, m.width, m.height, m.rate_hz),
            (PixelFormat::Mjpeg, 1920, 1080, Some(30.0))
        );
    }

    #[test]
    fn a_configured_format_size_and_rate_are_honoured() {
        let want = ModeRequest {
            format: Some(PixelFormat::Yuyv),
            size: Some((640, 480)),
            rate_hz: Some(15.0),
            ..ask(Modality::Vision)
        };
        let m = choose_mode(&webcam(), &want).unwrap();
        assert_eq!(
            (m.format, m.width, m.height, m.rate_hz),
            (PixelFormat::Yuyv, 640, 480, Some(15.0))
        );
    }

    #[test]
    fn an_impossible_request_lists_every_mode() {
        let want = ModeRequest {
            format: Some(PixelFormat::Yuyv),
            size: Some((1280, 720)),
            ..ask(Modality::Vision)
        };
        let e = choose_mode(&webcam(), &want).unwrap_err();
        assert!(
            e.starts_with("the device offers no mode with YUYV at 1280x720; it offers: YUYV 640x480 30/15 fps;"),
            "{e}"
        );
        assert!(e.contains("H264 1920x1080 30 fps"), "{e}");
        let e = choose_mode(&webcam(), &ask(Modality::Depth)).unwrap_err();
        assert!(e.contains("with any of Z16/Y16"), "{e}");
    }

    #[test]
    fn thermal_and_depth_cameras_pick_their_16_bit_formats() {
        let lepton = vec![
            mode("UYVY", 160, 120, &[9.0]),
            mode("Y16", 160, 120, &[9.0]),
            mode("GREY", 160, 120, &[9.0]),
        ];
        let m = choose_mode(&lepton, &ask(Modality::Thermal)).unwrap();
        assert_eq!((m.format, m.width), (PixelFormat::Y16, 160));
        let realsense = vec![
            OfferedMode {
                format: "Z16".into(),
                width: 848,
                height: 480,
                rates: Rates::Range { min: 6.0, max: 90.0 },
            },
            mode("Z16", 1280, 720, &[30.0, 15.0, 6.0]),
        ];
        let want = ModeRequest {
            rate_hz: Some(60.0),
            ..ask(Modality::Depth)
        };
        let m = choose_mode(&realsense, &want).unwrap();
        assert_eq!((m.width, m.rate_hz), (848, Some(60.0)));
    }

    #[test]
    fn only_larger_than_default_sizes_gives_the_smallest() {
        let big = vec![mode("MJPG", 3840, 2160, &[30.0]), mode("MJPG", 2560, 1440, &[30.0])];
        let m = choose_mode(&big, &ask(Modality::Vision)).unwrap();
        assert_eq!((m.width, m.height), (2560, 1440));
    }
}
