//! A checkpoint in parts, as state sync moves it.
//!
//! A part is the metadata, or the entries of one keyspace (heap pages or
//! stable-memory chunks) under one key prefix (a canister, and for heap
//! pages a memory) whose index falls in one group of [`PART_PAGES`]. The
//! cut depends only on the keys, so a checkpoint that changed a few pages
//! since another differs from it in a few parts: a replica that syncs keeps
//! the parts it already holds and fetches the others.
//!
//! The serving side reads parts from a [`CheckpointView`], an LSM snapshot
//! of the checkpoint it serves: later checkpoints do not change what it
//! reads, and nothing is held in memory but the part being read. The
//! fetching side stores each part as it arrives ([`Checkpointer::put_part`])
//! into a store of its own, checks the whole by its state hash, and only
//! then replaces its checkpoint with it ([`Checkpointer::replace_with`]),
//! writing only the differences.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use fjall::{Iter, Readable, Slice, Snapshot};
use sha2::{Digest, Sha256};

use super::*;

/// Entries (4 KiB pages or chunks) per part: at most 1 MiB of values.
pub const PART_PAGES: u64 = 256;

/// Longest key prefix a part may name (a canister and a memory index).
const MAX_PREFIX: usize = 64;

/// Writes per batch while a checkpoint is replaced (bounds the memory).
const REPLACE_BATCH: usize = 4096;

/// A part of a checkpoint (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Part {
    /// The metadata: canisters, round, policies (JSON, as stored).
    Meta,
    /// The entries of the `stable` (or else `pages`) keyspace whose key is
    /// `prefix` and a big-endian index in `group * PART_PAGES ..
    /// (group + 1) * PART_PAGES`.
    Entries {
        /// Stable memory (else heap pages).
        stable: bool,
        /// The key prefix: a canister, and for heap pages a memory.
        prefix: Vec<u8>,
        /// The index group.
        group: u64,
    },
}

/// A part as a serving replica announces it: its encoding's SHA-256 and
/// length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// The part.
    pub part: Part,
    /// SHA-256 of its encoding ([`CheckpointView::read`]).
    pub hash: [u8; 32],
    /// Length of its encoding.
    pub size: u64,
}

impl PartInfo {
    fn of(part: Part, bytes: &[u8]) -> Self {
        PartInfo {
            part,
            hash: Sha256::digest(bytes).into(),
            size: bytes.len() as u64,
        }
    }
}

/// An entries part as encoded (postcard): (index, value), by index.
type Entries = Vec<(u64, Vec<u8>)>;

/// A key's prefix and index (its last 8 bytes).
fn split_key(key: &[u8]) -> anyhow::Result<(&[u8], u64)> {
    anyhow::ensure!(key.len() > 8, "malformed key in the page store");
    let (prefix, index) = key.split_at(key.len() - 8);
    Ok((
        prefix,
        u64::from_be_bytes(index.try_into().expect("8 bytes")),
    ))
}

/// The first and last index of `group`.
fn group_bounds(group: u64) -> anyhow::Result<(u64, u64)> {
    let first = group
        .checked_mul(PART_PAGES)
        .ok_or_else(|| anyhow::anyhow!("part group {group} is out of range"))?;
    Ok((first, first + (PART_PAGES - 1)))
}

/// A checkpoint as it was when the view was taken; cheap to clone.
#[derive(Clone)]
pub struct CheckpointView {
    snapshot: Snapshot,
    pages: Keyspace,
    stable: Keyspace,
    meta: Keyspace,
}

impl Checkpointer {
    /// A view of the current checkpoint, or `None` when there is none.
    pub fn view(&self) -> anyhow::Result<Option<CheckpointView>> {
        let view = CheckpointView {
            snapshot: self.db.snapshot(),
            pages: self.pages.clone(),
            stable: self.stable.clone(),
            meta: self.meta.clone(),
        };
        Ok(view.meta_bytes()?.is_some().then_some(view))
    }
}

