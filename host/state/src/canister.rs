//! One canister as the node keeps it: metadata, code and execution state.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use cellar_engine::{CanisterCode, ExecutionState, LogRecord};
use cellar_types::Principal;
use cellar_types::api::{CanisterStatus, LogEntry, RunStatus};

use crate::messages::Messaging;

/// Log entries kept per canister (older ones are dropped).
pub const MAX_LOG_ENTRIES: usize = 1000;

/// Cycles a new canister starts with (the IC's local development default).
pub const INITIAL_CYCLES: u64 = 100_000_000_000_000;

/// A canister on this node.
#[derive(Clone, Debug)]
pub struct Canister {
    /// Its id.
    pub id: Principal,
    /// Who may change it.
    pub controllers: Vec<Principal>,
    /// Running or stopped.
    pub status: RunStatus,
    /// The installed code, if any.
    pub code: Option<Arc<CanisterCode>>,
    /// Committed execution state.
    pub state: ExecutionState,
    /// Cycle balance.
    pub cycles: u64,
    /// Recent log lines.
    pub logs: VecDeque<LogEntry>,
    /// Index the next log line gets.
    pub next_log_index: u64,
    /// Update messages (and hooks) executed.
    pub updates: u64,
    /// Input queue, deferred replies, outstanding calls, scheduling state.
    pub messaging: Messaging,
    /// The chunk store: SHA-256 (hex) of every uploaded chunk, whose bytes
    /// live under `modules/` by that hash, for installing modules larger
    /// than one request.
    pub chunks: BTreeSet<String>,
}

impl Canister {
    /// A new, empty canister.
    pub fn new(id: Principal, controllers: Vec<Principal>) -> Self {
        Canister {
            id,
            controllers,
            status: RunStatus::Running,
            code: None,
            state: ExecutionState::default(),
            cycles: INITIAL_CYCLES,
            logs: VecDeque::new(),
            next_log_index: 0,
            updates: 0,
            messaging: Messaging::default(),
            chunks: BTreeSet::new(),
        }
    }

    /// Whether `principal` controls this canister.
    pub fn is_controller(&self, principal: &Principal) -> bool {
        self.controllers.contains(principal)
    }

    /// Appends log records, dropping the oldest beyond [`MAX_LOG_ENTRIES`].
    pub fn append_logs(&mut self, records: &[LogRecord]) {
        for record in records {
            let level = serde_json::to_value(record.level)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            self.logs.push_back(LogEntry {
                index: self.next_log_index,
                time_nanos: record.time_nanos,
                level,
                message: record.message.clone(),
            });
            self.next_log_index += 1;
        }
        while self.logs.len() > MAX_LOG_ENTRIES {
            self.logs.pop_front();
        }
    }

    /// The status clients see.
    pub fn status(&self) -> CanisterStatus {
        CanisterStatus {
            canister_id: self.id.clone(),
            status: self.status,
            module_hash: self.code.as_ref().map(|c| c.hash_hex()),
            heap_bytes: self.state.heap.total_bytes(),
            stable_bytes: self.state.stable.size_pages() * cellar_engine::STABLE_PAGE_SIZE,
            cycles: self.cycles,
            controllers: self.controllers.clone(),
            certified_data: self
                .state
                .certified_data
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            updates: self.updates,
        }
    }
}
