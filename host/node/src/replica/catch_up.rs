//! Catch-up: noticing absent peers, asking peers for the recent chain and for the batches after this replica's round, serving theirs, and the sync messages that carry them.

use super::*;

impl Replica {
    /// Tells consensus which peers it has heard nothing from for
    /// [`ABSENT_AFTER_MS`] while it hears from others (every live replica
    /// sends shares at every height): their ranks are not waited for.
    pub(super) fn note_absent(&mut self) {
        let now = now_ms();
        let me = self.consensus.index();
        let heard = |at: Option<&u64>| at.is_some_and(|&t| now < t + ABSENT_AFTER_MS);
        if !self.last_heard.values().any(|t| heard(Some(t))) {
            // Hearing from nobody: this replica is the one cut off.
            self.consensus.set_absent([]);
            return;
        }
        let peers = (self.subnet_peers + 1) as u32;
        let absent: Vec<u32> = (0..peers)
            .filter(|&p| p != me && !heard(self.last_heard.get(&p)))
            .collect();
        self.consensus.set_absent(absent);
    }

    /// Until its shares count again, a replica asks its peers for the
    /// recent chain every [`CHAIN_REQUEST_MS`] (at most [`CHAIN_REQUESTS`]
    /// times).
    pub(super) fn maybe_request_chain(&mut self) {
        let now = now_ms();
        if self.rejoined
            || self.chain_requests >= CHAIN_REQUESTS
            || now < self.last_chain_request_ms + CHAIN_REQUEST_MS
        {
            return;
        }
        self.chain_requests += 1;
        self.last_chain_request_ms = now;
        self.send_sync(None, &SyncMessage::ChainRequest { nonce: now_nanos() });
    }

    /// Answers a peer's chain request (at most every 200 ms per peer).
    pub(super) fn serve_chain(&mut self, to: u32) {
        let now = now_ms();
        if self.chain_served.get(&to).is_some_and(|&at| now < at + 200) {
            return;
        }
        self.chain_served.insert(to, now);
        for a in self.consensus.recent_chain() {
            let artifact = NetArtifact::new(kind_of(&a), a.to_bytes());
            if let Err(e) = self.transport.send(to, &artifact) {
                tracing::debug!(peer = to, "chain not sent: {e}");
                break;
            }
        }
    }

    /// Logs, once, when this replica's shares first count in a
    /// notarization or finalization above the height it started from.
    pub(super) fn note_rejoin(&mut self) {
        if self.rejoined {
            return;
        }
        if let Some(height) = self.consensus.counted_height()
            && height > self.start_height
        {
            self.rejoined = true;
            tracing::info!(
                height,
                after_ms = self.started.elapsed().as_millis() as u64,
                "rejoined: this replica's shares count again"
            );
        }
    }

    /// Asks the peers for the batches after this replica's round while it
    /// catches up (again every second until it is done).
    pub(super) fn maybe_request_sync(&mut self) {
        if self.syncing.is_none() || now_ms() < self.last_sync_request_ms + 1000 {
            return;
        }
        self.last_sync_request_ms = now_ms();
        let request = SyncMessage::Request {
            from: self.node.round() + 1,
            nonce: now_nanos(),
        };
        self.send_sync(None, &request);
    }

    /// Caught up to the package: executes the batches consensus delivered
    /// meanwhile.
    pub(super) async fn finish_sync(&mut self) {
        self.syncing = None;
        self.fetch = None;
        self.stalled_fetch = None;
        self.want_state = false;
        let deferred: Vec<FinalizedBatch> = self.deferred.drain(..).collect();
        for batch in deferred {
            if let Some(more) = self.execute(batch).await {
                Box::pin(self.act(more)).await;
            }
        }
    }

