//! The deterministic wasmtime configuration and the per-message limits.
//!
//! [`new_engine`] builds the engine every canister runs on: fuel metering,
//! NaN canonicalization, no threads, deterministic relaxed SIMD, host-owned
//! linear memories (`memory`) and pooled fiber stacks (`stacks`).
//! [`Limits`] bounds what one message may do (instructions, argument and
//! log sizes, stable memory, pages dirtied) and names the memory tracker.

use std::sync::Arc;

use crate::memory::HostMemoryCreator;
use crate::stacks::StackPool;
use crate::tracker::MemoryTracker;

/// Limits that protect a node from a canister (and a canister from itself).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Instructions one update message may execute (the IC's 40 B).
    pub update_instructions: u64,
    /// Instructions one query may execute (the IC's 5 B).
    pub query_instructions: u64,
    /// Instructions one composite query may execute over its whole call
    /// graph (every query and callback it runs, on every canister).
    pub composite_query_instructions: u64,
    /// Instructions instantiating a component may take (start functions).
    pub instantiation_instructions: u64,
    /// Instructions an update runs per round before it pauses and
    /// continues in the next round (deterministic time slicing; the IC's
    /// 2 B). A message still stops at `update_instructions` in total.
    pub slice_instructions: u64,
    /// Largest component binary accepted at install.
    pub max_component_bytes: usize,
    /// Largest encoded argument accepted for a call.
    pub max_argument_bytes: usize,
    /// Largest stable memory, in bytes (64 GiB).
    pub max_stable_bytes: u64,
    /// Bytes of log (system API and stdout/stderr) one message may write.
    pub max_log_bytes_per_message: usize,
    /// Pages of linear memory one message may dirty (a larger delta is
    /// rejected and rolled back): bounds what a message adds to commits
    /// and checkpoints.
    pub max_dirty_pages_per_message: u64,
    /// How dirty pages are found (not a limit, but chosen at start with them).
    pub memory_tracker: MemoryTracker,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            update_instructions: 40_000_000_000,
            query_instructions: 5_000_000_000,
            composite_query_instructions: 5_000_000_000,
            instantiation_instructions: 5_000_000_000,
            slice_instructions: 2_000_000_000,
            max_component_bytes: 64 << 20,
            max_argument_bytes: 2 << 20,
            max_stable_bytes: 64 << 30,
            max_log_bytes_per_message: 64 << 10,
            max_dirty_pages_per_message: 1 << 18,
            memory_tracker: MemoryTracker::best_available(),
        }
    }
}

/// Builds the wasmtime engine every canister runs on: fuel metering,
/// canonical NaNs, no threads, deterministic relaxed SIMD, no memory64,
/// host-owned linear memories (see `memory`) and pooled fiber stacks (see
/// `stacks`).
pub fn new_engine() -> anyhow::Result<wasmtime::Engine> {
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .cranelift_nan_canonicalization(true)
        .wasm_threads(false)
        .wasm_memory64(false)
        .relaxed_simd_deterministic(true)
        // Host-owned memories are incompatible with copy-on-write images.
        .memory_init_cow(false)
        .with_host_memory(Arc::new(HostMemoryCreator))
        // Fiber stacks are kept and reused, not mapped for every message.
        .with_host_stack(Arc::new(StackPool::default()));
    let engine = wasmtime::Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    // After wasmtime's own handler, which ours chains to.
    crate::tracker::install_handler();
    Ok(engine)
}
