//! The `kv` canister written in Python (componentize-py) and in JavaScript
//! (componentize-js), run on an in-process node like the Rust one.
//!
//! The components are built by `scripts/build-language-examples.sh`, which
//! installs both toolchains at pinned versions under `target/toolchains/`
//! (PyPI and npm are needed the first time) and skips the work when its
//! outputs are newer than their sources. When the script fails, the tests
//! fail with its output: a missing toolchain is an error, not a skip.
//!
//! Both components export the same `example:kv` interfaces as the Rust
//! example (`components/kv`): `api.add` (an update) and `query.get` (a
//! query). The tests check replies, that the interpreter's heap (and the
//! dict or Map in it) persists across many updates and across reopening the
//! node (checkpoint plus journal replay), and that a query's writes are
//! discarded.
//!
//! Both `add`s print (`print()`, `console.log`); the examples route their
//! output to the system API's log, so printing works in every message, not
//! only in the first (WASI stdout handles cached in linear memory do not
//! survive into the next message's fresh instance).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use cellar_node::{Node, NodeOptions};
use cellar_tests::{alice, bob, reply, wave};
use cellar_types::Principal;
use cellar_types::api::InstallMode;

/// Updates sent to each canister before the node is reopened.
const UPDATES: u64 = 200;

/// The repository root (this crate lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives one level below the repository root")
        .to_path_buf()
}

/// Runs the build script once per test process and returns the directory
/// holding `kv-py.wasm` and `kv-js.wasm`. Panics with the script's output
/// when it fails.
fn built_components() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = root();
        let script = root.join("scripts/build-language-examples.sh");
        let started = Instant::now();
        let output = Command::new("bash")
            .arg(&script)
            .current_dir(&root)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        eprintln!("build-language-examples.sh took {:.1?}", started.elapsed());
        root.join("target/components/lang")
    })
}

