//! Cellar's replicated state and its storage.
//!
//! * [`canister`]: one canister's state ([`Canister`]: its execution state
//!   with page maps and stable memory, queues, cycles, timers, metadata).
//! * [`registry`]: [`Registry`], the canisters of a state, the round and its
//!   time, and the indices rounds schedule by.
//! * [`messages`]: input queues, deferred replies and outstanding calls.
//! * [`history`]: the ingress history, the fate of every request.
//! * [`journal`]: the durable log of every round's input (`<crc32> <json>`
//!   lines).
//! * [`checkpoint`]: checkpoints in an LSM store (fjall), and
//!   `checkpoint/parts.rs`, a checkpoint cut into parts for state sync.
//! * [`checkpoint_writer`]: checkpoints written off the round's path.
//! * [`modules`]: [`ModuleStore`], the content-addressed store of modules
//!   and chunks.
//! * [`state_hash`]: the deterministic hash replicas agree on
//!   ([`StateSnapshot`], [`genesis_state_hash`]).
//!
//! Invariant: the state knows nothing of rounds' scheduling, HTTP,
//! consensus or wall clocks; whatever executes it hands it times and
//! heights.

pub mod canister;
pub mod checkpoint;
pub mod checkpoint_writer;
pub mod history;
pub mod journal;
pub mod messages;
pub mod modules;
pub mod registry;
pub mod state_hash;

pub use canister::{Canister, INITIAL_CYCLES, MAX_LOG_ENTRIES};
pub use checkpoint::{CheckpointStats, CheckpointView, Part, PartInfo};
pub use journal::{Durability, RequestTag};
pub use modules::ModuleStore;
pub use registry::Registry;
pub use state_hash::{StateSnapshot, genesis_state_hash};
