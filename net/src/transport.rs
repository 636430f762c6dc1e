//! Starting the transport, and the handle the application uses to send.
//!
//! One QUIC endpoint per node both listens and dials. Every node dials
//! every other member and writes its messages to that peer on its own
//! outgoing connection (see [`crate::peer`]); it reads what peers send on
//! the connections they dialed (see [`crate::inbound`]). So each pair of
//! nodes has two connections, one per direction, and no tie-breaking is
//! needed when both restart or dial at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, VarInt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::artifact::{Artifact, ArtifactId};
use crate::config::TransportConfig;
use crate::error::{NetError, SendError};
use crate::identity::NodeKeyPair;
use crate::membership::{Membership, NodeIndex, PeerInfo};
use crate::pool::{ArtifactCache, SeenSet};
use crate::tls;
use crate::wire::Message;
use crate::{inbound, peer};

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

/// Counters of what the transport did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Artifacts handed to the application.
    pub delivered: u64,
    /// Artifacts received again and dropped by deduplication.
    pub duplicates: u64,
    /// Messages dropped because a peer's send queue was full.
    pub send_dropped: u64,
    /// Connections dropped because the peer broke the protocol.
    pub misbehaviours: u64,
    /// Incoming connections refused (failed handshakes: non-members,
    /// wrong protocol; and banned peers).
    pub refused: u64,
    /// Outgoing connections established (first connections and reconnects).
    pub connects: u64,
    /// Pull requests answered from the cache.
    pub requests_answered: u64,
}

/// The atomic counters behind [`TransportStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// See [`TransportStats::delivered`].
    pub(crate) delivered: AtomicU64,
    /// See [`TransportStats::duplicates`].
    pub(crate) duplicates: AtomicU64,
    /// See [`TransportStats::send_dropped`].
    pub(crate) send_dropped: AtomicU64,
    /// See [`TransportStats::misbehaviours`].
    pub(crate) misbehaviours: AtomicU64,
    /// See [`TransportStats::refused`].
    pub(crate) refused: AtomicU64,
    /// See [`TransportStats::connects`].
    pub(crate) connects: AtomicU64,
    /// See [`TransportStats::requests_answered`].
    pub(crate) requests_answered: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            delivered: get(&self.delivered),
            duplicates: get(&self.duplicates),
            send_dropped: get(&self.send_dropped),
            misbehaviours: get(&self.misbehaviours),
            refused: get(&self.refused),
            connects: get(&self.connects),
            requests_answered: get(&self.requests_answered),
        }
    }
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
}

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
fn delay_nanos(delay: Option<Duration>) -> u64 {
    delay.map_or(NO_DELAY, |d| {
        u64::try_from(d.as_nanos()).unwrap_or(NO_DELAY - 1)
    })
}

