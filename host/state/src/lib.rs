//! Cellar's replicated state and its storage.
//!
//! * [`canister::Canister`]: one canister's state (its execution state with
//!   page maps and stable memory, queues, cycles, timers, metadata), and
//!   [`registry::Registry`], the canisters of a state.
//! * [`messages`]: the queues and call contexts between canisters.
//! * [`history`]: the ingress history, the fate of every request.
//! * [`journal`]: the durable log of every round's input.
//! * [`checkpoint`]: checkpoints in an LSM store (fjall), written off the
//!   round loop by [`checkpoint_writer`].
//! * [`modules`]: the content-addressed store of modules and chunks.
//! * [`state_hash`]: the deterministic hash replicas agree on.
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
