//! Byzantine behaviours for fault tests: what a malicious node sends
//! instead of its honest artifacts. The subnet simulation and the
//! replica's hidden test-only option (`cellar node start --byzantine`) use
//! the same transformations, so a fault tested in the simulation is the
//! fault played by a real process.
//!
//! The misbehaviours ([`Fault`]): equivocate (as block maker, two
//! different blocks at each height it proposes, both notarization-shared:
//! [`equivocate`]), bad shares (signed over the wrong message:
//! [`corrupt_share`]) and garbage.

use crate::artifacts::{
    Artifact, BlockProposal, BlockShare, notarization_message, proposal_message,
};
use crate::keys::NodeSecretKeys;

/// A misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// As a block maker, proposes two different blocks at each height it
    /// proposes (half the peers get each) and notarization-shares both.
    Equivocate,
    /// Signs every share over the wrong message.
    BadShares,
    /// Sends corrupted copies of its artifacts, random bytes and oversized
    /// frames.
    Garbage,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "equivocate" => Ok(Fault::Equivocate),
            "bad-shares" => Ok(Fault::BadShares),
            "garbage" => Ok(Fault::Garbage),
            other => Err(format!(
                "unknown fault {other:?} (equivocate, bad-shares, garbage)"
            )),
        }
    }
}

/// The equivocation of an own proposal: a second, validly signed block at
/// the same height and rank (one ms later, without ingress), and
/// notarization shares for both blocks. `None` for any other artifact.
pub struct Equivocation {
    /// The twin proposal.
    pub twin: Artifact,
    /// Notarization shares supporting the original and the twin.
    pub shares: [Artifact; 2],
}

/// Builds the equivocation of `art` if it is this node's own proposal.
pub fn equivocate(secret: &NodeSecretKeys, art: &Artifact) -> Option<Equivocation> {
    let Artifact::Proposal(p) = art else {
        return None;
    };
    if p.block.proposer != secret.index {
        return None;
    }
    let mut twin = p.block.clone();
    twin.time_ms += 1;
    twin.payload.ingress.clear();
    let twin_hash = twin.hash();
    let height = p.block.height;
    let share = |hash| {
        Artifact::NotarizationShare(BlockShare {
            height,
            block: hash,
            signer: secret.index,
            signature: secret.signing.sign(&notarization_message(height, &hash)),
        })
    };
    let shares = [share(p.block.hash()), share(twin_hash)];
    Some(Equivocation {
        twin: Artifact::Proposal(BlockProposal {
            signature: secret.signing.sign(&proposal_message(&twin_hash)),
            block: twin,
        }),
        shares,
    })
}

/// The artifact with its signature share replaced by one over the wrong
/// message (other artifacts unchanged).
pub fn corrupt_share(secret: &NodeSecretKeys, art: Artifact) -> Artifact {
    const WRONG: &[u8] = b"not the message";
    match art {
        Artifact::BeaconShare(mut s) => {
            s.signature = secret.beacon_share.sign(WRONG);
            Artifact::BeaconShare(s)
        }
        Artifact::NotarizationShare(mut s) => {
            s.signature = secret.signing.sign(WRONG);
            Artifact::NotarizationShare(s)
        }
        Artifact::FinalizationShare(mut s) => {
            s.signature = secret.signing.sign(WRONG);
            Artifact::FinalizationShare(s)
        }
        Artifact::CatchUpShare(mut s) => {
            s.signature = secret.catch_up_share.sign(WRONG);
            Artifact::CatchUpShare(s)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!("equivocate".parse(), Ok(Fault::Equivocate));
        assert_eq!("bad-shares".parse(), Ok(Fault::BadShares));
        assert_eq!("garbage".parse(), Ok(Fault::Garbage));
        assert!("nice".parse::<Fault>().is_err());
    }
}
