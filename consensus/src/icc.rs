//! The ICC protocol (Camenisch et al., PODC'22, ICC0/ICC1 shape) as a
//! deterministic state machine: [`ConsensusNode`].
//!
//! Round h starts once a notarized block at h−1 and the random beacon of h
//! are known. The beacon (threshold f+1 on the previous beacon) ranks the block
//! makers through the policy; the maker of rank r proposes after Δbm(r)
//! unless it saw a better-ranked block. A notary supports (notarization-shares)
//! the best-ranked valid block whose Δntry(r) has passed, at most one block
//! per rank, skipping ranks whose maker equivocated. n−f shares make a
//! notarization; with a notarized block at h the node moves to h+1 and, if it
//! supported no other block at h, sends a finalization share. n−f
//! of those finalize the block and its ancestors, which are delivered in
//! order with their payload and beacon. Every K heights the nodes
//! threshold-sign a catch-up package.
//!
//! Stalled nodes rebroadcast the recent chain
//! ([`ConsensusNode::recent_chain`]: the catch-up package and the heights
//! above it), which a restarted replica also asks its peers for. A jump to a
//! catch-up package empties the ingress pool (its messages may have been
//! finalized below the package). [`ConsensusNode::set_absent`] names the
//! nodes the replica has not heard from for 1 s: a maker ranked behind
//! absent ones gets the delays of its rank among the present ones (liveness
//! only), so a dead rank-0 maker does not cost every fourth height
//! Δbm(1)/Δntry(1).
//!
//! Inputs: [`ConsensusNode::on_artifact`], [`ConsensusNode::on_tick`] (the only
//! source of time), [`ConsensusNode::submit_ingress`] and, every K heights,
//! [`ConsensusNode::on_execution_state`] (the execution state hash).
//! Outputs: [`Action`]s: `Persist(Signed)` (a choice it signed, to make
//! durable before any broadcast that follows), `Broadcast(artifact)`,
//! `Deliver(FinalizedBatch)` in height order, `CatchUpPackage`, `StateSync`
//! (jumped to a package above what was executed), `PolicyError`. After a
//! restart the node takes back its `Signed` records
//! ([`ConsensusNode::restore`]) and the ingress its state executed
//! ([`ConsensusNode::note_finalized_ingress`]); see `docs/consensus.md` for
//! the crash-restart safety argument.
//!
//! This file holds the API, the configuration and the actions;
//! `icc/validate.rs` checks received artifacts, `icc/protocol.rs` takes the
//! steps.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::artifacts::{
    Artifact, BlockHash, CatchUpContent, CatchUpPackage, CatchUpShare, Hash32, Height, Payload,
    RandomBeacon,
};
use crate::bls::{CryptoError, NodeIndex};
use crate::ingress::{IngressError, IngressLimits, IngressMessage, IngressPool};
use crate::keys::{NodeSecretKeys, SubnetPublicKeys};
use crate::policy::{ConsensusPolicy, IccPolicy, PolicyError, PolicyHost};
use crate::pool::{Pending, Pool};
use crate::signed::{Commitments, Signed};

mod protocol;
mod validate;

/// Tunables of a node (policy-independent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusConfig {
    /// K: a catch-up package every K heights.
    pub catch_up_interval: u64,
    /// Rebroadcast the recent chain and own shares after this long without progress (ms).
    pub rebroadcast_after_ms: u64,
    /// How many recent heights a rebroadcast covers.
    pub rebroadcast_heights: u64,
    /// Artifacts more than this many heights above the current round are dropped.
    pub max_heights_ahead: u64,
    /// Most artifacts waiting for their dependencies.
    pub max_pending: usize,
    /// Most encoded bytes waiting for their dependencies.
    pub max_pending_bytes: usize,
    /// A block's time may be at most this far ahead of the local clock (ms).
    pub block_time_tolerance_ms: u64,
    /// Finalized heights kept in the pool below the newest (when CUPs lag).
    pub retain_heights: u64,
    /// Ingress pool bounds.
    pub ingress: IngressLimits,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        ConsensusConfig {
            catch_up_interval: 100,
            rebroadcast_after_ms: 2000,
            rebroadcast_heights: 64,
            max_heights_ahead: 256,
            max_pending: 8192,
            max_pending_bytes: 128 << 20,
            block_time_tolerance_ms: 2000,
            retain_heights: 256,
            ingress: IngressLimits::default(),
        }
    }
}

