//! The outgoing side of one peer: dial it (again and again, with backoff),
//! and write its queued frames onto one unidirectional stream.
//!
//! One task per peer dials it (bounded exponential backoff with jitter,
//! `backoff.rs`, and a connect timeout) and writes that peer's queue onto
//! one unidirectional stream; so each pair of nodes has two connections,
//! one per direction, and no dial races. Queues are bounded and `send`
//! never blocks: while a peer is unreachable its writer keeps draining the
//! queue into a backlog (`backlog.rs`) that drops the oldest frames (so a
//! returning peer gets the newest and pulls older ones by id); a connected
//! but slow peer makes `send` refuse with `QueueFull`. Writes are batched
//! and zero-copy. An injected delay holds each frame until its enqueue
//! time plus the delay, pipelined.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use quinn::{Connection, Endpoint};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::backlog::Backlog;
use crate::backoff::Backoff;
use crate::membership::PeerInfo;
use crate::shared::{CLOSE_SHUTDOWN, OutFrame, PeerQueue, Shared};
use crate::stats::Counters;
use crate::tls;

/// Why writing to a connection stopped.
enum Stop {
    /// The transport is shutting down (the queue closed).
    Shutdown,
    /// The connection failed; redial.
    Lost(String),
    /// The peer came back (restarted): this connection is stale; dial
    /// again at once.
    Returned,
}

/// Runs until the transport shuts down: keeps a connection to `peer` and
/// writes the frames from `queue` to it. Frames whose write failed are
/// written again on the next connection; while the peer is unreachable
/// the oldest frames beyond the queue bounds are dropped.
pub(crate) async fn run(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    peer: PeerInfo,
    client: quinn::ClientConfig,
    queue: mpsc::Receiver<OutFrame>,
) {
    let config = &shared.config;
    let index = peer.node_index;
    let Some(slot) = shared.queues.get(&index) else {
        return;
    };
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut outbox = Outbox {
        shared: &shared,
        slot,
        queue,
        backlog: Backlog::new(config.send_queue_capacity, config.send_queue_bytes),
    };
    loop {
        let Some(dialed) = outbox
            .meanwhile(dial(&shared, &endpoint, &peer, &client))
            .await
        else {
            return;
        };
        let conn = match dialed {
            Ok(conn) => conn,
            Err(reason) => {
                let wait = backoff.next_wait();
                debug!(peer = index, %reason, ?wait, "dial failed");
                if outbox.meanwhile(tokio::time::sleep(wait)).await.is_none() {
                    return;
                }
                continue;
            }
        };
        info!(peer = index, address = %peer.address, "connected");
        Counters::bump(&shared.counters.connects);
        slot.connected.store(true, Ordering::Relaxed);
        let since = Instant::now();
        let stop = pump(&conn, &mut outbox).await;
        slot.connected.store(false, Ordering::Relaxed);
        match stop {
            Stop::Shutdown => {
                conn.close(CLOSE_SHUTDOWN, b"shutdown");
                return;
            }
            Stop::Lost(reason) => info!(peer = index, %reason, "connection lost"),
            Stop::Returned => {
                info!(peer = index, "the peer came back: dialing it again");
                Counters::bump(&shared.counters.returns);
                conn.close(CLOSE_SHUTDOWN, b"redialing");
                backoff.reset();
                continue;
            }
        }
        // A connection that lasted resets the backoff; one that keeps
        // failing right after the handshake (e.g. the peer refuses us)
        // does not, so we never redial in a tight loop.
        if since.elapsed() >= config.backoff_max {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        if outbox.meanwhile(tokio::time::sleep(wait)).await.is_none() {
            return;
        }
    }
}

/// One dial, bounded by the connect timeout.
async fn dial(
    shared: &Shared,
    endpoint: &Endpoint,
    peer: &PeerInfo,
    client: &quinn::ClientConfig,
) -> Result<Connection, String> {
    let name = tls::server_name(peer.node_index);
    let connecting = endpoint
        .connect_with(client.clone(), peer.address, &name)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(shared.config.connect_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// The most frames written in one go.
const MAX_BATCH_FRAMES: usize = 64;
/// Frames are added to a batch while it is smaller than this.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// A peer's queue and the backlog of frames taken out of it.
struct Outbox<'a> {
    /// For the counters.
    shared: &'a Shared,
    /// The peer's queue state (byte count).
    slot: &'a PeerQueue,
    /// The queue.
    queue: mpsc::Receiver<OutFrame>,
    /// Frames taken out of the queue and not written yet.
    backlog: Backlog,
}

impl Outbox<'_> {
    /// Moves `frame` (just taken out of the queue) into the backlog.
    fn keep(&mut self, frame: OutFrame) {
        let len = frame.bytes.len();
        self.slot.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        let dropped = self.backlog.push(frame);
        if dropped > 0 {
            let counter = &self.shared.counters.send_dropped;
            counter.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }

    /// Waits until the backlog has a frame; false when the queue closed.
    async fn wait_for_frame(&mut self) -> bool {
        if self.backlog.is_empty() {
            match self.queue.recv().await {
                Some(frame) => self.keep(frame),
                None => return false,
            }
        }
        true
    }

    /// Moves what is in the queue now into the backlog (up to `limit`).
    fn take_ready(&mut self, limit: usize) {
        while self.backlog.len() < limit {
            match self.queue.try_recv() {
                Ok(frame) => self.keep(frame),
                Err(_) => break,
            }
        }
    }

    /// Runs `work` while moving queued frames into the backlog, so that
    /// while the peer is unreachable the oldest frames are dropped, not the
    /// newest. `None` when the queue closed.
    async fn meanwhile<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                frame = self.queue.recv() => self.keep(frame?),
            }
        }
    }
}

