//! A cache of resources that each hold the contents of one page-map version
//! (memory images, kept memories): looked up by version, lent to one message
//! at a time, bounded in entries and bytes, the least recently used evicted
//! first. Evicted resources are dropped outside the cache's lock (unmapping
//! can be slow).
//!
//! Each resource also belongs to a [`Lineage`], one memory of one canister,
//! whose versions follow each other. A lineage rests in the cache at most
//! once: a resource given back replaces any other of its lineage, and a
//! version that misses is served from its lineage's resource of another
//! version ([`Lent::Older`]), which the caller brings forward by the pages
//! of `PageMap::diff` (cheaper than copying the whole heap again): an image
//! writes them, a kept memory drops them with `MADV_DONTNEED` so that they
//! load from the new version on first touch (beyond a quarter of its pages
//! it is rebuilt instead). So a version committed without the cache (a
//! message armed lazily because a query had borrowed the resource) neither
//! costs a rebuild nor leaves a stale resource behind, pinning the pages of
//! its old version.

use std::sync::Mutex;

use cellar_types::Principal;

use crate::paging::PageMap;

/// One memory of one canister: the versions a resource may move between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lineage {
    /// The canister.
    pub(crate) canister: Principal,
    /// The memory's index in the component's memories.
    pub(crate) memory: usize,
}

/// A cached resource: how many bytes it holds.
pub(crate) trait Resident {
    /// Bytes of memory it keeps.
    fn resident_bytes(&self) -> usize;
}

/// What the cache has for a version.
pub(crate) enum Lent<T> {
    /// The resource (taken out until given back).
    Hit(T),
    /// The resource of the same lineage, holding the other version given:
    /// the caller brings it forward to the version asked for (or drops it
    /// and builds afresh), then gives it back, as after a miss.
    Older(T, PageMap),
    /// Nothing: the caller builds the resource and gives it back (or
    /// forgets the version when it cannot).
    Miss,
    /// Lent to another message right now.
    Busy,
}

struct Entry<T> {
    version: PageMap,
    lineage: Lineage,
    /// `None` while lent out: the entry stays as a marker until returned.
    value: Option<T>,
    last_used: u64,
}

/// The cache; see the module documentation.
pub(crate) struct VersionCache<T> {
    entries: Vec<Entry<T>>,
    clock: u64,
    max_entries: usize,
    max_bytes: usize,
}

impl<T: Resident> VersionCache<T> {
    /// An empty cache of at most `max_entries` resources holding at most
    /// `max_bytes` together.
    pub(crate) const fn new(max_entries: usize, max_bytes: usize) -> Self {
        VersionCache {
            entries: Vec::new(),
            clock: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Takes the resource of `version` (of `lineage`) out of the cache; on
    /// a miss a marker records that the caller builds it.
    pub(crate) fn lend(&mut self, version: &PageMap, lineage: &Lineage) -> Lent<T> {
        self.clock += 1;
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.version.same_version(version))
        {
            return match entry.value.take() {
                Some(value) => Lent::Hit(value),
                None => Lent::Busy,
            };
        }
        let older = self
            .entries
            .iter()
            .position(|e| e.value.is_some() && e.lineage == *lineage)
            .map(|i| self.entries.remove(i));
        self.entries.push(Entry {
            version: version.clone(),
            lineage: lineage.clone(),
            value: None,
            last_used: 0,
        });
        match older {
            Some(Entry {
                version,
                value: Some(value),
                ..
            }) => Lent::Older(value, version),
            _ => Lent::Miss,
        }
    }

    /// Drops the lent marker of `version` (its resource is not coming back).
    pub(crate) fn forget(&mut self, version: &PageMap) {
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.value.is_none() && e.version.same_version(version))
        {
            self.entries.remove(i);
        }
    }

    /// Puts `value`, lent for `lent` and now holding `version`, back; returns
    /// what it evicts (another resource for the same version, and the least
    /// recently used beyond the bounds), for the caller to drop outside its
    /// lock.
    #[must_use]
    pub(crate) fn give_back(&mut self, lent: &PageMap, version: PageMap, value: T) -> Vec<T> {
        let lineage = self
            .entries
            .iter()
            .find(|e| e.value.is_none() && e.version.same_version(lent))
            .map(|e| e.lineage.clone());
        self.forget(lent);
        self.clock += 1;
        let mut evicted = Vec::new();
        // Another resource of the same version or lineage is stale.
        while let Some(i) = self.entries.iter().position(|e| {
            e.value.is_some()
                && (e.version.same_version(&version) || Some(&e.lineage) == lineage.as_ref())
        }) {
            evicted.extend(self.entries.remove(i).value);
        }
        let Some(lineage) = lineage else {
            // Not lent (cannot happen): nothing to file it under.
            evicted.push(value);
            return evicted;
        };
        self.entries.push(Entry {
            version,
            lineage,
            value: Some(value),
            last_used: self.clock,
        });
        loop {
            let (count, bytes) = self
                .entries
                .iter()
                .filter_map(|e| e.value.as_ref().map(Resident::resident_bytes))
                .fold((0, 0), |(n, b), len| (n + 1, b + len));
            if count <= self.max_entries && bytes <= self.max_bytes {
                break;
            }
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.value.is_some())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            evicted.extend(self.entries.remove(oldest).value);
        }
        evicted
    }

    /// Takes out the resource of `version` when it is in the cache and not
    /// lent right now.
    #[must_use]
    pub(crate) fn evict(&mut self, version: &PageMap) -> Option<T> {
        let i = self
            .entries
            .iter()
            .position(|e| e.value.is_some() && e.version.same_version(version))?;
        self.entries.remove(i).value
    }

    /// Takes out every resource not lent right now (lent markers stay).
    #[must_use]
    pub(crate) fn drain_resting(&mut self) -> Vec<T> {
        let (resting, lent): (Vec<Entry<T>>, Vec<Entry<T>>) =
            self.entries.drain(..).partition(|e| e.value.is_some());
        self.entries = lent;
        resting.into_iter().filter_map(|e| e.value).collect()
    }
}

