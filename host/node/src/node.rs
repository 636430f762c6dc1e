//! The node: canisters, their lifecycle, and the requests that drive rounds.
//!
//! Every state-changing request waits in the ingress pool until the next
//! round takes it into its batch. The batch becomes a journal [`Record`],
//! appended durably before the round executes (see `round.rs`), so a crash
//! loses nothing that was acknowledged, and restart replays the records
//! after the last checkpoint. Rounds run one at a time, driven by whichever
//! caller holds the writer lock (requests that arrive together share a
//! round) or by [`Node::tick`]; queries run concurrently against the last
//! committed state and never block rounds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cellar_engine::{
    CallArgs, CanisterCode, CodeCache, ExecutionState, Hook, InstallError, Limits, MessageContext,
    MessageKind, MethodKind, SchedulerPolicy, Val, decode_args, execute,
};
use cellar_types::api::{
    Args, CanisterStatus, InstallMode, InterfaceInfo, LogEntry, MethodInfo, NodeStatus, PolicyInfo,
    ReadState, RequestStatus, RunStatus,
};
use cellar_types::{Principal, Reject, RejectCode};
use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use cellar_state::canister::Canister;
use cellar_state::checkpoint::{CheckpointStats, Checkpointer};
use cellar_state::checkpoint_writer::{CheckpointWriter, Snapshot};
use cellar_state::history::{HistoryLimits, IngressHistory};
use cellar_state::journal::{Durability, Ingress, Journal, Op, Record, RequestTag, read_records};
use cellar_state::messages::IngressId;
use cellar_state::registry::Registry;
use cellar_state::state_hash::StateSnapshot;

mod chunks;
mod sync;
pub(crate) use chunks::check_chunk_size;
pub use sync::{Certified, Staging, SyncSource};

/// Why a request could not be carried out (as opposed to a message that ran
/// and was rejected, which is a [`CallOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No such canister.
    #[error("canister {0} does not exist")]
    NotFound(String),
    /// The caller does not control the canister.
    #[error("{caller} is not a controller of canister {canister}")]
    NotController {
        /// Who asked.
        caller: String,
        /// The canister.
        canister: String,
    },
    /// The request is malformed or not possible in the canister's state.
    #[error("{0}")]
    BadRequest(String),
    /// The request's signature does not hold (checked by every replica).
    #[error("the request was refused: {0}")]
    Unauthorized(String),
    /// The module cannot be installed.
    #[error("{0}")]
    Install(#[from] InstallError),
    /// A lifecycle hook failed; nothing changed.
    #[error("{hook} failed, nothing was changed: {reject}")]
    HookFailed {
        /// The hook's name.
        hook: &'static str,
        /// Why.
        reject: Reject,
    },
    /// The node cannot take the request now (the ingress history is
    /// full); the same request may succeed later.
    #[error("{0}")]
    Overloaded(String),
    /// Something went wrong inside the node.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// The result of a call that reached a canister.
#[derive(Clone, Debug)]
pub struct CallOutcome {
    /// The reply values or the reject.
    pub result: Result<Vec<Val>, Reject>,
    /// Instructions executed.
    pub instructions: u64,
}

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

/// What a request answers with.
pub(crate) enum Applied {
    Policy,
    Created(Principal),
    Status(CanisterStatus),
    Call(CallOutcome),
    /// A chunk store's hashes after an upload or a clear.
    Chunks(Vec<String>),
}

impl Applied {
    /// The chunk store's hashes of an upload's or clear's answer.
    pub(crate) fn into_chunks(self) -> Result<Vec<String>, NodeError> {
        match self {
            Applied::Chunks(hashes) => Ok(hashes),
            _ => Err(NodeError::Internal(anyhow::anyhow!(
                "a chunk request answered with something else than the chunk store"
            ))),
        }
    }

    /// The outcome of a call's answer (anything else is a bug, reported
    /// as an internal error).
    pub(crate) fn into_call(self) -> Result<CallOutcome, NodeError> {
        match self {
            Applied::Call(outcome) => Ok(outcome),
            _ => Err(NodeError::Internal(anyhow::anyhow!(
                "a call answered with something else than a call's result"
            ))),
        }
    }
}

/// Where a management request executes: its round, the round's time, its
/// sender and its position in the batch.
pub(crate) struct Step<'a> {
    pub(crate) round: u64,
    pub(crate) time_nanos: u64,
    pub(crate) caller: &'a Principal,
    pub(crate) sequence: u64,
}

