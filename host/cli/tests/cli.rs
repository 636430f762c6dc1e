//! The `cellar` binary end to end: `cellar start` as a real process on
//! loopback, then every client command against it.

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a node and returns it with its example canisters (name, id).
fn start(dir: &Path, identity: &Path) -> (NodeProcess, String, Vec<(String, String)>) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(CELLAR)
        .args(["--identity"])
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
    let mut examples = Vec::new();
    let mut in_examples = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with("Example canisters") {
            in_examples = true;
            continue;
        }
        if in_examples {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [name, id] = parts.as_slice() {
                examples.push((name.to_string(), id.to_string()));
                continue;
            }
            in_examples = false;
        }
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    (node, format!("http://{listen}"), examples)
}

fn cellar(url: &str, identity: &Path, args: &[&str]) -> Output {
    Command::new(CELLAR)
        .args(["--url", url, "--identity"])
        .arg(identity)
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn failed(output: Output) -> String {
    assert!(!output.status.success(), "unexpectedly succeeded");
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn the_documented_commands_work_against_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let me = dir.path().join("me.key");
    let other = dir.path().join("other.key");
    let (node, url, examples) = start(&dir.path().join("node"), &me);
    let names: Vec<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["counter", "kv", "ledger", "relay"]);
    let kv = examples[1].1.clone();

    assert_eq!(
        ok(cellar(&url, &me, &["call", &kv, "add(\"apple\", 5)"])),
        "()"
    );
    assert_eq!(
        ok(cellar(&url, &me, &["query", &kv, "get(\"apple\")"])),
        "some(5)"
    );
    assert_eq!(
        ok(cellar(
            &url,
            &me,
            &["query", &kv, "get(\"apple\")", "--json"]
        )),
        "5"
    );
    let described = ok(cellar(&url, &me, &["describe", &kv]));
    assert!(
        described.contains("add: func(key: string, value: u64)"),
        "{described}"
    );
    assert!(described.contains("query"), "{described}");

    // Clear errors: unknown method, wrong argument, unknown canister.
    let err = failed(cellar(&url, &me, &["call", &kv, "nope()"]));
    assert!(err.contains("nope"), "{err}");
    let err = failed(cellar(&url, &me, &["call", &kv, "add(5)"]));
    assert!(err.contains("add: func(key: string, value: u64)"), "{err}");
    let err = failed(cellar(&url, &me, &["query", "aaaaa-aa", "get(\"x\")"]));
    assert!(
        err.contains("does not exist") || err.contains("not"),
        "{err}"
    );

    // Deploy the testbed, see its log, trap it, upgrade it.
    let testbed = ok(cellar(
        &url,
        &me,
        &["deploy", "testbed", "--arg", "some(\"cli\")"],
    ));
    ok(cellar(
        &url,
        &me,
        &["call", &testbed, "log-line(\"from the cli\")"],
    ));
    let logs = ok(cellar(&url, &me, &["logs", &testbed]));
    assert!(logs.contains("from the cli"), "{logs}");
    let err = failed(cellar(&url, &me, &["call", &testbed, "trap(\"kaboom\")"]));
    assert!(err.contains("kaboom"), "{err}");
    ok(cellar(&url, &me, &["call", &testbed, "set(\"k\", \"v\")"]));
    let err = failed(cellar(&url, &other, &["upgrade", &testbed, "testbed"]));
    assert!(err.contains("not a controller"), "{err}");
    ok(cellar(
        &url,
        &me,
        &["upgrade", &testbed, "testbed", "--arg", "some(\"v2\")"],
    ));
    assert_eq!(
        ok(cellar(&url, &me, &["query", &testbed, "upgrade-log()"])),
        "[\"init:cli\", \"post-upgrade:v2\"]"
    );
    assert_eq!(
        ok(cellar(&url, &me, &["query", &testbed, "get(\"k\")"])),
        "some(\"v\")"
    );

    let status = ok(cellar(&url, &me, &["status", &testbed]));
    assert!(status.contains("running"), "{status}");
    let node_status = ok(cellar(&url, &me, &["status"]));
    assert!(node_status.contains(&kv), "{node_status}");
    let hash = node_status
        .lines()
        .find_map(|l| l.strip_prefix("state hash "))
        .unwrap_or_else(|| panic!("no state hash in {node_status}"));
    assert_eq!(hash.trim().len(), 64, "{node_status}");
    drop(node);

    // A stopped node gives a clear error.
    let err = failed(cellar(&url, &me, &["status"]));
    assert!(err.contains("cellar start"), "{err}");
}
