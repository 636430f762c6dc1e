//! Deterministic execution: `(state, batch) → (next state, answers)`.
//!
//! * [`executor`]: [`Executor`], the replicated state in memory and what
//!   executes on it ([`Executor::execute_round`], [`Executor::composite_query`]).
//! * [`round`]: one deterministic round: induction, timers, scheduling,
//!   parallel execution, routing, the dirty-page budget.
//! * [`scheduler`]: the round's questions to the scheduler policy (which
//!   canisters run, in what order, with what allowance).
//! * [`cycles`]: the fee schedule and the freezing threshold.
//! * [`composite`]: composite queries, run at once outside every lock.
//! * `management.rs`: management requests (create, install, upgrade, stop,
//!   start, delete, controllers, cycles, policies) at their place in a round.
//! * `chunks.rs`: uploads into a canister's chunk store and installs from it.
//! * [`answer`]: what requests and rounds answer ([`Applied`], [`Answered`]).
//! * [`paused`]: executions paused between rounds (a long update sliced
//!   across rounds).
//! * [`context`]: what a message sees of its round: its context and its
//!   random tape.
//! * [`error`]: why a request could not be carried out ([`NodeError`]), and
//!   what a call answered ([`CallOutcome`]).
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
