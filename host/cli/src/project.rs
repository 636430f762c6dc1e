//! Canister projects: `cellar new` scaffolds one, `cellar build` builds it
//! into a component, `cellar deploy` (without a module) builds and deploys
//! it, upgrading the canister it deployed before on the same node. The
//! files `cellar new` writes come from `templates/` (built into the binary).
//!
//! A project is a directory with `cellar.toml`:
//!
//! ```toml
//! [canister]
//! name = "hello"
//! lang = "rust"     # or "python", "js"
//! ```
//!
//! Rust projects build with `cargo build --release --target wasm32-wasip2`
//! against the SDK of the Cellar source tree; Python and JavaScript
//! projects with componentize-py and componentize-js, installed by the
//! source tree's `scripts/build-language-examples.sh --toolchains`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use cellar_agent::Agent;
use cellar_types::Principal;
use cellar_types::api::ModuleSource;
use data_encoding::BASE64;
use serde::{Deserialize, Serialize};

use crate::commands;
use crate::output::Output;
use crate::progress::Steps;

/// The languages `cellar new` knows.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust with the Cellar SDK.
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
}

/// Arguments of `cellar new`.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The project's name (lower case, digits and '-'); also its directory.
    pub name: String,
    /// The language.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Where to create the project [default: ./<name>].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `cellar.toml`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Manifest {
    /// The canister section.
    pub canister: CanisterSection,
}

/// `[canister]` of `cellar.toml`.
#[derive(Serialize, Deserialize, Debug)]
pub struct CanisterSection {
    /// The project's name.
    pub name: String,
    /// Its language.
    pub lang: Lang,
}

/// The Cellar source tree this binary was built from (`CELLAR_REPO`
/// overrides it): it holds the Rust SDK and the toolchain script.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CELLAR_REPO") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .to_path_buf()
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        bail!(
            "`{name}` is not a valid project name: use lower case letters, digits and single '-', starting with a letter"
        );
    }
    Ok(())
}

/// The system API and the WASI packages it refers to, as `cellar new`
/// writes them under a Python or JavaScript project's `wit/deps`.
const SYSTEM_API_WIT: [(&str, &str); 7] = [
    (
        "wit/deps/cellar/canister.wit",
        include_str!("../../../wit/canister.wit"),
    ),
    (
        "wit/deps/cli/cli.wit",
        include_str!("../../../wit/deps/cli/cli.wit"),
    ),
    (
        "wit/deps/clocks/clocks.wit",
        include_str!("../../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "wit/deps/filesystem/filesystem.wit",
        include_str!("../../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "wit/deps/io/io.wit",
        include_str!("../../../wit/deps/io/io.wit"),
    ),
    (
        "wit/deps/random/random.wit",
        include_str!("../../../wit/deps/random/random.wit"),
    ),
    (
        "wit/deps/sockets/sockets.wit",
        include_str!("../../../wit/deps/sockets/sockets.wit"),
    ),
];

fn fill(template: &str, name: &str) -> String {
    let sdk = repo_root().join("components").join("sdk");
    template
        .replace("{{name}}", name)
        .replace("{{package}}", name)
        .replace("{{module}}", &name.replace('-', "_"))
        .replace("{{sdk}}", &sdk.display().to_string())
}

/// `cellar new`: writes the project's files.
pub fn new(args: &NewArgs, out: Output) -> Result<()> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let name = args.name.as_str();
    let world = match args.lang {
        Lang::Rust => include_str!("templates/world.wit"),
        // print()/console.log go to the system API's log.
        Lang::Python | Lang::Js => include_str!("templates/world-log.wit"),
    };
    let mut files: Vec<(&str, String)> = vec![
        ("wit/world.wit", fill(world, name)),
        (".gitignore", "/target\n/.cellar\n".to_string()),
    ];
    if args.lang != Lang::Rust {
        files.extend(
            SYSTEM_API_WIT
                .iter()
                .map(|(path, text)| (*path, text.to_string())),
        );
    }
    match args.lang {
        Lang::Rust => {
            files.push((
                "Cargo.toml",
                fill(include_str!("templates/Cargo.toml.txt"), name),
            ));
            files.push((
                "src/lib.rs",
                fill(include_str!("templates/lib.rs.txt"), name),
            ));
            files.push((
                ".cargo/config.toml",
                "[build]\ntarget = \"wasm32-wasip2\"\n".to_string(),
            ));
            // The versions the examples are built and tested with.
            files.push((
                "Cargo.lock",
                include_str!("../../../components/Cargo.lock").to_string(),
            ));
        }
        Lang::Python => files.push(("app.py", fill(include_str!("templates/app.py.txt"), name))),
        Lang::Js => files.push(("app.js", fill(include_str!("templates/app.js.txt"), name))),
    }
    let manifest = Manifest {
        canister: CanisterSection {
            name: name.to_string(),
            lang: args.lang,
        },
    };
    files.push(("cellar.toml", toml_manifest(&manifest)));
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    out.value(
        &serde_json::json!({"name": name, "lang": args.lang, "dir": dir}),
        || {
            format!(
                "created {} ({:?}) in {}\nnext: cd {} && cellar deploy",
                name,
                args.lang,
                dir.display(),
                dir.display()
            )
        },
    )
}

/// `cellar.toml` as text (two keys: no TOML library needed).
fn toml_manifest(m: &Manifest) -> String {
    let lang = serde_json::to_value(m.canister.lang).expect("a string");
    format!(
        "# A Cellar canister project: `cellar build`, `cellar deploy`.\n[canister]\nname = \"{}\"\nlang = {}\n",
        m.canister.name, lang
    )
}

/// Reads `cellar.toml` (the subset `cellar new` writes: `key = "value"`).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("cellar.toml");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "no cellar.toml in {}: create a project with `{} new <name>`",
            dir.display(),
            crate::invocation::cellar()
        )
    })?;
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some((key, value)) = line.split_once('=') {
            values.insert(
                key.trim().to_string(),
                value.trim().trim_matches('"').to_string(),
            );
        }
    }
    let name = values
        .get("name")
        .cloned()
        .context("cellar.toml has no `name`")?;
    let lang = match values.get("lang").map(String::as_str) {
        Some("rust") => Lang::Rust,
        Some("python") => Lang::Python,
        Some("js") => Lang::Js,
        other => bail!("cellar.toml: unknown lang {other:?} (rust, python or js)"),
    };
    Ok(Manifest {
        canister: CanisterSection { name, lang },
    })
}

