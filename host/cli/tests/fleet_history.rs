//! Client histories against a 4-replica fleet (`cellar fleet up`, real
//! processes and QUIC on loopback), checked for linearizability.
//!
//! C client threads (default 8) each run a bounded loop of random
//! operations on 3 keys of the `kv` example, each to a random replica:
//! puts `add(k, v)` with values that never repeat, and reads `get(k)`, both
//! sent *as updates* (submitted, then polled on the same replica), so that
//! consensus orders the reads too (a query method sent as an update runs in
//! its round, as a query: `Node::resolve_call`). An operation with no
//! answer within the per-operation timeout is indeterminate. Meanwhile, in
//! the fault variant, a seeded fault loop SIGKILLs one random replica every
//! P seconds and restarts it (same data directory and arguments as
//! `fleet.rs`'s `restart`) D seconds later, never two down at once. Then:
//! every replica up, wait until all four report the same round and state
//! hash, read every key from every replica through the update path (and
//! by query: when all four sit at one round and state hash before and
//! after, those answers join the history too, so that a rolled-back write
//! shows even when the fleet no longer orders anything), check the history
//! (`cellar_tests::linearizability`), and check request fate (an
//! acknowledged request polled on another replica, and on a restarted
//! replica after its restart, reports replied). Asserted: linearizable, no
//! lost writes, converged, every final read answered, no interval longer
//! than 8 s without an acknowledged operation, request fate. The summary
//! line (`seed=… ops=… acked=… indeterminate=… anomalies=… lost=… stale=…
//! converged=… restarts=… stall_max_s=…`), one line per restart (acks/s
//! while down and after, against the fault-free rate of the warm-up, and
//! the longest gap), the anomalies with the replica and request id of each
//! operation, and on failure excerpts of the replica logs are printed; a
//! failing run keeps its fleet directory (logs, data, `history.txt`).
//!
//! The fault-free variant (5 s) is the baseline: the workload, the
//! update-path reads and the checker work end to end.
//!
//! Knobs (environment): `CELLAR_HISTORY_SEED` (the fault schedule and the
//! clients' choices; printed, and a failure prints how to replay it),
//! `CELLAR_HISTORY_SECONDS` (of faults, default 26), `CELLAR_HISTORY_WARMUP_S`
//! (4; the fault-free rate is measured over its second half), `CELLAR_HISTORY_CLIENTS`
//! (8), `CELLAR_HISTORY_KILL_EVERY_S` (6), `CELLAR_HISTORY_DOWN_S` (3),
//! `CELLAR_HISTORY_CHECK_FATE` (`0` turns the fate check into a report
//! only), `CELLAR_HISTORY_MAX_STALL_S` (the longest interval with no
//! acknowledged operation accepted, default 8; `0` reports it only),
//! `CELLAR_HISTORY_BIN` (another `cellar` binary than this build's),
//! `CELLAR_HISTORY_READS=query` (the clients read by query: a control that
//! usually fails even without faults, since a replica answers queries from
//! its own, possibly lagging, state),
//! `CELLAR_HISTORY_KEEP` (`1`: keep the fleet directory even on success; it
//! is always kept on failure and printed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cellar_agent::{Agent, AgentOptions, Identity};
use cellar_tests::linearizability::{self, Action, Anomaly, Op};
use cellar_types::Principal;
use cellar_types::api::{CallRequest, CallResponse, RequestState};

const CELLAR: &str = env!("CARGO_BIN_EXE_cellar");

/// Whether request fate is asserted (else only reported): acknowledged
/// requests must read as replied on another replica than the one that
/// answered, and on a replica after its restart. `CELLAR_HISTORY_CHECK_FATE=0`
/// turns the assertion off.
const CHECK_FATE_DEFAULT: bool = true;

/// The longest interval with no acknowledged operation the test accepts,
/// in seconds (`CELLAR_HISTORY_MAX_STALL_S`; `0` reports it only). With
/// one replica of four down at most, the other three keep a quorum; the
/// fault-free runs here never pause for more than a fraction of a second.
const MAX_STALL_DEFAULT_S: f64 = 8.0;

/// The keys the clients use.
const KEYS: [&str; 3] = ["k0", "k1", "k2"];

/// One fleet at a time: two would share this machine's two cores.
static ONE_FLEET: Mutex<()> = Mutex::new(());

fn cellar_bin() -> PathBuf {
    std::env::var_os("CELLAR_HISTORY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CELLAR))
}

// The fault schedule's and the clients' seeded generator.
use cellar_tests::rng::SplitMix64;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not valid")),
        Err(_) => default,
    }
}

