//! The artifact pool: validated artifacts by height, and a bounded queue of
//! artifacts that cannot be judged yet (their beacon, parent or block has not
//! arrived). Ordered maps throughout, so every scan is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::artifacts::{
    Artifact, BlockCertificate, BlockHash, BlockProposal, CatchUpContent, Hash32, Height,
    RandomBeacon,
};
use crate::bls::{NodeIndex, SignatureBytes};

/// Validated artifacts of one height.
#[derive(Debug, Default)]
pub(crate) struct HeightPool {
    /// The beacon of this height.
    pub beacon: Option<RandomBeacon>,
    /// Verified beacon shares (on the one possible parent beacon).
    pub beacon_shares: BTreeMap<NodeIndex, SignatureBytes>,
    /// Valid proposals (or blocks a notarization vouches for).
    pub blocks: BTreeMap<BlockHash, BlockProposal>,
    /// Notarizations by block.
    pub notarizations: BTreeMap<BlockHash, BlockCertificate>,
    /// Verified notarization shares by block and signer.
    pub notarization_shares: BTreeMap<BlockHash, BTreeMap<NodeIndex, SignatureBytes>>,
    /// Notarization shares not verified yet (checked together once a quorum is in).
    pub unverified_notarization_shares: BTreeMap<BlockHash, BTreeMap<NodeIndex, SignatureBytes>>,
    /// The finalization (at most one block per height can be finalized).
    pub finalization: Option<BlockCertificate>,
    /// Verified finalization shares by block and signer.
    pub finalization_shares: BTreeMap<BlockHash, BTreeMap<NodeIndex, SignatureBytes>>,
    /// Finalization shares not verified yet.
    pub unverified_finalization_shares: BTreeMap<BlockHash, BTreeMap<NodeIndex, SignatureBytes>>,
    /// Verified catch-up shares by content hash.
    pub catch_up_shares: BTreeMap<Hash32, (CatchUpContent, BTreeMap<NodeIndex, SignatureBytes>)>,
}

impl HeightPool {
    /// Blocks by rank (more than one at a rank means its maker equivocated).
    pub fn blocks_by_rank(&self) -> BTreeMap<u32, Vec<BlockHash>> {
        let mut out: BTreeMap<u32, Vec<BlockHash>> = BTreeMap::new();
        for (h, p) in &self.blocks {
            out.entry(p.block.rank).or_default().push(*h);
        }
        out
    }

    /// Notarized blocks that are present, best (lowest rank, then hash) first.
    pub fn notarized_blocks(&self) -> Vec<&BlockProposal> {
        let mut v: Vec<&BlockProposal> = self
            .notarizations
            .keys()
            .filter_map(|h| self.blocks.get(h))
            .collect();
        v.sort_by_key(|p| (p.block.rank, p.block.hash()));
        v
    }
}

/// An artifact waiting for what it depends on.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Its id.
    pub id: Hash32,
    /// Its encoded size.
    pub size: usize,
    /// The artifact.
    pub artifact: Artifact,
}

/// All heights of the pool plus the waiting queue.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Validated artifacts by height.
    pub heights: BTreeMap<Height, HeightPool>,
    /// Waiting artifacts by height.
    pub pending: BTreeMap<Height, Vec<Pending>>,
    pending_ids: BTreeSet<Hash32>,
    pending_len: usize,
    pending_bytes: usize,
}

impl Pool {
    /// The height's pool, created if absent.
    pub fn at(&mut self, h: Height) -> &mut HeightPool {
        self.heights.entry(h).or_default()
    }

    /// The height's pool, if any.
    pub fn get(&self, h: Height) -> Option<&HeightPool> {
        self.heights.get(&h)
    }

    /// The beacon at `h`, if known.
    pub fn beacon(&self, h: Height) -> Option<&RandomBeacon> {
        self.heights.get(&h).and_then(|p| p.beacon.as_ref())
    }

    /// Queues an artifact unless it is already queued or the queue holds
    /// `max` artifacts or `max_bytes` bytes.
    pub fn push_pending(&mut self, h: Height, p: Pending, max: usize, max_bytes: usize) -> bool {
        if self.pending_len >= max
            || self.pending_bytes.saturating_add(p.size) > max_bytes
            || !self.pending_ids.insert(p.id)
        {
            return false;
        }
        self.pending_len += 1;
        self.pending_bytes += p.size;
        self.pending.entry(h).or_default().push(p);
        true
    }

    /// Takes the waiting artifacts of heights up to `max_height`.
    pub fn take_pending(&mut self, max_height: Height) -> Vec<(Height, Vec<Pending>)> {
        let keys: Vec<Height> = self.pending.range(..=max_height).map(|(h, _)| *h).collect();
        let mut out = Vec::with_capacity(keys.len());
        for h in keys {
            if let Some(v) = self.pending.remove(&h) {
                self.pending_len -= v.len();
                for p in &v {
                    self.pending_ids.remove(&p.id);
                    self.pending_bytes -= p.size;
                }
                out.push((h, v));
            }
        }
        out
    }

    /// Number of waiting artifacts.
    pub fn pending_len(&self) -> usize {
        self.pending_len
    }

    /// Drops every height below `h`.
    pub fn purge_below(&mut self, h: Height) {
        self.heights = self.heights.split_off(&h);
        let kept = self.pending.split_off(&h);
        for v in self.pending.values() {
            for p in v {
                self.pending_ids.remove(&p.id);
            }
        }
        self.pending = kept;
        self.pending_len = self.pending.values().map(Vec::len).sum();
        self.pending_bytes = self.pending.values().flatten().map(|p| p.size).sum();
    }
}
