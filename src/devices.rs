//! `sensebind devices`: the capture devices this machine has, read from sysfs and procfs (no device is opened).
//!
//! - cameras: `/sys/class/video4linux/video*` — node, name, and whether the node is a capture device (`index` 0 of
//!   a UVC camera is its video node, higher indexes are metadata nodes);
//! - audio inputs: ALSA capture PCMs from `/proc/asound/pcm` (`hw:CARD,DEV` names usable by ALSA and cpal);
//! - serial ports: `/sys/class/tty/*` entries backed by a real device (USB, platform UART), with their
//!   `/dev/serial/by-id/` links, which survive re-plugging and are the best `path` for a `[[sources]]` entry.
//!
//! On the real machine (`/`), builds with the `v4l2` feature also open each camera node read-only to list its
//! card, bus id and modes (format, size, rates: what a `type = "v4l2"` source can ask for), and builds with the
//! `microphone` feature list cpal's input devices with the ids a `type = "microphone"` source takes. Nothing is
//! streamed.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A camera node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Camera {
    /// `/dev/videoN`.
    pub path: String,
    /// The driver's name for it.
    pub name: String,
    /// The node's index within its device (0: the capture node of a UVC camera).
    pub index: Option<u32>,
    /// What V4L2 reports (builds with the `v4l2` feature, on the real machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v4l2: Option<CameraDetails>,
}

/// A camera node as V4L2 describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraDetails {
    /// Card name (usable as a source's `device`).
    pub card: String,
    /// Bus id (usable as a source's `device`).
    pub bus: String,
    /// Driver.
    pub driver: String,
    /// Capture modes; empty for metadata nodes.
    pub modes: Vec<crate::sources::camera::OfferedMode>,
    /// Why the node could not be queried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An input device as cpal sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpalInput {
    /// The id a microphone source's `device` takes (`alsa:hw:CARD=Mic,DEV=0`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Default configuration, e.g. `2 ch 48000 Hz i16`.
    pub default_config: Option<String>,
}

/// An ALSA capture device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudioInput {
    /// `hw:CARD,DEV`.
    pub alsa: String,
    /// The PCM's name.
    pub name: String,
}

/// A serial port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SerialPort {
    /// `/dev/ttyXXX`.
    pub path: String,
    /// Its stable `/dev/serial/by-id/...` links.
    pub by_id: Vec<String>,
    /// The kernel driver (e.g. `ftdi_sio`, `cp210x`, `cdc_acm`), when known.
    pub driver: Option<String>,
}

/// Everything found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Devices {
    /// Cameras.
    pub cameras: Vec<Camera>,
    /// Audio inputs.
    pub audio_inputs: Vec<AudioInput>,
    /// Input devices through cpal (builds with the `microphone` feature, on the real machine).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub microphones: Vec<CpalInput>,
    /// Serial ports.
    pub serial_ports: Vec<SerialPort>,
    /// GPU adapters through wgpu (builds with the `wgpu` feature, on the real machine): what a `wgpu` backend
    /// could run on. A CPU adapter (lavapipe, llvmpipe) runs compute shaders too, slowly.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuAdapter>,
}

/// A GPU adapter as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuAdapter {
    /// Adapter name (`NVIDIA Tegra Orin (nvgpu)`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Driver name.
    pub driver: String,
    /// Driver version and details.
    pub driver_info: String,
    /// `discrete_gpu`, `integrated_gpu`, `virtual_gpu`, `cpu` or `other`.
    pub device_type: String,
    /// The graphics API (`vulkan`, `metal`, `dx12`, `gl`).
    pub backend: String,
    /// Whether shaders may use f16 (`shader-f16`).
    pub shader_f16: bool,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Lists the devices under `root` (`/` on a real system; a fixture tree in tests).
