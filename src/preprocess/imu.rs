//! IMU: delimited text recordings → ImageBind's `[6, 2000]` input.
//!
//! ImageBind released no IMU loader. Its IMU tower takes 6 channels × 2000 samples, patched 8 at a time; the paper
//! (via Ego4D) uses 5-second windows, so 2000 samples mean 400 Hz. sensebind's default:
//!
//! - channel order accelerometer x, y, z then gyroscope x, y, z, in m/s² and rad/s (Ego4D's units); inputs in
//!   g, milli-g or °/s are converted (`acc_unit`, `gyro_unit`);
//! - the window `[start_secs, start_secs + window_secs)` (default 0 and 5 s) resampled to `samples` (2000) points
//!   at `t_k = start + k · window / samples`: linear interpolation between input samples when the input is slower
//!   than the output rate, the mean of the input samples inside each output interval when it is faster (a box
//!   anti-alias filter); before the first sample and after the last one the nearest sample is held;
//! - no normalisation (ImageBind's IMU statistics are not published).
//!
//! Files: CSV, TSV, semicolon- or space-separated, with `#`/`//` comment lines; a header row names the columns
//! (matched case-insensitively), otherwise columns are 0-based indices. Time comes from `time_column` (unit
//! `time_unit`) or, without one, from `rate_hz`.

use serde::{Deserialize, Serialize};

use super::PreprocessError;

/// A column by header name (case-insensitive) or by 0-based index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ColumnRef {
    /// 0-based index.
    Index(usize),
    /// Header name.
    Name(String),
}

impl std::fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnRef::Index(i) => write!(f, "#{i}"),
            ColumnRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// Unit of the accelerometer columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AccUnit {
    /// Metres per second squared.
    #[serde(rename = "m/s^2")]
    MetresPerSecond2,
    /// Standard gravity (9.80665 m/s²).
    #[serde(rename = "g")]
    G,
    /// Thousandths of g.
    #[serde(rename = "mg")]
    MilliG,
}

/// Unit of the gyroscope columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum GyroUnit {
    /// Radians per second.
    #[serde(rename = "rad/s")]
    RadPerSecond,
    /// Degrees per second.
    #[serde(rename = "deg/s")]
    DegPerSecond,
}

/// Unit of the time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl TimeUnit {
    /// Seconds per unit.
    pub fn seconds(self) -> f64 {
        match self {
            TimeUnit::S => 1.0,
            TimeUnit::Ms => 1e-3,
            TimeUnit::Us => 1e-6,
            TimeUnit::Ns => 1e-9,
        }
    }
}

/// IMU preprocessing parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ImuConfig {
    /// Accelerometer x, y, z columns. Empty: the first of the usual names (`acc_x`, `accx`, `ax`, `accel_x`, ...).
    pub acc_columns: Vec<ColumnRef>,
    /// Gyroscope x, y, z columns. Empty: the usual names (`gyro_x`, `gyr_x`, `gx`, ...).
    pub gyro_columns: Vec<ColumnRef>,
    /// False when the recording has no gyroscope: those three channels are zero.
    pub gyro: bool,
    /// Time column; none: samples are `1 / rate_hz` apart.
    pub time_column: Option<ColumnRef>,
    /// Unit of the time column.
    pub time_unit: TimeUnit,
    /// Input sample rate when there is no time column.
    pub rate_hz: Option<f64>,
    /// Accelerometer unit in the file.
    pub acc_unit: AccUnit,
    /// Gyroscope unit in the file.
    pub gyro_unit: GyroUnit,
    /// Seconds from the first sample to the window start.
    pub start_secs: f64,
    /// Window length in seconds.
    pub window_secs: f64,
    /// Output samples per window (the IMU tower takes 2000).
    pub samples: usize,
}

impl Default for ImuConfig {
    fn default() -> Self {
        Self {
            acc_columns: Vec::new(),
            gyro_columns: Vec::new(),
            gyro: true,
            time_column: None,
            time_unit: TimeUnit::S,
            rate_hz: None,
            acc_unit: AccUnit::MetresPerSecond2,
            gyro_unit: GyroUnit::RadPerSecond,
            start_secs: 0.0,
            window_secs: 5.0,
            samples: 2000,
        }
    }
}

