//! Subnet keys: the dealer that turns a seed into every node's keys, and the
//! public keys all nodes share (part of the genesis).
//!
//! Each node holds three secrets: an individual signing key (block proposals,
//! notarization and finalization shares, aggregated into multi-signatures),
//! a share of the **low-threshold** key (t = f+1: the random beacon, so no
//! f nodes can predict it and any f+1 can make it), and a share of the
//! **high-threshold** key (t = n−f: catch-up packages). [`deal_subnet`]`(seed,
//! n)` makes them for every node, with the [`SubnetPublicKeys`].

use serde::{Deserialize, Serialize};

use crate::bls::{self, CryptoError, NodeIndex, PublicKey, SecretKey, ThresholdPublicKey};

/// The public keys of a subnet, known to every node and to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetPublicKeys {
    /// Individual public key of node i (notarization, finalization, proposals).
    pub node_keys: Vec<PublicKey>,
    /// The random-beacon key, threshold f+1.
    pub beacon: ThresholdPublicKey,
    /// The catch-up-package key, threshold n−f; its public key is the subnet's.
    pub catch_up: ThresholdPublicKey,
}

impl SubnetPublicKeys {
    /// Number of nodes.
    pub fn n(&self) -> u32 {
        self.node_keys.len() as u32
    }

    /// Largest number of faulty nodes tolerated: ⌊(n−1)/3⌋.
    pub fn f(&self) -> u32 {
        max_faults(self.n())
    }

    /// Signers needed for a notarization or finalization: n−f.
    pub fn quorum(&self) -> u32 {
        self.n() - self.f()
    }

    /// Checks the thresholds and sizes fit n (used when loading a genesis).
    pub fn check(&self) -> Result<(), CryptoError> {
        let n = self.n();
        let (f, q) = (self.f(), self.quorum());
        if n == 0 {
            return Err(CryptoError::BadThreshold { threshold: 0, n });
        }
        if self.beacon.threshold != f + 1 || self.beacon.n() != n {
            return Err(CryptoError::BadThreshold {
                threshold: self.beacon.threshold,
                n,
            });
        }
        if self.catch_up.threshold != q || self.catch_up.n() != n {
            return Err(CryptoError::BadThreshold {
                threshold: self.catch_up.threshold,
                n,
            });
        }
        Ok(())
    }
}

/// Largest f with n ≥ 3f+1.
pub fn max_faults(n: u32) -> u32 {
    n.saturating_sub(1) / 3
}

/// One node's secret keys. `Debug` does not show them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeSecretKeys {
    /// The node's index in the subnet.
    pub index: NodeIndex,
    /// Individual signing key.
    pub signing: SecretKey,
    /// Share of the beacon key.
    pub beacon_share: SecretKey,
    /// Share of the catch-up-package key.
    pub catch_up_share: SecretKey,
}

impl NodeSecretKeys {
    /// Checks these secrets match `public` at this node's index.
    pub fn matches(&self, public: &SubnetPublicKeys) -> bool {
        let i = self.index as usize;
        public.node_keys.get(i) == Some(&self.signing.public_key())
            && public.beacon.shares.get(i) == Some(&self.beacon_share.public_key())
            && public.catch_up.shares.get(i) == Some(&self.catch_up_share.public_key())
    }
}

/// Everything a trusted dealer produces for a subnet of n nodes.
pub struct SubnetDealing {
    /// The public keys.
    pub public: SubnetPublicKeys,
    /// Secret keys of node i.
    pub secrets: Vec<NodeSecretKeys>,
}

/// Deals keys for `n` nodes deterministically from `seed` (a stand-in for the
/// non-interactive DKG: same shapes, one trusted party).
pub fn deal_subnet(seed: &[u8], n: u32) -> Result<SubnetDealing, CryptoError> {
    if n == 0 {
        return Err(CryptoError::BadThreshold { threshold: 0, n });
    }
    let f = max_faults(n);
    let beacon = bls::deal(seed, "cellar/beacon", f + 1, n)?;
    let catch_up = bls::deal(seed, "cellar/catch-up", n - f, n)?;
    let signing = (0..n)
        .map(|i| {
            let ikm = [seed, b"cellar/node-signing", &i.to_be_bytes()].concat();
            SecretKey::from_seed(&ikm, b"cellar-node-key")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let public = SubnetPublicKeys {
        node_keys: signing.iter().map(SecretKey::public_key).collect(),
        beacon: beacon.public,
        catch_up: catch_up.public,
    };
    let secrets = signing
        .into_iter()
        .zip(beacon.secret_shares)
        .zip(catch_up.secret_shares)
        .enumerate()
        .map(
            |(i, ((signing, beacon_share), catch_up_share))| NodeSecretKeys {
                index: i as NodeIndex,
                signing,
                beacon_share,
                catch_up_share,
            },
        )
        .collect();
    Ok(SubnetDealing { public, secrets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deal_four() {
        let d = deal_subnet(b"seed", 4).unwrap();
        assert_eq!(d.public.n(), 4);
        assert_eq!(d.public.f(), 1);
        assert_eq!(d.public.quorum(), 3);
        assert_eq!(d.public.beacon.threshold, 2);
        assert_eq!(d.public.catch_up.threshold, 3);
        d.public.check().unwrap();
        assert!(d.secrets.iter().all(|s| s.matches(&d.public)));
        assert!(!d.secrets[0].matches(&SubnetPublicKeys {
            node_keys: d.public.node_keys.iter().rev().cloned().collect(),
            ..d.public.clone()
        }));
        let bytes = postcard::to_stdvec(&d.public).unwrap();
        let back: SubnetPublicKeys = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, d.public);
        assert_eq!(max_faults(1), 0);
        assert_eq!(max_faults(7), 2);
        assert!(deal_subnet(b"s", 0).is_err());
    }
}