pub fn list(root: &Path) -> Devices {
    let mut d = Devices::default();
    for node in sorted_entries(&root.join("sys/class/video4linux")) {
        let Some(file) = node.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
            continue;
        };
        d.cameras.push(Camera {
            path: format!("/dev/{file}"),
            name: read_trim(&node.join("name")).unwrap_or_default(),
            index: read_trim(&node.join("index")).and_then(|i| i.parse().ok()),
            v4l2: None,
        });
    }
    // /proc/asound/pcm: "00-00: ALC897 Analog : ALC897 Analog : playback 1 : capture 1" (card-device: id : name : …)
    if let Some(text) = read_trim(&root.join("proc/asound/pcm")) {
        for line in text.lines() {
            let Some((id, rest)) = line.split_once(": ") else {
                continue;
            };
            let parts: Vec<&str> = rest.split(" : ").map(str::trim).collect();
            if !parts.iter().any(|p| p.starts_with("capture")) {
                continue;
            }
            let (pcm_id, pcm_name) = (
                parts.first().copied().unwrap_or(""),
                parts.get(1).copied().unwrap_or(""),
            );
            let Some((card, dev)) = id.split_once('-') else {
                continue;
            };
            let (Ok(card), Ok(dev)) = (card.trim().parse::<u32>(), dev.trim().parse::<u32>()) else {
                continue;
            };
            d.audio_inputs.push(AudioInput {
                alsa: format!("hw:{card},{dev}"),
                name: if pcm_name.is_empty() { pcm_id } else { pcm_name }.to_owned(),
            });
        }
    }
    let by_id_dir = root.join("dev/serial/by-id");
    let links: Vec<(String, String)> = sorted_entries(&by_id_dir)
        .into_iter()
        .filter_map(|link| {
            let target = std::fs::read_link(&link).ok()?;
            let tty = target.file_name()?.to_str()?.to_owned();
            Some((tty, format!("/dev/serial/by-id/{}", link.file_name()?.to_str()?)))
        })
        .collect();
    for tty in sorted_entries(&root.join("sys/class/tty")) {
        let Some(name) = tty.file_name().and_then(|f| f.to_str()).map(str::to_owned) else {
            continue;
        };
        // Only ttys backed by hardware have a `device` link; virtual consoles and ptys do not.
        if !tty.join("device").exists() {
            continue;
        }
        let driver = std::fs::read_link(tty.join("device/driver"))
            .ok()
            .and_then(|p| p.file_name().and_then(|f| f.to_str()).map(str::to_owned));
        // The legacy 8250 UART slots exist on most PCs without a port behind them.
        if driver.as_deref() == Some("serial8250") {
            continue;
        }
        d.serial_ports.push(SerialPort {
            path: format!("/dev/{name}"),
            by_id: links
                .iter()
                .filter(|(t, _)| *t == name)
                .map(|(_, l)| l.clone())
                .collect(),
            driver,
        });
    }
    d
}

/// Adds what the drivers report: camera modes (feature `v4l2`) and cpal inputs (feature `microphone`). Only for
/// the real machine: it opens `/dev/video*` nodes read-only and asks the audio host for its devices.
#[cfg_attr(
    not(any(feature = "v4l2", feature = "microphone", feature = "wgpu")),
    allow(unused_variables, reason = "nothing to query without the drivers")
)]
pub fn query_drivers(d: &mut Devices) {
    #[cfg(feature = "v4l2")]
    for c in &mut d.cameras {
        c.v4l2 = Some(match v4l::Device::with_path(&c.path) {
            Ok(dev) => {
                let caps = dev.query_caps();
                let modes = crate::sources::v4l2::offered_modes(&dev, None);
                let (card, bus, driver) = caps.map(|c| (c.card, c.bus, c.driver)).unwrap_or_default();
                CameraDetails {
                    card,
                    bus,
                    driver,
                    error: modes.as_ref().err().map(|e| format!("cannot list formats: {e}")),
                    modes: modes.unwrap_or_default(),
                }
            }
            Err(e) => CameraDetails {
                card: String::new(),
                bus: String::new(),
                driver: String::new(),
                modes: Vec::new(),
                error: Some(format!("cannot open: {e}")),
            },
        });
    }
    #[cfg(feature = "wgpu")]
    {
        d.gpus = gpu_adapters();
    }
    #[cfg(feature = "microphone")]
    {
        use cpal::traits::{DeviceTrait, HostTrait};
        let host = cpal::default_host();
        if let Ok(inputs) = host.input_devices() {
            for dev in inputs {
                d.microphones.push(CpalInput {
                    id: crate::sources::microphone::device_label(&dev),
                    name: dev.description().map(|x| x.name().to_owned()).unwrap_or_default(),
                    default_config: dev
                        .default_input_config()
                        .ok()
                        .map(|c| format!("{} ch {} Hz {}", c.channels(), c.sample_rate(), c.sample_format())),
                });
            }
        }
    }
}