impl ImuConfig {
    /// Problems with the values, each under the key it concerns (the first of a pair).
    pub fn validate(&self, issues: &mut crate::issues::Scope<'_>) {
        if !self.acc_columns.is_empty() && self.acc_columns.len() != 3 {
            issues.push(
                "acc_columns",
                format!("needs 3 columns (x, y, z), got {}", self.acc_columns.len()),
            );
        }
        if !self.gyro_columns.is_empty() && self.gyro_columns.len() != 3 {
            issues.push(
                "gyro_columns",
                format!("needs 3 columns (x, y, z), got {}", self.gyro_columns.len()),
            );
        }
        if let Some(r) = self.rate_hz.filter(|r| !(r.is_finite() && *r > 0.0)) {
            issues.push("rate_hz", format!("must be positive, got {r}"));
        }
        if !(self.window_secs.is_finite() && self.window_secs > 0.0) {
            issues.push("window_secs", format!("must be positive, got {}", self.window_secs));
        }
        if !(self.start_secs.is_finite() && self.start_secs >= 0.0) {
            issues.push(
                "start_secs",
                format!("must be zero or positive, got {}", self.start_secs),
            );
        }
        if self.samples == 0 {
            issues.push("samples", "must be at least 1");
        }
    }
}

const ACC_NAMES: [[&str; 6]; 3] = [
    ["acc_x", "accx", "ax", "accel_x", "accl_x", "accelerometer_x"],
    ["acc_y", "accy", "ay", "accel_y", "accl_y", "accelerometer_y"],
    ["acc_z", "accz", "az", "accel_z", "accl_z", "accelerometer_z"],
];
const GYRO_NAMES: [[&str; 6]; 3] = [
    ["gyro_x", "gyr_x", "gx", "gyrox", "gyrx", "gyroscope_x"],
    ["gyro_y", "gyr_y", "gy", "gyroy", "gyry", "gyroscope_y"],
    ["gyro_z", "gyr_z", "gz", "gyroz", "gyrz", "gyroscope_z"],
];
const TIME_NAMES: [&str; 5] = ["time", "timestamp", "t", "time_s", "seconds"];

/// A parsed recording: time in seconds and the six channels in SI units.
#[derive(Debug, Clone, PartialEq)]
pub struct ImuRecording {
    /// Sample times in seconds, non-decreasing.
    pub time_s: Vec<f64>,
    /// acc x, y, z (m/s²), gyro x, y, z (rad/s).
    pub channels: [Vec<f32>; 6],
}

fn split_row(line: &str, delim: Option<char>) -> Vec<&str> {
    match delim {
        Some(d) => line.split(d).map(str::trim).collect(),
        None => line.split_whitespace().collect(),
    }
}

/// Metres per second squared per unit.
fn acc_scale(unit: AccUnit) -> f64 {
    match unit {
        AccUnit::MetresPerSecond2 => 1.0,
        AccUnit::G => 9.806_65,
        AccUnit::MilliG => 0.009_806_65,
    }
}

/// Radians per second per unit.
fn gyro_scale(unit: GyroUnit) -> f64 {
    match unit {
        GyroUnit::RadPerSecond => 1.0,
        GyroUnit::DegPerSecond => std::f64::consts::PI / 180.0,
    }
}

/// The number in column `col` (0-based) of a row on 1-based `line`; the error names the line, column and field.
fn parse_cell(cells: &[&str], col: usize, what: &str, line: usize, name: &str) -> Result<f64, PreprocessError> {
    let raw = cells.get(col).ok_or_else(|| {
        PreprocessError::invalid(
            name,
            format!(
                "line {line}: no column {col} ({what}); the row has {} cells",
                cells.len()
            ),
        )
    })?;
    let raw = raw.trim_matches('"');
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(PreprocessError::invalid(
            name,
            format!("line {line}, column {} ({what}): {raw:?} is not a number", col + 1),
        )),
    }
}

