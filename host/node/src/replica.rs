//! Replica mode: a node that is one member of a subnet.
//!
//! Keys and genesis: [`new_subnet`] (`cellar subnet new`) deals the subnet:
//! a [`Genesis`] (`genesis.json`: the members with index, QUIC address and
//! Ed25519 key, pinned by the transport's TLS; the BLS public keys from
//! `keys::deal_subnet`; the genesis catch-up package; consensus settings: a
//! catch-up package every 10 heights, ingress up to 2 MiB; the consensus
//! policy; the checkpoint interval every replica uses, a multiple of the
//! catch-up interval so that every checkpoint can be served by state sync,
//! and a replica told otherwise refuses to start) and one [`NodeKeyFile`]
//! per node (`node-<i>.key.json`, 0600: the transport seed and the node's
//! BLS secret shares). The genesis package's state hash is that of the
//! empty state, `genesis_state_hash`, which a replica starting at round 0
//! checks. **A trusted dealer makes the key shares for now; a dealer-free
//! DKG is future work (issue 6).**
//!
//! The replica task owns an ICC [`ConsensusNode`] (with the genesis's
//! consensus policy, by default the embedded ICC component) and a QUIC
//! [`TransportHandle`]. It feeds the consensus node the artifacts peers send
//! (decoded from the transport's artifacts) and a 20 ms tick, broadcasts
//! what consensus asks to broadcast, and turns every finalized batch
//! (`Action::Deliver(FinalizedBatch)`) into a journal record executed by
//! [`Node`] with [`Node::apply_finalized`] (round = height, time = the
//! block's time, the batch = the block's ingress, decoded). Update requests
//! that arrive over HTTP become ingress messages submitted to consensus
//! (`submit_ingress`; see `replica_link.rs` for how a request travels and
//! is checked on every replica); ingress is gossiped, the block maker of
//! the round puts it in a block, notarization and finalization follow. The
//! caller waits for the answer of its message, keyed by the message id.
//! Consensus is told which peers have not been heard from for 1 s
//! (`set_absent`). Queries are answered by any replica from its own
//! executed state: replicas at the same height answer alike.
//!
//! At catch-up heights the state hash ([`Node::state_hash`]) goes to
//! consensus (`on_execution_state`); n−f matching shares make a catch-up
//! package certifying that hash. A replica whose own hash at that height
//! differs logs `STATE DIVERGENCE` and exits (status 3). A block delivered
//! again after a restart, or a catch-up package, at an executed height must
//! be the executed block (and state), as recorded in `consensus.log`
//! (`consensus_log.rs`): otherwise the replica logs `FORK` and exits
//! (status 3).
//!
//! Restart and catch-up: a replica that restarts replays its journal,
//! starts consensus from its last saved catch-up package (`catch-up.json`,
//! synced, at or below its round) or the genesis with the commitments of
//! `consensus.log`, asks its peers for the recent chain (every 250 ms until
//! its shares count again: `rejoined ... after_ms=`), and checks each batch
//! it already executed against the executed block instead of running it
//! again. When consensus jumps to a package above its round
//! (`Action::StateSync`), it asks peers for the batches after its round
//! (transport kind 200; peers keep the last 8,192, [`RECENT_BATCHES`]),
//! replays them, and checks its state hash at the package's height against
//! the certified one before executing the batches consensus delivered
//! meanwhile. The answers are untrusted; the certified hash is the check.
//!
//! State sync (see `state_sync.rs` and `node/sync.rs`): a peer that no
//! longer holds the batch asked for answers `Missing`; the replica then
//! broadcasts a `StateRequest` (every second until a peer answers). A peer
//! answers with the manifest of its last checkpoint if a catch-up package
//! it holds certifies that height (so checkpoints at multiples of the
//! checkpoint interval that are catch-up heights); it lists the
//! checkpoint's parts and modules once per checkpoint, on a blocking thread
//! and without holding the checkpointer while it hashes, so neither its
//! consensus loop nor its checkpoints wait, and keeps a snapshot of the
//! last two. The replica takes the first manifest above its round whose
//! package verifies under the subnet's key, stages the parts of its own
//! checkpoint that did not change, and fetches the other chunks from that
//! peer and from every peer that then announces the same manifest (it asks
//! the others again every second while it has fewer sources than peers)
//! (`ChunkRequest`/`Chunk`, up to 2 MiB; the peer reads each from its
//! snapshot on a blocking thread, at most 8 at once; nonces keep repeated
//! messages distinct for the transport's deduplication). Each item goes
//! into the staging store as soon as its pieces are in: neither side holds
//! more of the state in memory than a window of chunks. A peer that sends a
//! chunk not matching its hash, or falls silent (no chunk for 15 s), is
//! kept out for 30 s and
//! the other sources take its chunks; a part of the wrong form, or a state
//! whose hash (or time) is not the certified one, fails every peer that
//! announced it, and the replica asks the others; nothing is installed
//! until `Node::install_staged` has loaded the staged state, given it its
//! code (modules by hash) and compared its state hash with the package's
//! and its time with the block's. Then the fetched parts replace the
//! changed ones in the replica's store (a crash midway is redone at the
//! next open), the journal restarts after it, the package is saved as
//! `catch-up.json`, a consensus-policy change in the state is scheduled,
//! and the replica continues with peers' batches above that height (or
//! executes the batches consensus delivered meanwhile). All catch-up
//! messages are postcard.
//!
//! A consensus-policy change (`Op::SetConsensusPolicy`) executed at height
//! h is scheduled from h + [`CONSENSUS_POLICY_LAG`] (20) with
//! `ConsensusNode::schedule_policy`, and scheduled again after a restart or
//! a state sync.
//!
//! Fault tests: the hidden, test-only `--byzantine` option ([`Fault`]) makes
//! the replica equivocate, sign bad shares or send garbage; honest replicas
//! log the peer (`a block maker equivocated ... peer=3`, `peer sends
//! invalid artifacts ... peer=3`, counted per peer and logged at powers of
//! two).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cellar_consensus::artifacts::Artifact as ConsensusArtifact;
use cellar_consensus::byzantine;
/// A Byzantine behaviour a replica can be told to play (test only).
pub use cellar_consensus::byzantine::Fault;
use cellar_consensus::ingress::IngressMessage;
use cellar_consensus::keys::{NodeSecretKeys, SubnetPublicKeys, deal_subnet};
use cellar_consensus::{
    Action, CatchUpPackage, ConsensusConfig, ConsensusNode, FinalizedBatch, Hash32, IccPolicy,
};
use cellar_net::{
    Artifact as NetArtifact, ArtifactKind, Membership, NodeKeyPair, PeerInfo, Received, Transport,
    TransportConfig, TransportHandle,
};
use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc as tokio_mpsc;

mod byzantine_modes;
mod catch_up;
mod state_transfer;

use crate::consensus_log::{ConsensusLog, Entry};
use crate::node::{Node, NodeError, NodeOptions};
use crate::node::{Staging, SyncSource};
pub use crate::replica_link::{Envelope, IngressSink, consensus_policy_module, with_envelope};
use crate::replica_link::{claimed_request_id, now_ms, now_nanos};
use crate::state_sync::{Fetch, Manifest, Progress};

