//! A Cellar node: canisters, their lifecycle, the requests that drive
//! rounds, durability (journal and checkpoints), the HTTP API and replica
//! mode. The replicated state and its storage are in [`cellar_state`]
//! ([`state`]), deterministic execution in [`cellar_execution`]
//! ([`execution`]).
//!
//! * [`Node`] is the node itself, usable in-process (tests, benchmarks).
//! * [`start`] opens a node, deploys the example canisters on a fresh data
//!   directory and serves the HTTP API ([`http`]).
//! * [`replica::start_replica`] runs the node as one replica of a subnet:
//!   rounds are the batches ICC consensus finalizes.
//!
//! Modules, one line each:
//!
//! * `node.rs`: [`Node`], the composition root: an `Executor` with the
//!   journal writer, the checkpoint writer and the replica link around it;
//!   `node/open.rs` opening and replay, `node/ordering.rs` requests into
//!   rounds (local pool or finalized batches), `node/checkpoints.rs` the
//!   checkpoint schedule, `node/canisters.rs` the canister API,
//!   `node/chunks.rs` the chunk store's API side, `node/sync.rs` the
//!   node's side of state sync ([`SyncSource`], [`Staging`]).
//! * [`requests`]: request statuses before their round, replay protection,
//!   and the ingress queue's worker threads.
//! * [`http`]: the axum router for `/api/v1`, `/metrics` and `/dashboard`.
//! * `auth.rs`: Ed25519 request signatures; the caller and the request id.
//! * [`certify`]: the node's key and its read-state certificates.
//! * [`metrics`]: counters, the latency histogram, recent calls; Prometheus
//!   text.
//! * `dashboard.rs`: the static dashboard page.
//! * [`replica`]: replica mode: genesis and keys, the replica task;
//!   `replica/catch_up.rs` (recent chain and batches from peers),
//!   `replica/state_transfer.rs` (state sync, the replica's side),
//!   `replica/byzantine_modes.rs` (test-only misbehaviour).
//! * `replica_link.rs`: how a request travels as an ingress message and is
//!   checked on every replica; the node's link to the replica task.
//! * `consensus_log.rs`: what a replica signed and executed, kept across
//!   restarts.
//! * [`state_sync`]: the transfer of a checkpoint between replicas
//!   ([`state_sync::Manifest`], [`state_sync::Fetch`]).

mod auth;
pub mod certify;
mod consensus_log;
mod dashboard;
pub mod http;
pub mod metrics;
mod node;
pub mod replica;
mod replica_link;
pub mod requests;
pub mod state_sync;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use cellar_engine as engine;
pub use cellar_execution as execution;
pub use cellar_execution::composite;
pub use cellar_state as state;
pub use cellar_state::{Canister, INITIAL_CYCLES, MAX_LOG_ENTRIES};
pub use cellar_state::{CheckpointStats, CheckpointView, Durability, Part, PartInfo, RequestTag};
pub use cellar_state::{genesis_state_hash, history};
pub use node::{CallOutcome, Certified, Node, NodeError, NodeOptions, Staging, SyncSource};

use cellar_types::Principal;
use cellar_types::api::InstallMode;
use sha2::Digest;

/// How `cellar start` runs a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where state lives.
    pub data_dir: PathBuf,
    /// The HTTP API's address.
    pub listen: SocketAddr,
    /// Execution limits.
    pub limits: cellar_engine::Limits,
    /// Controllers of the example canisters deployed on a fresh data dir
    /// (typically the principal of whoever starts the node); empty means
    /// the anonymous principal.
    pub example_controllers: Vec<Principal>,
    /// Rounds between checkpoints.
    pub checkpoint_interval: u64,
}

impl NodeConfig {
    /// A configuration with default limits.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            listen,
            limits: cellar_engine::Limits::default(),
            example_controllers: Vec::new(),
            checkpoint_interval: 500,
        }
    }
}

/// A node serving its API.
pub struct RunningNode {
    /// The address the API listens on.
    pub addr: SocketAddr,
    /// Examples deployed at this start (name, canister id); empty when the
    /// data directory already held state.
    pub examples: Vec<(String, Principal)>,
    /// The node.
    pub node: Arc<Node>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    /// SIGINT, listened to from before the API serves: a Ctrl-C that comes
    /// as soon as the node answers still shuts it down cleanly.
    interrupt: tokio::signal::unix::Signal,
    /// The round ticker (none on a replica), stopped at shutdown.
    ticker: Option<Ticker>,
}

