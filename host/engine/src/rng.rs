//! The random tape: deterministic, seeded per canister and message.

use std::convert::Infallible;

use rand::TryRng;
use sha2::{Digest, Sha256};

/// An endless byte stream: SHA-256 of (seed, block counter). Every replica
/// that agrees on the seed draws the same bytes.
pub(crate) struct TapeRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl TapeRng {
    /// A tape for the given seed.
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        TapeRng {
            seed,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    /// Fills `out` with the next bytes of the tape.
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.used == self.block.len() {
                let mut hasher = Sha256::new();
                hasher.update(self.seed);
                hasher.update(self.counter.to_le_bytes());
                self.block = hasher.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }
}

impl TryRng for TapeRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

/// Derives a 32-byte seed from a domain label and parts.
pub(crate) fn derive_seed(domain: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((domain.len() as u64).to_le_bytes());
    hasher.update(domain.as_bytes());
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_tape_different_seed_different_tape() {
        let mut a = TapeRng::new([1; 32]);
        let mut b = TapeRng::new([1; 32]);
        let mut c = TapeRng::new([2; 32]);
        let (mut x, mut y, mut z) = ([0u8; 100], [0u8; 100], [0u8; 100]);
        a.fill(&mut x);
        b.fill(&mut y[..30]);
        b.fill(&mut y[30..]);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
    }
}
