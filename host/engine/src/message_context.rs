//! What a message is and what it observes: its kind ([`MessageKind`]), the
//! context every replica builds for it ([`MessageContext`]), and the log
//! records it writes ([`LogRecord`]). Execution fills them in; the system
//! API reads and records them.

use cellar_types::Principal;

/// What kind of message runs; decides the instruction limit and whether
/// changes may persist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageKind {
    /// An update call: changes persist.
    Update,
    /// A query call: changes are discarded.
    Query,
    /// A message of a composite query (its method or one of its
    /// `on-reply` callbacks): it may make calls to query methods and defer
    /// its reply; its changes are returned so that the next callback of the
    /// same composite query sees them, and the node never commits them.
    CompositeQuery,
    /// The `init` hook at install.
    Init,
    /// The `pre-upgrade` hook on the old code.
    PreUpgrade,
    /// The `post-upgrade` hook on the new code.
    PostUpgrade,
}

/// Severity of a log record.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Detail for developers.
    Debug,
    /// Normal operation (also stdout).
    Info,
    /// Something unexpected.
    Warn,
    /// A failure (also stderr).
    Error,
}

/// One line of a canister's log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    /// The round's time when it was written.
    pub time_nanos: u64,
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// Everything about a message that the canister can observe besides its
/// arguments. Every replica must build the same context for a message.
#[derive(Clone, Debug)]
pub struct MessageContext {
    /// The canister that runs.
    pub canister_id: Principal,
    /// Who sent the message.
    pub caller: Principal,
    /// The method name, as the canister sees it (`add`).
    pub method: String,
    /// Update, query or hook.
    pub kind: MessageKind,
    /// Cycles sent with the message.
    pub cycles_attached: u64,
    /// The canister's balance before the message.
    pub cycle_balance: u64,
    /// The round's time (nanoseconds since the Unix epoch).
    pub time_nanos: u64,
    /// The round number.
    pub round: u64,
    /// The canister's controllers.
    pub controllers: Vec<Principal>,
    /// The committed certified data.
    pub certified_data: Vec<u8>,
    /// Seed of the message's random tape (from the subnet's randomness).
    pub random_seed: [u8; 32],
    /// The reply token of this message, should it defer its reply.
    pub context_id: u64,
    /// Reply tokens of this canister's deferred messages still waiting
    /// for an answer.
    pub open_contexts: Vec<u64>,
}
