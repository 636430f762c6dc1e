//! Validation of received artifacts: cheap checks first, signatures last;
//! artifacts whose beacon, parent or block is missing wait in the pool.

use std::collections::BTreeMap;

use crate::artifacts::{
    Artifact, Block, BlockCertificate, BlockHash, BlockProposal, BlockShare, CatchUpPackage,
    CatchUpShare, Height, RandomBeacon, RandomBeaconShare, beacon_message, finalization_message,
    notarization_message, proposal_message,
};
use crate::bls::{self, SignatureBytes};

use super::{Action, ConsensusNode};

/// What to do with a received artifact.
pub(super) enum Verdict {
    /// Valid and new: now in the pool.
    Accept,
    /// Invalid: dropped and counted.
    Invalid,
    /// Valid or not, useless (duplicate, stale): dropped.
    Ignore,
    /// Cannot be judged yet: back to the waiting queue.
    Wait,
}

impl ConsensusNode {
    // ----- validation ---------------------------------------------------

    pub(super) fn process_pending(&mut self, out: &mut Vec<Action>) -> bool {
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

    pub(super) fn validate(&mut self, a: &Artifact, out: &mut Vec<Action>) -> Verdict {
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

    pub(super) fn validate_beacon_share(&mut self, s: &RandomBeaconShare) -> Verdict {
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

    pub(super) fn validate_beacon(&mut self, b: &RandomBeacon) -> Verdict {
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

    pub(super) fn validate_proposal(
        &mut self,
        p: &BlockProposal,
        out: &mut Vec<Action>,
    ) -> Verdict {
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

    pub(super) fn check_payload(&mut self, b: &Block) -> Verdict {
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

    pub(super) fn validate_block_share(&mut self, s: &BlockShare, finalization: bool) -> Verdict {
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
    pub(super) fn verify_share_now(&mut self, s: &BlockShare, finalization: bool) -> Verdict {
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
    pub(super) fn check_shares(&mut self, finalization: bool, h: Height, block: BlockHash) {
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

    pub(super) fn validate_certificate(
        &mut self,
        c: &BlockCertificate,
        finalization: bool,
    ) -> Verdict {
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
        self.note_counted(c);
        let p = self.pool.at(c.height);
        if finalization {
            p.finalization = Some(c.clone());
        } else {
            p.notarizations.insert(c.block, c.clone());
        }
        Verdict::Accept
    }

    pub(super) fn verify_certificate(&self, c: &BlockCertificate, finalization: bool) -> bool {
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

    pub(super) fn validate_catch_up_share(&mut self, s: &CatchUpShare) -> Verdict {
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

    pub(super) fn on_catch_up_package(&mut self, cup: CatchUpPackage, out: &mut Vec<Action>) {
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

    pub(super) fn adopt_catch_up(&mut self, cup: CatchUpPackage, out: &mut Vec<Action>) {
        let c = cup.content.clone();
        self.cup = cup.clone();
        if c.height > self.delivered.0 {
            // Jump: everything up to the package is settled by it. The
            // pooled messages may have been finalized below it (this node
            // cannot tell): they are dropped rather than proposed again;
            // peers that gossiped them still hold the live ones.
            self.delivered = (c.height, c.block, c.block_time_ms);
            self.awaiting_state.clear();
            self.ingress.clear();
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

    pub(super) fn purge(&mut self) {
        let below = self
            .cup
            .content
            .height
            .max(self.delivered.0.saturating_sub(self.config.retain_heights));
        self.pool.purge_below(below);
        self.ranks = self.ranks.split_off(&below);
        self.commitments.purge_below(below);
        self.awaiting_state = self.awaiting_state.split_off(&below);
    }
}
