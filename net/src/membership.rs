//! The pinned membership of a subnet: every node's index, address and
//! public key, as listed in the subnet's genesis file.
//!
//! Serialized (serde) as a JSON array of
//! `{"node_index": 0, "address": "127.0.0.1:4000", "public_key": "<64 hex digits>"}`;
//! deserializing checks that indices and keys are unique.

use std::collections::HashMap;
use std::net::SocketAddr;

use data_encoding::HEXLOWER;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::NetError;
use crate::node_index::NodeIndex;

/// One member of a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The node's index in the subnet (unique).
    pub node_index: NodeIndex,
    /// Where the node listens for QUIC (UDP).
    pub address: SocketAddr,
    /// The node's Ed25519 public key (unique), hex in JSON.
    #[serde(serialize_with = "hex_key_out", deserialize_with = "hex_key_in")]
    pub public_key: [u8; 32],
}

/// The members of a subnet; only they can talk to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<PeerInfo>", into = "Vec<PeerInfo>")]
pub struct Membership {
    /// The members, sorted by index.
    peers: Vec<PeerInfo>,
    /// Public key to node index.
    by_key: HashMap<[u8; 32], NodeIndex>,
}

impl Membership {
    /// A membership of `peers`; node indices and public keys must be unique.
    pub fn new(mut peers: Vec<PeerInfo>) -> Result<Self, NetError> {
        peers.sort_by_key(|p| p.node_index);
        let mut by_key = HashMap::with_capacity(peers.len());
        for (i, peer) in peers.iter().enumerate() {
            if i > 0 && peers[i - 1].node_index == peer.node_index {
                return Err(NetError::InvalidMembership(format!(
                    "node index {} appears twice",
                    peer.node_index
                )));
            }
            if by_key.insert(peer.public_key, peer.node_index).is_some() {
                return Err(NetError::InvalidMembership(format!(
                    "the public key of node {} appears twice",
                    peer.node_index
                )));
            }
        }
        Ok(Membership { peers, by_key })
    }

    /// The members, sorted by node index.
    pub fn peers(&self) -> &[PeerInfo] {
        &self.peers
    }

    /// The member with index `index`.
    pub fn get(&self, index: NodeIndex) -> Option<&PeerInfo> {
        self.peers
            .binary_search_by_key(&index, |p| p.node_index)
            .ok()
            .map(|i| &self.peers[i])
    }

    /// The index of the member whose public key is `public_key`.
    pub fn index_of(&self, public_key: &[u8; 32]) -> Option<NodeIndex> {
        self.by_key.get(public_key).copied()
    }

    /// The number of members, n.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The number of faulty nodes tolerated, f = ⌊(n − 1) / 3⌋ (n ≥ 3f + 1).
    pub fn max_faulty(&self) -> usize {
        self.peers.len().saturating_sub(1) / 3
    }
}

impl TryFrom<Vec<PeerInfo>> for Membership {
    type Error = NetError;

    fn try_from(peers: Vec<PeerInfo>) -> Result<Self, NetError> {
        Membership::new(peers)
    }
}

impl From<Membership> for Vec<PeerInfo> {
    fn from(membership: Membership) -> Self {
        membership.peers
    }
}

/// Serializes a public key as lower-case hex.
fn hex_key_out<S: Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&HEXLOWER.encode(key))
}

/// Deserializes a public key from 64 hex digits.
fn hex_key_in<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let text = String::deserialize(d)?;
    let bytes = HEXLOWER
        .decode(text.to_ascii_lowercase().as_bytes())
        .map_err(serde::de::Error::custom)?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| serde::de::Error::custom("a public key is 32 bytes (64 hex digits)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u32, key: u8) -> PeerInfo {
        PeerInfo {
            node_index: i,
            address: format!("127.0.0.1:{}", 4000 + i).parse().unwrap(),
            public_key: [key; 32],
        }
    }

    #[test]
    fn json_round_trip_with_hex_keys() {
        let m = Membership::new(vec![peer(1, 1), peer(0, 2)]).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(&"02".repeat(32)), "{json}");
        let back: Membership = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.peers()[0].node_index, 0);
        assert_eq!(back.index_of(&[1; 32]), Some(1));
        assert_eq!(back.get(1).unwrap().public_key, [1; 32]);
        assert_eq!(back.max_faulty(), 0);
    }

    #[test]
    fn duplicates_are_refused() {
        assert!(Membership::new(vec![peer(0, 1), peer(0, 2)]).is_err());
        assert!(Membership::new(vec![peer(0, 1), peer(1, 1)]).is_err());
        let json = serde_json::to_string(&vec![peer(0, 1), peer(1, 1)]).unwrap();
        assert!(serde_json::from_str::<Membership>(&json).is_err());
    }
}