impl CheckpointView {
    fn keyspace(&self, stable: bool) -> &Keyspace {
        if stable { &self.stable } else { &self.pages }
    }

    fn meta_bytes(&self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .snapshot
            .get(&self.meta, META_KEY)
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    /// The round of the checkpoint and the module hashes it names (the
    /// canisters' code, their stored chunks and the policies in force).
    pub fn summary(&self) -> anyhow::Result<(u64, Vec<String>)> {
        let bytes = self
            .meta_bytes()?
            .ok_or_else(|| anyhow::anyhow!("the checkpoint has no metadata"))?;
        let meta: Meta = serde_json::from_slice(&bytes)?;
        let mut modules: Vec<String> = meta
            .canisters
            .iter()
            .flat_map(|c| c.module_hash.iter().chain(&c.chunks).cloned())
            .chain(meta.scheduler_policy)
            .chain(meta.consensus_policy.map(|(_, hash)| hash))
            .collect();
        modules.sort();
        modules.dedup();
        Ok((meta.round, modules))
    }

    /// Every part, in order, with its hash and size; one part at a time is
    /// in memory.
    pub fn parts(&self) -> anyhow::Result<Vec<PartInfo>> {
        let meta = self
            .meta_bytes()?
            .ok_or_else(|| anyhow::anyhow!("the checkpoint has no metadata"))?;
        let mut infos = vec![PartInfo::of(Part::Meta, &meta)];
        for stable in [false, true] {
            let mut current: Option<(Vec<u8>, u64)> = None;
            let mut entries = Entries::new();
            let mut finish = |current: Option<(Vec<u8>, u64)>, entries: &mut Entries| {
                if let Some((prefix, group)) = current {
                    let bytes = postcard::to_stdvec(&*entries).expect("entries encode");
                    let part = Part::Entries {
                        stable,
                        prefix,
                        group,
                    };
                    infos.push(PartInfo::of(part, &bytes));
                }
                entries.clear();
            };
            for entry in self.snapshot.iter(self.keyspace(stable)) {
                let (key, value) = entry.into_inner().map_err(storage)?;
                let (prefix, index) = split_key(&key)?;
                let group = index / PART_PAGES;
                if current
                    .as_ref()
                    .is_none_or(|(p, g)| (p.as_slice(), *g) != (prefix, group))
                {
                    finish(current.take(), &mut entries);
                    current = Some((prefix.to_vec(), group));
                }
                entries.push((index, value.to_vec()));
            }
            finish(current, &mut entries);
        }
        Ok(infos)
    }

    /// The encoding of `part`: the metadata as stored, or the entries
    /// (postcard); an empty list when the checkpoint has none of it.
    pub fn read(&self, part: &Part) -> anyhow::Result<Vec<u8>> {
        match part {
            Part::Meta => self
                .meta_bytes()?
                .ok_or_else(|| anyhow::anyhow!("the checkpoint has no metadata")),
            Part::Entries {
                stable,
                prefix,
                group,
            } => {
                let (first, last) = group_bounds(*group)?;
                let mut entries = Entries::new();
                let range = chunk_key(prefix, first)..=chunk_key(prefix, last);
                for entry in self.snapshot.range(self.keyspace(*stable), range) {
                    let (key, value) = entry.into_inner().map_err(storage)?;
                    let (key_prefix, index) = split_key(&key)?;
                    anyhow::ensure!(key_prefix == prefix, "malformed key in the page store");
                    entries.push((index, value.to_vec()));
                }
                Ok(postcard::to_stdvec(&entries)?)
            }
        }
    }
}

impl Checkpointer {
    /// Stores `part` (its encoding, `bytes`) as fetched. Checks its form
    /// (the metadata parses; entries are whole pages, in order and in the
    /// part's group), not its truth: the state hash checks that.
    pub fn put_part(&self, part: &Part, bytes: &[u8]) -> anyhow::Result<()> {
        match part {
            Part::Meta => {
                let _: Meta = serde_json::from_slice(bytes)?;
                self.meta.insert(META_KEY, bytes).map_err(storage)
            }
            Part::Entries {
                stable,
                prefix,
                group,
            } => {
                anyhow::ensure!(
                    !prefix.is_empty() && prefix.len() <= MAX_PREFIX,
                    "a part's key prefix is {} bytes",
                    prefix.len()
                );
                let (first, last) = group_bounds(*group)?;
                let entries: Entries = postcard::from_bytes(bytes)
                    .map_err(|e| anyhow::anyhow!("a part does not decode: {e}"))?;
                anyhow::ensure!(!entries.is_empty(), "an empty part");
                let keyspace = if *stable { &self.stable } else { &self.pages };
                let mut batch = self.db.batch();
                let mut previous = None;
                for (index, value) in entries {
                    anyhow::ensure!(
                        (first..=last).contains(&index) && previous.is_none_or(|p| p < index),
                        "a part's entries are not in order within its group"
                    );
                    anyhow::ensure!(value.len() == PAGE_SIZE, "a part's entry is not a page");
                    previous = Some(index);
                    batch.insert(keyspace, chunk_key(prefix, index), value);
                }
                batch.commit().map_err(storage)
            }
        }
    }

