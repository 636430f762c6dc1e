//! The errors of this crate.

use std::path::PathBuf;

use crate::node_index::NodeIndex;

/// Errors of setting up identities, memberships and the transport.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The operating system gave no randomness.
    #[error("no randomness: {0}")]
    Randomness(String),
    /// A key file could not be read or written.
    #[error("key file {0}: {1}")]
    KeyFile(PathBuf, #[source] std::io::Error),
    /// A key file does not hold a 32-byte seed as 64 hex digits.
    #[error("invalid key file {0}: expected 64 hex digits")]
    InvalidKeyFile(PathBuf),
    /// The membership is inconsistent.
    #[error("invalid membership: {0}")]
    InvalidMembership(String),
    /// This node's public key is not in the membership.
    #[error("this node's public key is not in the subnet membership")]
    NotAMember,
    /// The configuration is unusable.
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(String),
    /// The TLS stack refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The UDP socket could not be bound.
    #[error("cannot bind {0}: {1}")]
    Bind(std::net::SocketAddr, #[source] std::io::Error),
}

/// Why a message was not queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The destination is not a member (or is this node).
    #[error("node {0} is not a peer")]
    UnknownPeer(NodeIndex),
    /// The encoded message is larger than the configured maximum.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The queue to that peer is full (the peer is slow or unreachable).
    #[error("the send queue to node {0} is full")]
    QueueFull(NodeIndex),
    /// The transport has shut down.
    #[error("the transport has shut down")]
    Closed,
}
