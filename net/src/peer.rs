//! The outgoing side of one peer: dial it (again and again, with backoff),
//! and write its queued frames onto one unidirectional stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

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
/// writes the frames from `queue` to it. A frame whose write failed is
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
    let mut pending: Option<OutFrame> = None;
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

/// Writes queued frames to `conn` until it fails or the queue closes.
async fn pump(
    conn: &Connection,
    slot: &PeerQueue,
    queue: &mut mpsc::Receiver<OutFrame>,
    pending: &mut Option<OutFrame>,
) -> Stop {
    let mut stream = match conn.open_uni().await {
        Ok(stream) => stream,
        Err(e) => return Stop::Lost(e.to_string()),
    };
    loop {
        let frame = match pending.take() {
            Some(frame) => frame,
            None => tokio::select! {
                frame = queue.recv() => match frame {
                    Some(frame) => {
                        slot.queued_bytes.fetch_sub(frame.bytes.len(), Ordering::Relaxed);
                        frame
                    }
                    None => return Stop::Shutdown,
                },
                e = conn.closed() => return Stop::Lost(e.to_string()),
            },
        };
        if let Some(due) = frame.due {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                e = conn.closed() => {
                    *pending = Some(frame);
                    return Stop::Lost(e.to_string());
                }
            }
        }
        if let Err(e) = stream.write_all(&frame.bytes).await {
            *pending = Some(frame);
            return Stop::Lost(e.to_string());
        }
    }
}
