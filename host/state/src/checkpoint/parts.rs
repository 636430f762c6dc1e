//! A checkpoint in parts, as state sync moves it.
//!
//! A part is the metadata, or the entries of one keyspace (heap pages or
//! stable-memory chunks) under one key prefix (a canister, and for heap
//! pages a memory) whose index falls in one group of [`PART_PAGES`] (256
//! indices: at most 1 MiB). The cut depends only on the keys, so two
//! checkpoints of one state differ only in the parts that changed: a
//! replica that syncs keeps the parts it already holds and fetches the
//! others.
//!
//! The serving side reads parts from a [`CheckpointView`], an LSM snapshot
//! of the checkpoint it serves: later checkpoints do not change what it
//! reads, and nothing is held in memory but the part being read. The view
//! lists the parts with their SHA-256 and reads one at a time.
//!
//! The fetching side stores each part as it arrives
//! ([`Checkpointer::put_part`], after checking its form) into a store of
//! its own; [`Checkpointer::check_parts`] refuses parts of canisters or
//! memories the metadata does not list. A [`Plan`] says how a fetched state
//! differs from the store's checkpoint: the round it started from, the
//! parts that go, the parts fetched. [`Checkpointer::load_overlay`] loads
//! the state it makes without touching the store: the last checkpoint's
//! states in memory (`last`), with the dropped parts' pages removed and the
//! fetched ones (from the staging store) put in. Only once that state
//! hashes to the certified hash does [`Checkpointer::apply_plan`] write it
//! into the store: only those parts' entries, in batches of 4,096, the
//! metadata last, then synced. Running it again gives the same store, so a
//! crash midway is redone.
//!
//! Tested here: the cut, malformed parts and the replacement.

use std::collections::{BTreeMap, BTreeSet};

use fjall::{Readable, Slice, Snapshot};
use sha2::{Digest, Sha256};

use super::*;

/// Entries (4 KiB pages or chunks) per part: at most 1 MiB of values.
pub const PART_PAGES: u64 = 256;

/// Longest key prefix a part may name (a canister and a memory index).
const MAX_PREFIX: usize = 64;

/// Writes per batch while a plan is applied (bounds the memory).
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

/// The encoding of a part whose entries `range` yields (keys under
/// `prefix`).
fn encode_entries(
    range: impl Iterator<Item = fjall::Guard>,
    prefix: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let entries: Entries = collect_entries(range, prefix)?
        .into_iter()
        .map(|(index, value)| (index, value.to_vec()))
        .collect();
    Ok(postcard::to_stdvec(&entries)?)
}

/// The (index, value) pairs `range` yields, whose keys must be `prefix`
/// and an index.
fn collect_entries(
    range: impl Iterator<Item = fjall::Guard>,
    prefix: &[u8],
) -> anyhow::Result<Vec<(u64, Slice)>> {
    let mut entries = Vec::new();
    for entry in range {
        let (key, value) = entry.into_inner().map_err(storage)?;
        let (key_prefix, index) = split_key(&key)?;
        anyhow::ensure!(key_prefix == prefix, "malformed key in the page store");
        entries.push((index, value));
    }
    Ok(entries)
}

/// Parts that checkpoints wrote since the parts were last listed.
#[derive(Debug, Default)]
pub(super) struct ChangedParts {
    parts: BTreeSet<Part>,
    /// Too many to track, or a canister went: list them all again.
    pub(super) all: bool,
}

/// Changed parts tracked at most (beyond, they are all listed again).
const MAX_TRACKED_PARTS: usize = 1 << 16;

impl ChangedParts {
    /// Notes the part of an entry written or removed (its key).
    pub(super) fn note(&mut self, stable: bool, key: &[u8]) {
        if self.all {
            return;
        }
        let Ok((prefix, index)) = split_key(key) else {
            self.all = true;
            return;
        };
        let group = index / PART_PAGES;
        let same = |p: &Part| {
            matches!(p, Part::Entries { stable: s, prefix: q, group: g }
                if *s == stable && q == prefix && *g == group)
        };
        // Entries come in key order: most repeat the last part.
        if self.parts.last().is_some_and(same) {
            return;
        }
        self.parts.insert(Part::Entries {
            stable,
            prefix: prefix.to_vec(),
            group,
        });
        if self.parts.len() > MAX_TRACKED_PARTS {
            self.all = true;
            self.parts.clear();
        }
    }

    /// Adds another checkpoint's changes.
    pub(super) fn absorb(&mut self, other: ChangedParts) {
        self.all |= other.all;
        if self.all {
            self.parts.clear();
            return;
        }
        self.parts.extend(other.parts);
        if self.parts.len() > MAX_TRACKED_PARTS {
            self.all = true;
            self.parts.clear();
        }
    }
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
                let range = chunk_key(prefix, first)..=chunk_key(prefix, last);
                encode_entries(self.snapshot.range(self.keyspace(*stable), range), prefix)
            }
        }
    }
}

