//! Checkpoints: when a round checkpoints, and handing snapshots to the `CheckpointWriter`.

use super::*;

impl Node {
    /// The replicated state now, for a checkpoint that covers
    /// `covered_journals`.
    pub(super) fn checkpoint_snapshot(&self, covered_journals: Vec<PathBuf>) -> Snapshot {
        let history = self
            .exec
            .history
            .lock()
            .expect("history lock")
            .shared_entries();
        let registry = self.exec.registry.read().expect("registry lock");
        let scheduler = self.exec.scheduler_policy.read().expect("policy lock");
        let consensus = self.exec.consensus_change.lock().expect("consensus lock");
        Snapshot {
            round: registry.round,
            time_nanos: registry.time_nanos,
            next_index: registry.next_index,
            canisters: registry.canisters.clone(),
            scheduler_policy: scheduler.as_ref().map(|(hash, _)| hash.clone()),
            consensus_policy: consensus.clone(),
            history,
            covered_journals,
        }
    }

    /// Whether the node checkpoints after `round`: at multiples of the
    /// checkpoint interval, so every replica aborts paused executions at
    /// the same rounds, whenever each one started or restarted.
    pub(super) fn is_checkpoint_round(&self, round: u64) -> bool {
        round.is_multiple_of(self.options.checkpoint_interval.max(1))
    }

    /// Writes a checkpoint now unless an execution is paused (a checkpoint
    /// would abort it at a round the other replicas do not): for a node
    /// that stops, a shorter replay when it starts again. Returns whether
    /// it wrote one.
    pub fn checkpoint_if_settled(&self) -> anyhow::Result<bool> {
        let mut writer = self.writer.lock().expect("writer lock");
        if !self.exec.paused.lock().expect("paused lock").is_empty() {
            return Ok(false);
        }
        self.checkpoint_locked(&mut writer)?;
        Ok(true)
    }

    /// What the last durable checkpoint wrote.
    pub fn last_checkpoint(&self) -> CheckpointStats {
        self.checkpoints.last()
    }

    /// Writes a checkpoint now and starts a new journal; returns once the
    /// checkpoint is durable.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        self.start_checkpoint()?;
        self.wait_for_checkpoint().map(drop)
    }

    /// Starts a checkpoint now, as a checkpoint round does: the state is
    /// snapshotted and a new journal started at once, and the checkpoint is
    /// written in the background ([`Node::wait_for_checkpoint`]).
    pub fn start_checkpoint(&self) -> anyhow::Result<()> {
        let mut writer = self.writer.lock().expect("writer lock");
        self.checkpoint_locked(&mut writer)
    }

    /// Waits until the checkpoint being written, if any, is durable and
    /// its store flushed (nothing is written in the background afterwards),
    /// and returns what it wrote.
    pub fn settle_checkpoint(&self) -> anyhow::Result<CheckpointStats> {
        self.checkpoints.settle()
    }

    /// Waits until the checkpoint being written, if any, is durable and
    /// flushed, and then up to `limit` for the store's compactions to end;
    /// returns whether they did.
    pub fn quiesce_checkpoints(&self, limit: std::time::Duration) -> anyhow::Result<bool> {
        self.checkpoints.quiesce(limit)
    }

    /// Waits until the checkpoint being written, if any, is durable, and
    /// returns what it wrote.
    pub fn wait_for_checkpoint(&self) -> anyhow::Result<CheckpointStats> {
        self.checkpoints.wait()
    }

    /// Aborts paused executions, snapshots the state for a checkpoint
    /// written in the background and starts the next journal; the journals
    /// before it are deleted once the checkpoint is durable.
    pub(super) fn checkpoint_locked(&self, writer: &mut Option<Writer>) -> anyhow::Result<()> {
        self.exec.abort_paused(None);
        let round = self.exec.registry.read().expect("registry lock").round;
        let new_path = journal_path(&self.state_dir, round + 1);
        let covered = journal_files(&self.state_dir)?
            .into_iter()
            .filter(|path| *path != new_path)
            .collect();
        let snapshot = self.checkpoint_snapshot(covered);
        let journal = Journal::open(&new_path, self.options.durability)?;
        *writer = Some(Writer { journal });
        self.checkpoints.start(snapshot);
        Ok(())
    }
}
