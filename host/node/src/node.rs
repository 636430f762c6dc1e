//! The node: canisters, their lifecycle, and the requests that drive rounds.
//!
//! [`Node`] composes an [`Executor`] (the replicated state in memory, from
//! `cellar_execution`) with the journal, the checkpointer and the module
//! store (from `cellar_state`). Every state-changing request (create,
//! install, call, stop, start, delete, controllers, ...) waits in the
//! ingress pool until the next round takes it into its batch: whichever
//! caller gets the writer lock first takes up to `NodeOptions::max_batch`
//! of them (requests that arrive together share a round). The batch becomes
//! a journal [`Record`] (round, time, batch), appended durably before the
//! round executes (see `cellar_execution`'s `round.rs`), so a crash loses
//! nothing that was acknowledged, and restart replays the records after the
//! last checkpoint. Rounds run one at a time, driven by whichever caller
//! holds the writer lock or by [`Node::tick`] (every 10 ms in `cellar
//! start`), which runs rounds when only queued messages or due timers are
//! left. Queries clone the committed canister (cheap: state is behind
//! `Arc`s) and run concurrently, outside every lock, against the last
//! committed state; they never block rounds. A composite query goes to
//! [`Executor::composite_query`].
//!
//! On restart, [`Node::open`] loads the checkpoint and replays the journal
//! records after it; replay gives the same results because each record
//! carries its round, time and caller, and randomness is derived from them.
//!
//! Checkpoints happen after rounds that are multiples of
//! `NodeOptions::checkpoint_interval`, on every replica alike, whenever it
//! started: a checkpoint aborts paused executions (their messages go back
//! to the front of their queues), which changes the rounds after it, so
//! replicas must abort at the same rounds. Replay does the same (a
//! checkpoint after each such round it replays, none elsewhere) and then
//! appends to the journal it replayed, so a node restarted in the middle of
//! a sliced message keeps it paused and finishes it at the same round, with
//! the same state hash, as a replica that never stopped (tested with
//! batches finalized by hand and two restarts). [`Node::checkpoint`]
//! (tests, `cellar start`'s example deployment) still writes one at once
//! and waits for its durability, [`Node::start_checkpoint`] does not; a
//! node that shuts down writes one only when nothing is paused
//! ([`Node::checkpoint_if_settled`]).
//!
//! In replica mode ([`Node::set_replica_sink`]) a request is not queued for
//! a local round: it is encoded and handed to the replica task (see
//! `replica_link.rs`), and neither the round ticker nor [`Node::tick`] runs
//! local rounds. Each finalized batch becomes [`Node::apply_finalized`]: a
//! journal record with round = height, time = the block's time (at least
//! the previous round's + 1 ns) and the payload's requests in block order
//! (undecodable items are skipped alike everywhere), executed like a local
//! round.
//!
//! [`Node::state_hash`] folds the scheduler policy and the last
//! consensus-policy change into the state's hash (see `cellar_state`'s
//! `state_hash.rs`). `node/chunks.rs` is the chunk store's API side;
//! `node/sync.rs` the node's side of state sync.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cellar_engine::{
    CanisterCode, CodeCache, ExecutionState, Limits, MessageKind, MethodKind, SchedulerPolicy,
    execute,
};
use cellar_types::Principal;
use cellar_types::api::{
    Args, CanisterStatus, InstallMode, InterfaceInfo, LogEntry, MethodInfo, NodeStatus, PolicyInfo,
    ReadState, RequestStatus,
};
use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use cellar_execution::context::*;
pub use cellar_execution::{Applied, CallOutcome, ExecutionConfig, Executor, NodeError};
use cellar_state::ModuleStore;
use cellar_state::canister::Canister;
use cellar_state::checkpoint::{CheckpointStats, Checkpointer};
use cellar_state::checkpoint_writer::{CheckpointWriter, Snapshot};
use cellar_state::history::IngressHistory;
use cellar_state::journal::{Durability, Ingress, Journal, Op, Record, RequestTag, read_records};
use cellar_state::messages::IngressId;
use cellar_state::registry::Registry;
use cellar_state::state_hash::StateSnapshot;

