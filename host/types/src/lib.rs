//! Identifiers and wire types shared by the Cellar host, the node and its clients.
//!
//! * [`Principal`]: who sent a message or which canister it goes to, with the
//!   checksummed text form used everywhere users see one.
//! * [`api`]: the JSON bodies of the node's HTTP API (`/api/v1`).
//! * [`RejectCode`]: why a message was rejected.

pub mod api;
mod principal;
mod reject;

pub use principal::{Principal, PrincipalError};
pub use reject::{Reject, RejectCode};
