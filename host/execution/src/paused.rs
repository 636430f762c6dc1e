//! Executions paused between rounds: a long update sliced across rounds.

use cellar_engine::{MessageKind, PausedExecution};
use cellar_state::messages::{InputMessage, Origin};

/// An update that used up its slice and continues in a later round. It
/// lives in the node's memory only: a checkpoint puts its message back at
/// the front of the queue (every replica at the same round), and a restart
/// re-creates it by replaying the rounds after the checkpoint.
pub struct PausedMessage {
    pub(crate) execution: PausedExecution,
    /// The message, to queue again when the execution is aborted.
    pub(crate) message: InputMessage,
    pub(crate) settle: Settle,
}

/// Who a message came from and who waits for it: what settling its
/// outcome needs.
#[derive(Clone)]
pub(crate) struct Settle {
    pub(crate) cycles_attached: u64,
    pub(crate) origin: Option<Origin>,
    pub(crate) owner: Option<u64>,
    pub(crate) method: String,
    pub(crate) kind: MessageKind,
    pub(crate) context_id: u64,
}