mod canisters;
mod checkpoints;
mod chunks;
mod open;
mod ordering;
mod sync;
pub use crate::state_sync::Certified;
pub(crate) use cellar_execution::check_chunk_size;
pub use sync::{Staging, SyncSource};

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Where state lives.
    pub data_dir: PathBuf,
    /// Execution limits.
    pub limits: Limits,
    /// Rounds between checkpoints: the node checkpoints after every round
    /// that is a multiple of it (the same rounds on every replica).
    pub checkpoint_interval: u64,
    /// Journal durability.
    pub durability: Durability,
    /// Threads that execute canisters in parallel within a round. The
    /// result never depends on it.
    pub execution_threads: usize,
    /// Instructions one round may spend over all canisters (the
    /// scheduler divides them).
    pub round_instructions: u64,
    /// Pages (4 KiB heap pages and stable chunks, counted as
    /// `MessageOutcome::delta_pages`) the messages of one round may change
    /// over all canisters: each canister the round executes gets an equal
    /// share, and once its messages changed that many pages its further
    /// messages wait for the next round. Deterministic: it depends on the
    /// plan only, never on timing or threads. A canister always executes at
    /// least one message per round; a single message is bounded by
    /// `Limits::max_dirty_pages_per_message`.
    pub round_dirty_pages: u64,
    /// Pages one canister's messages may change in one round (a cap on its
    /// share of `round_dirty_pages`).
    pub canister_round_dirty_pages: u64,
    /// Requests one round takes from the ingress pool at most.
    pub max_batch: usize,
    /// Cycles a new canister starts with.
    pub initial_cycles: u64,
    /// How long [`Node::update`] waits for an answer before it gives up
    /// waiting (the message still executes).
    pub reply_timeout: Duration,
    /// Bounds of the ingress history (replicated state: the same on every
    /// replica of a subnet).
    pub ingress_history: cellar_state::history::HistoryLimits,
}

impl NodeOptions {
    /// Defaults for a data directory: default limits, a checkpoint every
    /// 500 rounds, synced journal.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeOptions {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            checkpoint_interval: 500,
            durability: Durability::Sync,
            execution_threads: std::env::var("CELLAR_EXECUTION_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2)
                .max(1),
            round_instructions: 100_000_000_000,
            round_dirty_pages: 1 << 20,
            canister_round_dirty_pages: 1 << 19,
            max_batch: 1_000,
            initial_cycles: cellar_state::canister::INITIAL_CYCLES,
            reply_timeout: Duration::from_secs(120),
            ingress_history: cellar_state::history::HistoryLimits::default(),
        }
    }
}

pub(crate) struct Writer {
    journal: Journal,
}

/// A request waiting for a round, with the channel its answer goes to.
struct Pending {
    ingress: Ingress,
    reply: mpsc::Sender<Result<Applied, NodeError>>,
}

/// A single node with its canisters.
pub struct Node {
    pub(crate) options: NodeOptions,
    /// The replicated state and what executes on it.
    pub(crate) exec: Executor,
    state_dir: PathBuf,
    writer: Mutex<Option<Writer>>,
    /// Replica mode: the consensus policy in force, for `policy_info`.
    pub(crate) consensus_policy: Mutex<Option<String>>,
    /// Requests waiting for the next round.
    pending: Mutex<Vec<Pending>>,
    /// Requests inducted into a round and not answered yet.
    waiters: Mutex<BTreeMap<IngressId, mpsc::Sender<Result<Applied, NodeError>>>>,
    checkpoints: CheckpointWriter,
    fresh: bool,
    /// Replica mode (see `replica.rs`): where requests go instead of the
    /// local pool, and who waits for which ingress message id.
    replica: crate::replica_link::ReplicaLink,
}

