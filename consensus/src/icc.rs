//! The ICC protocol (Camenisch et al., PODC'22, ICC0/ICC1 shape) as a
//! deterministic state machine.
//!
//! Round h starts once a notarized block at h−1 and the random beacon of h
//! are known. The beacon (threshold f+1 on the previous beacon) ranks the block
//! makers through the policy; the maker of rank r proposes after Δbm(r)
//! unless it saw a better-ranked block. A notary supports (notarization-shares)
//! the best-ranked valid block whose Δntry(r) has passed, at most one block
//! per rank, skipping ranks whose maker equivocated. n−f shares make a
//! notarization; with a notarized block at h the node moves to h+1 and, if it
//! supported no other block at h, sends a finalization share. n−f of those
//! finalize the block and its ancestors, which are delivered in order. Every
//! K heights the nodes threshold-sign a catch-up package.
//!
//! Inputs: [`ConsensusNode::on_artifact`], [`ConsensusNode::on_tick`] (the only
//! source of time), [`ConsensusNode::submit_ingress`] and
//! [`ConsensusNode::on_execution_state`]. Outputs: [`Action`]s.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::artifacts::{
    Artifact, Block, BlockCertificate, BlockHash, BlockProposal, BlockShare, CatchUpContent,
    CatchUpPackage, CatchUpShare, Hash32, Height, Payload, RandomBeacon, RandomBeaconShare,
    beacon_message, finalization_message, notarization_message, proposal_message,
};
use crate::bls::{self, CryptoError, NodeIndex, SignatureBytes};
use crate::ingress::{IngressError, IngressLimits, IngressMessage, IngressPool};
use crate::keys::{NodeSecretKeys, SubnetPublicKeys};
use crate::policy::{ConsensusPolicy, IccPolicy, PolicyError, PolicyHost};
use crate::pool::{Pending, Pool};

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

