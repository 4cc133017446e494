//! IMUs over a serial port (`type = "serial"`): a text line protocol or WitMotion `0x55` binary frames.
//!
//! | protocol | what the device sends | per reading |
//! |---|---|---|
//! | `csv` | text lines of numbers separated by `,` `;` tab or spaces; `acc_columns`/`gyro_columns` pick the fields by 0-based index, `acc_unit`/`gyro_unit` say their units | one line |
//! | `witmotion` | WT901-style 11-byte frames `0x55 type d0..d7 sum`: `0x51` acceleration (±16 g full scale), `0x52` angular rate (±2000 °/s); other types are skipped | an acceleration frame and an angular-rate frame |
//!
//! Garbage never stops the stream: a line that does not parse, or bytes that do not form a frame with a valid
//! checksum, are skipped (the decoder resynchronises on the next newline or `0x55`) and counted in the source's
//! `garbage_bytes_total`. A line longer than 256 bytes is discarded whole.
//!
//! Readings are stamped on arrival. A read returns a burst; the burst's readings are spread back from the arrival
//! time at the rate measured over the last second (the configured `rate_hz` until then), always increasing. A CSV
//! device that sends its own timestamp (`time_column`, `time_unit`) is timed by it instead ([`DeviceClock`]).
//! Steps between consecutive readings longer than five nominal periods are counted as gaps (`stats/1`).
//!
//! Device loss: a read error or end of stream marks the source offline (`online = false` in `stats/1`, counted in
//! `lost_total`), and the port is reopened with a capped backoff (0.2 s doubling to 5 s) until it returns.

use std::io::Read;
use std::time::{Duration, Instant};

use super::config::{SerialProtocol, SerialSourceConfig};
use crate::clock::Timestamp;
use crate::preprocess::imu::{AccUnit, GyroUnit};

use super::{Sample, Source, SourceError, SourceOutput, StopFlag};

/// Longest text line kept; longer lines are discarded whole.
pub const MAX_LINE: usize = 256;
const G: f32 = 9.806_65;

/// What a decoder made of some bytes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decoded {
    /// Complete readings: acc x, y, z (m/s²), gyro x, y, z (rad/s).
    pub readings: Vec<[f32; 6]>,
    /// Bytes skipped: unparsable lines, bytes outside frames, frames with a bad checksum.
    pub garbage_bytes: u64,
    /// The device's timestamp of each reading, seconds (csv with `time_column` only; else empty).
    pub device_times: Vec<f64>,
}

/// A stream decoder: bytes in, readings out; keeps partial lines or frames between calls.
pub trait Decoder: Send {
    /// Decodes `bytes`, appending to `out`.
    fn feed(&mut self, bytes: &[u8], out: &mut Decoded);
}

/// The text line protocol.
#[derive(Debug)]
pub struct LineDecoder {
    line: Vec<u8>,
    overflow: bool,
    acc: [usize; 3],
    gyro: Option<[usize; 3]>,
    acc_scale: f32,
    gyro_scale: f32,
    time: Option<(usize, f64)>,
}

impl LineDecoder {
    /// Also reads the device's timestamp from field `field` in `unit` (every line must then carry one).
    pub fn with_time(mut self, field: usize, unit: crate::preprocess::imu::TimeUnit) -> Self {
        self.time = Some((field, unit.seconds()));
        self
    }

    /// A decoder taking acceleration from fields `acc` and angular rate from `gyro` (none: zero).
    pub fn new(acc: [usize; 3], gyro: Option<[usize; 3]>, acc_unit: AccUnit, gyro_unit: GyroUnit) -> Self {
        Self {
            line: Vec::with_capacity(MAX_LINE),
            overflow: false,
            acc,
            gyro,
            acc_scale: match acc_unit {
                AccUnit::MetresPerSecond2 => 1.0,
                AccUnit::G => G,
                AccUnit::MilliG => G / 1000.0,
            },
            gyro_scale: match gyro_unit {
                GyroUnit::RadPerSecond => 1.0,
                GyroUnit::DegPerSecond => std::f32::consts::PI / 180.0,
            },
            time: None,
        }
    }