/// A finalized block handed to execution, in height order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalizedBatch {
    /// Its height.
    pub height: Height,
    /// The block's hash.
    pub block: BlockHash,
    /// The block maker.
    pub proposer: NodeIndex,
    /// The block's time (ms).
    pub time_ms: u64,
    /// Hash of the random beacon at this height (randomness for execution).
    pub random_beacon: Hash32,
    /// The ingress messages to execute.
    pub payload: Payload,
    /// Whether this is a catch-up height: the caller must report its state hash
    /// through [`ConsensusNode::on_execution_state`].
    pub needs_state_hash: bool,
}

/// What the node asks its environment to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this record durable before carrying out any `Broadcast` that
    /// follows it (in this list or a later one), and give it back through
    /// [`ConsensusNode::restore`] after a restart: it is a choice this node
    /// signed (see [`crate::signed`]).
    Persist(Signed),
    /// Send the artifact to every other node.
    Broadcast(Artifact),
    /// Execute the next finalized block.
    Deliver(FinalizedBatch),
    /// A new catch-up package at a height this node executed; persist it.
    CatchUpPackage(CatchUpPackage),
    /// The node jumped to a catch-up package above what it executed, or the
    /// package certifies a state other than the one this node reported: load
    /// the state with the package's state hash before executing later batches.
    StateSync(CatchUpPackage),
    /// The policy gave a bad answer; the default was used.
    PolicyError(PolicyError),
}

/// Errors of the node's API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    /// The starting catch-up package does not verify.
    #[error("invalid catch-up package: {0}")]
    InvalidCatchUpPackage(CryptoError),
    /// The public keys are inconsistent.
    #[error("invalid subnet keys: {0}")]
    InvalidKeys(CryptoError),
    /// The secret keys do not belong to the public keys.
    #[error("secret keys do not match the subnet's public keys")]
    KeyMismatch,
    /// `on_execution_state` for a height that is not waiting for it.
    #[error("height {0} is not waiting for a state hash")]
    NotAwaitingState(Height),
    /// An ingress message was refused.
    #[error("ingress refused: {0}")]
    Ingress(#[from] IngressError),
}

/// Counters for tests and monitoring.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Artifacts dropped because they were invalid (bad signature, rank, parent, payload).
    pub invalid: u64,
    /// Artifacts dropped as useless (duplicate, stale, too far ahead, queue full).
    pub ignored: u64,
    /// Policy answers refused.
    pub policy_errors: u64,
    /// Blocks delivered.
    pub delivered: u64,
    /// Heights at which a block maker was seen proposing two blocks.
    pub equivocations: u64,
    /// Finalizations seen for a block other than the finalized one (must stay 0).
    pub conflicting_finalizations: u64,
}

/// Whether the caller's state already executed an ingress message (its
/// ingress history), for messages consensus itself has no record of.
pub type ExecutedIngress = Box<dyn Fn(&IngressMessage) -> bool + Send>;

/// Bound on the internal fixpoint loop of one input.
const MAX_STEPS: usize = 10_000;

/// One node's consensus state machine.
pub struct ConsensusNode {
    config: ConsensusConfig,
    keys: SubnetPublicKeys,
    secret: NodeSecretKeys,
    policy: PolicyHost,
    pool: Pool,
    ingress: IngressPool,
    /// Ids (and expiry) of delivered ingress messages, for duplicate checks.
    finalized_ingress: BTreeMap<Hash32, u64>,
    /// What the caller's state knows was executed (see
    /// [`ConsensusNode::set_executed_ingress`]).
    executed_ingress: Option<ExecutedIngress>,
    cup: CatchUpPackage,
    now_ms: u64,
    round: Height,
    round_start_ms: Option<u64>,
    ranks: BTreeMap<Height, Vec<u32>>,
    /// What this node signed (proposals, notarization and finalization
    /// shares), restored after a restart from its [`Signed`] records.
    commitments: Commitments,
    /// The highest height whose notarization or finalization this node's
    /// share is part of (its shares count again after a restart).
    counted: Option<Height>,
    /// Nodes the environment currently hears nothing from (crashed,
    /// restarting, cut off): see [`ConsensusNode::set_absent`].
    absent: BTreeSet<NodeIndex>,
    /// Last delivered height, its block and time.
    delivered: (Height, BlockHash, u64),
    awaiting_state: BTreeMap<Height, (BlockHash, u64, RandomBeacon)>,
    reported: BTreeSet<PolicyError>,
    last_progress_ms: u64,
    last_rebroadcast_ms: u64,
    stats: NodeStats,
}