/// A listing of a checkpoint's parts under way ([`Checkpointer::begin_listing`]).
pub struct Listing {
    view: CheckpointView,
    /// The parts' hashes as last listed, if they are known.
    known: Option<BTreeMap<Part, PartInfo>>,
    /// The parts checkpoints wrote since they were last listed.
    changed: BTreeSet<Part>,
    epoch: u64,
}

/// A checkpoint's parts, listed (`Listing::hash`).
pub struct Listed {
    /// The view the parts were listed from.
    pub view: CheckpointView,
    /// Every part, the metadata first, as [`CheckpointView::parts`] lists
    /// them.
    pub parts: Vec<PartInfo>,
    /// The parts of pages, for the checkpointer to keep.
    infos: BTreeMap<Part, PartInfo>,
    epoch: u64,
}

impl Listing {
    /// Hashes what it must: the parts written since the last listing, or
    /// every part when none is known (2–3 s per GiB of pages).
    pub fn hash(self) -> anyhow::Result<Listed> {
        let Listing {
            view,
            known,
            changed,
            epoch,
        } = self;
        let infos = match known {
            Some(mut infos) => {
                let empty = postcard::to_stdvec(&Entries::new())?;
                for part in changed {
                    let bytes = view.read(&part)?;
                    // An empty list: the part has no entries left.
                    if bytes == empty {
                        infos.remove(&part);
                    } else {
                        infos.insert(part.clone(), PartInfo::of(part, &bytes));
                    }
                }
                infos
            }
            None => view
                .parts()?
                .into_iter()
                .filter(|info| info.part != Part::Meta)
                .map(|info| (info.part.clone(), info))
                .collect(),
        };
        let meta = view
            .meta_bytes()?
            .ok_or_else(|| anyhow::anyhow!("the checkpoint has no metadata"))?;
        let mut parts = vec![PartInfo::of(Part::Meta, &meta)];
        parts.extend(infos.values().cloned());
        Ok(Listed {
            view,
            parts,
            infos,
            epoch,
        })
    }
}

impl Checkpointer {
    /// Drops the listed parts (the stored checkpoint was replaced).
    pub(super) fn forget_part_infos(&mut self) {
        self.part_infos = None;
        self.changed = ChangedParts::default();
        self.parts_epoch += 1;
    }

    /// Takes `infos` as the stored checkpoint's parts of pages (an
    /// installed state's, from its checked manifest), so that the next
    /// listing need not hash them. Call it right after the store changed
    /// to hold exactly them.
    pub fn adopt_part_infos(&mut self, infos: BTreeMap<Part, PartInfo>) {
        self.part_infos = Some(infos);
        self.changed = ChangedParts::default();
        self.parts_epoch += 1;
    }

    /// Starts listing the stored checkpoint's parts: a view of it, and
    /// what is known of their hashes. The hashing (`Listing::hash`) needs
    /// no access to the checkpointer, so checkpoints go on meanwhile;
    /// [`Checkpointer::keep_listing`] then keeps its result for the next
    /// listing. `None` when there is no checkpoint.
    pub fn begin_listing(&mut self) -> anyhow::Result<Option<Listing>> {
        let Some(view) = self.view()? else {
            return Ok(None);
        };
        // Checkpoints written from here on are noted in a fresh set, for
        // the listing after this one.
        let changed = std::mem::take(&mut self.changed);
        let known = self.part_infos.take().filter(|_| !changed.all);
        self.parts_epoch += 1;
        Ok(Some(Listing {
            view,
            known,
            changed: changed.parts,
            epoch: self.parts_epoch,
        }))
    }

    /// Keeps the part hashes `listed` found, unless the listing was
    /// overtaken (another listing began after it, or the store was
    /// replaced): the next listing then hashes only the parts written
    /// since its view.
    pub fn keep_listing(&mut self, listed: &mut Listed) {
        if listed.epoch == self.parts_epoch {
            self.part_infos = Some(std::mem::take(&mut listed.infos));
        }
    }

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

    fn entries_keyspace(&self, stable: bool) -> &Keyspace {
        if stable { &self.stable } else { &self.pages }
    }

