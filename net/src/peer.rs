//! The outgoing side of one peer: dial it (again and again, with backoff),
//! and write its queued frames onto one unidirectional stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use quinn::{Connection, Endpoint};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::backoff::Backoff;
use crate::membership::PeerInfo;
use crate::tls;
use crate::transport::{CLOSE_SHUTDOWN, Counters, OutFrame, PeerQueue, Shared};

/// Why writing to a connection stopped.
enum Stop {
    /// The transport is shutting down (the queue closed).
    Shutdown,
    /// The connection failed; redial.
    Lost(String),
}

/// Runs until the transport shuts down: keeps a connection to `peer` and
/// writes the frames from `queue` to it. Frames whose write failed are
/// written again on the next connection.
pub(crate) async fn run(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    peer: PeerInfo,
    client: quinn::ClientConfig,
    mut queue: mpsc::Receiver<OutFrame>,
) {
    let config = &shared.config;
    let index = peer.node_index;
    let Some(slot) = shared.queues.get(&index) else {
        return;
    };
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut pending: VecDeque<OutFrame> = VecDeque::new();
    loop {
        let conn = match dial(&shared, &endpoint, &peer, &client).await {
            Ok(conn) => conn,
            Err(reason) => {
                let wait = backoff.next_wait();
                debug!(peer = index, %reason, ?wait, "dial failed");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        info!(peer = index, address = %peer.address, "connected");
        Counters::bump(&shared.counters.connects);
        slot.connected.store(true, Ordering::Relaxed);
        let since = Instant::now();
        let stop = pump(&conn, slot, &mut queue, &mut pending).await;
        slot.connected.store(false, Ordering::Relaxed);
        match stop {
            Stop::Shutdown => {
                conn.close(CLOSE_SHUTDOWN, b"shutdown");
                return;
            }
            Stop::Lost(reason) => info!(peer = index, %reason, "connection lost"),
        }
        // A connection that lasted resets the backoff; one that keeps
        // failing right after the handshake (e.g. the peer refuses us)
        // does not, so we never redial in a tight loop.
        if since.elapsed() >= config.backoff_max {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_wait()).await;
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

/// Takes the next frame out of the queue, waiting; `None` when the queue
/// closed (shutdown).
async fn take(slot: &PeerQueue, queue: &mut mpsc::Receiver<OutFrame>) -> Option<OutFrame> {
    let frame = queue.recv().await?;
    slot.queued_bytes
        .fetch_sub(frame.bytes.len(), Ordering::Relaxed);
    Some(frame)
}

/// Writes queued frames to `conn` until it fails or the queue closes.
/// Frames already due are written in batches (without copying: the bytes
/// of a broadcast are shared by every peer's queue). Frames taken from the
/// queue stay in `pending` until written, so a failed batch is written
/// again on the next connection.
async fn pump(
    conn: &Connection,
    slot: &PeerQueue,
    queue: &mut mpsc::Receiver<OutFrame>,
    pending: &mut VecDeque<OutFrame>,
) -> Stop {
    let mut stream = match conn.open_uni().await {
        Ok(stream) => stream,
        Err(e) => return Stop::Lost(e.to_string()),
    };
    let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH_FRAMES);
    loop {
        if pending.is_empty() {
            tokio::select! {
                frame = take(slot, queue) => match frame {
                    Some(frame) => pending.push_back(frame),
                    None => return Stop::Shutdown,
                },
                e = conn.closed() => return Stop::Lost(e.to_string()),
            }
        }
        if let Some(due) = pending.front().and_then(|f| f.due) {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                e = conn.closed() => return Stop::Lost(e.to_string()),
            }
        }
        while pending.len() < MAX_BATCH_FRAMES {
            match queue.try_recv() {
                Ok(frame) => {
                    slot.queued_bytes
                        .fetch_sub(frame.bytes.len(), Ordering::Relaxed);
                    pending.push_back(frame);
                }
                Err(_) => break,
            }
        }
        let now = tokio::time::Instant::now();
        let mut bytes = 0;
        batch.clear();
        for frame in pending.iter() {
            let due = frame.due.is_none_or(|d| d <= now);
            if !due || bytes >= MAX_BATCH_BYTES {
                break;
            }
            bytes += frame.bytes.len();
            batch.push(frame.bytes.clone());
        }
        let written = batch.len();
        if let Err(e) = stream.write_all_chunks(&mut batch).await {
            return Stop::Lost(e.to_string());
        }
        pending.drain(..written);
    }
}
