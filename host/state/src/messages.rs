//! Messages between rounds: what waits in a canister's input queue, who
//! waits for a deferred reply, and the calls a canister has outstanding.
//!
//! An input queue holds ingress messages, calls from other canisters, the
//! responses to its own calls, and timers (bounded: [`INPUT_QUEUE_CAPACITY`]
//! messages). Beside the queue a canister keeps the deferred messages owed
//! an answer and its outstanding calls. All of it is replicated state: it
//! is part of checkpoints and of the state hash, and every replica holds
//! the same queues after each round.

use std::collections::{BTreeMap, VecDeque};

use cellar_types::api::Args;
use cellar_types::{Principal, RejectCode};
use serde::{Deserialize, Serialize};

/// Messages one canister's input queue holds at most; an ingress message or
/// a call to a full queue is rejected at once. Responses always fit (the IC
/// reserves their slots in the same way).
pub const INPUT_QUEUE_CAPACITY: usize = 500;

/// Identifies an ingress message: the round that inducted it and its
/// position in that round's batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IngressId {
    /// The round whose batch carried it.
    pub round: u64,
    /// Its index in the batch.
    pub index: u32,
}

/// What a call came back with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// The callee replied with this WAVE-encoded value.
    Reply(String),
    /// The call was rejected.
    Reject {
        /// Why, in the reject-code classification.
        code: RejectCode,
        /// The reason.
        message: String,
    },
}

/// A message waiting in a canister's input queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum InputMessage {
    /// An update call from a user.
    Ingress {
        /// Its id (the client waits on it).
        id: IngressId,
        /// The user.
        caller: Principal,
        /// The method, as the user wrote it.
        method: String,
        /// The arguments.
        args: Args,
    },
    /// A call from another canister.
    Request {
        /// The calling canister.
        caller: Principal,
        /// The caller's id for the call.
        call_id: u64,
        /// The method, as the caller wrote it.
        method: String,
        /// WAVE-encoded argument list, in parentheses.
        args: String,
        /// Cycles attached.
        cycles: u64,
    },
    /// The answer to a call this canister made.
    Response {
        /// The call it answers.
        call_id: u64,
        /// The canister that was called.
        callee: Principal,
        /// Reply or reject.
        answer: Answer,
        /// Attached cycles that the callee did not accept.
        refund: u64,
    },
    /// A timer of this canister fired.
    Timer {
        /// The timer.
        timer_id: u64,
    },
}

impl InputMessage {
    /// Whether the message may wait in a full queue (responses must).
    pub fn is_response(&self) -> bool {
        matches!(self, InputMessage::Response { .. })
    }
}

/// Who waits for the answer to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// A user's ingress message.
    Ingress {
        /// Its id.
        id: IngressId,
    },
    /// Another canister's call.
    Canister {
        /// The caller.
        caller: Principal,
        /// The caller's id for the call.
        call_id: u64,
    },
}

/// A message whose reply was deferred and is still owed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenContext {
    /// Who waits.
    pub origin: Origin,
    /// The method's qualified name (its result type types the answer).
    pub method: String,
    /// Attached cycles not accepted, returned with the answer.
    pub refund: u64,
}

/// A call made and not answered yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutstandingCall {
    /// The canister called.
    pub callee: Principal,
    /// The deferred message the call works for (its reply token), if any:
    /// when the callback traps, or finishes while that message is still
    /// owed an answer and no other call works for it, the message is
    /// rejected instead of waiting forever.
    pub owner: Option<u64>,
}

/// The messaging part of a canister's replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Messaging {
    /// Messages waiting to execute, oldest first.
    pub input_queue: VecDeque<InputMessage>,
    /// Deferred messages still owed an answer, by reply token.
    pub open_contexts: BTreeMap<u64, OpenContext>,
    /// The reply token the next message gets.
    pub next_context_id: u64,
    /// Calls made and not answered yet, by call id.
    pub outstanding_calls: BTreeMap<u64, OutstandingCall>,
    /// The scheduler's accumulated priority.
    pub accumulated_priority: i64,
    /// Guaranteed share of a round's instructions, in percent.
    pub compute_allocation: u8,
    /// The last round in which the canister executed a message.
    pub last_executed_round: u64,
}

impl Messaging {
    /// Whether the canister has work for the scheduler.
    pub fn has_work(&self) -> bool {
        !self.input_queue.is_empty()
    }

    /// Whether one more message that is not a response fits in the queue.
    pub fn has_room(&self) -> bool {
        self.input_queue.iter().filter(|m| !m.is_response()).count() < INPUT_QUEUE_CAPACITY
    }
}
