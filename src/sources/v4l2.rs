//! Video4Linux2 cameras (`type = "v4l2"`, cargo feature `v4l2`, through the `v4l` crate).
//!
//! **Device**: a path (`/dev/video0`, or a `/dev/v4l/by-id/...` link that survives re-plugging), or the card
//! name or bus id as `sensebind devices` shows them (exact match first, then a case-insensitive part of the card
//! name); only nodes with capture formats count, so a UVC camera's metadata node is never picked.
//!
//! **Mode**: the configured `format`, `width`×`height` and `rate_hz`, each defaulting as
//! [`camera::choose_mode`](super::camera::choose_mode) says (vision prefers MJPG, largest size up to 1920 wide,
//! highest rate). A request the device cannot meet fails with the list of modes it offers; so does a driver
//! that silently changes the format or size.
//!
//! **Streaming**: memory-mapped, `buffers` driver buffers (default 4; the driver fills the free ones while the
//! source converts one, and when all are full it drops frames itself — visible as a jump in `sequence`, which
//! the source counts in `overrun_samples_total`). Each frame is converted ([`camera::FrameConverter`]) and pushed
//! into the ring.
//!
//! **Timestamps**: drivers that stamp buffers on `CLOCK_MONOTONIC` (`V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`: UVC, most
//! CSI drivers) give the capture time (UVC: start or end of exposure), mapped onto the process clock; other
//! buffers are stamped when dequeued.
//!
//! **Loss and recovery**: a failing dequeue (`ENODEV` after an unplug) or no frame for 5 s (or ten frame periods)
//! marks the sensor offline, and the device is reopened — found again by its path, name or bus id — with a
//! capped backoff (0.2 s doubling to 5 s).

use std::time::{Duration, Instant};

use v4l::buffer::{Flags, Type};
use v4l::io::traits::CaptureStream;
use v4l::prelude::*;
use v4l::video::Capture;

use super::config::V4l2SourceConfig;

use super::camera::{self, FrameConverter, ModeRequest, OfferedMode, Rates};
use super::pixfmt::PixelFormat;
use super::{Source, SourceError, SourceOutput, StopFlag};

/// `POLLIN` from `<poll.h>` (the same value on every Linux architecture).
const POLLIN: i16 = 0x001;

/// A V4L2 camera.
#[derive(Debug)]
pub struct V4l2Source {
    config: V4l2SourceConfig,
    converter: FrameConverter,
}

/// The modes a device offers, from its format, size and interval enumerations. Step-wise sizes are listed by
/// their largest and smallest size (and the configured one, when it lies on the grid).
///
/// # Errors
///
/// The ioctl's error when the formats cannot be listed.
pub fn offered_modes(dev: &Device, want_size: Option<(u32, u32)>) -> std::io::Result<Vec<OfferedMode>> {
    let mut out = Vec::new();
    for desc in dev.enum_formats()? {
        let fourcc = desc.fourcc;
        let name = fourcc
            .str()
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_else(|_| format!("{:?}", fourcc.repr));
        let sizes = dev.enum_framesizes(fourcc).unwrap_or_default();
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for size in sizes {
            match size.size {
                v4l::framesize::FrameSizeEnum::Discrete(d) => pairs.push((d.width, d.height)),
                v4l::framesize::FrameSizeEnum::Stepwise(s) => {
                    pairs.push((s.max_width, s.max_height));
                    pairs.push((s.min_width, s.min_height));
                    if let Some((w, h)) = want_size {
                        let on = |v: u32, min: u32, max: u32, step: u32| {
                            (min..=max).contains(&v) && (v - min).is_multiple_of(step.max(1))
                        };
                        if on(w, s.min_width, s.max_width, s.step_width)
                            && on(h, s.min_height, s.max_height, s.step_height)
                        {
                            pairs.push((w, h));
                        }
                    }
                }
            }
        }
        pairs.dedup();
        for (width, height) in pairs {
            let rates = match dev.enum_frameintervals(fourcc, width, height) {
                Ok(list) if !list.is_empty() => {
                    let fps =
                        |f: v4l::Fraction| (f.numerator > 0).then(|| f64::from(f.denominator) / f64::from(f.numerator));
                    let mut discrete = Vec::new();
                    let mut range = None;
                    for iv in list {
                        match iv.interval {
                            v4l::frameinterval::FrameIntervalEnum::Discrete(f) => discrete.extend(fps(f)),
                            v4l::frameinterval::FrameIntervalEnum::Stepwise(s) => {
                                // The longest interval is the lowest rate.
                                range = fps(s.max).zip(fps(s.min));
                            }
                        }
                    }
                    match range {
                        Some((min, max)) => Rates::Range { min, max },
                        None => Rates::Discrete(discrete),
                    }
                }
                _ => Rates::Unknown,
            };
            out.push(OfferedMode {
                format: name.clone(),
                width,
                height,
                rates,
            });
        }
    }
    Ok(out)
}

