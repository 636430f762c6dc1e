//! Consensus policy: what a subnet may tune without touching safety.
//!
//! A [`ConsensusPolicy`] ranks the block makers of each height from the random
//! beacon and sets the block-maker and notary delays per rank and the payload
//! limits. Policies may later run as Wasm components, so the host never trusts
//! one: [`PolicyHost`] checks every answer (a ranking must be a permutation,
//! delays at most [`MAX_DELAY_MS`], limits within the hard caps) and on a bad
//! answer uses the ICC default and reports a [`PolicyError`]. ICC's agreement
//! does not depend on ranks or delays, so even a bad policy cannot fork the
//! chain; the checks keep it from stalling or bloating it.
//!
//! [`IccPolicy`] is the ICC default (a permutation of the makers from the
//! beacon, Δbm = 2δr, Δntry = 2δr + ε); [`RoundRobinPolicy`] takes turns.
//! Policies as Wasm components: `cellar_engine::WasmConsensusPolicy`.
//!
//! `ConsensusNode::schedule_policy(from, policy)` switches the policy at an
//! agreed height: rankings of heights ≥ `from` use it (cached rankings
//! above are dropped), delays and limits once the node's round reaches
//! `from` (sim test: every node switches ICC → round robin at height 12,
//! agreement holds and every later block is made by the round-robin
//! leader).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::artifacts::{Hash32, Height};
use crate::bls::NodeIndex;

/// Longest delay a policy may ask for (ms).
pub const MAX_DELAY_MS: u64 = 5 * 60 * 1000;
/// Most ingress messages a block may carry.
pub const HARD_MAX_BLOCK_MESSAGES: u32 = 10_000;
/// Most payload bytes a block may carry.
pub const HARD_MAX_BLOCK_BYTES: u64 = 4 << 20;

/// Payload limits of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadLimits {
    /// Most ingress messages.
    pub max_messages: u32,
    /// Most content bytes.
    pub max_bytes: u64,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        PayloadLimits {
            max_messages: 1000,
            max_bytes: 2 << 20,
        }
    }
}

/// What a consensus policy decides. All answers must be deterministic
/// functions of the arguments: every node asks the same questions.
pub trait ConsensusPolicy: Send {
    /// A short name for reports.
    fn name(&self) -> &str;
    /// The block makers of `height` by rank: element r is the node of rank r.
    /// Must be a permutation of `0..n`.
    fn ranking(&self, height: Height, beacon: &Hash32, n: u32) -> Vec<NodeIndex>;
    /// How long after the round starts a block maker of `rank` proposes.
    fn block_maker_delay_ms(&self, rank: u32) -> u64;
    /// How long after the round starts a notary supports a block of `rank`.
    fn notary_delay_ms(&self, rank: u32) -> u64;
    /// The payload limits.
    fn payload_limits(&self) -> PayloadLimits;
}

/// ICC's delays: Δbm(r) = 2δr and Δntry(r) = 2δr + ε.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IccDelays {
    /// δ, the assumed bound on message delay (ms).
    pub unit_ms: u64,
    /// ε, the notary delay of the leader's block (ms); it also bounds the block rate.
    pub initial_notary_ms: u64,
}

impl Default for IccDelays {
    fn default() -> Self {
        IccDelays {
            unit_ms: 150,
            initial_notary_ms: 100,
        }
    }
}

impl IccDelays {
    fn block_maker(&self, rank: u32) -> u64 {
        2u64.saturating_mul(self.unit_ms)
            .saturating_mul(u64::from(rank))
    }

    fn notary(&self, rank: u32) -> u64 {
        self.block_maker(rank)
            .saturating_add(self.initial_notary_ms)
    }
}

/// The ICC default: ranks are a uniformly random permutation drawn from the beacon.
#[derive(Clone, Debug, Default)]
pub struct IccPolicy {
    /// Delays.
    pub delays: IccDelays,
    /// Payload limits.
    pub limits: PayloadLimits,
}

/// A permutation of `0..n` drawn by Fisher–Yates from SHA-256 of the beacon and height.
pub fn beacon_permutation(height: Height, beacon: &Hash32, n: u32) -> Vec<NodeIndex> {
    let mut perm: Vec<NodeIndex> = (0..n).collect();
    for (counter, i) in (1..n as usize).rev().enumerate() {
        let d = Hash32::digest(
            b"cellar/ranking",
            &[
                &beacon.0,
                &height.to_be_bytes(),
                &(counter as u64).to_be_bytes(),
            ],
        );
        // 128 bits reduced mod i+1: bias below 2^-90.
        let x = u128::from_be_bytes(d.0[..16].try_into().unwrap_or([0; 16]));
        let j = (x % (i as u128 + 1)) as usize;
        perm.swap(i, j);
    }
    perm
}

