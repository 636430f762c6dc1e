//! Every `cellar` command and every `cellar bench` scenario, each run at a
//! tiny size against real processes (a `cellar start` node, a replica of
//! `cellar node start`, a `cellar fleet`), its output checked.
//!
//! The list of commands comes from the binary itself (`cellar --help`, and
//! `--help` of every command group, as clap prints them): a command that
//! exists and is not run here fails the test, so a new command comes with
//! its test. Everything runs with a temporary `HOME`, `CELLAR_CONFIG_DIR`
//! and `TMPDIR`: the user's identities and fleets are never touched.
//!
//! `cellar build` and `cellar deploy` of a scaffolded project (compiling a
//! canister for each language) are covered end to end by
//! `tests/projects.rs`; here `new` scaffolds a project and `build` and
//! project `deploy` run their fast path (outside a project: the error and
//! its hint).
//!
//! `cellar bench memory` runs its `messages` part only: its `checkpoints`
//! part needs the smallest heap the benchmark allows, 1 GiB, written
//! through, checkpointed and restarted in three processes (about a minute
//! in a debug build).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::{CELLAR, NodeProcess, free_port};

/// The longest any one command may take before the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// The commands of `cellar` as its help lists them: the subcommands of
/// `path` (without `help`).
fn subcommands(path: &[String]) -> Vec<String> {
    let output = Command::new(&*CELLAR)
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "cellar {path:?} --help failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut names = Vec::new();
    let mut listing = false;
    for line in text.lines() {
        if line.trim_end() == "Commands:" {
            listing = true;
        } else if listing {
            // "  name   description"; the list ends at a blank line.
            let Some(entry) = line.strip_prefix("  ") else {
                break;
            };
            if entry.starts_with(' ') {
                continue; // a wrapped description
            }
            let name = entry.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// Every runnable command (`call`, `canister stop`, `bench scheduler`, ...).
fn all_commands(path: Vec<String>) -> Vec<String> {
    let subs = subcommands(&path);
    if subs.is_empty() {
        return vec![path.join(" ")];
    }
    subs.into_iter()
        .flat_map(|s| {
            let mut deeper = path.clone();
            deeper.push(s);
            all_commands(deeper)
        })
        .collect()
}

/// Runs `command` to its end (at most [`COMMAND_LIMIT`]) and returns its
/// output.
fn run_within(mut command: Command, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not finish within {COMMAND_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs `cellar` in a sandbox of its own and remembers which commands ran.
struct Cellar {
    home: PathBuf,
    config: PathBuf,
    url: String,
    commands: BTreeSet<String>,
    ran: Mutex<BTreeSet<String>>,
}

impl Cellar {
    fn new(home: &Path) -> Self {
        for dir in ["tmp", "bin", ".config", ".local/share"] {
            std::fs::create_dir_all(home.join(dir)).unwrap();
        }
        let commands: BTreeSet<String> = all_commands(Vec::new()).into_iter().collect();
        // The walk found the groups' commands, not only the top level.
        for expected in ["start", "canister stop", "bench scheduler", "fleet up"] {
            assert!(commands.contains(expected), "{expected}: {commands:?}");
        }
        Cellar {
            home: home.to_path_buf(),
            config: home.join(".config/cellar-test"),
            url: String::new(),
            commands,
            ran: Mutex::new(BTreeSet::new()),
        }
    }

    /// Notes that the command `args` begins with ran.
    fn note(&self, args: &[&str]) {
        let found = self.commands.iter().find(|c| {
            let words: Vec<&str> = c.split(' ').collect();
            args.len() >= words.len() && args[..words.len()] == words[..]
        });
        let found = found.unwrap_or_else(|| panic!("{args:?} is not a cellar command"));
        self.ran.lock().unwrap().insert(found.clone());
    }

    /// The sandbox's environment on `command`.
    fn sandboxed(&self, mut command: Command) -> Command {
        command
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_DATA_HOME", self.home.join(".local/share"))
            .env("TMPDIR", self.home.join("tmp"))
            .env("CELLAR_CONFIG_DIR", &self.config)
            .env("CELLAR_URL", &self.url)
            .env_remove("CELLAR_FLEET")
            .env_remove("RUST_LOG");
        command
    }

    /// `cellar args...` (the command first, options after it).
    fn command(&self, args: &[&str]) -> Command {
        self.note(args);
        let mut command = self.sandboxed(Command::new(&*CELLAR));
        command.args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        run_within(self.command(args), &format!("cellar {}", args.join(" ")))
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "cellar {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// Stderr of a command that must fail.
    fn failed(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(!output.status.success(), "cellar {args:?} succeeded");
        String::from_utf8(output.stderr).unwrap()
    }

    /// `script` in `sh`, with the sandbox's `bin` (a `cellar` link to the
    /// binary) first on the `PATH` and not under cargo: as a user who
    /// installed `cellar` types it.
    fn shell(&self, script: &str) -> Command {
        let link = self.home.join("bin/cellar");
        if !link.exists() {
            std::os::unix::fs::symlink(&*CELLAR, &link).unwrap();
        }
        let path = format!(
            "{}:{}",
            self.home.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = self.sandboxed(Command::new("sh"));
        command
            .env("PATH", path)
            .env_remove("CARGO")
            .args(["-c", script]);
        command
    }

    /// Starts `command` (a node: `cellar start`) and reads its stdout up
    /// to "Press Ctrl-C".
    fn start_node(&self, mut command: Command) -> (NodeProcess, Vec<String>) {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let node = NodeProcess(child);
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("Press Ctrl-C");
            lines.push(line);
            if done {
                return (node, lines);
            }
        }
        panic!("the node stopped before it was ready: {lines:#?}");
    }

    /// Fails unless every command ran.
    fn check_all_ran(&self) {
        let ran = self.ran.lock().unwrap();
        let missing: Vec<&String> = self.commands.difference(&ran).collect();
        assert!(
            missing.is_empty(),
            "commands no test runs (add them to tests/commands.rs): {missing:?}"
        );
    }
}

/// A loopback port free for both TCP and UDP (QUIC).
fn free_tcp_and_udp_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The lines of `text` after the line `header` up to the next blank one.
fn section<'a>(lines: &'a [String], header: &str) -> Vec<&'a str> {
    lines
        .iter()
        .skip_while(|l| !l.starts_with(header))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim())
        .collect()
}

/// How hints begin for a binary that cargo runs (`CARGO` set): `cargo run`
/// when it lies in cargo's target dir (`None` for another copy, as
/// `CELLAR_TEST_BIN` may give).
fn cargo_invocation() -> Option<&'static str> {
    let exe = Path::new(&*CELLAR).canonicalize().ok()?;
    let profile = exe.parent()?;
    if !profile.parent()?.join("CACHEDIR.TAG").is_file() {
        return None;
    }
    match profile.file_name()?.to_str()? {
        "debug" => Some("cargo run -p cellar --"),
        "release" => Some("cargo run --release -p cellar --"),
        _ => None,
    }
}

#[test]
fn every_command_and_benchmark_runs() {
    let started = Instant::now();
    let home = tempfile::tempdir().unwrap();
    let mut cellar = Cellar::new(home.path());

    single_node(&mut cellar);
    eprintln!("single node: {:?}", started.elapsed());
    subnet(&mut cellar);
    eprintln!("subnet: {:?}", started.elapsed());
    benchmarks(&cellar);
    eprintln!("benchmarks: {:?}", started.elapsed());

    cellar.check_all_ran();
}

/// `cellar start` and every command a client sends to one node.
fn single_node(cellar: &mut Cellar) {
    let data_dir = cellar.home.join("node");
    let listen = format!("127.0.0.1:{}", free_port());
    cellar.url = format!("http://{listen}");
    let url = cellar.url.clone();

    // `start`, run as an installed `cellar`: its hints work as printed.
    cellar.note(&["start"]);
    let (node, lines) = cellar.start_node(cellar.shell(&format!(
        "exec cellar start --data-dir '{}' --listen {listen}",
        data_dir.display()
    )));
    assert!(
        lines.contains(&format!("Cellar node running at {url}")),
        "{lines:#?}"
    );
    let examples: Vec<(String, String)> = section(&lines, "Example canisters")
        .iter()
        .map(|l| {
            let (name, id) = l.split_once(' ').unwrap();
            (name.to_string(), id.trim().to_string())
        })
        .collect();
    let names: Vec<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["counter", "kv", "ledger", "relay"], "{lines:#?}");
    let example = |name: &str| {
        examples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.clone())
            .unwrap()
    };
    let hints = section(&lines, "Try:");
    assert!(hints.len() >= 7, "{lines:#?}");
    let mut replies = Vec::new();
    for hint in &hints {
        assert!(hint.starts_with(&format!("cellar --url {url} ")), "{hint}");
        let output = run_within(cellar.shell(hint), hint);
        assert!(
            output.status.success(),
            "the hint `{hint}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        replies.push(String::from_utf8(output.stdout).unwrap().trim().to_string());
    }
    for (hint, reply) in [
        ("'get()'", "1"),
        (r#"'get("apple")'"#, "some(5)"),
        ("'total-supply()'", "100"),
    ] {
        let i = hints.iter().position(|h| h.ends_with(hint)).unwrap();
        assert_eq!(replies[i], reply, "{}", hints[i]);
    }

    // Identities (in the sandbox's config dir).
    let shown = cellar.ok(&["identity", "show"]);
    assert!(shown.starts_with("default\n"), "{shown}");
    let me = shown.lines().nth(1).unwrap().to_string();
    let created = cellar.ok(&["identity", "new", "ops"]);
    assert!(created.starts_with("created identity `ops`: "), "{created}");
    let ops = created.rsplit(' ').next().unwrap().to_string();
    assert_ne!(ops, me);
    let list = cellar.ok(&["identity", "list"]);
    assert!(list.contains(&format!("* default          {me}")), "{list}");
    assert!(
        list.contains(&format!("  ops              {ops}")),
        "{list}"
    );
    let used = cellar.ok(&["identity", "use", "ops"]);
    assert_eq!(used, format!("using identity `ops`: {ops}"));
    assert!(cellar.ok(&["identity", "show"]).contains(&ops));
    cellar.ok(&["identity", "use", "default"]);

    // Deploy, call, query, request.
    let kv = cellar.ok(&["deploy", "kv"]);
    assert_eq!(kv.len(), example("kv").len(), "{kv}");
    assert_eq!(cellar.ok(&["call", &kv, r#"add("apple", 5)"#]), "()");
    assert_eq!(cellar.ok(&["query", &kv, r#"get("apple")"#]), "some(5)");
    assert_eq!(
        cellar.ok(&["query", &kv, "get", "--args-json", r#"["apple"]"#, "--json"]),
        "5"
    );
    let request = cellar.ok(&["call", &kv, r#"add("pear", 2)"#, "--no-wait"]);
    assert_eq!(request.len(), 64, "{request}");
    assert_eq!(cellar.ok(&["request", &request, "--wait"]), "()");
    let state = cellar.ok(&["request", &request]);
    assert_eq!(state, "replied\n()");
    let err = cellar.failed(&["call", &kv, "nope()"]);
    assert!(err.contains("nope"), "{err}");

    // Describe, logs, upgrade on the testbed.
    let described = cellar.ok(&["describe", &kv]);
    assert!(
        described.contains("add: func(key: string, value: u64)"),
        "{described}"
    );
    let testbed = cellar.ok(&["deploy", "testbed", "--arg", r#"some("cmds")"#]);
    cellar.ok(&["call", &testbed, r#"log-line("from the commands test")"#]);
    let logs = cellar.ok(&["logs", &testbed]);
    assert!(logs.contains("from the commands test"), "{logs}");
    cellar.ok(&["upgrade", &testbed, "testbed", "--arg", r#"some("v2")"#]);
    assert_eq!(
        cellar.ok(&["query", &testbed, "upgrade-log()"]),
        r#"["init:cmds", "post-upgrade:v2"]"#
    );

    // Status of the node and of one canister.
    let status = cellar.ok(&["status"]);
    assert!(status.contains(&format!("node       {url}")), "{status}");
    assert!(
        status.contains(&kv) && status.contains(&testbed),
        "{status}"
    );
    assert!(status.contains(&format!("you        {me}")), "{status}");
    let one = cellar.ok(&["status", &kv]);
    assert!(one.contains(&format!("canister     {kv}")), "{one}");
    assert!(one.contains("status       running"), "{one}");

    // Canister management.
    let list = cellar.ok(&["canister", "list"]);
    assert!(list.starts_with("CANISTER"), "{list}");
    assert!(list.contains(&kv) && list.contains(&testbed), "{list}");
    let certified = cellar.ok(&["canister", "status", &kv]);
    assert!(certified.contains("certified by the node"), "{certified}");
    let before = cellar.ok(&["canister", "status", &kv, "--json"]);
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let topped = cellar.ok(&["canister", "top-up", &kv, "1000", "--json"]);
    let topped: serde_json::Value = serde_json::from_str(&topped).unwrap();
    assert_eq!(
        topped["cycles"].as_u64().unwrap(),
        before["cycles"].as_u64().unwrap() + 1000
    );
    assert_eq!(cellar.ok(&["canister", "controllers", &kv]), me);
    let both = cellar.ok(&["canister", "controllers", &kv, "--add", &ops]);
    assert_eq!(both, format!("{me}\n{ops}"));
    assert_eq!(
        cellar.ok(&["canister", "chunks", &kv]),
        "the chunk store is empty"
    );
    assert!(
        cellar
            .ok(&["canister", "stop", &testbed])
            .contains("status       stopped")
    );
    let err = cellar.failed(&["call", &testbed, r#"log-line("x")"#]);
    assert!(err.contains("stopped"), "{err}");
    assert!(
        cellar
            .ok(&["canister", "start", &testbed])
            .contains("status       running")
    );
    cellar.ok(&["canister", "stop", &testbed]);
    cellar.ok(&["canister", "delete", &testbed]);
    assert!(!cellar.ok(&["canister", "list"]).contains(&testbed));

    // Policies.
    assert!(cellar.ok(&["policy", "show"]).contains("built-in"));
    let set = cellar.ok(&["policy", "set", "scheduler", "round-robin"]);
    assert!(set.starts_with("scheduler policy: component "), "{set}");
    assert_eq!(cellar.ok(&["call", &kv, r#"add("plum", 1)"#]), "()");
    let set = cellar.ok(&["policy", "set", "scheduler", "builtin"]);
    assert!(set.contains("built-in"), "{set}");

    // Completions.
    for shell in ["bash", "zsh", "fish"] {
        let script = cellar.ok(&["completions", shell]);
        assert!(
            script.contains("canister") && script.contains("bench"),
            "{shell}"
        );
    }

    // Projects: `new` scaffolds; building and deploying one is
    // tests/projects.rs's (a compile per language); outside a project
    // both say how to make one.
    let projects = cellar.home.join("projects");
    std::fs::create_dir_all(&projects).unwrap();
    let project = projects.join("hello");
    cellar.ok(&[
        "new",
        "hello",
        "--lang",
        "rust",
        "--dir",
        project.to_str().unwrap(),
    ]);
    for file in ["cellar.toml", "wit/world.wit", "src/lib.rs", "Cargo.toml"] {
        assert!(project.join(file).is_file(), "{file}");
    }
    let empty = projects.to_str().unwrap();
    for args in [
        &["build", "--project", empty][..],
        &["deploy", "--project", empty],
    ] {
        let err = cellar.failed(args);
        assert!(err.contains("no cellar.toml in"), "{err}");
        assert!(err.contains(" new <name>`"), "{err}");
    }
    drop(node);

    // A restart on the same data dir keeps the canisters; run by cargo,
    // its hint says `cargo run`.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut restart = cellar.sandboxed(Command::new(&*CELLAR));
    restart
        .env("CARGO", "cargo")
        .arg("start")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", &listen]);
    let (node, lines) = cellar.start_node(restart);
    let listed = section(&lines, "Canisters:").join("\n");
    assert!(
        listed.contains(&kv) && !listed.contains(&testbed),
        "{lines:#?}"
    );
    if let Some(cargo) = cargo_invocation() {
        let hint = format!("Inspect one with `{cargo} --url http://{listen} describe <id>`.");
        assert!(lines.contains(&hint), "{hint} not in {lines:#?}");
    }
    drop(node);
}

/// Stops the fleet in `0` when the test ends, however it ends.
struct FleetGuard<'a>(&'a Cellar, PathBuf);

impl Drop for FleetGuard<'_> {
    fn drop(&mut self) {
        let pids = self.1.join("fleet.pids");
        if pids.exists() {
            let _ = self
                .0
                .sandboxed(Command::new(&*CELLAR))
                .args(["fleet", "down", "--dir"])
                .arg(&self.1)
                .output();
        }
    }
}

/// A subnet: `subnet new`, one replica of `node start` answering calls,
/// `fleet up` / `fleet down` with the smallest fleet (one replica).
fn subnet(cellar: &mut Cellar) {
    let dir = cellar.home.join("subnet");
    let quic = format!("127.0.0.1:{}", free_tcp_and_udp_port());
    let wrote = cellar.ok(&[
        "subnet",
        "new",
        "--nodes",
        &quic,
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(
        wrote,
        format!("wrote genesis.json and 1 key files to {}", dir.display())
    );
    let genesis = dir.join("genesis.json");
    let key = dir.join("node-0.key.json");
    assert!(genesis.is_file() && key.is_file());

    let listen = format!("127.0.0.1:{}", free_port());
    cellar.url = format!("http://{listen}");
    let mut replica = cellar.command(&[
        "node",
        "start",
        "--config",
        genesis.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--data-dir",
        dir.join("node-0").to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    let replica = NodeProcess(
        replica
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cellar.run(&["status"]).status.success() {
        assert!(Instant::now() < deadline, "the replica did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An update ordered by consensus and executed by the replica.
    let counter = cellar.ok(&["deploy", "counter"]);
    assert_eq!(cellar.ok(&["call", &counter, "increment()"]), "1");
    assert_eq!(cellar.ok(&["query", &counter, "get()"]), "1");
    drop(replica);

    let fleet = cellar.home.join("fleet");
    let _guard = FleetGuard(cellar, fleet.clone());
    let fleet_dir = fleet.to_str().unwrap();
    let up = cellar.ok(&["fleet", "up", "--nodes", "1", "--dir", fleet_dir]);
    let urls: Vec<&str> = up.lines().collect();
    assert_eq!(urls.len(), 1, "{up}");
    assert!(urls[0].starts_with("http://127.0.0.1:"), "{up}");
    let status = cellar.ok(&["status", "--fleet", fleet_dir]);
    assert!(
        status.contains(&format!("node       {}", urls[0])),
        "{status}"
    );
    assert_eq!(
        cellar.ok(&["fleet", "down", "--dir", fleet_dir]),
        "stopped 1 replicas"
    );
}

/// Every `cellar bench` scenario at a tiny size, its table checked.
fn benchmarks(cellar: &Cellar) {
    let memory = cellar.ok(&[
        "bench",
        "memory",
        "--heap-gib",
        "1",
        "--pages",
        "1",
        "--repeat",
        "1",
        "--parts",
        "messages",
        "--trackers",
        "signal",
    ]);
    assert!(memory.contains("Message cost"), "{memory}");
    let rows: Vec<&str> = memory
        .lines()
        .filter(|l| l.starts_with("signal "))
        .collect();
    assert_eq!(rows.len(), 2, "{memory}");

    let scheduler = cellar.ok(&[
        "bench",
        "scheduler",
        "--canisters",
        "20",
        "--messages",
        "6",
        "--flooders",
        "2",
        "--flood-calls",
        "20",
        "--light-samples",
        "2",
    ]);
    assert!(
        scheduler.starts_with("cellar bench scheduler (20 idle canisters)"),
        "{scheduler}"
    );
    assert!(scheduler.contains("  install: "), "{scheduler}");
    assert!(scheduler.contains("with 21 ("), "{scheduler}");
    for policy in ["builtin", "round-robin", "accumulated-priority"] {
        let flood = scheduler
            .lines()
            .find(|l| l.contains(&format!("policy {policy}:")))
            .unwrap_or_else(|| panic!("no {policy} flood in {scheduler}"));
        assert!(flood.starts_with("  flood of 2 x 20 calls"), "{flood}");
        assert!(!flood.contains("the policy failed"), "{flood}");
    }
    assert!(
        scheduler.contains("  inter-canister calls: "),
        "{scheduler}"
    );

    let api = cellar.ok(&["bench", "api", "--clients", "1", "--seconds", "0.2"]);
    assert!(api.starts_with("KIND "), "{api}");
    for row in [
        "query   in-process",
        "query   http",
        "update  http submit+poll",
    ] {
        assert!(api.contains(row), "{row}: {api}");
    }

    let sync = cellar.ok(&["bench", "sync", "--heap-mib", "1", "--pages", "1"]);
    assert!(sync.starts_with("sync "), "{sync}");
    assert!(
        sync.contains("\nfull ") && sync.contains("\nafter 1 pages "),
        "{sync}"
    );

    let fleet = cellar.ok(&[
        "bench",
        "fleet",
        "--nodes",
        "1",
        "--clients",
        "1",
        "--seconds",
        "0.5",
        "--delays-ms",
        "0",
    ]);
    assert!(fleet.starts_with("DELAY ms "), "{fleet}");
    let row = fleet.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..2], ["0", "1"], "{fleet}");
    assert!(cells[2].parse::<u64>().unwrap() > 0, "no updates: {fleet}");
    assert_eq!(cells[3], "0", "failed updates: {fleet}");
}
