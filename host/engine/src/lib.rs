//! Deterministic execution of canister components on wasmtime.
//!
//! The engine turns a component binary into [`CanisterCode`] (compiled once
//! and shared by every canister running the same code, see [`CodeCache`]) and
//! runs one message at a time against an immutable [`ExecutionState`]:
//! [`execute`] instantiates the component afresh, maps the committed heap in,
//! calls the export, and hands back a [`MessageOutcome`] whose state changes
//! the caller commits (updates) or drops (queries, traps, rejects).
//!
//! Everything that could differ between replicas is pinned: fuel counts
//! instructions, NaNs are canonicalized, there are no threads, WASI clocks
//! give the round's time and WASI randomness comes from the round's tape.
//!
//! # Modules
//!
//! Installing and running code:
//!
//! - `config`: the deterministic wasmtime configuration ([`new_engine`]) and
//!   the per-message [`Limits`].
//! - `cache`: validating, instrumenting and compiling a component once per
//!   binary ([`CodeCache`]), kept on disk as `.cwasm`.
//! - `globals`: persisting mutable wasm globals in the globals page.
//! - `interface`: the methods a component offers ([`CanisterInterface`]).
//! - `values`: call arguments and results as WAVE or JSON text.
//! - `exec`: executing one message on a fresh instance ([`execute`]).
//! - `message_context`: what a message is and observes ([`MessageContext`]).
//! - `system_api`: the host side of the `cellar:canister` system API.
//! - `wasi`: a WASI context with no ambient authority or nondeterminism.
//! - `rng`: the random tape, seeded per canister and message.
//! - `state`: a canister's replicated [`ExecutionState`] and the
//!   [`StateChanges`] of a message.
//! - `stable`: stable memory, sparse and kept across upgrades.
//! - `stacks`: fiber stacks kept and reused between executions.
//!
//! Linear memory and its persistence:
//!
//! - `memory`: host-owned linear memories in `PROT_NONE` reservations.
//! - `page`: the 4 KiB page everything below shares ([`PAGE_SIZE`]).
//! - `paging`: immutable, versioned page maps ([`PageMap`]).
//! - `page_slab`: the process-wide slab the pages of page maps live in.
//! - `tracker`: choosing a memory tracker ([`MemoryTracker`]) and the
//!   process-wide fault handlers.
//! - `mprotect`: the signal tracker (page protection and SIGSEGV).
//! - `uffd`: the userfaultfd tracker.
//! - `copy_all`: the `copy-all` baseline tracker.
//! - `signals`: installing and chaining the fault signal handlers.
//! - `image`: memory images of large memories, mapped privately.
//! - `mapped`: kept memories, mapped and populated between messages.
//! - `lending`: lending kept memories to one message.
//! - `version_cache`: the cache images and kept memories live in.
//! - `write_rate`: `uffd-auto`'s choice between images and kept memories.
//!
//! Policies as components:
//!
//! - `policy`: scheduler policies ([`SchedulerPolicy`]).
//! - `consensus_policy`: consensus policies ([`WasmConsensusPolicy`]).

mod cache;
mod config;
mod consensus_policy;
mod copy_all;
mod exec;
mod globals;
mod image;
mod interface;
mod lending;
mod mapped;
mod memory;
mod message_context;
mod mprotect;
mod page;
mod page_slab;
mod paging;
mod policy;
mod rng;
mod signals;
mod stable;
mod stacks;
mod state;
mod system_api;
mod tracker;
mod uffd;
mod values;
mod version_cache;
mod wasi;
mod write_rate;

pub use cache::{CanisterCode, CodeCache, InstallError};
pub use config::{Limits, new_engine};
pub use consensus_policy::{
    CONSENSUS_POLICY_EXPORTS, CONSENSUS_POLICY_MEMORY_BYTES, ConsensusPolicyFailure,
    ConsensusPolicyLoadError, DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS,
    DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS_PER_NODE, MAX_CONSENSUS_POLICY_BYTES,
    MAX_CONSENSUS_POLICY_NAME, WasmConsensusPolicy,
};
pub use exec::{MessageOutcome, PausedExecution, Progress, WarmInstance, execute, execute_sliced};
pub use globals::{Instrumented, RESTORE_EXPORT, SAVE_EXPORT, instrument};
pub use interface::{CanisterInterface, Hook, Method, MethodKind, MethodLookupError, render_type};
pub use message_context::{LogLevel, LogRecord, MessageContext, MessageKind};
pub use page::{PAGE_SIZE, Page};
pub use page_slab::{SlabStats, stats as slab_stats};
pub use paging::{MAX_PAGES, MemoryImage, PageMap, PageRef, page_from_slice};
pub use policy::{
    Allowance, CanisterSummary, DEFAULT_POLICY_INSTRUCTIONS,
    DEFAULT_POLICY_INSTRUCTIONS_PER_CANISTER, MAX_POLICY_BYTES, MAX_PRIORITY, POLICY_MEMORY_BYTES,
    PlanOutcome, PolicyError, RoundInput, RoundPlan, SCHEDULE_EXPORT, SchedulerPolicy,
    builtin_default, builtin_round_robin, guaranteed_share, plan_round, validate,
};
pub use stable::{MAX_STABLE_BYTES, STABLE_PAGE_SIZE, StableMemory};
pub use state::{ExecutionState, HeapSnapshot, LateReply, OutgoingCall, StateChanges, Timer};
pub use tracker::{KEPT_MAX_PAGES, MemoryTracker, TrackingStats, set_memory_images};
pub use values::{
    CallArgs, CallText, Encoding, decode_args, decode_results_wave, encode_results, json_to_val,
    parse_call_text, results_to_json, results_to_wave, val_to_json,
};
pub use wasmtime::component::Val;
pub use write_rate::forget_write_rates;