impl ConsensusNode {
    /// A node that starts from `start` (the genesis or any later catch-up package).
    pub fn new(
        config: ConsensusConfig,
        keys: SubnetPublicKeys,
        secret: NodeSecretKeys,
        start: CatchUpPackage,
        policy: Box<dyn ConsensusPolicy>,
    ) -> Result<Self, ConsensusError> {
        keys.check().map_err(ConsensusError::InvalidKeys)?;
        if !secret.matches(&keys) {
            return Err(ConsensusError::KeyMismatch);
        }
        start
            .verify(&keys)
            .map_err(ConsensusError::InvalidCatchUpPackage)?;
        let ingress = IngressPool::new(config.ingress);
        let c = &start.content;
        let delivered = (c.height, c.block, c.block_time_ms);
        let mut node = ConsensusNode {
            config,
            keys,
            secret,
            policy: PolicyHost::new(policy, IccPolicy::default()),
            pool: Pool::default(),
            ingress,
            finalized_ingress: BTreeMap::new(),
            executed_ingress: None,
            round: c.height + 1,
            cup: start.clone(),
            now_ms: 0,
            round_start_ms: None,
            ranks: BTreeMap::new(),
            commitments: Commitments::default(),
            counted: None,
            absent: BTreeSet::new(),
            delivered,
            awaiting_state: BTreeMap::new(),
            reported: BTreeSet::new(),
            last_progress_ms: 0,
            last_rebroadcast_ms: 0,
            stats: NodeStats::default(),
        };
        node.pool.at(c.height).beacon = Some(c.beacon.clone());
        Ok(node)
    }

    /// Takes back what this node signed before a restart (its
    /// [`Action::Persist`] records, in any order): it will not propose again
    /// at those heights, nor support a block that conflicts with its shares.
    /// Records at or below the starting catch-up package are irrelevant and
    /// dropped. Call before feeding any input.
    pub fn restore(&mut self, records: impl IntoIterator<Item = Signed>) {
        let floor = self.cup.content.height;
        for r in records {
            if r.height() > floor {
                self.commitments.apply(r);
            }
        }
    }

    /// Ingress messages the caller's state says were finalized and executed
    /// (id and expiry, ms), e.g. its ingress history after a restart or a
    /// state sync: this node neither puts them in a block nor supports a
    /// block that carries them again, while they are valid. Consensus
    /// knows the messages of the blocks it delivered itself; what was
    /// delivered below the catch-up package it started from, or jumped to,
    /// only the state knows.
    pub fn note_finalized_ingress(&mut self, ids: impl IntoIterator<Item = (Hash32, u64)>) {
        let time = self.delivered.2;
        for (id, expiry_ms) in ids {
            if expiry_ms > time {
                self.ingress.remove(&id);
                self.finalized_ingress.insert(id, expiry_ms);
            }
        }
    }

    /// Lets this node ask the caller's state whether a message was executed
    /// (after a restart or a jump, consensus knows only the messages of the
    /// blocks it delivered since): such a message is not pooled, so not
    /// proposed again, when a peer's old gossip of it arrives late (a
    /// restarted replica's transport hands it the frames its peers held
    /// for it). Execution refuses a duplicate in any case; this keeps it
    /// out of blocks.
    pub fn set_executed_ingress(&mut self, executed: ExecutedIngress) {
        self.executed_ingress = Some(executed);
    }

    fn known_executed(&self, msg: &IngressMessage) -> bool {
        self.finalized_ingress.contains_key(&msg.id())
            || self.executed_ingress.as_ref().is_some_and(|f| f(msg))
    }

