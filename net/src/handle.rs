//! The handle the application sends with, and the owner that stops the
//! transport when the last handle goes.
//!
//! A [`TransportHandle`] sends (`send`, `broadcast`), pulls artifacts by
//! id (`request`), reports `stats` and `shutdown`s; `set_injected_delay`
//! and `send_raw_frame` exist for fault tests. Dropping the last handle
//! stops the tasks.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::Endpoint;
use tokio::task::JoinHandle;

use crate::artifact::{Artifact, ArtifactId};
use crate::error::SendError;
use crate::membership::Membership;
use crate::node_index::NodeIndex;
use crate::shared::{CLOSE_SHUTDOWN, Shared, delay_nanos, lock};
use crate::stats::TransportStats;
use crate::wire::Message;

/// Owns the endpoint and the tasks; stops them when dropped.
#[derive(Debug)]
struct Owner {
    /// The shared state.
    shared: Arc<Shared>,
    /// The QUIC endpoint.
    endpoint: Endpoint,
    /// The accept task and the peers' writer tasks.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Owner {
    /// Closes the endpoint and aborts the tasks; returns them to await.
    fn stop(&self) -> Vec<JoinHandle<()>> {
        self.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in &tasks {
            task.abort();
        }
        tasks
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the application holds to send; cheap to clone. The transport stops
/// when the last clone is dropped or [`TransportHandle::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct TransportHandle {
    /// The running transport.
    owner: Arc<Owner>,
}

impl TransportHandle {
    /// The handle of a started transport: its state, endpoint and tasks.
    pub(crate) fn new(shared: Arc<Shared>, endpoint: Endpoint, tasks: Vec<JoinHandle<()>>) -> Self {
        let owner = Owner {
            shared,
            endpoint,
            tasks: Mutex::new(tasks),
        };
        TransportHandle {
            owner: Arc::new(owner),
        }
    }

    /// The shared state.
    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// This node's index in the membership.
    pub fn own_index(&self) -> NodeIndex {
        self.shared().own_index
    }

    /// The pinned membership.
    pub fn membership(&self) -> &Membership {
        &self.shared().membership
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.owner.endpoint.local_addr()
    }

    /// Queues `artifact` for node `to` (never blocks). Delivery is best
    /// effort: a message queued while the peer is unreachable is sent when
    /// it is reachable again, unless the queue overflows first.
    pub fn send(&self, to: NodeIndex, artifact: &Artifact) -> Result<(), SendError> {
        let frame = self.shared().encode(&Message::Artifact(artifact.clone()))?;
        self.shared().remember(artifact);
        self.shared().enqueue(to, frame)
    }

    /// Queues `artifact` for every other member (never blocks); returns the
    /// number of peers it was queued for (peers with full queues are
    /// skipped and counted in [`TransportStats::send_dropped`]). The node's
    /// own artifacts never come back on its receiver.
    pub fn broadcast(&self, artifact: &Artifact) -> Result<usize, SendError> {
        let frame = self.shared().encode(&Message::Artifact(artifact.clone()))?;
        self.shared().remember(artifact);
        Ok(self.enqueue_all(&frame))
    }

    /// Asks every other member for the artifact `id`; those that still
    /// have it (sent or received recently) send it back, and it arrives on
    /// the receiver like any artifact (once). Returns the number of peers
    /// asked. This is how a node that was down fetches what it missed.
    pub fn request(&self, id: ArtifactId) -> usize {
        self.enqueue_all(&Message::Request(id).encode())
    }

    /// Asks node `from` for the artifact `id` (see [`Self::request`]).
    pub fn request_from(&self, from: NodeIndex, id: ArtifactId) -> Result<(), SendError> {
        self.shared().enqueue(from, Message::Request(id).encode())
    }

    /// Changes the delay added to every message sent from now on (see
    /// [`TransportConfig::injected_delay`](crate::TransportConfig::injected_delay)); for fault tests that slow a
    /// node down or heal it during a run. Messages already queued keep
    /// their order.
    pub fn set_injected_delay(&self, delay: Option<Duration>) {
        let nanos = delay_nanos(delay);
        self.shared().delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Writes `bytes` as they are onto the stream to `to`, without framing
    /// or checks. Only for fault-injection tests that play a Byzantine node
    /// sending garbage or oversized frames.
    pub fn send_raw_frame(&self, to: NodeIndex, bytes: Bytes) -> Result<(), SendError> {
        self.shared().enqueue(to, bytes)
    }

    /// Whether this node sent or received artifact `id` (among the last
    /// [`TransportConfig::seen_capacity`](crate::TransportConfig::seen_capacity) artifacts).
    pub fn has_seen(&self, id: &ArtifactId) -> bool {
        lock(&self.shared().seen).contains(id)
    }

    /// The peers this node currently has an outgoing connection to. (A
    /// peer that refuses this node may appear for a moment: in TLS 1.3 the
    /// dialer completes its handshake before the listener checks its key.)
    pub fn connected_peers(&self) -> Vec<NodeIndex> {
        let mut peers: Vec<NodeIndex> = self
            .shared()
            .queues
            .iter()
            .filter(|(_, q)| q.connected.load(Ordering::Relaxed))
            .map(|(i, _)| *i)
            .collect();
        peers.sort_unstable();
        peers
    }

    /// Counters since start.
    pub fn stats(&self) -> TransportStats {
        self.shared().counters.snapshot()
    }

    /// Stops the transport: closes every connection, stops the tasks, and
    /// waits (up to a second) for the connections to close, so that the
    /// address can be bound again soon after.
    pub async fn shutdown(self) {
        for task in self.owner.stop() {
            // Aborted tasks end with a cancellation error.
            let _ = task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.owner.endpoint.wait_idle()).await;
    }

    /// Queues a frame for every peer; the number it was queued for.
    fn enqueue_all(&self, frame: &Bytes) -> usize {
        let shared = self.shared();
        shared
            .queues
            .keys()
            .filter(|to| shared.enqueue(**to, frame.clone()).is_ok())
            .count()
    }
}
