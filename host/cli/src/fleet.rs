//! `cellar subnet new`, `cellar node start`, `cellar fleet up|down`: a
//! subnet of replicas (see `cellar_node::replica`).
//!
//! `cellar subnet new --nodes a:p,... --out D` deals the subnet into `D`: a
//! `genesis.json` and one `node-<i>.key.json` per node (0600), with
//! `--consensus-policy` and `--checkpoint-interval` written into the
//! genesis. `cellar node start --config genesis.json --key node-i.key.json
//! --data-dir D --listen A` runs one replica in the foreground.
//! `cellar fleet up --nodes 4` does all of it on loopback: free ports, one
//! process per replica, `fleet.pids`, `urls.txt` and the logs in the fleet
//! directory; `cellar fleet down` sends the replicas SIGTERM. Hidden,
//! test-only options of `fleet up`: `--byzantine
//! equivocate|bad-shares|garbage` (the last replica misbehaves),
//! `--recent-batches` (batches kept for replicas that catch up) and
//! `--checkpoint-interval`, so that tests can make a replica state-sync.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
pub use cellar_node::replica::Fault;
use cellar_node::replica::{Genesis, NodeKeyFile, ReplicaConfig, read_json};

/// The genesis file's name in a subnet directory.
pub const GENESIS_FILE: &str = "genesis.json";

/// The key file of node `i` in a subnet directory.
pub fn key_file(i: usize) -> String {
    format!("node-{i}.key.json")
}

/// Writes the genesis and the key files for nodes at `addresses` into `out`;
/// `consensus_policy` names the policy every replica runs (default `icc`),
/// `checkpoint_interval` the rounds between checkpoints (default 500).
pub fn subnet_new(
    addresses: &[SocketAddr],
    out: &Path,
    consensus_policy: Option<&str>,
    checkpoint_interval: Option<u64>,
) -> Result<Genesis> {
    if let Some(name) = consensus_policy {
        anyhow::ensure!(
            ["icc", "round-robin", "native-icc"].contains(&name),
            "unknown consensus policy {name:?} (icc, round-robin, native-icc)"
        );
    }
    let (mut genesis, keys) = cellar_node::replica::new_subnet(addresses)?;
    genesis.consensus_policy = consensus_policy.map(str::to_string);
    if let Some(interval) = checkpoint_interval {
        genesis.check_checkpoint_interval(interval)?;
        genesis.checkpoint_interval = Some(interval);
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join(GENESIS_FILE), serde_json::to_vec_pretty(&genesis)?)?;
    for (i, key) in keys.iter().enumerate() {
        write_secret(&out.join(key_file(i)), &serde_json::to_vec_pretty(key)?)?;
    }
    Ok(genesis)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// Parses `host:port,host:port,...`.
pub fn parse_nodes(text: &str) -> Result<Vec<SocketAddr>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("bad node address {s:?} (want ip:port)"))
        })
        .collect()
}

/// Options of `node start` and `fleet up` for each replica: its memory
/// tracker, and (test only, hidden) how many executed batches it keeps for
/// peers that catch up and the checkpoint interval, made small so a test
/// can make a replica fall behind far enough to state-sync.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct ReplicaOptions {
    /// Executed batches kept for peers that catch up.
    #[arg(long, hide = true)]
    pub recent_batches: Option<usize>,
    /// Rounds between checkpoints (`fleet up`: written into the genesis;
    /// `node start`: for a genesis that does not fix it).
    #[arg(long, hide = true)]
    pub checkpoint_interval: Option<u64>,
    /// How dirty pages are tracked: signal, userfaultfd, uffd-mapped or
    /// copy-all [default: the fastest the kernel supports].
    #[arg(long, value_name = "TRACKER")]
    pub memory_tracker: Option<cellar_node::engine::MemoryTracker>,
}

impl ReplicaOptions {
    /// The options as `node start` arguments (the checkpoint interval is
    /// in the genesis).
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(n) = self.recent_batches {
            args.extend(["--recent-batches".to_string(), n.to_string()]);
        }
        if let Some(tracker) = self.memory_tracker {
            args.extend(["--memory-tracker".to_string(), tracker.name().to_string()]);
        }
        args
    }
}

