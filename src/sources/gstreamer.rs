//! Cameras through a GStreamer pipeline (`type = "gstreamer"`, cargo feature `gstreamer`).
//!
//! The configured `pipeline` (gst-launch syntax, without a sink) gets `! videoconvert ! appsink` appended; the
//! appsink's caps list the raw formats the modality accepts, so `videoconvert` passes matching frames through
//! untouched and converts anything else (NV12 from a decoder, I420 from `nvvidconv`):
//!
//! | modality | appsink formats | converted by |
//! |---|---|---|
//! | vision | `RGB`, `YUY2`, `GRAY8` | [`pixfmt`](super::pixfmt) RGB3, YUYV, GREY |
//! | thermal | `GRAY16_LE`, `GRAY8` | Y16, GREY |
//! | depth | `GRAY16_LE` | Z16 × `depth_unit_m` |
//!
//! Lines are taken at GStreamer's default stride (each line padded to a multiple of 4 bytes; YUY2 lines of an odd
//! width hold one more pixel, cropped); the appsink does not offer `GstVideoMeta`, so upstream elements deliver
//! that layout. `videoconvert` picks the appsink format closest to its input (YUV sources usually give YUY2,
//! which [`pixfmt`](super::pixfmt) converts with BT.601 limited range, as GStreamer does).
//!
//! **Queue**: the appsink holds at most 2 frames and drops the oldest when the source thread has not pulled them
//! (`max-buffers=2 drop=true`); a dropped frame shows as a gap in the frame times (`gaps_total`). The appsink
//! syncs on the clock (`sync=true`), so a file plays at its real pace and a live camera's frames arrive as they
//! are captured.
//!
//! **Timestamps**: a frame's time is its buffer's presentation time on the pipeline clock (base time + the PTS as
//! running time in its segment), mapped onto the process clock by how long before the pull it lies; buffers
//! without a PTS are stamped on arrival.
//!
//! **Loss and recovery**: an error or end-of-stream on the pipeline's bus, or no frame for `stall` (5 s, or ten
//! frame periods if longer), marks the sensor offline and the pipeline is torn down and rebuilt with a capped
//! backoff (0.2 s doubling to 5 s), the same for an RTSP camera that drops off the network as for a CSI camera
//! that fails. A pipeline that does not parse (syntax, a missing plugin) is a configuration error at start-up.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::config::GstreamerSourceConfig;
use crate::clock::Timestamp;
use crate::modality::Modality;

use super::camera::FrameConverter;
use super::pixfmt::PixelFormat;
use super::{Source, SourceError, SourceOutput, StopFlag};

const SINK_NAME: &str = "sensebind_sink";
const PULL_TIMEOUT_MS: u64 = 100;

/// A GStreamer camera.
pub struct GstreamerSource {
    config: GstreamerSourceConfig,
    description: String,
    converter: FrameConverter,
    stall: Duration,
}

impl std::fmt::Debug for GstreamerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GstreamerSource")
            .field("name", &self.config.name)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// The appsink caps for a modality.
fn sink_caps(modality: Modality) -> &'static str {
    match modality {
        Modality::Depth => "video/x-raw,format=GRAY16_LE",
        Modality::Thermal => "video/x-raw,format=(string){GRAY16_LE,GRAY8}",
        _ => "video/x-raw,format=(string){RGB,YUY2,GRAY8}",
    }
}

/// The full pipeline description for a configured pipeline.
pub fn full_description(config: &GstreamerSourceConfig) -> String {
    format!(
        "{} ! videoconvert ! appsink name={SINK_NAME} caps=\"{}\" max-buffers=2 drop=true sync=true",
        config.pipeline.trim(),
        sink_caps(config.modality)
    )
}

/// A running pipeline and its sink.
struct Running {
    pipeline: gst::Element,
    sink: gst_app::AppSink,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Tearing down never fails in a way the source could act on.
        let _ignored = self.pipeline.set_state(gst::State::Null);
    }
}

