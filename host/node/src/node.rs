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

mod chunks;
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
    modules_dir: PathBuf,
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
    /// Opens the node in `options.data_dir`: loads the last checkpoint and
    /// replays the journal after it.
    pub fn open(options: NodeOptions) -> anyhow::Result<Self> {
        // Checkpoints abort paused executions; a message that needs more
        // slices than a checkpoint interval has rounds would never finish.
        // Slices grow until the longest message fits between checkpoints
        // (every replica has the same settings, so the same slices).
        let mut options = options;
        let interval = options.checkpoint_interval.max(2);
        let limits = &mut options.limits;
        if limits
            .update_instructions
            .div_ceil(limits.slice_instructions.max(1))
            >= interval
        {
            let slice = limits.update_instructions.div_ceil(interval - 1);
            tracing::warn!(
                checkpoint_interval = interval,
                slice,
                "slices raised so that the longest message fits between two checkpoints"
            );
            limits.slice_instructions = slice;
        }
        let modules_dir = options.data_dir.join("modules");
        let state_dir = options.data_dir.join("state");
        std::fs::create_dir_all(&modules_dir)?;
        std::fs::create_dir_all(&state_dir)?;
        let opened = Instant::now();
        let engine = cellar_engine::new_engine()?;
        let cache = CodeCache::new(
            engine,
            Some(&options.data_dir.join("compiled")),
            options.limits.max_component_bytes,
        )?;
        let mut store = Checkpointer::open(&state_dir.join("pages"))?;
        sync::finish_interrupted_install(&state_dir, &mut store)?;
        let store_opened = opened.elapsed();
        let checkpoints = CheckpointWriter::new(store, &state_dir, options.durability);
        let config = ExecutionConfig {
            limits: options.limits.clone(),
            execution_threads: options.execution_threads,
            round_instructions: options.round_instructions,
            round_dirty_pages: options.round_dirty_pages,
            canister_round_dirty_pages: options.canister_round_dirty_pages,
            initial_cycles: options.initial_cycles,
            ingress_history: options.ingress_history,
        };
        let exec = Executor::new(config, cache, ModuleStore::open(&modules_dir)?);
        let mut node = Node {
            options,
            exec,
            modules_dir,
            state_dir,
            checkpoints,
            writer: Mutex::new(None),
            consensus_policy: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            waiters: Mutex::new(BTreeMap::new()),
            fresh: true,
            replica: crate::replica_link::ReplicaLink::default(),
        };
        node.recover()?;
        tracing::debug!(
            store_ms = store_opened.as_millis() as u64,
            total_ms = opened.elapsed().as_millis() as u64,
            "node opened"
        );
        Ok(node)
    }

    /// Paused executions aborted since the node opened.
    pub fn aborted_executions(&self) -> u64 {
        self.exec.aborted_executions()
    }

    /// Long executions paused between rounds.
    pub fn paused_executions(&self) -> usize {
        self.exec.paused_executions()
    }

    /// Messages waiting in the canisters' input queues.
    pub fn queued_messages(&self) -> usize {
        self.exec.queued_messages()
    }

    /// Whether the node started from an empty data directory.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    fn recover(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let loaded = self.checkpoints.load()?;
        let load_ms = started.elapsed().as_millis() as u64;
        if let Some(loaded) = loaded {
            self.fresh = false;
            let mut registry = self.exec.registry.write().expect("registry lock");
            registry.round = loaded.round;
            registry.time_nanos = loaded.time_nanos;
            registry.next_index = loaded.next_index;
            *self.exec.consensus_change.lock().expect("consensus lock") =
                loaded.consensus_policy.clone();
            if let Some(hash) = &loaded.scheduler_policy {
                let policy = self.exec.load_policy(hash)?;
                *self.exec.scheduler_policy.write().expect("policy lock") =
                    Some((hash.clone(), policy));
            }
            *self.exec.history.lock().expect("history lock") =
                IngressHistory::from_entries(self.options.ingress_history, loaded.history);
            self.add_loaded_canisters(&mut registry, loaded.canisters)?;
        }
        tracing::debug!(
            load_ms,
            code_ms = started.elapsed().as_millis() as u64 - load_ms,
            "checkpoint loaded"
        );
        let journals = journal_files(&self.state_dir)?;
        // Checkpoints happen at rounds that are multiples of the interval,
        // on every replica alike (they abort paused executions, which
        // changes what the next rounds do). Replay does what the live node
        // did, or was about to do when it stopped: a checkpoint after each
        // such round, and none anywhere else. So a restarted node keeps the
        // executions paused at the end of the replay and continues them
        // exactly as a node that never stopped.
        let interval = self.options.checkpoint_interval.max(1);
        let mut replayed = 0u64;
        // A checkpoint written during replay, and the records after it.
        let mut checkpointed: Option<u64> = None;
        let mut tail: Vec<Record> = Vec::new();
        for path in &journals {
            for record in read_records(path)? {
                self.fresh = false;
                let round = self.exec.registry.read().expect("registry lock").round;
                if record.round <= round {
                    continue;
                }
                anyhow::ensure!(
                    record.round == round + 1,
                    "journal {} skips from round {round} to {}",
                    path.display(),
                    record.round
                );
                // Request errors were answered before the crash and recur
                // on replay; an internal error (a stored module that is
                // missing or no longer loads) means replay cannot reproduce
                // what was acknowledged, and going on would diverge.
                for (_, result) in self.exec.execute_round(&record) {
                    if let Err(NodeError::Internal(e)) = result {
                        return Err(e.context(format!(
                            "cannot replay round {} of journal {}",
                            record.round,
                            path.display()
                        )));
                    }
                }
                replayed += 1;
                if record.round.is_multiple_of(interval) {
                    self.exec.abort_paused(None);
                    self.checkpoints.start(self.checkpoint_snapshot(Vec::new()));
                    self.checkpoints.wait()?;
                    checkpointed = Some(record.round);
                    tail.clear();
                } else if checkpointed.is_some() {
                    tail.push(record);
                }
            }
        }
        let round = self.exec.registry.read().expect("registry lock").round;
        if replayed > 0 {
            tracing::info!(replayed, round, "replayed the journal after the checkpoint");
        }
        let journal = match (checkpointed, journals.last()) {
            // The records after the new checkpoint move to a journal that
            // starts after it; the older journals go.
            (Some(at), _) => {
                let path = journal_path(&self.state_dir, at + 1);
                let staging = self.state_dir.join("journal-staging.tmp");
                let _ = std::fs::remove_file(&staging);
                let mut staged = Journal::open(&staging, self.options.durability)?;
                for record in &tail {
                    staged.append(record)?;
                }
                drop(staged);
                for old in &journals {
                    std::fs::remove_file(old)?;
                }
                std::fs::rename(&staging, &path)?;
                if self.options.durability == Durability::Sync {
                    std::fs::File::open(&self.state_dir)?.sync_all()?;
                }
                Journal::open(&path, self.options.durability)?
            }
            // The journal after the loaded checkpoint goes on.
            (None, Some(last)) => Journal::open(last, self.options.durability)?,
            (None, None) => Journal::open(
                &journal_path(&self.state_dir, round + 1),
                self.options.durability,
            )?,
        };
        *self.writer.lock().expect("writer lock") = Some(Writer { journal });
        Ok(())
    }

    /// Adds checkpointed canisters to `registry`, with their code loaded
    /// from the stored modules they name.
    fn add_loaded_canisters(
        &self,
        registry: &mut Registry,
        canisters: Vec<(Canister, Option<String>)>,
    ) -> anyhow::Result<()> {
        for (mut canister, hash) in canisters {
            if let Some(hash) = hash {
                canister.code = Some(self.exec.load_module(&hash)?);
            }
            let id = canister.id.clone();
            registry.canisters.insert(id.clone(), canister);
            registry.reindex(&id);
        }
        Ok(())
    }

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

    /// The replicated state now, for a checkpoint that covers
    /// `covered_journals`.
    fn checkpoint_snapshot(&self, covered_journals: Vec<PathBuf>) -> Snapshot {
        let history = self
            .exec
            .history
            .lock()
            .expect("history lock")
            .shared_entries();
        let registry = self.exec.registry.read().expect("registry lock");
        let scheduler = self.exec.scheduler_policy.read().expect("policy lock");
        let consensus = self.exec.consensus_change.lock().expect("consensus lock");
        Snapshot {
            round: registry.round,
            time_nanos: registry.time_nanos,
            next_index: registry.next_index,
            canisters: registry.canisters.clone(),
            scheduler_policy: scheduler.as_ref().map(|(hash, _)| hash.clone()),
            consensus_policy: consensus.clone(),
            history,
            covered_journals,
        }
    }

    /// Whether the node checkpoints after `round`: at multiples of the
    /// checkpoint interval, so every replica aborts paused executions at
    /// the same rounds, whenever each one started or restarted.
    fn is_checkpoint_round(&self, round: u64) -> bool {
        round.is_multiple_of(self.options.checkpoint_interval.max(1))
    }

    /// Writes a checkpoint now unless an execution is paused (a checkpoint
    /// would abort it at a round the other replicas do not): for a node
    /// that stops, a shorter replay when it starts again. Returns whether
    /// it wrote one.
    pub fn checkpoint_if_settled(&self) -> anyhow::Result<bool> {
        let mut writer = self.writer.lock().expect("writer lock");
        if !self.exec.paused.lock().expect("paused lock").is_empty() {
            return Ok(false);
        }
        self.checkpoint_locked(&mut writer)?;
        Ok(true)
    }

    /// What the last durable checkpoint wrote.
    pub fn last_checkpoint(&self) -> CheckpointStats {
        self.checkpoints.last()
    }

    /// Writes a checkpoint now and starts a new journal; returns once the
    /// checkpoint is durable.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        self.start_checkpoint()?;
        self.wait_for_checkpoint().map(drop)
    }

    /// Starts a checkpoint now, as a checkpoint round does: the state is
    /// snapshotted and a new journal started at once, and the checkpoint is
    /// written in the background ([`Node::wait_for_checkpoint`]).
    pub fn start_checkpoint(&self) -> anyhow::Result<()> {
        let mut writer = self.writer.lock().expect("writer lock");
        self.checkpoint_locked(&mut writer)
    }

    /// Waits until the checkpoint being written, if any, is durable and
    /// its store flushed (nothing is written in the background afterwards),
    /// and returns what it wrote.
    pub fn settle_checkpoint(&self) -> anyhow::Result<CheckpointStats> {
        self.checkpoints.settle()
    }

    /// Waits until the checkpoint being written, if any, is durable and
    /// flushed, and then up to `limit` for the store's compactions to end;
    /// returns whether they did.
    pub fn quiesce_checkpoints(&self, limit: std::time::Duration) -> anyhow::Result<bool> {
        self.checkpoints.quiesce(limit)
    }

    /// Waits until the checkpoint being written, if any, is durable, and
    /// returns what it wrote.
    pub fn wait_for_checkpoint(&self) -> anyhow::Result<CheckpointStats> {
        self.checkpoints.wait()
    }

    /// Aborts paused executions, snapshots the state for a checkpoint
    /// written in the background and starts the next journal; the journals
    /// before it are deleted once the checkpoint is durable.
    fn checkpoint_locked(&self, writer: &mut Option<Writer>) -> anyhow::Result<()> {
        self.exec.abort_paused(None);
        let round = self.exec.registry.read().expect("registry lock").round;
        let new_path = journal_path(&self.state_dir, round + 1);
        let covered = journal_files(&self.state_dir)?
            .into_iter()
            .filter(|path| *path != new_path)
            .collect();
        let snapshot = self.checkpoint_snapshot(covered);
        let journal = Journal::open(&new_path, self.options.durability)?;
        *writer = Some(Writer { journal });
        self.checkpoints.start(snapshot);
        Ok(())
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

    /// Puts `op` into the ingress pool and waits for its answer, driving
    /// rounds while there is work and nobody else drives them.
    fn submit(&self, caller: &Principal, op: Op) -> Result<Applied, NodeError> {
        if self.replica.is_on() {
            return self.submit_replicated(caller, op);
        }
        let (reply, answer) = mpsc::channel();
        self.pending.lock().expect("pending lock").push(Pending {
            ingress: Ingress {
                caller: caller.clone(),
                op,
                request: CURRENT_REQUEST.with(|c| c.borrow().clone()),
            },
            reply,
        });
        let deadline = Instant::now() + self.options.reply_timeout;
        loop {
            if let Ok(result) = answer.try_recv() {
                return result;
            }
            let ran = {
                let mut writer = self.writer.lock().expect("writer lock");
                if let Ok(result) = answer.try_recv() {
                    return result;
                }
                if self.has_work() {
                    self.run_round_locked(&mut writer)?;
                    true
                } else {
                    false
                }
            };
            if ran {
                continue;
            }
            // Nothing to run here: the answer waits for something else (a
            // timer, a deferred reply). Wait for a round that brings it.
            match answer.recv_timeout(Duration::from_millis(20)) {
                Ok(result) => return result,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(NodeError::BadRequest(format!(
                        "no answer within {:?}; the message is still waiting (for example \
                         for a deferred reply)",
                        self.options.reply_timeout
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(NodeError::Internal(anyhow::anyhow!(
                        "the request was dropped without an answer"
                    )));
                }
            }
        }
    }

    /// Whether a round has something to do now: requests in the pool,
    /// messages in input queues, or timers due.
    fn has_work(&self) -> bool {
        if !self.pending.lock().expect("pending lock").is_empty()
            || !self.exec.paused.lock().expect("paused lock").is_empty()
        {
            return true;
        }
        let registry = self.exec.registry.read().expect("registry lock");
        if !registry.active.is_empty() {
            return true;
        }
        let now = now_nanos().max(registry.time_nanos + 1);
        // A full ingress history refuses new requests, so a node with
        // nothing else to do runs a round once the history can make room.
        {
            let history = self.exec.history.lock().expect("history lock");
            if history.is_full() && history.prune_due(now) {
                return true;
            }
        }
        registry.timed.iter().any(|id| {
            registry
                .canisters
                .get(id)
                .is_some_and(|c| c.state.timers.values().any(|t| t.at_nanos <= now))
        })
    }

    /// Runs one round when there is work. Returns whether it ran one.
    /// Nodes started with [`crate::start`] call this periodically so that
    /// timers fire and queued messages drain without new requests.
    pub fn tick(&self) -> Result<bool, NodeError> {
        if self.replica.is_on() {
            return Ok(false);
        }
        let mut writer = self.writer.lock().expect("writer lock");
        if !self.has_work() {
            return Ok(false);
        }
        self.run_round_locked(&mut writer)?;
        Ok(true)
    }

    /// Runs rounds until there is no work left or `max_rounds` ran; returns
    /// how many ran.
    pub fn run_until_idle(&self, max_rounds: u64) -> Result<u64, NodeError> {
        let mut ran = 0;
        while ran < max_rounds && self.tick()? {
            ran += 1;
        }
        Ok(ran)
    }

    /// The number of the last executed round.
    pub fn round(&self) -> u64 {
        self.exec.registry.read().expect("registry lock").round
    }

    /// Replica mode: sends `op` to consensus (with the module for an
    /// install) and waits for the finalized batch that answers it.
    fn submit_replicated(&self, caller: &Principal, op: Op) -> Result<Applied, NodeError> {
        let module = match crate::replica_link::attached_hash(&op) {
            Some(hash) => Some(
                self.read_module(hash)
                    .map_err(|e| NodeError::Internal(e.into()))?,
            ),
            None => None,
        };
        let ingress = Ingress {
            caller: caller.clone(),
            op,
            request: CURRENT_REQUEST.with(|c| c.borrow().clone()),
        };
        let answer = self.replica.submit(&ingress, module)?;
        match answer.recv_timeout(self.options.reply_timeout) {
            Ok(result) => result,
            Err(_) => Err(NodeError::BadRequest(format!(
                "no finalized answer within {:?}; the message may still execute",
                self.options.reply_timeout
            ))),
        }
    }

    /// Replica mode: journals and executes the finalized batch at `height`
    /// (the round number) with the block's time; `items` are the payload's
    /// ingress (message id, content). Answers the local callers waiting for
    /// those ids. Heights already executed (a restart replaying) are
    /// skipped; returns whether the batch ran.
    pub fn apply_finalized(
        &self,
        height: u64,
        time_nanos: u64,
        items: &[([u8; 32], Vec<u8>)],
    ) -> Result<bool, NodeError> {
        let mut writer = self.writer.lock().expect("writer lock");
        let (round, last_time) = {
            let registry = self.exec.registry.read().expect("registry lock");
            (registry.round, registry.time_nanos)
        };
        if height <= round {
            return Ok(false);
        }
        if height != round + 1 {
            return Err(NodeError::Internal(anyhow::anyhow!(
                "finalized height {height} does not follow the executed round {round}: \
                 state sync is needed"
            )));
        }
        let time = time_nanos.max(last_time + 1);
        // Undecodable content, and requests whose signature does not hold,
        // are skipped on every replica alike. The block's signatures are
        // checked together (one batch; see `auth::check_all`).
        let claimed: Vec<_> = items
            .iter()
            .filter_map(|(id, content)| {
                let decoded = crate::replica_link::decode_request(content)?;
                let claim = crate::replica_link::claim_request(id, content, &decoded);
                Some((id, decoded, claim))
            })
            .collect();
        let pending: Vec<_> = claimed
            .iter()
            .filter_map(|(_, _, claim)| claim.as_ref().ok()?.as_ref()?.signature())
            .collect();
        let mut holds = crate::auth::check_all(&pending).into_iter();
        let mut ingress = Vec::new();
        for (id, decoded, claim) in claimed {
            let checked = claim.and_then(|claim| {
                let signed = claim.as_ref().is_some_and(|c| c.signature().is_some());
                let holds = !signed || holds.next().expect("one result per signature");
                crate::replica_link::settle_request(claim, holds, &decoded, time)
            });
            let verified = match checked {
                Ok(verified) => verified,
                Err(reason) => {
                    tracing::warn!(height, "skipped a request: {reason}");
                    self.replica.refuse(id, reason);
                    continue;
                }
            };
            // The id its fate is recorded under: derived here, from what
            // the item carries, never taken from the sending replica.
            let tag = match crate::replica_link::request_tag(&decoded, verified.as_ref(), time) {
                Ok(tag) => tag,
                Err(reason) => {
                    tracing::warn!(height, "skipped a request: {reason}");
                    self.replica.refuse(id, reason);
                    continue;
                }
            };
            let crate::replica_link::Decoded {
                ingress: mut request,
                attachment,
                ..
            } = decoded;
            // The module or chunk a request names comes with it; one that
            // does not is skipped on every replica alike (whatever this
            // replica happens to have stored).
            if let Some(hash) = crate::replica_link::attached_hash(&request.op) {
                match crate::replica_link::check_attachment(&request.op, hash, attachment) {
                    Ok(bytes) => self.store_module(hash, &bytes)?,
                    Err(reason) => {
                        tracing::warn!(height, "skipped a request: {reason}");
                        self.replica.refuse(id, reason);
                        continue;
                    }
                }
            }
            let index = IngressId {
                round: height,
                index: ingress.len() as u32,
            };
            self.replica.expect(index, id);
            request.request = tag;
            ingress.push(request);
        }
        let record = Record {
            round: height,
            time_nanos: time,
            ingress,
        };
        let w = writer.as_mut().expect("journal open");
        w.journal.append(&record).map_err(NodeError::Internal)?;
        let answered = self.exec.execute_round(&record);
        for (index, result) in answered {
            self.replica.answer(index, result);
        }
        if self.is_checkpoint_round(height) {
            self.checkpoint_locked(&mut writer)?;
        }
        Ok(true)
    }

    /// Switches the node to replica mode: requests go to `sink` (which
    /// hands them to consensus and returns the ingress message id) and
    /// rounds run only through [`Node::apply_finalized`].
    pub fn set_replica_sink(&self, sink: crate::replica_link::IngressSink) {
        self.replica.turn_on(sink);
    }

    /// How long a caller waits for an update's answer before it gives up
    /// waiting (the message may still execute).
    pub fn reply_timeout(&self) -> Duration {
        self.options.reply_timeout
    }

    /// Whether the node runs as a replica of a subnet.
    pub fn is_replica(&self) -> bool {
        self.replica.is_on()
    }

    /// Takes a batch from the pool, journals it and executes the round;
    /// answers every request the round finished.
    fn run_round_locked(&self, writer: &mut Option<Writer>) -> Result<(), NodeError> {
        let taken: Vec<Pending> = {
            let mut pending = self.pending.lock().expect("pending lock");
            let n = pending.len().min(self.options.max_batch);
            pending.drain(..n).collect()
        };
        let record = {
            let registry = self.exec.registry.read().expect("registry lock");
            Record {
                round: registry.round + 1,
                time_nanos: now_nanos().max(registry.time_nanos + 1),
                ingress: taken.iter().map(|p| p.ingress.clone()).collect(),
            }
        };
        let w = writer.as_mut().expect("journal open");
        if let Err(e) = w.journal.append(&record) {
            for p in taken {
                let _ = p
                    .reply
                    .send(Err(NodeError::Internal(anyhow::anyhow!("{e:#}"))));
            }
            return Err(NodeError::Internal(e));
        }
        {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            for (index, p) in taken.into_iter().enumerate() {
                let id = IngressId {
                    round: record.round,
                    index: index as u32,
                };
                waiters.insert(id, p.reply);
            }
        }
        let answered = self.exec.execute_round(&record);
        {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            for (id, result) in answered {
                if let Some(reply) = waiters.remove(&id) {
                    let _ = reply.send(result);
                }
            }
        }
        if self.is_checkpoint_round(record.round) {
            self.checkpoint_locked(writer)?;
        }
        Ok(())
    }

    /// Refuses early a request the round would refuse anyway. A replica
    /// cannot: its state may lag the subnet's (the canister may have been
    /// created at a height it has not executed yet), so there the checks
    /// run only at execution, alike on every replica.
    fn check_controller(&self, caller: &Principal, id: &Principal) -> Result<(), NodeError> {
        if self.replica.is_on() {
            return Ok(());
        }
        let registry = self.exec.registry.read().expect("registry lock");
        let canister = registry
            .canisters
            .get(id)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
        if !canister.is_controller(caller) {
            return Err(NodeError::NotController {
                caller: caller.to_text(),
                canister: id.to_text(),
            });
        }
        Ok(())
    }

    /// Refuses early a request to a canister that does not exist (on a
    /// replica the round decides: see `check_controller`).
    fn check_exists(&self, id: &Principal) -> Result<(), NodeError> {
        if self.replica.is_on()
            || self
                .exec
                .registry
                .read()
                .expect("registry lock")
                .canisters
                .contains_key(id)
        {
            return Ok(());
        }
        Err(NodeError::NotFound(id.to_text()))
    }

    /// Creates an empty canister controlled by `controllers` (or the caller).
    pub fn create(
        &self,
        caller: &Principal,
        controllers: Vec<Principal>,
    ) -> Result<Principal, NodeError> {
        let controllers = if controllers.is_empty() {
            vec![caller.clone()]
        } else {
            controllers
        };
        match self.submit(caller, Op::Create { controllers })? {
            Applied::Created(id) => Ok(id),
            _ => unreachable!("create answers with an id"),
        }
    }

    /// Creates a canister (controlled by `controllers`, or the caller when
    /// empty) with the component `wasm` installed, as one request: the
    /// canister exists only if the install succeeds.
    pub fn create_with_module(
        &self,
        caller: &Principal,
        controllers: Vec<Principal>,
        wasm: &[u8],
        arg: Option<String>,
    ) -> Result<CanisterStatus, NodeError> {
        let controllers = if controllers.is_empty() {
            vec![caller.clone()]
        } else {
            controllers
        };
        let module_hash = self.check_and_store_module(wasm)?;
        let op = Op::CreateWithModule {
            controllers,
            module_hash,
            arg,
        };
        match self.submit(caller, op)? {
            Applied::Status(status) => Ok(status),
            _ => unreachable!("create with a module answers with a status"),
        }
    }

    /// Loads the component `wasm` (refusing what does not load) and stores
    /// it under its hash, which it returns.
    fn check_and_store_module(&self, wasm: &[u8]) -> Result<String, NodeError> {
        let module_hash = self.exec.cache.load(wasm)?.hash_hex();
        self.store_module(&module_hash, wasm)?;
        Ok(module_hash)
    }

    /// Installs, reinstalls or upgrades the canister's code.
    pub fn install(
        &self,
        caller: &Principal,
        id: &Principal,
        mode: InstallMode,
        wasm: &[u8],
        arg: Option<String>,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        let module_hash = self.check_and_store_module(wasm)?;
        let op = Op::Install {
            id: id.clone(),
            mode,
            module_hash,
            arg,
        };
        match self.submit(caller, op)? {
            Applied::Status(status) => Ok(status),
            _ => unreachable!("install answers with a status"),
        }
    }

    /// Runs an update call through a round.
    pub fn update(
        &self,
        caller: &Principal,
        id: &Principal,
        method: &str,
        args: Args,
    ) -> Result<CallOutcome, NodeError> {
        // Unknown canisters are request errors; they never reach the journal.
        self.check_exists(id)?;
        let op = Op::Call {
            id: id.clone(),
            method: method.to_string(),
            args,
        };
        match self.submit(caller, op)? {
            Applied::Call(outcome) => Ok(outcome),
            _ => unreachable!("a call answers with an outcome"),
        }
    }

    /// Submits an update and returns without waiting where it can: in
    /// replica mode the request goes to consensus and `done` runs with the
    /// answer once a finalized batch executed it (on the thread executing
    /// batches: `done` must be quick); a single node runs it as
    /// [`Node::update`] does, then calls `done`. So a replica's HTTP
    /// workers are not held while consensus orders their updates. `done`
    /// always runs once, with the error if the update cannot be submitted.
    pub fn submit_update(
        &self,
        caller: &Principal,
        id: &Principal,
        method: &str,
        args: Args,
        done: impl FnOnce(Result<CallOutcome, NodeError>) + Send + 'static,
    ) {
        if !self.replica.is_on() {
            done(self.update(caller, id, method, args));
            return;
        }
        if let Err(e) = self.check_exists(id) {
            done(Err(e));
            return;
        }
        let ingress = Ingress {
            caller: caller.clone(),
            op: Op::Call {
                id: id.clone(),
                method: method.to_string(),
                args,
            },
            request: CURRENT_REQUEST.with(|c| c.borrow().clone()),
        };
        let waiter: crate::replica_link::Waiter =
            Box::new(move |result| done(result.and_then(Applied::into_call)));
        if let Err((e, waiter)) = self.replica.submit_then(&ingress, None, waiter) {
            waiter(Err(e));
        }
    }

    /// Runs a query against the last committed state; its changes are
    /// discarded. A composite query method (see `composite.rs`) runs with
    /// the queries it calls, all against the same committed state.
    pub fn query(
        &self,
        caller: &Principal,
        id: &Principal,
        method: &str,
        args: Args,
    ) -> Result<CallOutcome, NodeError> {
        let (canister, round, time_nanos) = {
            let registry = self.exec.registry.read().expect("registry lock");
            let canister = registry
                .canisters
                .get(id)
                .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
            (canister.clone(), registry.round, registry.time_nanos)
        };
        let seed = random_seed("query", round, id, 0);
        let resolved = match self.exec.resolve_call(
            &canister,
            method,
            &to_call_args(&args),
            MessageKind::Query,
        ) {
            Ok(r) => r,
            Err(reject) => {
                return Ok(CallOutcome {
                    result: Err(reject),
                    instructions: 0,
                });
            }
        };
        if resolved.kind == MessageKind::CompositeQuery {
            let (result, instructions) =
                self.exec
                    .composite_query(caller, id, method, &to_call_args(&args));
            return Ok(CallOutcome {
                result,
                instructions,
            });
        }
        let ctx = message_context(
            &canister,
            caller,
            &resolved.method.function,
            MessageKind::Query,
            (round, time_nanos, seed),
            &canister.state,
        );
        let outcome = execute(
            &resolved.code,
            &canister.state,
            &resolved.method,
            &resolved.params,
            ctx,
            &self.options.limits,
        );
        Ok(CallOutcome {
            result: outcome.result,
            instructions: outcome.instructions,
        })
    }

    /// Stops a canister: calls are rejected until it is started.
    pub fn stop(&self, caller: &Principal, id: &Principal) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        self.status_op(caller, Op::Stop { id: id.clone() })
    }

    /// Starts a stopped canister.
    pub fn start(&self, caller: &Principal, id: &Principal) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        self.status_op(caller, Op::Start { id: id.clone() })
    }

    /// Deletes a canister and its state.
    pub fn delete(&self, caller: &Principal, id: &Principal) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        self.status_op(caller, Op::Delete { id: id.clone() })
    }

    /// Replaces the controllers.
    pub fn set_controllers(
        &self,
        caller: &Principal,
        id: &Principal,
        controllers: Vec<Principal>,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        if controllers.is_empty() {
            return Err(NodeError::BadRequest(
                "a canister needs at least one controller".into(),
            ));
        }
        self.status_op(
            caller,
            Op::SetControllers {
                id: id.clone(),
                controllers,
            },
        )
    }

    fn status_op(&self, caller: &Principal, op: Op) -> Result<CanisterStatus, NodeError> {
        match self.submit(caller, op)? {
            Applied::Status(status) => Ok(status),
            _ => unreachable!("answers with a status"),
        }
    }

    /// Adds `amount` cycles to a canister's balance. Anyone may (cycles are
    /// minted on a local node); a frozen canister runs again once its
    /// balance is above the freezing threshold.
    pub fn top_up(
        &self,
        caller: &Principal,
        id: &Principal,
        amount: u64,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_exists(id)?;
        self.status_op(
            caller,
            Op::TopUp {
                id: id.clone(),
                amount,
            },
        )
    }

    /// Sets the percentage of every round's instructions guaranteed to the
    /// canister. The allocations of all canisters add up to at most 100.
    pub fn set_compute_allocation(
        &self,
        caller: &Principal,
        id: &Principal,
        percent: u8,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        self.status_op(
            caller,
            Op::SetComputeAllocation {
                id: id.clone(),
                percent,
            },
        )
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
