//! What a node has signed, as records that must survive a restart.
//!
//! A node that forgets what it signed can sign something else at the same
//! height after a restart: a second block as block maker, a notarization
//! share for another block of a rank it already supported, a notarization
//! share after a finalization share at the same height. To its peers that
//! is Byzantine behaviour, and restarts of several nodes over time add up
//! to more than f faults: two blocks finalized at one height. So every
//! choice a signature commits to is a [`Signed`] record
//! (`Proposal{h, block}`, `Notarization{h, rank, block}`,
//! `Finalization{h, block}`), handed out as
//! [`crate::Action::Persist`] *before* the broadcast that carries the
//! signature; the environment makes it durable before it sends anything
//! that follows, and gives the records back through
//! [`crate::ConsensusNode::restore`] after a restart. `Commitments` is
//! what they restore: no second proposal at a height, one block per rank,
//! no notarization share after a finalization share at a height.
//!
//! Signatures that commit to no choice are not recorded: a beacon share
//! signs the previous beacon (unique per height), a catch-up share the
//! state hash the node computed (the same after a restart, as execution is
//! deterministic), and BLS signatures are deterministic, so signing either
//! again gives the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::artifacts::{BlockHash, Height};

/// One choice a node committed to by signing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signed {
    /// It proposed `block` at `height` (at most one block per height).
    Proposal {
        /// The height.
        height: Height,
        /// The block's hash.
        block: BlockHash,
    },
    /// It notarization-shared `block`, of rank `rank`, at `height` (at most
    /// one block per rank).
    Notarization {
        /// The height.
        height: Height,
        /// The block maker's rank.
        rank: u32,
        /// The block's hash.
        block: BlockHash,
    },
    /// It finalization-shared `block` at `height`: from then on it supports
    /// no other block at that height.
    Finalization {
        /// The height.
        height: Height,
        /// The block's hash.
        block: BlockHash,
    },
}

impl Signed {
    /// The height the record is about.
    pub fn height(&self) -> Height {
        match *self {
            Signed::Proposal { height, .. }
            | Signed::Notarization { height, .. }
            | Signed::Finalization { height, .. } => height,
        }
    }
}

/// The choices a node made, by height: what [`Signed`] records restore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Commitments {
    /// Heights at which this node proposed a block.
    pub proposed: BTreeSet<Height>,
    /// The blocks this node notarization-shared, by height and rank.
    pub supported: BTreeMap<Height, BTreeMap<u32, BlockHash>>,
    /// The block this node finalization-shared, by height.
    pub finalized: BTreeMap<Height, BlockHash>,
}

impl Commitments {
    /// Takes in a record (a later record at the same place wins, which
    /// cannot differ for records the node itself wrote).
    pub fn apply(&mut self, record: Signed) {
        match record {
            Signed::Proposal { height, .. } => {
                self.proposed.insert(height);
            }
            Signed::Notarization {
                height,
                rank,
                block,
            } => {
                self.supported
                    .entry(height)
                    .or_default()
                    .insert(rank, block);
            }
            Signed::Finalization { height, block } => {
                self.finalized.insert(height, block);
            }
        }
    }

    /// Whether this node may notarization-share `block` of rank `rank` at
    /// `height`: it supported nothing else of that rank and finalization-
    /// shared no other block at that height.
    pub fn may_support(&self, height: Height, rank: u32, block: &BlockHash) -> bool {
        let same_rank = self
            .supported
            .get(&height)
            .and_then(|m| m.get(&rank))
            .is_none_or(|b| b == block);
        let finalized = self.finalized.get(&height).is_none_or(|b| b == block);
        same_rank && finalized
    }

    /// Forgets everything below `height`.
    pub fn purge_below(&mut self, height: Height) {
        self.proposed = self.proposed.split_off(&height);
        self.supported = self.supported.split_off(&height);
        self.finalized = self.finalized.split_off(&height);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::Hash32;

    fn hash(b: u8) -> BlockHash {
        Hash32([b; 32])
    }

    #[test]
    fn a_rank_supports_one_block_and_a_finalized_height_no_other() {
        let mut c = Commitments::default();
        c.apply(Signed::Notarization {
            height: 5,
            rank: 0,
            block: hash(1),
        });
        assert!(c.may_support(5, 0, &hash(1)), "the same block again");
        assert!(!c.may_support(5, 0, &hash(2)), "another block of that rank");
        assert!(c.may_support(5, 1, &hash(2)), "another rank");
        c.apply(Signed::Finalization {
            height: 5,
            block: hash(1),
        });
        assert!(!c.may_support(5, 1, &hash(2)), "after a finalization share");
        assert!(c.may_support(6, 0, &hash(2)), "another height");
        c.purge_below(6);
        assert!(c.may_support(5, 0, &hash(2)), "purged");
    }

    #[test]
    fn records_round_trip_through_postcard() {
        let records = [
            Signed::Proposal {
                height: 1,
                block: hash(3),
            },
            Signed::Notarization {
                height: 2,
                rank: 7,
                block: hash(4),
            },
            Signed::Finalization {
                height: 3,
                block: hash(5),
            },
        ];
        for r in records {
            let bytes = postcard::to_stdvec(&r).expect("encode");
            assert_eq!(postcard::from_bytes::<Signed>(&bytes).expect("decode"), r);
            assert_eq!(r.height(), r.height());
        }
    }
}
