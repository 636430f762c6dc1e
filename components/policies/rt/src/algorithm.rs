//! The scheduling arithmetic shared by the policy components and the host.
//!
//! This file is compiled twice: into the `no_std` policy components (as
//! `policy_rt::algorithm`) and into the host's `cellar-engine` (as the
//! built-in default policy and the validation rules), so the component
//! `accumulated-priority` and the host's fallback are the same code and give
//! the same plan, bit for bit. It uses integers only and no hashing, so it is
//! deterministic on every platform.

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::num::NonZeroU128;

/// Priority units one round hands out in total: a compute allocation of 1 %
/// earns `CAPACITY / 100` per round.
pub const CAPACITY: i64 = 1_000_000;

/// The largest magnitude of an accumulated priority the host accepts.
pub const MAX_PRIORITY: i64 = 1 << 43;

/// The smallest allowance worth a scheduling slot: a round serves at most
/// `budget / MIN_ALLOWANCE` canisters beyond the allocated ones (at least one).
pub const MIN_ALLOWANCE: u64 = 10_000_000;

/// What the arithmetic needs to know about a canister.
pub trait Summary {
    /// Whether the canister has work: queued messages or a paused execution.
    fn has_work(&self) -> bool;
    /// Its compute allocation in percent (values above 100 count as 100).
    fn allocation(&self) -> u8;
    /// Its accumulated priority from the previous plan.
    fn priority(&self) -> i64;
    /// Rounds since it last executed.
    fn rounds_since_executed(&self) -> u64;
}

/// The compute allocation of a canister, capped at 100 %.
fn allocation<S: Summary>(c: &S) -> u64 {
    u64::from(c.allocation().min(100))
}

/// The sum of the allocations of the canisters with work, but at least 100:
/// the denominator of every guaranteed share. The host guarantees that
/// allocations sum to at most 100, so this is 100; should they exceed it,
/// the shares shrink proportionally and still fit in the budget.
pub fn allocation_denominator<S: Summary>(canisters: &[S]) -> u64 {
    let sum: u64 = canisters
        .iter()
        .filter(|c| c.has_work())
        .map(allocation)
        .sum();
    sum.max(100)
}

/// The instructions a canister with work is guaranteed in a round of
/// `budget`: `allocation × budget / denominator` (see
/// [`allocation_denominator`]), 0 for a canister without work.
pub fn guaranteed_share<S: Summary>(c: &S, budget: u64, denominator: u64) -> u64 {
    let allocation = allocation(c);
    if allocation == 0 || !c.has_work() {
        return 0;
    }
    // 64-bit arithmetic when it cannot overflow: 128-bit division is a
    // library call in wasm, hundreds of instructions.
    match allocation.checked_mul(budget) {
        Some(product) => product / denominator.max(1),
        None => {
            (u128::from(allocation) * u128::from(budget) / u128::from(denominator.max(1))) as u64
        }
    }
}

/// How many canisters get a slot of the free budget: `budget / MIN_ALLOWANCE`,
/// at least one, at most `active`.
pub fn slots(budget: u64, active: usize) -> usize {
    let by_budget = usize::try_from(budget / MIN_ALLOWANCE).unwrap_or(usize::MAX);
    by_budget.max(1).min(active)
}

/// A plan as the arithmetic produces it: `(position, instructions)` in
/// execution order, and one priority per canister.
pub type RawPlan = (Vec<(u32, u64)>, Vec<i64>);