impl Shared {
    /// The delay added to messages now.
    fn injected_delay(&self) -> Option<Duration> {
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
    fn encode(&self, message: &Message) -> Result<Bytes, SendError> {
        let size = message.body_len();
        let max = self.config.max_message_size;
        if size > max {
            return Err(SendError::TooLarge { size, max });
        }
        Ok(message.encode())
    }

    /// Records an artifact this node sends, so echoes are dropped and pull
    /// requests for it can be answered.
    fn remember(&self, artifact: &Artifact) {
        lock(&self.seen).insert(artifact.id());
        lock(&self.cache).insert(artifact.clone());
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

/// The subnet transport. [`Transport::start`] gives a [`TransportHandle`]
/// to send with and a receiver of [`Received`] artifacts.
#[derive(Debug)]
pub struct Transport;

impl Transport {
    /// Binds the node's UDP address, starts listening and dialing every
    /// other member of `membership`, and returns the handle to send with
    /// and the receiver of artifacts from peers. `keys` must be a member's.
    /// Must be called within a tokio runtime.
    pub async fn start(
        config: TransportConfig,
        keys: NodeKeyPair,
        membership: Membership,
    ) -> Result<(TransportHandle, mpsc::Receiver<Received>), NetError> {
        config.validate()?;
        let membership = Arc::new(membership);
        let own_index = membership
            .index_of(&keys.public_key())
            .ok_or(NetError::NotAMember)?;
        let own = membership.get(own_index).ok_or(NetError::NotAMember)?;
        let bind = config.bind_addr.unwrap_or(own.address);

        let endpoint = bind_endpoint(&config, &keys, &membership, own_index, bind)?;
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity);
        let mut queues = HashMap::new();
        let mut receivers = Vec::new();
        for peer in membership
            .peers()
            .iter()
            .filter(|p| p.node_index != own_index)
        {
            let (tx, rx) = mpsc::channel(config.send_queue_capacity);
            let queue = PeerQueue {
                tx,
                queued_bytes: AtomicUsize::new(0),
                connected: AtomicBool::new(false),
            };
            queues.insert(peer.node_index, queue);
            let client = client_config(&config, &keys, peer)?;
            receivers.push((peer.clone(), client, rx));
        }
        let shared = Arc::new(Shared {
            own_index,
            membership: membership.clone(),
            queues,
            incoming: Mutex::new(HashMap::new()),
            banned: Mutex::new(HashMap::new()),
            seen: Mutex::new(SeenSet::new(config.seen_capacity)),
            cache: Mutex::new(ArtifactCache::new(config.cache_bytes)),
            inbound: inbound_tx,
            counters: Counters::default(),
            delay_nanos: AtomicU64::new(delay_nanos(config.injected_delay)),
            config,
        });

        let mut tasks = Vec::new();
        for (peer, client, rx) in receivers {
            let task = peer::run(shared.clone(), endpoint.clone(), peer, client, rx);
            tasks.push(tokio::spawn(task));
        }
        tasks.push(tokio::spawn(inbound::accept_loop(
            shared.clone(),
            endpoint.clone(),
        )));
        info!(node = own_index, address = %bind, peers = membership.len() - 1, "transport started");
        let owner = Owner {
            shared,
            endpoint,
            tasks: Mutex::new(tasks),
        };
        Ok((
            TransportHandle {
                owner: Arc::new(owner),
            },
            inbound_rx,
        ))
    }
}

/// Creates the endpoint: listening with member-only client authentication,
/// and with stateless-reset tokens and connection-id validation keys
/// derived from the node key, so that after a restart (or crash) the node
/// recognizes its old connection ids and resets its peers' stale
/// connections at their next packet, and they redial at once.
fn bind_endpoint(
    config: &TransportConfig,
    keys: &NodeKeyPair,
    membership: &Arc<Membership>,
    own_index: NodeIndex,
    bind: SocketAddr,
) -> Result<Endpoint, NetError> {
    let tls = tls::server_config(keys, membership.clone(), own_index)?;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| NetError::InvalidConfig(format!("QUIC server TLS: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport_config(config)?;
    // Each peer sends on one unidirectional stream per connection.
    transport.max_concurrent_uni_streams(VarInt::from_u32(1));
    server.transport_config(Arc::new(transport));

    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive(keys, "reset key"));
    let mut endpoint_config = EndpointConfig::new(Arc::new(reset_key));
    let cid_key = derive(keys, "connection id key");
    let cid_key = u64::from_le_bytes([
        cid_key[0], cid_key[1], cid_key[2], cid_key[3], cid_key[4], cid_key[5], cid_key[6],
        cid_key[7],
    ]);
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });

    let socket = std::net::UdpSocket::bind(bind).map_err(|e| NetError::Bind(bind, e))?;
    let sock = socket2::SockRef::from(&socket);
    let size = config.socket_buffer_bytes;
    if let Err(e) = sock
        .set_recv_buffer_size(size)
        .and_then(|()| sock.set_send_buffer_size(size))
    {
        warn!(error = %e, size, "cannot size the UDP socket buffers");
    }
    Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| NetError::Bind(bind, e))
}

/// A 32-byte key for `purpose`, derived from the node's secret key.
fn derive(keys: &NodeKeyPair, purpose: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"cellar-net ");
    hasher.update(purpose.as_bytes());
    hasher.update([0]);
    hasher.update(keys.seed());
    hasher.finalize().into()
}

/// The client configuration for dialing `peer`: its pinned key, keep-alives,
/// and no streams accepted from it on this connection.
fn client_config(
    config: &TransportConfig,
    keys: &NodeKeyPair,
    peer: &PeerInfo,
) -> Result<quinn::ClientConfig, NetError> {
    let tls = tls::client_config(keys, peer.public_key)?;
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::InvalidConfig(format!("QUIC client TLS: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config(config)?;
    transport.keep_alive_interval(Some(config.keep_alive));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Settings common to both sides: idle timeout, no streams or datagrams
/// from the peer unless enabled.
fn transport_config(config: &TransportConfig) -> Result<quinn::TransportConfig, NetError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|e| NetError::InvalidConfig(format!("idle_timeout: {e}")))?;
    transport.max_idle_timeout(Some(idle));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    // No unreliable datagrams: nothing would read them.
    transport.datagram_receive_buffer_size(None);
    Ok(transport)
}

/// What the application holds to send; cheap to clone. The transport stops
/// when the last clone is dropped or [`TransportHandle::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct TransportHandle {
    /// The running transport.
    owner: Arc<Owner>,
}

impl TransportHandle {
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
    /// [`TransportConfig::injected_delay`]); for fault tests that slow a
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
    /// [`TransportConfig::seen_capacity`] artifacts).
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