    /// The nodes this node currently hears nothing from. A block maker
    /// ranked below an absent one does not wait for it: its block maker
    /// and notary delays are those of its rank among the makers that are
    /// present (rank r with k absent makers ranked before it waits as rank
    /// r − k). Delays matter for liveness only (agreement never depends on
    /// them), so a wrong guess costs at most a block that loses to a
    /// better-ranked one; a right one saves the rank delay at every height
    /// whose best-ranked maker is down.
    pub fn set_absent(&mut self, absent: impl IntoIterator<Item = NodeIndex>) {
        let me = self.secret.index;
        self.absent = absent.into_iter().filter(|&i| i != me).collect();
    }

    /// The rank whose delays apply to a block of rank `rank` at `h`: its
    /// rank among the makers that are not absent.
    fn rank_for_delay(&self, h: Height, rank: u32) -> u32 {
        let Some(ranks) = self.ranks.get(&h) else {
            return rank;
        };
        let before = self
            .absent
            .iter()
            .filter(|&&i| ranks.get(i as usize).is_some_and(|&r| r < rank))
            .count() as u32;
        rank.saturating_sub(before)
    }

    /// The highest height at which a notarization or finalization this
    /// node has seen includes its own share (none yet: its shares have not
    /// counted since it started).
    pub fn counted_height(&self) -> Option<Height> {
        self.counted
    }

    /// This node's index.
    pub fn index(&self) -> NodeIndex {
        self.secret.index
    }

    /// The current round (the height being agreed on).
    pub fn round(&self) -> Height {
        self.round
    }

    /// The last delivered (finalized) height.
    pub fn finalized_height(&self) -> Height {
        self.delivered.0
    }

    /// The newest catch-up package.
    pub fn catch_up_package(&self) -> &CatchUpPackage {
        &self.cup
    }

    /// Counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Artifacts waiting for their dependencies.
    pub fn pending_len(&self) -> usize {
        self.pool.pending_len()
    }

    /// Messages waiting in the ingress pool.
    pub fn ingress_len(&self) -> usize {
        self.ingress.len()
    }