/// The accumulated-priority policy (the IC's scheduler, simplified).
///
/// 1. A canister without work has its priority reset to 0: idle canisters
///    neither hoard credit nor keep debt.
/// 2. Every canister with work earns its compute allocation (in units of
///    [`CAPACITY`] per round) plus an equal part of the unallocated capacity
///    (the indivisible rest goes one unit each to canisters chosen by
///    rotating with the round number).
/// 3. The canisters with work are ordered by priority (highest first), then
///    by rounds since they executed (longest first), then by position; only
///    the first [`slots`] and the allocated ones are kept.
/// 4. Each allocated canister gets its guaranteed share of the budget (and
///    is scheduled even when that share rounds to 0). The
///    rest of the budget goes to the first [`slots`] canisters of the order,
///    weighted by rank: the first gets about twice what the last gets.
/// 5. The canisters that execute pay back everything handed out in step 2,
///    in proportion to their allowances, then priorities are shifted so that
///    the canisters with work sum to minus what the idle ones hold (0): all
///    priorities sum to zero. They are finally clamped to ±[`MAX_PRIORITY`]
///    (which arithmetic in realistic rounds never reaches).
pub fn accumulated_priority<S: Summary>(round: u64, budget: u64, canisters: &[S]) -> RawPlan {
    let n = canisters.len();
    let mut priorities: Vec<i64> = vec![0; n];
    let active: Vec<u32> = (0..n as u32)
        .filter(|&i| canisters[i as usize].has_work())
        .collect();
    if active.is_empty() {
        return (Vec::new(), priorities);
    }
    let na = active.len() as u64;
    let denominator = allocation_denominator(canisters);

    // 2. Credit.
    let mut credited = 0i64;
    for &i in &active {
        let c = &canisters[i as usize];
        // At most 100 × CAPACITY: no overflow.
        let credit = (allocation(c) * CAPACITY as u64 / denominator) as i64;
        credited += credit;
        priorities[i as usize] = c.priority().clamp(-MAX_PRIORITY, MAX_PRIORITY) + credit;
    }
    let free = CAPACITY - credited;
    let (each, rest) = (free / na as i64, (free % na as i64) as u64);
    let offset = round % na;
    for (j, &i) in active.iter().enumerate() {
        let extra = u64::from((j as u64 + offset) % na < rest);
        priorities[i as usize] += each + extra as i64;
    }

    // 3. Order. Only the first `k` canisters and the allocated ones get
    // allowances, so only they are sorted (selection, then sorting). The keys
    // are distinct (they end with the position), so the order does not
    // depend on the algorithms used.
    let k = slots(budget, active.len());
    let mut keys: Vec<(Reverse<i64>, Reverse<u64>, u32)> = active
        .iter()
        .map(|&i| {
            let c = &canisters[i as usize];
            (
                Reverse(priorities[i as usize]),
                Reverse(c.rounds_since_executed()),
                i,
            )
        })
        .collect();
    if k < keys.len() {
        keys.select_nth_unstable(k - 1);
        let mut allocated: Vec<(Reverse<i64>, Reverse<u64>, u32)> = keys[k..]
            .iter()
            .copied()
            .filter(|&(_, _, i)| allocation(&canisters[i as usize]) > 0)
            .collect();
        allocated.sort_unstable();
        keys.truncate(k);
        keys.sort_unstable();
        keys.extend(allocated);
    } else {
        keys.sort_unstable();
    }
    let order: Vec<u32> = keys.into_iter().map(|(_, _, i)| i).collect();

    // 4. Allowances.
    let mut allowances: Vec<u64> = Vec::with_capacity(order.len());
    let mut guaranteed = 0u64;
    for &i in &order {
        let share = guaranteed_share(&canisters[i as usize], budget, denominator);
        guaranteed += share;
        allowances.push(share);
    }
    let free_budget = budget.saturating_sub(guaranteed);
    let k = k as u128;
    let weights = k * (3 * k + 1) / 2; // sum of 2k - r for r in 0..k
    let mut handed = 0u64;
    for (r, allowance) in allowances.iter_mut().take(k as usize).enumerate() {
        let w = 2 * k - r as u128;
        let part = (u128::from(free_budget) * w / weights) as u64;
        *allowance += part;
        handed += part;
    }
    allowances[0] += free_budget - handed;
    let schedule: Vec<(u32, u64)> = order
        .iter()
        .zip(&allowances)
        .filter(|&(&i, &a)| a > 0 || allocation(&canisters[i as usize]) > 0)
        .map(|(&i, &a)| (i, a))
        .collect();

    // 5. Pay back, then restore the zero sum.
    let total: u128 = schedule.iter().map(|&(_, a)| u128::from(a)).sum();
    if let (Some(&(first, _)), Some(unit)) = (schedule.first(), NonZeroU128::new(total)) {
        let mut paid = 0i64;
        for &(i, a) in &schedule {
            let pay = (CAPACITY as u128 * u128::from(a) / unit) as i64;
            priorities[i as usize] -= pay;
            paid += pay;
        }
        priorities[first as usize] -= CAPACITY - paid;
    }
    let sum: i128 = active
        .iter()
        .map(|&i| i128::from(priorities[i as usize]))
        .sum();
    let (shift, extra) = (sum.div_euclid(na as i128), sum.rem_euclid(na as i128));
    for (j, &i) in active.iter().enumerate() {
        let p = i128::from(priorities[i as usize]) - shift - i128::from((j as i128) < extra);
        priorities[i as usize] = p.clamp(-(MAX_PRIORITY as i128), MAX_PRIORITY as i128) as i64;
    }
    (schedule, priorities)
}

/// The round-robin policy: the canisters with work take turns.
///
/// Each allocated canister gets its guaranteed share. The rest of the budget
/// is split equally among [`slots`] canisters with work, taken in position
/// order starting at `round × slots` (modulo the number of canisters with
/// work), so consecutive rounds serve consecutive groups. Those run first, in
/// that order; allocated canisters outside the group follow. Priorities are
/// passed through unchanged (clamped to ±[`MAX_PRIORITY`]), so switching to
/// and from this policy keeps them.
pub fn round_robin<S: Summary>(round: u64, budget: u64, canisters: &[S]) -> RawPlan {
    let priorities: Vec<i64> = canisters
        .iter()
        .map(|c| c.priority().clamp(-MAX_PRIORITY, MAX_PRIORITY))
        .collect();
    let active: Vec<u32> = (0..canisters.len() as u32)
        .filter(|&i| canisters[i as usize].has_work())
        .collect();
    if active.is_empty() {
        return (Vec::new(), priorities);
    }
    let na = active.len();
    let denominator = allocation_denominator(canisters);
    let k = slots(budget, na);
    let start = ((u128::from(round) * k as u128) % na as u128) as usize;
    let shares: Vec<u64> = active
        .iter()
        .map(|&i| guaranteed_share(&canisters[i as usize], budget, denominator))
        .collect();
    let free_budget = budget.saturating_sub(shares.iter().sum());
    let (each, rest) = (free_budget / k as u64, free_budget % k as u64);
    let mut schedule = Vec::with_capacity(k);
    for j in 0..na {
        let pos = (start + j) % na;
        let mut allowance = shares[pos];
        if j < k {
            allowance += each + if j == 0 { rest } else { 0 };
        }
        let index = active[pos];
        if allowance > 0 || allocation(&canisters[index as usize]) > 0 {
            schedule.push((index, allowance));
        }
    }
    (schedule, priorities)
}
