//! Which canisters run in a round, in what order, with how many
//! instructions: the round's questions to the scheduler policy.
//!
//! The policy is a Wasm component (`wit/scheduler/scheduler-policy.wit`),
//! or the host's built-in accumulated-priority default when none is set.
//! `cellar_engine::plan_round` validates what a component returns and runs
//! the default for the round when it traps, overruns its instruction limit
//! or answers nonsense, so a policy can never stall the node or starve a
//! canister with a compute allocation. The policy in force is replicated
//! state: it changes only through a journaled request, at a round boundary.
//!
//! `cellar bench scheduler` measures what the policies give a light
//! canister under a flood, in rounds (figures in the benchmark's module,
//! `host/cli/src/bench_scheduler.rs`).

use cellar_engine::{CanisterSummary, RoundInput, SchedulerPolicy, plan_round};
use cellar_types::Principal;

/// What the scheduler knows about a canister with work.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The canister.
    pub id: Principal,
    /// Messages in its input queue.
    pub queue_length: u32,
    /// Guaranteed percentage of a round.
    pub compute_allocation: u8,
    /// Priority accumulated over the rounds it waited.
    pub accumulated_priority: i64,
    /// Whether a long execution of it is paused between rounds.
    pub paused: bool,
    /// Rounds since it last executed.
    pub rounds_since_executed: u64,
}

/// A round's plan: `(index into the summaries, instruction allowance)` in
/// execution order, and every summary's new accumulated priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub schedule: Vec<(usize, u64)>,
    pub priorities: Vec<i64>,
    /// Why the built-in default planned the round instead of the policy.
    pub fallback: Option<String>,
}

/// Asks `policy` (or the built-in default) for the round's plan.
pub fn plan(
    policy: Option<&SchedulerPolicy>,
    round: u64,
    budget: u64,
    canisters: &[Summary],
) -> Plan {
    if canisters.is_empty() {
        return Plan {
            schedule: Vec::new(),
            priorities: Vec::new(),
            fallback: None,
        };
    }
    let input = RoundInput {
        round,
        instruction_budget: budget,
        canisters: canisters
            .iter()
            .enumerate()
            .map(|(i, c)| CanisterSummary {
                index: i as u32,
                input_queue_length: c.queue_length,
                compute_allocation: c.compute_allocation,
                accumulated_priority: c.accumulated_priority,
                paused: c.paused,
                rounds_since_executed: c.rounds_since_executed,
            })
            .collect(),
    };
    let outcome = plan_round(policy, &input);
    Plan {
        schedule: outcome
            .plan
            .schedule
            .iter()
            .filter(|a| a.instructions > 0)
            .map(|a| (a.index as usize, a.instructions))
            .collect(),
        priorities: outcome.plan.priorities,
        fallback: outcome.fallback,
    }
}
