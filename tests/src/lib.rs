//! Helpers shared by the end-to-end tests in `tests/tests/`, and a
//! linearizability checker ([`linearizability`]) for histories the fleet
//! tests record.

pub mod linearizability;
pub mod rng;

use std::path::Path;

use cellar_node::{CallOutcome, Durability, NodeOptions};
use cellar_types::Principal;
use cellar_types::api::Args;

/// Node options for tests: no fsync (a killed process still loses nothing)
/// and a checkpoint every `checkpoint_interval` rounds.
pub fn options(dir: &Path, checkpoint_interval: u64) -> NodeOptions {
    let mut options = NodeOptions::new(dir);
    options.durability = Durability::Process;
    options.checkpoint_interval = checkpoint_interval;
    // CI runs the node suites once per memory tracker.
    if let Ok(name) = std::env::var("CELLAR_MEMORY_TRACKER") {
        options.limits.memory_tracker = name
            .parse()
            .unwrap_or_else(|e| panic!("CELLAR_MEMORY_TRACKER={name}: {e}"));
    }
    options
}

/// A user principal.
pub fn alice() -> Principal {
    Principal::self_authenticating(&[0xa1; 32])
}

/// Another user principal.
pub fn bob() -> Principal {
    Principal::self_authenticating(&[0xb0; 32])
}

/// WAVE call arguments.
pub fn wave(text: &str) -> Args {
    Args::Wave(text.to_string())
}

/// The reply of a successful call as WAVE; panics on a reject.
pub fn reply(outcome: CallOutcome) -> String {
    match outcome.result {
        Ok(values) => cellar_engine::results_to_wave(&values).unwrap(),
        Err(reject) => panic!("unexpected reject: {reject}"),
    }
}