enum Verdict {
    Accept,
    Invalid,
    Ignore,
    Wait,
}

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
    cup: CatchUpPackage,
    now_ms: u64,
    round: Height,
    round_start_ms: Option<u64>,
    ranks: BTreeMap<Height, Vec<u32>>,
    proposed: BTreeSet<Height>,
    /// The blocks this node notarization-shared, by height and rank.
    supported: BTreeMap<Height, BTreeMap<u32, BlockHash>>,
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
            round: c.height + 1,
            cup: start.clone(),
            now_ms: 0,
            round_start_ms: None,
            ranks: BTreeMap::new(),
            proposed: BTreeSet::new(),
            supported: BTreeMap::new(),
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
                if self.finalized_ingress.contains_key(&msg.id())
                    || self.ingress.insert(msg, self.now_ms).is_err()
                {
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

    // ----- validation ---------------------------------------------------

    fn process_pending(&mut self, out: &mut Vec<Action>) -> bool {
        let mut any = false;
        let max_h = self.round.saturating_add(self.config.max_heights_ahead);
        let batches = self.pool.take_pending(max_h);
        for (h, items) in batches {
            for p in items {
                if h <= self.cup.content.height {
                    self.stats.ignored += 1;
                    continue;
                }
                match self.validate(&p.artifact, out) {
                    Verdict::Accept => any = true,
                    Verdict::Invalid => self.stats.invalid += 1,
                    Verdict::Ignore => self.stats.ignored += 1,
                    Verdict::Wait => {
                        self.pool.push_pending(h, p, usize::MAX, usize::MAX);
                    }
                }
            }
        }
        any
    }

    fn validate(&mut self, a: &Artifact, out: &mut Vec<Action>) -> Verdict {
        match a {
            Artifact::Ingress(_) | Artifact::CatchUpPackage(_) => Verdict::Ignore,
            Artifact::BeaconShare(s) => self.validate_beacon_share(s),
            Artifact::Beacon(b) => self.validate_beacon(b),
            Artifact::Proposal(p) => self.validate_proposal(p, out),
            Artifact::NotarizationShare(s) => self.validate_block_share(s, false),
            Artifact::FinalizationShare(s) => self.validate_block_share(s, true),
            Artifact::Notarization(c) => self.validate_certificate(c, false),
            Artifact::Finalization(c) => self.validate_certificate(c, true),
            Artifact::CatchUpShare(s) => self.validate_catch_up_share(s),
        }
    }

    fn validate_beacon_share(&mut self, s: &RandomBeaconShare) -> Verdict {
        if s.signer >= self.keys.n() {
            return Verdict::Invalid;
        }
        let Some(prev) = self.pool.beacon(s.height - 1) else {
            return Verdict::Wait;
        };
        if prev.hash() != s.parent {
            return Verdict::Invalid;
        }
        let p = self.pool.at(s.height);
        if p.beacon.is_some() || p.beacon_shares.contains_key(&s.signer) {
            return Verdict::Ignore;
        }
        let msg = beacon_message(s.height, &s.parent);
        if self
            .keys
            .beacon
            .verify_share(s.signer, &msg, &s.signature)
            .is_err()
        {
            return Verdict::Invalid;
        }
        self.pool
            .at(s.height)
            .beacon_shares
            .insert(s.signer, s.signature);
        Verdict::Accept
    }

    fn validate_beacon(&mut self, b: &RandomBeacon) -> Verdict {
        if self.pool.beacon(b.height).is_some() {
            return Verdict::Ignore;
        }
        let Some(prev) = self.pool.beacon(b.height - 1) else {
            return Verdict::Wait;
        };
        if prev.hash() != b.parent {
            return Verdict::Invalid;
        }
        let msg = beacon_message(b.height, &b.parent);
        if self.keys.beacon.verify(&msg, &b.signature).is_err() {
            return Verdict::Invalid;
        }
        self.pool.at(b.height).beacon = Some(b.clone());
        Verdict::Accept
    }

    fn validate_proposal(&mut self, p: &BlockProposal, out: &mut Vec<Action>) -> Verdict {
        let b = &p.block;
        let n = self.keys.n();
        if b.proposer >= n || b.rank >= n {
            return Verdict::Invalid;
        }
        if b.height <= self.delivered.0 {
            return Verdict::Ignore;
        }
        let hash = b.hash();
        let hp = self.pool.at(b.height);
        if hp.blocks.contains_key(&hash) {
            return Verdict::Ignore;
        }
        let vouched = hp.notarizations.contains_key(&hash);
        // At most two blocks per rank are kept: two already prove equivocation.
        let same_rank = hp
            .blocks
            .values()
            .filter(|q| q.block.rank == b.rank)
            .count();
        if !vouched && same_rank >= 2 {
            return Verdict::Ignore;
        }
        if !vouched {
            // Rank, parent, time and payload; a notarization vouches for all of them.
            let Some(rank) = self.rank_of(b.height, b.proposer, out) else {
                return Verdict::Wait;
            };
            if rank != b.rank {
                return Verdict::Invalid;
            }
            let Some(parent_time) = self.notarized_time(b.height - 1, &b.parent) else {
                return Verdict::Wait;
            };
            if b.time_ms <= parent_time {
                return Verdict::Invalid;
            }
            if b.time_ms > self.now_ms + self.config.block_time_tolerance_ms {
                return Verdict::Wait;
            }
            match self.check_payload(b) {
                Verdict::Accept => {}
                v => return v,
            }
        }
        let Some(pk) = self.keys.node_keys.get(b.proposer as usize) else {
            return Verdict::Invalid;
        };
        if bls::verify(pk, &proposal_message(&hash), &p.signature).is_err() {
            return Verdict::Invalid;
        }
        if same_rank > 0 {
            self.stats.equivocations += 1;
        }
        self.pool.at(b.height).blocks.insert(hash, p.clone());
        Verdict::Accept
    }

    fn check_payload(&mut self, b: &Block) -> Verdict {
        let (limits, err) = self.policy.payload_limits();
        if err.is_some() {
            self.stats.policy_errors += 1;
        }
        let payload = &b.payload;
        if payload.ingress.len() > limits.max_messages as usize
            || payload.byte_size() > limits.max_bytes
        {
            return Verdict::Invalid;
        }
        let Some(mut seen) = self.undelivered_ancestor_ingress(b.height - 1, b.parent) else {
            return Verdict::Wait;
        };
        for m in &payload.ingress {
            let id = m.id();
            if !m.valid_at(b.time_ms)
                || m.content.len() > self.config.ingress.max_message_bytes
                || self.finalized_ingress.contains_key(&id)
                || !seen.insert(id)
            {
                return Verdict::Invalid;
            }
        }
        Verdict::Accept
    }

    fn validate_block_share(&mut self, s: &BlockShare, finalization: bool) -> Verdict {
        if s.signer >= self.keys.n() {
            return Verdict::Invalid;
        }
        if s.height <= self.delivered.0 {
            return Verdict::Ignore;
        }
        let p = self.pool.at(s.height);
        let (done, shares, unverified) = if finalization {
            (
                p.finalization.is_some(),
                &p.finalization_shares,
                &p.unverified_finalization_shares,
            )
        } else {
            (
                p.notarizations.contains_key(&s.block),
                &p.notarization_shares,
                &p.unverified_notarization_shares,
            )
        };
        if done
            || shares
                .get(&s.block)
                .is_some_and(|m| m.contains_key(&s.signer))
        {
            return Verdict::Ignore;
        }
        match unverified.get(&s.block).and_then(|m| m.get(&s.signer)) {
            Some(sig) if *sig == s.signature => return Verdict::Ignore,
            // Another share in the signer's name is waiting: one of them is
            // forged. Check this one now so a forgery cannot shadow it.
            Some(_) => return self.verify_share_now(s, finalization),
            None => {}
        }
        // Shares wait for the block (notarization) or its notarization
        // (finalization), so a faulty signer cannot fill the pool with shares
        // on made-up hashes.
        let known = if finalization {
            p.notarizations.contains_key(&s.block)
        } else {
            p.blocks.contains_key(&s.block)
        };
        if !known {
            return Verdict::Wait;
        }
        // Verified in `check_shares` once a quorum is in: one pairing check
        // for the lot, one per share only if that fails.
        let unverified = if finalization {
            &mut p.unverified_finalization_shares
        } else {
            &mut p.unverified_notarization_shares
        };
        unverified
            .entry(s.block)
            .or_default()
            .insert(s.signer, s.signature);
        Verdict::Accept
    }

    /// Verifies one share at once; if valid it replaces the waiting one.
    fn verify_share_now(&mut self, s: &BlockShare, finalization: bool) -> Verdict {
        let msg = if finalization {
            finalization_message(s.height, &s.block)
        } else {
            notarization_message(s.height, &s.block)
        };
        let Some(pk) = self.keys.node_keys.get(s.signer as usize) else {
            return Verdict::Invalid;
        };
        if bls::verify(pk, &msg, &s.signature).is_err() {
            return Verdict::Invalid;
        }
        let p = self.pool.at(s.height);
        let (verified, unverified) = if finalization {
            (
                &mut p.finalization_shares,
                &mut p.unverified_finalization_shares,
            )
        } else {
            (
                &mut p.notarization_shares,
                &mut p.unverified_notarization_shares,
            )
        };
        if let Some(m) = unverified.get_mut(&s.block) {
            m.remove(&s.signer);
        }
        verified
            .entry(s.block)
            .or_default()
            .insert(s.signer, s.signature);
        Verdict::Accept
    }

    /// Verifies the unverified shares on `block` at `h` together (one
    /// multi-signature check); if that fails, one by one, dropping bad ones.
    fn check_shares(&mut self, finalization: bool, h: Height, block: BlockHash) {
        let p = self.pool.at(h);
        let (verified, unverified) = if finalization {
            (
                p.finalization_shares.entry(block).or_default(),
                p.unverified_finalization_shares.remove(&block),
            )
        } else {
            (
                p.notarization_shares.entry(block).or_default(),
                p.unverified_notarization_shares.remove(&block),
            )
        };
        let Some(unverified) = unverified else {
            return;
        };
        let msg = if finalization {
            finalization_message(h, &block)
        } else {
            notarization_message(h, &block)
        };
        let mut all = verified.clone();
        all.extend(unverified.iter().map(|(i, s)| (*i, *s)));
        let pks: Vec<&bls::PublicKey> = all
            .keys()
            .filter_map(|i| self.keys.node_keys.get(*i as usize))
            .collect();
        let sigs: Vec<SignatureBytes> = all.values().copied().collect();
        let together = pks.len() == sigs.len()
            && bls::aggregate(&sigs)
                .and_then(|agg| bls::verify_multi(&pks, &msg, &agg))
                .is_ok();
        let mut invalid = 0;
        for (i, sig) in unverified {
            let ok = together
                || self
                    .keys
                    .node_keys
                    .get(i as usize)
                    .is_some_and(|pk| bls::verify(pk, &msg, &sig).is_ok());
            if ok {
                verified.insert(i, sig);
            } else {
                invalid += 1;
            }
        }
        self.stats.invalid += invalid;
    }

    fn validate_certificate(&mut self, c: &BlockCertificate, finalization: bool) -> Verdict {
        let p = self.pool.at(c.height);
        if finalization {
            if let Some(f) = &p.finalization {
                if f.block != c.block {
                    // Verified below would mean a safety violation; count it.
                    if self.verify_certificate(c, true) {
                        self.stats.conflicting_finalizations += 1;
                    }
                }
                return Verdict::Ignore;
            }
        } else if p.notarizations.contains_key(&c.block) {
            return Verdict::Ignore;
        }
        if c.height <= self.delivered.0 {
            return Verdict::Ignore;
        }
        if !self.verify_certificate(c, finalization) {
            return Verdict::Invalid;
        }
        let p = self.pool.at(c.height);
        if finalization {
            p.finalization = Some(c.clone());
        } else {
            p.notarizations.insert(c.block, c.clone());
        }
        Verdict::Accept
    }

    fn verify_certificate(&self, c: &BlockCertificate, finalization: bool) -> bool {
        let n = self.keys.n();
        if c.signers.len() < self.keys.quorum() as usize
            || !c.signers.windows(2).all(|w| w[0] < w[1])
            || c.signers.last().is_some_and(|&s| s >= n)
        {
            return false;
        }
        let pks: Vec<&bls::PublicKey> = c
            .signers
            .iter()
            .filter_map(|&s| self.keys.node_keys.get(s as usize))
            .collect();
        let msg = if finalization {
            finalization_message(c.height, &c.block)
        } else {
            notarization_message(c.height, &c.block)
        };
        bls::verify_multi(&pks, &msg, &c.signature).is_ok()
    }

    fn validate_catch_up_share(&mut self, s: &CatchUpShare) -> Verdict {
        let h = s.content.height;
        if s.signer >= self.keys.n() || !h.is_multiple_of(self.config.catch_up_interval.max(1)) {
            return Verdict::Invalid;
        }
        let p = self.pool.at(h);
        if p.catch_up_shares
            .values()
            .any(|(_, m)| m.contains_key(&s.signer))
        {
            return Verdict::Ignore;
        }
        if self
            .keys
            .catch_up
            .verify_share(s.signer, &s.content.message(), &s.signature)
            .is_err()
        {
            return Verdict::Invalid;
        }
        self.pool
            .at(h)
            .catch_up_shares
            .entry(s.content.hash())
            .or_insert_with(|| (s.content.clone(), BTreeMap::new()))
            .1
            .insert(s.signer, s.signature);
        Verdict::Accept
    }

    fn on_catch_up_package(&mut self, cup: CatchUpPackage, out: &mut Vec<Action>) {
        let h = cup.content.height;
        if h <= self.cup.content.height {
            self.stats.ignored += 1;
            return;
        }
        if cup.verify(&self.keys).is_err() {
            self.stats.invalid += 1;
            return;
        }
        self.adopt_catch_up(cup, out);
    }

    fn adopt_catch_up(&mut self, cup: CatchUpPackage, out: &mut Vec<Action>) {
        let c = cup.content.clone();
        self.cup = cup.clone();
        if c.height > self.delivered.0 {
            // Jump: everything up to the package is settled by it.
            self.delivered = (c.height, c.block, c.block_time_ms);
            self.awaiting_state.clear();
            if self.round <= c.height {
                self.round = c.height + 1;
                self.round_start_ms = None;
                self.last_progress_ms = self.now_ms;
            }
            out.push(Action::StateSync(cup));
        } else {
            // This node signed another state at that height: its execution
            // diverged, and it must load the certified state.
            let me = self.secret.index;
            let diverged = self.pool.get(c.height).is_some_and(|p| {
                p.catch_up_shares
                    .values()
                    .any(|(mine, m)| m.contains_key(&me) && mine.state_hash != c.state_hash)
            });
            out.push(if diverged {
                Action::StateSync(cup)
            } else {
                Action::CatchUpPackage(cup)
            });
        }
        self.purge();
        if self.pool.beacon(c.height).is_none() {
            self.pool.at(c.height).beacon = Some(c.beacon);
        }
    }

    fn purge(&mut self) {
        let below = self
            .cup
            .content
            .height
            .max(self.delivered.0.saturating_sub(self.config.retain_heights));
        self.pool.purge_below(below);
        self.ranks = self.ranks.split_off(&below);
        self.supported = self.supported.split_off(&below);
        self.proposed = self.proposed.split_off(&below);
        self.awaiting_state = self.awaiting_state.split_off(&below);
    }

    // ----- protocol -----------------------------------------------------

    /// Moves to the round after the highest height with a present, notarized block.
    fn advance_round(&mut self, out: &mut Vec<Action>) -> bool {
        let mut next = self.round;
        let tops: Vec<Height> = self
            .pool
            .heights
            .range(self.round..)
            .filter(|(_, p)| !p.notarized_blocks().is_empty())
            .map(|(h, _)| *h)
            .collect();
        if let Some(&top) = tops.last() {
            next = top + 1;
        }
        // A delivered (finalized) block is notarized even if its notarization
        // never arrived here.
        next = next.max(self.delivered.0 + 1);
        if next == self.round {
            return false;
        }
        // Finishing rounds round..next: finalization share where this node
        // supported no block but the notarized one.
        for h in self.round..next {
            let Some(p) = self.pool.get(h) else {
                continue;
            };
            let supported: BTreeSet<BlockHash> = self
                .supported
                .get(&h)
                .map(|m| m.values().copied().collect())
                .unwrap_or_default();
            // The block this node supported if that one is notarized, else
            // the best notarized block (if it supported none).
            let notarized: Vec<BlockHash> = p
                .notarized_blocks()
                .iter()
                .map(|b| b.block.hash())
                .collect();
            let Some(best) = notarized
                .iter()
                .find(|b| supported.contains(b))
                .or(notarized.first())
                .copied()
            else {
                continue;
            };
            let only_best = supported.iter().all(|b| *b == best);
            if only_best && h > self.delivered.0 {
                let signature = self.secret.signing.sign(&finalization_message(h, &best));
                let me = self.secret.index;
                let p = self.pool.at(h);
                if p.finalization.is_none() {
                    p.finalization_shares
                        .entry(best)
                        .or_default()
                        .insert(me, signature);
                    out.push(Action::Broadcast(Artifact::FinalizationShare(BlockShare {
                        height: h,
                        block: best,
                        signer: me,
                        signature,
                    })));
                }
            }
        }
        self.round = next;
        self.round_start_ms = None;
        self.reported.clear();
        self.last_progress_ms = self.now_ms;
        true
    }

    fn beacon(&mut self, out: &mut Vec<Action>) -> bool {
        let h = self.round;
        let me = self.secret.index;
        let mut progress = false;
        if self.pool.beacon(h).is_none()
            && let Some(prev) = self.pool.beacon(h - 1).map(RandomBeacon::hash)
            && !self.pool.at(h).beacon_shares.contains_key(&me)
        {
            let signature = self.secret.beacon_share.sign(&beacon_message(h, &prev));
            self.pool.at(h).beacon_shares.insert(me, signature);
            out.push(Action::Broadcast(Artifact::BeaconShare(
                RandomBeaconShare {
                    height: h,
                    parent: prev,
                    signer: me,
                    signature,
                },
            )));
            progress = true;
        }
        // Combine wherever enough shares are in, lowest height first (each
        // beacon's parent is the one below).
        let t = self.keys.beacon.threshold as usize;
        let ready: Vec<Height> = self
            .pool
            .heights
            .range(self.delivered.0 + 1..h.max(self.delivered.0) + 1)
            .filter(|(_, p)| p.beacon.is_none() && p.beacon_shares.len() >= t)
            .map(|(h, _)| *h)
            .collect();
        for b in ready {
            let Some(parent) = self.pool.beacon(b - 1).map(RandomBeacon::hash) else {
                continue;
            };
            let p = self.pool.at(b);
            let shares: Vec<(NodeIndex, SignatureBytes)> =
                p.beacon_shares.iter().map(|(i, s)| (*i, *s)).collect();
            if let Ok(signature) = self.keys.beacon.combine_verified(&shares) {
                p.beacon = Some(RandomBeacon {
                    height: b,
                    parent,
                    signature,
                });
                progress = true;
            }
        }
        if self.pool.beacon(h).is_some() && self.round_start_ms.is_none() {
            self.round_start_ms = Some(self.now_ms);
            progress = true;
        }
        progress
    }

    fn propose(&mut self, out: &mut Vec<Action>) -> bool {
        let h = self.round;
        let Some(start) = self.round_start_ms else {
            return false;
        };
        if self.proposed.contains(&h) {
            return false;
        }
        let me = self.secret.index;
        let Some(rank) = self.rank_of(h, me, out) else {
            return false;
        };
        let (delay, err) = self.policy.block_maker_delay_ms(rank);
        self.report(err, out);
        if self.now_ms < start.saturating_add(delay) {
            return false;
        }
        // Stay silent if a better-ranked block exists, unless its maker
        // equivocated (two blocks at its rank): then nobody may support it.
        let p = self.pool.at(h);
        let better = p
            .blocks_by_rank()
            .range(..rank)
            .any(|(_, hashes)| hashes.len() == 1);
        if !p.notarizations.is_empty() || better {
            return false;
        }
        // Parent: the best notarized block at h−1 (or the catch-up anchor).
        let c = &self.cup.content;
        let parent = if h - 1 == c.height {
            Some((c.block, c.block_time_ms))
        } else {
            self.pool.get(h - 1).and_then(|p| {
                p.notarized_blocks()
                    .first()
                    .map(|b| (b.block.hash(), b.block.time_ms))
            })
        };
        let Some((parent, parent_time)) = parent else {
            return false;
        };
        let Some(mut exclude) = self.undelivered_ancestor_ingress(h - 1, parent) else {
            return false;
        };
        let time_ms = self.now_ms.max(parent_time + 1);
        let (limits, err) = self.policy.payload_limits();
        self.report(err, out);
        exclude.extend(self.finalized_ingress.keys().copied());
        let ingress = self
            .ingress
            .select(time_ms, limits.max_messages, limits.max_bytes, |id| {
                exclude.contains(id)
            });
        let block = Block {
            height: h,
            parent,
            rank,
            proposer: me,
            time_ms,
            payload: Payload { ingress },
        };
        let hash = block.hash();
        let proposal = BlockProposal {
            signature: self.secret.signing.sign(&proposal_message(&hash)),
            block,
        };
        self.proposed.insert(h);
        self.pool.at(h).blocks.insert(hash, proposal.clone());
        out.push(Action::Broadcast(Artifact::Proposal(proposal)));
        true
    }

    fn notarize(&mut self, out: &mut Vec<Action>) -> bool {
        let h = self.round;
        let Some(start) = self.round_start_ms else {
            return false;
        };
        let Some(p) = self.pool.get(h) else {
            return false;
        };
        if !p.notarizations.is_empty() {
            return false;
        }
        // The best rank whose maker did not equivocate; its block if it has
        // only one and its parent is notarized.
        let mut candidate = None;
        for (rank, hashes) in p.blocks_by_rank() {
            if hashes.len() == 1 {
                candidate = Some((rank, hashes[0]));
                break;
            }
        }
        let Some((rank, hash)) = candidate else {
            return false;
        };
        if self
            .supported
            .get(&h)
            .is_some_and(|m| m.contains_key(&rank))
        {
            return false;
        }
        let Some(proposal) = p.blocks.get(&hash).cloned() else {
            return false;
        };
        if self.notarized_time(h - 1, &proposal.block.parent).is_none() {
            return false;
        }
        let (delay, err) = self.policy.notary_delay_ms(rank);
        self.report(err, out);
        if self.now_ms < start.saturating_add(delay) {
            return false;
        }
        let me = self.secret.index;
        let signature = self.secret.signing.sign(&notarization_message(h, &hash));
        self.supported.entry(h).or_default().insert(rank, hash);
        self.pool
            .at(h)
            .notarization_shares
            .entry(hash)
            .or_default()
            .insert(me, signature);
        // Echo the block so every notary can check it, then the share.
        if proposal.block.proposer != me {
            out.push(Action::Broadcast(Artifact::Proposal(proposal)));
        }
        out.push(Action::Broadcast(Artifact::NotarizationShare(BlockShare {
            height: h,
            block: hash,
            signer: me,
            signature,
        })));
        true
    }

    fn aggregate(&mut self, out: &mut Vec<Action>) -> bool {
        let q = self.keys.quorum() as usize;
        let mut progress = false;
        let mut made = Vec::new();
        let mut cups = Vec::new();
        let t_cup = self.keys.catch_up.threshold as usize;
        // Verify waiting shares where they could complete a quorum.
        let mut work = Vec::new();
        for (h, p) in self.pool.heights.range(self.delivered.0 + 1..) {
            let count = |m: &BTreeMap<BlockHash, BTreeMap<NodeIndex, SignatureBytes>>, b| {
                m.get(b).map_or(0, BTreeMap::len)
            };
            for (block, u) in &p.unverified_notarization_shares {
                if !p.notarizations.contains_key(block)
                    && u.len() + count(&p.notarization_shares, block) >= q
                {
                    work.push((false, *h, *block));
                }
            }
            if p.finalization.is_none() {
                for (block, u) in &p.unverified_finalization_shares {
                    if u.len() + count(&p.finalization_shares, block) >= q {
                        work.push((true, *h, *block));
                    }
                }
            }
        }
        for (finalization, h, block) in work {
            self.check_shares(finalization, h, block);
        }
        for (h, p) in self.pool.heights.range_mut(self.delivered.0 + 1..) {
            for (block, shares) in &p.notarization_shares {
                if shares.len() >= q
                    && !p.notarizations.contains_key(block)
                    && let Some(c) = certify(*h, *block, shares, q)
                {
                    made.push((false, c));
                }
            }
            if p.finalization.is_none() {
                for (block, shares) in &p.finalization_shares {
                    if shares.len() >= q
                        && let Some(c) = certify(*h, *block, shares, q)
                    {
                        made.push((true, c));
                        break;
                    }
                }
            }
        }
        for (finalization, c) in made {
            let p = self.pool.at(c.height);
            if finalization {
                p.finalization = Some(c.clone());
                out.push(Action::Broadcast(Artifact::Finalization(c)));
            } else {
                p.notarizations.insert(c.block, c.clone());
                out.push(Action::Broadcast(Artifact::Notarization(c)));
            }
            progress = true;
        }
        let cup_floor = self.cup.content.height + 1;
        for (_, p) in self.pool.heights.range(cup_floor..) {
            for (content, shares) in p.catch_up_shares.values() {
                if shares.len() >= t_cup {
                    let v: Vec<(NodeIndex, SignatureBytes)> =
                        shares.iter().map(|(i, s)| (*i, *s)).collect();
                    if let Ok(signature) = self.keys.catch_up.combine_verified(&v) {
                        cups.push(CatchUpPackage {
                            content: content.clone(),
                            signature,
                        });
                    }
                }
            }
        }
        if let Some(cup) = cups.into_iter().max_by_key(|c| c.content.height) {
            out.push(Action::Broadcast(Artifact::CatchUpPackage(cup.clone())));
            self.adopt_catch_up(cup, out);
            progress = true;
        }
        progress
    }

    /// Delivers the finalized chain up to the highest finalization whose
    /// blocks (and beacons) are all present.
    fn deliver(&mut self, out: &mut Vec<Action>) -> bool {
        let Some((top, block)) = self
            .pool
            .heights
            .range(self.delivered.0 + 1..)
            .rev()
            .find_map(|(h, p)| p.finalization.as_ref().map(|f| (*h, f.block)))
        else {
            return false;
        };
        let mut chain = Vec::new();
        let (mut h, mut hash) = (top, block);
        while h > self.delivered.0 {
            let Some(p) = self.pool.get(h) else {
                return false;
            };
            let (Some(b), Some(beacon)) = (p.blocks.get(&hash), p.beacon.as_ref()) else {
                return false;
            };
            chain.push((b.block.clone(), beacon.clone()));
            (h, hash) = (h - 1, b.block.parent);
        }
        if hash != self.delivered.1 {
            // Cannot happen with at most f faults: a finalized chain not
            // extending what was delivered.
            self.stats.conflicting_finalizations += 1;
            return false;
        }
        let k = self.config.catch_up_interval.max(1);
        for (b, beacon) in chain.into_iter().rev() {
            let hash = b.hash();
            for m in &b.payload.ingress {
                let id = m.id();
                self.ingress.remove(&id);
                self.finalized_ingress.insert(id, m.expiry_ms);
            }
            let needs_state_hash = b.height % k == 0;
            if needs_state_hash {
                self.awaiting_state
                    .insert(b.height, (hash, b.time_ms, beacon.clone()));
            }
            self.delivered = (b.height, hash, b.time_ms);
            self.stats.delivered += 1;
            out.push(Action::Deliver(FinalizedBatch {
                height: b.height,
                block: hash,
                proposer: b.proposer,
                time_ms: b.time_ms,
                random_beacon: beacon.hash(),
                payload: b.payload,
                needs_state_hash,
            }));
        }
        let t = self.delivered.2;
        self.finalized_ingress.retain(|_, expiry| *expiry > t);
        self.last_progress_ms = self.now_ms;
        self.purge();
        true
    }

    /// After `rebroadcast_after_ms` without progress, resend the recent chain
    /// and this node's own shares so nodes that missed them (restarted,
    /// partitioned) can catch up.
    fn maybe_rebroadcast(&mut self, out: &mut Vec<Action>) {
        let wait = self.config.rebroadcast_after_ms;
        if self.now_ms < self.last_progress_ms.saturating_add(wait)
            || self.now_ms < self.last_rebroadcast_ms.saturating_add(wait)
        {
            return;
        }
        self.last_rebroadcast_ms = self.now_ms;
        out.push(Action::Broadcast(Artifact::CatchUpPackage(
            self.cup.clone(),
        )));
        let me = self.secret.index;
        let from = (self.cup.content.height + 1)
            .max(self.round.saturating_sub(self.config.rebroadcast_heights));
        for (&h, p) in self.pool.heights.range(from..self.round.max(from) + 1) {
            if let Some(b) = &p.beacon {
                out.push(Action::Broadcast(Artifact::Beacon(b.clone())));
            } else if let Some(s) = p.beacon_shares.get(&me) {
                out.push(Action::Broadcast(Artifact::BeaconShare(
                    RandomBeaconShare {
                        height: h,
                        parent: self
                            .pool
                            .beacon(h - 1)
                            .map(RandomBeacon::hash)
                            .unwrap_or_default(),
                        signer: me,
                        signature: *s,
                    },
                )));
            }
            for (hash, b) in &p.blocks {
                if p.notarizations.contains_key(hash) || h == self.round {
                    out.push(Action::Broadcast(Artifact::Proposal(b.clone())));
                }
            }
            for c in p.notarizations.values() {
                out.push(Action::Broadcast(Artifact::Notarization(c.clone())));
            }
            if let Some(f) = &p.finalization {
                out.push(Action::Broadcast(Artifact::Finalization(f.clone())));
            } else {
                for (block, shares) in &p.finalization_shares {
                    if let Some(s) = shares.get(&me) {
                        out.push(Action::Broadcast(Artifact::FinalizationShare(BlockShare {
                            height: h,
                            block: *block,
                            signer: me,
                            signature: *s,
                        })));
                    }
                }
            }
            if p.notarizations.is_empty() {
                for (block, shares) in &p.notarization_shares {
                    if let Some(s) = shares.get(&me) {
                        out.push(Action::Broadcast(Artifact::NotarizationShare(BlockShare {
                            height: h,
                            block: *block,
                            signer: me,
                            signature: *s,
                        })));
                    }
                }
            }
            for (content, shares) in p.catch_up_shares.values() {
                if let Some(s) = shares.get(&me) {
                    out.push(Action::Broadcast(Artifact::CatchUpShare(CatchUpShare {
                        content: content.clone(),
                        signer: me,
                        signature: *s,
                    })));
                }
            }
        }
    }
}

/// A multi-signature of the `q` lowest-indexed signers.
fn certify(
    height: Height,
    block: BlockHash,
    shares: &BTreeMap<NodeIndex, SignatureBytes>,
    q: usize,
) -> Option<BlockCertificate> {
    let chosen: Vec<(NodeIndex, SignatureBytes)> =
        shares.iter().take(q).map(|(i, s)| (*i, *s)).collect();
    let sigs: Vec<SignatureBytes> = chosen.iter().map(|(_, s)| *s).collect();
    let signature = bls::aggregate(&sigs).ok()?;
    Some(BlockCertificate {
        height,
        block,
        signers: chosen.into_iter().map(|(i, _)| i).collect(),
        signature,
    })
}
