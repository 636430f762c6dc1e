//! Starting the transport: the endpoint, the queues, and the tasks.
//!
//! One QUIC endpoint per node both listens and dials. Every node dials
//! every other member and writes its messages to that peer on its own
//! outgoing connection (see [`crate::peer`]); it reads what peers send on
//! the connections they dialed (see [`crate::inbound`]). So each pair of
//! nodes has two connections, one per direction, and no tie-breaking is
//! needed when both restart or dial at once.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::info;

use crate::config::TransportConfig;
use crate::endpoint::{bind_endpoint, client_config};
use crate::error::NetError;
use crate::handle::TransportHandle;
use crate::identity::NodeKeyPair;
use crate::membership::Membership;
use crate::pool::{ArtifactCache, SeenSet};
use crate::shared::{PeerQueue, Received, Shared, delay_nanos};
use crate::stats::Counters;
use crate::{inbound, peer};

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
            let queue = PeerQueue::new(tx);
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
        let handle = TransportHandle::new(shared, endpoint, tasks);
        Ok((handle, inbound_rx))
    }
}
