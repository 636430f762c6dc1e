//! The protocol steps: rounds, beacon, block making, notarization,
//! aggregation, delivery and rebroadcast.

use std::collections::{BTreeMap, BTreeSet};

use crate::artifacts::{
    Artifact, Block, BlockCertificate, BlockHash, BlockProposal, BlockShare, CatchUpPackage,
    CatchUpShare, Height, Payload, RandomBeacon, RandomBeaconShare, beacon_message,
    finalization_message, notarization_message, proposal_message,
};
use crate::bls::{self, NodeIndex, SignatureBytes};

use super::{Action, ConsensusNode, FinalizedBatch};
use crate::signed::Signed;

impl ConsensusNode {
    // ----- protocol -----------------------------------------------------

    /// Moves to the round after the highest height with a present, notarized block.
    pub(super) fn advance_round(&mut self, out: &mut Vec<Action>) -> bool {
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
                .commitments
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
            let only_best = supported.iter().all(|b| *b == best)
                && self
                    .commitments
                    .finalized
                    .get(&h)
                    .is_none_or(|b| *b == best);
            if only_best && h > self.delivered.0 {
                let signature = self.secret.signing.sign(&finalization_message(h, &best));
                let me = self.secret.index;
                if self.pool.at(h).finalization.is_none() {
                    if self.commitments.finalized.insert(h, best).is_none() {
                        out.push(Action::Persist(Signed::Finalization {
                            height: h,
                            block: best,
                        }));
                    }
                    let p = self.pool.at(h);
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

    pub(super) fn beacon(&mut self, out: &mut Vec<Action>) -> bool {
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

    pub(super) fn propose(&mut self, out: &mut Vec<Action>) -> bool {
        let h = self.round;
        let Some(start) = self.round_start_ms else {
            return false;
        };
        if self.commitments.proposed.contains(&h) {
            return false;
        }
        let me = self.secret.index;
        let Some(rank) = self.rank_of(h, me, out) else {
            return false;
        };
        let (delay, err) = self
            .policy
            .block_maker_delay_ms(self.rank_for_delay(h, rank));
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
        let record = Signed::Proposal {
            height: h,
            block: hash,
        };
        self.commitments.apply(record);
        self.pool.at(h).blocks.insert(hash, proposal.clone());
        out.push(Action::Persist(record));
        out.push(Action::Broadcast(Artifact::Proposal(proposal)));
        true
    }

    pub(super) fn notarize(&mut self, out: &mut Vec<Action>) -> bool {
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
        // One block per rank, none after a finalization share at h; the
        // block supported before a restart is signed again (the same bytes:
        // BLS is deterministic) if its share is not in the pool.
        let me = self.secret.index;
        let again = self
            .commitments
            .supported
            .get(&h)
            .and_then(|m| m.get(&rank))
            .is_some_and(|b| *b == hash);
        let own_share_in = p
            .notarization_shares
            .get(&hash)
            .is_some_and(|m| m.contains_key(&me));
        if (again && own_share_in) || !self.commitments.may_support(h, rank, &hash) {
            return false;
        }
        let Some(proposal) = p.blocks.get(&hash).cloned() else {
            return false;
        };
        if self.notarized_time(h - 1, &proposal.block.parent).is_none() {
            return false;
        }
        let (delay, err) = self.policy.notary_delay_ms(self.rank_for_delay(h, rank));
        self.report(err, out);
        if self.now_ms < start.saturating_add(delay) {
            return false;
        }
        let signature = self.secret.signing.sign(&notarization_message(h, &hash));
        if !again {
            let record = Signed::Notarization {
                height: h,
                rank,
                block: hash,
            };
            self.commitments.apply(record);
            out.push(Action::Persist(record));
        }
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

    pub(super) fn aggregate(&mut self, out: &mut Vec<Action>) -> bool {
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
            self.note_counted(&c);
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
    pub(super) fn deliver(&mut self, out: &mut Vec<Action>) -> bool {
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
    pub(super) fn maybe_rebroadcast(&mut self, out: &mut Vec<Action>) {
        let wait = self.config.rebroadcast_after_ms;
        if self.now_ms < self.last_progress_ms.saturating_add(wait)
            || self.now_ms < self.last_rebroadcast_ms.saturating_add(wait)
        {
            return;
        }
        self.last_rebroadcast_ms = self.now_ms;
        out.extend(self.recent_chain().into_iter().map(Action::Broadcast));
    }

    /// The newest catch-up package and the chain above it (the recent
    /// heights' beacons, notarized blocks, notarizations, finalizations,
    /// and this node's own shares where those are missing): what a node
    /// needs to take part in the current round. Rebroadcast after a stall,
    /// and sent to a replica that asks for it after its restart.
    pub fn recent_chain(&self) -> Vec<Artifact> {
        let mut out = vec![Artifact::CatchUpPackage(self.cup.clone())];
        let me = self.secret.index;
        let from = (self.cup.content.height + 1)
            .max(self.round.saturating_sub(self.config.rebroadcast_heights));
        for (&h, p) in self.pool.heights.range(from..self.round.max(from) + 1) {
            if let Some(b) = &p.beacon {
                out.push(Artifact::Beacon(b.clone()));
            } else if let Some(s) = p.beacon_shares.get(&me) {
                out.push(Artifact::BeaconShare(RandomBeaconShare {
                    height: h,
                    parent: self
                        .pool
                        .beacon(h - 1)
                        .map(RandomBeacon::hash)
                        .unwrap_or_default(),
                    signer: me,
                    signature: *s,
                }));
            }
            for (hash, b) in &p.blocks {
                if p.notarizations.contains_key(hash) || h == self.round {
                    out.push(Artifact::Proposal(b.clone()));
                }
            }
            for c in p.notarizations.values() {
                out.push(Artifact::Notarization(c.clone()));
            }
            if let Some(f) = &p.finalization {
                out.push(Artifact::Finalization(f.clone()));
            } else {
                for (block, shares) in &p.finalization_shares {
                    if let Some(s) = shares.get(&me) {
                        out.push(Artifact::FinalizationShare(BlockShare {
                            height: h,
                            block: *block,
                            signer: me,
                            signature: *s,
                        }));
                    }
                }
            }
            if p.notarizations.is_empty() {
                for (block, shares) in &p.notarization_shares {
                    if let Some(s) = shares.get(&me) {
                        out.push(Artifact::NotarizationShare(BlockShare {
                            height: h,
                            block: *block,
                            signer: me,
                            signature: *s,
                        }));
                    }
                }
            }
            for (content, shares) in p.catch_up_shares.values() {
                if let Some(s) = shares.get(&me) {
                    out.push(Artifact::CatchUpShare(CatchUpShare {
                        content: content.clone(),
                        signer: me,
                        signature: *s,
                    }));
                }
            }
        }
        out
    }
}

impl ConsensusNode {
    /// Notes a certificate this node's share is part of.
    pub(super) fn note_counted(&mut self, c: &BlockCertificate) {
        if c.signers.contains(&self.secret.index) {
            self.counted = self.counted.max(Some(c.height));
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