/// A method resolved for a message, with its decoded arguments.
pub(crate) struct ResolvedCall {
    pub(crate) code: Arc<CanisterCode>,
    pub(crate) method: cellar_engine::Method,
    pub(crate) params: Vec<Val>,
    pub(crate) kind: MessageKind,
}

/// A single node with its canisters.
pub struct Node {
    pub(crate) options: NodeOptions,
    cache: CodeCache,
    modules_dir: PathBuf,
    state_dir: PathBuf,
    writer: Mutex<Option<Writer>>,
    pub(crate) registry: RwLock<Registry>,
    /// The scheduler policy in force (module hash and component); none:
    /// the built-in default. Replicated state.
    pub(crate) scheduler_policy: RwLock<Option<(String, SchedulerPolicy)>>,
    /// The last round in which the policy failed, and why.
    pub(crate) last_policy_fallback: Mutex<Option<(u64, String)>>,
    /// Replica mode: the consensus policy in force, for `policy_info`.
    pub(crate) consensus_policy: Mutex<Option<String>>,
    /// Replica mode: the last consensus-policy change executed (from
    /// height, module hash), replicated state kept in checkpoints.
    pub(crate) consensus_change: Mutex<Option<(u64, String)>>,
    /// Consensus-policy changes executed and not yet taken by the replica
    /// task.
    pub(crate) consensus_changes: Mutex<Vec<(u64, String)>>,
    /// Long executions paused between rounds, by canister (not persisted:
    /// see `round.rs`).
    pub(crate) paused: Mutex<BTreeMap<Principal, crate::round::PausedMessage>>,
    /// Paused executions aborted since the node opened.
    pub(crate) aborted_executions: std::sync::atomic::AtomicU64,
    /// Ingress messages answered by a management request of the round
    /// being executed (the queue of a deleted canister), for the round to
    /// hand to their waiters.
    pub(crate) orphans: Mutex<crate::round::Answered>,
    /// Requests waiting for the next round.
    pending: Mutex<Vec<Pending>>,
    /// Requests inducted into a round and not answered yet.
    waiters: Mutex<BTreeMap<IngressId, mpsc::Sender<Result<Applied, NodeError>>>>,
    checkpoints: CheckpointWriter,
    fresh: bool,
    /// Replica mode (see `replica.rs`): where requests go instead of the
    /// local pool, and who waits for which ingress message id.
    replica: crate::replica::ReplicaLink,
    /// The ingress history: the fate of every request a round inducted
    /// with an id (replicated state, in checkpoints and the state hash,
    /// rebuilt by replay).
    pub(crate) history: Mutex<IngressHistory>,
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

/// Stores a module as `<module_hash>.wasm` in `modules_dir`, durably (file
/// and name), unless it is there.
fn store_module_file(modules_dir: &Path, module_hash: &str, wasm: &[u8]) -> anyhow::Result<()> {
    let path = modules_dir.join(format!("{module_hash}.wasm"));
    if path.exists() {
        return Ok(());
    }
    // Concurrent stores of one module each write their own file.
    static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("wasm.{n}.tmp"));
    std::fs::write(&tmp, wasm)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all())?;
    std::fs::rename(&tmp, &path)?;
    // The journal record naming the module follows: the module's name
    // must be as durable as the record.
    std::fs::File::open(modules_dir).and_then(|d| d.sync_all())?;
    Ok(())
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

