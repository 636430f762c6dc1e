//! The QUIC endpoint and connection settings: TLS from [`crate::tls`],
//! stream and datagram limits, keep-alives, and keys derived from the node
//! key.
//!
//! The stateless-reset key and the connection-id key derive from the node
//! key, so a restarted node still resets its peers' stale connections when
//! they send to it.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, VarInt};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::config::TransportConfig;
use crate::error::NetError;
use crate::identity::NodeKeyPair;
use crate::membership::{Membership, PeerInfo};
use crate::node_index::NodeIndex;
use crate::tls;

/// Creates the endpoint: listening with member-only client authentication,
/// and with stateless-reset tokens and connection-id validation keys
/// derived from the node key, so that after a restart (or crash) the node
/// recognizes its old connection ids and resets its peers' stale
/// connections at their next packet, and they redial at once.
pub(crate) fn bind_endpoint(
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
pub(crate) fn client_config(
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
