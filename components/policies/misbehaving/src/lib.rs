//! A test fixture, not a policy to use: misbehaves in a way chosen by the
//! round number (`round % 10`), so that one component exercises every way
//! the host must survive a bad policy.
//!
//! | round % 10 | behaviour                                             |
//! |------------|-------------------------------------------------------|
//! | 0          | a valid plan (accumulated priority)                   |
//! | 1          | traps (panics)                                        |
//! | 2          | loops forever (runs past its instruction limit)       |
//! | 3          | schedules a canister twice                            |
//! | 4          | hands out more than the budget                        |
//! | 5          | leaves out the canisters with a compute allocation    |
//! | 6          | returns one priority too few                          |
//! | 7          | schedules an index that does not exist                |
//! | 8          | returns a priority beyond the bound                   |
//! | 9          | allocates memory until the host refuses to grow it    |

#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use policy_rt::algorithm::{MAX_PRIORITY, Summary, accumulated_priority};

wit_bindgen::generate!({
    path: "../../../wit/scheduler",
    world: "scheduler-policy",
});

struct Misbehaving;

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

fn allowance((index, instructions): (u32, u64)) -> Allowance {
    Allowance {
        index,
        instructions,
    }
}

impl Guest for Misbehaving {
    fn schedule(input: RoundInput) -> RoundPlan {
        let budget = input.instruction_budget;
        let (schedule, mut priorities) =
            accumulated_priority(input.round, budget, &input.canisters);
        let mut schedule: Vec<Allowance> = schedule.into_iter().map(allowance).collect();
        match input.round % 10 {
            1 => panic!("misbehaving policy: trap"),
            2 => {
                let mut x = 1u64;
                while core::hint::black_box(x) != 0 {
                    x = x.wrapping_mul(3) | 1;
                }
            }
            3 => {
                let first = Allowance {
                    index: schedule.first().map_or(0, |a| a.index),
                    instructions: 0,
                };
                schedule.push(first);
            }
            4 => {
                if let Some(first) = schedule.first_mut() {
                    first.instructions = first.instructions.saturating_add(budget);
                }
            }
            5 => schedule.retain(|a| input.canisters[a.index as usize].compute_allocation == 0),
            6 => {
                priorities.pop();
            }
            7 => schedule.push(Allowance {
                index: input.canisters.len() as u32,
                instructions: 0,
            }),
            8 => {
                if let Some(p) = priorities.first_mut() {
                    *p = MAX_PRIORITY + 1;
                }
            }
            9 => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Reserved, not written: the memory grows, fuel barely moves.
                    let block: Vec<u8> = Vec::with_capacity(1 << 24);
                    hoard.push(core::hint::black_box(block));
                }
            }
            _ => {}
        }
        RoundPlan {
            schedule,
            priorities,
        }
    }
}

export!(Misbehaving);