/// Runs a build command, failing with its output.
fn run(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Builds the project in `dir`; returns the component's path.
pub fn build_quiet(dir: &Path) -> Result<PathBuf> {
    let manifest = read_manifest(dir)?;
    let name = &manifest.canister.name;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("no project at {}", dir.display()))?;
    let out_dir = dir.join("target").join("cellar");
    fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("{name}.wasm"));
    let tmp = out.with_extension("wasm.tmp");
    // Cargo knows itself when a Rust build is fresh; the componentize
    // tools rebuild (tens of seconds) unless told otherwise.
    if manifest.canister.lang != Lang::Rust && is_fresh(&out, &dir)? {
        return Ok(out);
    }
    match manifest.canister.lang {
        Lang::Rust => {
            let target_dir = std::env::var_os("CELLAR_CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join("target"));
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut command = Command::new(cargo);
            command
                .current_dir(&dir)
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--target-dir",
                ])
                .arg(&target_dir);
            for var in [
                "RUSTFLAGS",
                "CARGO_ENCODED_RUSTFLAGS",
                "CARGO_TARGET_DIR",
                "CARGO_BUILD_TARGET",
            ] {
                command.env_remove(var);
            }
            run(&mut command, "cargo build")?;
            let built = target_dir
                .join("wasm32-wasip2")
                .join("release")
                .join(format!("{}.wasm", name.replace('-', "_")));
            fs::copy(&built, &tmp)
                .with_context(|| format!("cargo built no {}", built.display()))?;
        }
        Lang::Python => {
            let toolchain = ensure_toolchain("py")?;
            // componentize-py writes __pycache__ next to the modules: build
            // from a copy.
            let stage = out_dir.join("stage");
            let _ = fs::remove_dir_all(&stage);
            fs::create_dir_all(&stage)?;
            fs::copy(dir.join("app.py"), stage.join("app.py"))?;
            copy_dir(&dir.join("wit"), &stage.join("wit"))?;
            run(
                Command::new(toolchain.join("py/bin/componentize-py"))
                    .current_dir(&stage)
                    .args(["-d", "wit", "-w", "canister", "componentize", "app", "-o"])
                    .arg(&tmp),
                "componentize-py",
            )?;
        }
        Lang::Js => {
            let toolchain = ensure_toolchain("js")?;
            let cli =
                toolchain.join("js/node_modules/@bytecodealliance/componentize-js/src/cli.js");
            let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
            run(
                Command::new(node)
                    .current_dir(&dir)
                    .arg(cli)
                    .args(["app.js", "--wit", "wit", "--world-name", "canister"])
                    .args(["--disable", "http", "fetch-event", "clocks", "--out"])
                    .arg(&tmp),
                "componentize-js",
            )?;
        }
    }
    fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Whether the component at `out` is newer than every source file of the
