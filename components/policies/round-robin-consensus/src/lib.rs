//! A fixed round-robin consensus policy as a component: the leader of height
//! h is node h mod n, then the next nodes in order; ICC's default delays and
//! payload limits. Answers exactly as the host's
//! `cellar_consensus::RoundRobinPolicy`. See `policy_rt::consensus`.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use policy_rt::consensus;

wit_bindgen::generate!({
    path: "../../../wit/consensus",
    world: "consensus-policy",
});

struct RoundRobin;

impl Guest for RoundRobin {
    fn name() -> String {
        "round-robin".into()
    }

    fn ranking(height: u64, _beacon: Vec<u8>, n: u32) -> Vec<u32> {
        consensus::round_robin(height, n)
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

export!(RoundRobin);
