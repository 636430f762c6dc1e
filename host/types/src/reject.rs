//! Rejects: the negative answer to a message.

use serde::{Deserialize, Serialize};

/// Why a message was rejected (the same codes as the WIT `reject-code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectCode {
    /// The system could not process the message now (for example a full queue).
    SystemTransient,
    /// The system cannot ever process the message (for example an unknown canister).
    SystemFatal,
    /// The destination does not accept the message (for example an unknown method
    /// or an argument of the wrong type).
    DestinationInvalid,
    /// The canister rejected the message on purpose.
    CanisterReject,
    /// The canister trapped or ran out of instructions.
    CanisterError,
}

/// A reject: a code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Reject {
    /// The reason class.
    pub code: RejectCode,
    /// What went wrong, for the caller.
    pub message: String,
}

impl Reject {
    /// Builds a reject.
    pub fn new(code: RejectCode, message: impl Into<String>) -> Self {
        Reject {
            code,
            message: message.into(),
        }
    }
}
