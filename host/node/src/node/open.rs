//! Opening a node: the last checkpoint loaded, the journal after it replayed.

use super::*;

impl Node {
    /// Opens the node in `options.data_dir`: loads the last checkpoint and
    /// replays the journal after it.
    pub fn open(options: NodeOptions) -> anyhow::Result<Self> {
        // Checkpoints abort paused executions; a message that needs more
        // slices than a checkpoint interval has rounds would never finish.
        // Slices grow until the longest message fits between checkpoints
        // (every replica has the same settings, so the same slices).
        let mut options = options;
        let interval = options.checkpoint_interval.max(2);
        let limits = &mut options.limits;
        if limits
            .update_instructions
            .div_ceil(limits.slice_instructions.max(1))
            >= interval
        {
            let slice = limits.update_instructions.div_ceil(interval - 1);
            tracing::warn!(
                checkpoint_interval = interval,
                slice,
                "slices raised so that the longest message fits between two checkpoints"
            );
            limits.slice_instructions = slice;
        }
        let modules_dir = options.data_dir.join("modules");
        let state_dir = options.data_dir.join("state");
        std::fs::create_dir_all(&state_dir)?;
        let opened = Instant::now();
        let engine = cellar_engine::new_engine()?;
        let cache = CodeCache::new(
            engine,
            Some(&options.data_dir.join("compiled")),
            options.limits.max_component_bytes,
        )?;
        let mut store = Checkpointer::open(&state_dir.join("pages"))?;
        sync::finish_interrupted_install(&state_dir, &mut store)?;
        let store_opened = opened.elapsed();
        let checkpoints = CheckpointWriter::new(store, &state_dir, options.durability);
        let config = ExecutionConfig {
            limits: options.limits.clone(),
            execution_threads: options.execution_threads,
            round_instructions: options.round_instructions,
            round_dirty_pages: options.round_dirty_pages,
            canister_round_dirty_pages: options.canister_round_dirty_pages,
            initial_cycles: options.initial_cycles,
            ingress_history: options.ingress_history,
        };
        let exec = Executor::new(config, cache, ModuleStore::open(&modules_dir)?);
        let mut node = Node {
            options,
            exec,
            state_dir,
            checkpoints,
            writer: Mutex::new(None),
            consensus_policy: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            waiters: Mutex::new(BTreeMap::new()),
            fresh: true,
            replica: crate::replica_link::ReplicaLink::default(),
        };
        node.recover()?;
        tracing::debug!(
            store_ms = store_opened.as_millis() as u64,
            total_ms = opened.elapsed().as_millis() as u64,
            "node opened"
        );
        Ok(node)
    }

    /// Paused executions aborted since the node opened.
    pub fn aborted_executions(&self) -> u64 {
        self.exec.aborted_executions()
    }

    /// Long executions paused between rounds.
    pub fn paused_executions(&self) -> usize {
        self.exec.paused_executions()
    }

    /// Messages waiting in the canisters' input queues.
    pub fn queued_messages(&self) -> usize {
        self.exec.queued_messages()
    }

