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

mod chunks;
pub mod composite;
pub mod context;
pub mod cycles;
pub mod error;
pub mod executor;
mod management;
pub mod round;
pub mod scheduler;

pub use chunks::ChunkedInstall;
pub use error::{CallOutcome, NodeError, call_response, refused_response};
pub use executor::{Applied, ExecutionConfig, Executor, ResolvedCall, Step};
