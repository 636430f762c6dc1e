//! The arithmetic of the consensus-policy components (`icc-consensus`,
//! `round-robin-consensus`, and the valid answers of the misbehaving
//! fixture): the same functions as `cellar_consensus::policy`'s
//! `beacon_permutation`, `IccPolicy` and `RoundRobinPolicy`, written for
//! `no_std`. The host tests check that the components answer bit for bit as
//! the Rust policies do.

use alloc::vec::Vec;
use sha2::{Digest, Sha256};

/// δ, the assumed bound on message delay (ms), of ICC's default delays.
pub const UNIT_MS: u64 = 150;
/// ε, the notary delay of the leader's block (ms), of ICC's default delays.
pub const INITIAL_NOTARY_MS: u64 = 100;
/// Default most ingress messages per block.
pub const DEFAULT_MAX_MESSAGES: u32 = 1000;
/// Default most payload bytes per block.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 20;

/// The domain tag of the ranking hash.
const RANKING_DOMAIN: &[u8] = b"cellar/ranking";

/// SHA-256 of the length-prefixed `domain` followed by each part (the
/// consensus crate's `Hash32::digest`).
fn digest(domain: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((domain.len() as u32).to_be_bytes());
    h.update(domain);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// A permutation of `0..n` drawn by Fisher–Yates from SHA-256 of the beacon
/// and the height: for i from n−1 down to 1 (counter c = 0, 1, ...), swap i
/// with `u128(first 16 bytes of H(beacon, height, c)) mod (i + 1)`.
pub fn beacon_permutation(height: u64, beacon: &[u8], n: u32) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..n).collect();
    for (counter, i) in (1..n as usize).rev().enumerate() {
        let d = digest(
            RANKING_DOMAIN,
            &[
                beacon,
                &height.to_be_bytes(),
                &(counter as u64).to_be_bytes(),
            ],
        );
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        let x = u128::from_be_bytes(first);
        let j = (x % (i as u128 + 1)) as usize;
        perm.swap(i, j);
    }
    perm
}

/// Fixed round robin: the leader of `height` is node `height mod n`, then
/// the next ones in order.
pub fn round_robin(height: u64, n: u32) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let first = (height % u64::from(n)) as u32;
    (0..n).map(|r| (first + r) % n).collect()
}

/// ICC's block-maker delay Δbm(r) = 2δr (saturating).
pub fn block_maker_delay_ms(rank: u32) -> u64 {
    2u64.saturating_mul(UNIT_MS).saturating_mul(u64::from(rank))
}

/// ICC's notary delay Δntry(r) = 2δr + ε (saturating).
pub fn notary_delay_ms(rank: u32) -> u64 {
    block_maker_delay_ms(rank).saturating_add(INITIAL_NOTARY_MS)
}
