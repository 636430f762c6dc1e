//! The state shared by the handle and the tasks: per-peer queues, the
//! seen-set and cache, bans, and what to do with each received message.
//!
//! Receivers deliver each artifact id once (a bounded seen-set) and keep
//! recent artifacts in a bounded cache (`pool.rs`), from which any peer
//! holding one answers a pull by id. Dissemination is full mesh from the
//! originator; nobody relays.
//!
//! Restarts: a new connection from a peer that replaces one still looking
//! alive means the peer restarted: the node drops its own (as stale)
//! connection to it and dials again at once (`Shared::peer_returned`, at
//! most every 3 s per peer; `stats.returns`), instead of writing into it
//! until a stateless reset arrives (1–3 s on the fleet, frames lost
//! meanwhile).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::mpsc;
use tracing::debug;

use crate::artifact::Artifact;
use crate::config::TransportConfig;
use crate::error::SendError;
use crate::membership::Membership;
use crate::node_index::NodeIndex;
use crate::pool::{ArtifactCache, SeenSet};
use crate::stats::Counters;
use crate::wire::Message;

/// Close code: the node is shutting down.
pub(crate) const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Close code: the peer broke the protocol (garbage or oversized frame).
pub(crate) const CLOSE_PROTOCOL: VarInt = VarInt::from_u32(1);
/// Close code: a newer connection from the same peer replaced this one.
pub(crate) const CLOSE_SUPERSEDED: VarInt = VarInt::from_u32(2);
/// Close code: the peer is banned for a while after breaking the protocol.
pub(crate) const CLOSE_BANNED: VarInt = VarInt::from_u32(3);

/// An artifact received from a peer. Each artifact id is delivered once
/// while the transport remembers it (the last
/// [`TransportConfig::seen_capacity`] ids); consumers should still
/// tolerate a rare repeat of a long-forgotten artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The member that sent it (not necessarily its author).
    pub from: NodeIndex,
    /// The artifact.
    pub artifact: Artifact,
}

/// A frame waiting to be written to a peer.
#[derive(Debug)]
pub(crate) struct OutFrame {
    /// The encoded frame (header and body), or raw bytes in fault tests.
    pub(crate) bytes: Bytes,
    /// When it may be written (with an injected delay).
    pub(crate) due: Option<tokio::time::Instant>,
}

/// The sending side of one peer's queue.
#[derive(Debug)]
pub(crate) struct PeerQueue {
    /// Frames for the peer's writer task.
    pub(crate) tx: mpsc::Sender<OutFrame>,
    /// Bytes in the queue (the writer subtracts what it takes out).
    pub(crate) queued_bytes: AtomicUsize,
    /// Whether the outgoing connection is up.
    pub(crate) connected: AtomicBool,
    /// Bumped when the peer came back (a new connection from it replaced
    /// one that still looked alive: it restarted); the writer then drops
    /// its own connection, stale as well, and dials again at once.
    pub(crate) reconnect_generation: AtomicU64,
    /// Wakes the writer when `reconnect_generation` moves.
    pub(crate) reconnect: tokio::sync::Notify,
    /// When a return last made the writer dial again (rate limit).
    pub(crate) last_reconnect: Mutex<Option<Instant>>,
}

impl PeerQueue {
    /// A queue feeding `tx`.
    pub(crate) fn new(tx: mpsc::Sender<OutFrame>) -> Self {
        PeerQueue {
            tx,
            queued_bytes: AtomicUsize::new(0),
            connected: AtomicBool::new(false),
            reconnect_generation: AtomicU64::new(0),
            reconnect: tokio::sync::Notify::new(),
            last_reconnect: Mutex::new(None),
        }
    }
}

/// A returning peer makes the writer dial again at most this often (so two
/// nodes replacing each other's connections cannot loop).
const RECONNECT_EVERY: Duration = Duration::from_secs(3);

/// State shared by the handle and the tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The settings.
    pub(crate) config: TransportConfig,
    /// This node's index.
    pub(crate) own_index: NodeIndex,
    /// The pinned membership.
    pub(crate) membership: Arc<Membership>,
    /// One queue per other member.
    pub(crate) queues: HashMap<NodeIndex, PeerQueue>,
    /// The current incoming connection of each peer.
    pub(crate) incoming: Mutex<HashMap<NodeIndex, quinn::Connection>>,
    /// Peers refused until the given time.
    pub(crate) banned: Mutex<HashMap<NodeIndex, Instant>>,
    /// Ids of artifacts seen (sent or received).
    pub(crate) seen: Mutex<SeenSet>,
    /// Recent artifacts, to answer pull requests.
    pub(crate) cache: Mutex<ArtifactCache>,
    /// Where received artifacts go.
    pub(crate) inbound: mpsc::Sender<Received>,
    /// Counters.
    pub(crate) counters: Counters,
    /// The injected delay in nanoseconds, [`NO_DELAY`] for none.
    pub(crate) delay_nanos: AtomicU64,
}

