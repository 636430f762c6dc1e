//! The artifacts nodes exchange, their hashes and the exact bytes each
//! signature covers.
//!
//! Artifacts: blocks and their proposals, the random beacon and its
//! shares, notarization and finalization shares and certificates
//! (multi-signatures of n−f signers), catch-up shares and packages. Each
//! signature covers a domain-tagged message. Every artifact serializes with
//! postcard; the transport sends `Artifact::to_bytes` and hands
//! `Artifact::from_bytes` to the node (at most [`MAX_ARTIFACT_BYTES`],
//! 8 MiB).

use serde::{Deserialize, Serialize};

use crate::bls::{NodeIndex, SignatureBytes};
pub use crate::hash::Hash32;
use crate::ingress::IngressMessage;

/// A height (round) of the chain; the genesis is height 0.
pub type Height = u64;

/// Largest encoded artifact accepted from the network.
pub const MAX_ARTIFACT_BYTES: usize = 8 << 20;

/// Hash of a block.
pub type BlockHash = Hash32;

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// The block payload: ingress messages in the order execution runs them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The messages.
    pub ingress: Vec<IngressMessage>,
}

impl Payload {
    /// Total content bytes.
    pub fn byte_size(&self) -> u64 {
        self.ingress.iter().map(|m| m.content.len() as u64).sum()
    }
}

/// A block proposed at `height` on top of a notarized `parent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Its height.
    pub height: Height,
    /// Hash of the notarized block at `height − 1` it extends.
    pub parent: BlockHash,
    /// The proposer's rank at this height (0 is the leader).
    pub rank: u32,
    /// The proposer.
    pub proposer: NodeIndex,
    /// The proposer's clock when proposing (strictly above the parent's);
    /// ingress expiry is judged against it.
    pub time_ms: u64,
    /// The payload.
    pub payload: Payload,
}

impl Block {
    /// The block's hash.
    pub fn hash(&self) -> BlockHash {
        Hash32::digest(b"cellar/block", &[&encode(self)])
    }
}

/// A block signed by its proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockProposal {
    /// The block.
    pub block: Block,
    /// The proposer's signature on [`proposal_message`] of the block's hash.
    pub signature: SignatureBytes,
}

/// Bytes a proposer signs.
pub fn proposal_message(hash: &BlockHash) -> Vec<u8> {
    [b"cellar/proposal:".as_slice(), &hash.0].concat()
}

/// The random beacon of a height: the unique threshold signature (f+1 of n)
/// on the previous beacon's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomBeacon {
    /// Its height.
    pub height: Height,
    /// Hash of the beacon at `height − 1`.
    pub parent: Hash32,
    /// The threshold signature on [`beacon_message`].
    pub signature: SignatureBytes,
}

impl RandomBeacon {
    /// The beacon's hash: the randomness used for ranking and execution.
    pub fn hash(&self) -> Hash32 {
        Hash32::digest(b"cellar/beacon", &[&encode(self)])
    }
}

/// Bytes the beacon key signs at `height` on top of `parent`.
pub fn beacon_message(height: Height, parent: &Hash32) -> Vec<u8> {
    [
        b"cellar/beacon:".as_slice(),
        &height.to_be_bytes(),
        &parent.0,
    ]
    .concat()
}

/// One node's share of the beacon at `height`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomBeaconShare {
    /// Its height.
    pub height: Height,
    /// Hash of the beacon at `height − 1`.
    pub parent: Hash32,
    /// The signer.
    pub signer: NodeIndex,
    /// The signer's beacon-key share on [`beacon_message`].
    pub signature: SignatureBytes,
}

/// Bytes a notary signs to support a block.
pub fn notarization_message(height: Height, block: &BlockHash) -> Vec<u8> {
    [
        b"cellar/notarize:".as_slice(),
        &height.to_be_bytes(),
        &block.0,
    ]
    .concat()
}

/// Bytes a node signs to finalize a block.
pub fn finalization_message(height: Height, block: &BlockHash) -> Vec<u8> {
    [
        b"cellar/finalize:".as_slice(),
        &height.to_be_bytes(),
        &block.0,
    ]
    .concat()
}

/// One node's individual signature on a block at a height (a notarization or
/// finalization share).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockShare {
    /// The height.
    pub height: Height,
    /// The block.
    pub block: BlockHash,
    /// The signer.
    pub signer: NodeIndex,
    /// The signer's signature on the notarization or finalization message.
    pub signature: SignatureBytes,
}

/// A multi-signature of n−f nodes on a block at a height (a notarization or
/// finalization).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCertificate {
    /// The height.
    pub height: Height,
    /// The block.
    pub block: BlockHash,
    /// The signers, strictly increasing.
    pub signers: Vec<NodeIndex>,
    /// The sum of their signatures.
    pub signature: SignatureBytes,
}