/// The genesis of a subnet: who is in it and the keys everyone checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Genesis {
    /// Members: index, QUIC address, Ed25519 public key (pinned in TLS).
    pub members: Vec<PeerInfo>,
    /// The subnet's BLS public keys (node keys, beacon and catch-up keys).
    pub keys: SubnetPublicKeys,
    /// The genesis catch-up package every node starts from.
    pub catch_up: CatchUpPackage,
    /// Consensus settings.
    pub consensus: ConsensusConfig,
    /// The consensus policy every replica runs: `icc` (the default: the
    /// embedded `icc-consensus` component), `round-robin` (the embedded
    /// `round-robin-consensus` component) or `native-icc` (the Rust
    /// `IccPolicy`, no component).
    #[serde(default)]
    pub consensus_policy: Option<String>,
    /// Rounds between checkpoints, the same on every replica (none: the
    /// node's default, 500). A multiple of the catch-up interval, so that
    /// every checkpoint can be served to replicas that state-sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval: Option<u64>,
}

impl Genesis {
    /// Checks that `interval` suits this subnet: positive and a multiple of
    /// the catch-up interval.
    pub fn check_checkpoint_interval(&self, interval: u64) -> anyhow::Result<()> {
        let catch_up = self.consensus.catch_up_interval.max(1);
        anyhow::ensure!(
            interval > 0 && interval.is_multiple_of(catch_up),
            "the checkpoint interval must be a positive multiple of the catch-up interval \
             ({catch_up}), not {interval}: only checkpoints at catch-up heights can be served \
             to replicas that state-sync"
        );
        Ok(())
    }
}

pub use cellar_state::journal::CONSENSUS_POLICY_LAG;

/// The consensus policy `name` (see [`Genesis::consensus_policy`]), run as
/// a Wasm component whose every answer `PolicyHost` checks; and its
/// description for `cellar policy show`.
pub fn consensus_policy(
    name: Option<&str>,
) -> anyhow::Result<(Box<dyn cellar_consensus::ConsensusPolicy>, String)> {
    let wasm = match name.unwrap_or("icc") {
        "native-icc" => {
            return Ok((
                Box::new(IccPolicy::default()),
                "icc (native Rust IccPolicy)".into(),
            ));
        }
        "icc" => cellar_examples::ICC_CONSENSUS_POLICY,
        "round-robin" => cellar_examples::ROUND_ROBIN_CONSENSUS_POLICY,
        other => anyhow::bail!("unknown consensus policy {other:?} (icc, round-robin, native-icc)"),
    };
    let engine = cellar_engine::new_engine()?;
    let policy = cellar_engine::WasmConsensusPolicy::from_component(&engine, wasm)
        .map_err(|e| anyhow::anyhow!("the consensus policy component does not load: {e}"))?;
    let hash = HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(wasm));
    let name = cellar_consensus::ConsensusPolicy::name(&policy).to_string();
    Ok((Box::new(policy), format!("{name} (component {hash})")))
}

/// One node's key file (keep it 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeKeyFile {
    /// The node's index in the subnet.
    pub index: u32,
    /// The seed of the node's Ed25519 transport key (hex).
    pub transport_seed: String,
    /// The node's consensus secrets. For now a trusted dealer made them
    /// (`deal_subnet`); a dealer-free DKG is future work.
    pub consensus: NodeSecretKeys,
}

/// Deals a subnet for nodes at `addresses` (QUIC, UDP): the genesis and
/// one key file per node.
pub fn new_subnet(addresses: &[SocketAddr]) -> anyhow::Result<(Genesis, Vec<NodeKeyFile>)> {
    anyhow::ensure!(!addresses.is_empty(), "a subnet needs at least one node");
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let dealing = deal_subnet(&seed, addresses.len() as u32)?;
    let mut members = Vec::new();
    let mut key_files = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let keys = NodeKeyPair::generate()?;
        members.push(PeerInfo {
            node_index: i as u32,
            address: *address,
            public_key: keys.public_key(),
        });
        key_files.push(NodeKeyFile {
            index: i as u32,
            transport_seed: HEXLOWER.encode(&keys.seed()),
            consensus: dealing.secrets[i].clone(),
        });
    }
    // The genesis package certifies the empty state every replica starts
    // from (replicas check it when they start at round 0).
    let catch_up = cellar_consensus::catch_up::genesis(
        &dealing,
        now_ms(),
        Hash32(cellar_state::genesis_state_hash()),
    )?;
    let mut consensus = ConsensusConfig {
        catch_up_interval: 10,
        ..ConsensusConfig::default()
    };
    consensus.ingress.max_message_bytes = 2 << 20;
    let genesis = Genesis {
        members,
        keys: dealing.public,
        catch_up,
        consensus,
        consensus_policy: None,
        checkpoint_interval: None,
    };
    Ok((genesis, key_files))
}

/// How to run one replica.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The subnet's genesis.
    pub genesis: Genesis,
    /// This node's keys.
    pub key: NodeKeyFile,
    /// Where state lives.
    pub data_dir: PathBuf,
    /// The HTTP API's address.
    pub listen: SocketAddr,
    /// One-way delay added to every message sent (fault and latency tests).
    pub injected_delay: Option<Duration>,
    /// Test only: make this replica misbehave (`cellar node start
    /// --byzantine`), to check that the honest ones keep safety and
    /// liveness.
    pub byzantine: Option<Fault>,
    /// Executed batches kept for replicas that catch up (default
    /// [`RECENT_BATCHES`]); a replica further behind state-syncs. Tests
    /// make it small (`cellar node start --recent-batches`, hidden).
    pub recent_batches: usize,
    /// Rounds between checkpoints, for a genesis that does not fix them
    /// (older genesis files); one that does must agree. Every replica of a
    /// subnet must use the same.
    pub checkpoint_interval: Option<u64>,
    /// How this replica tracks dirty pages (default: the fastest the kernel
    /// supports). A local choice: every tracker gives the same state.
    pub memory_tracker: Option<cellar_engine::MemoryTracker>,
}

/// Reads a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("bad {}: {e}", path.display()))
}

