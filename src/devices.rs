//! `sensebind devices`: the capture devices this machine has, read from sysfs and procfs (no device is opened).
//!
//! - cameras: `/sys/class/video4linux/video*` — node, name, and whether the node is a capture device (`index` 0 of
//!   a UVC camera is its video node, higher indexes are metadata nodes);
//! - audio inputs: ALSA capture PCMs from `/proc/asound/pcm` (`hw:CARD,DEV` names usable by ALSA and cpal);
//! - serial ports: `/sys/class/tty/*` entries backed by a real device (USB, platform UART), with their
//!   `/dev/serial/by-id/` links, which survive re-plugging and are the best `path` for a `[[sources]]` entry.
//!
//! Camera formats and frame sizes need V4L2 ioctls, which this build does not have yet: they are reported as
//! unknown.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A camera node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Camera {
    /// `/dev/videoN`.
    pub path: String,
    /// The driver's name for it.
    pub name: String,
    /// The node's index within its device (0: the capture node of a UVC camera).
    pub index: Option<u32>,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Devices {
    /// Cameras.
    pub cameras: Vec<Camera>,
    /// Audio inputs.
    pub audio_inputs: Vec<AudioInput>,
    /// Serial ports.
    pub serial_ports: Vec<SerialPort>,
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
        out.push_str(&format!(
            "  {}  {}  ({role}; formats: unknown — this build has no V4L2 support yet)\n",
            c.path, c.name
        ));
    }
    out.push_str("Audio inputs (ALSA):\n");
    if d.audio_inputs.is_empty() {
        out.push_str("  none\n");
    }
    for a in &d.audio_inputs {
        out.push_str(&format!("  {}  {}\n", a.alsa, a.name));
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
        assert!(text.contains("/dev/video0  HD Pro Webcam C920  (capture;") && text.contains("hw:2,0  USB Audio"));
    }

    #[test]
    fn an_empty_machine_lists_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = list(dir.path());
        assert_eq!(d, Devices::default());
        assert_eq!(render(&d).matches("none").count(), 3);
    }
}