    fn parse_line(&self, line: &[u8]) -> Option<([f32; 6], Option<f64>)> {
        let text = std::str::from_utf8(line).ok()?;
        let fields: Vec<&str> = text
            .split([',', ';', '\t', ' '])
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let field = |i: usize| -> Option<f32> { fields.get(i)?.parse::<f32>().ok().filter(|v| v.is_finite()) };
        let mut v = [0f32; 6];
        for (k, &i) in self.acc.iter().enumerate() {
            v[k] = field(i)? * self.acc_scale;
        }
        if let Some(gyro) = self.gyro {
            for (k, &i) in gyro.iter().enumerate() {
                v[3 + k] = field(i)? * self.gyro_scale;
            }
        }
        let t = match self.time {
            Some((i, scale)) => {
                let raw = fields
                    .get(i)?
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t >= 0.0)?;
                Some(raw * scale)
            }
            None => None,
        };
        Some((v, t))
    }
}

impl Decoder for LineDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Decoded) {
        for &b in bytes {
            if b == b'\n' {
                let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                if self.overflow {
                    out.garbage_bytes += self.line.len() as u64 + 1;
                } else if !line.iter().all(u8::is_ascii_whitespace) {
                    match self.parse_line(line) {
                        Some((v, t)) => {
                            out.readings.push(v);
                            if let Some(t) = t {
                                out.device_times.push(t);
                            }
                        }
                        None => out.garbage_bytes += self.line.len() as u64 + 1,
                    }
                }
                self.line.clear();
                self.overflow = false;
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                // Count the rest of an over-long line as it arrives; keep the buffer bounded.
                self.overflow = true;
                out.garbage_bytes += 1;
            }
        }
    }
}

/// WitMotion WT901-style binary frames.
#[derive(Debug, Default)]
pub struct WitMotionDecoder {
    pending: Vec<u8>,
    acc: Option<[f32; 3]>,
    gyro: Option<[f32; 3]>,
}

/// Bytes in one WitMotion frame.
pub const WIT_FRAME: usize = 11;

impl WitMotionDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Decoder for WitMotionDecoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Decoded) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while at < self.pending.len() {
            if self.pending[at] != 0x55 {
                out.garbage_bytes += 1;
                at += 1;
                continue;
            }
            if self.pending.len() - at < WIT_FRAME {
                break;
            }
            let frame = &self.pending[at..at + WIT_FRAME];
            let sum = frame[..WIT_FRAME - 1].iter().fold(0u8, |s, &b| s.wrapping_add(b));
            if sum != frame[WIT_FRAME - 1] || !(0x50..=0x5f).contains(&frame[1]) {
                // Not a frame after all: skip this 0x55 and look for the next.
                out.garbage_bytes += 1;
                at += 1;
                continue;
            }
            let axis = |k: usize| f32::from(i16::from_le_bytes([frame[2 + 2 * k], frame[3 + 2 * k]])) / 32768.0;
            match frame[1] {
                0x51 => self.acc = Some([0, 1, 2].map(|k| axis(k) * 16.0 * G)),
                0x52 => self.gyro = Some([0, 1, 2].map(|k| (axis(k) * 2000.0).to_radians())),
                _ => {}
            }
            if let (Some(a), Some(g)) = (self.acc, self.gyro) {
                out.readings.push([a[0], a[1], a[2], g[0], g[1], g[2]]);
                self.acc = None;
                self.gyro = None;
            }
            at += WIT_FRAME;
        }
        self.pending.drain(..at);
    }
}

/// The decoder a source's configuration asks for.
pub fn decoder(config: &SerialSourceConfig) -> Box<dyn Decoder> {
    match config.protocol {
        SerialProtocol::Csv => {
            let d = LineDecoder::new(
                config.acc_columns,
                config.gyro_columns,
                config.acc_unit,
                config.gyro_unit,
            );
            Box::new(match config.time_column {
                Some(field) => d.with_time(field, config.time_unit),
                None => d,
            })
        }
        SerialProtocol::Witmotion => Box::new(WitMotionDecoder::new()),
    }
}

