//! Checkpoints: the node state at a round boundary, in an LSM page store
//! (fjall).
//!
//! Three keyspaces hold a checkpoint: `pages` (key: canister, memory, page
//! index; value: the 4 KiB page), `stable` (key: canister, chunk index;
//! value: the 4 KiB chunk) and `meta` (every canister's metadata and the
//! round, as JSON). A checkpoint writes only the pages and chunks that
//! changed since the previous one (page-map diffs: the page maps are
//! persistent trees, so diffing the current version against the last
//! checkpointed one visits only changed paths), plus all metadata.
//! Everything of a checkpoint goes into one atomic write batch, synced: it
//! is durable once fjall's journal is synced. After durability has been
//! reported, the keyspaces' memtables are flushed so that fjall's own
//! journal is deleted: fjall replays the journal file in use at every
//! open. Hence also no journal compression, which kept a 1 GiB checkpoint
//! in one small journal file that was never sealed. The LSM tree's
//! compaction drops the overwritten versions.
//!
//! At restart each memory's pages are read by two threads
//! (`LOAD_THREADS`) over disjoint index ranges.
//!
//! `checkpoint/parts.rs` cuts a checkpoint into parts for state sync and
//! writes a fetched state back; `checkpoint_writer.rs` writes checkpoints
//! off the round's path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cellar_engine::{
    ExecutionState, HeapSnapshot, MemoryImage, PAGE_SIZE, PageMap, PageRef, StableMemory, Timer,
    page_from_slice,
};
use cellar_types::Principal;
use cellar_types::api::{LogEntry, RunStatus};
use fjall::config::{BlockSizePolicy, CompressionPolicy};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};

use crate::canister::Canister;
use crate::history::HistoryEntry;
use crate::messages::Messaging;

mod parts;

use parts::ChangedParts;
pub use parts::{CheckpointView, Listed, Part, PartInfo, Plan};

const META_KEY: &[u8] = b"checkpoint";

/// The node-wide part of a checkpoint.
#[derive(Serialize, Deserialize)]
struct Meta {
    round: u64,
    time_nanos: u64,
    next_index: u64,
    canisters: Vec<CanisterMeta>,
    /// Module hash of the scheduler policy in force (none: the built-in).
    #[serde(default)]
    scheduler_policy: Option<String>,
    /// The ingress history's entries, in id order.
    #[serde(default)]
    history: Vec<HistoryEntry>,
    /// Replica mode: the last consensus-policy change (from height, module
    /// hash).
    #[serde(default)]
    consensus_policy: Option<(u64, String)>,
}

#[derive(Serialize, Deserialize)]
struct CanisterMeta {
    id: Principal,
    controllers: Vec<Principal>,
    status: RunStatus,
    module_hash: Option<String>,
    cycles: u64,
    logs: VecDeque<LogEntry>,
    next_log_index: u64,
    updates: u64,
    certified_data: Vec<u8>,
    timers: BTreeMap<u64, (u64, Option<u64>)>,
    next_timer_id: u64,
    memory_sizes: Vec<u64>,
    stable_pages: u64,
    #[serde(default)]
    next_call_id: u64,
    #[serde(default)]
    messaging: Messaging,
    /// The chunk store's hashes (the chunks live under `modules/`).
    #[serde(default)]
    chunks: BTreeSet<String>,
}

/// The node state as loaded from a checkpoint; code is attached by the
/// caller from the module hashes.
pub struct Loaded {
    /// Last round included.
    pub round: u64,
    /// That round's time.
    pub time_nanos: u64,
    /// Next canister index.
    pub next_index: u64,
    /// Canisters (without code) and their module hashes.
    pub canisters: Vec<(Canister, Option<String>)>,
    /// Module hash of the scheduler policy in force (none: the built-in).
    pub scheduler_policy: Option<String>,
    /// The ingress history's entries.
    pub history: Vec<HistoryEntry>,
    /// Replica mode: the last consensus-policy change (from height, module
    /// hash).
    pub consensus_policy: Option<(u64, String)>,
}

/// The policies in force, as a checkpoint records them.
#[derive(Clone, Copy, Default)]
pub struct Policies<'a> {
    /// Module hash of the scheduler policy (none: the built-in).
    pub scheduler: Option<&'a str>,
    /// Replica mode: the last consensus-policy change (from height, module
    /// hash).
    pub consensus: Option<&'a (u64, String)>,
}

/// What a checkpoint wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Heap pages written or removed.
    pub pages: u64,
    /// Stable chunks written or removed.
    pub chunks: u64,
    /// Wall time taken, in microseconds.
    pub micros: u64,
    /// Of which: diffing the states and building the batch.
    pub build_micros: u64,
    /// Committing the batch (fjall's journal write and memtable inserts).
    pub commit_micros: u64,
    /// Syncing the journal to disk.
    pub sync_micros: u64,
}