/// What one run does.
#[derive(Clone, Debug)]
struct Config {
    seed: u64,
    clients: usize,
    /// Fault-free seconds at the start (the baseline rate).
    warmup: Duration,
    /// Seconds of faults after the warm-up (the clients stop at the end).
    faults: Duration,
    kill_every: Duration,
    down: Duration,
    with_faults: bool,
    op_timeout: Duration,
    check_fate: bool,
    /// The longest interval with no acknowledged operation allowed while
    /// the clients run (at most one replica is ever down, so the other
    /// three should keep ordering); `None`: only reported.
    max_stall: Option<Duration>,
}

impl Config {
    fn from_env(with_faults: bool) -> Config {
        let seed = std::env::var("CELLAR_HISTORY_SEED")
            .ok()
            .map(|s| s.trim().parse().expect("CELLAR_HISTORY_SEED is a u64"))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    % 1_000_000
            });
        let secs = |name, default: f64| Duration::from_secs_f64(env_or(name, default));
        Config {
            seed,
            clients: env_or("CELLAR_HISTORY_CLIENTS", 8),
            warmup: secs("CELLAR_HISTORY_WARMUP_S", 4.0),
            faults: if with_faults {
                secs("CELLAR_HISTORY_SECONDS", 26.0)
            } else {
                Duration::from_secs(2)
            },
            kill_every: secs("CELLAR_HISTORY_KILL_EVERY_S", 6.0),
            down: secs("CELLAR_HISTORY_DOWN_S", 3.0),
            with_faults,
            op_timeout: Duration::from_secs(10),
            check_fate: std::env::var("CELLAR_HISTORY_CHECK_FATE")
                .map(|v| v.trim() != "0")
                .unwrap_or(CHECK_FATE_DEFAULT),
            max_stall: Some(secs("CELLAR_HISTORY_MAX_STALL_S", MAX_STALL_DEFAULT_S))
                .filter(|d| !d.is_zero()),
        }
    }

    /// The fault schedule: (kill at, victim); each victim restarts `down`
    /// later, before the next kill and before the clients stop.
    fn schedule(&self) -> Vec<(Duration, usize)> {
        let mut rng = SplitMix64(self.seed ^ 0xfa17_5eed);
        let mut plan = Vec::new();
        if !self.with_faults {
            return plan;
        }
        let end = self.warmup + self.faults;
        let jitter_range = (self.kill_every.as_millis() as u64 / 4).max(1);
        let mut k = 0u32;
        loop {
            let jitter = Duration::from_millis(rng.below(jitter_range));
            let at = self.warmup + self.kill_every * k + jitter;
            let victim = rng.below(4) as usize;
            if at + self.down + Duration::from_secs(1) > end {
                return plan;
            }
            plan.push((at, victim));
            k += 1;
        }
    }
}

/// A replica process: one `fleet up` started (not our child), or one we
/// restarted.
enum Replica {
    Original(i32),
    Restarted(Child),
    Down,
}

/// The fleet; SIGKILLs every replica still running however the test ends.
struct Fleet {
    dir: PathBuf,
    urls: Vec<String>,
    identity: PathBuf,
    replicas: Vec<Replica>,
    restarts: usize,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.replicas.len() {
            self.kill(i);
        }
    }
}