/// Spreads each burst's readings back from its arrival time at the measured rate, strictly increasing.
#[derive(Debug)]
struct Stamper {
    period_ns: u64,
    last: u64,
    window_start: Instant,
    window_count: u64,
}

impl Stamper {
    fn new(rate_hz: f64) -> Self {
        Self {
            period_ns: (1e9 / rate_hz.max(1e-3)) as u64,
            last: 0,
            window_start: Instant::now(),
            window_count: 0,
        }
    }

    fn stamp(&mut self, arrival: Timestamp, n: usize) -> Vec<Timestamp> {
        self.window_count += n as u64;
        let elapsed = self.window_start.elapsed();
        if elapsed >= Duration::from_secs(1) && self.window_count > 0 {
            self.period_ns = (elapsed.as_nanos() as u64 / self.window_count).max(1);
            self.window_start = Instant::now();
            self.window_count = 0;
        }
        (0..n)
            .map(|i| {
                let back = (n - 1 - i) as u64 * self.period_ns;
                let t = arrival.0.saturating_sub(back).max(self.last + 1);
                self.last = t;
                Timestamp(t)
            })
            .collect()
    }
}

/// Maps a device's clock onto the daemon's monotonic clock. The offset is the smallest `arrival - device time`
/// seen (the reading with the least transfer delay), so it only moves earlier; a device clock that jumps (more
/// than a second off arrival) or runs backwards re-anchors it. Timestamps never exceed their arrival and always
/// increase.
#[derive(Debug, Default)]
pub struct DeviceClock {
    offset_ns: Option<i128>,
    last: u64,
    /// Times the offset was re-anchored because the device clock jumped or went backwards.
    pub reanchors: u64,
}

impl DeviceClock {
    /// The daemon time of a reading the device stamped `device_s` seconds, which arrived at `arrival`.
    pub fn map(&mut self, arrival: Timestamp, device_s: f64) -> Timestamp {
        let dev = (device_s * 1e9).round() as i128;
        let arr = i128::from(arrival.0);
        let t = match self.offset_ns {
            Some(o) => {
                let t = dev + o;
                if t > arr {
                    // Less transfer delay than ever seen: the offset moves earlier.
                    self.offset_ns = Some(arr - dev);
                    arr
                } else if arr - t > 1_000_000_000 || t <= i128::from(self.last) - 1_000_000_000 {
                    self.reanchors += 1;
                    self.offset_ns = Some(arr - dev);
                    arr
                } else {
                    t
                }
            }
            None => {
                self.offset_ns = Some(arr - dev);
                arr
            }
        };
        let t = u64::try_from(t.max(0)).unwrap_or(0).max(self.last + 1);
        self.last = t;
        Timestamp(t)
    }
}

/// An IMU on a serial port.
#[derive(Debug)]
pub struct SerialImuSource {
    config: SerialSourceConfig,
}

impl SerialImuSource {
    /// A source for `config` (the port is opened when it runs).
    pub fn new(config: SerialSourceConfig) -> Self {
        Self { config }
    }
}