/// project in `dir` (build output, `.cellar` and hidden or `node_modules`
/// directories are not sources).
fn is_fresh(out: &Path, dir: &Path) -> Result<bool> {
    let Ok(built) = fs::metadata(out).and_then(|m| m.modified()) else {
        return Ok(false);
    };
    Ok(newest_source(dir)?.is_none_or(|newest| newest <= built))
}

/// The modification time of the newest source file under `dir`.
fn newest_source(dir: &Path) -> Result<Option<std::time::SystemTime>> {
    let mut newest = None;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type()?;
        let modified = if kind.is_dir() {
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            newest_source(&entry.path())?
        } else {
            Some(entry.metadata()?.modified()?)
        };
        newest = newest.max(modified);
    }
    Ok(newest)
}

/// Installs a language toolchain with the source tree's script; returns
/// the toolchains directory.
fn ensure_toolchain(which: &str) -> Result<PathBuf> {
    let root = repo_root();
    let script = root.join("scripts").join("build-language-examples.sh");
    run(
        Command::new("bash")
            .arg(&script)
            .args(["--toolchains", which]),
        "the toolchain installer",
    )?;
    Ok(root.join("target").join("toolchains"))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// `cellar build`: builds and prints the component's path.
pub fn build(dir: &Path, out: Output) -> Result<PathBuf> {
    let steps = Steps::new(1);
    steps.step("building");
    let path = build_quiet(dir)?;
    steps.finish();
    let size = fs::metadata(&path)?.len();
    out.value(&serde_json::json!({"wasm": path, "bytes": size}), || {
        path.display().to_string()
    })?;
    Ok(path)
}

/// Where the project remembers the canister it deployed, per node URL.
fn deployments_path(dir: &Path) -> PathBuf {
    dir.join(".cellar").join("canisters.json")
}

/// `cellar deploy` in a project: builds it, then creates a canister (first
/// time on this node) or upgrades the one deployed before.
pub fn deploy(agent: &Agent, dir: &Path, arg: Option<String>, out: Output) -> Result<()> {
    let steps = Steps::new(3);
    steps.step("building");
    let wasm_path = build_quiet(dir)?;
    steps.step("reading the component");
    let wasm = fs::read(&wasm_path)?;
    let source = ModuleSource::Wasm(BASE64.encode(&wasm));
    let record = deployments_path(dir);
    let mut deployed: BTreeMap<String, Principal> = fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let existing = deployed
        .get(agent.base_url())
        .filter(|id| agent.canister_status(id).is_ok())
        .cloned();
    let status = match existing {
        Some(id) => {
            steps.step("upgrading the canister");
            commands::upgrade_with(agent, &id, source, arg, &steps)?
        }
        None => commands::create_with(agent, source, arg, &steps)?,
    };
    steps.finish();
    deployed.insert(agent.base_url().to_string(), status.canister_id.clone());
    fs::create_dir_all(record.parent().expect("a parent"))?;
    fs::write(&record, serde_json::to_vec_pretty(&deployed)?)?;
    commands::print_deployed(&status, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaffolds_a_project_with_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let project = dir.path().join(format!("p-{lang:?}").to_lowercase());
            let args = NewArgs {
                name: "hello-world".into(),
                lang,
                dir: Some(project.clone()),
            };
            new(&args, Output { json: true }).unwrap();
            let manifest = read_manifest(&project).unwrap();
            assert_eq!(manifest.canister.name, "hello-world");
            assert_eq!(manifest.canister.lang, lang);
            let wit = fs::read_to_string(project.join("wit/world.wit")).unwrap();
            assert!(wit.contains("package app:hello-world;"), "{wit}");
            assert!(new(&args, Output::default()).is_err(), "not twice");
        }
        for lang in ["python", "js"] {
            let project = dir.path().join(format!("p-{lang}"));
            let world = fs::read_to_string(project.join("wit/world.wit")).unwrap();
            assert!(
                world.contains("import cellar:canister/log@0.1.0;"),
                "{world}"
            );
            assert!(project.join("wit/deps/cellar/canister.wit").is_file());
            assert!(project.join("wit/deps/io/io.wit").is_file());
        }
        let lib = fs::read_to_string(dir.path().join("p-rust/src/lib.rs")).unwrap();
        assert!(lib.contains("exports::app::hello_world::{api, query}"));
        for bad in ["Hello", "1x", "a--b", "a_b", ""] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
