//! Checkpoints off the round's path.
//!
//! A round that checkpoints only takes a [`Snapshot`] of the replicated
//! state (a clone of the registry, cheap: page maps and stable memory are
//! persistent trees behind `Arc`s), starts the next journal file and hands
//! the snapshot to a background thread, which diffs it against the
//! previous checkpoint, writes the batch and syncs it. The journal files
//! the snapshot covers are deleted only once it is durable, so a crash
//! while a checkpoint is being written loses nothing: the node restarts
//! from the previous checkpoint and replays every journal still there. The
//! thread reports durability before it flushes the memtables (a crash
//! during the flush only makes the next open replay fjall's journal).
//!
//! One checkpoint is written at a time: starting the next one waits for
//! the one in flight to be durable, and its thread for that one's memtable
//! flush. `Node::checkpoint` waits for durability, `Node::start_checkpoint`
//! does not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use cellar_types::Principal;

use crate::canister::Canister;
use crate::checkpoint::{CheckpointStats, Checkpointer, Loaded, Policies};
use crate::journal::Durability;

/// The replicated state at a round boundary, as a checkpoint writes it.
pub struct Snapshot {
    /// Last round included.
    pub round: u64,
    /// That round's time.
    pub time_nanos: u64,
    /// Next canister index.
    pub next_index: u64,
    /// Every canister, as committed after the round.
    pub canisters: BTreeMap<Principal, Canister>,
    /// Module hash of the scheduler policy in force (none: the built-in).
    pub scheduler_policy: Option<String>,
    /// Replica mode: the last consensus-policy change (from height, module
    /// hash).
    pub consensus_policy: Option<(u64, String)>,
    /// The ingress history's entries (shared with the live history).
    pub history: Vec<std::sync::Arc<crate::history::HistoryEntry>>,
    /// Journal files holding only rounds the snapshot includes: deleted
    /// once the checkpoint is durable.
    pub covered_journals: Vec<PathBuf>,
}

/// A checkpoint being written: its durability is reported on `durable`
/// (once), then the thread flushes the store's memtables and ends.
struct InFlight {
    durable: Option<mpsc::Receiver<anyhow::Result<CheckpointStats>>>,
    job: JoinHandle<()>,
}