impl Source for SerialImuSource {
    fn run(&mut self, out: &mut SourceOutput, stop: &StopFlag) -> Result<(), SourceError> {
        let name = self.config.name.clone();
        let path = self.config.path.display().to_string();
        let mut stamper = Stamper::new(self.config.rate_hz);
        let mut device_clock = DeviceClock::default();
        out.expect_rate(self.config.rate_hz);
        let mut buf = vec![0u8; 4096];
        let config = &self.config;
        super::run_with_reopen(
            &name,
            "serial IMU",
            out,
            stop,
            |_| {
                let port = serialport::new(&path, config.baud_rate)
                    .timeout(Duration::from_millis(100))
                    .open_native()
                    .map_err(|e| format!("cannot open {path}: {e}"))?;
                Ok((port, format!("{path} at {} baud", config.baud_rate)))
            },
            |port, out, stop| {
                let mut decoder = decoder(config);
                while !stop.is_raised() {
                    match port.read(&mut buf) {
                        Ok(0) => return Err("end of stream".to_owned()),
                        Ok(n) => {
                            let arrival = crate::clock::now();
                            let mut decoded = Decoded::default();
                            decoder.feed(&buf[..n], &mut decoded);
                            out.garbage(decoded.garbage_bytes);
                            let times = if decoded.device_times.len() == decoded.readings.len()
                                && !decoded.readings.is_empty()
                            {
                                decoded
                                    .device_times
                                    .iter()
                                    .map(|&d| device_clock.map(arrival, d))
                                    .collect()
                            } else {
                                stamper.stamp(arrival, decoded.readings.len())
                            };
                            for (values, t) in decoded.readings.into_iter().zip(times) {
                                out.push(Sample::Imu { t, values });
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv() -> LineDecoder {
        LineDecoder::new([1, 2, 3], Some([4, 5, 6]), AccUnit::G, GyroUnit::DegPerSecond)
    }

    #[test]
    fn a_million_random_bytes_in_random_chunks_never_panic_nor_grow_the_buffers() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        // Mostly random bytes, with runs of plausible lines and frame headers so both decoders get deep.
        let mut bytes = Vec::with_capacity(1_000_000);
        while bytes.len() < 1_000_000 {
            match next() % 8 {
                0 => bytes.extend_from_slice(b"0.1,0.2,9.8,0.0,0.1,0.2\n"),
                1 => bytes.extend_from_slice(&[0x55, 0x51]),
                _ => bytes.push(next() as u8),
            }
        }
        let mut line = csv().with_time(0, crate::preprocess::imu::TimeUnit::Ms);
        let mut wit = WitMotionDecoder::new();
        let (mut a, mut b) = (Decoded::default(), Decoded::default());
        let mut at = 0;
        while at < bytes.len() {
            let n = (next() as usize % 512 + 1).min(bytes.len() - at);
            line.feed(&bytes[at..at + n], &mut a);
            wit.feed(&bytes[at..at + n], &mut b);
            assert!(line.line.len() <= MAX_LINE && wit.pending.len() < WIT_FRAME);
            at += n;
        }
        assert!(a.garbage_bytes <= bytes.len() as u64 && b.garbage_bytes <= bytes.len() as u64);
        assert!(a.readings.iter().chain(&b.readings).flatten().all(|v| v.is_finite()));
        assert_eq!(a.device_times.len(), a.readings.len());
    }

    #[test]
    fn device_timestamps_are_read_and_mapped_onto_the_daemon_clock() {
        use crate::preprocess::imu::TimeUnit;
        let mut d = csv().with_time(0, TimeUnit::Ms);
        let mut out = Decoded::default();
        d.feed(b"1000,0,0,1,0,0,0\n1005,0,0,1,0,0,0\nno-time,0,0,1,0,0,0\n", &mut out);
        assert_eq!(out.readings.len(), 2);
        assert_eq!(out.device_times.len(), 2);
        assert!((out.device_times[0] - 1.0).abs() < 1e-12 && (out.device_times[1] - 1.005).abs() < 1e-12);
        assert!(out.garbage_bytes > 0, "a line without a valid time is garbage");

        let ms = |v: u64| Timestamp(v * 1_000_000);
        let mut c = DeviceClock::default();
        // First reading anchors at arrival; a burst keeps the device's spacing, never after arrival.
        assert_eq!(c.map(ms(10_000), 1.000), ms(10_000));
        assert_eq!(c.map(ms(10_020), 1.005), ms(10_005));
        assert_eq!(c.map(ms(10_020), 1.010), ms(10_010));
        // A reading with less transfer delay moves the offset earlier (and stays at its arrival).
        assert_eq!(c.map(ms(10_012), 1.015), ms(10_012));
        assert_eq!(c.map(ms(10_030), 1.020), ms(10_017));
        // The device restarts its clock: re-anchored, still increasing.
        let t = c.map(ms(10_040), 0.001);
        assert_eq!((t, c.reanchors), (ms(10_040), 1));
        assert!(c.map(ms(10_045), 0.006) > t);
    }

    #[test]
    fn lines_parse_with_units_across_chunk_boundaries() {
        let mut d = csv();
        let mut out = Decoded::default();
        d.feed(b"12.5, 0, 0.5, 1, 180, 0, -90\r\n13,0;0", &mut out);
        d.feed(b"\t1 0 0 0\n", &mut out);
        assert_eq!(out.readings.len(), 2, "{out:?}");
        let v = out.readings[0];
        assert!(
            (v[2] - 9.806_65).abs() < 1e-5 && (v[3] - std::f32::consts::PI).abs() < 1e-5,
            "{v:?}"
        );
        assert!((v[5] + std::f32::consts::FRAC_PI_2).abs() < 1e-5);
        assert_eq!(out.garbage_bytes, 0);
    }

    #[test]
    fn garbage_lines_are_skipped_and_counted() {
        let mut d = csv();
        let mut out = Decoded::default();
        let long = vec![b'7'; MAX_LINE + 10];
        d.feed(
            b"t,ax,ay,az,gx,gy,gz\n1,2,3\n\xff\xfe,1,2,3,4,5,6\n1,nan,0,0,0,0,0\n",
            &mut out,
        );
        d.feed(&long, &mut out);
        d.feed(b"\n\n0,0,0,1,0,0,0\n", &mut out);
        assert_eq!(out.readings.len(), 1, "{out:?}");
        assert_eq!(out.garbage_bytes, 20 + 6 + 15 + 16 + (MAX_LINE as u64 + 11));
    }

    fn frame(kind: u8, v: [i16; 3]) -> Vec<u8> {
        let mut f = vec![0x55, kind];
        for x in v {
            f.extend_from_slice(&x.to_le_bytes());
        }
        f.extend_from_slice(&[0, 0]);
        let sum = f.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        f.push(sum);
        f
    }

    #[test]
    fn witmotion_frames_resync_after_garbage_and_bad_checksums() {
        let mut stream = vec![0x00, 0x55, 0x13];
        stream.extend(frame(0x51, [0, 0, 2048])); // 1 g on z
        let mut bad = frame(0x52, [1, 2, 3]);
        bad[10] ^= 0xff;
        stream.extend(&bad);
        stream.extend(frame(0x53, [9, 9, 9])); // angles: ignored
        stream.extend(frame(0x52, [16384, 0, 0])); // 1000 deg/s on x
        let mut d = WitMotionDecoder::new();
        let mut out = Decoded::default();
        for chunk in stream.chunks(4) {
            d.feed(chunk, &mut out);
        }
        assert_eq!(out.readings.len(), 1, "{out:?}");
        let v = out.readings[0];
        assert!((v[2] - 9.806_65).abs() < 1e-4, "{v:?}");
        assert!((v[3] - 1000f32.to_radians()).abs() < 1e-4, "{v:?}");
        assert_eq!(out.garbage_bytes, 3 + 11, "{out:?}");
        assert!(d.pending.len() < WIT_FRAME);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any bytes, in any chunking: no panic, every byte is either part of a reading or counted, and the
        /// decoders' buffers stay bounded.
        #[test]
        fn decoders_take_any_bytes_with_bounded_memory(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            cut in 1usize..64,
        ) {
            let mut line = csv();
            let mut wit = WitMotionDecoder::new();
            let (mut a, mut b) = (Decoded::default(), Decoded::default());
            for chunk in bytes.chunks(cut) {
                line.feed(chunk, &mut a);
                wit.feed(chunk, &mut b);
                proptest::prop_assert!(line.line.len() <= MAX_LINE);
                proptest::prop_assert!(wit.pending.len() < WIT_FRAME);
            }
            proptest::prop_assert!(a.garbage_bytes <= bytes.len() as u64);
            proptest::prop_assert!(b.garbage_bytes + 11 * 2 * b.readings.len() as u64 <= bytes.len() as u64);
            proptest::prop_assert!(a.readings.iter().chain(&b.readings).flatten().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn bursts_are_stamped_back_from_arrival_and_always_increase() {
        let mut s = Stamper::new(100.0);
        let a = s.stamp(Timestamp(1_000_000_000), 3);
        assert_eq!(
            a,
            vec![Timestamp(980_000_000), Timestamp(990_000_000), Timestamp(1_000_000_000)]
        );
        let b = s.stamp(Timestamp(995_000_000), 2);
        assert!(b[0] > a[2] && b[1] > b[0], "{b:?}");
    }
}
