//! Byzantine test modes (`cellar node start --byzantine`, hidden): how this replica misbehaves when told to, and how an honest one counts and logs the misbehaviour of peers.

use super::*;

impl Replica {
    /// Test only: what a Byzantine replica sends instead of `a`.
    pub(super) fn broadcast_byzantine(&mut self, a: ConsensusArtifact) {
        let Some(b) = self.byzantine.as_mut() else {
            return;
        };
        let me = self.transport.own_index();
        let peers: Vec<u32> = (0..self.transport.membership().len() as u32)
            .filter(|&i| i != me)
            .collect();
        let kind = kind_of(&a);
        let send = |to: u32, a: &ConsensusArtifact| {
            let _ = self
                .transport
                .send(to, &NetArtifact::new(kind_of(a), a.to_bytes()));
        };
        match b.fault {
            Fault::Equivocate => {
                let Some(e) = byzantine::equivocate(&b.secret, &a) else {
                    peers.iter().for_each(|&p| send(p, &a));
                    return;
                };
                let height = a.height().unwrap_or(0);
                tracing::warn!(height, "byzantine: proposing two blocks");
                // Even heights: half the peers get each block; odd heights:
                // everyone gets both (in a different order), so the
                // equivocation is seen.
                for (k, &p) in peers.iter().enumerate() {
                    let (first, second) = if k % 2 == 0 {
                        (&a, &e.twin)
                    } else {
                        (&e.twin, &a)
                    };
                    send(p, first);
                    if height % 2 == 1 {
                        send(p, second);
                    }
                }
                for share in &e.shares {
                    peers.iter().for_each(|&p| send(p, share));
                }
            }
            Fault::BadShares => {
                let a = byzantine::corrupt_share(&b.secret, a);
                peers.iter().for_each(|&p| send(p, &a));
            }
            Fault::Garbage => {
                let mut bytes = a.to_bytes();
                if !bytes.is_empty() {
                    let k = b.rng.below(bytes.len() as u64) as usize;
                    bytes[k] ^= 1 << b.rng.below(8);
                }
                let artifact = NetArtifact::new(kind, bytes);
                for &p in &peers {
                    let _ = self.transport.send(p, &artifact);
                }
            }
        }
    }

    /// Test only: a garbage replica also sends random bytes as artifacts
    /// every tick, and every second a malformed or oversized frame.
    pub(super) fn misbehave_on_tick(&mut self) {
        let Some(b) = self.byzantine.as_mut() else {
            return;
        };
        if b.fault != Fault::Garbage {
            return;
        }
        b.ticks += 1;
        let n = self.transport.membership().len() as u64;
        let me = self.transport.own_index();
        let to = b.rng.below(n) as u32;
        if to == me {
            return;
        }
        let len = 1 + b.rng.below(300) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| b.rng.next_u64() as u8).collect();
        let kind = [
            ArtifactKind::INGRESS,
            ArtifactKind::BLOCK,
            ArtifactKind::SIGNATURE_SHARE,
        ][b.rng.below(3) as usize];
        let _ = self.transport.send(to, &NetArtifact::new(kind, bytes));
        if b.ticks % 50 == 0 {
            // A frame announcing 64 MiB (over the limit), or a frame with
            // an unknown tag: either breaks the wire protocol.
            let frame: Vec<u8> = if b.ticks % 100 == 0 {
                let mut f = (64u32 << 20).to_be_bytes().to_vec();
                f.extend_from_slice(&[0xAB; 64]);
                f
            } else {
                let mut f = 8u32.to_be_bytes().to_vec();
                f.extend_from_slice(&[0xEE; 8]);
                f
            };
            tracing::warn!(to, "byzantine: sending a malformed frame");
            let _ = self.transport.send_raw_frame(to, frame.into());
        }
    }

    /// Logs a peer whose artifact consensus found invalid or equivocating.
    pub(super) fn note_misbehaviour(
        &mut self,
        from: u32,
        before: &cellar_consensus::icc::NodeStats,
    ) {
        let after = self.consensus.stats();
        if after.equivocations > before.equivocations {
            tracing::warn!(
                peer = from,
                round = self.consensus.round(),
                "a block maker equivocated (two blocks at one height and rank): \
                 its rank is skipped"
            );
        }
        let invalid = after.invalid.saturating_sub(before.invalid);
        if invalid > 0 {
            self.count_misbehaviour(from, invalid, "refused by consensus");
        }
    }

    /// Counts invalid messages from `from`; logs at 1, 2, 4, 8, ...
    pub(super) fn count_misbehaviour(&mut self, from: u32, more: u64, last: &str) {
        let count = self.misbehaving.entry(from).or_default();
        let old = *count;
        *count += more;
        if old == 0 || old.ilog2() != count.ilog2() {
            tracing::warn!(
                peer = from,
                invalid = *count,
                last,
                "peer sends invalid artifacts (bad signatures or contents); they are dropped"
            );
        }
    }
}
