//! Deterministic execution: `(state, batch) → (next state, answers)`.
//!
//! * [`executor::Executor`] holds the replicated state in memory and
//!   executes rounds on it ([`Executor::execute_round`], `round.rs`) and
//!   queries ([`Executor::composite_query`] and the node's plain queries).
//! * [`scheduler`] asks the scheduler policy which canisters run;
//!   [`cycles`] charges them.
//! * `management.rs` executes management requests (create, install,
//!   upgrade, controllers, policies); `chunks.rs` chunked installs.
//!
//! Invariant: a round's result is a function of the state before it and
//! its journal record only (round, time, ingress). Execution reads no
//! clock, makes no network I/O and starts no threads beyond the
//! `execution_threads` it is configured with; the only files it reads are
//! content-addressed modules.

pub mod answer;
mod chunks;
pub mod composite;
pub mod context;
pub mod cycles;
pub mod error;
pub mod executor;
mod management;
pub mod paused;
pub mod round;
pub mod scheduler;

pub use answer::{Answered, Applied, ResolvedCall, Step};
pub use chunks::{ChunkedInstall, check_chunk_size};
pub use error::{CallOutcome, NodeError, call_response, refused_response};
pub use executor::{ExecutionConfig, Executor};