/// Writes and loads checkpoints, remembering the last one to write deltas.
pub struct Checkpointer {
    db: Database,
    pages: Keyspace,
    stable: Keyspace,
    meta: Keyspace,
    /// The states as of the last checkpoint written or loaded.
    last: BTreeMap<Principal, ExecutionState>,
    /// The parts of pages of the checkpoint stored when they were last
    /// listed (state sync), and the parts written since.
    part_infos: Option<BTreeMap<Part, PartInfo>>,
    changed: ChangedParts,
    /// Counts listings begun and replacements of the store, so that a
    /// listing overtaken by either is not kept.
    parts_epoch: u64,
}

fn canister_prefix(id: &Principal) -> Vec<u8> {
    let bytes = id.as_bytes();
    let mut key = Vec::with_capacity(1 + bytes.len() + 12);
    key.push(bytes.len() as u8);
    key.extend_from_slice(bytes);
    key
}

fn page_key(prefix: &[u8], memory: u32, page: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&memory.to_be_bytes());
    key.extend_from_slice(&page.to_be_bytes());
    key
}

fn chunk_key(prefix: &[u8], chunk: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

fn storage(e: fjall::Error) -> anyhow::Error {
    anyhow::anyhow!("page store: {e}")
}

/// Data block size of the page and stable-memory stores.
const PAGE_BLOCK_BYTES: u32 = 64 << 10;

impl Checkpointer {
    /// Opens (creating) the page store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        // No journal compression: fjall seals its journal file only past
        // 64 MB on disk, and the file in use is replayed in full at every
        // open. Compressed, the checkpoint of a mostly-zero 1 GiB heap
        // stays in one 20 MB file that decompresses to 1 GiB at each
        // restart (measured: opening took 1.7-2.9 s, 60-160 ms without).
        // Checkpoints are written in the background, so the larger write
        // does not hold up rounds.
        let db = Database::builder(dir)
            .journal_compression(fjall::CompressionType::None)
            .open()
            .map_err(storage)?;
        // Pages are 4 KiB values that rarely compress well enough to pay
        // for compressing every checkpoint and decompressing every restart.
        // Blocks of 64 KiB hold 15 pages; fjall's default of 4 KiB holds
        // one, so a restart read each page with its own read call, block
        // decode and cache insertion.
        let uncompressed = || {
            KeyspaceCreateOptions::default()
                .data_block_compression_policy(CompressionPolicy::disabled())
                .data_block_size_policy(BlockSizePolicy::all(PAGE_BLOCK_BYTES))
        };
        let pages = db.keyspace("pages", uncompressed).map_err(storage)?;
        let stable = db.keyspace("stable", uncompressed).map_err(storage)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(storage)?;
        Ok(Checkpointer {
            db,
            pages,
            stable,
            meta,
            last: BTreeMap::new(),
            part_infos: None,
            changed: ChangedParts::default(),
            parts_epoch: 0,
        })
    }

    /// Writes the changes since the last checkpoint and makes the new one
    /// current, atomically. It is durable when this returns (fjall's
    /// journal is synced); [`Checkpointer::flush_memtables`] should follow,
    /// off the critical path, so that a restart need not replay it.
    pub fn write(
        &mut self,
        round: u64,
        time_nanos: u64,
        next_index: u64,
        canisters: &BTreeMap<Principal, Canister>,
        policies: Policies<'_>,
        history: &[Arc<HistoryEntry>],
    ) -> anyhow::Result<CheckpointStats> {
        let Policies {
            scheduler: scheduler_policy,
            consensus: consensus_policy,
        } = policies;
        let started = Instant::now();
        let mut batch = self.db.batch();
        let mut stats = CheckpointStats::default();
        let mut changed = ChangedParts::default();
        let empty_state = ExecutionState::default();
        for canister in canisters.values() {
            let prefix = canister_prefix(&canister.id);
            let old = self.last.get(&canister.id).unwrap_or(&empty_state);
            let new = &canister.state;
            let memories = new.heap.memories.len().max(old.heap.memories.len());
            for i in 0..memories {
                let empty = PageMap::default();
                let now = new.heap.memories.get(i).map_or(&empty, |m| &m.pages);
                let before = old.heap.memories.get(i).map_or(&empty, |m| &m.pages);
                for (page, content) in now.diff(before) {
                    let key = page_key(&prefix, i as u32, page);
                    changed.note(false, &key);
                    match content {
                        Some(content) => batch.insert(&self.pages, key, &content[..]),
                        None => batch.remove(&self.pages, key),
                    }
                    stats.pages += 1;
                }
            }
            for (chunk, content) in new.stable.diff(&old.stable) {
                let key = chunk_key(&prefix, chunk);
                changed.note(true, &key);
                match content {
                    Some(content) => batch.insert(&self.stable, key, content),
                    None => batch.remove(&self.stable, key),
                }
                stats.chunks += 1;
            }
        }
        for id in self.last.keys().filter(|id| !canisters.contains_key(*id)) {
            changed.all = true;
            let prefix = canister_prefix(id);
            for entry in self.pages.prefix(&prefix) {
                batch.remove(&self.pages, entry.key().map_err(storage)?);
            }
            for entry in self.stable.prefix(&prefix) {
                batch.remove(&self.stable, entry.key().map_err(storage)?);
            }
        }
        let meta = Meta {
            round,
            time_nanos,
            next_index,
            canisters: canisters.values().map(canister_meta).collect(),
            scheduler_policy: scheduler_policy.map(str::to_string),
            history: history.iter().map(|e| (**e).clone()).collect(),
            consensus_policy: consensus_policy.cloned(),
        };
        batch.insert(&self.meta, META_KEY, serde_json::to_vec(&meta)?);
        stats.build_micros = started.elapsed().as_micros() as u64;
        batch.commit().map_err(storage)?;
        stats.commit_micros = started.elapsed().as_micros() as u64 - stats.build_micros;
        self.db.persist(PersistMode::SyncAll).map_err(storage)?;
        stats.sync_micros =
            started.elapsed().as_micros() as u64 - stats.build_micros - stats.commit_micros;
        self.last = canisters
            .iter()
            .map(|(id, c)| (id.clone(), c.state.clone()))
            .collect();
        // Noted even while no listing is known: one may be under way.
        self.changed.absorb(changed);
        stats.micros = started.elapsed().as_micros() as u64;
        Ok(stats)
    }

    /// The store's background work under way: memtable flushes queued and
    /// compactions running.
    pub fn background_work(&self) -> (usize, usize) {
        (self.db.outstanding_flushes(), self.db.active_compactions())
    }

    /// Flushes what a checkpoint wrote into tables, so that fjall's
    /// journal can be deleted: fjall deletes a journal file only once
    /// every keyspace written in it has flushed past it, and replays the
    /// rest into memtables at every open. `meta` gets one small value per
    /// checkpoint and would otherwise never fill a memtable, so every page
    /// ever checkpointed would be replayed at restart. (Checkpoints run on
    /// their own thread, not in a round.) Durability does not wait for
    /// this: a crash before it only makes the next open replay the journal.
    pub fn flush_memtables(&self) -> anyhow::Result<()> {
        for keyspace in [&self.pages, &self.stable, &self.meta] {
            keyspace.rotate_memtable_and_wait().map_err(storage)?;
        }
        Ok(())
    }

    /// Loads the current checkpoint, or `None` when there is none.
    pub fn load(&mut self) -> anyhow::Result<Option<Loaded>> {
        self.forget_part_infos();
        let Some(bytes) = self.meta.get(META_KEY).map_err(storage)? else {
            return Ok(None);
        };
        let mut meta: Meta = serde_json::from_slice(&bytes)?;
        let mut canisters = Vec::new();
        for m in std::mem::take(&mut meta.canisters) {
            let prefix = canister_prefix(&m.id);
            let mut pages = Vec::with_capacity(m.memory_sizes.len());
            for (memory, size) in m.memory_sizes.iter().enumerate() {
                pages.push(self.load_pages(&prefix, memory as u32, *size)?);
            }
            anyhow::ensure!(
                self.pages
                    .range(page_key(&prefix, m.memory_sizes.len() as u32, 0)..)
                    .next()
                    .map(|e| e.key().map_err(storage))
                    .transpose()?
                    .is_none_or(|key| !key.starts_with(&prefix)),
                "a page of an unknown memory in the page store"
            );
            let memories = m
                .memory_sizes
                .iter()
                .zip(pages)
                .map(|(size, pages)| MemoryImage {
                    size: *size,
                    pages: PageMap::default().with_updates(pages),
                })
                .collect();
            let mut chunks = Vec::new();
            for entry in self.stable.prefix(&prefix) {
                let (key, value) = entry.into_inner().map_err(storage)?;
                let rest = &key[prefix.len()..];
                anyhow::ensure!(rest.len() == 8, "malformed stable entry");
                chunks.push((
                    u64::from_be_bytes(rest.try_into().expect("8 bytes")),
                    value.to_vec(),
                ));
            }
            let stable = StableMemory::from_parts(m.stable_pages, chunks);
            let (canister, module_hash) = restore(m, memories, stable);
            self.last
                .insert(canister.id.clone(), canister.state.clone());
            canisters.push((canister, module_hash));
        }
        Ok(Some(loaded(meta, canisters)))
    }
}

