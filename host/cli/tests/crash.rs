//! The `cellar` node as a real process, killed with SIGKILL at random
//! moments while a client streams signed updates to it, and restarted on
//! the same data directory each time.
//!
//! Checked: every acknowledged update survives every crash; an update in
//! flight at the kill either landed whole or not at all; recovery never
//! fails, including when the kill lands during a previous recovery (replay
//! and the checkpoint it writes); and recovery is deterministic: the state
//! hash is the same after replaying the journal, after loading the
//! checkpoint that replay wrote, and after a clean shutdown.
//!
//! The node checkpoints every few rounds, so that kills land in live
//! checkpoints too, not only in the ones recovery and shutdown write.
//!
//! `CELLAR_CRASH_KILLS` sets the number of kills (default 40, well under a
//! minute); `CELLAR_CRASH_SEED` the seed of the kill schedule;
//! `CELLAR_CRASH_CHECKPOINT_INTERVAL` the rounds between checkpoints
//! (default 7).

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use cellar_agent::{Agent, AgentError, AgentOptions, Identity};
use serde_json::{Value, json};

/// The binary under test: `CELLAR_TEST_BIN` when set (a copy of the build
/// that a shared target directory cannot replace mid-run), else cargo's.
static CELLAR: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("CELLAR_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cellar").to_string())
});

/// How long a node may take to start (it replays its journal and writes a
/// checkpoint) before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A reproducible schedule: xorshift64.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The node's stderr of every run, appended to one file.
struct NodeLog(PathBuf);