    /// Advances the clock to `now_ms` (never backwards) and acts on it.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        self.ingress.purge_expired(self.now_ms);
        let mut out = Vec::new();
        self.step(&mut out);
        self.maybe_rebroadcast(&mut out);
        out
    }

    /// A client submits an ingress message here: it is pooled and gossiped.
    pub fn submit_ingress(&mut self, msg: IngressMessage) -> Result<Vec<Action>, ConsensusError> {
        if self.known_executed(&msg) {
            return Err(IngressError::Duplicate.into());
        }
        self.ingress.insert(msg.clone(), self.now_ms)?;
        let mut out = vec![Action::Broadcast(Artifact::Ingress(msg))];
        self.step(&mut out);
        Ok(out)
    }

    /// An artifact from node `from` (at the time of the last tick). The sender
    /// is not trusted (artifacts are relayed): everything is checked by its
    /// signatures; `from` is kept for the transport's own bookkeeping.
    pub fn on_artifact(&mut self, from: NodeIndex, artifact: Artifact) -> Vec<Action> {
        let _ = from;
        let mut out = Vec::new();
        match artifact {
            Artifact::Ingress(msg) => {
                if self.known_executed(&msg) || self.ingress.insert(msg, self.now_ms).is_err() {
                    self.stats.ignored += 1;
                }
            }
            Artifact::CatchUpPackage(cup) => self.on_catch_up_package(cup, &mut out),
            other => {
                let Some(h) = other.height() else {
                    return out;
                };
                if h <= self.cup.content.height
                    || h > self.round.saturating_add(self.config.max_heights_ahead)
                {
                    self.stats.ignored += 1;
                    return out;
                }
                let encoded = other.to_bytes();
                let p = Pending {
                    id: Artifact::id_of(&encoded),
                    size: encoded.len(),
                    artifact: other,
                };
                let (max, max_bytes) = (self.config.max_pending, self.config.max_pending_bytes);
                if !self.pool.push_pending(h, p, max, max_bytes) {
                    self.stats.ignored += 1;
                }
            }
        }
        self.step(&mut out);
        out
    }

    /// Runs `policy` from height `from` on (rankings of `from` and above;
    /// delays and payload limits once this node's round reaches `from`).
    /// Every node must schedule the same policy at the same height, which
    /// callers derive from a finalized batch (its height plus a fixed lag);
    /// a policy still cannot break safety, only liveness: the host checks
    /// its answers as for the first one.
    pub fn schedule_policy(&mut self, from: Height, policy: Box<dyn ConsensusPolicy>) {
        self.policy.schedule(from, policy);
        // Rankings computed ahead with the old policy are recomputed.
        self.ranks.retain(|&h, _| h < from);
    }

    /// The caller's execution state hash after the batch at `height` (a
    /// catch-up height): the node signs and broadcasts its catch-up share.
    pub fn on_execution_state(
        &mut self,
        height: Height,
        state_hash: Hash32,
    ) -> Result<Vec<Action>, ConsensusError> {
        let (block, block_time_ms, beacon) = self
            .awaiting_state
            .remove(&height)
            .ok_or(ConsensusError::NotAwaitingState(height))?;
        let content = CatchUpContent {
            height,
            block,
            block_time_ms,
            beacon,
            state_hash,
        };
        let mut out = Vec::new();
        let signature = self.secret.catch_up_share.sign(&content.message());
        let key = content.hash();
        let entry = self
            .pool
            .at(height)
            .catch_up_shares
            .entry(key)
            .or_insert_with(|| (content.clone(), BTreeMap::new()));
        entry.1.insert(self.secret.index, signature);
        out.push(Action::Broadcast(Artifact::CatchUpShare(CatchUpShare {
            content,
            signer: self.secret.index,
            signature,
        })));
        self.step(&mut out);
        Ok(out)
    }

    // ----- the fixpoint -------------------------------------------------

    fn step(&mut self, out: &mut Vec<Action>) {
        for _ in 0..MAX_STEPS {
            self.policy.advance(self.round);
            let mut progress = self.process_pending(out);
            progress |= self.advance_round(out);
            progress |= self.beacon(out);
            progress |= self.propose(out);
            progress |= self.notarize(out);
            progress |= self.aggregate(out);
            progress |= self.deliver(out);
            if !progress {
                break;
            }
        }
    }

    fn report(&mut self, err: Option<PolicyError>, out: &mut Vec<Action>) {
        if let Some(e) = err {
            self.stats.policy_errors += 1;
            if self.reported.insert(e.clone()) {
                out.push(Action::PolicyError(e));
            }
        }
    }

    fn rank_of(&mut self, h: Height, node: NodeIndex, out: &mut Vec<Action>) -> Option<u32> {
        if !self.ranks.contains_key(&h) {
            let beacon = self.pool.beacon(h)?.hash();
            let (ranks, err) = self.policy.ranks(h, &beacon, self.keys.n());
            self.report(err, out);
            self.ranks.insert(h, ranks);
        }
        self.ranks.get(&h)?.get(node as usize).copied()
    }

    /// Time of the notarized block `hash` at `h` (or the catch-up anchor).
    fn notarized_time(&self, h: Height, hash: &BlockHash) -> Option<u64> {
        let c = &self.cup.content;
        if h == c.height && *hash == c.block {
            return Some(c.block_time_ms);
        }
        let p = self.pool.get(h)?;
        p.notarizations.get(hash)?;
        p.blocks.get(hash).map(|b| b.block.time_ms)
    }

    /// Ids of the ingress in the not-yet-delivered ancestors of `(h, hash)`,
    /// or None if one of them is missing.
    fn undelivered_ancestor_ingress(&self, h: Height, hash: BlockHash) -> Option<BTreeSet<Hash32>> {
        let mut ids = BTreeSet::new();
        let (mut h, mut hash) = (h, hash);
        while h > self.delivered.0 {
            let b = &self.pool.get(h)?.blocks.get(&hash)?.block;
            ids.extend(b.payload.ingress.iter().map(IngressMessage::id));
            (h, hash) = (h - 1, b.parent);
        }
        (h == self.delivered.0 && hash == self.delivered.1).then_some(ids)
    }
}