    /// Makes the parts put so far durable.
    pub fn sync(&self) -> anyhow::Result<()> {
        self.db.persist(PersistMode::SyncAll).map_err(storage)
    }

    /// Checks that every entries part in `parts` belongs to the stored
    /// metadata: to a canister it lists (stable memory) or to one of its
    /// memories (heap pages), so that nothing a loaded state would not
    /// cover is stored.
    pub fn check_parts<'a>(&self, parts: impl IntoIterator<Item = &'a Part>) -> anyhow::Result<()> {
        let bytes = self
            .meta
            .get(META_KEY)
            .map_err(storage)?
            .ok_or_else(|| anyhow::anyhow!("the metadata part is missing"))?;
        let meta: Meta = serde_json::from_slice(&bytes)?;
        let mut stable_prefixes = BTreeSet::new();
        let mut page_prefixes = BTreeSet::new();
        for canister in &meta.canisters {
            let prefix = canister_prefix(&canister.id);
            for memory in 0..canister.memory_sizes.len() {
                let mut key = prefix.clone();
                key.extend_from_slice(&(memory as u32).to_be_bytes());
                page_prefixes.insert(key);
            }
            stable_prefixes.insert(prefix);
        }
        for part in parts {
            if let Part::Entries { stable, prefix, .. } = part {
                let known = if *stable {
                    &stable_prefixes
                } else {
                    &page_prefixes
                };
                anyhow::ensure!(
                    known.contains(prefix),
                    "a part holds memory of no canister or memory in the metadata"
                );
            }
        }
        Ok(())
    }

    /// Replaces this store's checkpoint with `other`'s (loaded: its states
    /// become this store's last checkpointed ones), writing only the
    /// entries that differ, in bounded batches, the metadata last, then
    /// syncing. A crash midway leaves a mixed store: the caller keeps
    /// `other` and a mark that it was checked, and completes the
    /// replacement before this store is loaded again.
    pub fn replace_with(&mut self, other: &mut Checkpointer) -> anyhow::Result<()> {
        for (mine, theirs) in [(&self.pages, &other.pages), (&self.stable, &other.stable)] {
            replace_keyspace(&self.db, mine, theirs.iter())?;
        }
        let meta = other
            .meta
            .get(META_KEY)
            .map_err(storage)?
            .ok_or_else(|| anyhow::anyhow!("the replacing checkpoint has no metadata"))?;
        self.meta.insert(META_KEY, meta).map_err(storage)?;
        self.sync()?;
        self.flush_memtables()?;
        self.last = std::mem::take(&mut other.last);
        Ok(())
    }
}

