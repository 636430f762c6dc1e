//! Builds the guest workspaces `components/` (canisters) and
//! `components/policies/` (scheduler and consensus policies, `no_std`) for `wasm32-wasip2`
//! in release mode with nested cargo invocations and copies the resulting
//! components into `OUT_DIR`, where `src/lib.rs` embeds them with
//! `include_bytes!`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const COMPONENTS: &[&str] = &["counter", "kv", "ledger", "testbed", "relay"];
/// Scheduler and consensus policies (workspace `components/policies`), by
/// output file stem.
const POLICIES: &[&str] = &[
    "round_robin",
    "accumulated_priority",
    "misbehaving_policy",
    "icc_consensus",
    "round_robin_consensus",
    "misbehaving_consensus",
];

/// Variables that would break or pollute the nested build: flags, wrappers
/// and target directory of the outer build, and the per-package variables
/// cargo sets for build scripts.
const REMOVED_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "OPT_LEVEL",
    "PROFILE",
    "DEBUG",
];
const REMOVED_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    // host/examples -> repository root.
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("host/examples lives two levels below the repository root")
        .to_path_buf();
    let components = root.join("components");
    let wit = root.join("wit");
    let target_dir = root.join("target").join("components");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", wit.display());
    rerun_if_changed_tree(&components);

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    ensure_target_installed(&rustc);

    build_workspace(&cargo, &components, &target_dir);
    build_workspace(&cargo, &components.join("policies"), &target_dir);

    let release = target_dir.join(TARGET).join("release");
    for name in COMPONENTS.iter().chain(POLICIES) {
        let src = release.join(format!("{name}.wasm"));
        let dst = out_dir.join(format!("{name}.wasm"));
        fs::copy(&src, &dst)
            .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", src.display(), dst.display()));
    }
}

/// Runs `cargo build --release --target wasm32-wasip2` in the guest
/// workspace `dir`, without the outer build's environment.
fn build_workspace(cargo: &std::ffi::OsStr, dir: &Path, target_dir: &Path) {
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if REMOVED_VARS.contains(&key) || REMOVED_PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build {}: {e}", dir.display()));
    if !output.status.success() {
        panic!(
            "building the guest components in {} failed ({}):\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Emits `rerun-if-changed` for every file under `dir`, skipping `target`
/// directories. Directories themselves are not listed: cargo would scan them
/// recursively (including a `target/` left by a manual build) and their
/// mtime changes when the nested build rewrites `Cargo.lock`.
fn rerun_if_changed_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if entry.file_name() != "target" {
                rerun_if_changed_tree(&path);
            }
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// Makes sure the standard library for `wasm32-wasip2` is installed, running
/// `rustup target add wasm32-wasip2` when it is not.
fn ensure_target_installed(rustc: &std::ffi::OsStr) {
    let installed = || {
        Command::new(rustc)
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
                Path::new(&sysroot)
                    .join("lib/rustlib")
                    .join(TARGET)
                    .exists()
            })
            .unwrap_or(false)
    };
    if installed() {
        return;
    }
    println!(
        "cargo:warning=target {TARGET} is not installed; running `rustup target add {TARGET}`"
    );
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !added || !installed() {
        panic!(
            "the Rust target {TARGET} is required to build the example canisters but is not \
             installed, and `rustup target add {TARGET}` failed. Install it with:\n\n    \
             rustup target add {TARGET}\n"
        );
    }
}