/// A loaded checkpoint: its metadata (less the canisters) and the
/// canisters restored.
fn loaded(meta: Meta, canisters: Vec<(Canister, Option<String>)>) -> Loaded {
    Loaded {
        round: meta.round,
        time_nanos: meta.time_nanos,
        next_index: meta.next_index,
        canisters,
        scheduler_policy: meta.scheduler_policy,
        history: meta.history,
        consensus_policy: meta.consensus_policy,
    }
}

/// A canister as its metadata and memory contents describe it, and its
/// module hash (its code is attached by the caller).
fn restore(
    m: CanisterMeta,
    memories: Vec<MemoryImage>,
    stable: StableMemory,
) -> (Canister, Option<String>) {
    let state = ExecutionState {
        heap: HeapSnapshot { memories },
        stable: Arc::new(stable),
        certified_data: m.certified_data,
        timers: m
            .timers
            .into_iter()
            .map(|(id, (at_nanos, interval_nanos))| {
                (
                    id,
                    Timer {
                        at_nanos,
                        interval_nanos,
                    },
                )
            })
            .collect(),
        next_timer_id: m.next_timer_id,
        next_call_id: m.next_call_id,
    };
    let canister = Canister {
        id: m.id,
        controllers: m.controllers,
        status: m.status,
        code: None,
        state,
        cycles: m.cycles,
        logs: m.logs,
        next_log_index: m.next_log_index,
        updates: m.updates,
        messaging: m.messaging,
        chunks: m.chunks,
    };
    (canister, m.module_hash)
}