impl ConsensusPolicy for IccPolicy {
    fn name(&self) -> &str {
        "icc-random-beacon"
    }
    fn ranking(&self, height: Height, beacon: &Hash32, n: u32) -> Vec<NodeIndex> {
        beacon_permutation(height, beacon, n)
    }
    fn block_maker_delay_ms(&self, rank: u32) -> u64 {
        self.delays.block_maker(rank)
    }
    fn notary_delay_ms(&self, rank: u32) -> u64 {
        self.delays.notary(rank)
    }
    fn payload_limits(&self) -> PayloadLimits {
        self.limits
    }
}

/// Fixed round robin: the leader of height h is node h mod n, then the next ones in order.
#[derive(Clone, Debug, Default)]
pub struct RoundRobinPolicy {
    /// Delays.
    pub delays: IccDelays,
    /// Payload limits.
    pub limits: PayloadLimits,
}

impl ConsensusPolicy for RoundRobinPolicy {
    fn name(&self) -> &str {
        "round-robin"
    }
    fn ranking(&self, height: Height, _beacon: &Hash32, n: u32) -> Vec<NodeIndex> {
        if n == 0 {
            return Vec::new();
        }
        let first = (height % u64::from(n)) as u32;
        (0..n).map(|r| (first + r) % n).collect()
    }
    fn block_maker_delay_ms(&self, rank: u32) -> u64 {
        self.delays.block_maker(rank)
    }
    fn notary_delay_ms(&self, rank: u32) -> u64 {
        self.delays.notary(rank)
    }
    fn payload_limits(&self) -> PayloadLimits {
        self.limits
    }
}

/// A policy answer the host refused (the default was used instead).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error, Serialize, Deserialize,
)]
pub enum PolicyError {
    /// The ranking was not a permutation of `0..n`.
    #[error("policy ranking at height {height} is not a permutation of 0..{n}")]
    NotAPermutation {
        /// The height asked about.
        height: Height,
        /// The subnet size.
        n: u32,
    },
    /// A delay over [`MAX_DELAY_MS`].
    #[error("policy {kind} delay {ms} ms for rank {rank} exceeds the cap")]
    DelayTooLong {
        /// "block maker" or "notary".
        kind: String,
        /// The rank asked about.
        rank: u32,
        /// The answer.
        ms: u64,
    },
    /// Payload limits of zero or over the hard caps.
    #[error("policy payload limits {max_messages} messages / {max_bytes} bytes out of range")]
    LimitsOutOfRange {
        /// Messages asked for.
        max_messages: u32,
        /// Bytes asked for.
        max_bytes: u64,
    },
}

/// Wraps a policy and checks each answer, falling back to [`IccPolicy`]'s.
/// Policies scheduled from a height replace it: rankings of a height use
/// the policy in force at that height, delays and limits the policy in
/// force at the current round (see [`PolicyHost::advance`]).
pub struct PolicyHost {
    policy: Box<dyn ConsensusPolicy>,
    fallback: IccPolicy,
    scheduled: BTreeMap<Height, Box<dyn ConsensusPolicy>>,
}

impl PolicyHost {
    /// Wraps `policy`; `fallback` answers when it misbehaves.
    pub fn new(policy: Box<dyn ConsensusPolicy>, fallback: IccPolicy) -> Self {
        PolicyHost {
            policy,
            fallback,
            scheduled: BTreeMap::new(),
        }
    }

    /// The wrapped policy's name.
    pub fn name(&self) -> &str {
        self.policy.name()
    }

    /// Makes `policy` the one in force from height `from` on (replacing a
    /// policy scheduled at the same height).
    pub fn schedule(&mut self, from: Height, policy: Box<dyn ConsensusPolicy>) {
        self.scheduled.insert(from, policy);
    }

    /// The node reached `round`: policies scheduled at or below it come
    /// into force. Returns whether the policy changed.
    pub fn advance(&mut self, round: Height) -> bool {
        let mut changed = false;
        while let Some(entry) = self.scheduled.first_entry() {
            if *entry.key() > round {
                break;
            }
            self.policy = entry.remove();
            changed = true;
        }
        changed
    }

    /// The policy in force at height `h`.
    fn at(&self, h: Height) -> &dyn ConsensusPolicy {
        self.scheduled
            .range(..=h)
            .next_back()
            .map_or(self.policy.as_ref(), |(_, p)| p.as_ref())
    }

    /// A checked ranking, as `rank_of[node]`, and the error if the default was used.
    pub fn ranks(
        &self,
        height: Height,
        beacon: &Hash32,
        n: u32,
    ) -> (Vec<u32>, Option<PolicyError>) {
        let order = self.at(height).ranking(height, beacon, n);
        let (order, err) = match invert(&order, n) {
            Some(ranks) => return (ranks, None),
            None => (
                self.fallback.ranking(height, beacon, n),
                Some(PolicyError::NotAPermutation { height, n }),
            ),
        };
        (invert(&order, n).unwrap_or_default(), err)
    }

