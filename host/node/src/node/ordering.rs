//! Ordering: requests into rounds, locally (the pending pool and the writer lock) or from consensus (`apply_finalized`), each round journaled before it executes.

use super::*;

impl Node {
    /// Puts `op` into the ingress pool and waits for its answer, driving
    /// rounds while there is work and nobody else drives them.
    pub(super) fn submit(&self, caller: &Principal, op: Op) -> Result<Applied, NodeError> {
        if self.replica.is_on() {
            return self.submit_replicated(caller, op);
        }
        let (reply, answer) = mpsc::channel();
        self.pending.lock().expect("pending lock").push(Pending {
            ingress: Ingress {
                caller: caller.clone(),
                op,
                request: CURRENT_REQUEST.with(|c| c.borrow().clone()),
            },
            reply,
        });
        let deadline = Instant::now() + self.options.reply_timeout;
        loop {
            if let Ok(result) = answer.try_recv() {
                return result;
            }
            let ran = {
                let mut writer = self.writer.lock().expect("writer lock");
                if let Ok(result) = answer.try_recv() {
                    return result;
                }
                if self.has_work() {
                    self.run_round_locked(&mut writer)?;
                    true
                } else {
                    false
                }
            };
            if ran {
                continue;
            }
            // Nothing to run here: the answer waits for something else (a
            // timer, a deferred reply). Wait for a round that brings it.
            match answer.recv_timeout(Duration::from_millis(20)) {
                Ok(result) => return result,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(NodeError::BadRequest(format!(
                        "no answer within {:?}; the message is still waiting (for example \
                         for a deferred reply)",
                        self.options.reply_timeout
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(NodeError::Internal(anyhow::anyhow!(
                        "the request was dropped without an answer"
                    )));
                }
            }
        }
    }

    /// Whether a round has something to do now: requests in the pool,
    /// messages in input queues, or timers due.
    pub(super) fn has_work(&self) -> bool {
        if !self.pending.lock().expect("pending lock").is_empty()
            || !self.exec.paused.lock().expect("paused lock").is_empty()
        {
            return true;
        }
        let registry = self.exec.registry.read().expect("registry lock");
        if !registry.active.is_empty() {
            return true;
        }
        let now = now_nanos().max(registry.time_nanos + 1);
        // A full ingress history refuses new requests, so a node with
        // nothing else to do runs a round once the history can make room.
        {
            let history = self.exec.history.lock().expect("history lock");
            if history.is_full() && history.prune_due(now) {
                return true;
            }
        }
        registry.timed.iter().any(|id| {
            registry
                .canisters
                .get(id)
                .is_some_and(|c| c.state.timers.values().any(|t| t.at_nanos <= now))
        })
    }

    /// Runs one round when there is work. Returns whether it ran one.
    /// Nodes started with [`crate::start`] call this periodically so that
    /// timers fire and queued messages drain without new requests.
    pub fn tick(&self) -> Result<bool, NodeError> {
        if self.replica.is_on() {
            return Ok(false);
        }
        let mut writer = self.writer.lock().expect("writer lock");
        if !self.has_work() {
            return Ok(false);
        }
        self.run_round_locked(&mut writer)?;
        Ok(true)
    }

    /// Runs rounds until there is no work left or `max_rounds` ran; returns
    /// how many ran.
    pub fn run_until_idle(&self, max_rounds: u64) -> Result<u64, NodeError> {
        let mut ran = 0;
        while ran < max_rounds && self.tick()? {
            ran += 1;
        }
        Ok(ran)
    }

    /// The number of the last executed round.
    pub fn round(&self) -> u64 {
        self.exec.registry.read().expect("registry lock").round
    }

    /// Replica mode: sends `op` to consensus (with the module for an
    /// install) and waits for the finalized batch that answers it.
    pub(super) fn submit_replicated(
        &self,
        caller: &Principal,
        op: Op,
    ) -> Result<Applied, NodeError> {
        let module = match crate::replica_link::attached_hash(&op) {
            Some(hash) => Some(
                self.read_module(hash)
                    .map_err(|e| NodeError::Internal(e.into()))?,
            ),
            None => None,
        };
        let ingress = Ingress {
            caller: caller.clone(),
            op,
            request: CURRENT_REQUEST.with(|c| c.borrow().clone()),
        };
        let answer = self.replica.submit(&ingress, module)?;
        match answer.recv_timeout(self.options.reply_timeout) {
            Ok(result) => result,
            Err(_) => Err(NodeError::BadRequest(format!(
                "no finalized answer within {:?}; the message may still execute",
                self.options.reply_timeout
            ))),
        }
    }

    /// Replica mode: journals and executes the finalized batch at `height`
    /// (the round number) with the block's time; `items` are the payload's
    /// ingress (message id, content). Answers the local callers waiting for
    /// those ids. Heights already executed (a restart replaying) are
    /// skipped; returns whether the batch ran.
    pub fn apply_finalized(
        &self,
        height: u64,
        time_nanos: u64,
        items: &[([u8; 32], Vec<u8>)],
    ) -> Result<bool, NodeError> {
        let mut writer = self.writer.lock().expect("writer lock");
        let (round, last_time) = {
            let registry = self.exec.registry.read().expect("registry lock");
            (registry.round, registry.time_nanos)
        };
        if height <= round {
            return Ok(false);
        }
        if height != round + 1 {
            return Err(NodeError::Internal(anyhow::anyhow!(
                "finalized height {height} does not follow the executed round {round}: \
                 state sync is needed"
            )));
        }
        let time = time_nanos.max(last_time + 1);
        // Undecodable content, and requests whose signature does not hold,
        // are skipped on every replica alike. The block's signatures are
        // checked together (one batch; see `auth::check_all`).
        let claimed: Vec<_> = items
            .iter()
            .filter_map(|(id, content)| {
                let decoded = crate::replica_link::decode_request(content)?;
                let claim = crate::replica_link::claim_request(id, content, &decoded);
                Some((id, decoded, claim))
            })
            .collect();
        let pending: Vec<_> = claimed
            .iter()
            .filter_map(|(_, _, claim)| claim.as_ref().ok()?.as_ref()?.signature())
            .collect();
        let mut holds = crate::auth::check_all(&pending).into_iter();
        let mut ingress = Vec::new();
        for (id, decoded, claim) in claimed {
            let checked = claim.and_then(|claim| {
                let signed = claim.as_ref().is_some_and(|c| c.signature().is_some());
                let holds = !signed || holds.next().expect("one result per signature");
                crate::replica_link::settle_request(claim, holds, &decoded, time)
            });
            let verified = match checked {
                Ok(verified) => verified,
                Err(reason) => {
                    tracing::warn!(height, "skipped a request: {reason}");
                    self.replica.refuse(id, reason);
                    continue;
                }
            };
            // The id its fate is recorded under: derived here, from what
            // the item carries, never taken from the sending replica.
            let tag = match crate::replica_link::request_tag(&decoded, verified.as_ref(), time) {
                Ok(tag) => tag,
                Err(reason) => {
                    tracing::warn!(height, "skipped a request: {reason}");
                    self.replica.refuse(id, reason);
                    continue;
                }
            };
            let crate::replica_link::Decoded {
                ingress: mut request,
                attachment,
                ..
            } = decoded;
            // The module or chunk a request names comes with it; one that
            // does not is skipped on every replica alike (whatever this
            // replica happens to have stored).
            if let Some(hash) = crate::replica_link::attached_hash(&request.op) {
                match crate::replica_link::check_attachment(&request.op, hash, attachment) {
                    Ok(bytes) => self.store_module(hash, &bytes)?,
                    Err(reason) => {
                        tracing::warn!(height, "skipped a request: {reason}");
                        self.replica.refuse(id, reason);
                        continue;
                    }
                }
            }
            let index = IngressId {
                round: height,
                index: ingress.len() as u32,
            };
            self.replica.expect(index, id);
            request.request = tag;
            ingress.push(request);
        }
        let record = Record {
            round: height,
            time_nanos: time,
            ingress,
        };
        let w = writer.as_mut().expect("journal open");
        w.journal.append(&record).map_err(NodeError::Internal)?;
        let answered = self.exec.execute_round(&record);
        for (index, result) in answered {
            self.replica.answer(index, result);
        }
        if self.is_checkpoint_round(height) {
            self.checkpoint_locked(&mut writer)?;
        }
        Ok(true)
    }

    /// Switches the node to replica mode: requests go to `sink` (which
    /// hands them to consensus and returns the ingress message id) and
    /// rounds run only through [`Node::apply_finalized`].
    pub fn set_replica_sink(&self, sink: crate::replica_link::IngressSink) {
        self.replica.turn_on(sink);
    }

    /// How long a caller waits for an update's answer before it gives up
    /// waiting (the message may still execute).
    pub fn reply_timeout(&self) -> Duration {
        self.options.reply_timeout
    }

    /// Whether the node runs as a replica of a subnet.
    pub fn is_replica(&self) -> bool {
        self.replica.is_on()
    }

    /// Takes a batch from the pool, journals it and executes the round;
    /// answers every request the round finished.
    pub(super) fn run_round_locked(&self, writer: &mut Option<Writer>) -> Result<(), NodeError> {
        let taken: Vec<Pending> = {
            let mut pending = self.pending.lock().expect("pending lock");
            let n = pending.len().min(self.options.max_batch);
            pending.drain(..n).collect()
        };
        let record = {
            let registry = self.exec.registry.read().expect("registry lock");
            Record {
                round: registry.round + 1,
                time_nanos: now_nanos().max(registry.time_nanos + 1),
                ingress: taken.iter().map(|p| p.ingress.clone()).collect(),
            }
        };
        let w = writer.as_mut().expect("journal open");
        if let Err(e) = w.journal.append(&record) {
            for p in taken {
                let _ = p
                    .reply
                    .send(Err(NodeError::Internal(anyhow::anyhow!("{e:#}"))));
            }
            return Err(NodeError::Internal(e));
        }
        {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            for (index, p) in taken.into_iter().enumerate() {
                let id = IngressId {
                    round: record.round,
                    index: index as u32,
                };
                waiters.insert(id, p.reply);
            }
        }
        let answered = self.exec.execute_round(&record);
        {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            for (id, result) in answered {
                if let Some(reply) = waiters.remove(&id) {
                    let _ = reply.send(result);
                }
            }
        }
        if self.is_checkpoint_round(record.round) {
            self.checkpoint_locked(writer)?;
        }
        Ok(())
    }
}
