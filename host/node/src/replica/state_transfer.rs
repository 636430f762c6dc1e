//! State sync, the replica's side: asking for a checkpoint, serving manifests and chunks, fetching from several peers and installing what the catch-up package certifies (the transfer itself: `crate::state_sync`).

use super::*;

impl Replica {
    /// State sync, on every tick: asks peers for a checkpoint (every
    /// second until one answers), or moves the fetch on (asks again for
    /// chunks that did not come, gives up a silent peer).
    pub(super) fn maybe_request_state(&mut self) {
        if self.syncing.is_none() {
            self.want_state = false;
            self.fetch = None;
            self.stalled_fetch = None;
            return;
        }
        let now = now_ms();
        if let Some(fetch) = self.fetch.as_mut() {
            let height = fetch.manifest.height;
            let tick = fetch.on_tick(now);
            let recruit = fetch.peers().len() < self.subnet_peers
                && now >= self.last_state_request_ms + RECRUIT_MS;
            for (peer, indices) in &tick.ask {
                self.request_chunks(*peer, height, indices);
            }
            for (peer, why) in &tick.dropped {
                self.drop_fetch_peer(*peer, why);
            }
            if recruit && self.fetch.is_some() {
                // Peers not connected when the fetch began (a replica just
                // restarted) join it when they announce the same state.
                self.broadcast_state_request(now);
            }
            return;
        }
        if !self.want_state || now < self.last_state_request_ms + 1000 {
            return;
        }
        self.broadcast_state_request(now);
    }

    /// Asks every peer for the manifest of a checkpoint above this
    /// replica's round.
    pub(super) fn broadcast_state_request(&mut self, now: u64) {
        self.last_state_request_ms = now;
        let request = SyncMessage::StateRequest {
            above: self.node.round(),
            nonce: now_nanos(),
        };
        self.send_sync(None, &request);
    }

    pub(super) fn request_chunks(&self, peer: u32, height: u64, indices: &[u32]) {
        for &index in indices {
            let request = SyncMessage::ChunkRequest {
                height,
                index,
                nonce: now_nanos(),
            };
            self.send_sync(Some(peer), &request);
        }
    }

    /// Drops `peer` from the fetch (it sent a bad chunk or stopped
    /// answering); the others take over its chunks. A fetch left without
    /// peers keeps what it holds (every chunk checked out) for the next
    /// peer that announces the same state, and the others are asked.
    pub(super) fn drop_fetch_peer(&mut self, peer: u32, why: &str) {
        tracing::warn!(peer, "state sync: dropped this peer from the fetch ({why})");
        self.failed.insert(peer, now_ms() + FAILED_PEER_MS);
        let Some(fetch) = self.fetch.as_mut() else {
            return;
        };
        fetch.drop_peer(peer);
        if fetch.peers().is_empty() {
            self.stalled_fetch = self.fetch.take();
            self.ask_for_state();
        }
    }

    /// Gives up the state being fetched (an item or the whole state was
    /// refused, though every chunk matched the manifest): every peer that
    /// announced it is failed, and the others are asked.
    pub(super) fn fail_state(&mut self, peers: &[u32], why: &str) {
        tracing::warn!(
            ?peers,
            "state sync: refused the state these peers announced ({why}); nothing installed, \
             asking the others"
        );
        for &peer in peers {
            self.failed.insert(peer, now_ms() + FAILED_PEER_MS);
        }
        self.fetch = None;
        self.ask_for_state();
    }

    /// Asks peers for a checkpoint now.
    pub(super) fn ask_for_state(&mut self) {
        self.want_state = true;
        self.last_state_request_ms = 0;
        self.maybe_request_state();
    }