impl NodeLog {
    fn mark(&self, line: &str) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .unwrap();
        writeln!(file, "===== {line}").unwrap();
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Rounds between the node's checkpoints.
fn checkpoint_interval() -> String {
    env_u64("CELLAR_CRASH_CHECKPOINT_INTERVAL", 7).to_string()
}

/// A node process; killed (SIGKILL) when dropped.
struct NodeProcess {
    child: Child,
    /// Lines of its stdout, read on a thread so that a hung node cannot
    /// hang the test.
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl NodeProcess {
    fn spawn(data_dir: &Path, identity: &Path, port: u16, log: &NodeLog) -> Self {
        log.mark(&format!("start on port {port}"));
        let stderr = OpenOptions::new().append(true).open(&log.0).unwrap();
        let mut child = Command::new(&*CELLAR)
            .arg("--identity")
            .arg(identity)
            .args(["start", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--checkpoint-interval", &checkpoint_interval()])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        NodeProcess { child, lines, port }
    }

    /// Waits until the node serves; returns the examples it printed, or
    /// `None` when it exited first.
    fn wait_ready(&mut self, log: &NodeLog) -> Option<Vec<(String, String)>> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut examples = Vec::new();
        let mut in_examples = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the node did not start in time:\n{}", log.tail())
                }
            };
            if line.starts_with("Example canisters") {
                in_examples = true;
                continue;
            }
            if in_examples {
                if let [name, id] = line.split_whitespace().collect::<Vec<_>>().as_slice() {
                    examples.push((name.to_string(), id.to_string()));
                    continue;
                }
                in_examples = false;
            }
            if line.contains("Press Ctrl-C") {
                return Some(examples);
            }
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and reap.
    fn kill(mut self) {
        // (Succeeds on a process that already exited and was not reaped.)
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGINT (Ctrl-C): the node stops serving and writes a checkpoint.
    fn send_interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the node cleanly with SIGINT.
    fn interrupt(mut self) {
        self.send_interrupt();
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "the node failed to shut down: {exit}");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node on `data_dir`, on `port` when it is still free, and waits
/// until it serves. A node that exits for any other reason than a taken
/// port fails the test: recovery must always succeed.
fn start(
    data_dir: &Path,
    identity: &Path,
    port: &mut u16,
    log: &NodeLog,
) -> (NodeProcess, Vec<(String, String)>) {
    for _ in 0..5 {
        let mut node = NodeProcess::spawn(data_dir, identity, *port, log);
        if let Some(examples) = node.wait_ready(log) {
            return (node, examples);
        }
        let exit = node.child.wait().unwrap();
        let tail = log.tail();
        assert!(
            tail.contains("cannot listen on"),
            "the node failed to recover ({exit}):\n{tail}"
        );
        *port = free_port();
    }
    panic!("no port to listen on:\n{}", log.tail());
}

/// Signed requests over HTTP, like any client.
#[derive(Clone)]
struct Client {
    identity: Identity,
}

impl Client {
    fn new() -> Self {
        Client {
            identity: Identity::from_seed([7; 32]),
        }
    }

    fn agent(&self, url: &str) -> Agent {
        let options = AgentOptions {
            timeout: Duration::from_secs(60),
            ..AgentOptions::default()
        };
        Agent::with_options(url, self.identity.clone(), options)
    }

    /// POSTs a signed request; `Err` is a transport error (a dead node).
    fn post(&self, url: &str, path: &str, body: &Value) -> Result<(u16, Value), AgentError> {
        let agent = self.agent(url);
        let request = agent.sign("POST", path, serde_json::to_vec(body).unwrap())?;
        let response = agent.send_raw(&request)?;
        Ok((response.status, response.json()))
    }

    /// `add("k<i>", i)`: `Ok(true)` when acknowledged, `Ok(false)` when
    /// the node died before answering.
    fn add(&self, url: &str, kv: &str, i: u64) -> Result<bool, String> {
        let call = json!({"method": "add", "args": {"json": [format!("k{i}"), i]}});
        match self.post(url, &format!("/api/v1/canisters/{kv}/call"), &call) {
            Ok((200, answer)) if answer["status"] == "replied" => Ok(true),
            Ok((code, answer)) => Err(format!("add k{i} answered {code}: {answer}")),
            Err(_) => Ok(false),
        }
    }

    /// `get("k<i>")`, from the committed state.
    fn get(&self, url: &str, kv: &str, i: u64) -> Option<u64> {
        let query = json!({
            "method": "get",
            "args": {"json": [format!("k{i}")]},
            "reply_encoding": "json",
        });
        let (code, answer) = self
            .post(url, &format!("/api/v1/canisters/{kv}/query"), &query)
            .unwrap_or_else(|e| panic!("query k{i} failed: {e}"));
        assert!(
            code == 200 && answer["status"] == "replied",
            "query k{i} answered {code}: {answer}"
        );
        match &answer["reply"] {
            Value::Null => None,
            reply => Some(reply.as_u64().unwrap_or_else(|| panic!("reply {reply}"))),
        }
    }

    /// The node's round and state hash.
    fn status(&self, url: &str) -> (u64, String) {
        let status = self.agent(url).status().unwrap();
        (status.round, status.state_hash)
    }
}

/// What the client learned about the updates it sent.
#[derive(Default)]
struct Ledger {
    /// Acknowledged: must be there after any crash.
    acked: Vec<u64>,
    /// Sent when the node died: there whole, or not at all.
    in_doubt: BTreeSet<u64>,
    /// Queries that checked an acknowledged update.
    checked: u64,
}

impl Ledger {
    /// Every acknowledged update in `sample` is there with its value.
    fn check(&mut self, client: &Client, url: &str, kv: &str, sample: &[u64], when: &str) {
        for &i in sample {
            assert_eq!(
                client.get(url, kv, i),
                Some(i),
                "acknowledged update k{i} lost {when}"
            );
            self.checked += 1;
        }
    }
}

/// Streams updates until told to stop or the node dies; returns the
/// acknowledged indices and the one in flight when the node died.
fn stream_updates(
    client: Client,
    url: String,
    kv: String,
    first: u64,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<u64>, Option<u64>, u64), String> {
    let mut acked = Vec::new();
    let mut i = first;
    while !stop.load(Ordering::Relaxed) {
        if !client.add(&url, &kv, i)? {
            return Ok((acked, Some(i), i + 1));
        }
        acked.push(i);
        i += 1;
    }
    Ok((acked, None, i))
}

#[test]
fn acknowledged_updates_survive_sigkill_and_recovery_is_deterministic() {
    let kills = env_u64("CELLAR_CRASH_KILLS", 40);
    let seed = env_u64("CELLAR_CRASH_SEED", 0x5eed_ce11_a0c0_ffee);
    let mut rng = Rng(seed.max(1));
    let began = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let identity = tmp.path().join("me.key");
    let data_dir = tmp.path().join("node");
    let log = NodeLog(tmp.path().join("node.log"));
    let client = Client::new();
    let mut port = free_port();

    let (node, examples) = start(&data_dir, &identity, &mut port, &log);
    let kv = examples
        .iter()
        .find(|(name, _)| name == "kv")
        .map(|(_, id)| id.clone())
        .expect("the kv example is deployed");
    let mut node = Some(node);
    let mut ledger = Ledger::default();
    let mut next = 0u64;
    let (mut killed_serving, mut killed_in_shutdown, mut killed_in_recovery) = (0u64, 0u64, 0u64);

    for cycle in 0..kills {
        let running = match node.take() {
            Some(running) => running,
            None if cycle % 4 == 3 => {
                // Kill it while it recovers: replaying the journal, writing
                // the checkpoint, or just after.
                let restarting = NodeProcess::spawn(&data_dir, &identity, port, &log);
                thread::sleep(Duration::from_millis(rng.below(250)));
                restarting.kill();
                killed_in_recovery += 1;
                continue;
            }
            None => {
                let (running, _) = start(&data_dir, &identity, &mut port, &log);
                // Nothing acknowledged was lost: the latest and a sample.
                let url = running.url();
                let n = ledger.acked.len();
                let mut sample: Vec<u64> = ledger.acked[n.saturating_sub(10)..].to_vec();
                for _ in 0..10.min(n) {
                    sample.push(ledger.acked[rng.below(n as u64) as usize]);
                }
                ledger.check(&client, &url, &kv, &sample, "after a crash");
                running
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (client, url, kv, stop) = (client.clone(), running.url(), kv.clone(), stop.clone());
            thread::spawn(move || stream_updates(client, url, kv, next, stop))
        };
        thread::sleep(Duration::from_millis(5 + rng.below(146)));
        if cycle % 5 == 4 {
            // Ctrl-C, and SIGKILL while it shuts down and writes its
            // checkpoint (or just after).
            running.send_interrupt();
            thread::sleep(Duration::from_millis(rng.below(40)));
            killed_in_shutdown += 1;
        } else {
            killed_serving += 1;
        }
        running.kill();
        stop.store(true, Ordering::Relaxed);
        let (acked, in_doubt, after) = writer.join().unwrap().unwrap();
        ledger.acked.extend(acked);
        ledger.in_doubt.extend(in_doubt);
        next = after;
    }

    // The end: every acknowledged update is there; an update in doubt is
    // there with its value or not at all.
    let (running, _) = start(&data_dir, &identity, &mut port, &log);
    let url = running.url();
    let all = ledger.acked.clone();
    ledger.check(&client, &url, &kv, &all, "at the end");
    let mut landed = 0;
    for &i in &ledger.in_doubt {
        if let Some(value) = client.get(&url, &kv, i) {
            assert_eq!(value, i, "k{i} holds another update's value");
            landed += 1;
        }
    }
    // Never sent: the next index is absent.
    assert_eq!(client.get(&url, &kv, next), None);

    // Deterministic recovery: the state after replaying the journal (this
    // start), after loading the checkpoint that replay wrote (next start),
    // and after a clean shutdown's checkpoint all hash the same.
    let replayed = client.status(&url);
    running.kill();
    let (running, _) = start(&data_dir, &identity, &mut port, &log);
    let from_checkpoint = client.status(&running.url());
    assert_eq!(replayed, from_checkpoint, "recovery is not deterministic");
    running.interrupt();
    let (running, _) = start(&data_dir, &identity, &mut port, &log);
    assert_eq!(
        client.status(&running.url()),
        replayed,
        "a clean shutdown changed the state"
    );
    running.kill();

    let node_log = std::fs::read_to_string(&log.0).unwrap_or_default();
    let count = |needle: &str| node_log.lines().filter(|l| l.contains(needle)).count();
    eprintln!(
        "{} kills ({killed_serving} while serving, {killed_in_shutdown} while shutting down, \
         {killed_in_recovery} while recovering) in {:.1?}; {} recoveries replayed the journal, \
         {} cut off a torn record; {} acknowledged updates, {} checks of them, {} in doubt of \
         which {landed} landed; final round {}, state hash {}",
        killed_serving + killed_in_shutdown + killed_in_recovery,
        began.elapsed(),
        count("replayed the journal"),
        count("cutting off a torn journal record"),
        ledger.acked.len(),
        ledger.checked,
        ledger.in_doubt.len(),
        replayed.0,
        replayed.1,
    );
    assert!(
        ledger.acked.len() as u64 >= kills,
        "too few updates were acknowledged to test anything"
    );
}