/// The seed of a message's random tape: a function of the round, the
/// canister and the message's sequence number in it.
pub(crate) fn random_seed(
    domain: &str,
    round: u64,
    canister: &Principal,
    sequence: u64,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"cellar-random-tape\0");
    hasher.update(domain.as_bytes());
    hasher.update(round.to_le_bytes());
    hasher.update(canister.as_bytes());
    hasher.update(sequence.to_le_bytes());
    hasher.finalize().into()
}

/// Decodes a hook argument list; `(a, b)` is accepted for `a, b`.
fn decode_hook_arg(arg: &str, method: &cellar_engine::Method) -> Result<Vec<Val>, String> {
    let arg = arg.trim();
    decode_args(&CallArgs::Wave(arg.to_string()), method).or_else(|first| {
        match arg.strip_prefix('(').and_then(|a| a.strip_suffix(')')) {
            Some(inner) => decode_args(&CallArgs::Wave(inner.to_string()), method),
            None => Err(first),
        }
    })
}

/// The context of a message to `canister` in the round `(round, time,
/// seed)`, seeing the certified data of `state`. Ingress carries no cycles;
/// the caller of this sets `cycles_attached` and the reply token for
/// messages that have them.
pub(crate) fn message_context(
    canister: &Canister,
    caller: &Principal,
    method: &str,
    kind: MessageKind,
    (round, time_nanos, random_seed): (u64, u64, [u8; 32]),
    state: &ExecutionState,
) -> MessageContext {
    MessageContext {
        canister_id: canister.id.clone(),
        caller: caller.clone(),
        method: method.to_string(),
        kind,
        cycles_attached: 0,
        cycle_balance: canister.cycles,
        time_nanos,
        round,
        controllers: canister.controllers.clone(),
        certified_data: state.certified_data.clone(),
        random_seed,
        context_id: canister.messaging.next_context_id,
        open_contexts: canister.messaging.open_contexts.keys().copied().collect(),
    }
}