    /// Whether the node started from an empty data directory.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    pub(super) fn recover(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let loaded = self.checkpoints.load()?;
        let load_ms = started.elapsed().as_millis() as u64;
        if let Some(loaded) = loaded {
            self.fresh = false;
            let mut registry = self.exec.registry.write().expect("registry lock");
            registry.round = loaded.round;
            registry.time_nanos = loaded.time_nanos;
            registry.next_index = loaded.next_index;
            *self.exec.consensus_change.lock().expect("consensus lock") =
                loaded.consensus_policy.clone();
            if let Some(hash) = &loaded.scheduler_policy {
                let policy = self.exec.load_policy(hash)?;
                *self.exec.scheduler_policy.write().expect("policy lock") =
                    Some((hash.clone(), policy));
            }
            *self.exec.history.lock().expect("history lock") =
                IngressHistory::from_entries(self.options.ingress_history, loaded.history);
            self.add_loaded_canisters(&mut registry, loaded.canisters)?;
        }
        tracing::debug!(
            load_ms,
            code_ms = started.elapsed().as_millis() as u64 - load_ms,
            "checkpoint loaded"
        );
        let journals = journal_files(&self.state_dir)?;
        // Checkpoints happen at rounds that are multiples of the interval,
        // on every replica alike (they abort paused executions, which
        // changes what the next rounds do). Replay does what the live node
        // did, or was about to do when it stopped: a checkpoint after each
        // such round, and none anywhere else. So a restarted node keeps the
        // executions paused at the end of the replay and continues them
        // exactly as a node that never stopped.
        let interval = self.options.checkpoint_interval.max(1);
        let mut replayed = 0u64;
        // A checkpoint written during replay, and the records after it.
        let mut checkpointed: Option<u64> = None;
        let mut tail: Vec<Record> = Vec::new();
        for path in &journals {
            for record in read_records(path)? {
                self.fresh = false;
                let round = self.exec.registry.read().expect("registry lock").round;
                if record.round <= round {
                    continue;
                }
                anyhow::ensure!(
                    record.round == round + 1,
                    "journal {} skips from round {round} to {}",
                    path.display(),
                    record.round
                );
                // Request errors were answered before the crash and recur
                // on replay; an internal error (a stored module that is
                // missing or no longer loads) means replay cannot reproduce
                // what was acknowledged, and going on would diverge.
                for (_, result) in self.exec.execute_round(&record) {
                    if let Err(NodeError::Internal(e)) = result {
                        return Err(e.context(format!(
                            "cannot replay round {} of journal {}",
                            record.round,
                            path.display()
                        )));
                    }
                }
                replayed += 1;
                if record.round.is_multiple_of(interval) {
                    self.exec.abort_paused(None);
                    self.checkpoints.start(self.checkpoint_snapshot(Vec::new()));
                    self.checkpoints.wait()?;
                    checkpointed = Some(record.round);
                    tail.clear();
                } else if checkpointed.is_some() {
                    tail.push(record);
                }
            }
        }
        let round = self.exec.registry.read().expect("registry lock").round;
        if replayed > 0 {
            tracing::info!(replayed, round, "replayed the journal after the checkpoint");
        }
        let journal = match (checkpointed, journals.last()) {
            // The records after the new checkpoint move to a journal that
            // starts after it; the older journals go.
            (Some(at), _) => {
                let path = journal_path(&self.state_dir, at + 1);
                let staging = self.state_dir.join("journal-staging.tmp");
                let _ = std::fs::remove_file(&staging);
                let mut staged = Journal::open(&staging, self.options.durability)?;
                for record in &tail {
                    staged.append(record)?;
                }
                drop(staged);
                for old in &journals {
                    std::fs::remove_file(old)?;
                }
                std::fs::rename(&staging, &path)?;
                if self.options.durability == Durability::Sync {
                    std::fs::File::open(&self.state_dir)?.sync_all()?;
                }
                Journal::open(&path, self.options.durability)?
            }
            // The journal after the loaded checkpoint goes on.
            (None, Some(last)) => Journal::open(last, self.options.durability)?,
            (None, None) => Journal::open(
                &journal_path(&self.state_dir, round + 1),
                self.options.durability,
            )?,
        };
        *self.writer.lock().expect("writer lock") = Some(Writer { journal });
        Ok(())
    }

    /// Adds checkpointed canisters to `registry`, with their code loaded
    /// from the stored modules they name.
    pub(super) fn add_loaded_canisters(
        &self,
        registry: &mut Registry,
        canisters: Vec<(Canister, Option<String>)>,
    ) -> anyhow::Result<()> {
        for (mut canister, hash) in canisters {
            if let Some(hash) = hash {
                canister.code = Some(self.exec.load_module(&hash)?);
            }
            let id = canister.id.clone();
            registry.canisters.insert(id.clone(), canister);
            registry.reindex(&id);
        }
        Ok(())
    }
}
