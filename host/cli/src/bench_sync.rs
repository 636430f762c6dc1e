//! `cellar bench sync`: state sync of a large checkpoint, in process.
//!
//! A source node holds a testbed canister whose heap of `--heap-mib` MiB
//! is all written; a target node syncs its checkpoint as a replica would
//! (the chunks are read from the source's snapshot and handed to the
//! target's staging store one item at a time, then checked against the
//! certified state hash and installed), first from nothing, then after the
//! source wrote `k` random pages and checkpointed again (incremental: the
//! target keeps the parts it holds). The network is left out (the fleet
//! tests move chunks over QUIC); what is measured is the node's side:
//! hashing and reading on the serving side, staging, checking and
//! installing on the fetching side, and the peak memory each side adds.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use cellar_node::state_sync::{Item, Sink};
use cellar_node::{Durability, Node, NodeOptions};
use cellar_types::Principal;
use cellar_types::api::{Args, InstallMode};
use serde::Serialize;

/// Options of `cellar bench sync`.
#[derive(clap::Args, Debug)]
pub struct SyncBenchArgs {
    /// Heap of the source's canister, MiB (every page written).
    #[arg(long, default_value_t = 1000)]
    pub heap_mib: u32,
    /// Random pages written between the incremental syncs.
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
    pub pages: Vec<u32>,
}

/// One sync.
#[derive(Serialize, Debug)]
struct SyncRow {
    /// `full` or `after k pages`.
    sync: String,
    state_mib: f64,
    chunks: usize,
    chunks_fetched: usize,
    mib_fetched: f64,
    /// Building the manifest: reading and hashing the checkpoint.
    serve_ms: f64,
    /// Staging: hashing the target's own checkpoint and copying the parts
    /// it keeps.
    stage_ms: f64,
    /// Reading the fetched chunks and putting them into the staging store.
    fetch_ms: f64,
    /// Checking the staged state (load, state hash) and installing it.
    install_ms: f64,
    total_ms: f64,
    /// Peak resident memory added from the manifest to the last item
    /// staged: both sides, serving and fetching (the install then loads
    /// the state, as any restart does).
    peak_mib: f64,
}

/// Resets the process's peak resident set (Linux: `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak and current resident set, MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn update(node: &Node, id: &Principal, method: &str, args: &str) -> Result<()> {
    node.update(&Principal::anonymous(), id, method, Args::Wave(args.into()))?
        .result
        .map_err(|r| anyhow::anyhow!("{method}: {r}"))?;
    Ok(())
}

/// Syncs `target` from `source`'s last checkpoint; one row.
fn sync(source: &Node, target: &Node, name: String) -> Result<SyncRow> {
    let certified = source.certified();
    let started = Instant::now();
    reset_peak();
    let (_, base) = rss_mib();
    let served = source
        .sync_source()?
        .context("the source has no checkpoint")?;
    let serve_ms = started.elapsed().as_secs_f64() * 1e3;
    let chunks = served.chunks().to_vec();
    let at = Instant::now();
    let (mut staging, held) = target.stage_sync(&chunks)?;
    let stage_ms = at.elapsed().as_secs_f64() * 1e3;
    let at = Instant::now();
    let mut pending: BTreeMap<Item, Vec<u8>> = BTreeMap::new();
    let (mut fetched, mut bytes) = (0, 0u64);
    let pieces: BTreeMap<&Item, usize> = chunks.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(&c.item).or_default() += 1;
        m
    });
    let mut done: BTreeMap<&Item, usize> = BTreeMap::new();
    for (index, chunk) in chunks.iter().enumerate() {
        if held.contains(&chunk.item) {
            continue;
        }
        let data = served.read(index as u32)?;
        fetched += 1;
        bytes += data.len() as u64;
        pending.entry(chunk.item.clone()).or_default().extend(data);
        let count = done.entry(&chunk.item).or_default();
        *count += 1;
        if *count == pieces[&chunk.item] {
            let whole = pending.remove(&chunk.item).unwrap_or_default();
            staging.put(&chunk.item, &whole)?;
        }
    }
    let fetch_ms = at.elapsed().as_secs_f64() * 1e3;
    let (peak, _) = rss_mib();
    let at = Instant::now();
    target.install_staged(staging, &chunks, &certified)?;
    let install_ms = at.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        target.state_hash() == source.state_hash(),
        "the synced state differs"
    );
    let state: u64 = chunks.iter().map(|c| u64::from(c.size)).sum();
    Ok(SyncRow {
        sync: name,
        state_mib: state as f64 / (1 << 20) as f64,
        chunks: chunks.len(),
        chunks_fetched: fetched,
        mib_fetched: bytes as f64 / (1 << 20) as f64,
        serve_ms,
        stage_ms,
        fetch_ms,
        install_ms,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
        peak_mib: (peak - base).max(0.0),
    })
}

/// Runs the benchmark and prints its report.
pub fn run(args: &SyncBenchArgs, json: bool) -> Result<()> {
    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let options = |dir: &std::path::Path| {
        let mut options = NodeOptions::new(dir);
        options.durability = Durability::Process;
        options.checkpoint_interval = u64::MAX;
        options
    };
    let source = Node::open(options(a_dir.path()))?;
    let target = Node::open(options(b_dir.path()))?;
    let me = Principal::anonymous();
    let id = source.create(&me, vec![])?;
    source.install(
        &me,
        &id,
        InstallMode::Install,
        cellar_examples::testbed(),
        None,
    )?;
    eprintln!("sync: growing the source's heap to {} MiB", args.heap_mib);
    update(&source, &id, "grow-heap", &args.heap_mib.to_string())?;
    source.checkpoint()?;
    let mut rows = vec![sync(&source, &target, "full".into())?];
    for (seed, &k) in args.pages.iter().enumerate() {
        update(&source, &id, "write-pages", &format!("{k}, {}", seed + 1))?;
        source.checkpoint()?;
        eprintln!("sync: after {k} pages");
        rows.push(sync(&source, &target, format!("after {k} pages"))?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<18} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "sync",
        "state MiB",
        "chunks",
        "fetched",
        "MiB moved",
        "serve ms",
        "stage ms",
        "fetch ms",
        "install ms",
        "total ms",
        "peak MiB"
    );
    for r in &rows {
        println!(
            "{:<18} {:>9.1} {:>7} {:>8} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>9.0} {:>9.0}",
            r.sync,
            r.state_mib,
            r.chunks,
            r.chunks_fetched,
            r.mib_fetched,
            r.serve_ms,
            r.stage_ms,
            r.fetch_ms,
            r.install_ms,
            r.total_ms,
            r.peak_mib
        );
    }
    Ok(())
}