impl Fleet {
    fn up(dir: &Path) -> Fleet {
        let out = Command::new(cellar_bin())
            .args(["fleet", "up", "--nodes", "4", "--delay-ms", "0", "--dir"])
            .arg(dir)
            .output()
            .expect("run cellar fleet up");
        let pids: Vec<i32> = std::fs::read_to_string(dir.join("fleet.pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let mut fleet = Fleet {
            dir: dir.to_path_buf(),
            urls: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            identity: dir.join("identity"),
            replicas: pids.into_iter().map(Replica::Original).collect(),
            restarts: 0,
        };
        assert!(
            out.status.success(),
            "fleet up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fleet.urls.len(), 4, "one URL per replica");
        assert_eq!(fleet.replicas.len(), 4, "one pid per replica");
        fleet.replicas.truncate(4);
        fleet
    }

    /// SIGKILLs replica `i` if it runs.
    fn kill(&mut self, i: usize) {
        match std::mem::replace(&mut self.replicas[i], Replica::Down) {
            Replica::Original(pid) => {
                // SAFETY: a plain signal to a replica this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // Not our child: wait (bounded) until it is gone, so that
                // it writes nothing more into the directory.
                let deadline = Instant::now() + Duration::from_secs(5);
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Replica::Restarted(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Replica::Down => {}
        }
    }

    /// Starts replica `i` again on its data directory, as `fleet.rs`'s
    /// `restart` does; its output goes to `node-{i}-restart-{n}.log`.
    fn restart(&mut self, i: usize) {
        assert!(matches!(self.replicas[i], Replica::Down));
        self.restarts += 1;
        let listen = self.urls[i].trim_start_matches("http://").to_string();
        let dir = &self.dir;
        let log =
            std::fs::File::create(dir.join(format!("node-{i}-restart-{}.log", self.restarts)))
                .unwrap();
        let child = Command::new(cellar_bin())
            .args(["node", "start", "--config"])
            .arg(dir.join("genesis.json"))
            .arg("--key")
            .arg(dir.join(format!("node-{i}.key.json")))
            .arg("--data-dir")
            .arg(dir.join(format!("node-{i}")))
            .args(["--listen", &listen])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart a replica");
        self.replicas[i] = Replica::Restarted(child);
    }

    /// `cellar deploy kv` through replica 0: the canister id.
    fn deploy_kv(&self) -> Principal {
        let out = Command::new(cellar_bin())
            .arg("--url")
            .arg(&self.urls[0])
            .arg("--identity")
            .arg(&self.identity)
            .args(["deploy", "kv"])
            .env("HOME", self.dir.join("home"))
            .output()
            .expect("run cellar deploy");
        assert!(
            out.status.success(),
            "deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a canister id")
    }

    /// Log lines worth showing from every replica log (crash recovery,
    /// catch-up, state sync, divergence, panics, errors), at most `max`
    /// per file.
    fn log_excerpts(&self, max: usize) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "log"));
        files.sort();
        let mut out = String::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    [
                        "DIVERGENCE",
                        "panicked",
                        "ERROR",
                        "WARN",
                        "state sync",
                        "replay",
                    ]
                    .iter()
                    .any(|w| l.contains(w))
                })
                .collect();
            if lines.is_empty() {
                continue;
            }
            out += &format!(
                "--- {} ({} of {} lines)\n",
                file.file_name().unwrap().to_string_lossy(),
                lines.len().min(max),
                lines.len()
            );
            for line in lines.iter().take(max) {
                out += &format!("{}\n", strip_ansi(line));
            }
        }
        out
    }
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How an update ended.
enum Outcome {
    Replied { reply: String, at: u64 },
    Rejected(String),
    Indeterminate(String),
}

/// One operation as the client saw it.
struct Record {
    op: Op,
    client: usize,
    replica: usize,
    request_id: Option<String>,
    outcome: Outcome,
}