/// The adapters wgpu finds (`WGPU_BACKEND` and `WGPU_ADAPTER_NAME` are honoured).
#[cfg(feature = "wgpu")]
pub fn gpu_adapters() -> Vec<GpuAdapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            GpuAdapter {
                name: info.name,
                driver: info.driver,
                driver_info: info.driver_info,
                device_type: match info.device_type {
                    wgpu::DeviceType::DiscreteGpu => "discrete_gpu",
                    wgpu::DeviceType::IntegratedGpu => "integrated_gpu",
                    wgpu::DeviceType::VirtualGpu => "virtual_gpu",
                    wgpu::DeviceType::Cpu => "cpu",
                    wgpu::DeviceType::Other => "other",
                }
                .to_owned(),
                backend: info.backend.to_str().to_owned(),
                shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
            }
        })
        .collect()
}

/// A human-readable listing.
pub fn render(d: &Devices) -> String {
    let mut out = String::new();
    out.push_str("Cameras (V4L2):\n");
    if d.cameras.is_empty() {
        out.push_str("  none\n");
    }
    for c in &d.cameras {
        let role = match c.index {
            Some(0) => "capture",
            Some(_) => "metadata/other",
            None => "unknown role",
        };
        match &c.v4l2 {
            None => out.push_str(&format!("  {}  {}  ({role})\n", c.path, c.name)),
            Some(v) => {
                out.push_str(&format!(
                    "  {}  {}  ({role}; bus {:?}, driver {})\n",
                    c.path, c.name, v.bus, v.driver
                ));
                if let Some(e) = &v.error {
                    out.push_str(&format!("      {e}\n"));
                }
                for m in &v.modes {
                    out.push_str(&format!("      {} {}x{} {}\n", m.format, m.width, m.height, m.rates));
                }
            }
        }
    }
    out.push_str("Audio inputs (ALSA):\n");
    if d.audio_inputs.is_empty() {
        out.push_str("  none\n");
    }
    for a in &d.audio_inputs {
        out.push_str(&format!("  {}  {}\n", a.alsa, a.name));
    }
    if !d.microphones.is_empty() {
        out.push_str("Microphones (cpal; `device` of a microphone source):\n");
        for m in &d.microphones {
            out.push_str(&format!(
                "  {}  {}  ({})\n",
                m.id,
                m.name,
                m.default_config.as_deref().unwrap_or("no default configuration")
            ));
        }
    }
    if !d.gpus.is_empty() {
        out.push_str("GPU adapters (wgpu):\n");
        for g in &d.gpus {
            out.push_str(&format!(
                "  {}  ({}, {}; driver {} {}; f16 {})\n",
                g.name,
                g.device_type,
                g.backend,
                g.driver,
                g.driver_info,
                if g.shader_f16 { "yes" } else { "no" }
            ));
        }
    }
    out.push_str("Serial ports:\n");
    if d.serial_ports.is_empty() {
        out.push_str("  none\n");
    }
    for s in &d.serial_ports {
        out.push_str(&format!(
            "  {}  driver {}\n",
            s.path,
            s.driver.as_deref().unwrap_or("?")
        ));
        for l in &s.by_id {
            out.push_str(&format!("      {l}  (stable: use this as the source's path)\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(p, text).unwrap_or_else(|e| panic!("{e}"));
    }

    #[cfg(unix)]
    fn link(target: &str, at: &Path) {
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::os::unix::fs::symlink(target, at).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A sysfs/procfs tree laid out as on a Jetson with a UVC webcam, a USB sound card and an FTDI IMU.
    #[cfg(unix)]
    #[test]
    fn lists_cameras_audio_inputs_and_serial_ports_from_sysfs_and_procfs() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let r = dir.path();
        write(r, "sys/class/video4linux/video0/name", "HD Pro Webcam C920\n");
        write(r, "sys/class/video4linux/video0/index", "0\n");
        write(r, "sys/class/video4linux/video1/name", "HD Pro Webcam C920\n");
        write(r, "sys/class/video4linux/video1/index", "1\n");
        write(
            r,
            "proc/asound/pcm",
            "00-00: tegra-dlink-0 XBAR-ADMAIF1-0 : tegra-dlink-0 XBAR-ADMAIF1-0 : playback 1 : capture 1\n01-00: USB Audio : USB Audio : playback 1\n02-00: USB Audio : USB Audio : capture 1\n",
        );
        std::fs::create_dir_all(r.join("sys/devices/usb1/1-1:1.0/ttyUSB0/driver_dir/ftdi_sio"))
            .unwrap_or_else(|e| panic!("{e}"));
        let dev = r.join("sys/devices/usb1/1-1:1.0/ttyUSB0");
        link(
            dev.to_str().unwrap_or_default(),
            &r.join("sys/class/tty/ttyUSB0/device"),
        );
        link(
            dev.join("driver_dir/ftdi_sio").to_str().unwrap_or_default(),
            &dev.join("driver"),
        );
        std::fs::create_dir_all(r.join("sys/class/tty/tty1")).unwrap_or_else(|e| panic!("{e}"));
        link(
            "../../ttyUSB0",
            &r.join("dev/serial/by-id/usb-FTDI_FT232R_A50285BI-if00-port0"),
        );
        let d = list(r);
        assert_eq!(d.cameras.len(), 2);
        assert_eq!(d.cameras[0].path, "/dev/video0");
        assert_eq!(d.cameras[0].index, Some(0));
        assert_eq!(
            d.audio_inputs,
            [
                AudioInput {
                    alsa: "hw:0,0".into(),
                    name: "tegra-dlink-0 XBAR-ADMAIF1-0".into()
                },
                AudioInput {
                    alsa: "hw:2,0".into(),
                    name: "USB Audio".into()
                },
            ]
        );
        assert_eq!(d.serial_ports.len(), 1, "{:?}", d.serial_ports);
        assert_eq!(d.serial_ports[0].path, "/dev/ttyUSB0");
        assert_eq!(d.serial_ports[0].driver.as_deref(), Some("ftdi_sio"));
        assert_eq!(
            d.serial_ports[0].by_id,
            ["/dev/serial/by-id/usb-FTDI_FT232R_A50285BI-if00-port0"]
        );
        let text = render(&d);
        assert!(text.contains("/dev/video0  HD Pro Webcam C920  (capture)") && text.contains("hw:2,0  USB Audio"));
    }

    #[test]
    fn camera_modes_and_microphones_are_rendered() {
        use crate::sources::camera::{OfferedMode, Rates};
        let mut d = Devices::default();
        d.cameras.push(Camera {
            path: "/dev/video0".into(),
            name: "PureThermal (fw:v1.3.0)".into(),
            index: Some(0),
            v4l2: Some(CameraDetails {
                card: "PureThermal (fw:v1.3.0)".into(),
                bus: "usb-0000:00:14.0-2".into(),
                driver: "uvcvideo".into(),
                modes: vec![OfferedMode {
                    format: "Y16".into(),
                    width: 160,
                    height: 120,
                    rates: Rates::Discrete(vec![8.7]),
                }],
                error: None,
            }),
        });
        d.microphones.push(CpalInput {
            id: "alsa:hw:CARD=Device,DEV=0".into(),
            name: "USB PnP Sound Device".into(),
            default_config: Some("1 ch 48000 Hz i16".into()),
        });
        let text = render(&d);
        assert!(
            text.contains("(capture; bus \"usb-0000:00:14.0-2\", driver uvcvideo)\n      Y16 160x120 8.70 fps\n"),
            "{text}"
        );
        assert!(
            text.contains("  alsa:hw:CARD=Device,DEV=0  USB PnP Sound Device  (1 ch 48000 Hz i16)"),
            "{text}"
        );
        let json = serde_json::to_value(&d).unwrap_or_default();
        assert_eq!(json["cameras"][0]["v4l2"]["modes"][0]["rates"]["discrete"][0], 8.7);
    }

    #[test]
    fn an_empty_machine_lists_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = list(dir.path());
        assert_eq!(d, Devices::default());
        assert_eq!(render(&d).matches("none").count(), 3);
    }
}
