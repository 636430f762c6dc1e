//! The accumulated-priority scheduler policy (IC style): every canister with
//! work earns its compute allocation plus a fair part of the free capacity,
//! the highest priorities run first with bigger allowances and pay back. See
//! `policy_rt::algorithm::accumulated_priority` (also the host's default).

#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use policy_rt::algorithm::{Summary, accumulated_priority};

wit_bindgen::generate!({
    path: "../../../wit/scheduler",
    world: "scheduler-policy",
});

struct AccumulatedPriority;

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

impl Guest for AccumulatedPriority {
    fn schedule(input: RoundInput) -> RoundPlan {
        let (schedule, priorities) =
            accumulated_priority(input.round, input.instruction_budget, &input.canisters);
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

export!(AccumulatedPriority);
