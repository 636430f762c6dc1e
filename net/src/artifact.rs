//! Artifacts: the units the transport disseminates (ingress messages,
//! blocks, signature shares, ...), named by the SHA-256 of their content:
//! an artifact's id is SHA-256(kind, payload).

use std::fmt;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// What an artifact is; the transport only carries it, consensus gives it
/// meaning. A few kinds are named; any other byte is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactKind(pub u8);

impl ArtifactKind {
    /// A user's ingress message (an update call to order).
    pub const INGRESS: ArtifactKind = ArtifactKind(0);
    /// A block proposal.
    pub const BLOCK: ArtifactKind = ArtifactKind(1);
    /// A signature share (notarization, finalization, beacon, ...).
    pub const SIGNATURE_SHARE: ArtifactKind = ArtifactKind(2);
    /// Anything else; consensus may use every other value too.
    pub const OTHER: ArtifactKind = ArtifactKind(255);
}

/// The content id of an artifact: SHA-256 of its kind byte and payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactId(pub [u8; 32]);

impl ArtifactId {
    /// The id of an artifact of `kind` with `payload`.
    pub fn of(kind: ArtifactKind, payload: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update([kind.0]);
        hasher.update(payload);
        ArtifactId(hasher.finalize().into())
    }
}

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes are plenty to tell artifacts apart in logs.
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// An artifact: a kind, opaque bytes, and the content id of both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// What it is.
    kind: ArtifactKind,
    /// The content, encoded by its producer.
    payload: Bytes,
    /// `ArtifactId::of(kind, payload)`.
    id: ArtifactId,
}

impl Artifact {
    /// An artifact of `kind` holding `payload` (hashes the payload once).
    pub fn new(kind: ArtifactKind, payload: impl Into<Bytes>) -> Self {
        let payload = payload.into();
        let id = ArtifactId::of(kind, &payload);
        Artifact { kind, payload, id }
    }

    /// What it is.
    pub fn kind(&self) -> ArtifactKind {
        self.kind
    }

    /// The content.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The content id.
    pub fn id(&self) -> ArtifactId {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_covers_kind_and_payload() {
        let a = Artifact::new(ArtifactKind::BLOCK, &b"abc"[..]);
        assert_eq!(a.id(), Artifact::new(ArtifactKind::BLOCK, &b"abc"[..]).id());
        assert_ne!(
            a.id(),
            Artifact::new(ArtifactKind::INGRESS, &b"abc"[..]).id()
        );
        assert_ne!(a.id(), Artifact::new(ArtifactKind::BLOCK, &b"abd"[..]).id());
        assert_eq!(a.id().to_string().len(), 64);
    }
}
