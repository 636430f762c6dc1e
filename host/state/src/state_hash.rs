//! A deterministic hash of the replicated state, shown by `cellar status`.
//!
//! The hash covers what every replica that executed the same rounds must
//! agree on, fed to SHA-256 in a canonical order with every variable-length
//! field length-prefixed, so that no two different states hash the same
//! input. Logs, the `updates` counter and the round's time are not part of
//! it: they are bookkeeping, not state a canister computes with.
//!
//! A [`StateSnapshot`] is the replicated state between two rounds; its
//! hash (`Node::state_hash`) folds in the scheduler policy in force, the
//! last consensus-policy change and the ingress history's hash, each only
//! when set, so a state with none of them keeps the plain hash.
//! [`genesis_state_hash`] is the empty state's, the state hash of every
//! subnet's genesis catch-up package, which a replica starting at round 0
//! checks.

use std::collections::BTreeMap;

use cellar_engine::ExecutionState;
use cellar_types::Principal;
use cellar_types::api::RunStatus;
use sha2::{Digest, Sha256};

use crate::canister::Canister;

/// Domain separation (and the version of the encoding below).
const DOMAIN: &[u8] = b"cellar-state-hash-v3\0";

/// Size and content hash of every linear memory of a canister, in order.
///
/// The content hash is the page map's Merkle hash, whose node hashes are
/// cached in the tree that versions share: after a message that dirtied `k`
/// pages only those pages and their paths are hashed again, so the heap
/// part of the state hash is maintained incrementally.
fn heap_memories(state: &ExecutionState) -> Vec<(u64, [u8; 32])> {
    state
        .heap
        .memories
        .iter()
        .map(|m| (m.size, m.pages.hash()))
        .collect()
}

/// Feeds SHA-256 with unambiguous fields.
struct Encoder(Sha256);

impl Encoder {
    fn u64(&mut self, n: u64) {
        self.0.update(n.to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.0.update(bytes);
    }

    fn principal(&mut self, p: &Principal) {
        self.bytes(p.as_bytes());
    }

    fn option<T>(&mut self, value: Option<T>, some: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.0.update([0u8]),
            Some(v) => {
                self.0.update([1u8]);
                some(self, v);
            }
        }
    }
}

/// Hashes the replicated state: the round, the next canister index and,
/// for each canister in id order, its id, controllers, run status, module
/// hash, chunk store, cycles, certified data, timers, stable memory and
/// linear memories.
///
/// Stable memory is hashed by contents ([`StableMemory::hash`]: its size and
/// the Merkle hashes of its chunk maps, maintained incrementally; chunks of
/// zeros are never stored, so they do not change the hash).
///
/// [`StableMemory::hash`]: cellar_engine::StableMemory::hash
pub fn hash(round: u64, next_index: u64, canisters: &BTreeMap<Principal, Canister>) -> [u8; 32] {
    let mut e = Encoder(Sha256::new());
    e.0.update(DOMAIN);
    e.u64(round);
    e.u64(next_index);
    e.u64(canisters.len() as u64);
    for canister in canisters.values() {
        e.principal(&canister.id);
        e.u64(canister.controllers.len() as u64);
        for controller in &canister.controllers {
            e.principal(controller);
        }
        e.0.update([match canister.status {
            RunStatus::Running => 0u8,
            RunStatus::Stopped => 1u8,
        }]);
        e.option(canister.code.as_ref(), |e, code| e.0.update(code.hash));
        e.u64(canister.chunks.len() as u64);
        for chunk in &canister.chunks {
            e.bytes(chunk.as_bytes());
        }
        e.u64(canister.cycles);
        let state = &canister.state;
        e.bytes(&state.certified_data);
        e.u64(state.timers.len() as u64);
        for (id, timer) in &state.timers {
            e.u64(*id);
            e.u64(timer.at_nanos);
            e.option(timer.interval_nanos, |e, n| e.u64(n));
        }
        e.u64(state.next_timer_id);
        e.u64(state.next_call_id);
        // Queues, deferred replies and outstanding calls: their canonical
        // JSON (struct fields in declaration order, maps sorted by key).
        e.bytes(&serde_json::to_vec(&canister.messaging).expect("messaging serializes"));
        e.0.update(state.stable.hash());
        let memories = heap_memories(state);
        e.u64(memories.len() as u64);
        for (size, hash) in &memories {
            e.u64(*size);
            e.0.update(hash);
        }
    }
    e.0.finalize().into()
}

