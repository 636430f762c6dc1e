//! `cellar new` → `cellar build` → `cellar deploy` for each template
//! language, against a node started by the test: the scaffolded project
//! builds and deploys as it is, answers its calls, keeps its state, and a
//! second deploy upgrades the same canister.
//!
//! Rust projects build with cargo for wasm32-wasip2 (a shared target
//! directory under the workspace's target keeps later runs fast); Python and
//! JavaScript projects with the toolchains that
//! `scripts/build-language-examples.sh` installs (PyPI and npm are needed
//! the first time; a missing toolchain is an error, not a skip).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const CELLAR: &str = env!("CARGO_BIN_EXE_cellar");

/// Kills the node when the test ends, however it ends.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cellar start` on a free port; returns it and its URL.
fn start(dir: &Path, identity: &Path) -> (NodeProcess, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(CELLAR)
        .arg("--identity")
        .arg(identity)
        .args(["start", "--data-dir"])
        .arg(dir)
        .args(["--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let node = NodeProcess(child);
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("Press Ctrl-C") {
            break;
        }
    }
    (node, format!("http://{listen}"))
}

fn cellar(dir: &Path, url: &str, identity: &Path, args: &[&str]) -> Output {
    // The target directory the example canisters were built in (by
    // host/examples/build.rs, same profile and lockfile as a new project):
    // a Rust project then compiles only its own crate.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/components");
    Command::new(CELLAR)
        .current_dir(dir)
        .env("CELLAR_URL", url)
        .env("CELLAR_CARGO_TARGET_DIR", target)
        .arg("--identity")
        .arg(identity)
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Scaffolds, builds and deploys a project in `lang`, then calls it.
fn new_build_deploy(lang: &str, greeting: &str) {
    let dir = tempfile::tempdir().unwrap();
    let me = dir.path().join("me.key");
    let (_node, url) = start(&dir.path().join("node"), &me);
    let name = format!("hello-{lang}");
    ok(cellar(
        dir.path(),
        &url,
        &me,
        &["new", &name, "--lang", lang],
    ));
    let project = dir.path().join(&name);
    assert!(project.join("wit/world.wit").is_file());
    assert!(project.join("cellar.toml").is_file());

    let wasm = ok(cellar(&project, &url, &me, &["build"]));
    assert!(Path::new(&wasm).is_file(), "{wasm}");
    let id = ok(cellar(&project, &url, &me, &["deploy"]));
    ok(cellar(
        &project,
        &url,
        &me,
        &["call", &id, "add(\"apple\", 5)"],
    ));
    assert_eq!(
        ok(cellar(
            &project,
            &url,
            &me,
            &["query", &id, "get(\"apple\")"]
        )),
        "some(5)"
    );
    let hello = ok(cellar(
        &project,
        &url,
        &me,
        &["query", &id, "hello(\"you\")"],
    ));
    assert!(hello.contains(greeting), "{hello}");

    if lang != "rust" {
        // The Python and JavaScript templates print in `add`: every
        // message's line lands in the canister's log, not only the first.
        for value in 6..9 {
            ok(cellar(
                &project,
                &url,
                &me,
                &["call", &id, &format!("add(\"apple\", {value})")],
            ));
        }
        let logs = ok(cellar(&project, &url, &me, &["--json", "logs", &id]));
        let logs: Vec<serde_json::Value> = serde_json::from_str(&logs).unwrap();
        let printed: Vec<&str> = logs
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| m.starts_with("add "))
            .collect();
        assert_eq!(
            printed,
            (5..9)
                .map(|v| format!("add apple = {v}"))
                .collect::<Vec<_>>(),
            "{logs:?}"
        );
    }

    // Deploying again upgrades the same canister, rebuilt from the edited
    // source (an unchanged project is not rebuilt: see `deploy` above,
    // which reused `build`'s component).
    let source = project.join(match lang {
        "rust" => "src/lib.rs",
        "python" => "app.py",
        _ => "app.js",
    });
    let text = std::fs::read_to_string(&source).unwrap();
    std::fs::write(&source, text.replace(greeting, "edited")).unwrap();
    let again = ok(cellar(&project, &url, &me, &["deploy"]));
    assert_eq!(again, id);
    let hello = ok(cellar(
        &project,
        &url,
        &me,
        &["query", &id, "hello(\"you\")"],
    ));
    assert!(hello.contains("edited"), "{hello}");
    let status = ok(cellar(
        &project,
        &url,
        &me,
        &["--json", "canister", "status", &id],
    ));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["module_hash"].is_string(), "{status}");
}

#[test]
fn rust_project_builds_and_deploys_as_scaffolded() {
    new_build_deploy("rust", "in Rust");
}

#[test]
fn python_project_builds_and_deploys_as_scaffolded() {
    new_build_deploy("python", "in Python");
}

#[test]
fn js_project_builds_and_deploys_as_scaffolded() {
    new_build_deploy("js", "in JavaScript");
}