thread_local! {
    /// The signed request the calling thread is submitting (see
    /// [`Node::tagged`]).
    static CURRENT_REQUEST: std::cell::RefCell<Option<RequestTag>> =
        const { std::cell::RefCell::new(None) };
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn journal_path(state_dir: &Path, first_round: u64) -> PathBuf {
    state_dir.join(format!("journal-{first_round:012}.log"))
}

/// The journal files in `state_dir`, oldest first.
fn journal_files(state_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut journals: Vec<PathBuf> = std::fs::read_dir(state_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".log"))
        })
        .collect();
    journals.sort();
    Ok(journals)
}

impl Node {
    /// The requests in the ingress history whose ingress expiry has not
    /// passed at `now` (nanoseconds since the Unix epoch), as `(id,
    /// expiry)`. They survive restarts (journal and checkpoints carry
    /// them), so their replay is refused after a restart too.
    pub fn journaled_requests(&self, now: u64) -> Vec<(String, u64)> {
        let history = self.exec.history.lock().expect("history lock");
        history
            .shared_entries()
            .iter()
            .filter(|e| e.expiry > now)
            .map(|e| (e.id.clone(), e.expiry))
            .collect()
    }

    /// Request `id`'s status in the ingress history as `caller` may see it
    /// (only its sender reads it); none when the history does not hold it
    /// (not inducted yet, never seen, or forgotten after its expiry).
    pub fn request_status(&self, id: &str, caller: &Principal) -> Option<RequestStatus> {
        self.exec
            .history
            .lock()
            .expect("history lock")
            .status(id, caller)
    }

    /// Whether request `id` is in the ingress history (inducted, and not
    /// yet forgotten): it is never executed again.
    pub fn knows_request(&self, id: &str) -> bool {
        self.exec.history.lock().expect("history lock").contains(id)
    }

    /// Whether the ingress history is full: new requests are refused.
    pub fn ingress_history_full(&self) -> bool {
        self.exec.history.lock().expect("history lock").is_full()
    }

    /// Entries and result bytes of the ingress history.
    pub fn ingress_history_size(&self) -> (usize, u64) {
        let history = self.exec.history.lock().expect("history lock");
        (history.len(), history.reply_bytes())
    }

