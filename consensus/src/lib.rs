//! `cellar-consensus`: threshold BLS on blst and the Internet Computer
//! Consensus protocol (ICC) as a deterministic, transport-independent state
//! machine. No networking and no clock: artifacts and time are inputs,
//! broadcasts and finalized batches are outputs.
//!
//! The node feeds a [`ConsensusNode`] artifacts, time, client messages and,
//! every K heights, its execution state hash; it answers with [`Action`]s
//! (see [`icc`]). After a restart the node hands back what it signed
//! ([`signed`]); `docs/consensus.md` gives the crash-restart safety
//! argument. Artifacts are postcard bytes ([`Artifact::to_bytes`] /
//! [`Artifact::from_bytes`], capped at [`artifacts::MAX_ARTIFACT_BYTES`],
//! 8 MiB).
//!
//! - [`bls`]: min-sig BLS12-381: signatures, multi-signatures, threshold keys.
//! - [`keys`]: the dealer and the subnet's public keys.
//! - [`artifacts`]: what nodes exchange, hashes and signed messages.
//! - [`ingress`]: the ingress pool and payload selection.
//! - [`policy`]: the consensus-policy trait, the ICC default, round robin,
//!   and the host-side checks.
//! - [`catch_up`]: catch-up packages and the genesis.
//! - [`icc`]: the protocol state machine ([`ConsensusNode`]); `icc/validate.rs`
//!   checks received artifacts, `icc/protocol.rs` takes the steps.
//! - `pool.rs`: validated artifacts per height, and a bounded queue of those
//!   waiting for their beacon, parent or block.
//! - [`signed`]: what a node signed, kept across restarts.
//! - [`byzantine`]: misbehaviours for fault tests.
//! - [`sim`]: a seeded discrete-event simulation of a subnet.

#![deny(missing_docs)]

pub mod artifacts;
pub mod bls;
pub mod byzantine;
pub mod catch_up;
mod hash;
pub mod icc;
pub mod ingress;
pub mod keys;
pub mod policy;
mod pool;
pub mod signed;
pub mod sim;

pub use artifacts::{Artifact, CatchUpPackage, Height};
pub use hash::Hash32;
pub use icc::{Action, ConsensusConfig, ConsensusError, ConsensusNode, FinalizedBatch};
pub use policy::{ConsensusPolicy, IccPolicy, RoundRobinPolicy};
