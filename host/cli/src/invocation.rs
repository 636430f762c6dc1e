//! How the user runs `cellar`, so that the commands hints print (`cellar
//! start`'s "Try:" lines, "deploy one with ...") work when pasted as they
//! are: `cargo run -p cellar --` for a binary cargo built and runs from its
//! target directory (a new user's `cellar` is not on the `PATH`), else the
//! name or path the user typed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The command that runs this `cellar`, e.g. `cellar` or `cargo run -p
/// cellar --`: put the subcommand after it.
pub fn cellar() -> &'static str {
    static CHOSEN: OnceLock<String> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let argv0 = std::env::args_os()
            .next()
            .unwrap_or_else(|| "cellar".into());
        let exe = std::env::current_exe().ok();
        choose(
            &argv0.to_string_lossy(),
            exe.as_deref(),
            std::env::var_os("CARGO").is_some(),
            &|name| on_path(name, std::env::var_os("PATH")),
        )
    })
}

/// The choice behind [`cellar`], given `argv0` (the name or path typed),
/// the running executable `exe`, whether cargo started the process
/// (`CARGO` is set: `cargo run`, `cargo test`) and where a name is found
/// on the `PATH`.
pub fn choose(
    argv0: &str,
    exe: Option<&Path>,
    via_cargo: bool,
    find_on_path: &dyn Fn(&str) -> Option<PathBuf>,
) -> String {
    let typed = Path::new(argv0);
    // Cargo's build: the binary lies in `<target dir>/<profile>/`, as
    // `cargo run` runs it (or the user ran it from there by its path).
    let profile = exe.and_then(cargo_profile).or_else(|| cargo_profile(typed));
    if let Some(profile) = profile.filter(|_| via_cargo || argv0.contains('/')) {
        return match profile.as_str() {
            "debug" => "cargo run -p cellar --".to_string(),
            "release" => "cargo run --release -p cellar --".to_string(),
            other => format!("cargo run --profile {other} -p cellar --"),
        };
    }
    let name = typed.file_name().map_or_else(
        || "cellar".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    // A bare name: the shell found it on the PATH.
    if !argv0.contains('/') {
        return quoted(&name);
    }
    // A path: the name alone when it runs the same binary.
    let same = |found: &Path| match (found.canonicalize(), exe.map(Path::canonicalize)) {
        (Ok(found), Some(Ok(exe))) => found == exe,
        _ => false,
    };
    if find_on_path(&name).is_some_and(|found| same(&found)) {
        return quoted(&name);
    }
    quoted(argv0)
}

/// The profile (`debug`, `release`, ...) when `exe` lies in a cargo target
/// directory (`<dir>/<profile>/cellar`, `<dir>` holding cargo's
/// `CACHEDIR.TAG` or named `target`).
fn cargo_profile(exe: &Path) -> Option<String> {
    let profile_dir = exe.parent()?;
    let target = profile_dir.parent()?;
    let is_target =
        target.join("CACHEDIR.TAG").is_file() || target.file_name().is_some_and(|n| n == "target");
    is_target
        .then(|| profile_dir.file_name())
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty() && p != "deps" && p != "examples")
}

/// The file `name` resolves to on `path` (the `PATH` variable).
fn on_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `text` quoted for a POSIX shell when it needs it.
fn quoted(text: &str) -> String {
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c));
    if plain && !text.is_empty() {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nowhere(_: &str) -> Option<PathBuf> {
        None
    }

    #[test]
    fn cargo_run_prints_cargo_run() {
        let dir = tempfile::tempdir().unwrap();
        // A target directory of any name: cargo tags it.
        let target = dir.path().join("build-here");
        for profile in ["debug", "release", "bench-fast"] {
            std::fs::create_dir_all(target.join(profile)).unwrap();
        }
        std::fs::write(target.join("CACHEDIR.TAG"), "Signature").unwrap();
        let debug = target.join("debug/cellar");
        let argv0 = debug.to_str().unwrap();
        assert_eq!(
            choose(argv0, Some(&debug), true, &nowhere),
            "cargo run -p cellar --"
        );
        // Run by its path from the target dir, without cargo: still cargo's build.
        assert_eq!(
            choose(argv0, Some(&debug), false, &nowhere),
            "cargo run -p cellar --"
        );
        let release = target.join("release/cellar");
        assert_eq!(
            choose(release.to_str().unwrap(), Some(&release), true, &nowhere),
            "cargo run --release -p cellar --"
        );
        let custom = target.join("bench-fast/cellar");
        assert_eq!(
            choose(custom.to_str().unwrap(), Some(&custom), true, &nowhere),
            "cargo run --profile bench-fast -p cellar --"
        );
        // `./target/debug/cellar` typed, the executable not found (a
        // deleted binary): the typed path still tells.
        let plain_target = dir.path().join("target/debug");
        std::fs::create_dir_all(&plain_target).unwrap();
        let typed = plain_target.join("cellar");
        assert_eq!(
            choose(typed.to_str().unwrap(), None, false, &nowhere),
            "cargo run -p cellar --"
        );
    }

    #[test]
    fn installed_binaries_print_what_was_typed() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("cellar");
        std::fs::write(&exe, "").unwrap();
        // Found on the PATH by name (`cargo install`): the name.
        assert_eq!(choose("cellar", Some(&exe), false, &nowhere), "cellar");
        // An installed binary is not cargo's even when cargo runs it.
        assert_eq!(choose("cellar", Some(&exe), true, &nowhere), "cellar");
        // Typed as a path that is also on the PATH: the name.
        let on_path = |name: &str| Some(bin.join(name));
        assert_eq!(
            choose(exe.to_str().unwrap(), Some(&exe), false, &on_path),
            "cellar"
        );
        // Typed as a path the PATH does not lead to: the path as typed.
        assert_eq!(
            choose("./bin/cellar", Some(&exe), false, &nowhere),
            "./bin/cellar"
        );
        assert_eq!(
            choose("/opt/my tools/cellar", None, false, &nowhere),
            "'/opt/my tools/cellar'"
        );
    }

    #[test]
    fn this_process_gets_a_runnable_command() {
        // The unit tests run from cargo's target dir (deps/), so the
        // choice is the name typed; the binary's tests cover cargo run.
        assert!(!cellar().is_empty());
    }
}