/// A capture node's identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    /// `/dev/videoN`.
    pub path: String,
    /// The card name (`HD Pro Webcam C920`).
    pub card: String,
    /// The bus id (`usb-0000:00:14.0-2`).
    pub bus: String,
    /// The driver (`uvcvideo`).
    pub driver: String,
}

/// The capture nodes on this machine with their identities (nodes without capture formats are left out).
pub fn capture_nodes() -> Vec<(NodeInfo, Device)> {
    let mut nodes: Vec<_> = v4l::context::enum_devices()
        .into_iter()
        .filter_map(|node| {
            let path = node.path().to_owned();
            let dev = Device::with_path(&path).ok()?;
            let caps = dev.query_caps().ok()?;
            if dev.enum_formats().map(|f| f.is_empty()).unwrap_or(true) {
                return None;
            }
            Some((
                NodeInfo {
                    path: path.display().to_string(),
                    card: caps.card,
                    bus: caps.bus,
                    driver: caps.driver,
                },
                dev,
            ))
        })
        .collect();
    nodes.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    nodes
}

/// Opens the configured device.
fn open_device(wanted: &str) -> Result<(Device, String), String> {
    if wanted.starts_with('/') {
        let dev = Device::with_path(wanted).map_err(|e| format!("cannot open {wanted}: {e}"))?;
        return Ok((dev, wanted.to_owned()));
    }
    let nodes = capture_nodes();
    let lower = wanted.to_lowercase();
    let pick = nodes
        .iter()
        .position(|(n, _)| n.card == wanted || n.bus == wanted)
        .or_else(|| nodes.iter().position(|(n, _)| n.card.to_lowercase().contains(&lower)));
    let listed: Vec<String> = nodes
        .iter()
        .map(|(n, _)| format!("{} {:?} on {}", n.path, n.card, n.bus))
        .collect();
    match pick {
        Some(i) => {
            let (info, dev) = nodes.into_iter().nth(i).ok_or("the node vanished")?;
            Ok((dev, format!("{} ({})", info.path, info.card)))
        }
        None => Err(format!(
            "no capture device named {wanted:?}; cameras: {}",
            if listed.is_empty() {
                "none".into()
            } else {
                listed.join(", ")
            }
        )),
    }
}

/// An open, configured camera.
struct Opened {
    dev: Device,
    label: String,
    format: PixelFormat,
    width: usize,
    height: usize,
    stride: usize,
    rate_hz: Option<f64>,
}

impl V4l2Source {
    /// A V4L2 source; the device is opened when it runs.
    pub fn new(config: V4l2SourceConfig) -> Self {
        Self {
            converter: FrameConverter {
                modality: config.modality,
                depth_unit_m: config.depth_unit_m,
            },
            config,
        }
    }

    fn request(&self) -> Result<ModeRequest, String> {
        let c = &self.config;
        let format = match &c.format {
            Some(f) => Some(PixelFormat::from_name(f).ok_or_else(|| format!("unknown pixel format {f:?}"))?),
            None => None,
        };
        Ok(ModeRequest {
            modality: c.modality,
            format,
            size: c.width.zip(c.height),
            rate_hz: c.rate_hz,
        })
    }

    fn open(&self) -> Result<Opened, String> {
        let (dev, label) = open_device(&self.config.device)?;
        let want = self.request()?;
        let offered = offered_modes(&dev, want.size).map_err(|e| format!("{label}: cannot list its formats: {e}"))?;
        let mode = camera::choose_mode(&offered, &want).map_err(|e| format!("{label}: {e}"))?;
        let fourcc = v4l::FourCC::new(&mode.format.fourcc());
        let set = dev
            .set_format(&v4l::Format::new(mode.width, mode.height, fourcc))
            .map_err(|e| {
                format!(
                    "{label}: cannot set {} {}x{}: {e}",
                    mode.format, mode.width, mode.height
                )
            })?;
        if set.fourcc != fourcc || (set.width, set.height) != (mode.width, mode.height) {
            return Err(format!(
                "{label}: asked for {} {}x{}, the driver set {} {}x{}; it offers: {}",
                mode.format,
                mode.width,
                mode.height,
                set.fourcc,
                set.width,
                set.height,
                camera::describe_modes(&offered)
            ));
        }
        let mut rate_hz = mode.rate_hz;
        if let Some(r) = mode.rate_hz {
            // Rates are set as an interval; 1000/1001-style NTSC rates round to the nearest millihertz.
            let params = v4l::video::capture::Parameters::new(v4l::Fraction::new(1000, (r * 1000.0).round() as u32));
            match dev.set_params(&params) {
                Ok(p) if p.interval.denominator > 0 && p.interval.numerator > 0 => {
                    rate_hz = Some(f64::from(p.interval.denominator) / f64::from(p.interval.numerator));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(source = %self.config.name, error = %e, "The driver refused the frame rate; using its own.")
                }
            }
        }
        Ok(Opened {
            dev,
            label,
            format: mode.format,
            width: mode.width as usize,
            height: mode.height as usize,
            stride: set.stride as usize,
            rate_hz,
        })
    }