/// What a catch-up package certifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpContent {
    /// The finalized height.
    pub height: Height,
    /// The finalized block there.
    pub block: BlockHash,
    /// That block's time.
    pub block_time_ms: u64,
    /// The random beacon at that height (the next beacon signs its hash).
    pub beacon: RandomBeacon,
    /// Hash of the execution state after the block, from the caller.
    pub state_hash: Hash32,
}

impl CatchUpContent {
    /// The content's hash.
    pub fn hash(&self) -> Hash32 {
        Hash32::digest(b"cellar/catch-up", &[&encode(self)])
    }

    /// Bytes the catch-up key signs.
    pub fn message(&self) -> Vec<u8> {
        [b"cellar/catch-up:".as_slice(), &self.hash().0].concat()
    }
}

/// One node's share of a catch-up package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpShare {
    /// The content.
    pub content: CatchUpContent,
    /// The signer.
    pub signer: NodeIndex,
    /// The signer's catch-up-key share on the content's message.
    pub signature: SignatureBytes,
}

/// A catch-up package: the content under the subnet's threshold (n−f) signature.
/// A node can start from it without any earlier artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpPackage {
    /// The content.
    pub content: CatchUpContent,
    /// The combined signature.
    pub signature: SignatureBytes,
}

/// Everything that travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Artifact {
    /// A client's message, gossiped to every node.
    Ingress(IngressMessage),
    /// A proposed block.
    Proposal(BlockProposal),
    /// A beacon share.
    BeaconShare(RandomBeaconShare),
    /// A beacon.
    Beacon(RandomBeacon),
    /// A notarization share.
    NotarizationShare(BlockShare),
    /// A notarization.
    Notarization(BlockCertificate),
    /// A finalization share.
    FinalizationShare(BlockShare),
    /// A finalization.
    Finalization(BlockCertificate),
    /// A catch-up-package share.
    CatchUpShare(CatchUpShare),
    /// A catch-up package.
    CatchUpPackage(CatchUpPackage),
}

/// Why bytes are not an artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes than [`MAX_ARTIFACT_BYTES`].
    #[error("artifact of {0} bytes is too large")]
    TooLarge(usize),
    /// Not a valid encoding (or trailing bytes).
    #[error("malformed artifact: {0}")]
    Malformed(String),
}

impl Artifact {
    /// The wire encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes the wire encoding, rejecting oversized input and trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, DecodeError> {
        if bytes.len() > MAX_ARTIFACT_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let (a, rest) = postcard::take_from_bytes::<Artifact>(bytes)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes".into()));
        }
        Ok(a)
    }

    /// An identifier (hash of the encoding) to recognise duplicates.
    pub fn id(&self) -> Hash32 {
        Self::id_of(&self.to_bytes())
    }

    /// The identifier of an encoded artifact.
    pub fn id_of(encoded: &[u8]) -> Hash32 {
        Hash32::digest(b"cellar/artifact", &[encoded])
    }

    /// The height the artifact belongs to (none for ingress).
    pub fn height(&self) -> Option<Height> {
        match self {
            Artifact::Ingress(_) => None,
            Artifact::Proposal(p) => Some(p.block.height),
            Artifact::BeaconShare(s) => Some(s.height),
            Artifact::Beacon(b) => Some(b.height),
            Artifact::NotarizationShare(s) | Artifact::FinalizationShare(s) => Some(s.height),
            Artifact::Notarization(c) | Artifact::Finalization(c) => Some(c.height),
            Artifact::CatchUpShare(s) => Some(s.content.height),
            Artifact::CatchUpPackage(c) => Some(c.content.height),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let b = Block {
            height: 3,
            parent: Hash32([1; 32]),
            rank: 0,
            proposer: 2,
            time_ms: 10,
            payload: Payload {
                ingress: vec![IngressMessage {
                    expiry_ms: 100,
                    content: vec![1, 2, 3],
                }],
            },
        };
        let a = Artifact::Proposal(BlockProposal {
            block: b.clone(),
            signature: SignatureBytes([7; 48]),
        });
        let bytes = a.to_bytes();
        assert_eq!(Artifact::from_bytes(&bytes).unwrap(), a);
        assert!(Artifact::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Artifact::from_bytes(&longer).is_err());
        assert!(Artifact::from_bytes(&[0xff; 64]).is_err());
        assert!(Artifact::from_bytes(&[]).is_err());
        let mut b2 = b.clone();
        b2.rank = 1;
        assert_ne!(b.hash(), b2.hash());
        assert_eq!(a.height(), Some(3));
    }
}
