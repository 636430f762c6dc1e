//! What execution costs, in cycles: the fee schedule and the freezing
//! threshold.
//!
//! Every replica charges the same amounts: fees depend on instructions
//! counted and bytes sent, never on time. The figures follow the IC's
//! order of magnitude (a message costs a fixed fee plus 0.4 cycles per
//! instruction; bytes cost per byte). A canister whose balance is below the
//! [`freezing_threshold`] (what a message of the full instruction limit
//! would cost) is frozen: new messages to it are rejected until it is
//! topped up.

/// Fixed fee for executing one message.
pub const MESSAGE_FEE: u64 = 590_000;

/// Cycles per 10 instructions executed.
pub const CYCLES_PER_TEN_INSTRUCTIONS: u64 = 4;

/// Cycles per byte of an ingress message's arguments.
pub const INGRESS_BYTE_FEE: u64 = 2_000;

/// Fixed fee for sending an inter-canister call.
pub const CALL_FEE: u64 = 260_000;

/// Cycles per byte of an inter-canister call's arguments.
pub const CALL_BYTE_FEE: u64 = 1_000;

/// What executing a message of `instructions` costs.
pub fn execution_fee(instructions: u64) -> u64 {
    MESSAGE_FEE.saturating_add(instructions / 10 * CYCLES_PER_TEN_INSTRUCTIONS)
}

/// What sending a call with `arg_bytes` bytes of arguments costs.
pub fn call_fee(arg_bytes: usize) -> u64 {
    CALL_FEE.saturating_add(CALL_BYTE_FEE.saturating_mul(arg_bytes as u64))
}

/// The balance a canister needs to start a message that may run up to
/// `instruction_limit` instructions: below it the canister is frozen and
/// new messages to it are rejected until it is topped up.
pub fn freezing_threshold(instruction_limit: u64) -> u64 {
    execution_fee(instruction_limit)
}