pub(crate) fn to_call_args(args: &Args) -> CallArgs {
    match args {
        Args::Wave(text) => CallArgs::Wave(text.clone()),
        Args::Json(json) => CallArgs::Json(json.clone()),
    }
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
        let mut node = Node {
            options,
            cache,
            modules_dir,
            state_dir,
            checkpoints,
            writer: Mutex::new(None),
            registry: RwLock::new(Registry {
                canisters: BTreeMap::new(),
                next_index: 0,
                round: 0,
                time_nanos: 0,
                active: BTreeSet::new(),
                timed: BTreeSet::new(),
            }),
            scheduler_policy: RwLock::new(None),
            last_policy_fallback: Mutex::new(None),
            consensus_policy: Mutex::new(None),
            consensus_change: Mutex::new(None),
            consensus_changes: Mutex::new(Vec::new()),
            paused: Mutex::new(BTreeMap::new()),
            aborted_executions: std::sync::atomic::AtomicU64::new(0),
            orphans: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            waiters: Mutex::new(BTreeMap::new()),
            fresh: true,
            replica: crate::replica::ReplicaLink::default(),
            history: Mutex::new(IngressHistory::new(HistoryLimits::default())),
        };
        *node.history.lock().expect("history lock") =
            IngressHistory::new(node.options.ingress_history);
        node.recover()?;
        tracing::debug!(
            store_ms = store_opened.as_millis() as u64,
            total_ms = opened.elapsed().as_millis() as u64,
            "node opened"
        );
        Ok(node)
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
            let mut registry = self.registry.write().expect("registry lock");
            registry.round = loaded.round;
            registry.time_nanos = loaded.time_nanos;
            registry.next_index = loaded.next_index;
            *self.consensus_change.lock().expect("consensus lock") =
                loaded.consensus_policy.clone();
            if let Some(hash) = &loaded.scheduler_policy {
                let policy = self.load_policy(hash)?;
                *self.scheduler_policy.write().expect("policy lock") = Some((hash.clone(), policy));
            }
            *self.history.lock().expect("history lock") =
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
                let round = self.registry.read().expect("registry lock").round;
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
                for (_, result) in self.execute_round(&record) {
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
                    self.abort_paused(None);
                    self.checkpoints.start(self.checkpoint_snapshot(Vec::new()));
                    self.checkpoints.wait()?;
                    checkpointed = Some(record.round);
                    tail.clear();
                } else if checkpointed.is_some() {
                    tail.push(record);
                }
            }
        }
        let round = self.registry.read().expect("registry lock").round;
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
                canister.code = Some(self.load_module(&hash)?);
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
        let history = self.history.lock().expect("history lock");
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
        self.history
            .lock()
            .expect("history lock")
            .status(id, caller)
    }

    /// Whether request `id` is in the ingress history (inducted, and not
    /// yet forgotten): it is never executed again.
    pub fn knows_request(&self, id: &str) -> bool {
        self.history.lock().expect("history lock").contains(id)
    }

    /// Whether the ingress history is full: new requests are refused.
    pub fn ingress_history_full(&self) -> bool {
        self.history.lock().expect("history lock").is_full()
    }

    /// Entries and result bytes of the ingress history.
    pub fn ingress_history_size(&self) -> (usize, u64) {
        let history = self.history.lock().expect("history lock");
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
        let history = self.history.lock().expect("history lock").shared_entries();
        let registry = self.registry.read().expect("registry lock");
        let scheduler = self.scheduler_policy.read().expect("policy lock");
        let consensus = self.consensus_change.lock().expect("consensus lock");
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
        if !self.paused.lock().expect("paused lock").is_empty() {
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
        self.abort_paused(None);
        let round = self.registry.read().expect("registry lock").round;
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

    fn load_policy(&self, hash: &str) -> anyhow::Result<SchedulerPolicy> {
        let path = self.modules_dir.join(format!("{hash}.wasm"));
        let wasm = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read policy {}: {e}", path.display()))?;
        SchedulerPolicy::from_component(self.cache.engine(), &wasm)
            .map_err(|e| anyhow::anyhow!("stored policy {hash} no longer loads: {e}"))
    }

    /// Stores a module under `modules/` by its hash, durably, before a
    /// journal record names it.
    fn store_module(&self, module_hash: &str, wasm: &[u8]) -> anyhow::Result<()> {
        store_module_file(&self.modules_dir, module_hash, wasm)
    }

    /// Replica mode: replaces the subnet's consensus policy with the
    /// component `wasm` (checked first), through consensus: every replica
    /// switches at the height the request executes at plus
    /// [`crate::replica::CONSENSUS_POLICY_LAG`]. Signed callers only.
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
        cellar_engine::WasmConsensusPolicy::from_component(self.cache.engine(), wasm)
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
        std::mem::take(&mut *self.consensus_changes.lock().expect("consensus lock"))
    }

    /// Replica mode: the last consensus-policy change in the replicated
    /// state (from height, module hash).
    pub(crate) fn consensus_change(&self) -> Option<(u64, String)> {
        self.consensus_change
            .lock()
            .expect("consensus lock")
            .clone()
    }

    /// Reads a stored module (a consensus-policy component).
    pub(crate) fn read_module(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.modules_dir.join(format!("{hash}.wasm")))
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
                let policy = SchedulerPolicy::from_component(self.cache.engine(), wasm)
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
            .scheduler_policy
            .read()
            .expect("policy lock")
            .as_ref()
            .map(|(hash, _)| hash.clone());
        let last_fallback = self
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

    fn load_module(&self, hash: &str) -> anyhow::Result<Arc<CanisterCode>> {
        let path = self.modules_dir.join(format!("{hash}.wasm"));
        let wasm = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read module {}: {e}", path.display()))?;
        self.cache
            .load(&wasm)
            .map_err(|e| anyhow::anyhow!("stored module {hash} no longer loads: {e}"))
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
            || !self.paused.lock().expect("paused lock").is_empty()
        {
            return true;
        }
        let registry = self.registry.read().expect("registry lock");
        if !registry.active.is_empty() {
            return true;
        }
        let now = now_nanos().max(registry.time_nanos + 1);
        // A full ingress history refuses new requests, so a node with
        // nothing else to do runs a round once the history can make room.
        {
            let history = self.history.lock().expect("history lock");
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
        self.registry.read().expect("registry lock").round
    }

    /// Replica mode: sends `op` to consensus (with the module for an
    /// install) and waits for the finalized batch that answers it.
    fn submit_replicated(&self, caller: &Principal, op: Op) -> Result<Applied, NodeError> {
        let module = match crate::replica::attached_hash(&op) {
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
            let registry = self.registry.read().expect("registry lock");
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
                let decoded = crate::replica::decode_request(content)?;
                let claim = crate::replica::claim_request(id, content, &decoded);
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
                crate::replica::settle_request(claim, holds, &decoded, time)
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
            let tag = match crate::replica::request_tag(&decoded, verified.as_ref(), time) {
                Ok(tag) => tag,
                Err(reason) => {
                    tracing::warn!(height, "skipped a request: {reason}");
                    self.replica.refuse(id, reason);
                    continue;
                }
            };
            let crate::replica::Decoded {
                ingress: mut request,
                attachment,
                ..
            } = decoded;
            // The module or chunk a request names comes with it; one that
            // does not is skipped on every replica alike (whatever this
            // replica happens to have stored).
            if let Some(hash) = crate::replica::attached_hash(&request.op) {
                match crate::replica::check_attachment(&request.op, hash, attachment) {
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
        let answered = self.execute_round(&record);
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
    pub fn set_replica_sink(&self, sink: crate::replica::IngressSink) {
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
            let registry = self.registry.read().expect("registry lock");
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
        let answered = self.execute_round(&record);
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
        let registry = self.registry.read().expect("registry lock");
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
        let module_hash = self.cache.load(wasm)?.hash_hex();
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
        let waiter: crate::replica::Waiter =
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
            let registry = self.registry.read().expect("registry lock");
            let canister = registry
                .canisters
                .get(id)
                .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
            (canister.clone(), registry.round, registry.time_nanos)
        };
        let seed = random_seed("query", round, id, 0);
        let resolved =
            match self.resolve_call(&canister, method, &to_call_args(&args), MessageKind::Query) {
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
                self.composite_query(caller, id, method, &to_call_args(&args));
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
        let registry = self.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(Canister::status)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }

    /// Every canister's status, by id.
    pub fn list(&self) -> Vec<CanisterStatus> {
        let registry = self.registry.read().expect("registry lock");
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
        let registry = self.registry.read().expect("registry lock");
        StateSnapshot {
            round: registry.round,
            next_index: registry.next_index,
            canisters: registry.canisters.clone(),
            policy: self
                .scheduler_policy
                .read()
                .expect("policy lock")
                .as_ref()
                .map(|(hash, _)| hash.clone()),
            consensus: self.consensus_change(),
            history: self.history.lock().expect("history lock").hash(),
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
        let registry = self.registry.read().expect("registry lock");
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
        let registry = self.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(|c| c.logs.iter().cloned().collect())
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }

    /// The committed execution state of a canister (for tests and tools).
    pub fn execution_state(&self, id: &Principal) -> Result<ExecutionState, NodeError> {
        let registry = self.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(|c| c.state.clone())
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }

    /// Creates an empty canister at the next free index (at the request's
    /// place in the round: concurrent creations get distinct ids, and
    /// replay assigns the same ones).
    fn create_now(&self, controllers: &[Principal]) -> Principal {
        let mut registry = self.registry.write().expect("registry lock");
        let id = Principal::canister(registry.next_index);
        registry.next_index += 1;
        let mut canister = Canister::new(id.clone(), controllers.to_vec());
        canister.cycles = self.options.initial_cycles;
        registry.canisters.insert(id.clone(), canister);
        id
    }

    /// Executes a management request (everything but calls, which go
    /// through input queues) at its place in the round.
    pub(crate) fn apply_management(&self, step: &Step<'_>, op: &Op) -> Result<Applied, NodeError> {
        let caller = step.caller;
        let existing = |id: &Principal| -> Result<Canister, NodeError> {
            self.registry
                .read()
                .expect("registry lock")
                .canisters
                .get(id)
                .cloned()
                .ok_or_else(|| NodeError::NotFound(id.to_text()))
        };
        let controlled = |id: &Principal| -> Result<Canister, NodeError> {
            let canister = existing(id)?;
            if !canister.is_controller(caller) {
                return Err(NodeError::NotController {
                    caller: caller.to_text(),
                    canister: id.to_text(),
                });
            }
            Ok(canister)
        };
        match op {
            Op::Create { controllers } => Ok(Applied::Created(self.create_now(controllers))),
            Op::CreateWithModule {
                controllers,
                module_hash,
                arg,
            } => {
                let id = self.create_now(controllers);
                let installed = (|| {
                    let canister = existing(&id)?;
                    let code = self.load_module(module_hash)?;
                    self.install_code(canister, code, InstallMode::Install, arg.as_deref(), step)
                })();
                match installed {
                    Ok(updated) => Ok(Applied::Status(self.commit(updated))),
                    Err(e) => {
                        let mut registry = self.registry.write().expect("registry lock");
                        registry.canisters.remove(&id);
                        registry.reindex(&id);
                        Err(e)
                    }
                }
            }
            Op::Install {
                id,
                mode,
                module_hash,
                arg,
            } => {
                self.abort_paused(Some(id));
                let canister = controlled(id)?;
                let code = self.load_module(module_hash)?;
                let updated = self.install_code(canister, code, *mode, arg.as_deref(), step)?;
                Ok(Applied::Status(self.commit(updated)))
            }
            Op::InstallChunked {
                id,
                mode,
                chunk_hashes,
                module_hash,
                arg,
            } => {
                self.abort_paused(Some(id));
                let install = chunks::ChunkedInstall {
                    mode: *mode,
                    chunk_hashes,
                    module_hash,
                    arg: arg.as_deref(),
                };
                self.apply_install_chunked(controlled(id)?, install, step)
            }
            Op::UploadChunk { id, hash } => self.apply_upload_chunk(controlled(id)?, hash),
            Op::ClearChunks { id } => Ok(self.apply_clear_chunks(controlled(id)?)),
            Op::Call { .. } => Err(NodeError::Internal(anyhow::anyhow!(
                "calls go through input queues"
            ))),
            Op::Stop { id } | Op::Start { id } => {
                self.abort_paused(Some(id));
                let mut canister = controlled(id)?;
                canister.status = if matches!(op, Op::Stop { .. }) {
                    RunStatus::Stopped
                } else {
                    RunStatus::Running
                };
                Ok(Applied::Status(self.commit(canister)))
            }
            Op::Delete { id } => {
                self.abort_paused(Some(id));
                let canister = controlled(id)?;
                let status = canister.status();
                let mut registry = self.registry.write().expect("registry lock");
                if let Some(deleted) = registry.canisters.remove(id) {
                    let orphans = crate::round::reject_orphans(&mut registry, deleted);
                    self.orphans.lock().expect("orphans lock").extend(orphans);
                }
                registry.reindex(id);
                Ok(Applied::Status(status))
            }
            Op::SetControllers { id, controllers } => {
                let mut canister = controlled(id)?;
                canister.controllers = controllers.clone();
                Ok(Applied::Status(self.commit(canister)))
            }
            Op::SetConsensusPolicy { module_hash } => {
                // (Replica mode is checked at submission: a restart replays
                // this before it turns replica mode on.)
                if step.caller.is_anonymous() {
                    return Err(NodeError::BadRequest(
                        "the anonymous principal cannot change the consensus policy".into(),
                    ));
                }
                let change = (
                    step.round + crate::replica::CONSENSUS_POLICY_LAG,
                    module_hash.clone(),
                );
                *self.consensus_change.lock().expect("consensus lock") = Some(change.clone());
                self.consensus_changes
                    .lock()
                    .expect("consensus lock")
                    .push(change);
                Ok(Applied::Policy)
            }
            Op::SetSchedulerPolicy { module_hash } => {
                let policy = match module_hash {
                    Some(hash) => Some((hash.clone(), self.load_policy(hash)?)),
                    None => None,
                };
                *self.scheduler_policy.write().expect("policy lock") = policy;
                Ok(Applied::Policy)
            }
            Op::TopUp { id, amount } => {
                let mut canister = existing(id)?;
                canister.cycles = canister.cycles.saturating_add(*amount);
                Ok(Applied::Status(self.commit(canister)))
            }
            Op::SetComputeAllocation { id, percent } => {
                let mut canister = controlled(id)?;
                if *percent > 100 {
                    return Err(NodeError::BadRequest(format!(
                        "a compute allocation is a percentage (0 to 100), got {percent}"
                    )));
                }
                let others: u64 = self
                    .registry
                    .read()
                    .expect("registry lock")
                    .canisters
                    .values()
                    .filter(|c| c.id != *id)
                    .map(|c| u64::from(c.messaging.compute_allocation))
                    .sum();
                if others + u64::from(*percent) > 100 {
                    return Err(NodeError::BadRequest(format!(
                        "other canisters hold {others}% of compute; {percent}% more would exceed 100%"
                    )));
                }
                canister.messaging.compute_allocation = *percent;
                Ok(Applied::Status(self.commit(canister)))
            }
        }
    }

    pub(crate) fn commit(&self, canister: Canister) -> CanisterStatus {
        let status = canister.status();
        let id = canister.id.clone();
        let mut registry = self.registry.write().expect("registry lock");
        registry.canisters.insert(id.clone(), canister);
        registry.reindex(&id);
        status
    }

    /// Resolves a method for a message of `kind` and decodes its arguments;
    /// a query method called as an update runs as a query (its changes are
    /// discarded).
    pub(crate) fn resolve_call(
        &self,
        canister: &Canister,
        method_name: &str,
        args: &CallArgs,
        kind: MessageKind,
    ) -> Result<ResolvedCall, Reject> {
        if canister.status == RunStatus::Stopped {
            return Err(Reject::new(
                RejectCode::CanisterError,
                format!("canister {} is stopped", canister.id.to_text()),
            ));
        }
        let Some(code) = canister.code.clone() else {
            return Err(Reject::new(
                RejectCode::DestinationInvalid,
                format!("canister {} has no code installed", canister.id.to_text()),
            ));
        };
        let method = code
            .interface
            .resolve(method_name)
            .map_err(|e| Reject::new(RejectCode::DestinationInvalid, e.to_string()))?
            .clone();
        let kind = match (kind, method.kind) {
            (MessageKind::Query, MethodKind::Update) => {
                return Err(Reject::new(
                    RejectCode::DestinationInvalid,
                    format!(
                        "{} is an update method; send it as a call, not a query",
                        method.qualified_name()
                    ),
                ));
            }
            (_, MethodKind::Query) => MessageKind::Query,
            (MessageKind::Query, MethodKind::CompositeQuery) => MessageKind::CompositeQuery,
            (_, MethodKind::CompositeQuery) => {
                // As on the IC: a composite query never runs replicated.
                return Err(Reject::new(
                    RejectCode::DestinationInvalid,
                    format!(
                        "{} is a composite query; it can only be sent as a query, not as an \
                         update (replicated) call",
                        method.qualified_name()
                    ),
                ));
            }
            (kind, MethodKind::Update) => kind,
        };
        if args.encoded_len() > self.options.limits.max_argument_bytes {
            return Err(Reject::new(
                RejectCode::DestinationInvalid,
                format!(
                    "the argument is {} bytes; the limit is {} bytes",
                    args.encoded_len(),
                    self.options.limits.max_argument_bytes
                ),
            ));
        }
        let params = decode_args(args, &method)
            .map_err(|e| Reject::new(RejectCode::DestinationInvalid, e))?;
        Ok(ResolvedCall {
            code,
            method,
            params,
            kind,
        })
    }

    /// Runs a lifecycle hook (when exported) and returns the state after it.
    #[allow(clippy::too_many_arguments)]
    fn run_hook(
        &self,
        canister: &mut Canister,
        code: &CanisterCode,
        state: ExecutionState,
        hook: Hook,
        arg: Option<&str>,
        step: &Step<'_>,
    ) -> Result<ExecutionState, NodeError> {
        let Some(method) = code.interface.hook(hook) else {
            if arg.is_some_and(|a| !a.trim().is_empty()) {
                return Err(NodeError::BadRequest(format!(
                    "an argument was given but the canister exports no {} hook",
                    hook.wit_name()
                )));
            }
            return Ok(state);
        };
        let params = decode_hook_arg(arg.unwrap_or(""), method).map_err(NodeError::BadRequest)?;
        let kind = match hook {
            Hook::Init => MessageKind::Init,
            Hook::PreUpgrade => MessageKind::PreUpgrade,
            Hook::PostUpgrade => MessageKind::PostUpgrade,
        };
        let seed = random_seed(hook.wit_name(), step.round, &canister.id, step.sequence);
        let ctx = message_context(
            canister,
            step.caller,
            &method.function,
            kind,
            (step.round, step.time_nanos, seed),
            &state,
        );
        let outcome = execute(code, &state, method, &params, ctx, &self.options.limits);
        canister.append_logs(&outcome.logs);
        if let Err(reject) = outcome.result {
            return Err(NodeError::HookFailed {
                hook: hook.wit_name(),
                reject,
            });
        }
        let mut state = state;
        if let Some(changes) = outcome.changes {
            state.apply(changes);
        }
        Ok(state)
    }

    fn install_code(
        &self,
        canister: Canister,
        code: Arc<CanisterCode>,
        mode: InstallMode,
        arg: Option<&str>,
        step: &Step<'_>,
    ) -> Result<Canister, NodeError> {
        let mut updated = canister.clone();
        let result = match mode {
            InstallMode::Install | InstallMode::Reinstall => {
                if mode == InstallMode::Install && canister.code.is_some() {
                    return Err(NodeError::BadRequest(format!(
                        "canister {} already has code; use reinstall or upgrade",
                        canister.id.to_text()
                    )));
                }
                self.run_hook(
                    &mut updated,
                    &code,
                    ExecutionState::default(),
                    Hook::Init,
                    arg,
                    step,
                )
            }
            InstallMode::Upgrade => {
                let Some(old_code) = canister.code.clone() else {
                    return Err(NodeError::BadRequest(format!(
                        "canister {} has no code to upgrade; install it first",
                        canister.id.to_text()
                    )));
                };
                let after_pre = match self.run_hook(
                    &mut updated,
                    &old_code,
                    canister.state.clone(),
                    Hook::PreUpgrade,
                    None,
                    step,
                ) {
                    Ok(state) => state,
                    Err(e) => return Err(self.keep_logs_only(canister, updated, e)),
                };
                // The heap and timers go; stable memory and certified data stay.
                let carried = ExecutionState {
                    stable: after_pre.stable,
                    certified_data: after_pre.certified_data,
                    next_timer_id: after_pre.next_timer_id,
                    next_call_id: after_pre.next_call_id,
                    ..ExecutionState::default()
                };
                self.run_hook(&mut updated, &code, carried, Hook::PostUpgrade, arg, step)
            }
        };
        match result {
            Ok(state) => {
                updated.state = state;
                updated.code = Some(code);
                updated.updates += 1;
                Ok(updated)
            }
            Err(e) => Err(self.keep_logs_only(canister, updated, e)),
        }
    }

    /// A failed install changes nothing but the log: the hook's lines
    /// explain the failure.
    fn keep_logs_only(&self, before: Canister, attempted: Canister, error: NodeError) -> NodeError {
        let mut kept = before;
        kept.logs = attempted.logs;
        kept.next_log_index = attempted.next_log_index;
        self.commit(kept);
        error
    }
}