/// Starts a replica: opens the node, joins the subnet over QUIC, runs
/// consensus and serves the HTTP API (no local round driver).
pub async fn start_replica(config: ReplicaConfig) -> anyhow::Result<crate::RunningNode> {
    let membership = Membership::new(config.genesis.members.clone())?;
    let seed: [u8; 32] = HEXLOWER
        .decode(config.key.transport_seed.as_bytes())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the transport seed must be 32 bytes"))?;
    let keys = NodeKeyPair::from_seed(seed);
    let mut options = NodeOptions::new(&config.data_dir);
    if let Some(tracker) = config.memory_tracker {
        tracker.check_available().map_err(anyhow::Error::msg)?;
        options.limits.memory_tracker = tracker;
    }
    match (
        config.genesis.checkpoint_interval,
        config.checkpoint_interval,
    ) {
        (Some(fixed), Some(asked)) if fixed != asked => anyhow::bail!(
            "the subnet's genesis fixes the checkpoint interval at {fixed} rounds, not {asked}"
        ),
        (Some(interval), _) | (None, Some(interval)) => options.checkpoint_interval = interval,
        (None, None) => {}
    }
    if let Err(e) = config
        .genesis
        .check_checkpoint_interval(options.checkpoint_interval)
    {
        if config.genesis.checkpoint_interval.is_some() {
            return Err(e);
        }
        tracing::warn!("{e:#}");
    }
    options.checkpoint_interval = options.checkpoint_interval.max(1);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let node = Arc::new(tokio::task::spawn_blocking(move || Node::open(options)).await??);
    let cup_path = config.data_dir.join("catch-up.json");
    // Start from the newest catch-up package at or below what this node
    // executed (a restart), else from the genesis.
    let start = match read_json::<CatchUpPackage>(&cup_path) {
        Ok(cup) if cup.content.height <= node.round() => cup,
        _ => config.genesis.catch_up.clone(),
    };
    let mut reported = BTreeMap::new();
    if node.round() == 0 {
        // The genesis certifies the empty state (older genesis files carry
        // zeros: nothing to check).
        let genesis_hash = config.genesis.catch_up.content.state_hash.0;
        let hash = node.state_hash();
        anyhow::ensure!(
            genesis_hash == [0; 32] || genesis_hash == hash,
            "this replica's empty state hashes to {}, not to the genesis state hash {}",
            HEXLOWER.encode(&hash),
            HEXLOWER.encode(&genesis_hash)
        );
        reported.insert(0, hash);
    }
    tracing::info!(
        node = config.key.index,
        round = node.round(),
        start = start.content.height,
        "replica starting"
    );
    let (policy, policy_info) = consensus_policy(config.genesis.consensus_policy.as_deref())?;
    tracing::info!(policy = %policy_info, "consensus policy");
    *node.consensus_policy.lock().expect("policy lock") = Some(policy_info);
    let (start_height, start_cup) = (start.content.height, start.clone());
    let mut consensus = ConsensusNode::new(
        config.genesis.consensus.clone(),
        config.genesis.keys.clone(),
        config.key.consensus.clone(),
        start,
        policy,
    )?;
    // What this replica signed and executed before a restart.
    let log = ConsensusLog::open(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot open the consensus log: {e}"))?;
    let mut signed = Vec::new();
    let mut executed_blocks = BTreeMap::new();
    for entry in log.entries() {
        match *entry {
            Entry::Signed(record) => signed.push(record),
            Entry::Executed {
                height,
                block,
                state_hash,
            } => {
                if let Some(block) = block {
                    executed_blocks.insert(height, block);
                }
                if let Some(hash) = state_hash {
                    reported.insert(height, hash);
                }
            }
        }
    }
    tracing::info!(
        signed = signed.len(),
        executed = executed_blocks.len(),
        "consensus log restored"
    );
    consensus.restore(signed);
    // Messages the state executed are not pooled again (late gossip).
    let history = node.clone();
    consensus.set_executed_ingress(Box::new(move |msg: &IngressMessage| {
        claimed_request_id(&msg.id().0, &msg.content).is_some_and(|id| history.knows_request(&id))
    }));
    // Policy changes the replicated state holds (checkpoint and journal).
    let mut changes = node.take_consensus_changes();
    changes.extend(node.consensus_change());
    for (from, hash) in changes {
        switch_policy(&node, &mut consensus, from, &hash);
    }
    let transport_config = TransportConfig {
        injected_delay: config.injected_delay,
        ..TransportConfig::default()
    };
    let (transport, inbound) = Transport::start(transport_config, keys, membership).await?;
    let (submit_tx, submits) = tokio_mpsc::unbounded_channel::<IngressMessage>();
    let (listed_tx, listed) = tokio_mpsc::unbounded_channel::<ListedSource>();
    node.set_replica_sink(Box::new(move |content, expiry_ms| {
        let msg = IngressMessage {
            expiry_ms: expiry_ms.unwrap_or(now_ms() + 4 * 60 * 1000),
            content,
        };
        let id = msg.id().0;
        submit_tx
            .send(msg)
            .map_err(|_| "the replica has stopped".to_string())?;
        Ok(id)
    }));
    if let Some(fault) = config.byzantine {
        tracing::warn!(?fault, "this replica is BYZANTINE (test option)");
    }
    let replica = Replica {
        byzantine: config.byzantine.map(|fault| Byzantine {
            fault,
            secret: config.key.consensus.clone(),
            rng: cellar_consensus::sim::SimRng::new(now_nanos()),
            ticks: 0,
        }),
        misbehaving: BTreeMap::new(),
        node: node.clone(),
        consensus,
        transport,
        cup_path,
        reported,
        log,
        executed_blocks,
        started: std::time::Instant::now(),
        start_height,
        rejoined: false,
        chain_requests: 0,
        last_chain_request_ms: 0,
        chain_served: BTreeMap::new(),
        last_heard: BTreeMap::new(),
        stall: (0, now_ms(), 0),
        stalled: false,
        recent: VecDeque::new(),
        recent_batches: config.recent_batches.max(1),
        syncing: None,
        deferred: VecDeque::new(),
        last_sync_request_ms: 0,
        keys: config.genesis.keys.clone(),
        cups: BTreeMap::from([(start_height, start_cup)]),
        served: VecDeque::new(),
        listed_tx,
        listing: false,
        manifest_requests: Vec::new(),
        chunk_reads: Arc::new(AtomicUsize::new(0)),
        fetch: None,
        stalled_fetch: None,
        want_state: false,
        last_state_request_ms: 0,
        failed: BTreeMap::new(),
        subnet_peers: config.genesis.members.len().saturating_sub(1),
    };
    tokio::spawn(replica.run(inbound, submits, listed));
    let max_body = cellar_engine::Limits::default().max_component_bytes * 4 / 3 + (1 << 20);
    crate::serve_listener(node, listener, max_body, false)
}

/// Schedules the consensus policy `hash` (a stored component) from height
/// `from` on; a module that does not load keeps the policy in force (alike
/// on every replica: the module was checked when the request was made).
fn switch_policy(node: &Node, consensus: &mut ConsensusNode, from: u64, hash: &str) {
    let loaded = node
        .read_module(hash)
        .map_err(|e| e.to_string())
        .and_then(|wasm| {
            let engine = cellar_engine::new_engine().map_err(|e| e.to_string())?;
            cellar_engine::WasmConsensusPolicy::from_component(&engine, &wasm)
                .map_err(|e| e.to_string())
        });
    match loaded {
        Ok(policy) => {
            let name = cellar_consensus::ConsensusPolicy::name(&policy).to_string();
            tracing::info!(from, %name, module = hash, "consensus policy change scheduled");
            *node.consensus_policy.lock().expect("policy lock") =
                Some(format!("{name} (component {hash}) from height {from}"));
            consensus.schedule_policy(from, Box::new(policy));
        }
        Err(e) => tracing::error!(from, module = hash, "consensus policy does not load: {e}"),
    }
}

struct Replica {
    node: Arc<Node>,
    consensus: ConsensusNode,
    transport: TransportHandle,
    cup_path: PathBuf,
    /// State hashes this replica reported, by height.
    reported: BTreeMap<u64, [u8; 32]>,
    /// What it signed and executed (see [`crate::consensus_log`]).
    log: ConsensusLog,
    /// The blocks it executed, by height (the recent ones): a block
    /// delivered again or certified at one of these heights must be the same.
    executed_blocks: BTreeMap<u64, [u8; 32]>,
    /// When the replica started, and the height its consensus started at
    /// (to report when its shares count again).
    started: std::time::Instant,
    start_height: u64,
    rejoined: bool,
    /// Chain requests sent since the start, and when the last one went.
    chain_requests: u32,
    last_chain_request_ms: u64,
    /// When each peer's chain request was last answered (ms).
    chain_served: BTreeMap<u32, u64>,
    /// When this replica last heard from each peer (ms): consensus does
    /// not wait for the rank of a peer it has not heard from lately.
    last_heard: BTreeMap<u32, u64>,
    /// Execution cannot continue (it would need state sync).
    stalled: bool,
    /// The last batches executed, served to replicas catching up.
    recent: VecDeque<SyncBatch>,
    /// How many batches `recent` keeps.
    recent_batches: usize,
    /// Catching up to this catch-up package from peers' batches.
    syncing: Option<CatchUpPackage>,
    /// Finalized batches above the package, kept until the sync is done.
    deferred: VecDeque<FinalizedBatch>,
    last_sync_request_ms: u64,
    /// The subnet's public keys (state sync checks catch-up packages).
    keys: SubnetPublicKeys,
    /// Recent catch-up packages, by height: a checkpoint at one of these
    /// heights can be served to replicas that state-sync.
    cups: BTreeMap<u64, CatchUpPackage>,
    /// The checkpoints this replica serves (snapshots, with their
    /// manifests; the newest two, so a fetch survives the next checkpoint).
    served: VecDeque<Served>,
    /// Where a listing of the last checkpoint, made off the loop, reports.
    listed_tx: tokio_mpsc::UnboundedSender<ListedSource>,
    /// A listing of the last checkpoint is under way.
    listing: bool,
    /// Peers waiting for the manifest of the checkpoint being listed:
    /// (peer, the height it is above, its nonce).
    manifest_requests: Vec<(u32, u64, u64)>,
    /// Chunk reads in flight (at most [`MAX_CHUNK_READS`]).
    chunk_reads: Arc<AtomicUsize>,
    /// The checkpoint this replica is fetching (state sync).
    fetch: Option<Fetch<Staging>>,
    /// A fetch left without peers while its chunks checked out (they fell
    /// silent or sent a bad chunk): resumed, with the chunks held, from the
    /// next peer that announces the same image.
    stalled_fetch: Option<Fetch<Staging>>,
    /// Peers no longer hold the batches this replica needs: it asks for a
    /// checkpoint.
    want_state: bool,
    last_state_request_ms: u64,
    /// Peers whose state was refused, until when (ms).
    failed: BTreeMap<u32, u64>,
    /// The other members of the subnet, in number.
    subnet_peers: usize,
    /// Test only: how this replica misbehaves.
    byzantine: Option<Byzantine>,
    /// Invalid artifacts received, by sender (logged as they grow).
    misbehaving: BTreeMap<u32, u64>,
    /// The consensus round last seen, since when (ms), and when a stall
    /// was last reported (see `note_stall`).
    stall: (u64, u64, u64),
}

/// A misbehaving replica's state (test only).
struct Byzantine {
    fault: Fault,
    secret: cellar_consensus::keys::NodeSecretKeys,
    rng: cellar_consensus::sim::SimRng,
    ticks: u64,
}

/// Batches kept for replicas that catch up, by default.
pub const RECENT_BATCHES: usize = 8192;

/// The consensus log is rewritten without the entries below the saved
/// catch-up package once it holds more than this many.
const LOG_COMPACT_ENTRIES: usize = 4096;

/// A peer not heard from for this long is absent (its rank not waited
/// for); live peers send shares at every height, several times a second.
const ABSENT_AFTER_MS: u64 = 1_000;

/// Milliseconds without a new consensus round before the replica says so
/// (and again as often while it lasts).
const STALL_REPORT_MS: u64 = 10_000;

/// How many times a restarted replica asks for the recent chain, and how
/// often (its peers may not be connected yet at the first ask).
const CHAIN_REQUESTS: u32 = 20;
const CHAIN_REQUEST_MS: u64 = 250;

/// Executed blocks remembered for the fork check.
const EXECUTED_KEPT: usize = 4096;

/// Catch-up packages kept to serve checkpoints at their heights.
const KEPT_CUPS: usize = 16;

/// While a fetch has fewer peers than the subnet, how often the others are
/// asked to join it (ms).
const RECRUIT_MS: u64 = 1_000;

/// How long a peer whose state was refused is not asked again (ms).
const FAILED_PEER_MS: u64 = 30_000;

/// Chunk reads a serving replica runs at once; requests beyond are dropped
/// (the fetching side asks again).
const MAX_CHUNK_READS: usize = 8;

/// A checkpoint this replica serves: its manifest and where its chunks are
/// read from.
struct Served {
    manifest: Manifest,
    source: Arc<SyncSource>,
}

/// A listing of the last checkpoint, to serve: its source, if any.
type ListedSource = anyhow::Result<Option<SyncSource>>;

/// Most batches in one sync answer.
const SYNC_CHUNK: usize = 256;

/// The transport kind of catch-up messages between replicas (not consensus).
const SYNC_KIND: ArtifactKind = ArtifactKind(200);

/// An executed batch as a replica that catches up replays it.
#[derive(Clone, Serialize, Deserialize)]
struct SyncBatch {
    height: u64,
    time_nanos: u64,
    items: Vec<([u8; 32], Vec<u8>)>,
}

/// Catch-up messages (postcard): a replica behind a catch-up package asks
/// for the batches after its round; peers answer with what they still
/// hold, or that they no longer hold them. Then the replica asks for a
/// checkpoint instead (state sync, see [`state_sync`]): peers announce
/// theirs with a manifest and send its chunks on request. No answer is
/// trusted: after replaying up to the package's height, or before
/// installing a checkpoint, the state hash must equal the certified one.
/// Nonces keep repeated requests and answers distinct (the transport
/// delivers each distinct artifact once).
#[derive(Serialize, Deserialize)]
enum SyncMessage {
    Request {
        from: u64,
        nonce: u64,
    },
    Batches(Vec<SyncBatch>),
    /// The batch at `from` is no longer held (answer to a `Request`).
    Missing {
        from: u64,
        nonce: u64,
    },
    /// Which checkpoint above `above` can you send?
    StateRequest {
        above: u64,
        nonce: u64,
    },
    /// This one (answer to a `StateRequest`).
    Manifest {
        manifest: Box<Manifest>,
        nonce: u64,
    },
    ChunkRequest {
        height: u64,
        index: u32,
        nonce: u64,
    },
    Chunk {
        height: u64,
        index: u32,
        nonce: u64,
        bytes: Vec<u8>,
    },
    /// Send me your newest catch-up package and the chain above it (a
    /// replica that just restarted: it takes part in the current round at
    /// once instead of waiting for the next package).
    ChainRequest {
        nonce: u64,
    },
}

fn kind_of(a: &ConsensusArtifact) -> ArtifactKind {
    match a {
        ConsensusArtifact::Ingress(_) => ArtifactKind::INGRESS,
        ConsensusArtifact::Proposal(_) => ArtifactKind::BLOCK,
        ConsensusArtifact::CatchUpPackage(_) => ArtifactKind::OTHER,
        _ => ArtifactKind::SIGNATURE_SHARE,
    }
}

impl Replica {
    async fn run(
        mut self,
        mut inbound: tokio_mpsc::Receiver<Received>,
        mut submits: tokio_mpsc::UnboundedReceiver<IngressMessage>,
        mut listed: tokio_mpsc::UnboundedReceiver<ListedSource>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                Some(r) = inbound.recv() => {
                    self.last_heard.insert(r.from, now_ms());
                    if r.artifact.kind() == SYNC_KIND {
                        self.on_sync(r).await;
                        continue;
                    }
                    match ConsensusArtifact::from_bytes(r.artifact.payload()) {
                        Ok(a) => {
                            let before = self.consensus.stats().clone();
                            let actions = self.consensus.on_artifact(r.from, a);
                            self.note_misbehaviour(r.from, &before);
                            actions
                        }
                        Err(e) => {
                            tracing::debug!(peer = r.from, "undecodable artifact: {e}");
                            self.count_misbehaviour(r.from, 1, &format!("undecodable: {e}"));
                            continue;
                        }
                    }
                }
                Some(source) = listed.recv() => {
                    self.on_listed(source);
                    continue;
                }
                Some(msg) = submits.recv() => match self.consensus.submit_ingress(msg) {
                    Ok(actions) => actions,
                    Err(e) => {
                        tracing::warn!("ingress refused: {e}");
                        continue;
                    }
                },
                _ = tick.tick() => {
                    self.note_absent();
                    self.maybe_request_chain();
                    self.maybe_request_sync();
                    self.maybe_request_state();
                    self.misbehave_on_tick();
                    self.note_stall();
                    self.consensus.on_tick(now_ms())
                }
                else => break,
            };
            self.act(actions).await;
            self.note_rejoin();
        }
    }

    /// Makes the records consensus asked to persist durable (one sync for
    /// all of them) before anything else in `actions` is carried out, and
    /// queues the rest. A replica that cannot persist what it signed must
    /// not send it: it stops.
    fn persist_then_queue(&mut self, actions: Vec<Action>, queue: &mut VecDeque<Action>) {
        let mut records = Vec::new();
        for action in actions {
            match action {
                Action::Persist(record) => records.push(Entry::Signed(record)),
                other => queue.push_back(other),
            }
        }
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.log.append_durably(&records) {
            tracing::error!("cannot persist what consensus signed: {e}; stopping");
            eprintln!("cellar replica: cannot write the consensus log: {e}");
            std::process::exit(5);
        }
    }

    async fn act(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = VecDeque::new();
        self.persist_then_queue(actions, &mut queue);
        while let Some(action) = queue.pop_front() {
            match action {
                // Taken out by `persist_then_queue`.
                Action::Persist(_) => {}
                Action::Broadcast(a) => self.broadcast(a),
                Action::Deliver(batch) if self.syncing.is_some() => {
                    self.deferred.push_back(batch);
                }
                Action::Deliver(batch) => {
                    if let Some(more) = self.execute(batch).await {
                        self.persist_then_queue(more, &mut queue);
                    }
                }
                Action::CatchUpPackage(cup) => {
                    self.check(&cup);
                    self.keep_cup(&cup);
                    self.save_cup(&cup);
                }
                Action::StateSync(cup) => {
                    self.check(&cup);
                    self.keep_cup(&cup);
                    if cup.content.height > self.node.round() {
                        tracing::warn!(
                            height = cup.content.height,
                            round = self.node.round(),
                            "behind a catch-up package: fetching the batches from peers"
                        );
                        self.deferred.retain(|b| b.height > cup.content.height);
                        self.syncing = Some(cup);
                        self.last_sync_request_ms = 0;
                        self.maybe_request_sync();
                    }
                }
                Action::PolicyError(e) => tracing::warn!("consensus policy error: {e}"),
            }
        }
    }

    fn broadcast(&mut self, a: ConsensusArtifact) {
        if self.byzantine.is_some() {
            return self.broadcast_byzantine(a);
        }
        let artifact = NetArtifact::new(kind_of(&a), a.to_bytes());
        if let Err(e) = self.transport.broadcast(&artifact) {
            tracing::warn!("broadcast failed: {e}");
        }
    }

    /// Saves `cup` durably as the package to start from after a restart;
    /// then the consensus log's entries at or below it are useless.
    fn save_cup(&mut self, cup: &CatchUpPackage) {
        let saved = serde_json::to_vec(cup)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::consensus_log::write_durably(&self.cup_path, &bytes));
        match saved {
            Ok(()) => {
                if let Err(e) = self.log.compact(cup.content.height, LOG_COMPACT_ENTRIES) {
                    tracing::warn!("cannot compact the consensus log: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot save the catch-up package: {e}"),
        }
    }

    /// Keeps a catch-up package (the newest [`KEPT_CUPS`]).
    fn keep_cup(&mut self, cup: &CatchUpPackage) {
        self.cups.insert(cup.content.height, cup.clone());
        while self.cups.len() > KEPT_CUPS {
            self.cups.pop_first();
        }
    }

    /// Sends a catch-up message to `to`, or to every peer.
    fn send_sync(&self, to: Option<u32>, message: &SyncMessage) {
        send_sync_message(&self.transport, to, message);
    }

    /// Reports, every [`STALL_REPORT_MS`] while this replica's consensus
    /// round does not move, what it is waiting with: the round, the
    /// artifacts waiting for their height, what it refused or ignored, the
    /// ingress it holds and how long ago each peer was heard from. Rounds
    /// move every few hundred milliseconds on a live subnet, so this says
    /// nothing unless the subnet is stuck.
    fn note_stall(&mut self) {
        let now = now_ms();
        let round = self.consensus.round();
        let (seen, since, reported) = self.stall;
        if round != seen {
            self.stall = (round, now, reported);
            return;
        }
        if now < since + STALL_REPORT_MS || now < reported + STALL_REPORT_MS {
            return;
        }
        self.stall.2 = now;
        let stats = self.consensus.stats();
        let heard: Vec<(u32, u64)> = self
            .last_heard
            .iter()
            .map(|(&peer, &at)| (peer, now.saturating_sub(at)))
            .collect();
        tracing::warn!(
            round,
            stalled_ms = now - since,
            pending = self.consensus.pending_len(),
            ingress = self.consensus.ingress_len(),
            invalid = stats.invalid,
            ignored = stats.ignored,
            delivered = stats.delivered,
            ?heard,
            "consensus makes no progress"
        );
    }

    /// Records an executed height in the consensus log (durable with the
    /// log's next sync; the journal already holds the execution itself).
    fn note_executed(
        &mut self,
        height: u64,
        block: Option<[u8; 32]>,
        state_hash: Option<[u8; 32]>,
    ) {
        if let Some(block) = block {
            self.executed_blocks.insert(height, block);
            while self.executed_blocks.len() > EXECUTED_KEPT {
                self.executed_blocks.pop_first();
            }
        }
        let entry = Entry::Executed {
            height,
            block,
            state_hash,
        };
        if let Err(e) = self.log.append(&[entry]) {
            tracing::warn!(height, "cannot log an executed height: {e}");
        }
    }

    /// A block that consensus finalized, or a catch-up package certified,
    /// at a height this replica executed must be the block it executed:
    /// anything else is proof of a fork (more than f faulty replicas, or a
    /// bug), and adopting it would undo what this replica acknowledged. It
    /// stops, loudly.
    fn check_fork(&self, height: u64, block: &[u8; 32]) {
        if let Some(mine) = self.executed_blocks.get(&height)
            && mine != block
        {
            tracing::error!(
                height,
                mine = %HEXLOWER.encode(mine),
                subnet = %HEXLOWER.encode(block),
                "FORK: the subnet finalized or certified a block other than the one this \
                 replica executed at this height; stopping rather than undoing it"
            );
            eprintln!("cellar replica: fork at height {height}: stopping");
            std::process::exit(3);
        }
    }

    /// Compares the certified block and state hash with the ones this
    /// replica executed and reported.
    fn check(&self, cup: &CatchUpPackage) {
        let c = &cup.content;
        self.check_fork(c.height, &c.block.0);
        if let Some(mine) = self.reported.get(&c.height)
            && *mine != c.state_hash.0
        {
            tracing::error!(
                height = c.height,
                mine = %HEXLOWER.encode(mine),
                subnet = %HEXLOWER.encode(&c.state_hash.0),
                "STATE DIVERGENCE: this replica's state differs from the one the subnet \
                 certified; stopping"
            );
            eprintln!(
                "cellar replica: state divergence at height {}: stopping",
                c.height
            );
            std::process::exit(3);
        }
    }

    /// Executes a finalized batch; returns consensus's answer to the state
    /// hash when the batch asked for one.
    async fn execute(&mut self, batch: FinalizedBatch) -> Option<Vec<Action>> {
        if self.stalled {
            return None;
        }
        if batch.height <= self.node.round() {
            // Executed before a restart (consensus restarted from an older
            // catch-up package): the same block, or a fork.
            self.check_fork(batch.height, &batch.block.0);
            let hash = self.reported.get(&batch.height).copied();
            if batch.needs_state_hash
                && let Some(hash) = hash
            {
                // Its catch-up share again (the same bytes).
                return self
                    .consensus
                    .on_execution_state(batch.height, Hash32(hash))
                    .ok();
            }
            return None;
        }
        let items: Vec<([u8; 32], Vec<u8>)> = batch
            .payload
            .ingress
            .iter()
            .map(|m| (m.id().0, m.content.clone()))
            .collect();
        let node = self.node.clone();
        let height = batch.height;
        let time_nanos = batch.time_ms.saturating_mul(1_000_000);
        let wants_hash = batch.needs_state_hash;
        let result = tokio::task::spawn_blocking(move || {
            let ran = node.apply_finalized(height, time_nanos, &items)?;
            let hash = if wants_hash {
                node.state_hash()
            } else {
                [0; 32]
            };
            Ok::<_, NodeError>((ran, hash))
        })
        .await;
        let (ran, hash) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(height, "cannot execute the finalized batch: {e}");
                self.stalled = true;
                return None;
            }
            Err(e) => {
                tracing::error!(height, "execution panicked: {e}");
                std::process::exit(4);
            }
        };
        for (from, hash) in self.node.take_consensus_changes() {
            switch_policy(&self.node, &mut self.consensus, from, &hash);
        }
        if ran {
            self.note_executed(height, Some(batch.block.0), wants_hash.then_some(hash));
            self.remember(SyncBatch {
                height,
                time_nanos,
                items: batch
                    .payload
                    .ingress
                    .iter()
                    .map(|m| (m.id().0, m.content.clone()))
                    .collect(),
            });
        }
        if !batch.needs_state_hash || !ran {
            return None;
        }
        self.reported.insert(height, hash);
        while self.reported.len() > 256 {
            self.reported.pop_first();
        }
        match self.consensus.on_execution_state(height, Hash32(hash)) {
            Ok(actions) => Some(actions),
            Err(e) => {
                tracing::warn!(height, "state hash not taken: {e}");
                None
            }
        }
    }
}

