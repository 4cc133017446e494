//! The .deb: `tools/package-deb` packs this build's release binary; the package lists what it must hold, its
//! control fields name the libraries the binary links, and unpacked with `dpkg -x` into a scratch root — outside
//! the source tree — its own `sensebind` runs the demo from the installed recordings, verifies the installed models
//! and accepts the installed configuration (its absolute paths mapped into the scratch root).
//!
//! Only the shipped build (every default feature) is packaged; `--no-default-features` skips this file.

#![cfg(all(
    feature = "onnxruntime",
    feature = "v4l2",
    feature = "microphone",
    feature = "gstreamer"
))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The unpacked `sensebind`, run from `cwd` (not the source tree) with no variable that points elsewhere.
fn installed(scratch: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(scratch.join("usr/bin/sensebind"));
    cmd.current_dir(cwd)
        .env_remove("SENSEBIND_DEMO_CONFIG")
        .env_remove("SENSEBIND_DATA_DIR")
        .env_remove("SENSEBIND_MODELS")
        .env_remove("SENSEBIND_CONFIG");
    cmd
}

#[test]
fn the_deb_holds_a_working_install() {
    // The Debian architecture of this build (an aarch64 build under qemu makes the arm64 package: cross/test).
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Debian architecture known for {other}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = std::fs::canonicalize(tmp.path()).unwrap();
    let out = run(Command::new(root().join("tools/package-deb"))
        .args(["--arch", arch, "--compression", "gzip"])
        .args(["--binary", env!("CARGO_BIN_EXE_sensebind"), "--out"])
        .arg(tmp_path.join("out")));
    let deb = PathBuf::from(text(&out).trim());
    assert!(deb.is_file(), "no .deb at {deb:?}");

    // What the package holds.
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/sensebind",
        "./usr/lib/systemd/system/sensebind.service",
        "./usr/lib/sysusers.d/sensebind.conf",
        "./usr/lib/tmpfiles.d/sensebind.conf",
        "./etc/sensebind/sensebind.toml",
        "./etc/default/sensebind",
        "./usr/share/sensebind/models/imagebind-tiny/manifest.toml",
        "./usr/share/sensebind/models/imagebind-tiny/text.onnx",
        "./usr/share/sensebind/demo/demo.toml",
        "./usr/share/sensebind/demo/media/carphone_pristine.mp4",
        "./usr/share/doc/sensebind/copyright",
        "./usr/share/doc/sensebind/README.md",
        "./usr/share/doc/sensebind/media-licences/LICENSE_CC0-1.0.txt",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} not in the package:\n{listing}"
        );
    }
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "files not owned by root:\n{listing}"
    );
    let field = |name: &str| text(&run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name)));
    assert_eq!(field("Architecture").trim(), arch);
    assert_eq!(field("Version").trim(), env!("CARGO_PKG_VERSION"));
    let depends = field("Depends");
    for lib in [
        "libc6",
        "libasound2",
        "libgstreamer1.0-0",
        "libgstreamer-plugins-base1.0-0",
    ] {
        assert!(depends.contains(lib), "Depends lacks {lib}: {depends}");
    }
    let conffiles = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles")));
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/default/sensebind", "/etc/sensebind/sensebind.toml"]
    );

    // Unpacked into a scratch root; run from a folder with no configs/ or models/ in it.
    let scratch = tmp_path.join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&scratch));
    let cwd = tmp_path.join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();

    // The unit runs the installed binary on the installed configuration.
    let unit = std::fs::read_to_string(scratch.join("usr/lib/systemd/system/sensebind.service")).unwrap();
    assert!(unit.contains("Environment=SENSEBIND_CONFIG=/etc/sensebind/sensebind.toml"));
    assert!(unit.contains("ExecStart=/usr/bin/sensebind run --config ${SENSEBIND_CONFIG}"));

    let demo = run(installed(&scratch, &cwd).args(["demo", "--duration", "10"]));
    let stdout = text(&demo);
    let share = scratch.join("usr/share/sensebind");
    assert!(
        stdout.contains(&format!("config: {}", share.join("demo/demo.toml").display())),
        "the demo did not read the installed configuration:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("in {}", share.join("models/imagebind-tiny").display())),
        "the demo did not load the installed models:\n{stdout}"
    );
    for source in ["cam0", "mic0", "depth0", "ir0", "imu0", "notes"] {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().nth(1) == Some(source)),
            "no line for {source}:\n{stdout}"
        );
    }
    let done = stdout.lines().find(|l| l.starts_with("done: ")).unwrap_or_default();
    let embedded: u64 = done.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(embedded > 0, "no windows embedded:\n{stdout}");

    let verify = text(&run(installed(&scratch, &cwd).args(["models", "verify"])));
    let passed = verify
        .lines()
        .filter(|l| l.starts_with("PASS") && l.contains("tract"))
        .count();
    assert_eq!(passed, 6, "every tower on tract:\n{verify}");

    // The conffile names installed paths; mapped into the scratch root, every one of them exists.
    let conf = std::fs::read_to_string(scratch.join("etc/sensebind/sensebind.toml")).unwrap();
    assert!(!conf.contains("\"../"), "a relative path left in the conffile:\n{conf}");
    assert!(conf.contains("state_dir = \"/var/lib/sensebind\""));
    let mapped = conf
        .replace("/usr/share/sensebind", &share.display().to_string())
        .replace("/var/lib/sensebind", &tmp_path.join("state").display().to_string());
    let mapped_path = tmp_path.join("sensebind.toml");
    std::fs::write(&mapped_path, mapped).unwrap();
    run(installed(&scratch, &cwd).arg("check").arg("--config").arg(&mapped_path));
}
