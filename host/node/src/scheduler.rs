//! Which canisters run in a round, in what order, with how many
//! instructions.
//!
//! The built-in policy is accumulated priority, as in the IC: every round
//! each canister with work gains its compute allocation plus an equal share
//! of the capacity nobody reserved; canisters run in order of accumulated
//! priority (ties by id), and the ones that ran pay back what they gained,
//! so priorities over all canisters sum to zero and nobody starves.

use cellar_types::Principal;

/// What the scheduler knows about a canister with work.
#[derive(Clone, Debug)]
#[allow(dead_code)] // queue_length and rounds_since_executed feed policy components
pub(crate) struct Summary {
    /// The canister.
    pub(crate) id: Principal,
    /// Messages in its input queue.
    pub(crate) queue_length: u32,
    /// Guaranteed percentage of a round.
    pub(crate) compute_allocation: u8,
    /// Priority accumulated over the rounds it waited.
    pub(crate) accumulated_priority: i64,
    /// Rounds since it last executed.
    pub(crate) rounds_since_executed: u64,
}

/// A round's plan: `(index into the summaries, instruction allowance)` in
/// execution order, and every summary's new accumulated priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) schedule: Vec<(usize, u64)>,
    pub(crate) priorities: Vec<i64>,
}

/// Percent units a round hands out (100 = one whole round).
const ROUND_SHARE: i64 = 100;

/// The built-in accumulated-priority plan.
pub(crate) fn plan(_round: u64, budget: u64, canisters: &[Summary]) -> Plan {
    let n = canisters.len();
    if n == 0 {
        return Plan {
            schedule: Vec::new(),
            priorities: Vec::new(),
        };
    }
    let reserved: i64 = canisters
        .iter()
        .map(|c| i64::from(c.compute_allocation))
        .sum::<i64>()
        .min(ROUND_SHARE);
    let free_share = (ROUND_SHARE - reserved).max(0) / n as i64;
    let mut priorities: Vec<i64> = canisters
        .iter()
        .map(|c| {
            c.accumulated_priority
                .saturating_add(i64::from(c.compute_allocation) + free_share)
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| {
        priorities[*b]
            .cmp(&priorities[*a])
            .then_with(|| canisters[*a].id.cmp(&canisters[*b].id))
    });
    let schedule: Vec<(usize, u64)> = order
        .iter()
        .map(|i| {
            let share = u64::from(canisters[*i].compute_allocation).max(1);
            let equal = budget / n as u64;
            (*i, equal.max(budget / 100 * share))
        })
        .collect();
    // Everyone with work runs this round; each pays back an equal share so
    // the sum stays where it was.
    let paid = ROUND_SHARE / n as i64;
    for p in priorities.iter_mut() {
        *p = p.saturating_sub(paid).clamp(-1_000_000, 1_000_000);
    }
    Plan {
        schedule,
        priorities,
    }
}