/// Writes queued frames to `conn` until it fails or the queue closes.
/// Frames already due are written in batches (without copying: the bytes
/// of a broadcast are shared by every peer's queue). Frames stay in the
/// backlog until written, so a failed batch is written again on the next
/// connection.
async fn pump(conn: &Connection, outbox: &mut Outbox<'_>) -> Stop {
    let mut stream = match conn.open_uni().await {
        Ok(stream) => stream,
        Err(e) => return Stop::Lost(e.to_string()),
    };
    let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH_FRAMES);
    let slot = outbox.slot;
    let generation = slot.reconnect_generation.load(Ordering::SeqCst);
    loop {
        let returned = slot.reconnect.notified();
        let mut returned = std::pin::pin!(returned);
        returned.as_mut().enable();
        if slot.reconnect_generation.load(Ordering::SeqCst) != generation {
            return Stop::Returned;
        }
        tokio::select! {
            more = outbox.wait_for_frame() => if !more {
                return Stop::Shutdown;
            },
            e = conn.closed() => return Stop::Lost(e.to_string()),
            () = &mut returned => return Stop::Returned,
        }
        if let Some(due) = outbox.backlog.front().and_then(|f| f.due) {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                e = conn.closed() => return Stop::Lost(e.to_string()),
            }
        }
        outbox.take_ready(MAX_BATCH_FRAMES);
        let now = tokio::time::Instant::now();
        let mut bytes = 0;
        batch.clear();
        for frame in outbox.backlog.iter() {
            let due = frame.due.is_none_or(|d| d <= now);
            if !due || bytes >= MAX_BATCH_BYTES || batch.len() == MAX_BATCH_FRAMES {
                break;
            }
            bytes += frame.bytes.len();
            batch.push(frame.bytes.clone());
        }
        let written = batch.len();
        if let Err(e) = stream.write_all_chunks(&mut batch).await {
            return Stop::Lost(e.to_string());
        }
        outbox.backlog.remove_oldest(written);
    }
}