impl InFlight {
    /// Waits for durability, unless already waited for (then `None`).
    fn wait_durable(&mut self) -> Option<anyhow::Result<CheckpointStats>> {
        let durable = self.durable.take()?;
        Some(durable.recv().unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the checkpoint thread ended before the checkpoint was durable"
            ))
        }))
    }

    /// Waits for durability (logging a failure) and then for the flush.
    fn finish(mut self) {
        if let Some(result) = self.wait_durable() {
            log_failure(result);
        }
        if self.job.join().is_err() {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

/// Writes checkpoints on a background thread, one at a time.
pub struct CheckpointWriter {
    checkpointer: Arc<Mutex<Checkpointer>>,
    in_flight: Mutex<Option<InFlight>>,
    last: Arc<Mutex<CheckpointStats>>,
    state_dir: PathBuf,
    durability: Durability,
}

impl CheckpointWriter {
    /// A writer into `checkpointer`, whose journals live in `state_dir`.
    pub fn new(checkpointer: Checkpointer, state_dir: &Path, durability: Durability) -> Self {
        CheckpointWriter {
            checkpointer: Arc::new(Mutex::new(checkpointer)),
            in_flight: Mutex::new(None),
            last: Arc::new(Mutex::new(CheckpointStats::default())),
            state_dir: state_dir.to_path_buf(),
            durability,
        }
    }

    /// Loads the last durable checkpoint (see [`Checkpointer::load`]).
    pub fn load(&self) -> anyhow::Result<Option<Loaded>> {
        self.wait()?;
        self.checkpointer.lock().expect("checkpointer lock").load()
    }

    /// Starts writing `snapshot` once the checkpoint in flight, if any, is
    /// durable; the new thread then waits for that one's flush before it
    /// writes (so the caller, a round, never waits for a flush, and at most
    /// one checkpoint waits behind another). A failure of that earlier one
    /// is logged: its journals are still there, and this checkpoint writes
    /// everything that changed since the last one that succeeded.
    ///
    /// The thread makes the checkpoint durable (one synced batch), reports
    /// it, deletes the journals it covers, and only then flushes the store's
    /// memtables (which a restart would otherwise replay): waiting for
    /// durability does not wait for the flush.
    pub fn start(&self, snapshot: Snapshot) {
        let mut in_flight = self.in_flight.lock().expect("checkpoint lock");
        let mut previous = in_flight.take();
        if let Some(result) = previous.as_mut().and_then(InFlight::wait_durable) {
            log_failure(result);
        }
        let checkpointer = Arc::clone(&self.checkpointer);
        let last = Arc::clone(&self.last);
        let state_dir = self.state_dir.clone();
        let durability = self.durability;
        let (report, durable) = mpsc::channel();
        let job = std::thread::Builder::new()
            .name("cellar-checkpoint".into())
            .spawn(move || {
                if let Some(previous) = previous {
                    previous.finish();
                }
                let written = write(&checkpointer, &snapshot).and_then(|stats| {
                    delete_journals(&snapshot.covered_journals, &state_dir, durability)?;
                    Ok(stats)
                });
                let ok = written.is_ok();
                if let Ok(stats) = &written {
                    *last.lock().expect("stats lock") = *stats;
                    tracing::debug!(round = snapshot.round, ?stats, "checkpoint durable");
                }
                // The receiver may be gone (the writer dropped): nothing to tell.
                let _ = report.send(written);
                if ok {
                    let flushed = checkpointer
                        .lock()
                        .expect("checkpointer lock")
                        .flush_memtables();
                    if let Err(e) = flushed {
                        tracing::warn!(
                            "flushing the checkpoint's memtables failed (the next open \
                             replays them): {e:#}"
                        );
                    }
                }
            })
            .expect("spawning the checkpoint thread");
        *in_flight = Some(InFlight {
            durable: Some(durable),
            job,
        });
    }

    /// Runs `f` on the store once the checkpoint in flight, if any, is
    /// written (state sync exports and imports whole checkpoints).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Checkpointer) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        log_failure(self.wait());
        f(&mut self.checkpointer.lock().expect("checkpointer lock"))
    }

    /// Waits until the checkpoint in flight, if any, is durable; returns
    /// what it wrote (the last one's figures when none was in flight).
    pub fn wait(&self) -> anyhow::Result<CheckpointStats> {
        let mut in_flight = self.in_flight.lock().expect("checkpoint lock");
        match in_flight.as_mut().and_then(InFlight::wait_durable) {
            Some(result) => result,
            None => Ok(self.last()),
        }
    }

    /// Waits until the checkpoint in flight, if any, is durable and its
    /// memtables flushed: the store is idle afterwards (benchmarks measure
    /// a checkpoint from there).
    pub fn settle(&self) -> anyhow::Result<CheckpointStats> {
        let in_flight = self.in_flight.lock().expect("checkpoint lock").take();
        if let Some(mut in_flight) = in_flight {
            let durable = in_flight.wait_durable();
            in_flight.finish();
            if let Some(result) = durable {
                return result;
            }
        }
        Ok(self.last())
    }

    /// Settles ([`CheckpointWriter::settle`]), then waits up to `limit`
    /// for the store's flushes and compactions to end; returns whether they
    /// did (benchmarks measure a checkpoint from a quiet store).
    pub fn quiesce(&self, limit: std::time::Duration) -> anyhow::Result<bool> {
        self.settle()?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            let (flushes, compactions) = self
                .checkpointer
                .lock()
                .expect("checkpointer lock")
                .background_work();
            if flushes == 0 && compactions == 0 {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// What the last durable checkpoint wrote, and how long it took.
    pub fn last(&self) -> CheckpointStats {
        *self.last.lock().expect("stats lock")
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.get_mut().expect("checkpoint lock").take() {
            in_flight.finish();
        }
    }
}

/// Deletes the journal files a durable checkpoint covers (and syncs their
/// directory, so the deletion is durable too).
fn delete_journals(
    covered: &[PathBuf],
    state_dir: &Path,
    durability: Durability,
) -> anyhow::Result<()> {
    for path in covered {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    if durability == Durability::Sync && !covered.is_empty() {
        std::fs::File::open(state_dir)?.sync_all()?;
    }
    Ok(())
}

fn write(checkpointer: &Mutex<Checkpointer>, s: &Snapshot) -> anyhow::Result<CheckpointStats> {
    checkpointer.lock().expect("checkpointer lock").write(
        s.round,
        s.time_nanos,
        s.next_index,
        &s.canisters,
        Policies {
            scheduler: s.scheduler_policy.as_deref(),
            consensus: s.consensus_policy.as_ref(),
        },
        &s.history,
    )
}

fn log_failure(result: anyhow::Result<CheckpointStats>) {
    if let Err(e) = result {
        tracing::error!(
            "writing a checkpoint failed (its journals are kept, nothing is lost): {e:#}"
        );
    }
}