/// Nanoseconds since `start`.
fn since(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// Submits an update and polls it on the same replica until it is done or
/// `timeout` passes.
fn update(
    agent: &Agent,
    id: &Principal,
    request: &CallRequest,
    start: Instant,
    timeout: Duration,
) -> (Option<String>, Outcome) {
    let deadline = Instant::now() + timeout;
    let request_id = match agent.submit(id, request) {
        Ok(r) => r,
        Err(e) => return (None, Outcome::Indeterminate(format!("submit: {e}"))),
    };
    let mut pause = Duration::from_millis(2);
    let mut last = String::new();
    while Instant::now() < deadline {
        match agent.request_status(&request_id) {
            Ok(status) if status.status.is_done() => {
                let at = since(start);
                let outcome = match status.response {
                    Some(CallResponse::Replied { reply, .. }) => Outcome::Replied {
                        reply: reply.as_str().unwrap_or_default().to_string(),
                        at,
                    },
                    Some(CallResponse::Rejected { reject, .. }) => {
                        Outcome::Rejected(reject.message)
                    }
                    None => Outcome::Indeterminate("done without a response".into()),
                };
                return (Some(request_id), outcome);
            }
            Ok(status) => last = format!("{:?}", status.status),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    (
        Some(request_id),
        Outcome::Indeterminate(format!("timeout ({last})")),
    )
}

/// `some(5)` / `none` as WAVE.
fn parse_option(reply: &str) -> Result<Option<u64>, String> {
    let reply = reply.trim();
    if reply == "none" {
        return Ok(None);
    }
    reply
        .strip_prefix("some(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| format!("not an option<u64>: {reply:?}"))
}

/// An agent of every replica, `first` first, then the others in order.
fn fallback_agent(urls: &[String], first: usize, identity: &Identity) -> Agent {
    let rotated: Vec<String> = (0..urls.len())
        .map(|k| urls[(first + k) % urls.len()].clone())
        .collect();
    Agent::with_urls(&rotated, identity.clone(), agent_options())
}

fn agent_options() -> AgentOptions {
    AgentOptions {
        ingress_expiry: Duration::from_secs(240),
        max_wait: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
    }
}

fn agent_for(url: &str, identity: &Identity) -> Agent {
    Agent::with_options(url, identity.clone(), agent_options())
}

/// `CELLAR_HISTORY_READS=query`: the clients read by query instead of
/// through the update path, a control showing that the checker catches
/// reads not ordered by consensus (a replica answers from its own state,
/// which may lag behind a put another replica acknowledged).
fn reads_as_queries() -> bool {
    std::env::var("CELLAR_HISTORY_READS").is_ok_and(|v| v == "query")
}

/// One put or read through the update path to `replica`, recorded.
#[allow(clippy::too_many_arguments)]
fn run_op(
    client: usize,
    agent: &Agent,
    replica: usize,
    id: &Principal,
    key: &str,
    put: Option<u64>,
    start: Instant,
    timeout: Duration,
) -> Record {
    let request = match put {
        Some(v) => CallRequest::wave("add", &format!("\"{key}\", {v}")),
        None => CallRequest::wave("get", &format!("\"{key}\"")),
    };
    let invoke = since(start);
    let (request_id, outcome) = if put.is_none() && reads_as_queries() {
        // The control: a query answers from the replica's own state.
        let outcome = match agent.query(id, &request) {
            Ok(CallResponse::Replied { reply, .. }) => Outcome::Replied {
                reply: reply.as_str().unwrap_or_default().to_string(),
                at: since(start),
            },
            Ok(CallResponse::Rejected { reject, .. }) => Outcome::Rejected(reject.message),
            Err(e) => Outcome::Indeterminate(format!("query: {e}")),
        };
        (None, outcome)
    } else {
        update(agent, id, &request, start, timeout)
    };
    let op = match (&outcome, put) {
        (Outcome::Replied { at, .. }, Some(v)) => Op::put(client, key, v, invoke, Some(*at)),
        (_, Some(v)) => Op::put(client, key, v, invoke, None),
        (Outcome::Replied { reply, at }, None) => match parse_option(reply) {
            Ok(value) => Op::read(client, key, invoke, *at, value),
            Err(e) => panic!("read of {key} via replica {replica}: {e}"),
        },
        (_, None) => Op::read_indeterminate(client, key, invoke),
    };
    Record {
        op,
        client,
        replica,
        request_id,
        outcome,
    }
}

/// A client's bounded loop of random operations until `stop_at` (and at
/// most `max_ops`).
#[allow(clippy::too_many_arguments)]
fn client_loop(
    client: usize,
    identity: Identity,
    urls: Vec<String>,
    id: Principal,
    seed: u64,
    start: Instant,
    stop_at: Instant,
    timeout: Duration,
) -> Vec<Record> {
    let mut rng = SplitMix64(seed ^ (client as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut records = Vec::new();
    let max_ops = 100_000;
    let mut seq = 0u64;
    while Instant::now() < stop_at && records.len() < max_ops {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let replica = rng.below(urls.len() as u64) as usize;
        let put = (rng.below(2) == 0).then(|| {
            seq += 1;
            (client as u64 + 1) * 1_000_000_000 + seq
        });
        let remaining = stop_at.saturating_duration_since(Instant::now());
        // As a user's agent does: this replica first, the others when it
        // does not answer (the request's fate is replicated, so polling
        // another replica finds it).
        let agent = fallback_agent(&urls, replica, &identity);
        let record = run_op(
            client,
            &agent,
            replica,
            &id,
            key,
            put,
            start,
            timeout.min(remaining + Duration::from_secs(2)),
        );
        if !record.op.acked() {
            // Do not spin on a replica that is down.
            std::thread::sleep(Duration::from_millis(50));
        }
        records.push(record);
    }
    records
}

/// Polls every replica's status until one (round, state hash) was seen on
/// all of them: that round, or what each said if not before `timeout`.
fn converge(urls: &[String], timeout: Duration) -> Result<u64, String> {
    let agents: Vec<Agent> = urls
        .iter()
        .map(|u| agent_for(u, &Identity::anonymous()))
        .collect();
    let mut seen: BTreeMap<u64, BTreeMap<usize, String>> = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    let mut last = vec![String::new(); urls.len()];
    while Instant::now() < deadline {
        for (i, agent) in agents.iter().enumerate() {
            match agent.status() {
                Ok(status) => {
                    last[i] = format!("round {} {}", status.round, &status.state_hash);
                    let hashes = seen.entry(status.round).or_default();
                    hashes.insert(i, status.state_hash);
                    let distinct: std::collections::BTreeSet<&String> = hashes.values().collect();
                    if distinct.len() > 1 {
                        return Err(format!(
                            "replicas disagree at round {}: {hashes:?}",
                            status.round
                        ));
                    }
                    if hashes.len() == agents.len() {
                        return Ok(status.round);
                    }
                }
                Err(e) => last[i] = e.to_string(),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("no common round; last seen: {last:?}"))
}

/// Acks with completion in `[from, to)` (ns), per second.
fn rate(acks: &[u64], from: u64, to: u64) -> f64 {
    let n = acks.iter().filter(|&&t| t >= from && t < to).count();
    n as f64 / ((to.saturating_sub(from)) as f64 / 1e9).max(1e-9)
}

/// The longest interval in `[from, to]` (ns) with no ack, in seconds.
fn longest_gap(acks: &[u64], from: u64, to: u64) -> f64 {
    let mut last = from;
    let mut gap = 0;
    for &t in acks.iter().filter(|&&t| t >= from && t <= to) {
        gap = gap.max(t - last);
        last = t;
    }
    gap = gap.max(to.saturating_sub(last));
    gap as f64 / 1e9
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Request fate: acknowledged requests read as replied on `replica`
/// (asked twice, 2 s apart, so that a replica still catching up can
/// answer). Returns the failures.
fn fate_checks(
    checks: &[(usize, &Record)],
    urls: &[String],
    identities: &[Identity],
    why: &str,
) -> Vec<String> {
    let ask = |replica: usize, record: &Record| -> Result<(), String> {
        let request_id = record.request_id.as_deref().unwrap_or_default();
        let agent = agent_for(&urls[replica], &identities[record.client]);
        match agent.request_status(request_id) {
            Ok(s) if s.status == RequestState::Replied => Ok(()),
            other => Err(format!(
                "{why}: request {} ({}, answered by replica {}) on replica {replica}: {:?}",
                &request_id[..request_id.len().min(12)],
                record.op,
                record.replica,
                other.map(|s| s.status)
            )),
        }
    };
    let first: Vec<(usize, &Record)> = checks
        .iter()
        .copied()
        .filter(|(replica, record)| ask(*replica, record).is_err())
        .collect();
    if first.is_empty() {
        return Vec::new();
    }
    std::thread::sleep(Duration::from_secs(2));
    first
        .into_iter()
        .filter_map(|(replica, record)| ask(replica, record).err())
        .collect()
}

/// A whole run; panics (after printing the summary) on a violation.
fn run(config: Config) {
    let _one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::Builder::new()
        .prefix("cellar-history-")
        .tempdir()
        .unwrap();
    let plan = config.schedule();
    eprintln!(
        "seed={} clients={} faults={:?} kill_every={:?} down={:?} plan={:?} dir={}",
        config.seed,
        config.clients,
        config.faults,
        config.kill_every,
        config.down,
        plan.iter()
            .map(|(at, v)| format!("kill {v} at {:.1}s", at.as_secs_f64()))
            .collect::<Vec<_>>(),
        tmp.path().display()
    );
    let mut fleet = Fleet::up(tmp.path());
    let id = fleet.deploy_kv();
    let mut keys = SplitMix64(config.seed ^ 0x1d);
    let identities: Vec<Identity> = (0..config.clients)
        .map(|_| {
            let mut seed = [0u8; 32];
            for chunk in seed.chunks_mut(8) {
                chunk.copy_from_slice(&keys.next().to_le_bytes());
            }
            Identity::from_seed(seed)
        })
        .collect();

    // The clients, and the fault loop on this thread.
    let start = Instant::now();
    let stop_at = start + config.warmup + config.faults;
    let clients: Vec<_> = (0..config.clients)
        .map(|c| {
            let identity = identities[c].clone();
            let urls = fleet.urls.clone();
            let id = id.clone();
            let seed = config.seed;
            let timeout = config.op_timeout;
            std::thread::spawn(move || {
                client_loop(c, identity, urls, id, seed, start, stop_at, timeout)
            })
        })
        .collect();
    // (victim, killed at, restarted at) in ns since start.
    let mut faults: Vec<(usize, u64, u64)> = Vec::new();
    for &(at, victim) in &plan {
        std::thread::sleep((start + at).saturating_duration_since(Instant::now()));
        fleet.kill(victim);
        let killed = since(start);
        std::thread::sleep((start + at + config.down).saturating_duration_since(Instant::now()));
        fleet.restart(victim);
        faults.push((victim, killed, since(start)));
        eprintln!(
            "fault: replica {victim} killed at {:.1}s, restarted at {:.1}s",
            secs(killed),
            secs(since(start))
        );
    }
    let mut records: Vec<Record> = Vec::new();
    for client in clients {
        records.extend(client.join().expect("a client thread"));
    }
    let clients_done = since(start);

    // Heal: every replica is up; wait until they agree.
    let healed = converge(&fleet.urls, Duration::from_secs(30));
    eprintln!("after the heal: {healed:?}");

    // The final reads: every key from every replica, through the update
    // path, all at once (each retried once if it gets no answer).
    let finals: Vec<_> = (0..fleet.urls.len())
        .flat_map(|r| KEYS.iter().map(move |k| (r, *k)))
        .map(|(replica, key)| {
            let urls = fleet.urls.clone();
            let id = id.clone();
            let identity = identities[0].clone();
            let client = config.clients + replica;
            std::thread::spawn(move || {
                // This replica only: every replica must answer.
                let agent = agent_for(&urls[replica], &identity);
                let mut out = Vec::new();
                for _ in 0..2 {
                    let record = run_op(
                        client,
                        &agent,
                        replica,
                        &id,
                        key,
                        None,
                        start,
                        Duration::from_secs(10),
                    );
                    let acked = record.op.acked();
                    out.push(record);
                    if acked {
                        break;
                    }
                }
                out
            })
        })
        .collect();
    let mut final_reads = Vec::new();
    for f in finals {
        final_reads.extend(f.join().expect("a final read"));
    }
    let finals_answered: BTreeMap<(usize, String), Option<u64>> = final_reads
        .iter()
        .filter(|r| r.op.acked())
        .map(|r| ((r.replica, r.op.key.clone()), r.op.observed))
        .collect();
    let finals_missing = KEYS.len() * fleet.urls.len() - finals_answered.len();
    records.extend(final_reads);
    // Convergence again, after the final reads made some rounds.
    let after_reads = converge(&fleet.urls, Duration::from_secs(20));
    let converged = healed.is_ok() && after_reads.is_ok();
    // Queries of every key on every replica: when all four replicas sit at
    // one round with one state hash, before and after the queries, each
    // answer reads the state every replica holds at that round, as good as
    // a read ordered there; those answers join the history (they show
    // lost writes even when the fleet no longer orders updates). Otherwise
    // they are only shown.
    let mut query_reads = Vec::new();
    for (replica, url) in fleet.urls.iter().enumerate() {
        let agent = agent_for(url, &identities[0]);
        for key in KEYS {
            let invoke = since(start);
            let answer = agent.query(&id, &CallRequest::wave("get", &format!("\"{key}\"")));
            let complete = since(start);
            let value = match answer {
                Ok(CallResponse::Replied { reply, .. }) => {
                    parse_option(reply.as_str().unwrap_or_default()).ok()
                }
                _ => None,
            };
            if let Some(value) = value {
                let client = config.clients + fleet.urls.len() + replica;
                query_reads.push(Op::read(client, key, invoke, complete, value));
            }
        }
    }
    let after_queries = converge(&fleet.urls, Duration::from_secs(10));
    let queries_count = matches!((&after_reads, &after_queries), (Ok(a), Ok(b)) if a == b)
        && query_reads.len() == KEYS.len() * fleet.urls.len();
    let shown: Vec<String> = query_reads
        .iter()
        .map(|o| {
            format!(
                "{}@{}",
                o.key,
                o.observed.map_or("none".into(), |v| v.to_string())
            )
        })
        .collect();
    eprintln!(
        "final queries (in the history: {queries_count}; rounds {after_reads:?} -> \
         {after_queries:?}): {shown:?}"
    );

    // The history.
    let mut history: Vec<Op> = records.iter().map(|r| r.op.clone()).collect();
    if queries_count {
        history.extend(query_reads);
    }
    let report = linearizability::check(&history);
    let rejected = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Rejected(_)))
        .count();
    let timeouts = records
        .iter()
        .filter(|r| matches!(&r.outcome, Outcome::Indeterminate(m) if m.starts_with("timeout")))
        .count();

    // Rates and stalls, from the clients' acks.
    let mut acks: Vec<u64> = records
        .iter()
        .filter(|r| r.client < config.clients)
        .filter_map(|r| r.op.complete)
        .filter(|&t| t <= clients_done)
        .collect();
    acks.sort_unstable();
    let warm = config.warmup.as_nanos() as u64;
    // The second half of the warm-up: its first ops pay for cold caches.
    let baseline = rate(&acks, warm / 2, warm);
    let first_ack = acks.first().copied().unwrap_or(0);
    let stop_ns = (config.warmup + config.faults).as_nanos() as u64;
    let stall_max = longest_gap(&acks, first_ack, stop_ns.min(clients_done));
    let mut restart_lines = Vec::new();
    for (n, &(victim, killed, restarted)) in faults.iter().enumerate() {
        let next = faults.get(n + 1).map(|f| f.1).unwrap_or(stop_ns);
        let down_rate = rate(&acks, killed, restarted);
        let after_rate = rate(&acks, restarted, next);
        restart_lines.push(format!(
            "restart {}: replica {victim} down {:.1}s..{:.1}s: {down_rate:.1} acks/s while down \
             (ratio {:.2} of the fault-free {baseline:.1}/s), {after_rate:.1} acks/s after \
             (ratio {:.2}), longest gap with no ack {:.2}s (kill..next kill)",
            n + 1,
            secs(killed),
            secs(restarted),
            down_rate / baseline.max(1e-9),
            after_rate / baseline.max(1e-9),
            longest_gap(&acks, killed, next),
        ));
    }

    // Request fate.
    let mut rng = SplitMix64(config.seed ^ 0xfa7e);
    let acked_puts: Vec<&Record> = records
        .iter()
        .filter(|r| r.client < config.clients && r.op.acked() && r.request_id.is_some())
        .filter(|r| matches!(r.op.action, Action::Put(_)))
        .collect();
    // Reads too: a read sent as an update that another replica reports
    // replied went through consensus (every replica records the signed
    // calls it executes), rather than being answered from one replica's
    // state.
    let acked_reads: Vec<&Record> = records
        .iter()
        .filter(|r| r.client < config.clients && r.op.acked() && r.request_id.is_some())
        .filter(|r| r.op.action == Action::Read)
        .collect();
    let mut other_replica = Vec::new();
    let mut after_restart = Vec::new();
    for sample in [&acked_puts, &acked_reads] {
        if sample.is_empty() {
            continue;
        }
        for _ in 0..8 {
            let record = sample[rng.below(sample.len() as u64) as usize];
            let other = (record.replica + 1 + rng.below(3) as usize) % fleet.urls.len();
            other_replica.push((other, record));
        }
    }
    if !acked_puts.is_empty() {
        for &(victim, killed, _) in &faults {
            let before: Vec<&&Record> = acked_puts
                .iter()
                .filter(|r| r.op.complete.is_some_and(|c| c < killed))
                .collect();
            for _ in 0..4.min(before.len()) {
                let record = before[rng.below(before.len() as u64) as usize];
                after_restart.push((victim, *record));
            }
        }
    }
    let mut fate_failures = fate_checks(
        &other_replica,
        &fleet.urls,
        &identities,
        "on another replica",
    );
    fate_failures.extend(fate_checks(
        &after_restart,
        &fleet.urls,
        &identities,
        "on a restarted replica",
    ));
    let fate_checked = other_replica.len() + after_restart.len();

    // The summary.
    let summary = format!(
        "seed={} ops={} acked={} indeterminate={} anomalies={} lost={} stale={} converged={} \
         restarts={} stall_max_s={:.2}",
        config.seed,
        report.ops,
        report.acked,
        report.indeterminate,
        report.anomalies().count(),
        report.lost(),
        report.stale(),
        converged,
        faults.len(),
        stall_max,
    );
    eprintln!("{summary}");
    for line in &restart_lines {
        eprintln!("{line}");
    }
    eprintln!(
        "fault-free rate {baseline:.1} acks/s over the warm-up; rejected={rejected} \
         timeouts={timeouts} final reads unanswered={finals_missing} of {}; \
         fate: {} of {fate_checked} failed",
        KEYS.len() * fleet.urls.len(),
        fate_failures.len()
    );
    // Why operations got no answer: the first few distinct reasons.
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        let reason = match &record.outcome {
            Outcome::Replied { .. } => continue,
            Outcome::Rejected(m) => format!("rejected: {m}"),
            Outcome::Indeterminate(m) => m.clone(),
        };
        // Ids and addresses vary; the first words say enough.
        let short: String = reason.chars().take(90).collect();
        *reasons.entry(short).or_default() += 1;
    }
    let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (reason, count) in reasons.iter().take(6) {
        eprintln!("no answer x{count}: {reason}");
    }
    eprintln!("final reads: {finals_answered:?}");
    eprint!("{report}");
    // Where each operation an anomaly names went: replica, request id and
    // what the client saw.
    let describe = |op: &Op| -> String {
        match records.iter().find(|r| r.op == *op) {
            Some(r) => format!(
                "{op}: replica {} request {} {}",
                r.replica,
                r.request_id
                    .as_deref()
                    .map_or("-", |id| &id[..id.len().min(16)]),
                match &r.outcome {
                    Outcome::Replied { reply, .. } => format!("replied {reply:?}"),
                    Outcome::Rejected(m) => format!("rejected {m}"),
                    Outcome::Indeterminate(m) => format!("no answer: {m}"),
                }
            ),
            None => format!("{op}: a final query"),
        }
    };
    for anomaly in report.anomalies().take(10) {
        let ops: Vec<&Op> = match anomaly {
            Anomaly::StaleRead { read, overwriter } => vec![read, overwriter],
            Anomaly::LostWrite { put, read } => vec![put, read],
            Anomaly::NeverWritten { read } => vec![read],
            Anomaly::FutureRead { read, put } => vec![read, put],
            Anomaly::Unclassified { .. } => vec![],
        };
        for op in ops {
            eprintln!("  where: {}", describe(op));
        }
        // The put of the value a read returned, too.
        if let Anomaly::StaleRead { read, .. } | Anomaly::LostWrite { read, .. } = anomaly
            && let Some(put) = records.iter().find(|r| {
                r.op.key == read.key && read.observed.is_some_and(|v| r.op.action == Action::Put(v))
            })
        {
            eprintln!("  the value read was written by: {}", describe(&put.op));
        }
    }
    // The whole history, for a closer look.
    let mut lines = String::new();
    let mut ordered: Vec<&Record> = records.iter().collect();
    ordered.sort_by_key(|r| r.op.invoke);
    for r in ordered {
        lines += &format!("{}\n", describe(&r.op));
    }
    let _ = std::fs::write(fleet.dir.join("history.txt"), lines);
    for failure in fate_failures.iter().take(10) {
        eprintln!("fate: {failure}");
    }
    let mut problems = Vec::new();
    if !report.linearizable() {
        problems.push(format!(
            "the history is not linearizable ({} anomalies, {} unknown keys)",
            report.anomalies().count(),
            report.unknown()
        ));
    }
    if report.lost() > 0 {
        problems.push(format!("{} acknowledged writes lost", report.lost()));
    }
    if !converged {
        problems.push(format!(
            "the replicas did not converge: after the heal {healed:?}; after the final \
             reads {after_reads:?}"
        ));
    }
    match config.max_stall {
        Some(max) if stall_max > max.as_secs_f64() => problems.push(format!(
            "no operation was acknowledged for {stall_max:.1}s (at most {:.1}s allowed; \
             CELLAR_HISTORY_MAX_STALL_S=0 reports this only)",
            max.as_secs_f64()
        )),
        _ => {}
    }
    if finals_missing > 0 {
        problems.push(format!(
            "{finals_missing} final reads got no answer (the fleet stalled?)"
        ));
    }
    if !fate_failures.is_empty() {
        let text = format!(
            "{} of {fate_checked} acknowledged requests do not read as replied elsewhere",
            fate_failures.len()
        );
        if config.check_fate {
            problems.push(text + " (CELLAR_HISTORY_CHECK_FATE=0 reports this only)");
        } else {
            eprintln!("not asserted (CELLAR_HISTORY_CHECK_FATE=0): {text}");
        }
    }
    let keep = !problems.is_empty() || std::env::var("CELLAR_HISTORY_KEEP").is_ok_and(|v| v == "1");
    if !problems.is_empty() {
        eprint!("replica logs:\n{}", fleet.log_excerpts(15));
    }
    drop(fleet);
    if keep {
        let kept = tmp.keep();
        eprintln!("fleet directory kept: {}", kept.display());
    } else {
        let path = tmp.path().to_path_buf();
        drop(tmp);
        let _ = std::fs::remove_dir_all(path);
    }
    assert!(
        problems.is_empty(),
        "{summary}\n{}\nreplay with CELLAR_HISTORY_SEED={} (and the same \
         CELLAR_HISTORY_SECONDS/CLIENTS/KILL_EVERY_S/DOWN_S)",
        problems.join("\n"),
        config.seed
    );
}

/// A few seconds with no faults: the workload, the update-path reads and
/// the checker work end to end (a baseline that must pass).
#[test]
fn history_without_faults_is_linearizable() {
    let mut config = Config::from_env(false);
    config.warmup = Duration::from_secs(3);
    run(config);
}

/// One replica of four SIGKILLed and restarted every few seconds (issue
/// 32): no acknowledged write may be lost, no read may be stale, the
/// replicas must converge, and acknowledged requests must read as replied
/// elsewhere.
#[test]
fn history_with_a_replica_killed_and_restarted_is_linearizable() {
    run(Config::from_env(true));
}

#[test]
fn the_fault_schedule_replays_from_its_seed() {
    let mut config = Config::from_env(true);
    config.seed = 42;
    config.faults = Duration::from_secs(26);
    config.kill_every = Duration::from_secs(6);
    config.down = Duration::from_secs(3);
    let plan = config.schedule();
    assert_eq!(plan, config.clone().schedule());
    assert!((3..=4).contains(&plan.len()), "{plan:?}");
    for pair in plan.windows(2) {
        // Never two down at once: the next kill comes after the restart.
        assert!(pair[0].0 + config.down < pair[1].0, "{plan:?}");
    }
    config.seed = 43;
    assert_ne!(plan, config.schedule());
}
