//! `cellar-consensus`: threshold BLS on blst and the Internet Computer
//! Consensus protocol (ICC) as a deterministic, transport-independent state
//! machine. No networking and no clock: artifacts and time are inputs,
//! broadcasts and finalized batches are outputs.

pub mod bls;
