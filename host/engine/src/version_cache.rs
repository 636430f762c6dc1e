//! A cache of resources that each hold the contents of one page-map version
//! (memory images, kept memories): looked up by version, lent to one
//! message at a time, bounded in entries and bytes, the least recently used
//! evicted first.

use std::sync::Mutex;

use crate::paging::PageMap;

/// A cached resource: how many bytes it holds.
pub(crate) trait Resident {
    /// Bytes of memory it keeps.
    fn resident_bytes(&self) -> usize;
}

/// What the cache has for a version.
pub(crate) enum Lent<T> {
    /// The resource (taken out until given back).
    Hit(T),
    /// Nothing: the caller builds the resource and gives it back (or
    /// forgets the version when it cannot).
    Miss,
    /// Lent to another message right now.
    Busy,
}

struct Entry<T> {
    version: PageMap,
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

    /// Takes the resource of `version` out of the cache; on a miss a marker
    /// records that the caller builds it.
    pub(crate) fn lend(&mut self, version: &PageMap) -> Lent<T> {
        self.clock += 1;
        match self
            .entries
            .iter_mut()
            .find(|e| e.version.same_version(version))
        {
            Some(entry) => match entry.value.take() {
                Some(value) => Lent::Hit(value),
                None => Lent::Busy,
            },
            None => {
                self.entries.push(Entry {
                    version: version.clone(),
                    value: None,
                    last_used: 0,
                });
                Lent::Miss
            }
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
        self.forget(lent);
        self.clock += 1;
        let mut evicted = Vec::new();
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.value.is_some() && e.version.same_version(&version))
        {
            evicted.extend(self.entries.remove(i).value);
        }
        self.entries.push(Entry {
            version,
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
            Some(crate::paging::PageRef::new(&[i; crate::paging::PAGE_SIZE])),
        )])
    }

    #[test]
    fn lends_once_and_evicts_the_least_recently_used() {
        let mut cache = VersionCache::<Bytes>::new(2, 100);
        let (a, b, c) = (version(1), version(2), version(3));
        assert!(matches!(cache.lend(&a), Lent::Miss));
        assert!(matches!(cache.lend(&a), Lent::Busy));
        assert!(cache.give_back(&a, a.clone(), Bytes(10)).is_empty());
        assert!(matches!(cache.lend(&a), Lent::Hit(Bytes(10))));
        // Given back holding a new version: found under that one.
        assert!(cache.give_back(&a, b.clone(), Bytes(10)).is_empty());
        assert!(matches!(cache.lend(&a), Lent::Miss));
        cache.forget(&a);
        assert!(matches!(cache.lend(&c), Lent::Miss));
        assert!(cache.give_back(&c, c.clone(), Bytes(10)).is_empty());
        assert!(matches!(cache.lend(&a), Lent::Miss));
        // A third resource: the oldest (b) goes.
        let evicted = cache.give_back(&a, a.clone(), Bytes(10));
        assert_eq!(evicted.len(), 1);
        assert!(matches!(cache.lend(&b), Lent::Miss));
        cache.forget(&b);
        // Over the byte bound: everything older goes.
        assert!(matches!(cache.lend(&b), Lent::Miss));
        assert_eq!(cache.give_back(&b, b.clone(), Bytes(95)).len(), 2);
        // Evicted by version, only when resting.
        assert!(matches!(cache.lend(&c), Lent::Miss));
        assert!(cache.evict(&c).is_none());
        assert!(cache.give_back(&c, c.clone(), Bytes(1)).is_empty());
        assert!(cache.evict(&c).is_some());
        assert!(cache.evict(&c).is_none());
        assert_eq!(cache.drain_resting().len(), 1);
    }
}