    /// A catch-up message from a peer.
    pub(super) async fn on_sync(&mut self, r: Received) {
        let Ok(message) = postcard::from_bytes::<SyncMessage>(r.artifact.payload()) else {
            tracing::warn!(from = r.from, "undecodable sync message");
            return;
        };
        match message {
            SyncMessage::Request { from, nonce } => {
                let held = self.recent.front().is_some_and(|b| b.height <= from);
                if !held {
                    // Executed and no longer held: the peer must state-sync.
                    if from <= self.node.round() {
                        self.send_sync(Some(r.from), &SyncMessage::Missing { from, nonce });
                    }
                    return;
                }
                let batches: Vec<SyncBatch> = self
                    .recent
                    .iter()
                    .filter(|b| b.height >= from)
                    .take(SYNC_CHUNK)
                    .cloned()
                    .collect();
                if !batches.is_empty() {
                    self.send_sync(Some(r.from), &SyncMessage::Batches(batches));
                }
            }
            SyncMessage::Missing { from, .. } => {
                if self.syncing.is_some()
                    && from == self.node.round() + 1
                    && self.fetch.is_none()
                    && !self.want_state
                {
                    tracing::warn!(
                        round = self.node.round(),
                        peer = r.from,
                        "peers no longer hold the batches after this round: \
                         fetching a checkpoint (state sync)"
                    );
                    self.want_state = true;
                    self.last_state_request_ms = 0;
                    self.maybe_request_state();
                }
            }
            SyncMessage::ChainRequest { .. } => self.serve_chain(r.from),
            SyncMessage::StateRequest { above, nonce } => {
                self.serve_manifest(r.from, above, nonce);
            }
            SyncMessage::Manifest { manifest, .. } => self.on_manifest(r.from, *manifest).await,
            SyncMessage::ChunkRequest {
                height,
                index,
                nonce,
            } => {
                let Some(served) = self.served.iter().find(|s| s.manifest.height == height) else {
                    return;
                };
                if self.chunk_reads.fetch_add(1, Ordering::SeqCst) >= MAX_CHUNK_READS {
                    // Busy: the fetching side asks again.
                    self.chunk_reads.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                let (source, transport) = (served.source.clone(), self.transport.clone());
                let (reads, to) = (self.chunk_reads.clone(), r.from);
                tokio::task::spawn_blocking(move || {
                    match source.read(index) {
                        Ok(bytes) => {
                            let answer = SyncMessage::Chunk {
                                height,
                                index,
                                nonce,
                                bytes,
                            };
                            send_sync_message(&transport, Some(to), &answer);
                        }
                        Err(e) => tracing::warn!(height, index, "cannot read a chunk: {e:#}"),
                    }
                    reads.fetch_sub(1, Ordering::SeqCst);
                });
            }
            SyncMessage::Chunk {
                height,
                index,
                bytes,
                ..
            } => self.on_chunk(r.from, height, index, bytes).await,
            SyncMessage::Batches(batches) => {
                let Some(target) = self.syncing.clone() else {
                    return;
                };
                let top = target.content.height;
                for b in batches {
                    if b.height != self.node.round() + 1 || b.height > top {
                        continue;
                    }
                    let node = self.node.clone();
                    let sb = b.clone();
                    let result = tokio::task::spawn_blocking(move || {
                        node.apply_finalized(sb.height, sb.time_nanos, &sb.items)?;
                        Ok::<_, NodeError>(node.state_hash())
                    })
                    .await;
                    let hash = match result {
                        Ok(Ok(hash)) => hash,
                        Ok(Err(e)) => {
                            tracing::error!(height = b.height, "cannot replay a batch: {e}");
                            self.stalled = true;
                            self.syncing = None;
                            return;
                        }
                        Err(e) => {
                            tracing::error!("replay panicked: {e}");
                            std::process::exit(4);
                        }
                    };
                    // Only the package's block is known from a trusted source.
                    let at_top = self.node.round() == top;
                    let block = at_top.then_some(target.content.block.0);
                    self.note_executed(b.height, block, at_top.then_some(hash));
                    self.remember(b);
                    for (from, hash) in self.node.take_consensus_changes() {
                        switch_policy(&self.node, &mut self.consensus, from, &hash);
                    }
                    if self.node.round() == top {
                        self.reported.insert(top, hash);
                        self.check(&target);
                        tracing::info!(height = top, "caught up; the state hash matches");
                        // Executed and certified: a restart starts here.
                        self.save_cup(&target);
                        self.finish_sync().await;
                        return;
                    }
                }
                self.last_sync_request_ms = 0;
                self.maybe_request_sync();
            }
        }
    }

    pub(super) fn remember(&mut self, batch: SyncBatch) {
        self.recent.push_back(batch);
        while self.recent.len() > self.recent_batches {
            self.recent.pop_front();
        }
    }
}