/// Makes `mine` hold exactly the entries `theirs` yields (in key order):
/// a merge of the two sorted sequences.
fn replace_keyspace(db: &Database, mine: &Keyspace, mut theirs: Iter) -> anyhow::Result<()> {
    fn next(iter: &mut Iter) -> anyhow::Result<Option<(Slice, Slice)>> {
        iter.next()
            .map(|g| g.into_inner().map_err(storage))
            .transpose()
    }
    let mut ours = mine.iter();
    let (mut a, mut b) = (next(&mut ours)?, next(&mut theirs)?);
    let mut batch = db.batch();
    loop {
        let order = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka[..].cmp(&kb[..]),
        };
        match order {
            Ordering::Less => {
                let (key, _) = a.take().expect("compared");
                batch.remove(mine, key);
                a = next(&mut ours)?;
            }
            Ordering::Greater => {
                let (key, value) = b.take().expect("compared");
                batch.insert(mine, key, value);
                b = next(&mut theirs)?;
            }
            Ordering::Equal => {
                let (_, old) = a.take().expect("compared");
                let (key, value) = b.take().expect("compared");
                if old != value {
                    batch.insert(mine, key, value);
                }
                a = next(&mut ours)?;
                b = next(&mut theirs)?;
            }
        }
        if batch.len() >= REPLACE_BATCH {
            std::mem::replace(&mut batch, db.batch())
                .commit()
                .map_err(storage)?;
        }
    }
    batch.commit().map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE]
    }

    fn store() -> (tempfile::TempDir, Checkpointer) {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpointer::open(dir.path()).unwrap();
        (dir, store)
    }

    /// A store with metadata naming one canister (one memory) and `pages`
    /// heap pages and two stable chunks under it.
    fn filled(pages: &[(u64, u8)]) -> (tempfile::TempDir, Checkpointer, Vec<u8>) {
        let (dir, store) = store();
        let id = Principal::canister(7);
        let meta = Meta {
            round: 9,
            time_nanos: 1,
            next_index: 1,
            canisters: vec![CanisterMeta {
                id: id.clone(),
                controllers: vec![],
                status: RunStatus::Running,
                module_hash: Some("ab".repeat(32)),
                cycles: 0,
                logs: VecDeque::new(),
                next_log_index: 0,
                updates: 0,
                certified_data: vec![],
                timers: BTreeMap::new(),
                next_timer_id: 0,
                memory_sizes: vec![1 << 32],
                stable_pages: 16,
                next_call_id: 0,
                messaging: Messaging::default(),
                chunks: BTreeSet::new(),
            }],
            scheduler_policy: None,
            requests: vec![],
            consensus_policy: None,
        };
        store
            .meta
            .insert(META_KEY, serde_json::to_vec(&meta).unwrap())
            .unwrap();
        let prefix = canister_prefix(&id);
        for &(index, byte) in pages {
            store
                .pages
                .insert(page_key(&prefix, 0, index), page(byte))
                .unwrap();
        }
        for chunk in [3, 700] {
            store
                .stable
                .insert(chunk_key(&prefix, chunk), page(9))
                .unwrap();
        }
        (dir, store, prefix)
    }

    fn contents(store: &Checkpointer) -> Vec<(Vec<u8>, Vec<u8>)> {
        [&store.meta, &store.pages, &store.stable]
            .into_iter()
            .flat_map(|ks| ks.iter())
            .map(|g| {
                let (k, v) = g.into_inner().unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// Parts cut by key: one per (prefix, group of 256), and a view keeps
    /// reading the checkpoint it was taken of after the store changes.
    #[test]
    fn a_checkpoint_travels_in_parts_and_arrives_whole() {
        let (_d, source, prefix) = filled(&[(0, 1), (255, 2), (256, 3), (100_000, 4)]);
        let view = source.view().unwrap().unwrap();
        let parts = view.parts().unwrap();
        let groups: Vec<(bool, u64)> = parts
            .iter()
            .filter_map(|p| match &p.part {
                Part::Entries { stable, group, .. } => Some((*stable, *group)),
                Part::Meta => None,
            })
            .collect();
        assert_eq!(
            groups,
            [(false, 0), (false, 1), (false, 390), (true, 0), (true, 2)]
        );
        assert_eq!(parts[0].part, Part::Meta);
        let before = contents(&source);
        source
            .pages
            .insert(page_key(&prefix, 0, 0), page(77))
            .unwrap();
        let (_e, target) = store();
        for info in &parts {
            let bytes = view.read(&info.part).unwrap();
            assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), info.hash);
            assert_eq!(bytes.len() as u64, info.size);
            target.put_part(&info.part, &bytes).unwrap();
        }
        target.check_parts(parts.iter().map(|p| &p.part)).unwrap();
        assert_eq!(
            contents(&target),
            before,
            "the view's checkpoint, not the new page"
        );
        assert_eq!(view.summary().unwrap(), (9, vec!["ab".repeat(32)]));
    }

    #[test]
    fn malformed_parts_are_refused() {
        let (_d, source, canister) = filled(&[(5, 1)]);
        let prefix = [&canister[..], &[0; 4]].concat();
        let view = source.view().unwrap().unwrap();
        let part = Part::Entries {
            stable: false,
            prefix: prefix.clone(),
            group: 0,
        };
        let good = view.read(&part).unwrap();
        let (_e, target) = store();
        let refused = |part: &Part, bytes: &[u8], why: &str| {
            let err = target.put_part(part, bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        };
        refused(&part, &good[..good.len() - 1], "does not decode");
        let other_group = Part::Entries {
            stable: false,
            prefix: prefix.clone(),
            group: 1,
        };
        refused(&other_group, &good, "not in order within its group");
        let encode = |e: &Entries| postcard::to_stdvec(e).unwrap();
        refused(&part, &encode(&vec![(1, vec![0; 5])]), "not a page");
        refused(
            &part,
            &encode(&vec![(2, page(1)), (1, page(1))]),
            "not in order",
        );
        refused(&part, &encode(&vec![]), "empty");
        refused(&Part::Meta, b"{", "EOF");
        let huge = Part::Entries {
            stable: false,
            prefix: vec![1; 65],
            group: 0,
        };
        refused(&huge, &good, "prefix");
        let far = Part::Entries {
            stable: false,
            prefix,
            group: u64::MAX,
        };
        refused(&far, &good, "out of range");
        // A part of a canister or memory the metadata does not list.
        target
            .put_part(&Part::Meta, &view.read(&Part::Meta).unwrap())
            .unwrap();
        let stranger = Part::Entries {
            stable: true,
            prefix: vec![1, 2],
            group: 0,
        };
        let err = target.check_parts([&stranger]).unwrap_err().to_string();
        assert!(err.contains("no canister"), "{err}");
        assert!(target.check_parts([&part, &Part::Meta]).is_ok());
    }

    /// Replacing writes what differs and removes what the other lacks.
    #[test]
    fn a_replaced_checkpoint_holds_exactly_the_others() {
        let (_d, mut old, _) = filled(&[(0, 1), (1, 1), (2, 1), (9_000, 1)]);
        let (_e, mut new, _) = filled(&[(1, 1), (2, 2), (3, 3)]);
        new.stable
            .remove(chunk_key(&canister_prefix(&Principal::canister(7)), 3))
            .unwrap();
        old.replace_with(&mut new).unwrap();
        assert_eq!(contents(&old), contents(&new));
        let view = old.view().unwrap().unwrap();
        assert_eq!(
            view.parts().unwrap(),
            new.view().unwrap().unwrap().parts().unwrap()
        );
    }
}
