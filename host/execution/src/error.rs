//! Why a request could not be carried out, and what a call that ran
//! answered.

use cellar_engine::{Encoding, InstallError, Val, encode_results};
use cellar_types::api::{CallResponse, ReplyEncoding};
use cellar_types::{Reject, RejectCode};

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

/// The answer to a call, in the requested encoding.
pub fn call_response(outcome: CallOutcome, encoding: ReplyEncoding) -> CallResponse {
    let encoding = match encoding {
        ReplyEncoding::Wave => Encoding::Wave,
        ReplyEncoding::Json => Encoding::Json,
    };
    match outcome.result {
        Ok(values) => match encode_results(&values, encoding) {
            Ok(reply) => CallResponse::Replied {
                reply,
                instructions: outcome.instructions,
            },
            Err(e) => CallResponse::Rejected {
                reject: Reject::new(
                    RejectCode::CanisterError,
                    format!("the reply cannot be encoded: {e}"),
                ),
                instructions: outcome.instructions,
            },
        },
        Err(reject) => CallResponse::Rejected {
            reject,
            instructions: outcome.instructions,
        },
    }
}

/// The answer to an update the node could not carry out.
pub fn refused_response(e: &NodeError) -> CallResponse {
    let code = match e {
        NodeError::NotFound(_) | NodeError::NotController { .. } => RejectCode::DestinationInvalid,
        NodeError::Internal(_) | NodeError::Overloaded(_) => RejectCode::SystemTransient,
        _ => RejectCode::SystemFatal,
    };
    CallResponse::Rejected {
        reject: Reject::new(code, e.to_string()),
        instructions: 0,
    }
}
