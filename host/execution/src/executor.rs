//! The executor: the replicated state in memory and what executes on it.
//!
//! [`Executor::execute_round`] is a pure function of the state and the
//! round's [`Record`](cellar_state::journal::Record): every replica that
//! executes the same records reaches the same state. It reads no clock and
//! does no I/O but reading content-addressed modules from the
//! [`ModuleStore`].

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use cellar_engine::{CanisterCode, CodeCache, Limits, MessageKind, SchedulerPolicy, Val};
use cellar_state::ModuleStore;
use cellar_state::history::{HistoryLimits, IngressHistory};
use cellar_state::registry::Registry;
use cellar_types::Principal;
use cellar_types::api::CanisterStatus;

use crate::error::{CallOutcome, NodeError};
use crate::round::{Answered, PausedMessage};

/// What execution is configured with (the same on every replica).
#[derive(Clone, Debug)]
pub struct ExecutionConfig {
    /// Execution limits.
    pub limits: Limits,
    /// Threads that execute canisters in parallel within a round. The
    /// result never depends on it.
    pub execution_threads: usize,
    /// Instructions one round may spend over all canisters.
    pub round_instructions: u64,
    /// Pages the messages of one round may change over all canisters.
    pub round_dirty_pages: u64,
    /// Pages one canister's messages may change in one round.
    pub canister_round_dirty_pages: u64,
    /// Cycles a new canister starts with.
    pub initial_cycles: u64,
    /// Bounds of the ingress history.
    pub ingress_history: HistoryLimits,
}

/// The replicated state in memory and the code that executes on it.
pub struct Executor {
    /// Its configuration.
    pub options: ExecutionConfig,
    /// Compiled components by module hash.
    pub cache: CodeCache,
    /// Where modules are stored.
    pub modules: ModuleStore,
    /// The canisters.
    pub registry: RwLock<Registry>,
    /// The scheduler policy in force (module hash and component); none:
    /// the built-in default. Replicated state.
    pub scheduler_policy: RwLock<Option<(String, SchedulerPolicy)>>,
    /// The last round in which the policy failed, and why.
    pub last_policy_fallback: Mutex<Option<(u64, String)>>,
    /// Replica mode: the last consensus-policy change executed (from
    /// height, module hash), replicated state kept in checkpoints.
    pub consensus_change: Mutex<Option<(u64, String)>>,
    /// Consensus-policy changes executed and not yet taken by the replica
    /// task.
    pub consensus_changes: Mutex<Vec<(u64, String)>>,
    /// Long executions paused between rounds, by canister (not persisted:
    /// see `round.rs`).
    pub paused: Mutex<BTreeMap<Principal, PausedMessage>>,
    /// Paused executions aborted since the node opened.
    pub aborted_executions: AtomicU64,
    /// Ingress messages answered by a management request of the round
    /// being executed (the queue of a deleted canister), for the round to
    /// hand to their waiters.
    pub orphans: Mutex<Answered>,
    /// The ingress history: the fate of every request a round inducted
    /// with an id (replicated state, in checkpoints and the state hash,
    /// rebuilt by replay).
    pub history: Mutex<IngressHistory>,
}

impl Executor {
    /// An executor over an empty state.
    pub fn new(options: ExecutionConfig, cache: CodeCache, modules: ModuleStore) -> Self {
        let history = IngressHistory::new(options.ingress_history);
        Executor {
            options,
            cache,
            modules,
            registry: RwLock::new(Registry {
                canisters: BTreeMap::new(),
                next_index: 0,
                round: 0,
                time_nanos: 0,
                active: Default::default(),
                timed: Default::default(),
            }),
            scheduler_policy: RwLock::new(None),
            last_policy_fallback: Mutex::new(None),
            consensus_change: Mutex::new(None),
            consensus_changes: Mutex::new(Vec::new()),
            paused: Mutex::new(BTreeMap::new()),
            aborted_executions: AtomicU64::new(0),
            orphans: Mutex::new(Vec::new()),
            history: Mutex::new(history),
        }
    }
}

/// What a request answers with.
pub enum Applied {
    Policy,
    Created(Principal),
    Status(CanisterStatus),
    Call(CallOutcome),
    /// A chunk store's hashes after an upload or a clear.
    Chunks(Vec<String>),
}

impl Applied {
    /// The chunk store's hashes of an upload's or clear's answer.
    pub fn into_chunks(self) -> Result<Vec<String>, NodeError> {
        match self {
            Applied::Chunks(hashes) => Ok(hashes),
            _ => Err(NodeError::Internal(anyhow::anyhow!(
                "a chunk request answered with something else than the chunk store"
            ))),
        }
    }

    /// The outcome of a call's answer (anything else is a bug, reported
    /// as an internal error).
    pub fn into_call(self) -> Result<CallOutcome, NodeError> {
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
pub struct Step<'a> {
    pub round: u64,
    pub time_nanos: u64,
    pub caller: &'a Principal,
    pub sequence: u64,
}

/// A method resolved for a message, with its decoded arguments.
pub struct ResolvedCall {
    pub code: Arc<CanisterCode>,
    pub method: cellar_engine::Method,
    pub params: Vec<Val>,
    pub kind: MessageKind,
}