/// The replicated state between two rounds (see `Node::snapshot`).
pub struct StateSnapshot {
    pub round: u64,
    pub next_index: u64,
    pub canisters: BTreeMap<Principal, Canister>,
    /// Module hash of the scheduler policy in force; none: the built-in.
    pub policy: Option<String>,
    /// Replica mode: the last consensus-policy change (from height, module
    /// hash); none: the genesis's policy.
    pub consensus: Option<(u64, String)>,
    /// The ingress history's hash; none when it is empty.
    pub history: Option<[u8; 32]>,
}

impl StateSnapshot {
    /// The state hash; the policies in force are folded in (a node on the
    /// built-in scheduler policy and the genesis's consensus policy keeps
    /// the plain hash).
    pub fn hash(&self) -> [u8; 32] {
        let mut hash = hash(self.round, self.next_index, &self.canisters);
        if let Some(policy) = &self.policy {
            let mut hasher = Sha256::new();
            hasher.update(hash);
            hasher.update(b"scheduler-policy\0");
            hasher.update(policy.as_bytes());
            hash = hasher.finalize().into();
        }
        if let Some((from, policy)) = &self.consensus {
            let mut hasher = Sha256::new();
            hasher.update(hash);
            hasher.update(b"consensus-policy\0");
            hasher.update(from.to_le_bytes());
            hasher.update(policy.as_bytes());
            hash = hasher.finalize().into();
        }
        if let Some(history) = &self.history {
            let mut hasher = Sha256::new();
            hasher.update(hash);
            hasher.update(b"ingress-history\0");
            hasher.update(history);
            hash = hasher.finalize().into();
        }
        hash
    }
}

/// The state hash of the empty state every subnet starts from (round 0,
/// no canisters, the built-in and genesis policies): the state hash of the
/// genesis catch-up package.
pub fn genesis_state_hash() -> [u8; 32] {
    StateSnapshot {
        round: 0,
        next_index: 0,
        canisters: BTreeMap::new(),
        policy: None,
        consensus: None,
        history: None,
    }
    .hash()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use cellar_engine::StableMemory;

    fn with_state(state: ExecutionState) -> BTreeMap<Principal, Canister> {
        let id = Principal::canister(0);
        let mut canister = Canister::new(id.clone(), vec![Principal::anonymous()]);
        canister.state = state;
        BTreeMap::from([(id, canister)])
    }

    #[test]
    fn contents_decide_and_zero_chunks_do_not() {
        let stable = |chunks: Vec<(u64, Vec<u8>)>| {
            with_state(ExecutionState {
                stable: Arc::new(StableMemory::from_parts(1, chunks)),
                ..ExecutionState::default()
            })
        };
        let empty = hash(1, 1, &stable(vec![]));
        assert_eq!(empty, hash(1, 1, &stable(vec![(3, vec![0; 4096])])));
        assert_ne!(empty, hash(1, 1, &stable(vec![(3, vec![1; 4096])])));
        assert_ne!(empty, hash(2, 1, &stable(vec![])));
        assert_ne!(empty, hash(1, 2, &stable(vec![])));

        // Certified data counts, and its length is part of it.
        let mut canisters = stable(vec![]);
        canisters.values_mut().next().unwrap().state.certified_data = vec![0];
        assert_ne!(empty, hash(1, 1, &canisters));

        // Logs and the update counter are not state.
        let before = hash(1, 1, &canisters);
        let canister = canisters.values_mut().next().unwrap();
        canister.updates += 5;
        canister.next_log_index += 3;
        assert_eq!(before, hash(1, 1, &canisters));
        canisters.values_mut().next().unwrap().cycles += 1;
        assert_ne!(before, hash(1, 1, &canisters));
    }
}