/// Parses a delimited text recording.
pub fn parse(text: &str, config: &ImuConfig, name: &str) -> Result<ImuRecording, PreprocessError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !t.starts_with("//")
        })
        .peekable();
    let (first_no, first) = lines
        .peek()
        .copied()
        .ok_or_else(|| PreprocessError::invalid(name, "the file holds no rows"))?;
    let delim = if first.contains('\t') {
        Some('\t')
    } else if first.contains(',') {
        Some(',')
    } else if first.contains(';') {
        Some(';')
    } else {
        None
    };
    let first_cells = split_row(first, delim);
    let has_header = first_cells.iter().any(|c| !c.is_empty() && c.parse::<f64>().is_err());
    let header: Vec<String> = if has_header {
        lines.next();
        first_cells.iter().map(|c| c.trim_matches('"').to_lowercase()).collect()
    } else {
        Vec::new()
    };
    let find = |r: &ColumnRef| -> Result<usize, String> {
        match r {
            ColumnRef::Index(i) => Ok(*i),
            ColumnRef::Name(n) => header
                .iter()
                .position(|h| h == &n.to_lowercase())
                .ok_or_else(|| format!("no column named {n:?}")),
        }
    };
    let columns_desc = || {
        if header.is_empty() {
            format!("the file has no header row and {} columns", first_cells.len())
        } else {
            let names: Vec<&str> = header.iter().map(String::as_str).filter(|h| !h.is_empty()).collect();
            format!("its columns are {}", names.join(", "))
        }
    };
    let resolve =
        |configured: &[ColumnRef], aliases: &[[&str; 6]; 3], what: &str| -> Result<[usize; 3], PreprocessError> {
            if configured.is_empty() {
                let mut idx = [0usize; 3];
                for (axis, names) in aliases.iter().enumerate() {
                    idx[axis] = header.iter().position(|h| names.contains(&h.as_str())).ok_or_else(|| {
                        PreprocessError::invalid(
                            name,
                            format!(
                                "no {what} {} column ({}); set imu.{what}_columns — {}",
                                ["x", "y", "z"][axis],
                                names.join("/"),
                                columns_desc()
                            ),
                        )
                    })?;
                }
                Ok(idx)
            } else {
                let mut idx = [0usize; 3];
                for (axis, r) in configured.iter().take(3).enumerate() {
                    idx[axis] = find(r).map_err(|e| {
                        PreprocessError::invalid(name, format!("{what} column {r}: {e}; {}", columns_desc()))
                    })?;
                }
                Ok(idx)
            }
        };
    let acc = resolve(&config.acc_columns, &ACC_NAMES, "acc")?;
    let gyro = if config.gyro {
        Some(resolve(&config.gyro_columns, &GYRO_NAMES, "gyro")?)
    } else {
        None
    };
    let time_col = match &config.time_column {
        Some(r) => Some(
            find(r).map_err(|e| PreprocessError::invalid(name, format!("time column {r}: {e}; {}", columns_desc())))?,
        ),
        None if config.rate_hz.is_none() => header.iter().position(|h| TIME_NAMES.contains(&h.as_str())),
        None => None,
    };
    if time_col.is_none() && config.rate_hz.is_none() {
        return Err(PreprocessError::invalid(
            name,
            format!(
                "no time column (time/timestamp/t) and no imu.rate_hz; set one of them — {}",
                columns_desc()
            ),
        ));
    }
    let (acc_scale, gyro_scale) = (acc_scale(config.acc_unit), gyro_scale(config.gyro_unit));
    let mut time_s = Vec::new();
    let mut channels: [Vec<f32>; 6] = Default::default();
    for (line_no, line) in lines {
        let cells = split_row(line, delim);
        let cell = |col: usize, what: &str| parse_cell(&cells, col, what, line_no + 1, name);
        let t = match time_col {
            Some(c) => cell(c, "time")? * config.time_unit.seconds(),
            None => time_s.len() as f64 / config.rate_hz.unwrap_or(1.0),
        };
        if let Some(&prev) = time_s.last().filter(|&&prev| t < prev) {
            return Err(PreprocessError::invalid(
                name,
                format!("line {}: time goes backwards ({t} s after {prev} s)", line_no + 1),
            ));
        }
        time_s.push(t);
        for axis in 0..3 {
            channels[axis].push((cell(acc[axis], "acc")? * acc_scale) as f32);
            let g = match gyro {
                Some(cols) => cell(cols[axis], "gyro")? * gyro_scale,
                None => 0.0,
            };
            channels[3 + axis].push(g as f32);
        }
    }
    if time_s.is_empty() {
        return Err(PreprocessError::invalid(
            name,
            format!("no data rows after line {}", first_no + 1),
        ));
    }
    Ok(ImuRecording { time_s, channels })
}