    /// A checked block-maker delay.
    pub fn block_maker_delay_ms(&self, rank: u32) -> (u64, Option<PolicyError>) {
        let ms = self.policy.block_maker_delay_ms(rank);
        if ms <= MAX_DELAY_MS {
            return (ms, None);
        }
        let err = PolicyError::DelayTooLong {
            kind: "block maker".into(),
            rank,
            ms,
        };
        (
            self.fallback.block_maker_delay_ms(rank).min(MAX_DELAY_MS),
            Some(err),
        )
    }

    /// A checked notary delay.
    pub fn notary_delay_ms(&self, rank: u32) -> (u64, Option<PolicyError>) {
        let ms = self.policy.notary_delay_ms(rank);
        if ms <= MAX_DELAY_MS {
            return (ms, None);
        }
        let err = PolicyError::DelayTooLong {
            kind: "notary".into(),
            rank,
            ms,
        };
        (
            self.fallback.notary_delay_ms(rank).min(MAX_DELAY_MS),
            Some(err),
        )
    }

    /// Checked payload limits.
    pub fn payload_limits(&self) -> (PayloadLimits, Option<PolicyError>) {
        let l = self.policy.payload_limits();
        if l.max_messages >= 1
            && l.max_messages <= HARD_MAX_BLOCK_MESSAGES
            && l.max_bytes >= 1
            && l.max_bytes <= HARD_MAX_BLOCK_BYTES
        {
            return (l, None);
        }
        let err = PolicyError::LimitsOutOfRange {
            max_messages: l.max_messages,
            max_bytes: l.max_bytes,
        };
        (self.fallback.payload_limits(), Some(err))
    }
}

/// `rank_of[node]` from `order[rank]`, if `order` is a permutation of `0..n`.
fn invert(order: &[NodeIndex], n: u32) -> Option<Vec<u32>> {
    if order.len() != n as usize {
        return None;
    }
    let mut rank_of = vec![u32::MAX; n as usize];
    for (rank, &node) in order.iter().enumerate() {
        let slot = rank_of.get_mut(node as usize)?;
        if *slot != u32::MAX {
            return None;
        }
        *slot = rank as u32;
    }
    Some(rank_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken;
    impl ConsensusPolicy for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        fn ranking(&self, _: Height, _: &Hash32, n: u32) -> Vec<NodeIndex> {
            vec![0; n as usize]
        }
        fn block_maker_delay_ms(&self, _: u32) -> u64 {
            u64::MAX
        }
        fn notary_delay_ms(&self, _: u32) -> u64 {
            MAX_DELAY_MS + 1
        }
        fn payload_limits(&self) -> PayloadLimits {
            PayloadLimits {
                max_messages: 0,
                max_bytes: u64::MAX,
            }
        }
    }

    #[test]
    fn permutations() {
        for h in 0..50 {
            let p = beacon_permutation(h, &Hash32([h as u8; 32]), 7);
            let mut s = p.clone();
            s.sort();
            assert_eq!(s, (0..7).collect::<Vec<_>>());
        }
        // Every node leads sometimes.
        let leaders: std::collections::BTreeSet<u32> = (0..64)
            .map(|h| beacon_permutation(h, &Hash32([3; 32]), 4)[0])
            .collect();
        assert_eq!(leaders.len(), 4);
        let rr = RoundRobinPolicy::default();
        assert_eq!(rr.ranking(5, &Hash32::default(), 4), vec![1, 2, 3, 0]);
    }

    #[test]
    fn host_checks_answers() {
        let good = PolicyHost::new(Box::new(RoundRobinPolicy::default()), IccPolicy::default());
        let (ranks, err) = good.ranks(1, &Hash32::default(), 4);
        assert_eq!(ranks, vec![3, 0, 1, 2]);
        assert!(err.is_none());
        assert_eq!(good.notary_delay_ms(1), (400, None));

        let bad = PolicyHost::new(Box::new(Broken), IccPolicy::default());
        let (ranks, err) = bad.ranks(1, &Hash32::default(), 4);
        let mut sorted = ranks.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        assert_eq!(err, Some(PolicyError::NotAPermutation { height: 1, n: 4 }));
        assert_eq!(bad.block_maker_delay_ms(2).0, 600);
        assert!(bad.block_maker_delay_ms(2).1.is_some());
        assert!(bad.notary_delay_ms(0).1.is_some());
        let (limits, err) = bad.payload_limits();
        assert_eq!(limits, PayloadLimits::default());
        assert!(err.is_some());
        assert!(invert(&[0, 1, 5], 3).is_none());
        assert!(invert(&[0, 1], 3).is_none());
    }
}