    /// Streams until the device fails or stalls (`Err`) or `stop` is raised (`Ok`).
    fn stream(&self, cam: &Opened, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), String> {
        let mut stream = MmapStream::with_buffers(&cam.dev, Type::VideoCapture, self.config.buffers)
            .map_err(|e| format!("cannot map {} buffers: {e}", self.config.buffers))?;
        let stall = cam
            .rate_hz
            .map_or(Duration::ZERO, |r| Duration::from_secs_f64(10.0 / r))
            .max(Duration::from_secs(5));
        // The first dequeue (which starts streaming) waits up to `stall`; later ones are preceded by a poll of at
        // most 100 ms, so the stop flag is seen, and only then dequeued (`next` re-queues the previous buffer
        // first, which must happen exactly once per frame).
        stream.set_timeout(stall);
        let mut last_frame = Instant::now();
        let mut last_sequence: Option<u32> = None;
        let mut logged_bad = false;
        let mut started = false;
        while !stop.is_raised() {
            if started {
                match stream.handle().poll(POLLIN, 100) {
                    Ok(0) => {
                        if last_frame.elapsed() > stall {
                            return Err(format!("no frame for {:.1} s", last_frame.elapsed().as_secs_f64()));
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("cannot poll the device: {e}")),
                }
            }
            let (buf, meta) = stream.next().map_err(|e| format!("cannot dequeue a frame: {e}"))?;
            started = true;
            last_frame = Instant::now();
            let t = if meta.flags & Flags::TIMESTAMP_MASK == Flags::TIMESTAMP_MONOTONIC {
                let (sec, usec) = (meta.timestamp.sec, meta.timestamp.usec);
                let ns = u128::try_from(sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(usec).unwrap_or(0) * 1000;
                crate::clock::from_system_monotonic(ns)
            } else {
                crate::clock::now()
            };
            if let Some(prev) = last_sequence {
                let skipped = meta.sequence.wrapping_sub(prev).saturating_sub(1);
                if skipped > 0 && skipped < 1 << 20 {
                    out.stats_handle()
                        .overrun_samples_total
                        .fetch_add(u64::from(skipped), std::sync::atomic::Ordering::Relaxed);
                }
            }
            last_sequence = Some(meta.sequence);
            if meta.flags.contains(Flags::ERROR) {
                out.error();
                continue;
            }
            // A few drivers leave `bytesused` at 0 for uncompressed formats: the whole buffer is the frame then.
            let used = match meta.bytesused as usize {
                0 => buf.len(),
                n => n.min(buf.len()),
            };
            let image = self
                .converter
                .convert(cam.format, cam.width, cam.height, cam.stride, &buf[..used]);
            super::camera::push_frame(out, &self.config.name, &mut logged_bad, t, image);
        }
        Ok(())
    }
}

impl Source for V4l2Source {
    fn run(&mut self, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), SourceError> {
        let name = self.config.name.clone();
        let this = &*self;
        super::run_with_reopen(
            &name,
            "camera",
            out,
            stop,
            |out| {
                let cam = this.open()?;
                if let Some(rate) = cam.rate_hz {
                    out.expect_rate(rate);
                }
                let rate = cam
                    .rate_hz
                    .map_or_else(|| "rate set by the driver".into(), |r| format!("{r:.2} fps"));
                let d = format!("{}: {} {}x{} {rate}", cam.label, cam.format, cam.width, cam.height);
                Ok((cam, d))
            },
            |cam, out, stop| this.stream(cam, out, stop),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_reported_by_path_and_by_name() {
        let e = open_device("/dev/video-sensebind-missing").err().unwrap();
        assert!(e.starts_with("cannot open /dev/video-sensebind-missing:"), "{e}");
        let e = open_device("No Such Camera").err().unwrap();
        assert!(
            e.starts_with("no capture device named \"No Such Camera\"; cameras: "),
            "{e}"
        );
    }
}