/// The background thread that runs rounds when no request drives them.
struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RunningNode {
    /// Serves until Ctrl-C, then writes a checkpoint.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.interrupt.recv().await;
        tracing::info!("shutting down");
        self.shutdown().await
    }

    /// Stops serving and writes a checkpoint (unless an execution is
    /// paused: replay brings it back instead).
    ///
    /// On a local node (`start`, `serve`), when it returns nothing but this
    /// handle holds the node (the round ticker has stopped, the ingress
    /// workers are gone, waited for up to 10 s), so dropping it closes the
    /// node's stores and another node may open the same data directory.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.server.await??;
        let local = self.ticker.is_some();
        if let Some(ticker) = self.ticker {
            ticker
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::task::spawn_blocking(move || ticker.thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the round ticker panicked"))?;
        }
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || node.checkpoint_if_settled()).await??;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while local && Arc::strong_count(&self.node) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Opens the node in `config.data_dir`, deploys the examples when it is new,
/// and serves the HTTP API on `config.listen`.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    let mut options = NodeOptions::new(&config.data_dir);
    options.limits = config.limits.clone();
    options.checkpoint_interval = config.checkpoint_interval.max(1);
    let max_body = config.limits.max_component_bytes * 4 / 3 + (1 << 20);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let node = tokio::task::spawn_blocking(move || Node::open(options)).await??;
    let node = Arc::new(node);
    let mut examples = Vec::new();
    // The marker is written once every example is deployed: a start that
    // was killed half way finishes the job at the next start.
    let marker = config.data_dir.join("examples-deployed");
    if !marker.exists() {
        let deployer = node.clone();
        let controllers = config.example_controllers.clone();
        examples =
            tokio::task::spawn_blocking(move || deploy_examples(&deployer, controllers)).await??;
        std::fs::write(&marker, b"")?;
    }
    let mut running = serve_listener(node, listener, max_body, true)?;
    running.examples = examples;
    Ok(running)
}

/// Serves the HTTP API of an open node on `listen` (no examples are
/// deployed): for benchmarks and tests that open the node themselves.
pub async fn serve(node: Arc<Node>, listen: SocketAddr) -> anyhow::Result<RunningNode> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let max_body = cellar_engine::Limits::default().max_component_bytes * 4 / 3 + (1 << 20);
    serve_listener(node, listener, max_body, true)
}

fn serve_listener(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    max_body: usize,
    ticker: bool,
) -> anyhow::Result<RunningNode> {
    let addr = listener.local_addr()?;
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let ticker = ticker.then(|| spawn_round_ticker(&node));
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let app = http::router(node.clone(), max_body);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = signal.await;
            })
            .await
    });
    tracing::info!(%addr, "serving the HTTP API");
    Ok(RunningNode {
        addr,
        examples: Vec::new(),
        node,
        server,
        shutdown,
        interrupt,
        ticker,
    })
}

/// How often the ticker looks for work without new requests (timers due,
/// queued inter-canister messages).
const TICK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs rounds in the background whenever there is work and no request
/// drives them, until the node is dropped or the ticker is stopped.
fn spawn_round_ticker(node: &Arc<Node>) -> Ticker {
    let weak = Arc::downgrade(node);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("cellar-rounds".into())
        .spawn(move || {
            while let Some(node) = weak.upgrade() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let ran = match node.tick() {
                    Ok(ran) => ran,
                    Err(e) => {
                        tracing::error!("round failed: {e}");
                        false
                    }
                };
                drop(node);
                if !ran {
                    std::thread::sleep(TICK_INTERVAL);
                }
            }
        })
        .expect("spawn the round ticker");
    Ticker { stop, thread }
}

fn deploy_examples(
    node: &Node,
    controllers: Vec<Principal>,
) -> anyhow::Result<Vec<(String, Principal)>> {
    let deployer = controllers
        .first()
        .cloned()
        .unwrap_or_else(Principal::anonymous);
    let mut deployed = Vec::new();
    let existing = node.list();
    for example in cellar_examples::examples() {
        let hash: [u8; 32] = sha2::Sha256::digest(example.wasm).into();
        let hash: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(found) = existing
            .iter()
            .find(|c| c.module_hash.as_deref() == Some(hash.as_str()))
        {
            deployed.push((example.name.to_string(), found.canister_id.clone()));
            continue;
        }
        let id = node.create(&deployer, controllers.clone())?;
        node.install(
            &deployer,
            &id,
            InstallMode::Install,
            example.wasm,
            example.init_arg.map(str::to_string),
        )
        .map_err(|e| anyhow::anyhow!("cannot install example {}: {e}", example.name))?;
        tracing::info!(example = example.name, canister = %id.to_text(), "deployed example");
        deployed.push((example.name.to_string(), id));
    }
    node.checkpoint()?;
    Ok(deployed)
}
