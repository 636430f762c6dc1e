//! Bounded memory of artifacts: the ids already seen (deduplication) and
//! the recent artifacts themselves (to answer pull requests). Both forget
//! the oldest entries first.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::artifact::{Artifact, ArtifactId};

/// The ids of the last `capacity` distinct artifacts seen.
#[derive(Debug)]
pub(crate) struct SeenSet {
    /// The ids, for lookups.
    ids: HashSet<ArtifactId>,
    /// The ids in the order they were first seen, for eviction.
    order: VecDeque<ArtifactId>,
    /// The most ids kept (at least 1).
    capacity: usize,
}

impl SeenSet {
    /// An empty set keeping at most `capacity` ids.
    pub(crate) fn new(capacity: usize) -> Self {
        SeenSet {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; true if it was not seen before (within memory).
    pub(crate) fn insert(&mut self, id: ArtifactId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }

    /// Whether `id` was seen (within memory).
    pub(crate) fn contains(&self, id: &ArtifactId) -> bool {
        self.ids.contains(id)
    }
}

/// The most recent artifacts, up to a total payload size.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    /// The artifacts by id.
    artifacts: HashMap<ArtifactId, Artifact>,
    /// The ids in insertion order, for eviction.
    order: VecDeque<ArtifactId>,
    /// The sum of the kept payload sizes.
    bytes: usize,
    /// The most payload bytes kept.
    max_bytes: usize,
}

impl ArtifactCache {
    /// An empty cache keeping at most `max_bytes` of payload.
    pub(crate) fn new(max_bytes: usize) -> Self {
        ArtifactCache {
            artifacts: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Keeps `artifact`, forgetting the oldest ones to stay within bounds;
    /// an artifact larger than the whole budget is not kept.
    pub(crate) fn insert(&mut self, artifact: Artifact) {
        let size = artifact.payload().len();
        if size > self.max_bytes || self.artifacts.contains_key(&artifact.id()) {
            return;
        }
        while self.bytes + size > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.artifacts.remove(&old) {
                self.bytes -= gone.payload().len();
            }
        }
        self.bytes += size;
        self.order.push_back(artifact.id());
        self.artifacts.insert(artifact.id(), artifact);
    }

    /// The artifact with `id`, if still kept.
    pub(crate) fn get(&self, id: &ArtifactId) -> Option<Artifact> {
        self.artifacts.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::ArtifactKind;

    fn artifact(i: u32, len: usize) -> Artifact {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(len.max(4), 0);
        Artifact::new(ArtifactKind::OTHER, payload)
    }

    #[test]
    fn seen_set_dedups_and_forgets_oldest() {
        let mut seen = SeenSet::new(2);
        let (a, b, c) = (
            artifact(1, 4).id(),
            artifact(2, 4).id(),
            artifact(3, 4).id(),
        );
        assert!(seen.insert(a));
        assert!(!seen.insert(a));
        assert!(seen.insert(b));
        assert!(seen.insert(c));
        assert!(!seen.contains(&a));
        assert!(seen.contains(&b) && seen.contains(&c));
        assert!(seen.insert(a), "forgotten ids count as new");
    }

    #[test]
    fn cache_stays_within_its_byte_budget() {
        let mut cache = ArtifactCache::new(100);
        let (a, b, c) = (artifact(1, 40), artifact(2, 40), artifact(3, 40));
        cache.insert(a.clone());
        cache.insert(b.clone());
        cache.insert(c.clone());
        assert!(cache.get(&a.id()).is_none());
        assert_eq!(cache.get(&b.id()), Some(b));
        assert_eq!(cache.get(&c.id()), Some(c));
        cache.insert(artifact(4, 101));
        assert!(cache.get(&artifact(4, 101).id()).is_none());
        assert!(cache.bytes <= 100);
    }
}