    /// The round of the stored checkpoint, if there is one.
    pub fn stored_round(&self) -> anyhow::Result<Option<u64>> {
        let Some(bytes) = self.meta.get(META_KEY).map_err(storage)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice::<Meta>(&bytes)?.round))
    }

    /// The entries of a part as stored here, by index.
    fn part_entries(
        &self,
        stable: bool,
        prefix: &[u8],
        group: u64,
    ) -> anyhow::Result<Vec<(u64, Slice)>> {
        let (first, last) = group_bounds(group)?;
        let range = chunk_key(prefix, first)..=chunk_key(prefix, last);
        collect_entries(self.entries_keyspace(stable).range(range), prefix)
    }

    /// The changes `plan` makes to one memory (or stable memory) whose
    /// stored indices are `old`: the pages of dropped parts go, the pages
    /// of fetched parts (in this, the staging store) come, in that order.
    fn overlay(
        &self,
        stable: bool,
        prefix: &[u8],
        old: impl Iterator<Item = u64>,
        plan: &Plan,
    ) -> anyhow::Result<Vec<(u64, Option<Slice>)>> {
        let mut updates = Vec::new();
        let mut group = None;
        for index in old {
            let g = index / PART_PAGES;
            let dropped = match group {
                Some((at, dropped)) if at == g => dropped,
                _ => {
                    let part = Part::Entries {
                        stable,
                        prefix: prefix.to_vec(),
                        group: g,
                    };
                    let dropped = plan.dropped.contains(&part);
                    group = Some((g, dropped));
                    dropped
                }
            };
            if dropped {
                updates.push((index, None));
            }
        }
        let from = Part::Entries {
            stable,
            prefix: prefix.to_vec(),
            group: 0,
        };
        for part in plan.fetched.range(from..) {
            match part {
                Part::Entries {
                    stable: s,
                    prefix: p,
                    group,
                } if *s == stable && p == prefix => {
                    for (index, value) in self.part_entries(stable, prefix, *group)? {
                        updates.push((index, Some(value)));
                    }
                }
                _ => break,
            }
        }
        Ok(updates)
    }

    /// Loads the checkpoint this store's becomes with `plan` applied,
    /// without changing the store: `staged` holds its metadata and the
    /// fetched parts; the kept parts are the last checkpoint's, taken from
    /// its states in memory rather than read again.
    pub fn load_overlay(&self, staged: &Checkpointer, plan: &Plan) -> anyhow::Result<Loaded> {
        anyhow::ensure!(
            self.stored_round()? == plan.base_round,
            "the node checkpointed since the state sync started"
        );
        let bytes = staged
            .meta
            .get(META_KEY)
            .map_err(storage)?
            .ok_or_else(|| anyhow::anyhow!("the metadata part is missing"))?;
        let mut meta: Meta = serde_json::from_slice(&bytes)?;
        let mut canisters = Vec::new();
        for m in std::mem::take(&mut meta.canisters) {
            let prefix = canister_prefix(&m.id);
            let base = self.last.get(&m.id);
            let mut memories = Vec::with_capacity(m.memory_sizes.len());
            for (memory, size) in m.memory_sizes.iter().enumerate() {
                let key = [&prefix[..], &(memory as u32).to_be_bytes()].concat();
                let empty = PageMap::default();
                let old = base
                    .and_then(|s| s.heap.memories.get(memory))
                    .map_or(&empty, |m| &m.pages);
                let updates = staged.overlay(false, &key, old.iter().map(|(i, _)| i), plan)?;
                let pages = old.with_updates(
                    updates
                        .into_iter()
                        .map(|(i, page)| (i, page.map(|p| page_from_slice(&p)))),
                );
                memories.push(MemoryImage { size: *size, pages });
            }
            let mut chunks: BTreeMap<u64, Vec<u8>> = base
                .map(|s| s.stable.chunks().map(|(i, c)| (i, c.to_vec())).collect())
                .unwrap_or_default();
            let old: Vec<u64> = chunks.keys().copied().collect();
            for (index, chunk) in staged.overlay(true, &prefix, old.into_iter(), plan)? {
                match chunk {
                    Some(chunk) => chunks.insert(index, chunk.to_vec()),
                    None => chunks.remove(&index),
                };
            }
            let stable = StableMemory::from_parts(m.stable_pages, chunks);
            canisters.push(restore(m, memories, stable));
        }
        Ok(loaded(meta, canisters))
    }

    /// Applies `plan` to this store: the entries of dropped parts go, those
    /// of fetched parts (from `staged`) come, the metadata becomes
    /// `staged`'s; in bounded batches, then synced. The result is the same
    /// however often it runs, so a crash midway is completed by running it
    /// again. `states` are the states it stores (as loaded by
    /// [`Checkpointer::load_overlay`]): the next checkpoint writes its
    /// differences from them (`None`: the caller loads the store next).
    pub fn apply_plan(
        &mut self,
        staged: &Checkpointer,
        plan: &Plan,
        states: Option<BTreeMap<Principal, ExecutionState>>,
    ) -> anyhow::Result<()> {
        let mut batch = self.db.batch();
        for part in plan.dropped.union(&plan.fetched) {
            let Part::Entries {
                stable,
                prefix,
                group,
            } = part
            else {
                continue;
            };
            let keyspace = self.entries_keyspace(*stable);
            let new: BTreeMap<u64, Slice> = if plan.fetched.contains(part) {
                staged
                    .part_entries(*stable, prefix, *group)?
                    .into_iter()
                    .collect()
            } else {
                BTreeMap::new()
            };
            for (index, _) in self.part_entries(*stable, prefix, *group)? {
                if !new.contains_key(&index) {
                    batch.remove(keyspace, chunk_key(prefix, index));
                }
            }
            for (index, value) in new {
                batch.insert(keyspace, chunk_key(prefix, index), value);
            }
            if batch.len() >= REPLACE_BATCH {
                std::mem::replace(&mut batch, self.db.batch())
                    .commit()
                    .map_err(storage)?;
            }
        }
        batch.commit().map_err(storage)?;
        let meta = staged
            .meta
            .get(META_KEY)
            .map_err(storage)?
            .ok_or_else(|| anyhow::anyhow!("the staged state has no metadata"))?;
        self.meta.insert(META_KEY, meta).map_err(storage)?;
        self.sync()?;
        self.flush_memtables()?;
        self.forget_part_infos();
        match states {
            Some(states) => self.last = states,
            None => self.last.clear(),
        }
        Ok(())
    }
}