/// Resamples the configured window to `[6, samples]` values (channel-major).
pub fn window(rec: &ImuRecording, config: &ImuConfig) -> Vec<f32> {
    window_from(
        rec,
        config,
        rec.time_s.first().copied().unwrap_or(0.0) + config.start_secs,
    )
}

/// Resamples `[t0, t0 + window_secs)` (times in the recording's seconds) to `[6, samples]` values.
pub fn window_from(rec: &ImuRecording, config: &ImuConfig, t0: f64) -> Vec<f32> {
    let n_out = config.samples;
    let dt = config.window_secs / n_out as f64;
    let mut out = Vec::with_capacity(6 * n_out);
    for ch in &rec.channels {
        out.extend(resample_channel(&rec.time_s, ch, t0, dt, n_out));
    }
    out
}

fn resample_channel(time: &[f64], values: &[f32], t0: f64, dt: f64, n_out: usize) -> Vec<f32> {
    let n = time.len();
    let mut out = Vec::with_capacity(n_out);
    let mut j = 0usize; // first input index with time >= current position
    for k in 0..n_out {
        let t = t0 + k as f64 * dt;
        let (lo_t, hi_t) = (t, t + dt);
        // Inputs inside [t, t + dt): average them when there are two or more (input faster than output).
        while j < n && time[j] < lo_t {
            j += 1;
        }
        let mut end = j;
        while end < n && time[end] < hi_t {
            end += 1;
        }
        if end - j >= 2 {
            let sum: f64 = values[j..end].iter().map(|&v| f64::from(v)).sum();
            out.push((sum / (end - j) as f64) as f32);
            continue;
        }
        // Otherwise interpolate linearly at t, holding the ends.
        let v = if j == 0 {
            values[0]
        } else if j >= n {
            values[n - 1]
        } else {
            let (ta, tb) = (time[j - 1], time[j]);
            let (va, vb) = (f64::from(values[j - 1]), f64::from(values[j]));
            if tb > ta {
                (va + (vb - va) * (t - ta) / (tb - ta)) as f32
            } else {
                values[j]
            }
        };
        out.push(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers_units_and_rates() {
        let text = "// comment\nt,ax,ay,az,gx,gy,gz\n0,1,0,0,180,0,0\n0.5,1,0,0,180,0,0\n";
        let cfg = ImuConfig {
            acc_unit: AccUnit::G,
            gyro_unit: GyroUnit::DegPerSecond,
            ..ImuConfig::default()
        };
        let rec = parse(text, &cfg, "x.csv").unwrap();
        assert_eq!(rec.time_s, vec![0.0, 0.5]);
        assert!((rec.channels[0][0] - 9.80665).abs() < 1e-5);
        assert!((rec.channels[3][1] - std::f32::consts::PI).abs() < 1e-5);
    }

    #[test]
    fn errors_name_line_and_column() {
        let cfg = ImuConfig {
            rate_hz: Some(100.0),
            ..ImuConfig::default()
        };
        let err = parse("acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n1,2,x,4,5,6\n", &cfg, "bad.csv")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.csv") && err.contains("line 2") && err.contains("\"x\""),
            "{err}"
        );
        let err = parse("acc_x,acc_y,gyro_x,gyro_y,gyro_z\n1,2,4,5,6\n", &cfg, "m.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no acc z column"), "{err}");
    }

    #[test]
    fn window_upsamples_by_interpolation_and_downsamples_by_averaging() {
        let time: Vec<f64> = (0..11).map(|i| i as f64 * 0.5).collect(); // 2 Hz, 5 s
        let ramp: Vec<f32> = (0..11).map(|i| i as f32).collect();
        let up = resample_channel(&time, &ramp, 0.0, 5.0 / 20.0, 20); // 4 Hz
        assert!((up[1] - 0.5).abs() < 1e-6 && (up[19] - 9.5).abs() < 1e-6);
        let time: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect(); // 1 kHz
        let vals: Vec<f32> = (0..1000).map(|i| (i % 2) as f32).collect();
        let down = resample_channel(&time, &vals, 0.0, 0.01, 100); // 100 Hz: box of 10
        // 10 samples per bin (9 or 11 where the float grid rounds the other way): the alternation averages out.
        assert!(down.iter().all(|&v| (v - 0.5).abs() < 0.1), "{down:?}");
    }
}