/// Threads that read a memory's pages at restart.
const LOAD_THREADS: u64 = 2;

impl Checkpointer {
    /// The stored pages of one memory of `size` bytes, in index order,
    /// read by [`LOAD_THREADS`] threads over disjoint index ranges.
    fn load_pages(
        &self,
        prefix: &[u8],
        memory: u32,
        size: u64,
    ) -> anyhow::Result<Vec<(u64, Option<PageRef>)>> {
        let end = size.div_ceil(PAGE_SIZE as u64).max(1);
        let share = end.div_ceil(LOAD_THREADS);
        let read = |from: u64, to: u64| -> anyhow::Result<Vec<(u64, Option<PageRef>)>> {
            let mut pages = Vec::new();
            for entry in self
                .pages
                .range(page_key(prefix, memory, from)..page_key(prefix, memory, to))
            {
                let (key, value) = entry.into_inner().map_err(storage)?;
                let rest = &key[prefix.len()..];
                anyhow::ensure!(
                    rest.len() == 12 && value.len() == PAGE_SIZE,
                    "malformed page entry"
                );
                let index = u64::from_be_bytes(rest[4..].try_into().expect("8 bytes"));
                pages.push((index, Some(page_from_slice(&value))));
            }
            Ok(pages)
        };
        // The last range reaches past the size: pages beyond it are
        // stored only if the store is damaged, and then they load (and
        // fail where the memory is used) rather than vanish silently.
        let ranges: Vec<(u64, u64)> = (0..LOAD_THREADS)
            .map(|i| {
                let to = if i + 1 == LOAD_THREADS {
                    u64::MAX
                } else {
                    (i + 1) * share
                };
                (i * share, to)
            })
            .collect();
        let parts: Vec<anyhow::Result<Vec<_>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&(from, to)| scope.spawn(move || read(from, to)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a loader panicked")))
                })
                .collect()
        });
        let mut pages = Vec::new();
        for part in parts {
            pages.extend(part?);
        }
        Ok(pages)
    }
}

fn canister_meta(canister: &Canister) -> CanisterMeta {
    CanisterMeta {
        id: canister.id.clone(),
        controllers: canister.controllers.clone(),
        status: canister.status,
        module_hash: canister.code.as_ref().map(|c| c.hash_hex()),
        cycles: canister.cycles,
        logs: canister.logs.clone(),
        next_log_index: canister.next_log_index,
        updates: canister.updates,
        certified_data: canister.state.certified_data.clone(),
        timers: canister
            .state
            .timers
            .iter()
            .map(|(id, t)| (*id, (t.at_nanos, t.interval_nanos)))
            .collect(),
        next_timer_id: canister.state.next_timer_id,
        memory_sizes: canister
            .state
            .heap
            .memories
            .iter()
            .map(|m| m.size)
            .collect(),
        stable_pages: canister.state.stable.size_pages(),
        next_call_id: canister.state.next_call_id,
        messaging: canister.messaging.clone(),
        chunks: canister.chunks.clone(),
    }
}
