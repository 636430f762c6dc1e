//! The canisters of a state and the indices rounds schedule by.

use std::collections::{BTreeMap, BTreeSet};

use cellar_types::Principal;

use crate::canister::Canister;

/// The canisters of the replicated state, with the round, its time and
/// the indices the scheduler takes its work from.
pub struct Registry {
    /// Every canister by id.
    pub canisters: BTreeMap<Principal, Canister>,
    /// The index the next created canister takes.
    pub next_index: u64,
    /// The last round executed.
    pub round: u64,
    /// That round's time (ns).
    pub time_nanos: u64,
    /// Canisters with messages in their input queue.
    pub active: BTreeSet<Principal>,
    /// Canisters with timers set.
    pub timed: BTreeSet<Principal>,
}

impl Registry {
    /// Recomputes whether `id` is active or timed after it changed.
    pub fn reindex(&mut self, id: &Principal) {
        let (active, timed) = match self.canisters.get(id) {
            Some(c) => (c.messaging.has_work(), !c.state.timers.is_empty()),
            None => (false, false),
        };
        if active {
            self.active.insert(id.clone());
        } else {
            self.active.remove(id);
        }
        if timed {
            self.timed.insert(id.clone());
        } else {
            self.timed.remove(id);
        }
    }
}