/// `cellar node start`: runs one replica in the foreground until killed.
pub fn node_start(
    config: &Path,
    key: &Path,
    data_dir: PathBuf,
    listen: SocketAddr,
    delay_ms: u64,
    byzantine: Option<Fault>,
    sync: ReplicaOptions,
) -> Result<()> {
    crate::start::init_logging();
    let genesis: Genesis = read_json(config)?;
    let key: NodeKeyFile = read_json(key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let index = key.index;
        let running = cellar_node::replica::start_replica(ReplicaConfig {
            genesis,
            key,
            data_dir,
            listen,
            injected_delay: (delay_ms > 0).then(|| Duration::from_millis(delay_ms)),
            byzantine,
            recent_batches: sync
                .recent_batches
                .unwrap_or(cellar_node::replica::RECENT_BATCHES),
            checkpoint_interval: sync.checkpoint_interval,
            memory_tracker: sync.memory_tracker,
        })
        .await?;
        println!("replica {index} serving http://{}", running.addr);
        running.wait().await
    })
}

/// A free loopback port (TCP and UDP are checked).
fn free_port() -> Result<u16> {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

/// The default fleet directory.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join("cellar-fleet")
}

/// The pid file of a fleet directory.
const PIDS: &str = "fleet.pids";

/// `cellar fleet up`: a fresh subnet of `n` replica processes on loopback;
/// returns their HTTP URLs once every one answers. `byzantine` (test
/// only) makes the last replica misbehave; `consensus_policy` as for
/// [`subnet_new`]; `sync` is passed to every replica.
pub fn fleet_up(
    n: usize,
    dir: &Path,
    delay_ms: u64,
    byzantine: Option<&str>,
    consensus_policy: Option<&str>,
    sync: ReplicaOptions,
) -> Result<Vec<String>> {
    if dir.join(PIDS).exists() {
        fleet_down(dir)?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let quic: Vec<SocketAddr> = (0..n)
        .map(|_| Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))))
        .collect::<Result<_>>()?;
    subnet_new(&quic, dir, consensus_policy, sync.checkpoint_interval)?;
    let exe = std::env::current_exe()?;
    let mut pids = String::new();
    let mut urls = Vec::new();
    for i in 0..n {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = std::fs::File::create(dir.join(format!("node-{i}.log")))?;
        let mut command = Command::new(&exe);
        command
            .arg("node")
            .arg("start")
            .arg("--config")
            .arg(dir.join(GENESIS_FILE))
            .arg("--key")
            .arg(dir.join(key_file(i)))
            .arg("--data-dir")
            .arg(dir.join(format!("node-{i}")))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--delay-ms")
            .arg(delay_ms.to_string())
            .args(sync.args());
        if let Some(fault) = byzantine.filter(|_| i == n - 1) {
            command.arg("--byzantine").arg(fault);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a replica")?;
        pids.push_str(&format!("{}\n", child.id()));
        urls.push(format!("http://{listen}"));
    }
    std::fs::write(dir.join(PIDS), &pids)?;
    std::fs::write(dir.join("urls.txt"), urls.join("\n") + "\n")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for url in &urls {
        let agent = cellar_agent::Agent::new(url, cellar_agent::Identity::anonymous());
        while agent.status().is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{url} did not come up: see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(urls)
}

/// The process ids of the replicas of the fleet in `dir`.
pub fn fleet_pids(dir: &Path) -> Result<Vec<i32>> {
    let path = dir.join(PIDS);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no fleet running here ({} missing)", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .collect())
}

/// `cellar fleet down`: stops the replicas listed in the pid file.
pub fn fleet_down(dir: &Path) -> Result<usize> {
    let path = dir.join(PIDS);
    let mut stopped = 0;
    for pid in fleet_pids(dir)? {
        // SAFETY: kill(2) with a pid we started and a plain signal number.
        if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
            stopped += 1;
        }
    }
    std::fs::remove_file(&path)?;
    Ok(stopped)
}