/// Puts `value` back into `cache` and drops what it evicts after the lock is
/// released (unmapping can be slow).
pub(crate) fn give_back<T: Resident>(
    cache: &Mutex<VersionCache<T>>,
    lent: &PageMap,
    version: PageMap,
    value: T,
) {
    let evicted = match cache.lock() {
        Ok(mut cache) => cache.give_back(lent, version, value),
        Err(_) => return,
    };
    drop(evicted);
}

/// Drops the resource of `version` from `cache` when it rests there (after
/// the lock is released).
pub(crate) fn evict<T: Resident>(cache: &Mutex<VersionCache<T>>, version: &PageMap) {
    let evicted = cache.lock().ok().and_then(|mut cache| cache.evict(version));
    drop(evicted);
}

/// Drops the lent marker of `version` in `cache`.
pub(crate) fn forget<T: Resident>(cache: &Mutex<VersionCache<T>>, version: &PageMap) {
    if let Ok(mut cache) = cache.lock() {
        cache.forget(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(usize);
    impl Resident for Bytes {
        fn resident_bytes(&self) -> usize {
            self.0
        }
    }

    fn version(i: u8) -> PageMap {
        PageMap::default().with_updates([(
            0,
            Some(crate::paging::PageRef::new(&[i; crate::page::PAGE_SIZE])),
        )])
    }

    fn ours(memory: usize) -> Lineage {
        Lineage {
            canister: Principal::canister(1),
            memory,
        }
    }

    #[test]
    fn lends_once_and_evicts_the_least_recently_used() {
        let mut cache = VersionCache::<Bytes>::new(2, 100);
        let (a, b, c) = (version(1), version(2), version(3));
        assert!(matches!(cache.lend(&a, &ours(1)), Lent::Miss));
        assert!(matches!(cache.lend(&a, &ours(1)), Lent::Busy));
        assert!(cache.give_back(&a, a.clone(), Bytes(10)).is_empty());
        assert!(matches!(cache.lend(&a, &ours(1)), Lent::Hit(Bytes(10))));
        // Given back holding a new version: found under that one.
        assert!(cache.give_back(&a, b.clone(), Bytes(10)).is_empty());
        assert!(matches!(cache.lend(&a, &ours(9)), Lent::Miss));
        cache.forget(&a);
        assert!(matches!(cache.lend(&c, &ours(3)), Lent::Miss));
        assert!(cache.give_back(&c, c.clone(), Bytes(10)).is_empty());
        assert!(matches!(cache.lend(&a, &ours(4)), Lent::Miss));
        // A third resource: the oldest (b) goes.
        let evicted = cache.give_back(&a, a.clone(), Bytes(10));
        assert_eq!(evicted.len(), 1);
        assert!(matches!(cache.lend(&b, &ours(2)), Lent::Miss));
        cache.forget(&b);
        // Over the byte bound: everything older goes.
        assert!(matches!(cache.lend(&b, &ours(2)), Lent::Miss));
        assert_eq!(cache.give_back(&b, b.clone(), Bytes(95)).len(), 2);
        // Evicted by version, only when resting.
        assert!(matches!(cache.lend(&c, &ours(3)), Lent::Miss));
        assert!(cache.evict(&c).is_none());
        assert!(cache.give_back(&c, c.clone(), Bytes(1)).is_empty());
        assert!(cache.evict(&c).is_some());
        assert!(cache.evict(&c).is_none());
        assert_eq!(cache.drain_resting().len(), 1);
    }

    #[test]
    fn a_lineage_rests_once_and_an_older_version_is_lent_for_a_newer() {
        let mut cache = VersionCache::<Bytes>::new(8, 100);
        let (v1, v2, v3) = (version(1), version(2), version(3));
        let memory = ours(0);
        // v1 kept, then v2 committed elsewhere: asking for v2 gets v1's.
        assert!(matches!(cache.lend(&v1, &memory), Lent::Miss));
        assert!(cache.give_back(&v1, v1.clone(), Bytes(10)).is_empty());
        match cache.lend(&v2, &memory) {
            Lent::Older(Bytes(10), old) => assert!(old.same_version(&v1)),
            _ => panic!("expected the older version"),
        }
        assert!(matches!(cache.lend(&v2, &memory), Lent::Busy));
        assert!(matches!(cache.lend(&v1, &memory), Lent::Miss));
        // Two of one lineage given back: the last one stays.
        assert!(cache.give_back(&v2, v2.clone(), Bytes(20)).is_empty());
        assert_eq!(cache.give_back(&v1, v1.clone(), Bytes(11)).len(), 1);
        assert!(matches!(
            cache.lend(&v2, &memory),
            Lent::Older(Bytes(11), _)
        ));
        cache.forget(&v2);
        // Other lineages are not touched.
        assert!(matches!(cache.lend(&v3, &ours(1)), Lent::Miss));
        assert!(cache.give_back(&v3, v3.clone(), Bytes(30)).is_empty());
        assert!(matches!(cache.lend(&v3, &ours(1)), Lent::Hit(Bytes(30))));
    }
}