impl GstreamerSource {
    /// Checks that the pipeline parses (every element exists) without starting it.
    ///
    /// # Errors
    ///
    /// GStreamer's own message when it cannot be initialised or the pipeline does not parse.
    pub fn new(config: GstreamerSourceConfig) -> Result<Self, SourceError> {
        let description = full_description(&config);
        let err = |reason: String| SourceError {
            source_name: config.name.clone(),
            reason,
        };
        // Fix the process clock's origin before any frame can be stamped relative to it.
        let _origin = crate::clock::now();
        gst::init().map_err(|e| err(format!("cannot initialise GStreamer: {e}")))?;
        let probe = gst::parse::launch(&description)
            .map_err(|e| err(format!("pipeline {:?} does not parse: {e}", config.pipeline)))?;
        drop(probe);
        let period = config
            .rate_hz
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(10.0 / r));
        Ok(Self {
            converter: FrameConverter {
                modality: config.modality,
                depth_unit_m: config.depth_unit_m,
            },
            stall: period.max(Duration::from_secs(5)),
            description,
            config,
        })
    }

    fn start(&self) -> Result<Running, String> {
        let pipeline = gst::parse::launch(&self.description).map_err(|e| format!("does not parse: {e}"))?;
        let sink = pipeline
            .clone()
            .dynamic_cast::<gst::Bin>()
            .ok()
            .and_then(|bin| bin.by_name(SINK_NAME))
            .and_then(|e| e.dynamic_cast::<gst_app::AppSink>().ok())
            .ok_or_else(|| "the pipeline has no appsink".to_owned())?;
        let running = Running { pipeline, sink };
        running
            .pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| bus_error(&running.pipeline).unwrap_or_else(|| "cannot start the pipeline".into()))?;
        Ok(running)
    }

    /// Pulls frames until the pipeline fails, ends or stalls (`Err` with why) or `stop` is raised (`Ok`).
    fn stream(&self, running: &Running, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), String> {
        let mut last_frame = Instant::now();
        let mut logged_bad = false;
        while !stop.is_raised() {
            if let Some(reason) = bus_error(&running.pipeline) {
                return Err(reason);
            }
            let Some(sample) = running
                .sink
                .try_pull_sample(gst::ClockTime::from_mseconds(PULL_TIMEOUT_MS))
            else {
                if running.sink.is_eos() {
                    return Err("end of stream".into());
                }
                if last_frame.elapsed() > self.stall {
                    return Err(format!("no frame for {:.1} s", last_frame.elapsed().as_secs_f64()));
                }
                continue;
            };
            last_frame = Instant::now();
            let t = self.frame_time(&running.pipeline, &sample);
            super::camera::push_frame(out, &self.config.name, &mut logged_bad, t, self.image(&sample));
        }
        Ok(())
    }

    fn frame_time(&self, pipeline: &gst::Element, sample: &gst::Sample) -> Timestamp {
        let now = crate::clock::now();
        let pts = sample.buffer().and_then(|b| b.pts());
        let (Some(pts), Some(base), Some(clock)) = (pts, pipeline.base_time(), pipeline.clock()) else {
            return now;
        };
        // The PTS as running time in its segment (equal to the PTS for a live source starting at 0; not for a
        // decoder whose segment starts elsewhere), plus the base time: the clock time the frame belongs to.
        let running = sample
            .segment()
            .and_then(|seg| seg.downcast_ref::<gst::ClockTime>())
            .and_then(|seg| seg.to_running_time(pts))
            .unwrap_or(pts);
        let clock_now = clock.time();
        let ago = clock_now
            .nseconds()
            .saturating_sub(base.nseconds().saturating_add(running.nseconds()));
        Timestamp(now.0.saturating_sub(ago))
    }

    fn image(&self, sample: &gst::Sample) -> Result<super::FrameImage, String> {
        let caps = sample.caps().ok_or("a sample without caps")?;
        let s = caps.structure(0).ok_or("caps without a structure")?;
        let format = s.get::<&str>("format").map_err(|e| format!("caps {s}: {e}"))?;
        let width = s.get::<i32>("width").map_err(|e| format!("caps {s}: {e}"))?;
        let height = s.get::<i32>("height").map_err(|e| format!("caps {s}: {e}"))?;
        let (pf, bpp) = match format {
            "RGB" => (PixelFormat::Rgb3, 3),
            "YUY2" => (PixelFormat::Yuyv, 2),
            "GRAY8" => (PixelFormat::Grey, 1),
            "GRAY16_LE" if self.config.modality == Modality::Depth => (PixelFormat::Z16, 2),
            "GRAY16_LE" => (PixelFormat::Y16, 2),
            other => return Err(format!("unexpected format {other}")),
        };
        let width = usize::try_from(width).map_err(|_| format!("width {width}"))?;
        let height = usize::try_from(height).map_err(|_| format!("height {height}"))?;
        // YUY2 lines hold whole pixel pairs: an odd width is stored one pixel wider.
        let stored = if pf == PixelFormat::Yuyv {
            width.next_multiple_of(2)
        } else {
            width
        };
        // GStreamer's default video layout: every line padded to 4 bytes.
        let stride = (stored * bpp).div_ceil(4) * 4;
        let buffer = sample.buffer().ok_or("a sample without a buffer")?;
        let map = buffer
            .map_readable()
            .map_err(|e| format!("cannot map the buffer: {e}"))?;
        let image = self
            .converter
            .convert(pf, stored, height, stride, map.as_slice())
            .map_err(|e| e.to_string())?;
        Ok(match image {
            super::FrameImage::Rgb(rgb) if stored != width => {
                let planes = std::array::from_fn(|c| {
                    rgb.planes[c]
                        .chunks_exact(stored)
                        .flat_map(|row| &row[..width])
                        .copied()
                        .collect()
                });
                super::FrameImage::Rgb(std::sync::Arc::new(crate::preprocess::image::RgbImage {
                    width,
                    height,
                    planes,
                }))
            }
            other => other,
        })
    }
}

/// The first error or end-of-stream waiting on the pipeline's bus, as text.
fn bus_error(pipeline: &gst::Element) -> Option<String> {
    let bus = pipeline.bus()?;
    let msg = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos])?;
    Some(match msg.view() {
        gst::MessageView::Error(e) => {
            let from = msg.src().map(|s| s.path_string().to_string()).unwrap_or_default();
            match e.debug() {
                Some(d) => format!("{from}: {} ({d})", e.error()),
                None => format!("{from}: {}", e.error()),
            }
        }
        _ => "end of stream".into(),
    })
}

impl Source for GstreamerSource {
    fn run(&mut self, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), SourceError> {
        // Gaps are judged against the configured rate only: a pipeline's real rate is not known in advance.
        if let Some(rate) = self.config.rate_hz {
            out.expect_rate(rate);
        }
        let name = self.config.name.clone();
        let this = &*self;
        super::run_with_reopen(
            &name,
            "GStreamer pipeline",
            out,
            stop,
            |_| this.start().map(|r| (r, this.config.pipeline.clone())),
            |running, out, stop| this.stream(running, out, stop),
        );
        Ok(())
    }
}
