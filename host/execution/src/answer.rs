//! What requests and rounds answer, and where a management request
//! executes.

use std::sync::Arc;

use cellar_engine::{CanisterCode, MessageKind, Val};
use cellar_state::messages::IngressId;
use cellar_types::Principal;
use cellar_types::api::CanisterStatus;

use crate::error::{CallOutcome, NodeError};

/// What a round answers: the ingress messages it finished.
pub type Answered = Vec<(IngressId, Result<Applied, NodeError>)>;

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