    /// A peer asks which checkpoint it could fetch: the last one this
    /// replica wrote, if a catch-up package it holds certifies its height.
    /// A checkpoint not listed yet is listed off the loop (a cold listing
    /// hashes every page), and the peer answered when it is
    /// ([`Replica::on_listed`]).
    pub(super) fn serve_manifest(&mut self, to: u32, above: u64, nonce: u64) {
        let interval = self.node.options.checkpoint_interval.max(1);
        let latest = self.node.round() / interval * interval;
        let stale = self
            .served
            .back()
            .is_none_or(|s| s.manifest.height < latest);
        if !stale {
            return self.answer_manifest(to, above, nonce);
        }
        // One waiting request per peer: a peer that asks again replaces it.
        self.manifest_requests.retain(|&(peer, ..)| peer != to);
        self.manifest_requests.push((to, above, nonce));
        if self.listing {
            return;
        }
        self.listing = true;
        let (node, listed) = (self.node.clone(), self.listed_tx.clone());
        tokio::task::spawn_blocking(move || {
            let source =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.sync_source()))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the listing panicked")));
            let _ = listed.send(source);
        });
    }

    /// A listing of the last checkpoint is done: serve it if a catch-up
    /// package certifies its height, and answer the peers that asked.
    pub(super) fn on_listed(&mut self, listed: ListedSource) {
        self.listing = false;
        match listed {
            Ok(Some(source)) => match self.cups.get(&source.round()) {
                Some(cup) => {
                    let manifest = Manifest {
                        height: source.round(),
                        cup: cup.clone(),
                        chunks: source.chunks().to_vec(),
                    };
                    tracing::info!(
                        height = manifest.height,
                        bytes = manifest.size(),
                        chunks = manifest.chunks.len(),
                        "serving the checkpoint to replicas that state-sync"
                    );
                    if self
                        .served
                        .back()
                        .is_none_or(|s| s.manifest.height < manifest.height)
                    {
                        self.served.push_back(Served {
                            manifest,
                            source: Arc::new(source),
                        });
                    }
                    while self.served.len() > 2 {
                        self.served.pop_front();
                    }
                }
                None => tracing::debug!(
                    height = source.round(),
                    "no catch-up package for the checkpoint yet"
                ),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot read the checkpoint to serve: {e:#}"),
        }
        for (to, above, nonce) in std::mem::take(&mut self.manifest_requests) {
            self.answer_manifest(to, above, nonce);
        }
    }

    /// Sends `to` the manifest of the newest checkpoint served, if it is
    /// above `above`.
    pub(super) fn answer_manifest(&self, to: u32, above: u64, nonce: u64) {
        if let Some(served) = self.served.back().filter(|s| s.manifest.height > above) {
            let answer = SyncMessage::Manifest {
                manifest: Box::new(served.manifest.clone()),
                nonce,
            };
            self.send_sync(Some(to), &answer);
        }
    }

    /// A peer offers a checkpoint: fetch it if it is ahead and its
    /// catch-up package verifies (adding the peer to the fetch of the same
    /// state, resuming a stalled fetch of it, or staging a new one, which
    /// keeps what this replica holds).
    pub(super) async fn on_manifest(&mut self, from: u32, manifest: Manifest) {
        if self.syncing.is_none() || manifest.height <= self.node.round() {
            return;
        }
        if self
            .failed
            .get(&from)
            .is_some_and(|&until| now_ms() < until)
        {
            return;
        }
        let height = manifest.height;
        if let Some(fetch) = self.fetch.as_mut() {
            // The same manifest, byte for byte, as one already checked.
            if fetch.same_image(&manifest) {
                let first = fetch.add_peer(from, now_ms());
                tracing::info!(
                    peer = from,
                    height,
                    "state sync: another peer joins the fetch"
                );
                self.request_chunks(from, height, &first);
            }
            return;
        }
        if let Err(e) = manifest.check(&self.keys, self.node.round()) {
            tracing::warn!(peer = from, "state sync: refused a manifest: {e}");
            self.failed.insert(from, now_ms() + FAILED_PEER_MS);
            return;
        }
        match self.stalled_fetch.take() {
            Some(mut stalled) if stalled.same_image(&manifest) => {
                let (held, all) = stalled.progress();
                tracing::info!(
                    peer = from,
                    height,
                    held,
                    all,
                    "state sync: resuming the fetch from another peer"
                );
                let missing = stalled.add_peer(from, now_ms());
                self.fetch = Some(stalled);
                self.request_chunks(from, height, &missing);
                return;
            }
            // Another state: its staging store goes before a new one.
            other => drop(other),
        }
        let node = self.node.clone();
        let chunks = manifest.chunks.clone();
        let (staging, held) =
            match tokio::task::spawn_blocking(move || node.stage_sync(&chunks)).await {
                Ok(Ok(staged)) => staged,
                Ok(Err(e)) => return tracing::error!("state sync: cannot stage: {e:#}"),
                Err(e) => {
                    tracing::error!("state sync staging panicked: {e}");
                    std::process::exit(4);
                }
            };
        let (fetch, first) = Fetch::new(from, manifest, &held, staging, now_ms());
        let (have, all) = fetch.progress();
        tracing::info!(
            peer = from,
            height,
            bytes = fetch.manifest.size(),
            chunks = all,
            held = have,
            "state sync: fetching the checkpoint (the chunks this replica holds are kept)"
        );
        let done = fetch.is_done();
        self.fetch = Some(fetch);
        if done {
            self.install_fetched().await;
        } else {
            self.request_chunks(from, height, &first);
        }
    }

    /// A chunk of the checkpoint being fetched.
    pub(super) async fn on_chunk(&mut self, from: u32, height: u64, index: u32, bytes: Vec<u8>) {
        let Some(fetch) = self.fetch.as_mut() else {
            return;
        };
        match fetch.on_chunk(from, height, index, bytes, now_ms()) {
            Progress::Ignored => {}
            Progress::Request(more) => self.request_chunks(from, height, &more),
            Progress::BadPeer(why) => self.drop_fetch_peer(from, &why),
            Progress::BadState(why) => {
                let peers = fetch.peers();
                self.fail_state(&peers, &why);
            }
            Progress::Done => self.install_fetched().await,
        }
    }

    /// Checks the fetched checkpoint against its catch-up package and, if
    /// it holds, installs it; then catches up from peers' batches above it.
    pub(super) async fn install_fetched(&mut self) {
        let Some(fetch) = self.fetch.take() else {
            return;
        };
        let (peers, started) = (fetch.sent_by_peer(), fetch.started_ms);
        let (manifest, staging) = fetch.into_parts();
        if manifest.height <= self.node.round() {
            // Peers' batches got this replica there meanwhile.
            return;
        }
        let certified = manifest.certified();
        let node = self.node.clone();
        let chunks = manifest.chunks.clone();
        let installed =
            tokio::task::spawn_blocking(move || node.install_staged(staging, &chunks, &certified))
                .await;
        let round = match installed {
            Ok(Ok(round)) => round,
            Ok(Err(e)) => {
                let peers: Vec<u32> = peers.iter().map(|&(p, _)| p).collect();
                return self.fail_state(&peers, &format!("{e:#}"));
            }
            Err(e) => {
                tracing::error!("state sync panicked: {e}");
                std::process::exit(4);
            }
        };
        tracing::info!(
            height = round,
            chunks_by_peer = ?peers,
            bytes = manifest.size(),
            ms = now_ms().saturating_sub(started),
            "state sync: installed the checkpoint (its state hash is the certified one)"
        );
        self.recent.clear();
        self.want_state = false;
        self.reported.insert(round, certified.state_hash);
        self.note_executed(
            round,
            Some(manifest.cup.content.block.0),
            Some(certified.state_hash),
        );
        self.keep_cup(&manifest.cup);
        let saved = read_json::<CatchUpPackage>(&self.cup_path).ok();
        if saved.is_none_or(|c| c.content.height < round) {
            self.save_cup(&manifest.cup);
        }
        if let Some((from, hash)) = self.node.consensus_change() {
            switch_policy(&self.node, &mut self.consensus, from, &hash);
        }
        let top = self.syncing.as_ref().map_or(0, |c| c.content.height);
        if round >= top {
            self.finish_sync().await;
        } else {
            self.last_sync_request_ms = 0;
            self.maybe_request_sync();
        }
    }
}
