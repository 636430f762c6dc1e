//! What a message sees of its round: its context and its random tape.

use cellar_engine::{CallArgs, ExecutionState, MessageContext, MessageKind, Val, decode_args};
use cellar_state::canister::Canister;
use cellar_types::Principal;
use cellar_types::api::Args;
use sha2::{Digest, Sha256};

/// The seed of a message's random tape: a function of the round, the
/// canister and the message's sequence number in it.
pub fn random_seed(domain: &str, round: u64, canister: &Principal, sequence: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"cellar-random-tape\0");
    hasher.update(domain.as_bytes());
    hasher.update(round.to_le_bytes());
    hasher.update(canister.as_bytes());
    hasher.update(sequence.to_le_bytes());
    hasher.finalize().into()
}

/// Decodes a hook argument list; `(a, b)` is accepted for `a, b`.
pub fn decode_hook_arg(arg: &str, method: &cellar_engine::Method) -> Result<Vec<Val>, String> {
    let arg = arg.trim();
    decode_args(&CallArgs::Wave(arg.to_string()), method).or_else(|first| {
        match arg.strip_prefix('(').and_then(|a| a.strip_suffix(')')) {
            Some(inner) => decode_args(&CallArgs::Wave(inner.to_string()), method),
            None => Err(first),
        }
    })
}

/// The context of a message to `canister` in the round `(round, time,
/// seed)`, seeing the certified data of `state`. Ingress carries no cycles;
/// the caller of this sets `cycles_attached` and the reply token for
/// messages that have them.
pub fn message_context(
    canister: &Canister,
    caller: &Principal,
    method: &str,
    kind: MessageKind,
    (round, time_nanos, random_seed): (u64, u64, [u8; 32]),
    state: &ExecutionState,
) -> MessageContext {
    MessageContext {
        canister_id: canister.id.clone(),
        caller: caller.clone(),
        method: method.to_string(),
        kind,
        cycles_attached: 0,
        cycle_balance: canister.cycles,
        time_nanos,
        round,
        controllers: canister.controllers.clone(),
        certified_data: state.certified_data.clone(),
        random_seed,
        context_id: canister.messaging.next_context_id,
        open_contexts: canister.messaging.open_contexts.keys().copied().collect(),
    }
}

/// The engine's form of a request's arguments.
pub fn to_call_args(args: &Args) -> CallArgs {
    match args {
        Args::Wave(text) => CallArgs::Wave(text.clone()),
        Args::Json(json) => CallArgs::Json(json.clone()),
    }
}
