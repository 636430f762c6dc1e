//! Checkpoints: the whole node state written to disk at a round boundary.
//!
//! A checkpoint is a directory `checkpoint-<round>/` holding `meta.json`
//! (every canister's metadata) and one binary file per linear memory and
//! per stable memory. It is written completely, synced, and only then made
//! current by atomically replacing the `CURRENT` file; older checkpoints are
//! removed afterwards. A crash at any point leaves the previous checkpoint
//! current, and the journal holds everything after it.
//!
//! (Whole heaps are written: the paged, incremental store is the subject of
//! the persistence work that replaces this module.)

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cellar_engine::{
    ExecutionState, HeapSnapshot, MemoryImage, PAGE_SIZE, Page, PageMap, StableMemory, Timer,
};
use cellar_types::Principal;
use cellar_types::api::{LogEntry, RunStatus};
use serde::{Deserialize, Serialize};

use crate::canister::Canister;

const CURRENT: &str = "CURRENT";
const CHUNK: usize = 4096;

/// The node-wide part of a checkpoint.
#[derive(Serialize, Deserialize)]
struct Meta {
    round: u64,
    time_nanos: u64,
    next_index: u64,
    canisters: Vec<CanisterMeta>,
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
}

/// Writes a checkpoint of `canisters` at `round` into `dir` and makes it current.
pub fn write(
    dir: &Path,
    round: u64,
    time_nanos: u64,
    next_index: u64,
    canisters: &BTreeMap<Principal, Canister>,
) -> anyhow::Result<()> {
    let name = format!("checkpoint-{round:012}");
    let target = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let mut metas = Vec::new();
    for canister in canisters.values() {
        let file_id = canister.id.to_text();
        for (i, memory) in canister.state.heap.memories.iter().enumerate() {
            let mut pages = Vec::with_capacity(memory.pages.len() as usize * (8 + PAGE_SIZE));
            for (index, page) in memory.pages.iter() {
                pages.extend_from_slice(&index.to_le_bytes());
                pages.extend_from_slice(&page[..]);
            }
            write_synced(&tmp.join(format!("{file_id}.heap{i}")), &pages)?;
        }
        let mut stable = Vec::new();
        for (index, chunk) in canister.state.stable.chunks() {
            stable.extend_from_slice(&index.to_le_bytes());
            stable.extend_from_slice(chunk);
        }
        write_synced(&tmp.join(format!("{file_id}.stable")), &stable)?;
        metas.push(CanisterMeta {
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
            memory_sizes: canister.state.heap.memories.iter().map(|m| m.size).collect(),
            stable_pages: canister.state.stable.size_pages(),
        });
    }
    let meta = Meta {
        round,
        time_nanos,
        next_index,
        canisters: metas,
    };
    write_synced(&tmp.join("meta.json"), &serde_json::to_vec(&meta)?)?;
    sync_dir(&tmp)?;
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&tmp, &target)?;
    let current_tmp = dir.join("CURRENT.tmp");
    write_synced(&current_tmp, name.as_bytes())?;
    std::fs::rename(&current_tmp, dir.join(CURRENT))?;
    sync_dir(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let other = entry.file_name().to_string_lossy().into_owned();
        if other.starts_with("checkpoint-") && other != name {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// Loads the current checkpoint, or `None` when there is none.
pub fn load(dir: &Path) -> anyhow::Result<Option<Loaded>> {
    let current = match std::fs::read_to_string(dir.join(CURRENT)) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let root: PathBuf = dir.join(current.trim());
    let meta: Meta = serde_json::from_slice(&std::fs::read(root.join("meta.json"))?)?;
    let mut canisters = Vec::new();
    for m in meta.canisters {
        let file_id = m.id.to_text();
        let memories = m
            .memory_sizes
            .iter()
            .enumerate()
            .map(|(i, size)| read_memory(&root.join(format!("{file_id}.heap{i}")), *size))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stable = read_stable(&root.join(format!("{file_id}.stable")), m.stable_pages)?;
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
        };
        canisters.push((canister, m.module_hash));
    }
    Ok(Some(Loaded {
        round: meta.round,
        time_nanos: meta.time_nanos,
        next_index: meta.next_index,
        canisters,
    }))
}

fn read_memory(path: &Path, size: u64) -> anyhow::Result<MemoryImage> {
    let bytes = std::fs::read(path)?;
    anyhow::ensure!(
        bytes.len() % (8 + PAGE_SIZE) == 0,
        "memory file {} is truncated",
        path.display()
    );
    let pages = bytes.chunks(8 + PAGE_SIZE).map(|entry| {
        let index = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
        let mut page = Box::new([0u8; PAGE_SIZE]);
        page.copy_from_slice(&entry[8..]);
        (index, Some(Arc::<Page>::from(page)))
    });
    Ok(MemoryImage {
        size,
        pages: PageMap::default().with_updates(pages),
    })
}

fn read_stable(path: &Path, pages: u64) -> anyhow::Result<StableMemory> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut chunks = Vec::new();
    loop {
        let mut index = [0u8; 8];
        match reader.read_exact(&mut index) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let mut chunk = vec![0u8; CHUNK];
        reader.read_exact(&mut chunk)?;
        chunks.push((u64::from_le_bytes(index), chunk));
    }
    Ok(StableMemory::from_parts(pages, chunks))
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = BufWriter::new(File::create(path)?);
    file.write_all(bytes)?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}
