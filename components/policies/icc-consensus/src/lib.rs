//! The ICC default consensus policy as a component: block makers ranked by a
//! permutation drawn from the random beacon, delays Δbm(r) = 2δr and
//! Δntry(r) = 2δr + ε with δ = 150 ms and ε = 100 ms, default payload
//! limits (1,000 messages, 2 MiB). Answers exactly as the host's
//! `cellar_consensus::IccPolicy`. See `policy_rt::consensus`.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use policy_rt::consensus;

wit_bindgen::generate!({
    path: "../../../wit/consensus",
    world: "consensus-policy",
});

struct Icc;

impl Guest for Icc {
    fn name() -> String {
        "icc-random-beacon".into()
    }

    fn ranking(height: u64, beacon: Vec<u8>, n: u32) -> Vec<u32> {
        consensus::beacon_permutation(height, &beacon, n)
    }

    fn block_maker_delay_ms(rank: u32) -> u64 {
        consensus::block_maker_delay_ms(rank)
    }

    fn notary_delay_ms(rank: u32) -> u64 {
        consensus::notary_delay_ms(rank)
    }

    fn payload_limits() -> PayloadLimits {
        PayloadLimits {
            max_messages: consensus::DEFAULT_MAX_MESSAGES,
            max_bytes: consensus::DEFAULT_MAX_BYTES,
        }
    }
}

export!(Icc);
