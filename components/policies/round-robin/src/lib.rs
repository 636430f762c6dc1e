//! The round-robin scheduler policy: canisters with work take turns, a group
//! per round, with equal allowances; allocated canisters always get their
//! guaranteed share. See `policy_rt::algorithm::round_robin`.

#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use policy_rt::algorithm::{Summary, round_robin};

wit_bindgen::generate!({
    path: "../../../wit/scheduler",
    world: "scheduler-policy",
});

struct RoundRobin;

impl Summary for CanisterSummary {
    fn has_work(&self) -> bool {
        self.input_queue_length > 0 || self.paused
    }
    fn allocation(&self) -> u8 {
        self.compute_allocation
    }
    fn priority(&self) -> i64 {
        self.accumulated_priority
    }
    fn rounds_since_executed(&self) -> u64 {
        self.rounds_since_executed
    }
}

impl Guest for RoundRobin {
    fn schedule(input: RoundInput) -> RoundPlan {
        let (schedule, priorities) =
            round_robin(input.round, input.instruction_budget, &input.canisters);
        RoundPlan {
            schedule: schedule
                .into_iter()
                .map(|(index, instructions)| Allowance {
                    index,
                    instructions,
                })
                .collect::<Vec<_>>(),
            priorities,
        }
    }
}

export!(RoundRobin);