    /// Runs `f` on this thread with `tag` as the signed request it submits:
    /// every request `f` hands to the node is journaled with the tag, so
    /// its id is remembered across restarts until its expiry.
    pub fn tagged<T>(tag: Option<RequestTag>, f: impl FnOnce() -> T) -> T {
        struct Reset(Option<RequestTag>);
        impl Drop for Reset {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT_REQUEST.with(|c| *c.borrow_mut() = previous);
            }
        }
        let previous = CURRENT_REQUEST.with(|c| c.replace(tag));
        let _reset = Reset(previous);
        f()
    }

    /// Stores a module under `modules/` by its hash, durably, before a
    /// journal record names it.
    fn store_module(&self, module_hash: &str, wasm: &[u8]) -> anyhow::Result<()> {
        self.exec.modules.store(module_hash, wasm)
    }

    /// Replica mode: replaces the subnet's consensus policy with the
    /// component `wasm` (checked first), through consensus: every replica
    /// switches at the height the request executes at plus
    /// [`cellar_state::journal::CONSENSUS_POLICY_LAG`]. Signed callers only.
    pub fn set_consensus_policy(
        &self,
        caller: &Principal,
        wasm: &[u8],
    ) -> Result<PolicyInfo, NodeError> {
        if !self.replica.is_on() {
            return Err(NodeError::BadRequest(
                "only replicas of a subnet run a consensus policy".into(),
            ));
        }
        if caller.is_anonymous() {
            return Err(NodeError::BadRequest(
                "the anonymous principal cannot change the consensus policy; sign the request"
                    .into(),
            ));
        }
        cellar_engine::WasmConsensusPolicy::from_component(self.exec.cache.engine(), wasm)
            .map_err(|e| NodeError::BadRequest(format!("not a consensus policy: {e}")))?;
        let hash = HEXLOWER.encode(&Sha256::digest(wasm));
        self.store_module(&hash, wasm)?;
        self.submit(
            caller,
            Op::SetConsensusPolicy {
                module_hash: hash.clone(),
            },
        )?;
        Ok(self.policy_info())
    }

    /// Replica mode: the consensus-policy changes executed since the last
    /// call (from height, module hash), for the replica task.
    pub(crate) fn take_consensus_changes(&self) -> Vec<(u64, String)> {
        std::mem::take(&mut *self.exec.consensus_changes.lock().expect("consensus lock"))
    }

    /// Replica mode: the last consensus-policy change in the replicated
    /// state (from height, module hash).
    pub(crate) fn consensus_change(&self) -> Option<(u64, String)> {
        self.exec
            .consensus_change
            .lock()
            .expect("consensus lock")
            .clone()
    }

    /// Reads a stored module (a consensus-policy component).
    pub(crate) fn read_module(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        self.exec.modules.read(hash)
    }

    /// Replaces the scheduler policy with the component `wasm` (or the
    /// built-in default for `None`), from the next round's plan on. The
    /// component is checked first; any signed-in user may do this on a
    /// node of their own (the anonymous principal may not).
    pub fn set_scheduler_policy(
        &self,
        caller: &Principal,
        wasm: Option<&[u8]>,
    ) -> Result<PolicyInfo, NodeError> {
        if caller.is_anonymous() {
            return Err(NodeError::BadRequest(
                "the anonymous principal cannot change the scheduler policy; sign the request"
                    .into(),
            ));
        }
        let module_hash = match wasm {
            Some(wasm) => {
                let policy = SchedulerPolicy::from_component(self.exec.cache.engine(), wasm)
                    .map_err(|e| NodeError::BadRequest(format!("not a scheduler policy: {e}")))?;
                let hash = policy.hash_hex();
                self.store_module(&hash, wasm)?;
                Some(hash)
            }
            None => None,
        };
        self.submit(caller, Op::SetSchedulerPolicy { module_hash })?;
        Ok(self.policy_info())
    }

    /// Which scheduler policy runs, and when it last failed.
    pub fn policy_info(&self) -> PolicyInfo {
        let scheduler = self
            .exec
            .scheduler_policy
            .read()
            .expect("policy lock")
            .as_ref()
            .map(|(hash, _)| hash.clone());
        let last_fallback = self
            .exec
            .last_policy_fallback
            .lock()
            .expect("fallback lock")
            .clone();
        PolicyInfo {
            scheduler_module_hash: scheduler,
            last_fallback_round: last_fallback.as_ref().map(|(r, _)| *r),
            last_fallback_reason: last_fallback.map(|(_, why)| why),
            consensus: self.consensus_policy.lock().expect("policy lock").clone(),
        }
    }

    /// A canister's status.
    pub fn status(&self, id: &Principal) -> Result<CanisterStatus, NodeError> {
        let registry = self.exec.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(Canister::status)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }

    /// Every canister's status, by id.
    pub fn list(&self) -> Vec<CanisterStatus> {
        let registry = self.exec.registry.read().expect("registry lock");
        registry.canisters.values().map(Canister::status).collect()
    }

    /// The node's status, with the [`state_hash`](Self::state_hash) of the
    /// same round.
    pub fn node_status(&self) -> NodeStatus {
        let snapshot = self.snapshot();
        NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            round: snapshot.round,
            canisters: snapshot.canisters.len() as u64,
            data_dir: self.options.data_dir.display().to_string(),
            state_hash: HEXLOWER.encode(&snapshot.hash()),
            node_key: None,
        }
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    /// A canister's readable replicated state and the state hash, all of
    /// the same round (not certified yet: see `certify.rs`).
    pub fn read_state(&self, id: &Principal) -> Result<ReadState, NodeError> {
        let snapshot = self.snapshot();
        let canister = snapshot
            .canisters
            .get(id)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
        let status = canister.status();
        Ok(ReadState {
            canister_id: status.canister_id,
            round: snapshot.round,
            status: status.status,
            module_hash: status.module_hash,
            certified_data: status.certified_data,
            controllers: status.controllers,
            state_hash: HEXLOWER.encode(&snapshot.hash()),
            certificate: None,
        })
    }

    /// A SHA-256 of the replicated state after the last committed round:
    /// the round, the next canister index and every canister's id,
    /// controllers, run status, module hash, cycles, certified data,
    /// timers, stable memory and linear memories, in a canonical order, and
    /// the scheduler policy and last consensus-policy change in force (the
    /// round's time is left out: on a replica the catch-up package
    /// certifies it as its block's time). Replicas that executed the same rounds
    /// agree on it; logs and counters that are not replicated state are
    /// left out.
    ///
    /// Linear memories enter through their page maps' Merkle hashes, cached
    /// in the tree nodes versions share, so only pages dirtied since the
    /// last call are hashed again; stable memory and metadata are still
    /// rehashed on every call (outside every lock, on a snapshot).
    pub fn state_hash(&self) -> [u8; 32] {
        self.snapshot().hash()
    }

    /// The state between two rounds, taken together: the writer lock is
    /// held while copying, so no round is half applied (a round commits
    /// canister by canister). Canister state is behind `Arc`s, so this is
    /// cheap.
    fn snapshot(&self) -> StateSnapshot {
        let _between_rounds = self.writer.lock().expect("writer lock");
        let registry = self.exec.registry.read().expect("registry lock");
        StateSnapshot {
            round: registry.round,
            next_index: registry.next_index,
            canisters: registry.canisters.clone(),
            policy: self
                .exec
                .scheduler_policy
                .read()
                .expect("policy lock")
                .as_ref()
                .map(|(hash, _)| hash.clone()),
            consensus: self.consensus_change(),
            history: self.exec.history.lock().expect("history lock").hash(),
        }
    }

    /// A canister's interface.
    pub fn interface(&self, id: &Principal) -> Result<InterfaceInfo, NodeError> {
        let code = self.code_of(id)?;
        let interface = &code.interface;
        Ok(InterfaceInfo {
            methods: interface
                .methods
                .iter()
                .map(|m| MethodInfo {
                    name: m.qualified_name(),
                    kind: match m.kind {
                        MethodKind::Update => "update".into(),
                        MethodKind::Query => "query".into(),
                        MethodKind::CompositeQuery => "composite-query".into(),
                    },
                    signature: m.signature(),
                })
                .collect(),
            hooks: interface.hooks.iter().map(|(_, m)| m.signature()).collect(),
            text: interface.describe(),
        })
    }

    /// The code installed on a canister.
    pub fn code_of(&self, id: &Principal) -> Result<Arc<CanisterCode>, NodeError> {
        let registry = self.exec.registry.read().expect("registry lock");
        let canister = registry
            .canisters
            .get(id)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
        canister.code.clone().ok_or_else(|| {
            NodeError::BadRequest(format!("canister {} has no code installed", id.to_text()))
        })
    }

    /// A canister's recent log lines.
    pub fn logs(&self, id: &Principal) -> Result<Vec<LogEntry>, NodeError> {
        let registry = self.exec.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(|c| c.logs.iter().cloned().collect())
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }

    /// The committed execution state of a canister (for tests and tools).
    pub fn execution_state(&self, id: &Principal) -> Result<ExecutionState, NodeError> {
        let registry = self.exec.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(|c| c.state.clone())
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }
}
