//! The replicated execution state of one canister.
//!
//! [`ExecutionState`] is what a message runs against (heap page maps,
//! stable memory, certified data, timers, ...), and [`StateChanges`] what a
//! successful message hands back for the caller to commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use cellar_types::Principal;

use crate::paging::MemoryImage;
use crate::stable::StableMemory;

/// The committed contents of every linear memory of a canister instance, in
/// the (deterministic) order the component creates them. Empty before the
/// first message (and after an upgrade): the next instance then starts from
/// its data segments.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct HeapSnapshot {
    /// One image per linear memory.
    pub memories: Vec<MemoryImage>,
}

impl HeapSnapshot {
    /// Total accessible bytes over all memories.
    pub fn total_bytes(&self) -> u64 {
        self.memories.iter().map(|m| m.size).sum()
    }

    /// Bytes held in non-zero pages over all memories.
    pub fn resident_bytes(&self) -> u64 {
        self.memories
            .iter()
            .map(|m| m.pages.len() * crate::page::PAGE_SIZE as u64)
            .sum()
    }
}

/// A timer set by the canister (fired by the scheduler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    /// Round time, in nanoseconds, after which it fires.
    pub at_nanos: u64,
    /// Period for periodic timers.
    pub interval_nanos: Option<u64>,
}

/// Everything a message can read and change, as committed.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct ExecutionState {
    /// Linear memories (empty before the first instantiation).
    pub heap: HeapSnapshot,
    /// Stable memory.
    pub stable: Arc<StableMemory>,
    /// Certified data (at most 32 bytes).
    pub certified_data: Vec<u8>,
    /// Pending timers by id.
    pub timers: BTreeMap<u64, Timer>,
    /// Next timer id to hand out.
    pub next_timer_id: u64,
    /// Next inter-canister call id to hand out.
    pub next_call_id: u64,
}

/// A call to another canister, made by a message and sent when it commits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutgoingCall {
    /// The caller's id for the call (its callback receives it).
    pub call_id: u64,
    /// The canister called.
    pub callee: Principal,
    /// The method, as the caller wrote it.
    pub method: String,
    /// The WAVE-encoded argument list.
    pub args: String,
    /// Cycles moved from the caller's balance with the call.
    pub cycles: u64,
}

/// The answer to a deferred message, given by a later message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LateReply {
    /// The deferred message's reply token.
    pub token: u64,
    /// A WAVE-encoded value of the method's result type, or a reject message.
    pub answer: Result<String, String>,
}

/// The changes a successful message makes to [`ExecutionState`].
#[derive(Clone, Debug)]
pub struct StateChanges {
    /// The new heap.
    pub heap: HeapSnapshot,
    /// The new stable memory, when it changed.
    pub stable: Option<Arc<StableMemory>>,
    /// The new certified data, when set.
    pub certified_data: Option<Vec<u8>>,
    /// The new timers and next timer id, when they changed.
    pub timers: Option<(BTreeMap<u64, Timer>, u64)>,
    /// Cycles the message accepted from the caller.
    pub cycles_accepted: u64,
    /// Calls to send, in the order they were made.
    pub calls: Vec<OutgoingCall>,
    /// The next call id after this message's calls.
    pub next_call_id: u64,
    /// Whether the message deferred its own reply.
    pub deferred: bool,
    /// Answers to earlier deferred messages.
    pub late_replies: Vec<LateReply>,
}

impl ExecutionState {
    /// Applies a committed message's changes.
    pub fn apply(&mut self, changes: StateChanges) {
        self.heap = changes.heap;
        if let Some(stable) = changes.stable {
            self.stable = stable;
        }
        if let Some(data) = changes.certified_data {
            self.certified_data = data;
        }
        if let Some((timers, next)) = changes.timers {
            self.timers = timers;
            self.next_timer_id = next;
        }
        self.next_call_id = changes.next_call_id;
    }
}