/// How a fetched state differs from the store's checkpoint it started
/// from (at `base_round`): the parts of that checkpoint that go (changed
/// or gone) and the parts fetched into the staging store. The parts of
/// both that are the same are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The round of the checkpoint it applies to.
    pub base_round: Option<u64>,
    /// Its parts that go.
    pub dropped: BTreeSet<Part>,
    /// The parts fetched.
    pub fetched: BTreeSet<Part>,
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
            history: vec![],
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

    /// A plan from one checkpoint to another: the overlay of the kept
    /// parts (in memory) and the fetched ones loads the other checkpoint's
    /// state, and applying it (twice: a crash midway runs it again) makes
    /// the store hold exactly the other's entries.
    #[test]
    fn a_plan_turns_one_checkpoint_into_another() {
        let (_d, mut old, canister) = filled(&[(0, 1), (1, 1), (2, 1), (9_000, 1)]);
        let (_e, mut new, _) = filled(&[(1, 1), (2, 2), (3, 3), (600, 4)]);
        new.stable.remove(chunk_key(&canister, 3)).unwrap();
        old.load().unwrap();
        let wanted = new.load().unwrap().unwrap();
        let (old_view, new_view) = (old.view().unwrap().unwrap(), new.view().unwrap().unwrap());
        let old_parts = old_view.parts().unwrap();
        let new_parts = new_view.parts().unwrap();
        let kept: BTreeSet<&Part> = new_parts
            .iter()
            .filter(|p| old_parts.contains(p))
            .map(|p| &p.part)
            .collect();
        let entries = |infos: &[PartInfo]| -> BTreeSet<Part> {
            infos
                .iter()
                .map(|p| p.part.clone())
                .filter(|p| *p != Part::Meta && !kept.contains(p))
                .collect()
        };
        let plan = Plan {
            base_round: Some(9),
            dropped: entries(&old_parts),
            fetched: entries(&new_parts),
        };
        // Heap group 0 changed, group 2 is new, group 35 gone; stable
        // group 0 gone (its only chunk went), group 2 the same.
        assert_eq!(plan.dropped.len(), 3, "{plan:?}");
        assert_eq!(plan.fetched.len(), 2, "{plan:?}");
        let (_f, staged) = store();
        staged
            .put_part(&Part::Meta, &new_view.read(&Part::Meta).unwrap())
            .unwrap();
        for part in &plan.fetched {
            staged
                .put_part(part, &new_view.read(part).unwrap())
                .unwrap();
        }
        let loaded = old.load_overlay(&staged, &plan).unwrap();
        let states = |l: &Loaded| -> Vec<ExecutionState> {
            l.canisters.iter().map(|(c, _)| c.state.clone()).collect()
        };
        assert_eq!(states(&loaded), states(&wanted));
        let stale = Plan {
            base_round: Some(8),
            ..plan.clone()
        };
        assert!(old.load_overlay(&staged, &stale).is_err(), "another base");
        old.apply_plan(&staged, &plan, None).unwrap();
        old.apply_plan(&staged, &plan, None).unwrap();
        assert_eq!(contents(&old), contents(&new));
        assert_eq!(states(&old.load().unwrap().unwrap()), states(&wanted));
    }
}