/// Locks `mutex`, ignoring poisoning (no critical section here leaves
/// its data inconsistent when it panics).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`Shared::delay_nanos`] when no delay is injected.
const NO_DELAY: u64 = u64::MAX;

/// A delay as stored in [`Shared::delay_nanos`].
pub(crate) fn delay_nanos(delay: Option<Duration>) -> u64 {
    delay.map_or(NO_DELAY, |d| {
        u64::try_from(d.as_nanos()).unwrap_or(NO_DELAY - 1)
    })
}

impl Shared {
    /// The delay added to messages now.
    pub(crate) fn injected_delay(&self) -> Option<Duration> {
        match self.delay_nanos.load(Ordering::Relaxed) {
            NO_DELAY => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Queues raw bytes for `to`, never blocking.
    pub(crate) fn enqueue(&self, to: NodeIndex, bytes: Bytes) -> Result<(), SendError> {
        let queue = self.queues.get(&to).ok_or(SendError::UnknownPeer(to))?;
        let due = self
            .injected_delay()
            .map(|d| tokio::time::Instant::now() + d);
        let len = bytes.len();
        let before = queue.queued_bytes.fetch_add(len, Ordering::Relaxed);
        let result = if before + len > self.config.send_queue_bytes {
            Err(SendError::QueueFull(to))
        } else {
            queue
                .tx
                .try_send(OutFrame { bytes, due })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
                    mpsc::error::TrySendError::Closed(_) => SendError::Closed,
                })
        };
        if let Err(e) = &result {
            queue.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            if let SendError::QueueFull(_) = e {
                Counters::bump(&self.counters.send_dropped);
                debug!(peer = to, "send queue full, message dropped");
            }
        }
        result
    }

    /// Encodes `message`, checking its size.
    pub(crate) fn encode(&self, message: &Message) -> Result<Bytes, SendError> {
        let size = message.body_len();
        let max = self.config.max_message_size;
        if size > max {
            return Err(SendError::TooLarge { size, max });
        }
        Ok(message.encode())
    }

    /// Records an artifact this node sends, so echoes are dropped and pull
    /// requests for it can be answered.
    pub(crate) fn remember(&self, artifact: &Artifact) {
        lock(&self.seen).insert(artifact.id());
        lock(&self.cache).insert(artifact.clone());
    }

    /// A new connection from `peer` replaced one that still looked alive:
    /// it has most likely restarted, and this node's own connection to it
    /// is as stale. The writer drops it and dials again (at most every
    /// [`RECONNECT_EVERY`]), instead of writing into it until the peer's
    /// stateless reset arrives, which loses what it writes meanwhile.
    pub(crate) fn peer_returned(&self, peer: NodeIndex) {
        let Some(queue) = self.queues.get(&peer) else {
            return;
        };
        {
            let mut last = lock(&queue.last_reconnect);
            if last.is_some_and(|at| at.elapsed() < RECONNECT_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        queue.reconnect_generation.fetch_add(1, Ordering::SeqCst);
        queue.reconnect.notify_waiters();
    }

    /// Whether `peer` is currently banned.
    pub(crate) fn is_banned(&self, peer: NodeIndex) -> bool {
        let mut banned = lock(&self.banned);
        match banned.get(&peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                banned.remove(&peer);
                false
            }
            None => false,
        }
    }

    /// Bans `peer` for the configured time.
    pub(crate) fn ban(&self, peer: NodeIndex) {
        let until = Instant::now() + self.config.misbehaviour_ban;
        lock(&self.banned).insert(peer, until);
    }

    /// Handles a message from `from`: delivers new artifacts, answers
    /// requests. Waits when the application is behind.
    pub(crate) async fn handle(&self, from: NodeIndex, message: Message) {
        match message {
            Message::Artifact(artifact) => {
                if !lock(&self.seen).insert(artifact.id()) {
                    Counters::bump(&self.counters.duplicates);
                    return;
                }
                lock(&self.cache).insert(artifact.clone());
                Counters::bump(&self.counters.delivered);
                // An error means the application dropped its receiver.
                let _ = self.inbound.send(Received { from, artifact }).await;
            }
            Message::Request(id) => {
                let found = lock(&self.cache).get(&id);
                if let Some(artifact) = found {
                    let frame = Message::Artifact(artifact).encode();
                    if self.enqueue(from, frame).is_ok() {
                        Counters::bump(&self.counters.requests_answered);
                    }
                }
            }
        }
    }
}