/// Reads one of the built components.
fn component(file: &str) -> Vec<u8> {
    let path = built_components().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn options(dir: &Path) -> NodeOptions {
    cellar_tests::options(dir, 100_000)
}

/// `get(key)` as a query.
fn get(node: &Node, id: &Principal, key: &str) -> String {
    reply(
        node.query(&bob(), id, "get", wave(&format!("\"{key}\"")))
            .unwrap(),
    )
}

/// `add(key, value)` as an update; panics on a reject.
fn add(node: &Node, id: &Principal, key: &str, value: u64) {
    let outcome = node
        .update(&alice(), id, "add", wave(&format!("\"{key}\", {value}")))
        .unwrap();
    if let Err(reject) = outcome.result {
        panic!("add(\"{key}\", {value}) was rejected: {reject}");
    }
}

/// The methods of a canister as `(name, kind, signature)`, sorted.
fn methods(node: &Node, id: &Principal) -> Vec<(String, String, String)> {
    let mut methods: Vec<_> = node
        .interface(id)
        .unwrap()
        .methods
        .into_iter()
        .map(|m| (m.name, m.kind, m.signature))
        .collect();
    methods.sort();
    methods
}

/// `methods` without componentize-py's `exports.init` (see [`python_kv`]).
fn without_init(mut methods: Vec<(String, String, String)>) -> Vec<(String, String, String)> {
    methods.retain(|(name, _, _)| name != "exports.init");
    methods
}

/// Deploys the component in `file` as a kv canister and runs the scenario:
/// the interface, replies, a query's writes discarded, many updates with a
/// checkpoint halfway, a bounded heap, and the state after reopening the
/// node (checkpoint plus journal replay).
fn kv_scenario(file: &str) {
    let wasm = component(file);
    let dir = tempfile::tempdir().unwrap();
    let id;
    // Rejected update calls (the status counts them, like the install).
    let mut rejected_updates = 0;
    {
        let node = Node::open(options(dir.path())).unwrap();
        id = node.create(&alice(), vec![]).unwrap();
        let started = Instant::now();
        node.install(&alice(), &id, InstallMode::Install, &wasm, None)
            .unwrap();
        eprintln!(
            "{file}: {} bytes, compiled and installed in {:.1?}",
            wasm.len(),
            started.elapsed()
        );

        // The interface of the Rust kv: `add` an update, `get` a query.
        let rust = node.create(&alice(), vec![]).unwrap();
        let rust_kv = cellar_examples::get("kv").unwrap().wasm;
        node.install(&alice(), &rust, InstallMode::Install, rust_kv, None)
            .unwrap();
        let expected = methods(&node, &rust);
        assert_eq!(
            expected.iter().map(|m| (&*m.0, &*m.1)).collect::<Vec<_>>(),
            [("api.add", "update"), ("query.get", "query")]
        );
        let actual = methods(&node, &id);
        assert_eq!(without_init(actual.clone()), expected, "{file}");

        add(&node, &id, "apple", 5);
        assert_eq!(get(&node, &id, "apple"), "some(5)", "{file}");
        assert_eq!(get(&node, &id, "pear"), "none", "{file}");

        // A query's writes are discarded: the interpreter writes to its
        // heap even to read a dict (reference counts, allocations), and the
        // committed state stays as it was.
        let before = node.execution_state(&id).unwrap();
        let hash = node.state_hash();
        assert_eq!(get(&node, &id, "apple"), "some(5)", "{file}");
        assert_eq!(node.execution_state(&id).unwrap(), before, "{file}");
        assert_eq!(node.state_hash(), hash, "{file}");

        if actual.len() != expected.len() {
            init_is_harmless(&node, &id);
            rejected_updates = 1;
        }

        let heap_before = node.status(&id).unwrap().heap_bytes;
        let started = Instant::now();
        for i in 0..UPDATES {
            add(&node, &id, &format!("k{}", i % 20), i);
            if i == UPDATES / 2 {
                node.checkpoint().unwrap();
            }
        }
        eprintln!("{file}: {UPDATES} updates in {:.1?}", started.elapsed());
        // Twenty keys overwritten over and over: the heap must not grow
        // with the number of messages (it did by 128 KiB per update when
        // the JS component read clocks through the preview1 adapter, whose
        // state lives behind globals that the node does not persist).
        let heap_after = node.status(&id).unwrap().heap_bytes;
        assert!(
            heap_after <= heap_before + (1 << 20),
            "{file}: the heap grew from {heap_before} to {heap_after} bytes over {UPDATES} updates"
        );
        assert_eq!(get(&node, &id, "k0"), format!("some({})", UPDATES - 20));
        assert_eq!(get(&node, &id, "k19"), format!("some({})", UPDATES - 1));
        assert_eq!(get(&node, &id, "apple"), "some(5)", "{file}");
        // Dropped with the second half of the updates only in the journal.
    }

    let started = Instant::now();
    let node = Node::open(options(dir.path())).unwrap();
    eprintln!(
        "{file}: reopened (checkpoint + {} journaled updates) in {:.1?}",
        UPDATES / 2,
        started.elapsed()
    );
    assert_eq!(get(&node, &id, "apple"), "some(5)", "{file}");
    for k in 0..20 {
        assert_eq!(
            get(&node, &id, &format!("k{k}")),
            format!("some({})", UPDATES - 20 + k),
            "{file}"
        );
    }
    add(&node, &id, "apple", 6);
    assert_eq!(get(&node, &id, "apple"), "some(6)", "{file}");
    assert_eq!(
        node.status(&id).unwrap().updates,
        1 + UPDATES + 2 + rejected_updates
    );
}

/// componentize-py leaves its build-time `exports.init` export in the
/// component, so the node lists it as an update that anyone may call.
/// Calling it traps (the interpreter is already running) and changes
/// nothing.
fn init_is_harmless(node: &Node, id: &Principal) {
    let before = node.execution_state(id).unwrap();
    let symbols = "{exports: [], resources: [], records: [], flags: [], tuples: [], \
                   variants: [], enums: [], options: [], results: []}";
    let outcome = node
        .update(
            &bob(),
            id,
            "exports.init",
            wave(&format!("\"app\", {symbols}, false")),
        )
        .unwrap();
    let reject = outcome.result.expect_err("exports.init must not succeed");
    assert!(
        reject.message.contains("already running"),
        "{}",
        reject.message
    );
    assert_eq!(node.execution_state(id).unwrap(), before);
    assert_eq!(get(node, id, "apple"), "some(5)");
}

/// The Python kv (`components/python/kv`, componentize-py). Its interface
/// is the Rust kv's plus componentize-py's `exports.init`.
#[test]
fn python_kv() {
    kv_scenario("kv-py.wasm");
}

/// The JavaScript kv (`components/js/kv`, componentize-js).
#[test]
fn javascript_kv() {
    kv_scenario("kv-js.wasm");
}

/// The lines the canister's log holds that `add` printed, as
/// `(level, message)`.
fn printed(node: &Node, id: &Principal) -> Vec<(String, String)> {
    node.logs(id)
        .unwrap()
        .into_iter()
        .filter(|e| e.message.starts_with("add "))
        .map(|e| (e.level, e.message))
        .collect()
}

/// Several messages in a row print, each line lands in the canister's log
/// once, state persists, and printing still works after the node is
/// reopened (journal replay).
fn print_scenario(file: &str) {
    let wasm = component(file);
    let dir = tempfile::tempdir().unwrap();
    let id;
    let expected = |n: u64| -> Vec<(String, String)> {
        (0..n)
            .map(|i| ("info".to_string(), format!("add p{i} = {i}")))
            .collect()
    };
    {
        let node = Node::open(options(dir.path())).unwrap();
        id = node.create(&alice(), vec![]).unwrap();
        node.install(&alice(), &id, InstallMode::Install, &wasm, None)
            .unwrap();
        for i in 0..5 {
            add(&node, &id, &format!("p{i}"), i);
        }
        assert_eq!(printed(&node, &id), expected(5), "{file}");
        // Queries do not print and change nothing.
        assert_eq!(get(&node, &id, "p3"), "some(3)", "{file}");
        assert_eq!(printed(&node, &id), expected(5), "{file}");
    }
    let node = Node::open(options(dir.path())).unwrap();
    for i in 5..8 {
        add(&node, &id, &format!("p{i}"), i);
    }
    let lines = printed(&node, &id);
    assert!(lines.ends_with(&expected(8)[5..]), "{file}: {lines:?}");
    for i in 0..8 {
        assert_eq!(get(&node, &id, &format!("p{i}")), format!("some({i})"));
    }
}

/// `print()` in the Python kv works in every message.
#[test]
fn python_print_goes_to_the_log_in_every_message() {
    print_scenario("kv-py.wasm");
}

/// `console.log` in the JavaScript kv works in every message.
#[test]
fn javascript_console_log_goes_to_the_log_in_every_message() {
    print_scenario("kv-js.wasm");
}
