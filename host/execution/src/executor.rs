//! The executor: the replicated state in memory and what executes on it.
//!
//! [`Executor::execute_round`] is a pure function of the state and the
//! round's [`Record`](cellar_state::journal::Record): every replica that
//! executes the same records reaches the same state. It reads no clock and
//! does no I/O but reading content-addressed modules from the
//! [`ModuleStore`].
//!
//! A message's changes are applied to a copy of its canister that is then
//! swapped into the registry, so queries (which clone the committed
//! canister, cheap as its state is behind `Arc`s) see either the old or
//! the new state, never a mix.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, RwLock};

use cellar_engine::{CodeCache, Limits, SchedulerPolicy};
use cellar_state::ModuleStore;
use cellar_state::history::{HistoryLimits, IngressHistory};
use cellar_state::registry::Registry;
use cellar_types::Principal;

use crate::answer::Answered;
use crate::paused::PausedMessage;

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
