//! GPU adapters through wgpu on a real Vulkan device: Mesa's lavapipe (`mesa-vulkan-drivers`, installed by
//! tools/install-deps) is a Vulkan implementation on the CPU, so CI has one without a GPU.

#![cfg(feature = "wgpu")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::process::Command;

#[test]
fn devices_lists_the_vulkan_adapters_wgpu_finds() {
    let out = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .args(["devices", "--json"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpus = doc["gpus"]
        .as_array()
        .expect("no GPU adapter: is mesa-vulkan-drivers installed?");
    let lavapipe = gpus
        .iter()
        .find(|g| g["driver"] == "llvmpipe")
        .unwrap_or_else(|| panic!("lavapipe is not among {gpus:?}"));
    assert_eq!(lavapipe["device_type"], "cpu", "{lavapipe}");
    assert_eq!(lavapipe["backend"], "vulkan", "{lavapipe}");
    assert!(lavapipe["shader_f16"].is_boolean(), "{lavapipe}");
    assert!(lavapipe["name"].as_str().unwrap().contains("llvmpipe"), "{lavapipe}");
    // The table names it too.
    let table = Command::new(env!("CARGO_BIN_EXE_sensebind"))
        .arg("devices")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("GPU adapters (wgpu):") && text.contains("llvmpipe"),
        "{text}"
    );
}
