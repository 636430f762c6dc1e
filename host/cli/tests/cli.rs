//! The `cellar` binary end to end: `cellar start` as a real process on
//! loopback, then every client command against it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;
use common::{CELLAR, NodeProcess, failed, free_port, ok};

/// Starts a node and returns it with its example canisters (name, id).
fn start(dir: &Path, identity: &Path) -> (NodeProcess, String, Vec<(String, String)>) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(&*CELLAR)
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
    Command::new(&*CELLAR)
        .args(["--url", url, "--identity"])
        .arg(identity)
        .args(args)
        .output()
        .unwrap()
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

/// `cellar` with identities from the store in `config` (no `--identity`).
fn cellar_in(url: &str, config: &Path, args: &[&str]) -> Output {
    Command::new(&*CELLAR)
        .env("CELLAR_CONFIG_DIR", config)
        .env("CELLAR_URL", url)
        .args(args)
        .output()
        .unwrap()
}

fn json(output: Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).unwrap()
}

#[test]
fn identities_canister_management_json_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let me = config.join("identity.key");
    // The node's examples belong to the default identity of `config`.
    let (node, url, examples) = start(&dir.path().join("node"), &me);
    let kv = examples[1].1.clone();

    // Identities: default exists, `ops` is created 0600, listed, used.
    let shown = json(cellar_in(&url, &config, &["--json", "identity", "show"]));
    assert_eq!(shown["name"], "default");
    let default_principal = shown["principal"].as_str().unwrap().to_string();
    let created = json(cellar_in(
        &url,
        &config,
        &["identity", "new", "ops", "--json"],
    ));
    let ops = created["principal"].as_str().unwrap().to_string();
    assert_ne!(ops, default_principal);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(config.join("identities/ops.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let list = ok(cellar_in(&url, &config, &["identity", "list"]));
    assert!(list.contains("* default") && list.contains("ops"), "{list}");
    ok(cellar_in(&url, &config, &["identity", "use", "ops"]));
    let shown = ok(cellar_in(&url, &config, &["identity", "show"]));
    assert!(shown.contains(&ops), "{shown}");

    // `ops` signs now: not a controller of kv until default adds it.
    let err = failed(cellar_in(&url, &config, &["canister", "stop", &kv]));
    assert!(err.contains("not a controller"), "{err}");
    ok(cellar_in(&url, &config, &["identity", "use", "default"]));
    let controllers = json(cellar_in(
        &url,
        &config,
        &["--json", "canister", "controllers", &kv, "--add", &ops],
    ));
    assert_eq!(controllers.as_array().unwrap().len(), 2, "{controllers}");
    ok(cellar_in(&url, &config, &["identity", "use", "ops"]));
    let stopped = json(cellar_in(
        &url,
        &config,
        &["canister", "stop", &kv, "--json"],
    ));
    assert_eq!(stopped["status"], "stopped");
    let err = failed(cellar_in(&url, &config, &["call", &kv, "add(\"x\", 1)"]));
    assert!(err.contains("stopped"), "{err}");
    ok(cellar_in(&url, &config, &["canister", "start", &kv]));
    let list = json(cellar_in(&url, &config, &["canister", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 4);
    let status = ok(cellar_in(&url, &config, &["canister", "status", &kv]));
    assert!(status.contains("running"), "{status}");
    // The read-state answer verified against the node's key.
    assert!(status.contains("certified by the node"), "{status}");

    // Updates submitted without waiting, then polled by request id.
    let id = ok(cellar_in(
        &url,
        &config,
        &["call", &kv, "add(\"later\", 9)", "--no-wait"],
    ));
    assert_eq!(id.len(), 64, "{id}");
    let mut state = String::new();
    for _ in 0..200 {
        state = ok(cellar_in(&url, &config, &["request", &id]));
        if state.starts_with("replied") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(state.starts_with("replied"), "{state}");
    let reply = json(cellar_in(
        &url,
        &config,
        &["--json", "query", &kv, "get(\"later\")"],
    ));
    assert_eq!(reply, serde_json::json!(9));

    // Delete: stop first, then delete; it is gone from the list.
    let testbed = ok(cellar_in(&url, &config, &["deploy", "counter"]));
    ok(cellar_in(&url, &config, &["canister", "stop", &testbed]));
    ok(cellar_in(&url, &config, &["canister", "delete", &testbed]));
    let list = ok(cellar_in(&url, &config, &["canister", "list"]));
    assert!(!list.contains(&testbed), "{list}");
    let status = json(cellar_in(&url, &config, &["status", "--json"]));
    assert_eq!(status["node"]["canisters"], 4);

    // Shell completions.
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(cellar_in(&url, &config, &["completions", shell]));
        assert!(script.contains("canister"), "{shell}: {script}");
    }
    drop(node);
}

#[test]
fn policies_top_up_and_calls_between_canisters_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let me = dir.path().join("me.key");
    let (_node, url, examples) = start(&dir.path().join("node"), &me);
    let id = |name: &str| {
        examples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.clone())
            .unwrap()
    };
    let (kv, relay) = (id("kv"), id("relay"));

    assert!(ok(cellar(&url, &me, &["policy", "show"])).contains("built-in"));
    let set = ok(cellar(
        &url,
        &me,
        &["policy", "set", "scheduler", "round-robin"],
    ));
    assert!(set.contains("component"), "{set}");
    let err = failed(cellar(
        &url,
        &me,
        &["policy", "set", "scheduler", "no-such-policy"],
    ));
    assert!(err.contains("no scheduler policy named"), "{err}");

    // A call that travels kv <- relay, with the round-robin policy running.
    ok(cellar(&url, &me, &["call", &kv, "add(\"apple\", 5)"]));
    let got = ok(cellar(
        &url,
        &me,
        &["call", &relay, &format!("lookup(\"{kv}\", \"apple\")")],
    ));
    assert_eq!(got, "some(5)");
    assert!(
        ok(cellar(
            &url,
            &me,
            &["policy", "set", "scheduler", "builtin"]
        ))
        .contains("built-in")
    );

    let before: u64 = json(cellar(&url, &me, &["--json", "canister", "status", &kv]))["cycles"]
        .as_u64()
        .unwrap();
    let after: u64 = json(cellar(
        &url,
        &me,
        &["--json", "canister", "top-up", &kv, "1000000"],
    ))["cycles"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1_000_000);
}
