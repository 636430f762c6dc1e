//! `cellar-net`: the QUIC transport of a Cellar subnet.
//!
//! Every node has an Ed25519 key pair ([`NodeKeyPair`]); the subnet's
//! genesis file lists the members ([`Membership`] of [`PeerInfo`]: index,
//! address, public key). Nodes authenticate each other in the TLS 1.3
//! handshake with raw public keys pinned by that list, so only members
//! talk, and a node dialing node *i* accepts only node *i*'s key.
//!
//! [`Transport::start`] binds one QUIC endpoint (quinn, rustls with ring)
//! that both listens and dials, and returns a [`TransportHandle`] and an
//! mpsc receiver of [`Received`] artifacts (`{ from, artifact }`). An [`Artifact`] (ingress message, block,
//! signature share, ...) is named by the SHA-256 of its content
//! ([`ArtifactId`]); the originator sends it to every peer directly (full
//! mesh, nobody relays), and receivers deliver each id once. A node that
//! missed artifacts (it was down) pulls them by id with
//! [`TransportHandle::request`]; peers answer from a bounded cache of recent
//! artifacts. So that a node can pull what later artifacts refer to, refer
//! to artifacts by their [`ArtifactId`] (e.g. use a block artifact's id as
//! the block hash). While a peer is unreachable its queue keeps the newest
//! messages and drops the oldest.
//!
//! Dialing retries with bounded exponential backoff; frames larger than the
//! configured maximum or undecodable get the sender disconnected, banned for
//! a while and logged, and never panic the node.
//!
//! ```no_run
//! # async fn example(keys: cellar_net::NodeKeyPair, membership: cellar_net::Membership) -> Result<(), cellar_net::NetError> {
//! use cellar_net::{Artifact, ArtifactKind, Transport, TransportConfig};
//!
//! let (net, mut inbox) = Transport::start(TransportConfig::default(), keys, membership).await?;
//! net.broadcast(&Artifact::new(ArtifactKind::BLOCK, b"block".to_vec())).ok();
//! while let Some(received) = inbox.recv().await {
//!     println!("{} sent {}", received.from, received.artifact.id());
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod artifact;
mod backlog;
mod backoff;
mod config;
mod endpoint;
mod error;
mod handle;
mod identity;
mod inbound;
mod membership;
mod node_index;
mod peer;
mod pool;
mod shared;
mod stats;
pub mod testing;
mod tls;
mod transport;
mod wire;

pub use artifact::{Artifact, ArtifactId, ArtifactKind};
/// The byte buffer type of artifact payloads (re-exported from `bytes`).
pub use bytes::Bytes;
pub use config::TransportConfig;
pub use error::{NetError, SendError};
pub use handle::TransportHandle;
pub use identity::NodeKeyPair;
pub use membership::{Membership, PeerInfo};
pub use node_index::NodeIndex;
pub use shared::Received;
pub use stats::TransportStats;
pub use transport::Transport;
