//! Catch-up packages (CUPs): every K heights the nodes threshold-sign (n−f of
//! n) the finalized height, its block hash and time, its random beacon and the
//! execution state hash the caller computed there. A node can start from a CUP
//! alone: the genesis is a CUP at height 0 signed by the dealer.

use crate::artifacts::{
    BlockHash, CatchUpContent, CatchUpPackage, Hash32, RandomBeacon, beacon_message,
};
use crate::bls::{CryptoError, NodeIndex};
use crate::keys::{SubnetDealing, SubnetPublicKeys};

impl CatchUpPackage {
    /// Verifies the threshold signature under the subnet's catch-up key.
    pub fn verify(&self, keys: &SubnetPublicKeys) -> Result<(), CryptoError> {
        keys.catch_up
            .verify(&self.content.message(), &self.signature)
    }
}

/// The hash standing for the (empty) genesis block.
pub fn genesis_block_hash(keys: &SubnetPublicKeys) -> BlockHash {
    Hash32::digest(
        b"cellar/genesis-block",
        &[&keys.catch_up.public_key.to_bytes().0],
    )
}

/// The genesis CUP at height 0, signed with the dealt shares: a beacon on a
/// fixed seed, the genesis block hash, `time_ms` and `state_hash`.
pub fn genesis(
    dealing: &SubnetDealing,
    time_ms: u64,
    state_hash: Hash32,
) -> Result<CatchUpPackage, CryptoError> {
    let public = &dealing.public;
    let parent = Hash32::digest(
        b"cellar/genesis-beacon",
        &[&public.beacon.public_key.to_bytes().0],
    );
    let msg = beacon_message(0, &parent);
    let shares: Vec<(NodeIndex, _)> = dealing
        .secrets
        .iter()
        .map(|s| (s.index, s.beacon_share.sign(&msg)))
        .collect();
    let beacon = RandomBeacon {
        height: 0,
        parent,
        signature: public.beacon.combine(&msg, &shares)?,
    };
    let content = CatchUpContent {
        height: 0,
        block: genesis_block_hash(public),
        block_time_ms: time_ms,
        beacon,
        state_hash,
    };
    let msg = content.message();
    let shares: Vec<(NodeIndex, _)> = dealing
        .secrets
        .iter()
        .map(|s| (s.index, s.catch_up_share.sign(&msg)))
        .collect();
    let signature = public.catch_up.combine(&msg, &shares)?;
    Ok(CatchUpPackage { content, signature })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::deal_subnet;

    #[test]
    fn genesis_verifies() {
        let d = deal_subnet(b"seed", 4).unwrap();
        let cup = genesis(&d, 1000, Hash32::default()).unwrap();
        cup.verify(&d.public).unwrap();
        d.public
            .beacon
            .verify(
                &beacon_message(0, &cup.content.beacon.parent),
                &cup.content.beacon.signature,
            )
            .unwrap();
        let mut forged = cup.clone();
        forged.content.state_hash = Hash32([1; 32]);
        assert!(forged.verify(&d.public).is_err());
        let other = deal_subnet(b"other", 4).unwrap();
        assert!(cup.verify(&other.public).is_err());
    }
}