/// Sends a catch-up message to `to`, or to every peer.
fn send_sync_message(transport: &TransportHandle, to: Option<u32>, message: &SyncMessage) {
    let bytes = match postcard::to_stdvec(message) {
        Ok(bytes) => bytes,
        Err(e) => return tracing::warn!("cannot encode a sync message: {e}"),
    };
    let artifact = NetArtifact::new(SYNC_KIND, bytes);
    let sent = match to {
        Some(to) => transport.send(to, &artifact).map(|_| ()),
        None => transport.broadcast(&artifact).map(|_| ()),
    };
    if let Err(e) = sent {
        tracing::debug!(?to, "sync message not sent: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica_link::*;
    use cellar_execution::Applied;
    use cellar_state::journal::{Ingress, Op};
    use cellar_state::messages::IngressId;
    use cellar_types::Principal;
    use std::sync::Mutex;

    #[test]
    fn requests_round_trip_and_answers_reach_their_caller() {
        let link = ReplicaLink::default();
        assert!(!link.is_on());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        link.turn_on(Box::new(move |content, _| {
            let id = Hash32::digest(b"test", &[&content]).0;
            log.lock().unwrap().push((id, content));
            Ok(id)
        }));
        let ingress = Ingress {
            caller: Principal::anonymous(),
            op: Op::Create {
                controllers: vec![],
            },
            request: None,
        };
        let answer = link.submit(&ingress, Some(vec![1, 2, 3])).unwrap();
        let twice = link.submit(&ingress, None).unwrap();
        let sent = sent.lock().unwrap().clone();
        assert_ne!(sent[0].0, sent[1].0, "the nonce keeps equal requests apart");
        let decoded = decode_request(&sent[0].1).unwrap();
        assert_eq!(decoded.ingress.caller, ingress.caller);
        assert_eq!(decoded.attachment, Some(vec![1, 2, 3]));
        assert!(decode_request(b"garbage").is_none());

        let at = IngressId { round: 7, index: 0 };
        link.expect(at, &sent[0].0);
        link.answer(at, Ok(Applied::Created(Principal::anonymous())));
        assert!(matches!(answer.try_recv(), Ok(Ok(Applied::Created(_)))));
        // An answer for a message nobody here waits for goes nowhere.
        link.answer(IngressId { round: 7, index: 1 }, Ok(Applied::Policy));
        assert!(twice.try_recv().is_err());
    }

    use cellar_types::api::{
        CallRequest, INGRESS_EXPIRY_SKEW_NANOS, RequestState, signing_payload,
    };
    use ed25519_dalek::{Signer, SigningKey};

    const T: u64 = 1_700_000_000_000_000_000;

    /// A request signed by `key` as the agent signs it.
    fn envelope(key: &SigningKey, path: &str, body: &[u8], expiry: u64) -> Envelope {
        let nonce = [7u8; 8];
        let payload = signing_payload("POST", path, expiry, &nonce, body);
        Envelope {
            method: "POST".into(),
            path: path.into(),
            body: data_encoding::BASE64.encode(body),
            ingress_expiry: Some(expiry),
            nonce: Some(HEXLOWER.encode(&nonce)),
            public_key: HEXLOWER.encode(key.verifying_key().as_bytes()),
            signature: HEXLOWER.encode(&key.sign(&payload).to_bytes()),
        }
    }

    /// The payload item a replica would submit: content and message id.
    fn item(ingress: Ingress, nonce: u64, envelope: Option<Envelope>) -> ([u8; 32], Vec<u8>) {
        let expiry_ms = envelope
            .as_ref()
            .map(message_expiry_ms)
            .unwrap_or(T / 1_000_000 + 60_000);
        let content = serde_json::to_vec(&ReplicatedRequest {
            ingress,
            attachment: None,
            nonce,
            envelope,
        })
        .unwrap();
        let id = IngressMessage {
            expiry_ms,
            content: content.clone(),
        }
        .id()
        .0;
        (id, content)
    }

    fn call(caller: &Principal, canister: &Principal, method: &str) -> Ingress {
        Ingress {
            request: None,
            caller: caller.clone(),
            op: Op::Call {
                id: canister.clone(),
                method: method.into(),
                args: cellar_types::api::Args::Wave(String::new()),
            },
        }
    }

    fn check(item: &([u8; 32], Vec<u8>), time: u64) -> Result<(), String> {
        verify_request(&item.0, &item.1, &decode_request(&item.1).unwrap(), time).map(|_| ())
    }

    #[test]
    fn every_replica_checks_the_callers_signature() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let other = SigningKey::from_bytes(&[10; 32]);
        let caller = Principal::self_authenticating(key.verifying_key().as_bytes());
        let canister = Principal::from_text(&Principal::anonymous().to_text()).unwrap();
        let path = format!("/api/v1/canisters/{}/call", canister.to_text());
        let body = serde_json::to_vec(&CallRequest::wave("increment", "")).unwrap();
        let expiry = T + 60 * 1_000_000_000;
        let env = envelope(&key, &path, &body, expiry);
        let good = item(call(&caller, &canister, "increment"), 0, Some(env.clone()));
        assert_eq!(check(&good, T), Ok(()));
        // The same signature for another method, or another caller.
        assert!(
            check(
                &item(call(&caller, &canister, "reset"), 0, Some(env.clone())),
                T
            )
            .is_err()
        );
        let mallory = Principal::self_authenticating(other.verifying_key().as_bytes());
        assert!(
            check(
                &item(call(&mallory, &canister, "increment"), 0, Some(env.clone())),
                T
            )
            .is_err()
        );
        // Signed by another key while naming the caller.
        let forged = envelope(&other, &path, &body, expiry);
        assert!(
            check(
                &item(call(&caller, &canister, "increment"), 0, Some(forged)),
                T
            )
            .is_err()
        );
        // A tampered body.
        let mut tampered = env.clone();
        tampered.body =
            data_encoding::BASE64.encode(b"{\"method\":\"reset\",\"args\":{\"wave\":\"\"}}");
        assert!(
            check(
                &item(call(&caller, &canister, "increment"), 0, Some(tampered)),
                T
            )
            .is_err()
        );
        // No signed request at all for a named caller.
        assert!(check(&item(call(&caller, &canister, "increment"), 5, None), T).is_err());
        // A replay under another message id (nonce or consensus expiry).
        assert!(
            check(
                &item(call(&caller, &canister, "increment"), 1, Some(env.clone())),
                T
            )
            .is_err()
        );
        let mut other_id = good.clone();
        other_id.0[0] ^= 1;
        assert!(check(&other_id, T).is_err());
        // Expired at the block's time.
        assert!(check(&good, expiry + INGRESS_EXPIRY_SKEW_NANOS).is_err());
        // Anonymous requests need no signature.
        let anonymous = item(
            call(&Principal::anonymous(), &canister, "increment"),
            5,
            None,
        );
        assert_eq!(check(&anonymous, T), Ok(()));
    }

    /// A signed "create with this module" request authorizes exactly one
    /// operation: creating a canister with that module installed. A lying
    /// replica cannot turn it into an install into another canister the
    /// caller controls, nor into a bare create.
    #[test]
    fn a_create_with_module_binds_create_and_install_together() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let caller = Principal::self_authenticating(key.verifying_key().as_bytes());
        let body = serde_json::to_vec(&cellar_types::api::CreateRequest {
            module: Some(cellar_types::api::ModuleSource::Example("counter".into())),
            ..Default::default()
        })
        .unwrap();
        let env = envelope(&key, "/api/v1/canisters", &body, T + 60 * 1_000_000_000);
        let counter = cellar_examples::get("counter").unwrap();
        let hash = HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(counter.wasm));
        let op = |op: Op| Ingress {
            request: None,
            caller: caller.clone(),
            op,
        };
        let create_with = op(Op::CreateWithModule {
            controllers: vec![caller.clone()],
            module_hash: hash.clone(),
            arg: counter.init_arg.map(str::to_string),
        });
        assert_eq!(check(&item(create_with, 0, Some(env.clone())), T), Ok(()));
        let elsewhere = op(Op::Install {
            id: Principal::canister(7),
            mode: cellar_types::api::InstallMode::Install,
            module_hash: hash.clone(),
            arg: counter.init_arg.map(str::to_string),
        });
        assert!(check(&item(elsewhere, 0, Some(env.clone())), T).is_err());
        let bare = op(Op::Create {
            controllers: vec![caller.clone()],
        });
        assert!(check(&item(bare, 0, Some(env.clone())), T).is_err());
        let other_module = op(Op::CreateWithModule {
            controllers: vec![caller.clone()],
            module_hash: "00".repeat(32),
            arg: counter.init_arg.map(str::to_string),
        });
        assert!(check(&item(other_module, 0, Some(env)), T).is_err());
    }

    /// An unsigned request as the HTTP layer hands it on: its envelope
    /// carries no key and no signature.
    fn unsigned(path: &str, body: &[u8], expiry: u64, nonce: u8) -> Envelope {
        Envelope {
            method: "POST".into(),
            path: path.into(),
            body: data_encoding::BASE64.encode(body),
            ingress_expiry: Some(expiry),
            nonce: Some(HEXLOWER.encode(&[nonce; 8])),
            public_key: String::new(),
            signature: String::new(),
        }
    }

    /// The id the HTTP layer gives a request.
    fn http_id(env: &Envelope, key: Option<&SigningKey>) -> String {
        let body = data_encoding::BASE64.decode(env.body.as_bytes()).unwrap();
        let nonce = HEXLOWER
            .decode(env.nonce.as_ref().unwrap().as_bytes())
            .unwrap();
        let payload = signing_payload(
            &env.method,
            &env.path,
            env.ingress_expiry.unwrap(),
            &nonce,
            &body,
        );
        let key = key.map(|k| k.verifying_key().to_bytes());
        cellar_types::api::request_id(key.as_ref(), &payload)
    }

    /// Two replicas fed the same finalized batches record the same ingress
    /// history: a signed and an unsigned call answer the same status and
    /// reply on both (under the ids the HTTP layer gave them, whatever tag
    /// the sending replica claimed), to their senders only; the same
    /// unsigned request sent again (through another replica: another
    /// nonce) is not executed again; and a node reopened from its
    /// checkpoint has the history.
    #[test]
    fn replicas_fed_the_same_batches_answer_the_same_statuses() {
        let counter = cellar_examples::get("counter").expect("the counter example");
        let key = SigningKey::from_bytes(&[9; 32]);
        let caller = Principal::self_authenticating(key.verifying_key().as_bytes());
        let anonymous = Principal::anonymous();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let open = |d: &tempfile::TempDir| {
            let node = Node::open(NodeOptions::new(d.path())).unwrap();
            node.set_replica_sink(Box::new(|_, _| Err("no consensus here".into())));
            node
        };
        let nodes: Vec<Node> = dirs.iter().map(open).collect();
        let create = item(
            Ingress {
                request: None,
                caller: anonymous.clone(),
                op: Op::CreateWithModule {
                    controllers: vec![anonymous.clone()],
                    module_hash: HEXLOWER
                        .encode(&<sha2::Sha256 as sha2::Digest>::digest(counter.wasm)),
                    arg: counter.init_arg.map(str::to_string),
                },
            },
            1,
            None,
        );
        let create = {
            let mut r: ReplicatedRequest = serde_json::from_slice(&create.1).unwrap();
            r.attachment = Some(data_encoding::BASE64.encode(counter.wasm));
            ([1; 32], serde_json::to_vec(&r).unwrap())
        };
        for node in &nodes {
            node.apply_finalized(1, T, std::slice::from_ref(&create))
                .unwrap();
        }
        let canister = nodes[0].list()[0].canister_id.clone();
        let path = format!("/api/v1/canisters/{}/submit", canister.to_text());
        let expiry = T + 60 * 1_000_000_000;
        let wave = serde_json::to_vec(&CallRequest::wave("increment", "")).unwrap();
        let json =
            serde_json::to_vec(&CallRequest::json("increment", serde_json::json!([]))).unwrap();
        let signed_env = envelope(&key, &path, &wave, expiry);
        let unsigned_env = unsigned(&path, &json, expiry, 3);
        let (signed_id, unsigned_id) = (
            http_id(&signed_env, Some(&key)),
            http_id(&unsigned_env, None),
        );
        // The sending replica claims another id: it is not believed.
        let json_call = || {
            let mut c = call(&anonymous, &canister, "increment");
            if let Op::Call { args, .. } = &mut c.op {
                *args = cellar_types::api::Args::Json(serde_json::json!([]));
            }
            c
        };
        let mut lying = json_call();
        lying.request = Some(cellar_state::journal::RequestTag {
            id: signed_id.clone(),
            expiry,
            encoding: Default::default(),
        });
        let batch = vec![
            item(call(&caller, &canister, "increment"), 0, Some(signed_env)),
            item(lying, 4, Some(unsigned_env.clone())),
        ];
        for node in &nodes {
            node.apply_finalized(2, T + 1, &batch).unwrap();
        }
        // The unsigned request again, under another nonce.
        let again = vec![item(json_call(), 5, Some(unsigned_env))];
        for node in &nodes {
            node.apply_finalized(3, T + 2, &again).unwrap();
        }
        let statuses = |node: &Node| {
            let signed = node.request_status(&signed_id, &caller).expect("signed");
            let unsigned = node
                .request_status(&unsigned_id, &anonymous)
                .expect("unsigned");
            assert!(node.request_status(&signed_id, &anonymous).is_none());
            assert!(node.request_status(&unsigned_id, &caller).is_none());
            (signed, unsigned)
        };
        let (signed, unsigned) = statuses(&nodes[0]);
        assert_eq!(signed.status, RequestState::Replied);
        assert!(matches!(
            &signed.response,
            Some(cellar_types::api::CallResponse::Replied { reply, .. }) if reply == "1"
        ));
        assert!(
            matches!(
                &unsigned.response,
                Some(cellar_types::api::CallResponse::Replied { reply, .. }) if *reply == serde_json::json!(2)
            ),
            "{unsigned:?}"
        );
        assert_eq!(statuses(&nodes[1]), (signed.clone(), unsigned.clone()));
        assert_eq!(nodes[0].state_hash(), nodes[1].state_hash());
        let counted = nodes[0]
            .query(
                &anonymous,
                &canister,
                "get",
                cellar_types::api::Args::Wave(String::new()),
            )
            .unwrap();
        assert_eq!(
            format!("{:?}", counted.result),
            "Ok([U64(2)])",
            "executed once each"
        );
        // Reopened from a checkpoint (its journal holds nothing after it).
        nodes[1].checkpoint().unwrap();
        let hash = nodes[1].state_hash();
        drop(nodes);
        let reopened = open(&dirs[1]);
        assert_eq!(reopened.state_hash(), hash);
        assert_eq!(statuses(&reopened), (signed, unsigned));
    }

    /// Two replicas fed the same finalized batches, one of them carrying a
    /// forged request: both skip it alike (same state hash), the rest
    /// executes, and a caller waiting for the forged message gets a reject.
    #[test]
    fn forged_ingress_is_skipped_alike_and_its_waiter_rejected() {
        let counter = cellar_examples::get("counter").expect("the counter example");
        let key = SigningKey::from_bytes(&[9; 32]);
        let caller = Principal::self_authenticating(key.verifying_key().as_bytes());
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let captured = Arc::new(Mutex::new(Vec::new()));
        let nodes: Vec<Arc<Node>> = dirs
            .iter()
            .map(|d| {
                let node = Arc::new(Node::open(NodeOptions::new(d.path())).unwrap());
                let log = captured.clone();
                node.set_replica_sink(Box::new(move |content, expiry_ms| {
                    let msg = IngressMessage {
                        expiry_ms: expiry_ms.unwrap_or(T / 1_000_000 + 60_000),
                        content,
                    };
                    log.lock().unwrap().push(msg.clone());
                    Ok(msg.id().0)
                }));
                node
            })
            .collect();
        let anonymous = Principal::anonymous();
        let create = item(
            Ingress {
                request: None,
                caller: anonymous.clone(),
                op: Op::Create {
                    controllers: vec![Principal::anonymous()],
                },
            },
            1,
            None,
        );
        for node in &nodes {
            node.apply_finalized(1, T, std::slice::from_ref(&create))
                .unwrap();
        }
        let canister = nodes[0].list()[0].canister_id.clone();
        let hash = HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(counter.wasm));
        let content = serde_json::to_vec(&ReplicatedRequest {
            ingress: Ingress {
                request: None,
                caller: anonymous.clone(),
                op: Op::Install {
                    id: canister.clone(),
                    mode: cellar_types::api::InstallMode::Install,
                    module_hash: hash,
                    arg: counter.init_arg.map(str::to_string),
                },
            },
            attachment: Some(data_encoding::BASE64.encode(counter.wasm)),
            nonce: 2,
            envelope: None,
        })
        .unwrap();
        let install = ([2; 32], content);
        for node in &nodes {
            node.apply_finalized(2, T + 1, std::slice::from_ref(&install))
                .unwrap();
        }

        // A caller on replica 0 whose request carries a signature of
        // another key (what a lying replica would have to produce).
        let path = format!("/api/v1/canisters/{}/call", canister.to_text());
        let body = serde_json::to_vec(&CallRequest::wave("increment", "")).unwrap();
        let expiry = T + 60 * 1_000_000_000;
        let forged = envelope(&SigningKey::from_bytes(&[10; 32]), &path, &body, expiry);
        let waiting = {
            let (node, caller, canister) = (nodes[0].clone(), caller.clone(), canister.clone());
            std::thread::spawn(move || {
                with_envelope(Some(forged), || {
                    node.update(
                        &caller,
                        &canister,
                        "increment",
                        cellar_types::api::Args::Wave(String::new()),
                    )
                })
            })
        };
        let forged = loop {
            if let Some(m) = captured.lock().unwrap().pop() {
                break m;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let signed = item(
            call(&caller, &canister, "increment"),
            0,
            Some(envelope(&key, &path, &body, expiry)),
        );
        let batch = vec![
            (forged.id().0, forged.content.clone()),
            signed,
            item(call(&anonymous, &canister, "increment"), 3, None),
        ];
        for node in &nodes {
            node.apply_finalized(3, T + 2, &batch).unwrap();
        }
        let answer = waiting.join().unwrap();
        assert!(
            matches!(answer, Err(NodeError::Unauthorized(_))),
            "the forged request's caller gets a reject: {answer:?}"
        );
        for node in &nodes {
            let got = node
                .query(
                    &anonymous,
                    &canister,
                    "get",
                    cellar_types::api::Args::Wave(String::new()),
                )
                .unwrap();
            assert_eq!(format!("{:?}", got.result), "Ok([U64(2)])");
        }
        assert_eq!(nodes[0].state_hash(), nodes[1].state_hash());
    }
}
